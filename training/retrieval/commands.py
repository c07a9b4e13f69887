"""The figure-retrieval jobs `training.entry` runs: train the encoder (its config is
`training.retrieval.configs.RetrievalTrainConfig`), evaluate encoders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.job import METRICS_FILE, JobConfig, Reporter, flat_metrics, write_json
from training.retrieval.configs import RetrievalTrainConfig

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
