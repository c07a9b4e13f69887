"""The figure-retrieval jobs `training.entry` runs: train the encoder (its config is
`training.retrieval.configs.RetrievalTrainConfig`), evaluate encoders, build the search index."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from training.job import METRICS_FILE, JobConfig, Reporter, flat_metrics, write_json
from training.retrieval.configs import RetrievalTrainConfig
from training.retrieval.search_index import DEFAULT_THUMBNAIL_SIZE, DEFAULT_THUMBNAIL_WEIGHT

# The metrics an evaluation reports as metadata, in the order `evaluate_rankings` gives them.
HEADLINE_METRICS = ("mAP", "Recall@10", "MRR@10", "Rank-1")


@dataclass
class RetrievalEvaluateJob(JobConfig):
    """Same-patent and prior-art retrieval metrics of each encoder on one figures.jsonl, on the
    whole collection and on its real and synthetic figures apart (`evaluate_by_origin`).

    `encoder_dirs`: name -> saved encoder directory. `query_splits` None: every figure queries (a
    collection without splits). `untouched_preset`: also score that preset's backbone as it was
    pretrained, no head (`head` "none", with `encoder`'s overrides) as `untouched`. `pixel_baseline`:
    also score plain pixel matching (48x48 ink-cropped thumbnails, cosine) as `pixels`.
    `feature_cache`: the frozen backbone features' cache (`training.retrieval.features`). Output:
    `out_dir/metrics.json` {name: {task: metrics}}.
    """

    encoder_dirs: dict[str, str]
    figures_jsonl: str
    out_dir: str
    query_splits: list[str] | None = field(default_factory=lambda: ["val", "test"])
    batch_size: int = 32
    untouched_preset: str | None = None
    encoder: dict[str, Any] = field(default_factory=dict)
    pixel_baseline: bool = True
    feature_cache: str | None = None


@dataclass
class SearchIndexJob(JobConfig):
    """Every figure of `figures_jsonl` embedded by the encoder at `encoder_dir` and indexed into
    `out_dir` (`training.retrieval.search_index`; the other fields are its `BuildOptions`, `refine`
    the IVF-PQ re-scoring of `IndexOptions`; `generated_descriptions` PatentLMM's {image_id: text},
    shown with each hit). Reports the index's counts, its same-patent self-evaluation and a sample
    query: the newest figure against its prior art."""

    figures_jsonl: str
    encoder_dir: str
    out_dir: str
    kind: Literal["flat", "ivf", "hnsw", "ivfpq"] = "flat"
    refine: int = 0
    text_encoder_dir: str | None = None  # None: the embedded all-MiniLM-L6-v2
    encoder_source: str = ""
    thumbnail_weight: float = DEFAULT_THUMBNAIL_WEIGHT
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE
    feature_cache: str | None = None
    generated_descriptions: str | None = None
    sample_results: int = 5


def run_retrieval_encoder(cfg: RetrievalTrainConfig, report: Reporter) -> dict[str, Any]:
    """The job's config is the training's (`training.retrieval.configs`): handed over as it is."""
    from training.retrieval.train import train_retrieval_encoder

    report.log(f"retrieval_encoder: training a {cfg.preset} encoder on {cfg.figures_jsonl}")
    summary = train_retrieval_encoder(cfg, report)
    trained, untrained = summary["trained"], summary["untrained"]
    return {
        "encoder_dir": Path(summary["encoder_dir"]),
        "summary": Path(cfg.out_dir) / "summary.json",
        "same_patent_mAP": trained["same_patent"].get("mAP"),
        "same_patent_Rank-1": trained["same_patent"].get("Rank-1"),
        "prior_art_mAP": trained["prior_art"].get("mAP"),
        "untrained_same_patent_mAP": untrained["same_patent"].get("mAP"),
        "untrained_same_patent_Rank-1": untrained["same_patent"].get("Rank-1"),
        "untrained_prior_art_mAP": untrained["prior_art"].get("mAP"),
        "queries": trained["same_patent"].get("queries"),
        "steps": summary["steps"],
        "train_figures": summary["train_figures"],
        "patents": summary["patents"],
        "train_seconds": summary["train_seconds"],
        "mlflow_run_id": cfg.mlflow_run_id,
    }


def run_retrieval_evaluate(cfg: RetrievalEvaluateJob, report: Reporter) -> dict[str, Any]:
    from training.retrieval.evaluate import embed_figures, evaluate_by_origin, pixel_embeddings
    from training.retrieval.model import build_encoder, load_encoder, preset
    from training.retrieval.train import read_split_figures

    figures_jsonl = Path(cfg.figures_jsonl)
    figures, rejected = read_split_figures(figures_jsonl)
    for reason in rejected:
        report.log(f"retrieval_evaluate: left out {reason}")
    if not figures:
        raise ValueError(f"{figures_jsonl}: no figures to evaluate on ({len(rejected)} rows left out)")
    encoders = {name: load_encoder(Path(directory)) for name, directory in cfg.encoder_dirs.items()}
    if cfg.untouched_preset:
        untouched = preset(cfg.untouched_preset, **{**cfg.encoder, "head": "none"})
        encoders["untouched"] = build_encoder(untouched).eval()
    images = [Path(figure["image_path"]) for figure in figures]
    results: dict[str, Any] = {}
    for name, model in encoders.items():
        report.log(f"retrieval_evaluate: {name} on {len(figures)} figures")
        vectors, kept, failed = embed_figures(model, images, cfg.batch_size, cfg.feature_cache)
        for position, reason in failed.items():
            report.log(f"retrieval_evaluate: {name}: left out {figures[position]['image_id']}: {reason}")
        results[name] = evaluate_by_origin(vectors, [figures[i] for i in kept], cfg.query_splits)
    if cfg.pixel_baseline:
        vectors, kept = pixel_embeddings(images)
        results["pixels"] = evaluate_by_origin(vectors, [figures[i] for i in kept], cfg.query_splits)
    metrics_path = write_json(Path(cfg.out_dir) / METRICS_FILE, results)
    flat = {
        key: value
        for name, tasks in results.items()
        for key, value in flat_metrics(tasks, f"{name}_", HEADLINE_METRICS).items()
    }
    return {**flat, "figures": len(figures), "rejected": len(rejected), "metrics_json": metrics_path}


def run_search_index(cfg: SearchIndexJob, report: Reporter) -> dict[str, Any]:
    from training.retrieval import search_index
    from training.retrieval.faiss_index import IndexOptions

    options = search_index.BuildOptions(
        kind=cfg.kind,
        index_options=IndexOptions(refine=cfg.refine),
        text_encoder_dir=cfg.text_encoder_dir,
        encoder_source=cfg.encoder_source,
        thumbnail_weight=cfg.thumbnail_weight,
        thumbnail_size=cfg.thumbnail_size,
        feature_cache=cfg.feature_cache,
        generated_descriptions=cfg.generated_descriptions,
    )
    report.log(f"search_index: indexing {cfg.figures_jsonl} ({cfg.kind}) into {cfg.out_dir}")
    built = search_index.build_search_index(
        Path(cfg.figures_jsonl), Path(cfg.encoder_dir), Path(cfg.out_dir), options
    )
    for rejection in built.rejected:
        report.log(f"search_index: left out {rejection.item}: {rejection.reason}")
    counts = built.manifest["counts"]
    same_patent = built.evaluation.get("same_patent", {})
    return {
        "path": Path(cfg.out_dir),
        "figures": counts["figures"],
        "patents": counts["patents"],
        "rejected": counts["rejected"],
        "generated_descriptions": built.manifest["generated_descriptions"]["figures"],
        **{f"collection_same_patent_{k}": same_patent.get(k) for k in ("mAP", "Rank-1")},
        "sample_query": _sample_query(Path(cfg.out_dir), cfg.sample_results),
    }


def _sample_query(index_dir: Path, k: int) -> str:
    """What a search returns, as a Markdown table: the newest figure against its prior art."""
    from training.retrieval.search_index import SearchIndex

    loaded = SearchIndex.load(index_dir)
    newest = loaded.figures.figures[-1]
    hits = loaded.search_image(Path(newest.image_path), k=k, before=newest.grant_date)
    rows = ["| rank | score | granted | patent | figure | description |", "|---|---|---|---|---|---|"]
    rows += [
        f"| {h.rank} | {h.score:.3f} | {h.grant_date} | {h.patent_id} | {h.figure_id} | {h.description[:80]} |"
        for h in hits
    ]
    heading = f"Query: {newest.figure_id} ({newest.patent_id}, granted {newest.grant_date}), prior art only"
    return heading + "\n\n" + "\n".join(rows)
