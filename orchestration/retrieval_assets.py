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
encoder itself) is one DVC-versioned directory that `patentflow search` reads. The index is
still embedded inside the Dagster process (the same `build_search_index` as `patentflow index`);
on a large collection it belongs in a launched job like the encoder's.
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
from orchestration.resources import DataVersioning, MlflowTracking, PatentflowHome, RetrievalSettings
from training.job import flat_metrics
from training.retrieval.commands import RetrievalEvaluateJob
from training.retrieval.configs import RetrievalTrainConfig

RETRIEVAL_GROUP = "retrieval"
QUERY_SPLITS = ["val", "test"]  # held-out patents; the training patents stay in the database


def _headline(flat: dict[str, float]) -> dict[str, dg.MetadataValue]:
    keys = [
        f"{origin}{key}"
        for origin in ("real_", "synthetic_", "")
        for key in ("same_patent_mAP", "same_patent_Rank-1", "prior_art_mAP")
    ]
    keys += ["same_patent_Rank-5", "prior_art_Recall@10"]
    return {key: dg.MetadataValue.float(round(flat[key], 4)) for key in keys if key in flat}


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
    pipes: dg.PipesSubprocessClient,
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
            pipes,
            context,
            "retrieval_encoder",
            replace(config, mlflow_run_id=run_id),
            out / "job.json",
            {"path": str(out / "encoder"), "mlflow_run_id": run_id},
        )


def _evaluate(
    context: dg.AssetExecutionContext,
    pipes: dg.PipesSubprocessClient,
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
    run_job(pipes, context, "retrieval_evaluate", config, out / "job.json")
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
    pipes: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    from training import tracking

    uri = mlflow.uri()
    out = work_dir(home, context)
    encoder_dir = latest(context, "retrieval_encoder")
    run_id = latest(context, "retrieval_encoder", "mlflow_run_id")
    encoders = {"challenger": encoder_dir}
    champion = tracking.get_alias_version(mlflow.retrieval_model, tracking.CHAMPION, tracking_uri=uri)
    if champion is not None:
        encoders["champion"] = str(
            tracking.download_model(
                f"models:/{mlflow.retrieval_model}@{tracking.CHAMPION}",
                dst=home.home.store / "models" / "retrieval-champion",
                tracking_uri=uri,
            )
        )
    metrics = _evaluate(context, pipes, home, retrieval, encoders, out / "evaluation")
    if retrieval.promotion_metric not in metrics["challenger"]:
        context.log.warning(
            f"no {retrieval.promotion_metric} (no real held-out figures?): the gate cannot judge; "
            "set RetrievalSettings.promotion_metric to same_patent_mAP for a synthetic-only collection"
        )
    # the run shows all four side by side: challenger, champion, untouched backbone, pixels
    tracking.log_metrics(
        run_id,
        {f"eval_{name}_{key}": value for name, values in metrics.items() for key, value in values.items()},
        tracking_uri=uri,
    )
    version = tracking.register_model(
        run_id,
        Path(encoder_dir),
        mlflow.retrieval_model,
        tags={k: f"{v:.4f}" for k, v in metrics["challenger"].items()},
        tracking_uri=uri,
    )
    record = {
        "version": version,
        "metrics": metrics["challenger"],
        "champion_version": champion,
        "champion_metrics": metrics.get("champion") if champion != version else None,
        "untouched_metrics": metrics.get("untouched"),
        "pixels_metrics": metrics.get("pixels"),
    }
    (out / "challenger.json").write_text(json.dumps(record, indent=2))
    return dg.MaterializeResult(
        metadata={
            "path": str(out / "challenger.json"),
            "model_version": version,
            "champion_version": champion or 0,
            **_headline(metrics["challenger"]),
            # the bars any learned encoder must clear: the champion, the backbone as pretrained,
            # plain pixel matching of the same figures
            **{
                f"{name}_{k}": v
                for name in ("champion", "untouched", "pixels")
                for k, v in _headline(metrics.get(name, {})).items()
            },
        }
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


def _results_table(hits: list) -> str:
    rows = ["| rank | score | granted | patent | figure | description |", "|---|---|---|---|---|---|"]
    rows += [
        f"| {h.rank} | {h.score:.3f} | {h.grant_date} | {h.patent_id} | {h.figure_id} | {h.description[:80]} |"
        for h in hits
    ]
    return "\n".join(rows)


@dg.asset(
    deps=[retrieval_champion],
    group_name=RETRIEVAL_GROUP,
    kinds={"faiss"},
    automation_condition=EAGER,
    description="The search index of every figure, built with the champion encoder: image embeddings "
    "(fused with ink thumbnails by default), their text-space projections and the patents' title + "
    "abstract, each a FAISS index in grant-date order (prior-art filtering inside the search). "
    "DVC-versioned; `patentflow search` reads it.",
)
def retrieval_index(
    context: dg.AssetExecutionContext,
    home: PatentflowHome,
    retrieval: RetrievalSettings,
    mlflow: MlflowTracking,
    dvc: DataVersioning,
) -> dg.MaterializeResult:
    from training import tracking
    from training.retrieval import search_index
    from training.retrieval.faiss_index import IndexOptions

    uri = mlflow.uri()
    version = tracking.get_alias_version(mlflow.retrieval_model, tracking.CHAMPION, tracking_uri=uri)
    model_uri = f"models:/{mlflow.retrieval_model}@{tracking.CHAMPION}"
    encoder_dir = tracking.download_model(
        model_uri, dst=home.home.store / "models" / "retrieval-champion", tracking_uri=uri
    )
    out = home.home.data / search_index.PIPELINE_INDEX
    options = search_index.BuildOptions(
        kind=retrieval.index_kind,  # type: ignore[arg-type]
        index_options=IndexOptions(refine=retrieval.index_refine),
        text_encoder_dir=retrieval.text_encoder_dir or None,
        encoder_source=f"{model_uri} (version {version})",
        thumbnail_weight=retrieval.index_thumbnail_weight,
        thumbnail_size=retrieval.index_thumbnail_size,
        feature_cache=home.home.feature_cache,
    )
    built = search_index.build_search_index(home.home.figures_jsonl, Path(encoder_dir), out, options)
    version_meta = dvc.track(out, f"retrieval_index {mlflow.retrieval_model} v{version}").metadata()
    # A sample query, so the UI shows what a search returns: the newest figure against its prior art.
    loaded = search_index.SearchIndex.load(out)
    newest = loaded.figures.figures[-1]
    sample = loaded.search_image(Path(newest.image_path), k=5, before=newest.grant_date)
    counts = built.manifest["counts"]
    same_patent = built.evaluation.get("same_patent", {})
    return dg.MaterializeResult(
        metadata={
            "path": str(out),
            "encoder_version": version or 0,
            "kind": retrieval.index_kind,
            "thumbnail_weight": retrieval.index_thumbnail_weight,
            "figures": counts["figures"],
            "patents": counts["patents"],
            "rejected": counts["rejected"],
            **{
                f"collection_same_patent_{k}": dg.MetadataValue.float(round(same_patent[k], 4))
                for k in ("mAP", "Rank-1")
                if k in same_patent
            },
            "sample_query": dg.MetadataValue.md(
                f"Query: {newest.figure_id} ({newest.patent_id}, granted {newest.grant_date}), "
                f"prior art only\n\n{_results_table(sample)}"
            ),
            **version_meta,
        }
    )


retrain_retrieval = dg.define_asset_job(
    "retrain_retrieval",
    selection=dg.AssetSelection.groups(RETRIEVAL_GROUP),
    description="Encoder training, evaluation, promotion and the search index.",
)
