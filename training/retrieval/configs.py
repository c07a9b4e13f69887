"""The figure encoder's training config, light to import: the retrieval_encoder asset builds it,
`training.entry` reads it from JSON (strictly: `JobConfig.from_json`), `training.retrieval.train`
trains by it, under the same names all the way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from training.job import JobConfig

LOSSES = ("arcface", "clip", "cls", "cat")


@dataclass
class RetrievalTrainConfig(JobConfig):
    """How the figure encoder trains (`training.retrieval.train.train_retrieval_encoder`), and the
    retrieval_encoder job's config as it is: the asset writes it, the job reads it.

    Outputs (`out_dir`): `encoder`, `metrics.jsonl` (per step), `summary.json` (untrained and
    trained retrieval metrics), `checkpoint` (resumed from when present).
    """

    figures_jsonl: str
    out_dir: str
    preset: str = "tiny"
    encoder: dict[str, Any] = field(default_factory=dict)  # EncoderConfig overrides of the preset
    generated_descriptions: str | None = None  # {image_id: text} JSON; None: brief descriptions only
    text_encoder_dir: str | None = None  # None: the embedded all-MiniLM-L6-v2
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test"])
    # Model selection: every `select_every` epochs the same-patent mAP of the figures of these
    # splits (searching them and the training figures only) is measured and the best epoch's
    # weights are kept. Empty: the last epoch's weights.
    select_splits: list[str] = field(default_factory=list)
    select_every: int = 5
    epochs: int = 30
    batch_size: int = 16  # P patents x K views
    views_per_patent: int = 2  # K
    lr: float = 2e-3
    # Strong regularisation: the embedded default has 19 training patents; with erasing and grid
    # masks at 0.5 and weight decay 1e-4 the encoder memorised them (held-out mAP barely moved).
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    seed: int = 0
    losses: list[str] = field(default_factory=lambda: list(LOSSES))
    arcface_scale: float = 20.0
    arcface_margin: float = 0.5  # radians, as papers state it
    erase_probability: float = 0.8
    grid_mask_probability: float = 0.8
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    num_threads: int | None = None  # torch CPU threads; None: torch's default
    # Fine-tuning a pretrained backbone. None: the whole encoder trains from pixels (training from
    # scratch, the `tiny` preset). 0: the backbone stays frozen, its pooled features are computed
    # once per image (cached by content in `feature_cache`) and the head trains on them; k > 0:
    # the last k blocks of an EfficientNet-Lite train too, at `backbone_lr_scale` x lr, on cached
    # block inputs, with BatchNorm statistics frozen (batches of 16 cannot re-estimate them).
    trainable_blocks: int | None = None
    feature_cache: str | None = None  # None: out_dir/feature_cache
    backbone_lr_scale: float = 0.1
    # A "whitening" head starts as the learned whitening of the training patents' figures
    # (closed form, `train.learn_whitening`) and ArcFace's class centres as their whitened means, so
    # training starts from what pretraining gives rather than from a random projection.
    # Shrinkage of the pairs' covariance towards its mean variance; None: chosen among
    # `train.SHRINKAGE_CANDIDATES` by cross-validation over the training patents
    # (`train.select_whitening_shrinkage`).
    whitening_shrinkage: float | None = None
    head_lr_scale: float = 0.1  # the whitening-initialised head trains at this x lr
    feature_erase_probability: float = 0.5  # trainable_blocks > 0: erase a rectangle of the block input
    device: str = "auto"  # "auto": the GPU when there is one, else the CPU; or "cpu", "cuda", "cuda:1"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.losses) - set(LOSSES))
        if unknown or not self.losses:
            raise ValueError(f"losses {list(self.losses)}: choose one or more of {list(LOSSES)}")
        if self.batch_size % self.views_per_patent:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of views_per_patent {self.views_per_patent}"
            )
        reported = sorted(set(self.select_splits) & (set(self.eval_splits) | set(self.train_splits)))
        if reported:
            raise ValueError(
                f"select_splits {list(self.select_splits)}: {reported} is also trained on or reported"
                " (eval_splits); select on a split of its own"
            )
        if self.select_every < 1:
            raise ValueError(f"select_every must be >= 1, got {self.select_every}")
        if self.trainable_blocks is not None and self.trainable_blocks < 0:
            raise ValueError(f"trainable_blocks must be None or >= 0, got {self.trainable_blocks}")
        if self.whitening_shrinkage is not None and not 0.0 <= self.whitening_shrinkage <= 1.0:
            raise ValueError(f"whitening_shrinkage must be in [0, 1], got {self.whitening_shrinkage}")
        if self.epochs < 0 or self.lr <= 0:
            raise ValueError(f"need epochs >= 0 and lr > 0, got {self.epochs}, {self.lr}")
