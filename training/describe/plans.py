"""From a preset and a stage to the JSON config a launched training reads.

The orchestration decides *what* to train on (paths); this module decides *how* (the stage
settings of `configs`), so a Dagster asset and a person at the command line write the same
`TrainConfig` for the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from patent_assets.layout import FIGURES_DIR, FIGURES_JSONL, LLAVA_DIR
from training.describe.configs import (
    STAGE1,
    STAGE1_EMBEDDED,
    STAGE2,
    STAGE2_EMBEDDED,
    ModelPreset,
    StageConfig,
)
from training.describe.train import TrainConfig


@dataclass(frozen=True)
class TrainingInputs:
    dataset_dir: Path  # has llava_json/ and figures/figures.jsonl (the figure dataset)
    tokenizer_dir: Path
    encoder_dir: Path
    lm_dir: Path
    lora_adapter_dir: Path | None = None


def stage_settings(stage: int, embedded: bool) -> StageConfig:
    if stage == 1:
        return STAGE1_EMBEDDED if embedded else STAGE1
    return STAGE2_EMBEDDED if embedded else STAGE2


def train_config(
    stage: int,
    inputs: TrainingInputs,
    out_dir: Path,
    preset: ModelPreset,
    *,
    init_model_dir: Path | None = None,
    mlflow_run_id: str | None = None,
    max_steps: int | None = None,
    input_mode: str = "full",
) -> TrainConfig:
    """Stage 1 builds from the components and trains the projector on brief descriptions;
    stage 2 starts from stage 1's model and trains LoRA + projector."""
    settings = stage_settings(stage, embedded=not preset.from_checkpoints)
    llava = inputs.dataset_dir / LLAVA_DIR
    from_parts = stage == 1 or init_model_dir is None
    return TrainConfig(
        stage=stage,  # type: ignore[arg-type]
        train_json=str(llava / f"{settings.kind}_train.json"),
        val_json=str(llava / f"{settings.kind}_val.json"),
        images_root=str(inputs.dataset_dir / FIGURES_DIR / FIGURES_JSONL),
        out_dir=str(out_dir),
        tokenizer_dir=str(inputs.tokenizer_dir),
        encoder_dir=str(inputs.encoder_dir) if from_parts else None,
        lm_dir=str(inputs.lm_dir) if from_parts else None,
        lora_adapter_dir=str(inputs.lora_adapter_dir) if from_parts and inputs.lora_adapter_dir else None,
        init_model_dir=None if from_parts else str(init_model_dir),
        ocr_copy=preset.ocr_copy,
        ocr_copy_read=preset.ocr_copy_read,
        ocr_copy_word=preset.ocr_copy_word,
        ocr_copy_pair=preset.ocr_copy_pair,
        renumber_share=settings.renumber_share,
        patent_balance=settings.patent_balance,
        patent_cap=settings.patent_cap,
        epochs=settings.num_epochs,
        lr=settings.learning_rate,
        projector_lr=settings.projector_lr,
        warmup_ratio=settings.warmup_ratio,
        per_device_batch=settings.per_device_batch_size,
        grad_accum=settings.gradient_accumulation_steps,
        max_length=preset.max_length,
        zero_stage=settings.zero_stage,  # type: ignore[arg-type]
        bf16="auto" if settings.bf16 else False,
        gradient_checkpointing=settings.gradient_checkpointing,
        lora_r=settings.lora_r or 128,
        lora_alpha=settings.lora_alpha or 256,
        lora_dropout=settings.lora_dropout,
        lora_target_modules=list(settings.lora_target_modules),
        checkpoint_every_steps=50,
        mlflow_run_id=mlflow_run_id,
        max_steps=max_steps or settings.max_steps,
        inputs=input_mode,
    )
