"""From a preset and a stage to the JSON config a launched training reads.

The orchestration decides *what* to train on (paths); this module decides *how* (the stage
settings of `configs`), so a Dagster asset and a person at the command line write the same
`TrainConfig` for the same inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from patent_assets.layout import FIGURES_DIR, FIGURES_JSONL, LLAVA_DIR
from training.describe.configs import (
    STAGE1,
    STAGE1_EMBEDDED,
    STAGE2,
    STAGE2_EMBEDDED,
    Kind,
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
    kind: Kind = "brief",
    init_model_dir: Path | None = None,
    mlflow_run_id: str | None = None,
    max_steps: int | None = None,
    input_mode: str = "full",
) -> TrainConfig:
    """Stage 1 builds from the components and trains the projector; stage 2 starts from stage 1's
    model and trains LoRA + projector; both on the `kind` descriptions (PatentLMM: brief)."""
    settings = stage_settings(stage, embedded=not preset.from_checkpoints)
    settings = replace(settings, max_steps=max_steps or settings.max_steps)
    llava = inputs.dataset_dir / LLAVA_DIR
    from_parts = stage == 1 or init_model_dir is None
    return TrainConfig(
        **asdict(settings),  # the stage's settings under their own names: TrainConfig is a StageConfig
        train_json=str(llava / f"{kind}_train.json"),
        val_json=str(llava / f"{kind}_val.json"),
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
        max_length=preset.max_length,
        checkpoint_every_steps=50,
        mlflow_run_id=mlflow_run_id,
        inputs=input_mode,
    )
