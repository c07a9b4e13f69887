"""Training of the figure encoder: ArcFace on patent identity plus Lo et al.'s LLM-informed alignment.

Reads top to bottom: config, data (figures.jsonl rows with a `split`, images preprocessed once,
texts embedded once by the frozen text encoder), model and losses, the loop (P patents x K views
batches, augmentations on the cached pixels, checkpoint each epoch), evaluation of the untrained
and the trained encoder, outputs, MLflow.

Losses (each optional, `losses`):
- "arcface": ArcFace (s 20, m 0.5 rad) over the training patents: the views of one patent are
  one class (Wang & Zhang, PRCV 2023), by pytorch-metric-learning.
- "clip": symmetric InfoNCE between the text-space projection of the image embedding and the
  frozen embedding of one of the figure's texts (brief description, generated description),
  learnable temperature (Lo et al., 2024).
- "cls" / "cat": image-to-class contrastive: the projected image against class (category)
  prototypes = the normalised mean text embedding of each class's training figures; figures
  without a classification fall out of these two only.
All are combined with learnable homoscedastic-uncertainty weights (Kendall et al., CVPR 2018):
sum_i exp(-s_i) L_i + s_i.

Augmentations are those that keep a line drawing's geometry (Wang & Zhang: scale/crop and
rotation hurt): horizontal and vertical flips, random erasing and grid masks, each at 0.8 by
default with AdamW weight decay 0.05: with a few dozen training patents the regularisation is what
makes the encoder generalise to held-out patents (measured against 0.5 / 1e-4 and no masks).
Optional model selection (`select_splits`): the best epoch by same-patent mAP on a split that is
neither trained on nor reported.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from patent_assets.records import FigureRecord, atomic_write, read_figure_rows, write_jsonl
from training.job import flat_metrics
from training.retrieval.configs import LOSSES, RetrievalTrainConfig
from training.retrieval.evaluate import evaluate_encoder, figure_class
from training.retrieval.features import PrefixFeatures, compute_prefix_features
from training.retrieval.model import (
    EncoderConfig,
    FigureEncoder,
    build_encoder,
    preprocess_image,
    preset,
    save_encoder,
)

__all__ = ["RetrievalTrainConfig", "figure_class", "train_retrieval_encoder"]

CHECKPOINT_FILE = "state.pt"


def arcface_margin_degrees(radians: float) -> float:
    """pytorch-metric-learning's ArcFaceLoss takes its margin in degrees; papers give radians."""
    return math.degrees(radians)


# ---------------------------------------------------------------------------------------------- data


def read_split_figures(figures_jsonl: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """figures.jsonl rows (each checked as a FigureRecord, `split` kept, image path made absolute)
    and "<item>: <reason>" of the rows left out."""
    rows, rejected = read_figure_rows(figures_jsonl, "training", check=_not_a_figure_record)
    figures: list[dict[str, Any]] = []
    for row in rows:
        split = row.pop("split", None)
        figure = asdict(FigureRecord.from_dict(row))
        figure["split"] = split
        figures.append(figure)
    return figures, [f"{rejection.item}: {rejection.reason}" for rejection in rejected]


def _not_a_figure_record(row: dict[str, Any]) -> str | None:
    try:
        FigureRecord.from_dict({key: value for key, value in row.items() if key != "split"})
    except TypeError as error:
        return f"not a figure record ({error})"
    return None


def figure_texts(figure: dict[str, Any], generated: dict[str, str]) -> list[str]:
    """The texts a figure is aligned with: its brief description and its generated one, if any."""
    texts = [figure.get("brief_description") or "", generated.get(figure["image_id"], "")]
    return [text.strip() for text in texts if text and text.strip()]


def augment(pixels: torch.Tensor, cfg: RetrievalTrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Flips, random erasing and a grid mask on a (C, H, W) ink-on-paper tensor; no scale, crop or rotation."""

    def chance(probability: float) -> bool:
        return bool(torch.rand((), generator=generator) < probability)

    def randint(low: int, high: int) -> int:
        return int(torch.randint(low, high, (), generator=generator))

    if chance(0.5):
        pixels = pixels.flip(-1)
    if chance(0.5):
        pixels = pixels.flip(-2)
    height, width = pixels.shape[-2:]
    if chance(cfg.erase_probability):  # random erasing (Zhong et al.): a rectangle back to paper
        area = (0.02 + 0.2 * float(torch.rand((), generator=generator))) * height * width
        aspect = math.exp(float(torch.empty(()).uniform_(math.log(0.3), math.log(3.3), generator=generator)))
        h = min(height - 1, max(1, round(math.sqrt(area * aspect))))
        w = min(width - 1, max(1, round(math.sqrt(area / aspect))))
        top, left = randint(0, height - h), randint(0, width - w)
        pixels = pixels.clone()
        pixels[..., top : top + h, left : left + w] = 0.0
    if chance(cfg.grid_mask_probability):  # GridMask (Chen et al.): squares dropped on a regular grid
        unit = randint(max(8, height // 8), max(9, height // 3))
        kept = max(1, round(unit * 0.6))
        dy, dx = randint(0, unit), randint(0, unit)
        rows = ((torch.arange(height) + dy) % unit) < kept
        cols = ((torch.arange(width) + dx) % unit) < kept
        pixels = pixels * (~(rows[:, None] & cols[None, :])).to(pixels.dtype)
    return pixels


def learn_whitening(
    vectors: np.ndarray, labels: Sequence[int], dim: int, shrinkage: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Learned whitening (Radenović, Tolias & Chum, TPAMI 2018) from labelled descriptors: the
    figures of one patent are matching pairs. Returns (weight (dim, D), bias (dim,)) such that
    `weight @ x + bias = P (x - m)` for an L2-normalised descriptor x.

    P1 = Cs^-1/2 whitens the differences of matching pairs (Cs their covariance, shrunk towards
    its mean variance by `shrinkage`: a few dozen patents cannot estimate 1280 x 1280); P then
    rotates the whitened descriptors to their top-`dim` principal directions.
    """
    x = np.asarray(vectors, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels)
    depth = x.shape[1]
    if not 1 <= dim <= depth:
        raise ValueError(f"whitening to {dim} dimensions from {depth}-d descriptors")
    scatter = np.zeros((depth, depth))
    pairs = 0
    for label in np.unique(labels):
        members = x[labels == label]
        n = len(members)
        if n < 2:
            continue
        total = members.sum(axis=0)
        # sum over pairs i < j of (xi - xj)(xi - xj)^T, without forming the pairs
        scatter += n * members.T @ members - np.outer(total, total)
        pairs += n * (n - 1) // 2
    if pairs == 0:
        raise ValueError("learned whitening needs a patent with at least two figures")
    covariance = scatter / pairs
    covariance = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / depth * np.eye(depth)
    values, vectors_ = np.linalg.eigh(covariance)
    p1 = vectors_ @ np.diag(np.maximum(values, 1e-12) ** -0.5) @ vectors_.T
    mean = x.mean(axis=0)
    whitened = (x - mean) @ p1.T
    values, directions = np.linalg.eigh(np.cov(whitened, rowvar=False))
    top = directions[:, np.argsort(values)[::-1][:dim]]
    weight = top.T @ p1
    return weight.astype(np.float32), (-weight @ mean).astype(np.float32)


SHRINKAGE_CANDIDATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def _same_patent_map(embeddings: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> float:
    """Mean AP of each query row against every other row, relevant: the same label."""
    scores = embeddings[queries] @ embeddings.T
    scores[np.arange(len(queries)), queries] = -np.inf  # a figure does not retrieve itself
    order = np.argsort(-scores, axis=1)[:, :-1]
    relevant = labels[order] == labels[queries][:, None]
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    found = relevant.sum(axis=1)
    precision = (relevant * hits / ranks).sum(axis=1)
    return float(np.mean(precision[found > 0] / found[found > 0])) if (found > 0).any() else 0.0


def select_whitening_shrinkage(
    vectors: np.ndarray,
    labels: Sequence[int],
    dim: int,
    candidates: Sequence[float] = SHRINKAGE_CANDIDATES,
    folds: int = 4,
) -> tuple[float, dict[float, float]]:
    """The shrinkage of `learn_whitening` chosen by cross-validation over the training patents
    alone: each fold's patents query all training figures through a whitening learned without
    them. Returns (the best candidate, {candidate: mean AP}); too few patents: (0.5, {})."""
    labels = np.asarray(labels)
    patents = np.unique(labels)
    if len(patents) < 2 * folds:
        return 0.5, {}
    x = np.asarray(vectors, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    fold_of = {patent: position % folds for position, patent in enumerate(patents)}
    figure_fold = np.array([fold_of[label] for label in labels])
    scores: dict[float, float] = {}
    for shrinkage in candidates:
        aps, counts = [], []
        for fold in range(folds):
            inside = figure_fold != fold
            weight, bias = learn_whitening(x[inside], labels[inside], dim, shrinkage)
            embedded = x @ weight.T.astype(np.float64) + bias
            embedded /= np.maximum(np.linalg.norm(embedded, axis=1, keepdims=True), 1e-12)
            queries = np.flatnonzero(~inside)
            aps.append(_same_patent_map(embedded, labels, queries))
            counts.append(len(queries))
        scores[shrinkage] = float(np.average(aps, weights=counts))
    return max(scores, key=lambda s: (scores[s], -abs(s - 0.5))), scores


# --------------------------------------------------------------------------------------------- losses


def _arcface_class() -> type:
    from pytorch_metric_learning.losses import ArcFaceLoss

    class StableArcFaceLoss(ArcFaceLoss):
        """pytorch-metric-learning's ArcFace with acos kept off +-1: its gradient is infinite
        there, and an embedding on its class centre (a whitening-initialised centre of a
        one-figure patent) would turn every weight NaN."""

        def get_angles(self, cosine_of_target_classes: torch.Tensor) -> torch.Tensor:
            return torch.acos(torch.clamp(cosine_of_target_classes, -1 + 1e-6, 1 - 1e-6))

    return StableArcFaceLoss


def _stable_arcface(**options: Any) -> nn.Module:
    return _arcface_class()(**options)


class RetrievalLosses(nn.Module):
    """The active losses and their learnable uncertainty weights s_i: sum exp(-s_i) L_i + s_i."""

    def __init__(
        self,
        losses: Sequence[str],
        num_patents: int,
        embedding_dim: int,
        class_prototypes: torch.Tensor | None = None,
        category_prototypes: torch.Tensor | None = None,
        arcface_scale: float = 20.0,
        arcface_margin: float = 0.5,
    ) -> None:
        super().__init__()
        self.active = [name for name in LOSSES if name in losses]
        if ("cls" in self.active and class_prototypes is None) or (
            "cat" in self.active and category_prototypes is None
        ):
            raise ValueError("the cls / cat losses need class / category prototypes")
        self.arcface = (
            _stable_arcface(
                num_classes=num_patents,
                embedding_size=embedding_dim,
                margin=arcface_margin_degrees(arcface_margin),
                scale=arcface_scale,
            )
            if "arcface" in self.active
            else None
        )
        # CLIP's initial temperature 0.07, learnt as log(1 / temperature), one per contrastive loss.
        self.logit_scales = nn.ParameterDict(
            {
                name: nn.Parameter(torch.tensor(math.log(1 / 0.07)))
                for name in self.active
                if name != "arcface"
            }
        )
        self.log_variances = nn.ParameterDict({name: nn.Parameter(torch.zeros(())) for name in self.active})
        self.register_buffer("class_prototypes", class_prototypes, persistent=False)
        self.register_buffer("category_prototypes", category_prototypes, persistent=False)

    def _scale(self, name: str) -> torch.Tensor:
        return self.logit_scales[name].clamp(max=math.log(100.0)).exp()

    def forward(
        self,
        embedding: torch.Tensor,  # (B, embedding_dim): the BN-neck output
        projected: torch.Tensor,  # (B, text_dim): project_to_text(embedding)
        patent_labels: torch.Tensor,  # (B,) training-patent index
        figure_ids: torch.Tensor,  # (B,) figure index: two views of one figure share their text
        texts: torch.Tensor,  # (B, text_dim) the sampled text embedding of each figure
        has_text: torch.Tensor,  # (B,) bool
        class_labels: torch.Tensor,  # (B,) class index, -1 without classification
        category_labels: torch.Tensor,  # (B,) category index, -1 without classification
    ) -> dict[str, torch.Tensor]:
        parts: dict[str, torch.Tensor] = {}
        image = F.normalize(projected, dim=-1)
        if self.arcface is not None:
            parts["arcface"] = self.arcface(embedding, patent_labels)
        if "clip" in self.active and int(has_text.sum()) > 1:
            rows = has_text.nonzero().squeeze(1)
            logits = self._scale("clip") * image[rows] @ texts[rows].T
            same = (figure_ids[rows, None] == figure_ids[None, rows]).float()
            image_to_text = F.cross_entropy(logits, same / same.sum(1, keepdim=True))
            text_to_image = F.cross_entropy(logits.T, same.T / same.T.sum(1, keepdim=True))
            parts["clip"] = 0.5 * (image_to_text + text_to_image)
        for name, labels, prototypes in (
            ("cls", class_labels, self.class_prototypes),
            ("cat", category_labels, self.category_prototypes),
        ):
            if name in self.active and bool((labels >= 0).any()):
                rows = (labels >= 0).nonzero().squeeze(1)
                logits = self._scale(name) * image[rows] @ prototypes.T
                parts[name] = F.cross_entropy(logits, labels[rows])
        total = sum(
            (
                torch.exp(-self.log_variances[name]) * value + self.log_variances[name]
                for name, value in parts.items()
            ),
            start=torch.zeros((), device=embedding.device),
        )
        return {**parts, "total": total}


def _prototypes(labels: Sequence[int], count: int, vectors: Sequence[np.ndarray]) -> torch.Tensor:
    """Per label: the normalised mean of the text vectors of its figures."""
    sums = np.zeros((count, vectors[0].shape[-1] if len(vectors) else 1), dtype=np.float64)
    for label, figure_vectors in zip(labels, vectors, strict=True):
        if label >= 0 and len(figure_vectors):
            sums[label] += figure_vectors.sum(axis=0)
    return F.normalize(torch.tensor(sums, dtype=torch.float32), dim=-1)


# ------------------------------------------------------------------------------------------- training


def patent_batches(
    patent_labels: torch.Tensor, patents_per_batch: int, views: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """One epoch of P patents x K views batches: every patent once (the last batch filled with
    random others), K of its figures each, drawn with replacement only when it has fewer than K.

    pytorch-metric-learning's MPerClassSampler would do, but importing its samplers package
    imports `faiss.contrib.torch_utils`, which replaces `faiss.Index.search` with a version that
    rejects the `params=` (the date filter) that `FigureIndex` passes.
    """
    figures_of = [
        torch.nonzero(patent_labels == label).squeeze(1) for label in range(int(patent_labels.max()) + 1)
    ]
    order = torch.randperm(len(figures_of), generator=generator)
    missing = -len(order) % patents_per_batch
    if missing:
        order = torch.cat([order, torch.randperm(len(figures_of), generator=generator)[:missing]])
    batches = []
    for begin in range(0, len(order), patents_per_batch):
        batch = []
        for patent in order[begin : begin + patents_per_batch].tolist():
            members = figures_of[patent]
            if len(members) >= views:
                picks = members[torch.randperm(len(members), generator=generator)[:views]]
            else:
                picks = members[torch.randint(len(members), (views,), generator=generator)]
            batch.append(picks)
        batches.append(torch.cat(batch))
    return batches


@torch.no_grad()
def _pooled_training_features(
    model: FigureEncoder,
    cfg: RetrievalTrainConfig,
    prefix: PrefixFeatures | None,
    cached: torch.Tensor | None,
    images: torch.Tensor | None,
) -> torch.Tensor:
    """(N, D) pooled backbone features of the training figures as the head sees them at search
    time: with flip TTA the mean of the L2-normalised vectors of the figure and its mirror."""
    model.eval()
    if cached is not None:
        views = cached.unbind(1)
    else:
        # one batch of block inputs or pixels in memory at a time; only pooled vectors are kept
        if prefix is not None:
            rows = range(len(prefix.kept))
            batches = (prefix.load(rows[i : i + 32]).unbind(1) for i in range(0, len(rows), 32))
            pool = partial(model.suffix_pooled, trainable_blocks=cfg.trainable_blocks)
        else:
            assert images is not None
            batches = ((images[i : i + 32], images[i : i + 32].flip(-1)) for i in range(0, len(images), 32))
            pool = model.forward_pooled
        pooled = [(pool(plain), pool(mirrored)) for plain, mirrored in batches]
        views = tuple(torch.cat([batch[view] for batch in pooled]) for view in (0, 1))
    if not model.config.flip_tta:
        return views[0]
    return 0.5 * (F.normalize(views[0], dim=-1) + F.normalize(views[1], dim=-1))


@torch.no_grad()
def _init_whitening_head(
    model: FigureEncoder,
    losses: RetrievalLosses,
    pooled: torch.Tensor,
    patent_labels: torch.Tensor,
    shrinkage: float | None,
) -> float:
    """The head as the learned whitening; ArcFace's centres as the patents' whitened mean directions.
    Returns the shrinkage used (None: chosen on the training patents)."""
    if shrinkage is None:
        shrinkage, _ = select_whitening_shrinkage(
            pooled.numpy(), patent_labels.numpy(), model.config.embedding_dim
        )
    weight, bias = learn_whitening(
        pooled.numpy(), patent_labels.numpy(), model.config.embedding_dim, shrinkage
    )
    model.fc.weight.copy_(torch.from_numpy(weight))
    model.fc.bias.copy_(torch.from_numpy(bias))
    if losses.arcface is not None:
        embedded = F.normalize(model.head(pooled), dim=-1)
        centres = torch.zeros_like(losses.arcface.W)  # (embedding_dim, patents)
        centres.index_add_(1, patent_labels, embedded.T)
        losses.arcface.W.copy_(F.normalize(centres, dim=0))
    return shrinkage


def _parameter_groups(
    model: FigureEncoder, losses: RetrievalLosses, cfg: RetrievalTrainConfig
) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only; a frozen backbone's parameters left out, a
    fine-tuned one at `backbone_lr_scale` x lr, a whitening-initialised head at `head_lr_scale` x lr."""
    backbone_scale, head_scale = 1.0, 1.0
    if cfg.trainable_blocks is not None:
        backbone_scale = cfg.backbone_lr_scale
        trainable = _trainable_backbone_names(model, cfg.trainable_blocks)
        for name, parameter in model.named_parameters():
            if name.startswith(("backbone.", "pool.")):
                parameter.requires_grad_(name in trainable)
    if model.config.head == "whitening":
        head_scale = cfg.head_lr_scale
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        scale = backbone_scale if name.startswith(("backbone.", "pool.")) else 1.0
        scale = head_scale if name.startswith("fc.") else scale
        decay = cfg.weight_decay if parameter.ndim >= 2 else 0.0
        groups.setdefault((scale, decay), []).append(parameter)
    groups.setdefault((1.0, 0.0), []).extend(
        [*losses.logit_scales.parameters(), *losses.log_variances.parameters()]
    )
    if losses.arcface is not None:
        groups.setdefault((1.0, cfg.weight_decay), []).extend(losses.arcface.parameters())
    return [
        {"params": params, "lr": cfg.lr * scale, "weight_decay": decay}
        for (scale, decay), params in groups.items()
    ]


def _trainable_backbone_names(model: FigureEncoder, trainable_blocks: int) -> set[str]:
    """Backbone parameters that train: the last k Lite blocks in use, the head convolution (unless
    `feature_block` stops before it) and GeM's p."""
    if trainable_blocks == 0:
        return set()
    first, end = model.num_blocks - trainable_blocks, model.num_blocks
    head_convolution = model.config.feature_block is None

    def trains(parts: list[str]) -> bool:
        if parts[0] == "pool":
            return True
        if parts[0] != "backbone":
            return False
        if parts[1] in ("_conv_head", "_bn1"):
            return head_convolution
        return parts[1] == "_blocks" and first <= int(parts[2]) < end

    return {name for name, _ in model.named_parameters() if trains(name.split("."))}


def _feature_batch(
    prefix: PrefixFeatures | None,
    cached: torch.Tensor | None,
    rows: list[int],
    cfg: RetrievalTrainConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Cached prefix features of a batch, each as is or mirrored at random (the horizontal flip);
    block inputs also get a random rectangle erased (random erasing, on the feature map)."""
    both = cached[rows] if cached is not None else prefix.load(rows)  # type: ignore[union-attr]
    mirrored = torch.rand(len(rows), generator=generator) < 0.5
    features = both[torch.arange(len(rows)), mirrored.long()]
    if features.ndim == 4:
        height, width = features.shape[-2:]
        for row in range(len(rows)):
            if float(torch.rand((), generator=generator)) < cfg.feature_erase_probability:
                h = int(torch.randint(1, max(2, height // 2), (), generator=generator))
                w = int(torch.randint(1, max(2, width // 2), (), generator=generator))
                top = int(torch.randint(0, height - h + 1, (), generator=generator))
                left = int(torch.randint(0, width - w + 1, (), generator=generator))
                features[row, :, top : top + h, left : left + w] = 0.0
    return features


def _selection_score(model: nn.Module, figures: Sequence[dict[str, Any]], cfg: RetrievalTrainConfig) -> float:
    """Same-patent mAP of the selection splits' figures among themselves and the training figures."""
    searched = set(cfg.select_splits) | set(cfg.train_splits)
    pool = [f for f in figures if f["split"] in searched]
    result = evaluate_encoder(
        model,
        pool,
        cfg.select_splits,
        feature_cache=_feature_cache(cfg),
        trainable_blocks=cfg.trainable_blocks or 0,
    )
    return float(result["same_patent"].get("mAP", 0.0))


def _feature_cache(cfg: RetrievalTrainConfig) -> Path | None:
    """Where a frozen backbone's features are cached (training and evaluation read the same); None
    when the whole encoder trains from pixels."""
    if cfg.trainable_blocks is None:
        return None
    return Path(cfg.feature_cache) if cfg.feature_cache else Path(cfg.out_dir) / "feature_cache"


# -------------------------------------------------------------------------------------------- the run

Log = Callable[[str], None]
ALIGNMENT_LOSSES = ("clip", "cls", "cat")  # the losses that need the figures' texts embedded


@dataclass
class TrainingSet:
    """The training figures as the loop reads them: pixels or the frozen part's cached features,
    their patent, class and category labels, and their texts embedded once."""

    train: list[dict[str, Any]]  # the readable figures of the training splits
    images: torch.Tensor | None  # (N, C, H, W) preprocessed once; None on a frozen backbone
    prefix: PrefixFeatures | None  # the frozen part's cached outputs (trainable_blocks set)
    cached: torch.Tensor | None  # all of them in memory (trainable_blocks 0: pooled vectors)
    patents: list[str]  # the ArcFace classes
    patent_labels: torch.Tensor
    class_names: list[str]
    category_names: list[str]
    class_labels: torch.Tensor  # -1: the figure has no classification
    category_labels: torch.Tensor
    generated: dict[str, str]  # {image_id: generated description}, as given
    text_vectors: list[np.ndarray]  # per figure: (its texts, text_dim)


@dataclass
class TrainingRun:
    """What training changes, and what the checkpoint keeps of it to resume."""

    model: FigureEncoder
    losses: RetrievalLosses
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    device: torch.device
    generator: torch.Generator  # batches, texts and augmentations draw from it alone
    untrained: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0  # epochs done
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # a row per step: metrics.jsonl
    best: dict[str, Any] | None = None  # {"epoch", "score", "model"} of model selection


def train_retrieval_encoder(cfg: RetrievalTrainConfig, report: Any = None) -> dict[str, Any]:
    """Train, evaluate (untrained first, trained last) and write `out_dir/{encoder, metrics.jsonl,
    summary.json, checkpoint}`; resumes from `out_dir/checkpoint` when there is one. Returns the summary."""
    started = time.perf_counter()
    log = _logger(report)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)

    # data: images preprocessed (or features cached) once; texts embedded once
    figures, rejected = read_split_figures(Path(cfg.figures_jsonl))
    for reason in rejected:
        log(f"retrieval_encoder: left out {reason}")
    model = build_encoder(_encoder_config(cfg), seed=cfg.seed)
    data = _training_set(cfg, model, figures, log)

    # model, losses and optimizer; resumed, or the untrained encoder evaluated (same seed, same init)
    run = _build_run(cfg, model, data, log)
    checkpoint = Path(cfg.out_dir) / "checkpoint" / CHECKPOINT_FILE
    if checkpoint.is_file():
        _resume(run, checkpoint, data.patents, log)
    else:
        _evaluate_untrained(cfg, run, data, figures, log)

    # the loop: an epoch, model selection, a checkpoint
    train_started = time.perf_counter()
    for epoch in range(run.epoch, cfg.epochs):
        _train_epoch(cfg, run, data, epoch)
        if cfg.select_splits and ((epoch + 1) % cfg.select_every == 0 or epoch + 1 == cfg.epochs):
            _select(cfg, run, figures, epoch, log)
        run.epoch = epoch + 1
        _save_checkpoint(checkpoint, run, data.patents)
        # Logged once the checkpoint is on disk: a run killed after this line resumes from here.
        log(
            f"retrieval_encoder: epoch {run.epoch}/{cfg.epochs} checkpointed, step {run.step},"
            f" loss {run.history[-1]['total_loss']:.3f}"
        )
    train_seconds = time.perf_counter() - train_started

    # evaluate, write, log
    trained = _evaluate_trained(cfg, run, figures, log)
    summary = _summary(cfg, run, data, figures, rejected, trained)
    summary = _write_outputs(cfg, run, summary, train_seconds, started)
    _log_results(cfg, run, trained)
    return summary


def _logger(report: Any) -> Log:
    """The job's progress log: through the Pipes reporter when there is one, else nowhere."""

    def log(message: str) -> None:
        if report is not None:
            report.log(message)

    return log


def _encoder_config(cfg: RetrievalTrainConfig) -> EncoderConfig:
    """The preset with the config's overrides; aligned with texts, its text space is the text encoder's."""
    overrides = dict(cfg.encoder)
    if any(name in cfg.losses for name in ALIGNMENT_LOSSES) and "text_dim" not in overrides:
        from training.retrieval.text_encoder import text_dim

        overrides["text_dim"] = text_dim(cfg.text_encoder_dir)
    return preset(cfg.preset, **overrides)


def _training_set(
    cfg: RetrievalTrainConfig, model: FigureEncoder, figures: list[dict[str, Any]], log: Log
) -> TrainingSet:
    """The training splits' readable figures, labelled by patent (the ArcFace classes), class and
    category, with their texts embedded."""
    train, images, prefix, cached = _training_inputs(cfg, model, figures, log)
    patents = sorted({f["patent_id"] for f in train})
    patent_labels = torch.tensor([patents.index(f["patent_id"]) for f in train])
    classes_of = [figure_class(f["classifications"]) for f in train]
    class_names = sorted({c for c, _ in classes_of if c})
    category_names = sorted({c for _, c in classes_of if c})
    class_labels = torch.tensor([class_names.index(c) if c else -1 for c, _ in classes_of])
    category_labels = torch.tensor([category_names.index(c) if c else -1 for _, c in classes_of])
    generated, text_vectors = _embed_texts(cfg, train, model.config.text_dim, log)
    return TrainingSet(
        train=train,
        images=images,
        prefix=prefix,
        cached=cached,
        patents=patents,
        patent_labels=patent_labels,
        class_names=class_names,
        category_names=category_names,
        class_labels=class_labels,
        category_labels=category_labels,
        generated=generated,
        text_vectors=text_vectors,
    )


def _training_inputs(
    cfg: RetrievalTrainConfig, model: FigureEncoder, figures: list[dict[str, Any]], log: Log
) -> tuple[list[dict[str, Any]], torch.Tensor | None, PrefixFeatures | None, torch.Tensor | None]:
    """(the training figures that could be read, their pixels, their prefix features, those in
    memory): pixels when the whole encoder trains, else the frozen part's outputs, computed once per
    image and cached for the next run too. Unreadable figures are logged and left out."""
    figures_jsonl = Path(cfg.figures_jsonl)
    train_splits = set(cfg.train_splits)
    candidates = [f for f in figures if f["split"] in train_splits]
    prefix: PrefixFeatures | None = None
    cached: torch.Tensor | None = None
    pixels: list[torch.Tensor] = []
    if cfg.trainable_blocks is not None:
        model.check_trainable_blocks(cfg.trainable_blocks)
        paths = [f["image_path"] for f in candidates]
        prefix = compute_prefix_features(model, paths, cfg.trainable_blocks, _feature_cache(cfg))
        for position, reason in prefix.failed.items():
            log(f"retrieval_encoder: left out {candidates[position]['image_id']}: {reason}")
        train = [candidates[i] for i in prefix.kept]
        # the whole cache's pooled vectors (trainable_blocks 0) fit in memory: a few KB a figure
        cached = prefix.load(range(len(train))) if cfg.trainable_blocks == 0 and train else None
    else:
        train = []
        for figure in candidates:
            try:
                pixels.append(preprocess_image(figure["image_path"], model.config))
            except ValueError as error:
                log(f"retrieval_encoder: left out {figure['image_id']}: {error}")
                continue
            train.append(figure)
    if not train:
        raise ValueError(f"{figures_jsonl}: no readable figure in the training splits {sorted(train_splits)}")
    if cfg.select_splits and not any(f["split"] in set(cfg.select_splits) for f in figures):
        raise ValueError(f"{figures_jsonl}: no figure in the selection splits {list(cfg.select_splits)}")
    images = None if prefix is not None else torch.stack(pixels)
    return train, images, prefix, cached


def _embed_texts(
    cfg: RetrievalTrainConfig, train: list[dict[str, Any]], text_dim: int, log: Log
) -> tuple[dict[str, str], list[np.ndarray]]:
    """(the generated descriptions given, each figure's texts embedded by the frozen text encoder);
    without an alignment loss nothing is embedded: every figure has no text."""
    generated: dict[str, str] = {}
    if cfg.generated_descriptions:
        generated = json.loads(Path(cfg.generated_descriptions).read_text(encoding="utf-8"))
        if not isinstance(generated, dict):
            raise ValueError(f"{cfg.generated_descriptions}: expected a JSON object {{image_id: text}}")
    if not any(name in cfg.losses for name in ALIGNMENT_LOSSES):
        return generated, [np.zeros((0, text_dim), np.float32)] * len(train)
    from training.retrieval.text_encoder import encode_texts

    texts_of = [figure_texts(f, generated) for f in train]
    flat = [text for texts in texts_of for text in texts]
    encoded = encode_texts(flat, cfg.text_encoder_dir)
    offsets = np.cumsum([0] + [len(texts) for texts in texts_of])
    log(f"retrieval_encoder: {len(flat)} texts embedded ({len(generated)} generated descriptions given)")
    return generated, [encoded[offsets[i] : offsets[i + 1]] for i in range(len(train))]


def _build_run(cfg: RetrievalTrainConfig, model: FigureEncoder, data: TrainingSet, log: Log) -> TrainingRun:
    """The losses (a whitening head and ArcFace's centres initialised from the data), model and
    losses on the device, AdamW and its cosine schedule over every step of every epoch."""
    from transformers import get_cosine_schedule_with_warmup

    losses = _build_losses(cfg, model, data, log)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    # Augmentation and sampling stay on the CPU (seeded generator); the batches move to `device`.
    model.to(device)
    losses.to(device)
    log(f"retrieval_encoder: training on {device}")
    optimizer = torch.optim.AdamW(_parameter_groups(model, losses, cfg), lr=cfg.lr)
    patents = len(data.patents)
    total_steps = math.ceil(patents / _patents_per_batch(cfg, patents)) * cfg.epochs
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, max(1, int(cfg.warmup_fraction * total_steps)), max(1, total_steps)
    )
    return TrainingRun(model, losses, optimizer, scheduler, device, torch.Generator().manual_seed(cfg.seed))


def _patents_per_batch(cfg: RetrievalTrainConfig, patents: int) -> int:
    """P of the P x K batches: as many patents as `batch_size` holds K views of, at most all of them."""
    return max(1, min(cfg.batch_size // cfg.views_per_patent, patents))


def _build_losses(
    cfg: RetrievalTrainConfig, model: FigureEncoder, data: TrainingSet, log: Log
) -> RetrievalLosses:
    """The configured losses, the class and category prototypes from the training texts; a
    whitening head starts as the learned whitening of the training patents."""
    losses = RetrievalLosses(
        cfg.losses,
        num_patents=len(data.patents),
        embedding_dim=model.config.embedding_dim,
        class_prototypes=_prototypes(data.class_labels.tolist(), len(data.class_names), data.text_vectors)
        if data.class_names
        else None,
        category_prototypes=_prototypes(
            data.category_labels.tolist(), len(data.category_names), data.text_vectors
        )
        if data.category_names
        else None,
        arcface_scale=cfg.arcface_scale,
        arcface_margin=cfg.arcface_margin,
    )
    if not data.class_names:  # nothing is classified: cls / cat have nothing to learn from
        losses.active = [name for name in losses.active if name not in ("cls", "cat")]
    if model.config.head == "whitening":
        pooled = _pooled_training_features(model, cfg, data.prefix, data.cached, data.images)
        shrinkage = _init_whitening_head(model, losses, pooled, data.patent_labels, cfg.whitening_shrinkage)
        log(
            f"retrieval_encoder: head initialised as the learned whitening of {len(data.patents)} patents"
            f" (shrinkage {shrinkage})"
        )
    return losses


def _resume(run: TrainingRun, checkpoint: Path, patents: list[str], log: Log) -> None:
    """The run as its last checkpoint left it, RNG states included; refused for another encoder
    config or training set."""
    state = torch.load(checkpoint, weights_only=False, map_location="cpu")
    if state["encoder_config"] != run.model.config.to_dict() or state["patents"] != patents:
        raise ValueError(
            f"{checkpoint}: made for another encoder config or training set; remove it to start over"
        )
    run.model.load_state_dict(state["model"])
    run.losses.load_state_dict(state["losses"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_random"])
    run.epoch, run.step, run.history = state["epoch"], state["step"], state["history"]
    run.untrained, run.best = state["untrained"], state.get("best")
    log(f"retrieval_encoder: resumed from {checkpoint} at epoch {run.epoch}, step {run.step}")


def _evaluate_untrained(
    cfg: RetrievalTrainConfig, run: TrainingRun, data: TrainingSet, figures: list[dict[str, Any]], log: Log
) -> None:
    """A fresh run: the untrained encoder evaluated (what training is measured against) and the
    run's params logged to MLflow."""
    run.untrained = _evaluate(run.model, figures, cfg)
    log(
        f"retrieval_encoder: untrained same-patent mAP {run.untrained['same_patent'].get('mAP', float('nan')):.3f}"
    )
    if cfg.mlflow_run_id:
        from training import tracking

        # how it trains; where Dagster Pipes reports is none of that
        params = {key: value for key, value in asdict(cfg).items() if key != "asset_key"}
        params |= {"patents": len(data.patents), "figures": len(data.train)}
        tracking.log_params(cfg.mlflow_run_id, params, tracking_uri=cfg.tracking_uri)


def _evaluate(
    model: FigureEncoder, figures: list[dict[str, Any]], cfg: RetrievalTrainConfig
) -> dict[str, Any]:
    """Retrieval metrics on the evaluation splits; a frozen backbone's features read from the cache."""
    return evaluate_encoder(
        model,
        figures,
        cfg.eval_splits,
        feature_cache=_feature_cache(cfg),
        trainable_blocks=cfg.trainable_blocks or 0,
    )


def _train_epoch(cfg: RetrievalTrainConfig, run: TrainingRun, data: TrainingSet, epoch: int) -> None:
    """One pass over the training patents in P x K batches; each step's losses, loss weights and
    learning rate go to the history (metrics.jsonl) and to MLflow."""
    run.model.train()
    if cfg.trainable_blocks is not None:
        run.model.backbone.eval()  # frozen BatchNorm statistics (and no dropout) in the backbone
    patents_per_batch = _patents_per_batch(cfg, len(data.patents))
    for batch in patent_batches(data.patent_labels, patents_per_batch, cfg.views_per_patent, run.generator):
        parts = _train_step(cfg, run, data, batch)
        run.step += 1
        row: dict[str, Any] = {"step": run.step, "epoch": epoch + 1, "lr": run.scheduler.get_last_lr()[0]}
        row |= {f"{name}_loss": float(value.detach()) for name, value in parts.items()}
        row |= {
            f"{name}_weight": float(torch.exp(-s.detach())) for name, s in run.losses.log_variances.items()
        }
        run.history.append(row)
        if cfg.mlflow_run_id:
            from training import tracking

            metrics = {key: value for key, value in row.items() if key != "step"}
            tracking.log_metrics(cfg.mlflow_run_id, metrics, step=run.step, tracking_uri=cfg.tracking_uri)


def _train_step(
    cfg: RetrievalTrainConfig, run: TrainingRun, data: TrainingSet, batch: torch.Tensor
) -> dict[str, torch.Tensor]:
    """One optimizer step on a batch of figure rows: a text drawn for each, each view augmented (or
    its cached features), the losses back-propagated. Returns the losses."""
    rows, device = batch.tolist(), run.device
    # the text first, then the augmentations: the generator's draws in the order checkpoints expect
    texts, has_text = _sample_texts(rows, data.text_vectors, run.model.config.text_dim, run.generator)
    if cfg.trainable_blocks is not None:
        inputs = _feature_batch(data.prefix, data.cached, rows, cfg, run.generator)
        embedding = run.model.suffix(inputs.to(device), cfg.trainable_blocks)
    else:
        assert data.images is not None
        pixels = torch.stack([augment(data.images[i], cfg, run.generator) for i in rows])
        embedding = run.model(pixels.to(device))
    parts = run.losses(
        embedding,
        run.model.project_to_text(embedding),
        data.patent_labels[batch].to(device),
        batch.to(device),  # a figure's id is its row: two views of one figure share their text
        texts.to(device),
        has_text.to(device),
        data.class_labels[batch].to(device),
        data.category_labels[batch].to(device),
    )
    run.optimizer.zero_grad(set_to_none=True)
    parts["total"].backward()
    torch.nn.utils.clip_grad_norm_(list(run.model.parameters()) + list(run.losses.parameters()), 5.0)
    run.optimizer.step()
    run.scheduler.step()
    return parts


def _select(
    cfg: RetrievalTrainConfig, run: TrainingRun, figures: list[dict[str, Any]], epoch: int, log: Log
) -> None:
    """Model selection after an epoch: its same-patent mAP on the selection splits, and its weights
    kept when they are the best so far."""
    run.model.eval()
    score = _selection_score(run.model, figures, cfg)
    run.history[-1]["select_mAP"] = score
    if cfg.mlflow_run_id:
        from training import tracking

        tracking.log_metrics(
            cfg.mlflow_run_id, {"select_mAP": score}, step=run.step, tracking_uri=cfg.tracking_uri
        )
    if run.best is None or score > run.best["score"]:
        weights = {key: value.detach().clone() for key, value in run.model.state_dict().items()}
        run.best = {"epoch": epoch + 1, "score": score, "model": weights}
    log(f"retrieval_encoder: epoch {epoch + 1} selection mAP {score:.3f} (best epoch {run.best['epoch']})")


def _save_checkpoint(path: Path, run: TrainingRun, patents: list[str]) -> None:
    """Everything `_resume` needs, written atomically: a run killed while writing keeps the last one."""
    state = {
        "model": run.model.state_dict(),
        "losses": run.losses.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "generator": run.generator.get_state(),
        "torch_random": torch.get_rng_state(),
        "epoch": run.epoch,
        "step": run.step,
        "history": run.history,
        "untrained": run.untrained,
        "best": run.best,
        "encoder_config": run.model.config.to_dict(),
        "patents": patents,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)


def _evaluate_trained(
    cfg: RetrievalTrainConfig, run: TrainingRun, figures: list[dict[str, Any]], log: Log
) -> dict[str, Any]:
    """The trained encoder, the selected epoch's weights if model selection ran, evaluated as the
    untrained one was."""
    if run.best is not None:
        run.model.load_state_dict(run.best["model"])
        log(f"retrieval_encoder: kept epoch {run.best['epoch']} (selection mAP {run.best['score']:.3f})")
    run.model.eval()
    trained = _evaluate(run.model, figures, cfg)
    log(f"retrieval_encoder: trained same-patent mAP {trained['same_patent'].get('mAP', float('nan')):.3f}")
    return trained


def _summary(
    cfg: RetrievalTrainConfig,
    run: TrainingRun,
    data: TrainingSet,
    figures: list[dict[str, Any]],
    rejected: list[str],
    trained: dict[str, Any],
) -> dict[str, Any]:
    """What the run measured and trained on; `_write_outputs` adds its timings and the encoder's place."""
    return {
        "untrained": run.untrained,
        "trained": trained,
        "steps": run.step,
        "epochs": cfg.epochs,
        "selected": None if run.best is None else {"epoch": run.best["epoch"], "mAP": run.best["score"]},
        "figures": len(figures),
        "train_figures": len(data.train),
        "patents": len(data.patents),
        "classes": len(data.class_names),
        "categories": len(data.category_names),
        "losses": run.losses.active,
        "final_weights": {
            name: float(torch.exp(-s.detach())) for name, s in run.losses.log_variances.items()
        },
        "generated_descriptions": len(data.generated),
        "rejected": rejected,
    }


def _write_outputs(
    cfg: RetrievalTrainConfig, run: TrainingRun, summary: dict[str, Any], train_seconds: float, started: float
) -> dict[str, Any]:
    """`encoder/`, `metrics.jsonl` and, last, `summary.json`; returns the summary as written."""
    out_dir = Path(cfg.out_dir)
    encoder_dir = save_encoder(run.model, out_dir / "encoder")
    write_jsonl(out_dir / "metrics.jsonl", run.history)
    summary = summary | {
        "train_seconds": round(train_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
        "encoder_dir": str(encoder_dir),
        "encoder_config": run.model.config.to_dict(),
    }
    with atomic_write(out_dir / "summary.json") as handle:
        json.dump(summary, handle, indent=1)
    return summary


def _log_results(cfg: RetrievalTrainConfig, run: TrainingRun, trained: dict[str, Any]) -> None:
    """The final retrieval metrics, trained and untrained, and the loss curve to the MLflow run."""
    if not cfg.mlflow_run_id:
        return
    from training import tracking

    metrics = flat_metrics(trained) | flat_metrics(run.untrained, "untrained_")
    tracking.log_metrics(cfg.mlflow_run_id, metrics, step=run.step, tracking_uri=cfg.tracking_uri)
    if run.history:
        curve = [{k: v for k, v in row.items() if k.endswith("_loss") or k == "step"} for row in run.history]
        tracking.log_curve_plot(
            cfg.mlflow_run_id, curve, name="retrieval_loss", tracking_uri=cfg.tracking_uri
        )


def _sample_texts(
    batch: Sequence[int], text_vectors: Sequence[np.ndarray], dim: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One of each figure's text embeddings, drawn afresh at every step; has_text is False without any."""
    texts = torch.zeros(len(batch), dim)
    has_text = torch.zeros(len(batch), dtype=torch.bool)
    for row, figure in enumerate(batch):
        options = text_vectors[figure]
        if len(options):
            choice = int(torch.randint(len(options), (), generator=generator))
            texts[row] = torch.from_numpy(options[choice])
            has_text[row] = True
    return texts, has_text
