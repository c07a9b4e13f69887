"""The retrieval half: the figure encoder trained, gated, promoted; the search index built from it.

    figure_dataset, generated_descriptions -> retrieval_encoder -> retrieval_challenger
        -> (checks: retrieval_challenger_beats_champion, blocking;
            retrieval_challenger_beats_pretrained, a warning)
        -> retrieval_champion -> retrieval_index

The encoder trains in a subprocess launched through Pipes (an ImageNet-pretrained backbone, its
head fine-tuned with ArcFace on patent identity plus the LLM-informed alignment with the champion
PatentLMM's descriptions); the gate judges on the real (USPTO) held-out drawings, against the
champion, the untouched pretrained backbone and pixel matching; MLflow holds its run and
registry versions; the index (figures, text-space projections, patents' title + abstract, the
encoder itself) is one DVC-versioned directory that `patentflow search` reads, built by a
launched job too (the same `build_search_index` as `patentflow index`).
"""
# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

import json
from dataclasses import asdict, replace
from pathlib import Path

import dagster as dg

from orchestration import promotion
from orchestration.assets import figure_dataset
from orchestration.launching import latest, run_job, work_dir
from orchestration.model_assets import EAGER, generated_descriptions
from orchestration.resources import (
    DataVersioning,
    MlflowTracking,
    PatentflowHome,
    RetrievalSettings,
    TrainingLauncher,
)
from training.job import flat_metrics
from training.retrieval.commands import RetrievalEvaluateJob, SearchIndexJob
from training.retrieval.configs import RetrievalTrainConfig

RETRIEVAL_GROUP = "retrieval"
QUERY_SPLITS = ["val", "test"]  # held-out patents; the training patents stay in the database
BARS = ("champion", "untouched", "pixels")  # what the challenger is evaluated beside


# What the challenger's metadata and its registry version show, in this order.
HEADLINE = [
    f"{origin}{key}"
    for origin in ("real_", "synthetic_", "")
    for key in ("same_patent_mAP", "same_patent_Rank-1", "prior_art_mAP")
] + ["same_patent_Rank-5", "prior_art_Recall@10"]


def _headline(flat: dict[str, float]) -> dict[str, dg.MetadataValue]:
    return {key: dg.MetadataValue.float(round(flat[key], 4)) for key in HEADLINE if key in flat}


@dg.asset(
    deps=[figure_dataset, generated_descriptions],
    group_name=RETRIEVAL_GROUP,
    kinds={"pytorch"},
    automation_condition=EAGER,
    description="The figure encoder: an ImageNet-pretrained backbone with GeM pooling and a learned-whitening "
    "head, fine-tuned with ArcFace on patent identity and aligned (L_clip, L_cls, L_cat, uncertainty-weighted) "
    "with a frozen text encoder's embeddings of each figure's brief and generated descriptions, on real and "
    "synthetic training patents. Untrained and trained scores are logged.",
)
def retrieval_encoder(
    context: dg.AssetExecutionContext,
    home: PatentflowHome,
    retrieval: RetrievalSettings,
    mlflow: MlflowTracking,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    from training import tracking

    uri = mlflow.uri()
    out = work_dir(home, context)
    config = RetrievalTrainConfig(
        figures_jsonl=str(home.home.figures_jsonl),
        out_dir=str(out),
        preset=retrieval.preset,
        encoder=retrieval.encoder_overrides(),
        generated_descriptions=latest(context, "generated_descriptions"),
        text_encoder_dir=retrieval.text_encoder_dir or None,
        eval_splits=QUERY_SPLITS,
        trainable_blocks=retrieval.trainable_blocks,
        feature_cache=str(home.home.feature_cache),
        epochs=retrieval.epochs or RetrievalTrainConfig.epochs,  # 0: the training's default
        tracking_uri=uri,
    )
    with tracking.training_run(
        experiment=mlflow.retrieval_experiment,
        run_name=f"encoder-{context.run.run_id[:8]}",
        # without the run id, not known yet: the job logs every param again with it, and MLflow
        # refuses a param logged twice with two values; asset_key says where Pipes reports, not how
        params={k: v for k, v in asdict(config).items() if k not in ("mlflow_run_id", "asset_key")},
        tags={"dagster_run_id": context.run.run_id, "task": "figure retrieval"},
        data_version={
            "figure_dataset_md5": latest(context, "figure_dataset", "dvc_md5"),
            "generated_descriptions_md5": latest(context, "generated_descriptions", "dvc_md5"),
        },
        tracking_uri=uri,
    ) as run_id:
        return run_job(
            launcher,
            context,
            "retrieval_encoder",
            replace(config, mlflow_run_id=run_id),
            out / "job.json",
            {"path": str(out / "encoder"), "mlflow_run_id": run_id},
        )


def _evaluate(
    context: dg.AssetExecutionContext,
    launcher: TrainingLauncher,
    home: PatentflowHome,
    retrieval: RetrievalSettings,
    encoders: dict[str, str],
    out: Path,
) -> dict[str, dict[str, float]]:
    config = RetrievalEvaluateJob(
        encoder_dirs=encoders,
        figures_jsonl=str(home.home.figures_jsonl),
        out_dir=str(out),
        query_splits=QUERY_SPLITS,
        # the backbone as pretrained, no training: what fine-tuning must improve on
        untouched_preset=retrieval.preset,
        encoder=retrieval.encoder_overrides(),
        feature_cache=str(home.home.feature_cache),
    )
    run_job(launcher, context, "retrieval_evaluate", config, out / "job.json")
    return {
        name: flat_metrics(metrics)
        for name, metrics in json.loads((out / "metrics.json").read_text()).items()
    }


@dg.asset(
    deps=[retrieval_encoder],
    group_name=RETRIEVAL_GROUP,
    kinds={"mlflow"},
    automation_condition=EAGER,
    description="The new encoder registered with alias `challenger`; it, the champion, the untouched pretrained "
    "backbone and pixel matching are evaluated on the same held-out patents, real (USPTO) and synthetic apart "
    "(same-patent mAP / Rank-N; prior-art mAP, Recall@10, MRR@10).",
)
def retrieval_challenger(
    context: dg.AssetExecutionContext,
    home: PatentflowHome,
    retrieval: RetrievalSettings,
    mlflow: MlflowTracking,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    from training import tracking

    uri, out, model = mlflow.uri(), work_dir(home, context), mlflow.retrieval_model
    champion = promotion.current_champion(home.home, model, uri)
    encoder_dir, run_id = (
        latest(context, "retrieval_encoder"),
        latest(context, "retrieval_encoder", "mlflow_run_id"),
    )
    encoders = {"challenger": encoder_dir}
    if champion.directory is not None:
        encoders["champion"] = str(champion.directory)
    metrics = _evaluate(context, launcher, home, retrieval, encoders, out / "evaluation")
    # the run shows all four side by side: challenger, champion, untouched backbone, pixels
    side_by_side = {
        f"eval_{name}_{key}": value for name, values in metrics.items() for key, value in values.items()
    }
    tracking.log_metrics(run_id, side_by_side, tracking_uri=uri)
    challenger = metrics["challenger"]
    record = {
        "metrics": challenger,
        "champion_version": champion.version,
        **{f"{name}_metrics": metrics.get(name) for name in BARS},
    }
    record["version"] = promotion.register_challenger(
        context,
        FAMILY,
        home=home.home,
        model=model,
        run_id=run_id,
        model_dir=encoder_dir,
        record=record,
        promotion_metric=retrieval.promotion_metric,
        uri=uri,
    )
    # the bars any learned encoder must clear: the champion, the backbone as pretrained, plain
    # pixel matching of the same figures
    bars = {f"{name}_{k}": v for name in BARS for k, v in _headline(metrics.get(name, {})).items()}
    return promotion.challenger_result(out, record, {**_headline(challenger), **bars})


def _save_mlflow_model(encoder_dir: Path, out: Path) -> Path:
    from training.retrieval import pyfunc

    return pyfunc.save(encoder_dir, out)


FAMILY = promotion.Family(
    save=_save_mlflow_model,
    description="The patent figure encoder for prior-art search: an L2-normalised embedding per drawing "
    "(input: a DataFrame with `image`, base64 PNG or TIFF); cosine similarity ranks figures of the same "
    "design or patent first. Versions are fine-tuned (ArcFace on patent identity, alignment with "
    "PatentLMM's descriptions) and gated by PatentFlow's Dagster pipeline; `champion` builds the index.",
    headline=HEADLINE,
    compared=BARS,
    dataset_asset="figure_dataset",
)

retrieval_challenger_beats_champion, retrieval_challenger_beats_pretrained, retrieval_champion = (
    promotion.gate_definitions(
        promotion.Gate(
            challenger=retrieval_challenger,
            champion="retrieval_champion",
            group=RETRIEVAL_GROUP,
            settings_key="retrieval",
            model_field="retrieval_model",
            beats_champion="retrieval_challenger_beats_champion",
            beats_champion_description="The challenger encoder must beat the champion on the same held-out "
            "patents (the promotion metric); the decision and its reason go on the model version's tags "
            "either way.",
            beats_baselines="retrieval_challenger_beats_pretrained",
            beats_baselines_description="Warns when the challenger does worse than the untouched pretrained "
            "backbone on the promotion metric: fine-tuning lost what pretraining gave. Not blocking (the "
            "champion gate decides); the version is tagged so that the loss is never shipped silently.",
            baselines=["untouched"],
            baseline_metrics=lambda retrieval: [retrieval.promotion_metric],
            champion_description="Moves the registry alias `champion` to the challenger encoder (only when "
            "the check passed).",
        ),
        EAGER,
    )
)


@dg.asset(
    deps=[retrieval_champion],
    group_name=RETRIEVAL_GROUP,
    kinds={"faiss"},
    automation_condition=EAGER,
    description="The search index of every figure, built with the champion encoder: image embeddings "
    "(fused with ink thumbnails by default), their text-space projections and the patents' title + "
    "abstract, each a FAISS index in grant-date order (prior-art and classification filtering inside "
    "the search), with each figure's PatentLMM description. DVC-versioned; `patentflow search` and "
    "`patentflow serve` read it.",
)
def retrieval_index(
    context: dg.AssetExecutionContext,
    home: PatentflowHome,
    retrieval: RetrievalSettings,
    mlflow: MlflowTracking,
    dvc: DataVersioning,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    encoder = promotion.current_champion(home.home, mlflow.retrieval_model, mlflow.uri(), required=True)
    config = SearchIndexJob(
        figures_jsonl=str(home.home.figures_jsonl),
        encoder_dir=str(encoder.directory),
        out_dir=str(home.home.search_index),
        kind=retrieval.index_kind,  # type: ignore[arg-type]
        refine=retrieval.index_refine,
        text_encoder_dir=retrieval.text_encoder_dir or None,
        encoder_source=f"{encoder.model_uri} (version {encoder.version})",
        thumbnail_weight=retrieval.index_thumbnail_weight,
        thumbnail_size=retrieval.index_thumbnail_size,
        feature_cache=str(home.home.feature_cache),
        # upstream through the encoder, which trained on them: hits show PatentLMM's description
        generated_descriptions=latest(context, "generated_descriptions"),
    )
    built = run_job(launcher, context, "search_index", config, work_dir(home, context) / "job.json").metadata
    message = f"retrieval_index {mlflow.retrieval_model} v{encoder.version}"
    return dg.MaterializeResult(
        metadata={
            **built,
            # a sample query, so the UI shows what a search returns
            "sample_query": dg.MetadataValue.md(str(built["sample_query"].value)),
            "encoder_version": encoder.version or 0,
            "kind": retrieval.index_kind,
            "thumbnail_weight": retrieval.index_thumbnail_weight,
            **dvc.track(home.home.search_index, message).metadata(),
        }
    )


retrain_retrieval = dg.define_asset_job(
    "retrain_retrieval",
    selection=dg.AssetSelection.groups(RETRIEVAL_GROUP),
    description="Encoder training, evaluation, promotion and the search index.",
)
