"""Model presets and training configs: a tiny and a 7B PatentLMM are the same code with different values.

`ModelPreset` says what the model is (sizes for a random-initialised model, or local directories of
real checkpoints); `StageConfig` says how a training stage runs. The production values are
PatentLMM's (vl2g/PatentLMM job files, see ANCHORS.md); the `*_EMBEDDED` stage configs shrink them
so the embedded default trains on 2 CPU cores in minutes. `PatentMMEPretraining` and
`PatentLlamaPretraining` say how the encoder and the LM pretrain; their jobs' configs are them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Kind = Literal["brief", "detailed"]

# LLaVA-1.5's LoRA targets: every linear layer of the language model's decoder.
LLAMA_LORA_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


@dataclass(frozen=True)
class ModelPreset:
    """What PatentLMM is built from.

    With `encoder_dir`, `lm_dir` and `tokenizer_dir` set, the model is assembled from those local
    checkpoint directories (`PatentLMMForConditionalGeneration.from_components`); otherwise it is
    random-initialised from the sizes below and a tokenizer trained on the data.
    """

    name: str
    # Vision encoder (LayoutLMv3): image + OCR words and boxes.
    image_size: int = 384
    patch_size: int = 16
    ocr_max_tokens: int = 512
    vision_hidden_size: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_intermediate_size: int = 4096
    # LayoutLMv3 embeds a box as 4 coordinates and 2 sizes: 4 * coordinate + 2 * shape = hidden size.
    vision_coordinate_size: int = 171
    vision_shape_size: int = 170
    # Language model (Llama).
    text_hidden_size: int = 4096
    text_layers: int = 32
    text_heads: int = 32
    text_intermediate_size: int = 11008
    max_position_embeddings: int = 4096
    # A random LM with frozen std-0.02 weights cannot make confident logits (|logit| < ~1.5), so
    # LoRA alone could not fit anything: the tiny preset initialises wider. Unused for checkpoints.
    text_initializer_range: float = 0.02
    max_length: int = 2048  # longest training sequence, image placeholders included
    vocab_size: int = 4000  # of the tokenizer trained on the data, when none is given
    projector_type: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    # A pointer over the OCR tokens beside the LM head (modeling.PatentLMMOcrPointer); needs one
    # vocabulary for OCR and LM, as the embedded tokenizer has.
    ocr_copy: bool = False
    # The pointer also reads what follows the token it just copied (copies a split label whole).
    ocr_copy_read: bool = False
    # With the read, the gate learns to keep copying while the copied token's OCR word goes on.
    ocr_copy_word: bool = False
    # With the read, the copied token is found on the sheet by the pair (token before it, token), not
    # the token alone: the "." after "FIG" is the label's, not every "." the sheet prints.
    ocr_copy_pair: bool = False
    # Local checkpoint directories (production); None: random initialisation.
    encoder_dir: str | None = None
    lm_dir: str | None = None
    tokenizer_dir: str | None = None
    lora_adapter_dir: str | None = None  # e.g. PatentLLaMA, loaded as the stage-2 LoRA's start

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_image_features(self) -> int:
        """Placeholders per image: every encoder position (OCR tokens, visual CLS, patches) but the first."""
        return self.ocr_max_tokens + self.num_patches

    @property
    def from_checkpoints(self) -> bool:
        return self.encoder_dir is not None and self.lm_dir is not None


# Embedded default: small enough that both stages train on 2 CPU cores in minutes.
TINY = ModelPreset(
    name="tiny",
    image_size=64,
    patch_size=16,
    ocr_max_tokens=32,
    vision_hidden_size=64,
    vision_layers=2,
    vision_heads=4,
    vision_intermediate_size=128,
    vision_coordinate_size=12,
    vision_shape_size=8,
    text_hidden_size=64,
    text_layers=2,
    text_heads=4,
    text_intermediate_size=128,
    max_position_embeddings=512,
    text_initializer_range=0.2,
    max_length=512,
    vocab_size=2000,
    # The tiny LM does not learn to copy the sheet's FIG label through its embeddings in the steps
    # a CPU can pay for (README, "FIG labels"); a pointer over the OCR tokens reads it directly.
    ocr_copy=True,
    ocr_copy_read=True,
    ocr_copy_word=True,
    ocr_copy_pair=True,
)

# PatentLMM: PatentMME (LayoutLMv3-large, 384 px) + LLaVA-1.5-7B, PatentLLaMA LoRA. The directories
# are where an operator puts the checkpoints; nothing is downloaded at run time.
PRODUCTION = ModelPreset(
    name="production",
    image_size=384,
    patch_size=16,
    ocr_max_tokens=512,
    max_length=2048,
    encoder_dir="checkpoints/patentmme",
    lm_dir="checkpoints/llava-v1.5-7b",
    tokenizer_dir="checkpoints/tokenizer",
    lora_adapter_dir="checkpoints/patentllama",
)

PRESETS: dict[str, ModelPreset] = {preset.name: preset for preset in (TINY, PRODUCTION)}


@dataclass(frozen=True)
class StageConfig:
    """How one training stage runs. Stage 1 trains the projector only; stage 2 LoRA + projector.

    `training.describe.train.TrainConfig` is this plus what the stage trains on, so these names are
    the keys of the JSON config a launched training reads: nothing renames them on the way.
    PatentLMM's values are STAGE1 and STAGE2 below; the defaults are small.
    """

    stage: Literal[1, 2]
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs); None: whole epochs
    lr: float = 1e-3
    projector_lr: float | None = None  # None: the projector uses `lr`
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    schedule: Literal["cosine"] = "cosine"
    per_device_batch: int = 2
    grad_accum: int = 1
    zero_stage: Literal[2, 3] = 2
    bf16: bool | Literal["auto"] = "auto"  # auto: bf16 where CUDA supports it, else fp32
    gradient_checkpointing: bool = False
    # LoRA on the LM in stage 2; stage 1 trains none and ignores these
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LORA_TARGETS))
    # share of training reads with renumbered FIG labels (training.describe.data.PatentLMMDataset); not PatentLMM's
    renumber_share: float = 0.0
    # figures drawn with weight (figures of their patent) ** -patent_balance; 0, PatentLMM's: each once
    # an epoch (training.describe.data.patent_balanced_weights)
    patent_balance: float = 0.0
    # and times min(1, patent_cap / figures of their patent): a larger patent is drawn as one of
    # patent_cap figures; 0: no cap
    patent_cap: int = 0

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage!r}")
        if self.zero_stage not in (2, 3):
            raise ValueError(f"zero_stage must be 2 or 3, got {self.zero_stage!r}")
        if self.bf16 not in (True, False, "auto"):
            raise ValueError(f'bf16 must be true, false or "auto", got {self.bf16!r}')
        if self.schedule != "cosine":
            raise ValueError(f'schedule must be "cosine", got {self.schedule!r}')
        if self.per_device_batch < 1 or self.grad_accum < 1:
            raise ValueError("per_device_batch and grad_accum must be >= 1")
        if self.patent_balance < 0 or self.patent_cap < 0:
            raise ValueError(
                f"patent_balance and patent_cap must be >= 0, got {self.patent_balance}, {self.patent_cap}"
            )


STAGE1 = StageConfig(
    stage=1,
    lr=1e-3,
    epochs=1,
    per_device_batch=12,
    grad_accum=8,
    gradient_checkpointing=True,
)

# PatentLMM trains one stage-2 model per kind of description (plans.train_config's `kind`) and
# validates at each epoch end, as every training here does when it has a val_json.
STAGE2 = StageConfig(
    stage=2,
    lr=2e-4,
    projector_lr=2e-5,
    epochs=25,
    per_device_batch=8,
    grad_accum=8,
    gradient_checkpointing=True,
    lora_r=128,
    lora_alpha=256,
)

# CPU-sized overrides of the same stages for the embedded default: fp32 (CPUs have no fast bf16
# training), no gradient checkpointing (nothing to save at this size), a tiny LoRA.
# More epochs than the paper: the tiny data set is ~100 figures, and the tiny model starts from
# nothing, so it needs many passes to learn what the image and its OCR say.
# The epochs count passes over ~140 training figures (the synthetic releases and the shipped real
# grants): half the epochs of the synthetic-only default, the same number of steps.
# Half the reads renumber their FIG labels: the training sheets print 1 to 9, real grants up to 92.
# On the real-drawing benchmark's fold with USD0911448 and USD0911449 (124 sheets, FIG. 1 to
# FIG. 92) the share of first labels printed on the sheet went from 0.60 to 0.72 with it and the
# pointer's selective read (seed 0); over 3 seeds and all folds, design 0.63 -> 0.73 (README).
# Each patent is drawn alike (patent_balance 1): two game-housing grants hold 113 of the 336 real
# sheets, and trained on them the model wrote their "of the game piece of FIG. n" on other grants.
# Seed 0 of the real-drawing benchmark, design ROUGE-L: 0.460 unbalanced, 0.476 at 0.5, 0.518 at 1
# (3 seeds: 0.462 -> 0.501). It costs make run's 7 real test sheets (README): its model writes the
# synthetic "bracket 20" on them; balancing within each source instead did not help (0.510, 0.458).
# On the real grants make run never saw (benchmarks/patentlmm_heldout.py, make run's data), capping
# the draws at 8 figures a patent instead (patent_cap 8, patent_balance 0) took design ROUGE-L from
# 0.453 to 0.488 (the constant: 0.463); cross-validated (3 seeds) it did not hold: design
# 0.249 / 0.505 / labels 0.923 against 0.257 / 0.507 / 0.933 balanced, so balanced draws stay.
STAGE1_EMBEDDED = replace(
    STAGE1,
    epochs=5,
    per_device_batch=4,
    grad_accum=1,
    bf16=False,
    gradient_checkpointing=False,
    renumber_share=0.5,
    patent_balance=1.0,
)
STAGE2_EMBEDDED = replace(
    STAGE2,
    lr=1e-3,
    projector_lr=1e-3,
    # with ~65 synthetic training figures, 25 epochs (the paper's) left the tiny model at the
    # text-only mode (no better than the image-blind ablation) and 40 learnt to read the sheet;
    # with the real grants the set is twice that, so 20 epochs give those 40 epochs' steps
    epochs=20,
    per_device_batch=4,
    grad_accum=1,
    bf16=False,
    gradient_checkpointing=False,
    # r 64 is full rank for the tiny LM's 64-wide layers; on one fold of the real-drawing benchmark
    # (78 design figures, same stage 1) r 8 / alpha 16 scored BLEU-4 0.098, ROUGE-L 0.328 and
    # r 64 / alpha 128 0.206, 0.463: the paper's r 128 is a small rank only for a 4096-wide LM
    lora_r=64,
    lora_alpha=128,
    renumber_share=0.5,
    patent_balance=1.0,
)


@dataclass
class PatentMMEPretraining:
    """How PatentMME pretrains (`patent_mme.pretrain_patent_mme`); the patent_mme job's config
    (`commands.PatentMMEJob`) is this plus its paths, so the names are the job's JSON keys."""

    steps: int | None = None  # None: `epochs` (default one) over the sheets
    epochs: int | None = None
    lr: float = 5e-4
    batch_size: int = 4
    seed: int = 0
    codebook_size: int | None = None  # None: the paper's 16384 for an encoder 512 wide or more, else 64
    warmup_ratio: float = 0.05


@dataclass
class PatentLlamaPretraining:
    """How PatentLLaMA pretrains (`patent_llama.pretrain_patent_llama`); the patent_llama job's config
    (`commands.PatentLlamaJob`) is this plus its paths, so the names are the job's JSON keys."""

    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    merge: bool = False  # LoRA: also save the base model with the adapter merged in
    steps: int | None = None  # None: `epochs` (default one) over the packed blocks
    epochs: int | None = None
    lr: float = 1e-3
    batch_size: int = 8
    block_size: int = 128
    held_out_fraction: float = 0.1  # of the documents, whole, for the perplexity before and after
    warmup_ratio: float = 0.05
    seed: int = 0
