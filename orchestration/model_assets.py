"""The model half: PatentLMM trained in two stages, evaluated, registered, promoted.

    llava_dataset -> description_tokenizer -> patent_mme, patent_llama
                  -> patentlmm_stage1 -> patentlmm_stage2 -> patentlmm_challenger
                  -> (check: challenger_beats_champion) -> patentlmm_champion -> generated_descriptions

Training never runs in the Dagster process: each asset that fits or evaluates a model writes a
typed JSON config and launches `python -m training` through Dagster Pipes (the DeepSpeed
launcher for the stages, so a machine's every GPU is used). The tokenizer goes to a directory
content-addressed by its training text under $PATENTFLOW_HOME/store/models; MLflow holds runs,
curves and the registry.
"""
# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import dagster as dg

from orchestration import promotion
from orchestration.assets import llava_dataset, release_documents
from orchestration.launching import latest, run_job, work_dir
from orchestration.resources import (
    DataVersioning,
    MlflowTracking,
    PatentflowHome,
    PatentLMMSettings,
    RetrievalSettings,
    TrainingLauncher,
)
from patent_assets import dataset, pipeline
from patent_assets.records import atomic_write
from patent_assets.store import ArtifactStore
from training.describe import distributed, plans
from training.describe.baselines import BASELINES
from training.describe.commands import (
    ABLATIONS,
    EvaluateJob,
    GenerateJob,
    PatentLlamaJob,
    PatentMMEJob,
    TokenizerJob,
    flat_scores,
)

MODEL_GROUP = "patentlmm"
# What the challenger must beat the baselines on: the real (USPTO) test figures' brief descriptions.
REAL_GATE_METRICS = ("brief_real_bleu4", "brief_real_rougeL")
BASELINE_HEADLINE = ("brief_bleu4", "brief_rougeL", *REAL_GATE_METRICS, "brief_real_printed_label_rate")
EAGER = dg.AutomationCondition.eager()


@dg.asset(
    deps=[llava_dataset],
    group_name=MODEL_GROUP,
    kinds={"huggingface"},
    automation_condition=EAGER,
    description="The BPE tokenizer of the embedded default, trained on the training descriptions and OCR "
    "words and on the patent text of the validated releases (text-only weekly files too; held-out "
    "patents left out), in LM form and LayoutLMv3 OCR-processor form; production uses the checkpoint's.",
)
def description_tokenizer(
    context: dg.AssetExecutionContext,
    home: PatentflowHome,
    settings: PatentLMMSettings,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    preset = settings.model_preset()
    if preset.tokenizer_dir:
        return dg.MaterializeResult(metadata={"path": preset.tokenizer_dir, "source": "checkpoint"})
    documents = dataset.validated_documents(home.home.releases)
    # content-addressed by its training text: the job reuses a tokenizer already there
    key = pipeline.inputs_hash(*documents) + ArtifactStore.hash_tree(home.home.llava_json)
    out = home.home.store / "models" / "tokenizer" / hashlib.sha256(key.encode()).hexdigest()[:16]
    config = TokenizerJob(
        out_dir=str(out),
        train_jsons=[str(p) for p in sorted(home.home.llava_json.glob("*_train.json"))],
        documents=[str(p) for p in documents],
        figures_jsonl=str(home.home.figures_jsonl),
        preset=settings.preset,
    )
    return run_job(
        launcher, context, "tokenizer", config, work_dir(home, context) / "job.json", {"source": "trained"}
    )


@dg.asset(
    deps=[llava_dataset, description_tokenizer],
    group_name=MODEL_GROUP,
    kinds={"pytorch"},
    automation_condition=EAGER,
    description="PatentMME: the LayoutLMv3 encoder pretrained on the drawing sheets (MLM on OCR tokens, "
    "masked image modelling on ink patches, patch classification); a configured checkpoint is loaded instead.",
)
def patent_mme(
    context: dg.AssetExecutionContext,
    home: PatentflowHome,
    settings: PatentLMMSettings,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    out = work_dir(home, context)
    config = PatentMMEJob(
        records_jsonl=str(home.home.figures_jsonl),
        tokenizer_dir=latest(context, "description_tokenizer"),
        out_dir=str(out),
        preset=settings.preset,
        checkpoint_dir=settings.model_preset().encoder_dir,
        steps=settings.pretrain_steps,
    )
    return run_job(launcher, context, "patent_mme", config, out / "job.json", {"path": str(out / "encoder")})


@dg.asset(
    deps=[release_documents, description_tokenizer],
    group_name=MODEL_GROUP,
    kinds={"pytorch"},
    automation_condition=EAGER,
    description="PatentLLaMA: the language model pretrained on the patent text of the validated releases "
    "(titles, abstracts, descriptions, claims; text-only weekly files too; held-out patents left out), "
    "from scratch for the tiny default, LoRA continued pretraining of a checkpoint in production.",
)
def patent_llama(
    context: dg.AssetExecutionContext,
    home: PatentflowHome,
    settings: PatentLMMSettings,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    out = work_dir(home, context)
    config = PatentLlamaJob(
        documents=[str(p) for p in dataset.validated_documents(home.home.releases)],
        figures_jsonl=str(home.home.figures_jsonl),
        tokenizer_dir=latest(context, "description_tokenizer"),
        out_dir=str(out),
        preset=settings.preset,
        base_model_dir=settings.model_preset().lm_dir,
        steps=settings.pretrain_steps,
    )
    return run_job(launcher, context, "patent_llama", config, out / "job.json", {"path": str(out / "lm")})


def _train_stage(
    stage: int,
    context: dg.AssetExecutionContext,
    home: PatentflowHome,
    settings: PatentLMMSettings,
    mlflow: MlflowTracking,
    launcher: TrainingLauncher,
    input_mode: str = "full",
) -> dict:
    """Launch one training (DeepSpeed, through Pipes) in its own MLflow run; its metadata."""
    from training import tracking

    out = work_dir(home, context) / input_mode
    cfg = _stage_config(stage, context, home, settings, out, input_mode)
    uri = mlflow.uri()
    with tracking.training_run(
        experiment=mlflow.experiment,
        run_name=f"stage{stage}-{input_mode}-{context.run.run_id[:8]}",
        params=asdict(cfg),
        tags={"stage": str(stage), "inputs": input_mode, "dagster_run_id": context.run.run_id},
        data_version={"llava_dataset_md5": latest(context, "llava_dataset", "dvc_md5")},
        tracking_uri=uri,
    ) as run_id:
        out.mkdir(parents=True, exist_ok=True)
        replace(cfg, mlflow_run_id=run_id).to_json(out / "train_config.json")
        command = distributed.launch_command(
            out / "train_config.json",
            nproc_per_node=settings.nproc_per_node or launcher.processes(),
            launcher=settings.launcher,
        )  # type: ignore[arg-type]
        reported = launcher.run(context, command, {"MLFLOW_TRACKING_URI": uri})
        rows = (json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip())
        history = [row for row in rows if "step" in row]
        if history:
            tracking.log_curve_plot(run_id, history, name=f"stage{stage}_loss", tracking_uri=uri)
    return {
        **(reported.metadata or {}),
        "path": str(out / "model"),
        "mlflow_run_id": run_id,
        "steps": len(history),
    }


def _stage_config(
    stage: int,
    context: dg.AssetExecutionContext,
    home: PatentflowHome,
    settings: PatentLMMSettings,
    out: Path,
    input_mode: str,
) -> plans.TrainConfig:
    """The training config of one stage, from the upstream assets' latest outputs."""
    preset = settings.model_preset()
    inputs = plans.TrainingInputs(
        dataset_dir=home.home.dataset,
        tokenizer_dir=Path(latest(context, "description_tokenizer")),
        encoder_dir=Path(latest(context, "patent_mme")),
        lm_dir=Path(latest(context, "patent_llama")),
        lora_adapter_dir=Path(preset.lora_adapter_dir) if preset.lora_adapter_dir else None,
    )
    return plans.train_config(
        stage,
        inputs,
        out,
        preset,
        init_model_dir=Path(latest(context, "patentlmm_stage1")) if stage == 2 else None,
        max_steps=settings.max_steps or None,
        input_mode=input_mode,
    )


@dg.asset(
    deps=[llava_dataset, description_tokenizer, patent_mme, patent_llama],
    group_name=MODEL_GROUP,
    kinds={"deepspeed"},
    automation_condition=EAGER,
    description="Stage 1: the projector alone learns to map the frozen encoder into the frozen LM, on brief descriptions.",
)
def patentlmm_stage1(
    context: dg.AssetExecutionContext,
    home: PatentflowHome,
    settings: PatentLMMSettings,
    mlflow: MlflowTracking,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=_train_stage(1, context, home, settings, mlflow, launcher))


@dg.asset(
    deps=[patentlmm_stage1],
    group_name=MODEL_GROUP,
    kinds={"deepspeed"},
    automation_condition=EAGER,
    description="Stage 2: LoRA on the LM plus the projector, from stage 1's model.",
)
def patentlmm_stage2(
    context: dg.AssetExecutionContext,
    home: PatentflowHome,
    settings: PatentLMMSettings,
    mlflow: MlflowTracking,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata=_train_stage(2, context, home, settings, mlflow, launcher))


@dg.asset(
    deps=[patentlmm_stage1],
    group_name=MODEL_GROUP,
    kinds={"deepspeed"},
    automation_condition=EAGER,
    description="Ablations that prove the image pathway works: stage 2 trained (and later evaluated) "
    "without the image (text prompt only: blank page, no OCR) and, when PatentLMMSettings.ablations "
    "lists it, without the OCR words.",
)
def patentlmm_ablations(
    context: dg.AssetExecutionContext,
    home: PatentflowHome,
    settings: PatentLMMSettings,
    mlflow: MlflowTracking,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    unknown = sorted(set(settings.ablations) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"unknown ablations {unknown}: PatentLMMSettings.ablations takes {list(ABLATIONS)}")
    trained = {
        mode: _train_stage(2, context, home, settings, mlflow, launcher, input_mode=mode)
        for mode in settings.ablations
    }
    paths = {mode: meta["path"] for mode, meta in trained.items()}
    out = work_dir(home, context) / "ablations.json"
    out.write_text(json.dumps(paths, indent=2))
    return dg.MaterializeResult(metadata={"path": str(out), "models": dg.MetadataValue.json(paths)})


def _evaluate(
    context: dg.AssetExecutionContext,
    launcher: TrainingLauncher,
    home: PatentflowHome,
    model_dir: str,
    out: Path,
    run_id: str | None,
    uri: str,
    ablations: dict[str, str | None],
    baselines: dict | None = None,
) -> dict:
    llava = home.home.llava_json
    config = EvaluateJob(
        out_dir=str(out),
        model_dir=model_dir,
        test_jsons={"brief": str(llava / "brief_test.json")},
        figures_jsonl=str(home.home.figures_jsonl),
        # models trained without the image / the OCR, evaluated on the inputs they trained on
        ablations=ablations,
        mlflow_run_id=run_id,
        tracking_uri=uri,
        max_new_tokens=96,
        **(baselines or {}),
    )
    run_job(launcher, context, "evaluate", config, out / "job.json")
    return json.loads((out / "metrics.json").read_text())


def _baselines(home: PatentflowHome, retrieval: RetrievalSettings, mlflow: MlflowTracking) -> dict:
    """The evaluation's model-free baselines (`EvaluateJob` fields): a constant sentence, the training
    description of the nearest figure by the figure-search champion (the untouched backbone before
    there is one), and the commonest training sentence about the sheet's OCR-read FIG label."""
    encoder = promotion.current_champion(home.home, mlflow.retrieval_model, mlflow.uri())
    return {
        "baselines": list(BASELINES),
        "train_jsons": {"brief": str(home.home.llava_json / "brief_train.json")},
        "nearest_neighbour_encoder_dir": str(encoder.directory) if encoder.directory else None,
        "untouched_preset": retrieval.preset,
        "encoder": retrieval.encoder_overrides(),
        "feature_cache": str(home.home.feature_cache),
    }


@dg.asset(
    deps=[patentlmm_stage2, patentlmm_ablations],
    group_name=MODEL_GROUP,
    kinds={"mlflow"},
    automation_condition=EAGER,
    description="The new model evaluated on the test split, real (USPTO) and synthetic figures apart "
    "(BLEU-1..4, ROUGE, METEOR, CIDEr, printed-FIG-label rate), beside the ablations of "
    "`PatentLMMSettings.ablations` (image-blind by default) and three baselines that need no description "
    "model (a constant sentence; the nearest training figure's description by the figure-search encoder; "
    "the commonest training sentence about the first FIG label the sheet's OCR reads); registered as a model version with alias `challenger`; "
    "the champion is re-evaluated on the same split for the promotion check.",
)
def patentlmm_challenger(
    context: dg.AssetExecutionContext,
    home: PatentflowHome,
    mlflow: MlflowTracking,
    retrieval: RetrievalSettings,
    settings: PatentLMMSettings,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    uri, out, model = mlflow.uri(), work_dir(home, context), mlflow.registered_model
    champion = promotion.current_champion(home.home, model, uri)
    model_dir, run_id = (
        latest(context, "patentlmm_stage2"),
        latest(context, "patentlmm_stage2", "mlflow_run_id"),
    )
    ablations = json.loads(Path(latest(context, "patentlmm_ablations")).read_text())
    baselines = _baselines(home, retrieval, mlflow)
    metrics = _evaluate(
        context, launcher, home, model_dir, out / "challenger", run_id, uri, ablations, baselines
    )
    champion_metrics = None
    if champion.directory is not None:  # on the same split, without ablations or baselines
        champion_dir = str(champion.directory)
        champion_metrics = flat_scores(
            _evaluate(context, launcher, home, champion_dir, out / "champion", None, uri, {})
        )
    record = {
        "metrics": flat_scores(metrics),
        "champion_version": champion.version,
        "champion_metrics": champion_metrics,
        "ablations": {name: flat_scores(m) for name, m in metrics.get("ablations", {}).items()},
        **{f"{name}_metrics": flat_scores(m) for name, m in metrics.get("baselines", {}).items()},
    }
    record["version"] = promotion.register_challenger(
        context,
        FAMILY,
        home=home.home,
        model=model,
        run_id=run_id,
        model_dir=model_dir,
        record=record,
        promotion_metric=settings.promotion_metric,
        uri=uri,
    )
    return promotion.challenger_result(out, record, _challenger_metadata(record))


def _challenger_metadata(record: dict) -> dict[str, dg.MetadataValue]:
    """The challenger's scores, its ablations', and the bars that need no description model."""
    return {
        **{k: dg.MetadataValue.float(round(v, 4)) for k, v in record["metrics"].items()},
        "ablations": dg.MetadataValue.json(record["ablations"]),
        **{
            f"{name}_{k}": dg.MetadataValue.float(round(record[f"{name}_metrics"][k], 4))
            for name in BASELINES
            for k in BASELINE_HEADLINE
            if k in record.get(f"{name}_metrics", {})
        },
    }


def _save_mlflow_model(model_dir: Path, out: Path) -> Path:
    from training.describe import pyfunc

    return pyfunc.save(model_dir, out)


FAMILY = promotion.Family(
    save=_save_mlflow_model,
    description='PatentLMM (AAAI 2025): writes the brief description of a patent drawing, e.g. "FIG. 3 is a '
    'side view of the chair". Input: a DataFrame with `image` (base64 PNG or TIFF) and optional `kind` '
    "(brief or detailed); OCR runs inside. Versions are trained and gated by PatentFlow's Dagster pipeline "
    "on the USPTO releases; `champion` is the one in use.",
    headline=(*BASELINE_HEADLINE, "brief_meteor", "brief_cider"),
    compared=("champion", *BASELINES),
    dataset_asset="llava_dataset",
)

challenger_beats_champion, challenger_beats_baselines, patentlmm_champion = promotion.gate_definitions(
    promotion.Gate(
        challenger=patentlmm_challenger,
        champion="patentlmm_champion",
        group=MODEL_GROUP,
        settings_key="settings",
        model_field="registered_model",
        beats_champion="challenger_beats_champion",
        beats_champion_description="The challenger must beat the champion on the same test split (the "
        "promotion metric); the decision and its reason go on the model version's tags either way.",
        beats_baselines="challenger_beats_baselines",
        beats_baselines_description="Warns when the challenger does not beat every baseline that needs no "
        "description model (constant sentence, nearest training figure, OCR label in the commonest sentence) "
        "on the real test figures, BLEU-4 and ROUGE-L. Not blocking, so that the first model can still become "
        "champion; the version is tagged.",
        baselines=BASELINES,
        baseline_metrics=lambda _settings: REAL_GATE_METRICS,
        champion_description="Moves the registry alias `champion` to the challenger (it runs only when the "
        "promotion check passed).",
    ),
    EAGER,
)


@dg.asset(
    deps=[patentlmm_champion],
    group_name=MODEL_GROUP,
    kinds={"pytorch"},
    automation_condition=EAGER,
    description="The champion's description of every figure ({image_id: text}): the LLM-informed text for retrieval.",
)
def generated_descriptions(
    context: dg.AssetExecutionContext,
    home: PatentflowHome,
    mlflow: MlflowTracking,
    dvc: DataVersioning,
    launcher: TrainingLauncher,
) -> dg.MaterializeResult:
    champion = promotion.current_champion(home.home, mlflow.registered_model, mlflow.uri(), required=True)
    version = champion.version
    # Generation resumes within one model version only; a new champion starts afresh.
    work = home.home.store / "generated" / f"{mlflow.registered_model}-v{version}"
    config = GenerateJob(
        out_dir=str(work),
        model_dir=str(champion.directory),
        max_new_tokens=96,
        figures_jsonl=str(home.home.figures_jsonl),
    )
    reported = run_job(launcher, context, "generate", config, work_dir(home, context) / "job.json")
    out = home.home.data / "generated_descriptions"
    with atomic_write(out / "generated_descriptions.json", "wb") as handle:
        handle.write((work / "generated_descriptions.json").read_bytes())
    (out / "model.json").write_text(json.dumps({"model": mlflow.registered_model, "version": version}))
    version_meta = dvc.track(out, f"generated_descriptions {mlflow.registered_model} v{version}").metadata()
    return dg.MaterializeResult(
        metadata={
            **(reported.metadata or {}),
            "path": str(out / "generated_descriptions.json"),
            "model_version": version or 0,
            **version_meta,
        }
    )


retrain_patentlmm = dg.define_asset_job(
    "retrain_patentlmm",
    selection=dg.AssetSelection.groups(MODEL_GROUP),
    description="Tokenizer, pretraining, both stages, evaluation, promotion and generated descriptions.",
)

weekly_retrain = dg.ScheduleDefinition(
    name="weekly_retrain",
    job=retrain_patentlmm,
    cron_schedule="0 6 * * 2",  # Tuesdays, after USPTO's weekly release
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Retrains PatentLMM every week, whatever arrived.",
)
