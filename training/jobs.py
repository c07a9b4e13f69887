"""The out-of-process entry points the Dagster assets launch: one command per asset, one JSON config each.

    python -m training.jobs patent_mme   --config patent_mme.json
    python -m training.jobs patent_llama --config patent_llama.json
    python -m training.jobs evaluate     --config evaluate.json
    python -m training.jobs generate     --config generate.json

Training and inference never run inside the Dagster process: an asset writes the config
(`write_config`), launches `command_line(...)` through `dagster.PipesSubprocessClient`, and gets back
what the command reports. Each command reads its config dataclass (unknown keys and wrong types are
errors naming the file), does the work through the library modules, writes its outputs into the
config's `out_dir` (each file or directory renamed into place, never half-written) and, when
launched by Dagster Pipes, logs progress and reports `report_asset_materialization(metadata=...)`
with the key numbers and the output paths. Without Pipes it runs plainly. Errors propagate: a
non-zero exit with a message naming the item.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from patent_assets.llava import KINDS
from patent_assets.records import Rejection, atomic_write, read_jsonl, write_jsonl

logger = logging.getLogger("training.jobs")

METRICS_FILE = "metrics.json"
GENERATED_FILE = "generated_descriptions.json"
ABLATIONS = ("image_blind", "no_ocr")


# ------------------------------------------------------------------------------------------ configs


@dataclass
class JobConfig:
    """Base of the command configs: read from JSON, strictly."""

    @classmethod
    def from_json(cls, path: Path) -> JobConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"config {path}: cannot read JSON ({error})") from error
        if not isinstance(raw, dict):
            raise ValueError(f"config {path}: expected a JSON object, got {type(raw).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:  # a typo must not silently fall back to a default
            raise ValueError(f"config {path}: unknown {cls.__name__} keys {unknown}")
        hints = typing.get_type_hints(cls)
        for key, value in raw.items():
            if not _matches(value, hints[key]):
                raise ValueError(f"config {path}: {key}={value!r} is not a {_type_name(hints[key])}")
        try:
            return cls(**raw)
        except TypeError as error:  # a required key is missing
            raise ValueError(f"config {path}: {error}") from error
        except ValueError as error:
            raise ValueError(f"config {path}: {error}") from error

    def to_json(self, path: Path) -> Path:
        with atomic_write(Path(path)) as handle:
            json.dump(asdict(self), handle, indent=2)
        return Path(path)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type hint (str, int, float, bool, None, Literal, list, dict, unions)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(v, args[1]) for v in value.values())
    return True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


@dataclass
class PatentMMEJob(JobConfig):
    """The vision encoder: load `checkpoint_dir` (production, pretraining skipped) or pretrain one.

    Outputs: `out_dir/encoder` and `out_dir/pretraining` (when pretrained), `out_dir/rejected.jsonl`,
    `out_dir/patent_mme.json` (the summary, written last).
    """

    out_dir: str
    checkpoint_dir: str | None = None  # a LayoutLMv3 / PatentMME checkpoint directory
    records_jsonl: str | None = None  # figures.jsonl: the sheets to pretrain on
    tokenizer_dir: str | None = None
    preset: str = "tiny"
    steps: int | None = None
    epochs: int | None = None
    lr: float = 5e-4
    batch_size: int = 4
    seed: int = 0
    codebook_size: int | None = None
    asset_key: str | None = None  # for a Pipes multi-asset; None: the one asset in scope


@dataclass
class PatentLlamaJob(JobConfig):
    """Causal-LM pretraining on patent text (PatentLLaMA's role).

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
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    merge: bool = False
    steps: int | None = None
    epochs: int | None = None
    lr: float = 1e-3
    batch_size: int = 8
    block_size: int = 128
    held_out_fraction: float = 0.1
    seed: int = 0
    asset_key: str | None = None


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

    `baselines` ("constant", "nearest_neighbour", "ocr_label"; `training.description_baselines`)
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
    asset_key: str | None = None

    def __post_init__(self) -> None:
        if not self.test_jsons:
            raise ValueError("test_jsons is empty: give at least one of brief, detailed")
        bad = sorted(set(self.test_jsons) - set(KINDS))
        if bad:
            raise ValueError(f"test_jsons kinds {bad} are not among {list(KINDS)}")
        bad = sorted(set(self.ablations) - set(ABLATIONS))
        if bad:
            raise ValueError(f"ablations {bad} are not among {list(ABLATIONS)}")
        from training.description_baselines import BASELINES

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
    asset_key: str | None = None


@dataclass
class RetrievalEncoderJob(JobConfig):
    """The figure-retrieval encoder: ArcFace on patent identity plus the LLM-informed alignment.

    Fields mirror `training.retrieval_train.RetrievalTrainConfig`. Outputs (`out_dir`): `encoder`,
    `metrics.jsonl` (per step), `summary.json` (untrained and trained retrieval metrics),
    `checkpoint` (resumed from when present).
    """

    figures_jsonl: str
    out_dir: str
    preset: str = "tiny"
    encoder: dict[str, Any] = field(default_factory=dict)
    generated_descriptions: str | None = None
    text_encoder_dir: str | None = None
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test"])
    epochs: int = 30
    batch_size: int = 16
    views_per_patent: int = 2
    lr: float = 2e-3
    weight_decay: float = 0.05
    seed: int = 0
    losses: list[str] = field(default_factory=lambda: ["arcface", "clip", "cls", "cat"])
    arcface_scale: float = 20.0
    arcface_margin: float = 0.5  # radians
    trainable_blocks: int | None = None
    feature_cache: str | None = None
    backbone_lr_scale: float = 0.1
    whitening_shrinkage: float | None = None
    head_lr_scale: float = 0.1
    feature_erase_probability: float = 0.5
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    num_threads: int | None = None
    asset_key: str | None = None


@dataclass
class RetrievalEvaluateJob(JobConfig):
    """Same-patent and prior-art retrieval metrics of each encoder on one figures.jsonl, on the
    whole collection and on its real and synthetic figures apart (`evaluate_by_origin`).

    `encoder_dirs`: name -> saved encoder directory. `query_splits` None: every figure queries (a
    collection without splits). `untouched_preset`: also score that preset's backbone as it was
    pretrained, no head (`head` "none", with `encoder`'s overrides) as `untouched`. `pixel_baseline`:
    also score plain pixel matching (48x48 ink-cropped thumbnails, cosine) as `pixels`.
    `feature_cache`: the frozen backbone features' cache (`retrieval_features`). Output:
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
    asset_key: str | None = None


# -------------------------------------------------------------------------------- Dagster Pipes


class Reporter:
    """Progress and results: to the log always, and to Dagster when launched by Pipes."""

    def __init__(self, pipes: Any = None, asset_key: str | None = None) -> None:
        self.pipes = pipes
        self.asset_key = asset_key
        self.materialized: dict[str, Any] | None = None

    def log(self, message: str) -> None:
        logger.info(message)
        if self.pipes is not None:
            self.pipes.log.info(message)

    def materialize(self, metadata: Mapping[str, Any]) -> None:
        self.materialized = dict(metadata)
        logger.info("result: %s", json.dumps(self.materialized, default=str))
        if self.pipes is not None:
            self.pipes.report_asset_materialization(
                metadata=pipes_metadata(metadata), asset_key=self.asset_key
            )


def pipes_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata Pipes accepts: paths as path values, dicts and lists as JSON; None and NaN left out."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        if isinstance(value, Path):
            out[key] = {"raw_value": str(value), "type": "path"}
        elif isinstance(value, dict | list | tuple):
            out[key] = {"raw_value": json.loads(json.dumps(value, default=str)), "type": "json"}
        else:
            out[key] = value
    return out


@contextmanager
def reporting(asset_key: str | None = None) -> Iterator[Reporter]:
    """A Reporter connected to Dagster Pipes when the Pipes env vars are set; plain otherwise.

    Inside Pipes, an exception is reported to Dagster and re-raised (the exit status is non-zero).
    """
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        yield Reporter()
        return
    with open_dagster_pipes() as pipes:
        yield Reporter(pipes, asset_key)


# -------------------------------------------------------------------------------- output helpers


def _staging(out_dir: Path, command: str) -> Path:
    """A fresh scratch directory inside `out_dir` (same file system: its contents rename into place)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".staging-{command}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _publish(new: Path, target: Path) -> Path:
    """Move `new` (file or directory) to `target`; an old `target` is moved away first, removed after."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    new.rename(target)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
    return target


def _write_json(path: Path, data: Any) -> Path:
    with atomic_write(path) as handle:
        json.dump(data, handle, indent=1, default=str)
    return path


def _preset(name: str) -> Any:
    from training.configs import PRESETS

    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}: one of {sorted(PRESETS)}")
    return PRESETS[name]


def _finite(summary: Mapping[str, Any]) -> dict[str, Any]:
    """NaN and infinities as None: JSON has no NaN, and a missing number must read as missing."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}


def _last(values: list[float]) -> float | None:
    return values[-1] if values else None


# ---------------------------------------------------------------------------------------- commands


def run_patent_mme(cfg: PatentMMEJob, report: Reporter) -> dict[str, Any]:
    from training.patent_mme import load_or_pretrain

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
        staging = _staging(out_dir, "patent_mme")
        try:
            result = load_or_pretrain(
                None,
                Path(cfg.records_jsonl),
                Path(cfg.tokenizer_dir),
                staging,
                _preset(cfg.preset),
                steps=cfg.steps,
                epochs=cfg.epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                codebook_size=cfg.codebook_size,
            )
            moved = {child.name: _publish(child, out_dir / child.name) for child in list(staging.iterdir())}
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
    summary = _finite(summary)
    summary_path = _write_json(out_dir / "patent_mme.json", summary)
    return {**summary, "summary": str(summary_path)}


def run_patent_llama(cfg: PatentLlamaJob, report: Reporter) -> dict[str, Any]:
    from patent_assets.dataset import held_out_patents
    from training.patent_llama import pretrain_patent_llama, read_patent_texts

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
    staging = _staging(out_dir, "patent_llama")
    try:
        result = pretrain_patent_llama(
            texts,
            Path(cfg.tokenizer_dir),
            staging,
            _preset(cfg.preset),
            base_model_dir=Path(cfg.base_model_dir) if cfg.base_model_dir else None,
            lora=lora,
            lora_r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            merge=cfg.merge,
            steps=cfg.steps,
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            block_size=cfg.block_size,
            held_out_fraction=cfg.held_out_fraction,
            seed=cfg.seed,
        )
        moved = {child.name: _publish(child, out_dir / child.name) for child in list(staging.iterdir())}
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
    summary = _finite(summary)  # a run without held-out text has no perplexities
    summary_path = _write_json(out_dir / "patent_llama.json", summary)
    return {**summary, "summary": str(summary_path)}


def _progress(report: Reporter, label: str) -> Any:
    """An on_batch callback that logs about every 10% (Dagster's log is not a progress bar)."""
    state = {"next": 0.0}

    def on_batch(done: int, total: int) -> None:
        if total and (done / total >= state["next"] or done == total):
            report.log(f"{label}: {done}/{total} figures")
            state["next"] = done / total + 0.1

    return on_batch


def run_evaluate(cfg: EvaluateJob, report: Reporter) -> dict[str, Any]:
    from training.inference import describe_figures, load_for_inference, split_figures
    from training.metrics import METRIC_NAMES, evaluate_split

    out_dir = Path(cfg.out_dir)
    tokenizer_dir = Path(cfg.tokenizer_dir) if cfg.tokenizer_dir else None
    figures_jsonl = Path(cfg.figures_jsonl) if cfg.figures_jsonl else None
    # Every model loads (and fails) before any generation.
    main = load_for_inference(Path(cfg.model_dir), tokenizer_dir=tokenizer_dir)
    ablation_models = {
        name: main if model_dir is None else load_for_inference(Path(model_dir), tokenizer_dir=tokenizer_dir)
        for name, model_dir in cfg.ablations.items()
    }

    rejected: list[Rejection] = []
    figures_by_kind: dict[str, list[Any]] = {}
    predictions: dict[str, dict[str, str]] = {}
    references: dict[str, dict[str, str]] = {}
    for kind in sorted(cfg.test_jsons):
        figures, refs, left_out = split_figures(Path(cfg.test_jsons[kind]), figures_jsonl, limit=cfg.limit)
        rejected += left_out
        report.log(f"evaluate: {len(figures)} {kind} test figures ({len(left_out)} entries left out)")
        run = describe_figures(
            figures,
            main,
            kind,  # type: ignore[arg-type]
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
            on_batch=_progress(report, f"evaluate {kind}"),
        )
        rejected += run.rejected
        if not run.descriptions:
            raise ValueError(f"{cfg.test_jsons[kind]}: no {kind} test figure could be described")
        # Scored on the figures described; the ones whose image failed are in rejected.jsonl.
        figures_by_kind[kind] = [f for f in figures if f.image_id in run.descriptions]
        predictions[kind] = run.descriptions
        references[kind] = {i: refs[i] for i in run.descriptions}
    sheets = _sheet_labels(figures_jsonl) if figures_jsonl is not None else {}
    synthetic = {image_id: is_synthetic for image_id, (_, is_synthetic) in sheets.items()} or None

    def score(texts: Mapping[str, Mapping[str, str]], where: Path) -> dict[str, Any]:
        scores = evaluate_split(texts, references, where, synthetic)
        _add_label_rates(scores, texts, sheets)
        return scores

    results = score(predictions, out_dir)
    ablation_results: dict[str, Any] = {}
    for name, inference in ablation_models.items():
        report.log(
            f"evaluate: ablation {name} ({'main model' if inference is main else inference.model_dir})"
        )
        ablated: dict[str, dict[str, str]] = {}
        for kind, figures in figures_by_kind.items():
            run = describe_figures(
                figures,
                inference,
                kind,  # type: ignore[arg-type]
                batch_size=cfg.batch_size,
                max_new_tokens=cfg.max_new_tokens,
                inputs=name,  # type: ignore[arg-type]
                on_batch=_progress(report, f"ablation {name} {kind}"),
            )
            missing = sorted(set(references[kind]) - set(run.descriptions))
            if missing:
                raise ValueError(f"ablation {name}: {kind} figures {missing[:5]} could not be described")
            ablated[kind] = run.descriptions
        ablation_results[name] = score(ablated, out_dir / "ablations" / name)
        ablation_results[name]["model_dir"] = str(inference.model_dir)
    baseline_results = {
        name: score(texts, out_dir / "baselines" / name)
        for name, texts in _baseline_descriptions(cfg, figures_by_kind, report).items()
    }

    # What the full model gains over each ablation (positive: the ablated input helps).
    comparison = {
        name: {
            kind: {m: results[kind][m] - scores[kind][m] for m in METRIC_NAMES} for kind in figures_by_kind
        }
        for name, scores in ablation_results.items()
    }
    combined = {
        **results,
        "model_dir": cfg.model_dir,
        "rejected": len(rejected),
        "ablations": ablation_results,
        "baselines": baseline_results,
        "comparison": comparison,
    }
    write_jsonl(out_dir / "rejected.jsonl", rejected)
    metrics_path = _write_json(out_dir / METRICS_FILE, combined)

    flat = _flat_scores(results, figures_by_kind)
    flat |= {f"{kind}_figures": results[kind]["figures"] for kind in figures_by_kind}
    others = {
        f"{name}_{key}": value
        for name, scores in ablation_results.items()
        for key, value in _flat_scores(scores, figures_by_kind).items()
    }
    others |= {
        f"baseline_{name}_{key}": value
        for name, scores in baseline_results.items()
        for key, value in _flat_scores(scores, figures_by_kind).items()
    }
    if cfg.mlflow_run_id:
        _log_to_mlflow(cfg, flat | others, figures_by_kind, predictions, references, out_dir, report)
    return {
        **flat,
        **{key: value for key, value in others.items() if key.endswith(("_bleu4", "_rougeL"))},
        "rejected": len(rejected),
        "metrics_json": metrics_path,
        **{f"predictions_{kind}": out_dir / f"predictions_{kind}.json" for kind in figures_by_kind},
        "mlflow_run_id": cfg.mlflow_run_id,
    }


def _flat_scores(results: Mapping[str, Any], kinds: Iterable[str]) -> dict[str, float]:
    """`{kind}_{metric}` of every metric measured: all figures, each origin apart, label rates."""
    from training.metrics import LABEL_RATES, METRIC_NAMES, ORIGIN_METRICS

    return {
        f"{kind}_{name}": results[kind][name]
        for kind in kinds
        for name in (*METRIC_NAMES, *ORIGIN_METRICS, *LABEL_RATES)
        if results[kind].get(name) is not None
    }


def _baseline_descriptions(
    cfg: EvaluateJob, figures_by_kind: Mapping[str, list[Any]], report: Reporter
) -> dict[str, dict[str, dict[str, str]]]:
    """baseline -> kind -> {image id: description} for the figures the model described."""
    from training import description_baselines as baselines
    from training.inference import split_figures

    texts: dict[str, dict[str, dict[str, str]]] = {}
    if "constant" in cfg.baselines:
        texts["constant"] = {
            kind: baselines.constant_descriptions([f.image_id for f in figures])
            for kind, figures in figures_by_kind.items()
        }
    if "nearest_neighbour" in cfg.baselines:
        assert cfg.figures_jsonl is not None  # checked by the config
        embed, encoder = baselines.retrieval_embedder(
            Path(cfg.nearest_neighbour_encoder_dir) if cfg.nearest_neighbour_encoder_dir else None,
            cfg.untouched_preset,
            cfg.encoder,
            Path(cfg.feature_cache) if cfg.feature_cache else None,
        )
        patent_of = {
            row["image_id"]: row.get("patent_id", "")
            for row in read_jsonl(Path(cfg.figures_jsonl))
            if "image_id" in row
        }
        texts["nearest_neighbour"] = {}
        for kind, figures in figures_by_kind.items():
            pool_figures, pool_refs, _ = split_figures(Path(cfg.train_jsons[kind]), Path(cfg.figures_jsonl))
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
        texts["ocr_label"] = {}
        figures_jsonl = Path(cfg.figures_jsonl) if cfg.figures_jsonl else None
        for kind, figures in figures_by_kind.items():
            _, pool_refs, _ = split_figures(Path(cfg.train_jsons[kind]), figures_jsonl)
            texts["ocr_label"][kind] = baselines.ocr_label_descriptions(
                {f.image_id: _ocr_words(f.ocr) for f in figures}, pool_refs
            )
    return texts


def _ocr_words(ocr: Any) -> list[str]:
    """The words of a figure's stored OCR (an `OcrWords` or its dict); none when it has none."""
    if ocr is None:
        return []
    words = ocr.get("words", []) if isinstance(ocr, Mapping) else getattr(ocr, "words", [])
    return [str(word) for word in words]


def _sheet_labels(figures_jsonl: Path) -> dict[str, tuple[list[str], bool]]:
    """image_id -> (the FIG labels aligned to its sheet, whether it is synthetic)."""
    from patent_assets.records import read_jsonl

    return {
        row["image_id"]: (list(row.get("figure_labels") or []), bool(row.get("synthetic", False)))
        for row in read_jsonl(figures_jsonl)
        if "image_id" in row
    }


def _add_label_rates(
    results: dict[str, Any],
    predictions: Mapping[str, Mapping[str, str]],
    sheets: Mapping[str, tuple[list[str], bool]],
) -> None:
    """Each kind's LABEL_RATES (and its labelled-figure counts) into `results`."""
    from training.metrics import printed_label_rate

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
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri, registry_uri=uri).log_artifacts(run_id, str(out_dir), "evaluation")
    report.log(f"evaluate: metrics, samples and outputs logged to MLflow run {run_id}")


def run_generate(cfg: GenerateJob, report: Reporter) -> dict[str, Any]:
    from training.inference import describe_figures, load_for_inference

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
    from training.inference import Figure

    figures: list[Any] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for line, row in enumerate(read_jsonl(figures_jsonl), start=1):
        item = str(row.get("image_id") or f"{figures_jsonl.name}:{line}")
        if "image_id" not in row or "image_path" not in row:
            rejected.append(Rejection(item, "no image_id or image_path", "inference", str(figures_jsonl)))
            continue
        if item in seen:
            rejected.append(Rejection(item, "duplicate image_id", "inference", str(figures_jsonl)))
            continue
        seen.add(item)
        path = Path(row["image_path"])
        ocr = row.get("ocr") or {"words": [], "boxes": []}
        figures.append(
            Figure(
                item, path if path.is_absolute() else figures_jsonl.parent / path, ocr if use_ocr else None
            )
        )
    return figures, rejected


def run_retrieval_encoder(cfg: RetrievalEncoderJob, report: Reporter) -> dict[str, Any]:
    from training.retrieval_train import RetrievalTrainConfig, train_retrieval_encoder

    options = {key: value for key, value in asdict(cfg).items() if key != "asset_key"}
    report.log(f"retrieval_encoder: training a {cfg.preset} encoder on {cfg.figures_jsonl}")
    summary = train_retrieval_encoder(RetrievalTrainConfig(**options), report)
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
    from training.retrieval_eval import embed_figures, evaluate_by_origin, pixel_embeddings
    from training.retrieval_model import build_encoder, load_encoder, preset
    from training.retrieval_train import read_split_figures

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
    metrics_path = _write_json(Path(cfg.out_dir) / METRICS_FILE, results)
    flat = {
        f"{name}_{task}_{metric}": value
        for name, tasks in results.items()
        for task, metrics in tasks.items()
        for metric, value in metrics.items()
        if metric in ("mAP", "Rank-1", "Recall@10", "MRR@10")
    }
    return {**flat, "figures": len(figures), "rejected": len(rejected), "metrics_json": metrics_path}


# --------------------------------------------------------------------------------------------- CLI

COMMANDS: dict[str, tuple[type[JobConfig], Any]] = {
    "patent_mme": (PatentMMEJob, run_patent_mme),
    "patent_llama": (PatentLlamaJob, run_patent_llama),
    "evaluate": (EvaluateJob, run_evaluate),
    "generate": (GenerateJob, run_generate),
    "retrieval_encoder": (RetrievalEncoderJob, run_retrieval_encoder),
    "retrieval_evaluate": (RetrievalEvaluateJob, run_retrieval_evaluate),
}


def write_config(config: JobConfig, path: Path) -> Path:
    """Write a command's config JSON (atomically), e.g. from a Dagster asset."""
    return config.to_json(Path(path))


def command_line(command: str, config_path: Path) -> list[str]:
    """argv running `command` on `config_path` with this interpreter (so the same virtualenv)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}: one of {sorted(COMMANDS)}")
    return [sys.executable, "-m", "training.jobs", command, "--config", str(Path(config_path).resolve())]


def run(command: str, config_path: Path) -> dict[str, Any]:
    """Run one command on a config file; report to Dagster Pipes when launched by it."""
    config_class, function = COMMANDS[command]
    config = config_class.from_json(Path(config_path))
    with reporting(getattr(config, "asset_key", None)) as report:
        metadata = function(config, report)
        report.materialize(metadata)
    return metadata


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.jobs", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--config", type=Path, required=True, help="the command's JSON config file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    run(args.command, args.config)


if __name__ == "__main__":
    main()
