"""The PatentLMM jobs `training.entry` runs: the tokenizer, encoder pretraining, LM pretraining, evaluation
against the ablations and the baselines, and description generation. One config dataclass each.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from patent_assets.llava import KINDS
from patent_assets.records import Rejection, read_figure_rows, replace_path, write_jsonl
from training.describe.configs import PatentLlamaPretraining, PatentMMEPretraining
from training.job import METRICS_FILE, JobConfig, Reporter, finite, flat_metrics, staging_dir, write_json

GENERATED_FILE = "generated_descriptions.json"
# (encoder dir or None, untouched preset, encoder overrides, feature cache) -> (Embedder, its name)
EmbedderFactory = Callable[[Path | None, str, Mapping[str, Any], Path | None], tuple[Any, str]]
ABLATIONS = ("image_blind", "no_ocr")


# The pretraining jobs' configs are their library's options plus paths (keyword-only, so that the
# required paths may follow the options' defaults): the library is handed the job's config itself.
@dataclass(kw_only=True)
class PatentMMEJob(PatentMMEPretraining, JobConfig):
    """The vision encoder: load `checkpoint_dir` (production, pretraining skipped) or pretrain one
    (how: the `PatentMMEPretraining` fields).

    Outputs: `out_dir/encoder` and `out_dir/pretraining` (when pretrained), `out_dir/rejected.jsonl`,
    `out_dir/patent_mme.json` (the summary, written last).
    """

    out_dir: str
    checkpoint_dir: str | None = None  # a LayoutLMv3 / PatentMME checkpoint directory
    records_jsonl: str | None = None  # figures.jsonl: the sheets to pretrain on
    tokenizer_dir: str | None = None
    preset: str = "tiny"


@dataclass(kw_only=True)
class PatentLlamaJob(PatentLlamaPretraining, JobConfig):
    """Causal-LM pretraining on patent text (PatentLLaMA's role; how: the `PatentLlamaPretraining` fields).

    From scratch at the preset's size without `base_model_dir`; LoRA on the base model with it
    (`lora` None: LoRA exactly when a base model is given). Outputs: `out_dir/lm` and/or
    `out_dir/adapter`, `out_dir/patent_llama.json` (the summary, written last).
    """

    out_dir: str
    documents: list[str]  # documents.jsonl files, or release directories holding one
    tokenizer_dir: str
    # the figure dataset: the text of its val / test patents is left out (it holds test references)
    figures_jsonl: str | None = None
    preset: str = "tiny"
    base_model_dir: str | None = None
    lora: bool | None = None


@dataclass
class TokenizerJob(JobConfig):
    """The embedded default's byte-level BPE, trained on the training descriptions and OCR words
    (`train_jsons`: `llava_json/*_train.json`) and on the patent text of `documents` (the held-out
    patents of `figures_jsonl` left out), at `preset`'s vocabulary, image and length sizes.

    Output: `out_dir` (`lm/` and `ocr/`, `training.describe.tokenizer`), renamed into place whole;
    one already there is kept (the caller names `out_dir` by the training text's hash).
    """

    out_dir: str
    train_jsons: list[str]
    documents: list[str] = field(default_factory=list)  # documents.jsonl files or release directories
    figures_jsonl: str | None = None
    preset: str = "tiny"


@dataclass
class EvaluateJob(JobConfig):
    """Greedy generation for every test figure of each kind, scored against the references.

    `test_jsons`: kind -> `llava_json/{kind}_test.json`. `ablations`: "image_blind" / "no_ocr" -> a
    model directory trained that way, or null for the main model; either is evaluated with its
    inputs ablated the same way (a blank page for the image; no OCR words), on the same figures.
    Outputs (`out_dir`): `metrics.json` (per kind, plus `ablations` and `comparison`),
    `predictions_{kind}.json`, `per_figure_{kind}.jsonl`, `ablations/<name>/...`, `rejected.jsonl`.
    With `mlflow_run_id`, metrics (`{kind}_{metric}`, `{ablation}_{kind}_{metric}`), sample images
    with prediction and reference, and the output files go to that run. With `figures_jsonl`, every
    score is also given on the real and on the synthetic figures apart (`real_bleu4`, ...).

    `baselines` ("constant", "nearest_neighbour", "ocr_label"; `training.describe.baselines`)
    are scored on the same figures, into `metrics.json`'s `baselines` and `baselines/<name>/`. The
    nearest neighbour's and the OCR label's pool is `train_jsons` (kind ->
    `llava_json/{kind}_train.json`); the nearest neighbour embeds with the
    saved figure encoder `nearest_neighbour_encoder_dir`, or with `untouched_preset`'s pretrained
    backbone (`encoder`: its overrides) when None; `feature_cache` as in the retrieval jobs.
    """

    out_dir: str
    model_dir: str
    test_jsons: dict[str, str]
    figures_jsonl: str | None = None  # image_path per image_id; None: images beside each JSON
    tokenizer_dir: str | None = None  # None: model_dir/tokenizer
    ablations: dict[str, str | None] = field(default_factory=dict)
    baselines: list[str] = field(default_factory=list)
    train_jsons: dict[str, str] = field(default_factory=dict)
    nearest_neighbour_encoder_dir: str | None = None
    untouched_preset: str = "pretrained"
    encoder: dict[str, Any] = field(default_factory=dict)
    feature_cache: str | None = None
    batch_size: int = 8
    max_new_tokens: int = 512
    limit: int | None = None  # first N figures of each kind (smoke runs); None: all
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI or $PATENTFLOW_HOME's store
    samples: int = 4  # test figures per kind logged with image, prediction and reference

    def __post_init__(self) -> None:
        if not self.test_jsons:
            raise ValueError("test_jsons is empty: give at least one of brief, detailed")
        bad = sorted(set(self.test_jsons) - set(KINDS))
        if bad:
            raise ValueError(f"test_jsons kinds {bad} are not among {list(KINDS)}")
        bad = sorted(set(self.ablations) - set(ABLATIONS))
        if bad:
            raise ValueError(f"ablations {bad} are not among {list(ABLATIONS)}")
        from training.describe.baselines import BASELINES

        bad = sorted(set(self.baselines) - set(BASELINES))
        if bad:
            raise ValueError(f"baselines {bad} are not among {list(BASELINES)}")
        if "nearest_neighbour" in self.baselines and self.figures_jsonl is None:
            raise ValueError("the nearest_neighbour baseline needs figures_jsonl (patent of each figure)")
        lacking = sorted(set(self.test_jsons) - set(self.train_jsons))
        for pooled in sorted({"nearest_neighbour", "ocr_label"} & set(self.baselines)):
            if lacking:
                raise ValueError(f"the {pooled} baseline needs train_jsons for kinds {lacking}")


@dataclass
class GenerateJob(JobConfig):
    """A description for every figure of figures.jsonl: `out_dir/generated_descriptions.json`.

    Resumable: descriptions already there (or journaled by an interrupted run) are kept.
    `ocr`: "records" uses the OCR stored in each figure record (as in training); "tesseract"
    reads the image again. Figures whose image cannot be read go to `out_dir/generate_rejected.jsonl`.
    """

    out_dir: str
    model_dir: str
    figures_jsonl: str
    tokenizer_dir: str | None = None
    kind: Literal["brief", "detailed"] = "brief"
    batch_size: int = 8
    max_new_tokens: int = 512
    ocr: Literal["records", "tesseract"] = "records"
    resume: bool = True
    limit: int | None = None


def _preset(name: str) -> Any:
    from training.describe.configs import PRESETS

    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}: one of {sorted(PRESETS)}")
    return PRESETS[name]


def _last(values: list[float]) -> float | None:
    return values[-1] if values else None


def run_patent_mme(cfg: PatentMMEJob, report: Reporter) -> dict[str, Any]:
    from training.describe.patent_mme import load_or_pretrain

    out_dir = Path(cfg.out_dir)
    if cfg.checkpoint_dir is not None:
        report.log(f"patent_mme: loading the checkpoint {cfg.checkpoint_dir}; pretraining skipped")
        result = load_or_pretrain(Path(cfg.checkpoint_dir))
        summary: dict[str, Any] = {
            "encoder_dir": str(result.encoder_dir),
            "pretrained": False,
            "checkpoint_dir": cfg.checkpoint_dir,
        }
    else:
        if cfg.records_jsonl is None or cfg.tokenizer_dir is None:
            raise ValueError(
                "patent_mme without checkpoint_dir pretrains: set records_jsonl and tokenizer_dir"
            )
        report.log(f"patent_mme: pretraining a {cfg.preset} encoder on {cfg.records_jsonl}")
        staging = staging_dir(out_dir, "patent_mme")
        try:
            result = load_or_pretrain(
                None, Path(cfg.records_jsonl), Path(cfg.tokenizer_dir), staging, _preset(cfg.preset), cfg
            )
            moved = {
                child.name: replace_path(child, out_dir / child.name) for child in list(staging.iterdir())
            }
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        summary = {
            "encoder_dir": str(moved[result.encoder_dir.name]),
            "pretraining_dir": str(moved[result.pretraining_dir.name]) if result.pretraining_dir else None,
            "pretrained": True,
            "steps": result.steps,
            "sheets": result.sheets,
            "rejected": len(result.rejected),
            "seconds": round(result.seconds, 2),
            **{f"final_{name}_loss": _last(values) for name, values in result.losses.items()},
        }
        for name, values in result.losses.items():
            if values:
                summary[f"first_{name}_loss"] = values[0]
    summary = finite(summary)
    summary_path = write_json(out_dir / "patent_mme.json", summary)
    return {**summary, "summary": str(summary_path)}


def run_patent_llama(cfg: PatentLlamaJob, report: Reporter) -> dict[str, Any]:
    from patent_assets.dataset import held_out_patents
    from training.describe.patent_llama import pretrain_patent_llama, read_patent_texts

    out_dir = Path(cfg.out_dir)
    held_out = held_out_patents(Path(cfg.figures_jsonl)) if cfg.figures_jsonl else set()
    texts = list(read_patent_texts([Path(p) for p in cfg.documents], skip_patents=held_out))
    if not texts:
        raise ValueError(f"no patent text in {cfg.documents}")
    report.log(f"patent_llama: the text of {len(held_out)} held-out (val/test) patents left out")
    lora = cfg.lora if cfg.lora is not None else cfg.base_model_dir is not None
    how = (
        f"LoRA r={cfg.lora_r} on {cfg.base_model_dir}"
        if lora
        else f"{cfg.base_model_dir or cfg.preset} fully"
    )
    report.log(f"patent_llama: {len(texts)} patent texts, training {how}")
    staging = staging_dir(out_dir, "patent_llama")
    try:
        result = pretrain_patent_llama(
            texts,
            Path(cfg.tokenizer_dir),
            staging,
            _preset(cfg.preset),
            base_model_dir=Path(cfg.base_model_dir) if cfg.base_model_dir else None,
            lora=lora,
            options=cfg,
        )
        moved = {child.name: replace_path(child, out_dir / child.name) for child in list(staging.iterdir())}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary = {
        "lm_dir": str(moved[result.lm_dir.name]) if result.lm_dir else None,
        "adapter_dir": str(moved[result.adapter_dir.name]) if result.adapter_dir else None,
        "lora": lora,
        "documents": len(texts),
        "steps": result.steps,
        "first_loss": result.losses[0] if result.losses else None,
        "final_loss": _last(result.losses),
        "perplexity_before": result.perplexity_before,
        "perplexity_after": result.perplexity_after,
        "train_tokens": result.train_tokens,
        "held_out_tokens": result.held_out_tokens,
        "seconds": round(result.seconds, 2),
    }
    summary = finite(summary)  # a run without held-out text has no perplexities
    summary_path = write_json(out_dir / "patent_llama.json", summary)
    return {**summary, "summary": str(summary_path)}


def run_tokenizer(cfg: TokenizerJob, report: Reporter) -> dict[str, Any]:
    from itertools import chain

    from patent_assets.dataset import held_out_patents
    from training.describe.patent_llama import read_patent_texts
    from training.describe.tokenizer import LM_SUBDIR, corpus_from_llava, load_lm_tokenizer, train_tokenizer

    preset, out_dir = _preset(cfg.preset), Path(cfg.out_dir)
    reused = (out_dir / LM_SUBDIR).is_dir()
    if reused:
        report.log(f"tokenizer: {out_dir} is already trained on this text")
    else:
        held_out = held_out_patents(Path(cfg.figures_jsonl)) if cfg.figures_jsonl else set()
        report.log(
            f"tokenizer: {len(cfg.train_jsons)} training files and {len(cfg.documents)} text releases "
            f"({len(held_out)} held-out patents left out), vocabulary {preset.vocab_size}"
        )
        texts = chain(
            corpus_from_llava([Path(p) for p in cfg.train_jsons]),
            read_patent_texts([Path(p) for p in cfg.documents], skip_patents=held_out),
        )
        train_tokenizer(
            texts,
            out_dir,
            vocab_size=preset.vocab_size,
            image_size=preset.image_size,
            ocr_max_tokens=preset.ocr_max_tokens,
            lm_max_length=preset.max_length,
        )
    return {
        "path": out_dir,
        "vocab_size": len(load_lm_tokenizer(out_dir)),
        "text_releases": len(cfg.documents),
        "reused": reused,
    }


def _progress(report: Reporter, label: str) -> Any:
    """An on_batch callback that logs about every 10% (Dagster's log is not a progress bar)."""
    state = {"next": 0.0}

    def on_batch(done: int, total: int) -> None:
        if total and (done / total >= state["next"] or done == total):
            report.log(f"{label}: {done}/{total} figures")
            state["next"] = done / total + 0.1

    return on_batch


@dataclass
class _Described:
    """The test figures of each kind that the model described, its texts and the references."""

    figures: dict[str, list[Any]] = field(default_factory=dict)
    predictions: dict[str, dict[str, str]] = field(default_factory=dict)
    references: dict[str, dict[str, str]] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)


def run_evaluate(
    cfg: EvaluateJob, report: Reporter, embedder_factory: EmbedderFactory | None = None
) -> dict[str, Any]:
    """`embedder_factory` makes the nearest-neighbour baseline's `Embedder` from (encoder dir or
    None, untouched preset, encoder overrides, feature cache); `training.entry` passes the
    retrieval family's, so that this family never imports that one."""
    from training.describe.inference import load_for_inference
    from training.describe.metrics import METRIC_NAMES, evaluate_split

    out_dir = Path(cfg.out_dir)
    tokenizer_dir = Path(cfg.tokenizer_dir) if cfg.tokenizer_dir else None
    figures_jsonl = Path(cfg.figures_jsonl) if cfg.figures_jsonl else None
    # Every model loads (and fails) before any generation.
    main = load_for_inference(Path(cfg.model_dir), tokenizer_dir=tokenizer_dir)
    ablation_models = {
        name: main if model_dir is None else load_for_inference(Path(model_dir), tokenizer_dir=tokenizer_dir)
        for name, model_dir in cfg.ablations.items()
    }
    described = _describe_test_figures(cfg, main, figures_jsonl, report)
    sheets = _sheet_labels(figures_jsonl) if figures_jsonl is not None else {}
    synthetic = {image_id: is_synthetic for image_id, (_, is_synthetic) in sheets.items()} or None

    def score(texts: Mapping[str, Mapping[str, str]], where: Path) -> dict[str, Any]:
        scores = evaluate_split(texts, described.references, where, synthetic)
        _add_label_rates(scores, texts, sheets)
        return scores

    results = score(described.predictions, out_dir)
    ablation_results: dict[str, Any] = {}
    for name, inference in ablation_models.items():
        which = "main model" if inference is main else inference.model_dir
        report.log(f"evaluate: ablation {name} ({which})")
        ablated = _describe_ablated(cfg, name, inference, described, report)
        ablation_results[name] = score(ablated, out_dir / "ablations" / name)
        ablation_results[name]["model_dir"] = str(inference.model_dir)
    baseline_results = {
        name: score(texts, out_dir / "baselines" / name)
        for name, texts in _baseline_descriptions(cfg, described.figures, report, embedder_factory).items()
    }

    kinds = list(described.figures)
    # What the full model gains over each ablation (positive: the ablated input helps).
    comparison = {
        name: {kind: {m: results[kind][m] - scores[kind][m] for m in METRIC_NAMES} for kind in kinds}
        for name, scores in ablation_results.items()
    }
    combined = {
        **results,
        "model_dir": cfg.model_dir,
        "rejected": len(described.rejected),
        "ablations": ablation_results,
        "baselines": baseline_results,
        "comparison": comparison,
    }
    write_jsonl(out_dir / "rejected.jsonl", described.rejected)
    metrics_path = write_json(out_dir / METRICS_FILE, combined)

    flat = flat_scores(results) | {f"{kind}_figures": results[kind]["figures"] for kind in kinds}
    others = _prefixed_scores(ablation_results, "") | _prefixed_scores(baseline_results, "baseline_")
    if cfg.mlflow_run_id:
        _log_to_mlflow(
            cfg,
            flat | others,
            described.figures,
            described.predictions,
            described.references,
            out_dir,
            report,
        )
    return {
        **flat,
        **{key: value for key, value in others.items() if key.endswith(("_bleu4", "_rougeL"))},
        "rejected": len(described.rejected),
        "metrics_json": metrics_path,
        **{f"predictions_{kind}": out_dir / f"predictions_{kind}.json" for kind in kinds},
        "mlflow_run_id": cfg.mlflow_run_id,
    }


def _describe_test_figures(
    cfg: EvaluateJob, main: Any, figures_jsonl: Path | None, report: Reporter
) -> _Described:
    """Greedy descriptions of every test figure of each kind by the main model."""
    from training.describe.inference import describe_figures, split_figures

    described = _Described()
    for kind in sorted(cfg.test_jsons):
        figures, refs, left_out = split_figures(Path(cfg.test_jsons[kind]), figures_jsonl, limit=cfg.limit)
        described.rejected += left_out
        report.log(f"evaluate: {len(figures)} {kind} test figures ({len(left_out)} entries left out)")
        run = describe_figures(
            figures,
            main,
            kind,  # type: ignore[arg-type]
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
            on_batch=_progress(report, f"evaluate {kind}"),
        )
        described.rejected += run.rejected
        if not run.descriptions:
            raise ValueError(f"{cfg.test_jsons[kind]}: no {kind} test figure could be described")
        # Scored on the figures described; the ones whose image failed are in rejected.jsonl.
        described.figures[kind] = [f for f in figures if f.image_id in run.descriptions]
        described.predictions[kind] = run.descriptions
        described.references[kind] = {i: refs[i] for i in run.descriptions}
    return described


def _describe_ablated(
    cfg: EvaluateJob, name: str, inference: Any, described: _Described, report: Reporter
) -> dict[str, dict[str, str]]:
    """The same figures described by an ablation, with its input ablated (`describe_figures` inputs)."""
    from training.describe.inference import describe_figures

    ablated: dict[str, dict[str, str]] = {}
    for kind, figures in described.figures.items():
        run = describe_figures(
            figures,
            inference,
            kind,  # type: ignore[arg-type]
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
            inputs=name,  # type: ignore[arg-type]
            on_batch=_progress(report, f"ablation {name} {kind}"),
        )
        missing = sorted(set(described.references[kind]) - set(run.descriptions))
        if missing:
            raise ValueError(f"ablation {name}: {kind} figures {missing[:5]} could not be described")
        ablated[kind] = run.descriptions
    return ablated


def _prefixed_scores(scores_by_name: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """{"image_blind": {"brief": {"bleu4": x}}} -> {"image_blind_brief_bleu4": x} (after `prefix`)."""
    return {
        f"{prefix}{name}_{key}": value
        for name, scores in scores_by_name.items()
        for key, value in flat_scores(scores).items()
    }


def flat_scores(results: Mapping[str, Any]) -> dict[str, float]:
    """`{kind}_{metric}` of every metric measured: all figures, each origin apart, label rates."""
    from training.describe.metrics import LABEL_RATES, METRIC_NAMES, ORIGIN_METRICS

    by_kind = {kind: results[kind] for kind in KINDS if kind in results}
    return flat_metrics(by_kind, names=(*METRIC_NAMES, *ORIGIN_METRICS, *LABEL_RATES))


def _baseline_descriptions(
    cfg: EvaluateJob,
    figures_by_kind: Mapping[str, list[Any]],
    report: Reporter,
    embedder_factory: EmbedderFactory | None,
) -> dict[str, dict[str, dict[str, str]]]:
    """baseline -> kind -> {image id: description} for the figures the model described."""
    from training.describe import baselines
    from training.describe.inference import split_figures

    texts: dict[str, dict[str, dict[str, str]]] = {}
    # each kind's training pool (figures, references), read once for the baselines that use it
    figures_jsonl = Path(cfg.figures_jsonl) if cfg.figures_jsonl else None
    pools = {
        kind: split_figures(Path(cfg.train_jsons[kind]), figures_jsonl)[:2]
        for kind in figures_by_kind
        if {"nearest_neighbour", "ocr_label"} & set(cfg.baselines)
    }
    if "constant" in cfg.baselines:
        texts["constant"] = {
            kind: baselines.constant_descriptions([f.image_id for f in figures])
            for kind, figures in figures_by_kind.items()
        }
    if "nearest_neighbour" in cfg.baselines:
        assert cfg.figures_jsonl is not None  # checked by the config
        if embedder_factory is None:
            raise ValueError(
                "the nearest_neighbour baseline needs a figure embedder: run it via training.entry"
            )
        embed, encoder = embedder_factory(
            Path(cfg.nearest_neighbour_encoder_dir) if cfg.nearest_neighbour_encoder_dir else None,
            cfg.untouched_preset,
            cfg.encoder,
            Path(cfg.feature_cache) if cfg.feature_cache else None,
        )
        rows, _ = read_figure_rows(Path(cfg.figures_jsonl), "evaluation")
        patent_of = {str(row["image_id"]): row.get("patent_id", "") for row in rows}
        texts["nearest_neighbour"] = {}
        for kind, figures in figures_by_kind.items():
            pool_figures, pool_refs = pools[kind]
            report.log(
                f"evaluate: nearest-neighbour baseline ({encoder}), pool of {len(pool_figures)} {kind} figures"
            )
            described, unanswered = baselines.nearest_neighbour_descriptions(
                {f.image_id: f.image_path for f in figures},
                {f.image_id: (f.image_path, pool_refs[f.image_id]) for f in pool_figures},
                patent_of,
                embed,
            )
            for image_id, reason in unanswered.items():
                report.log(f"evaluate: nearest neighbour gave {image_id} no description: {reason}")
            texts["nearest_neighbour"][kind] = described
    if "ocr_label" in cfg.baselines:
        texts["ocr_label"] = {
            kind: baselines.ocr_label_descriptions(
                {f.image_id: _ocr_words(f.ocr) for f in figures}, pools[kind][1]
            )
            for kind, figures in figures_by_kind.items()
        }
    return texts


def _ocr_words(ocr: Any) -> list[str]:
    """The words of a figure's stored OCR (an `OcrWords` or its dict); none when it has none."""
    if ocr is None:
        return []
    words = ocr.get("words", []) if isinstance(ocr, Mapping) else getattr(ocr, "words", [])
    return [str(word) for word in words]


def _sheet_labels(figures_jsonl: Path) -> dict[str, tuple[list[str], bool]]:
    """image_id -> (the FIG labels aligned to its sheet, whether it is synthetic), for the figures
    that `split_figures` can describe (the same reader: the same rows)."""
    rows, _ = read_figure_rows(figures_jsonl, "evaluation")
    return {
        str(row["image_id"]): (list(row.get("figure_labels") or []), bool(row.get("synthetic", False)))
        for row in rows
    }


def _add_label_rates(
    results: dict[str, Any],
    predictions: Mapping[str, Mapping[str, str]],
    sheets: Mapping[str, tuple[list[str], bool]],
) -> None:
    """Each kind's LABEL_RATES (and its labelled-figure counts) into `results`."""
    from training.describe.metrics import printed_label_rate

    for kind, texts in predictions.items():
        known = {image_id: text for image_id, text in texts.items() if image_id in sheets}
        for prefix, synthetic in (("", None), ("real_", False), ("synthetic_", True)):
            chosen = {i: t for i, t in known.items() if synthetic is None or sheets[i][1] == synthetic}
            rate = printed_label_rate(chosen, {i: sheets[i][0] for i in chosen})
            results[kind][f"{prefix}printed_label_rate"] = rate["printed_label_rate"]
            results[kind][f"{prefix}labelled_figures"] = rate["labelled_figures"]


def _log_to_mlflow(
    cfg: EvaluateJob,
    metrics: Mapping[str, float],
    figures_by_kind: Mapping[str, list[Any]],
    predictions: Mapping[str, Mapping[str, str]],
    references: Mapping[str, Mapping[str, str]],
    out_dir: Path,
    report: Reporter,
) -> None:
    from training import tracking

    run_id, uri = cfg.mlflow_run_id, cfg.tracking_uri or tracking.tracking_uri()
    tracking.log_metrics(run_id, metrics, tracking_uri=uri)
    for kind, figures in figures_by_kind.items():
        samples = [
            (f.image_path, predictions[kind][f.image_id], references[kind][f.image_id])
            for f in figures[: cfg.samples]
        ]
        if samples:
            tracking.log_samples(run_id, samples, name=f"test_{kind}", tracking_uri=uri)
    tracking.log_artifacts(run_id, out_dir, "evaluation", tracking_uri=uri)
    report.log(f"evaluate: metrics, samples and outputs logged to MLflow run {run_id}")


def run_generate(cfg: GenerateJob, report: Reporter) -> dict[str, Any]:
    from training.describe.inference import describe_figures, load_for_inference

    out_dir = Path(cfg.out_dir)
    inference = load_for_inference(
        Path(cfg.model_dir), tokenizer_dir=Path(cfg.tokenizer_dir) if cfg.tokenizer_dir else None
    )
    figures, rejected = read_figures_for_generation(Path(cfg.figures_jsonl), use_ocr=cfg.ocr == "records")
    if cfg.limit is not None:
        figures = figures[: cfg.limit]
    if not figures:
        raise ValueError(f"{cfg.figures_jsonl}: no figures to describe ({len(rejected)} rows left out)")
    out = out_dir / GENERATED_FILE
    report.log(f"generate: {len(figures)} figures of {cfg.figures_jsonl} -> {out}")
    run = describe_figures(
        figures,
        inference,
        cfg.kind,
        out=out,
        resume=cfg.resume,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        on_batch=_progress(report, "generate"),
    )
    rejected += run.rejected
    rejected_path = out_dir / "generate_rejected.jsonl"
    write_jsonl(rejected_path, rejected)
    if run.rejected and run.generated == 0 and run.kept == 0:
        raise ValueError(
            f"generate: none of the {len(figures)} figures could be described, e.g. "
            f"{run.rejected[0].item}: {run.rejected[0].reason}"
        )
    return {
        "figures": len(figures),
        "generated": run.generated,
        "kept": run.kept,
        "descriptions": len(run.descriptions),
        "rejected": len(rejected),
        "kind": cfg.kind,
        "model_dir": cfg.model_dir,
        "path": out,
        "rejected_path": rejected_path,
    }


def read_figures_for_generation(
    figures_jsonl: Path, *, use_ocr: bool = True
) -> tuple[list[Any], list[Rejection]]:
    """The figures of figures.jsonl (image path relative to its folder), with their stored OCR or None."""
    from training.describe.inference import Figure

    rows, rejected = read_figure_rows(figures_jsonl, "inference")
    figures = [
        Figure(
            str(row["image_id"]),
            Path(row["image_path"]),
            (row.get("ocr") or {"words": [], "boxes": []}) if use_ocr else None,
        )
        for row in rows
    ]
    return figures, rejected
