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
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from patent_assets.records import FigureRecord, atomic_write, read_figure_rows, write_jsonl
from training.job import flat_metrics
from training.retrieval.configs import LOSSES, RetrievalTrainConfig
from training.retrieval.evaluate import evaluate_encoder, figure_class
from training.retrieval.features import PrefixFeatures, compute_prefix_features
from training.retrieval.model import FigureEncoder, build_encoder, preprocess_image, preset, save_encoder

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
    cache = None
    if cfg.trainable_blocks is not None:
        cache = Path(cfg.feature_cache) if cfg.feature_cache else Path(cfg.out_dir) / "feature_cache"
    blocks = cfg.trainable_blocks or 0
    result = evaluate_encoder(model, pool, cfg.select_splits, feature_cache=cache, trainable_blocks=blocks)
    return float(result["same_patent"].get("mAP", 0.0))


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)


def _log_mlflow(cfg: RetrievalTrainConfig, kind: str, payload: Any, step: int | None = None) -> None:
    if not cfg.mlflow_run_id:
        return
    from training import tracking

    uri = cfg.tracking_uri or tracking.tracking_uri()
    if kind == "metrics":
        tracking.log_metrics(cfg.mlflow_run_id, payload, step=step, tracking_uri=uri)
    elif kind == "params":
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        params = [Param(key, str(value)[:500]) for key, value in payload.items()]
        MlflowClient(tracking_uri=uri).log_batch(cfg.mlflow_run_id, params=params)
    elif kind == "curve":
        tracking.log_curve_plot(cfg.mlflow_run_id, payload, name="retrieval_loss", tracking_uri=uri)


def train_retrieval_encoder(cfg: RetrievalTrainConfig, report: Any = None) -> dict[str, Any]:
    """Train, evaluate (untrained first, trained last) and write `out_dir/{encoder, metrics.jsonl,
    summary.json, checkpoint}`; resumes from `out_dir/checkpoint` when there is one. Returns the summary."""

    def log(message: str) -> None:
        if report is not None:
            report.log(message)

    started = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out_dir = Path(cfg.out_dir)
    figures_jsonl = Path(cfg.figures_jsonl)
    torch.manual_seed(cfg.seed)

    # ---- data: images preprocessed once; training patents are the ArcFace classes
    figures, rejected = read_split_figures(figures_jsonl)
    for reason in rejected:
        log(f"retrieval_encoder: left out {reason}")
    alignment = any(name in cfg.losses for name in ("clip", "cls", "cat"))
    overrides = dict(cfg.encoder)
    if alignment and "text_dim" not in overrides:
        from training.retrieval.text_encoder import text_dim

        overrides["text_dim"] = text_dim(cfg.text_encoder_dir)
    encoder_config = preset(cfg.preset, **overrides)

    train_splits = set(cfg.train_splits)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    model = build_encoder(encoder_config, seed=cfg.seed)
    frozen = cfg.trainable_blocks is not None
    candidates = [f for f in figures if f["split"] in train_splits]
    train: list[dict[str, Any]] = []
    prefix: PrefixFeatures | None = None
    cached: torch.Tensor | None = None
    cache_root: Path | None = None
    if frozen:  # the frozen part runs once per image; the cache keeps it for the next run too
        model.check_trainable_blocks(cfg.trainable_blocks)
        cache_root = Path(cfg.feature_cache) if cfg.feature_cache else out_dir / "feature_cache"
        prefix = compute_prefix_features(
            model, [f["image_path"] for f in candidates], cfg.trainable_blocks, cache_root
        )
        for position, reason in prefix.failed.items():
            log(f"retrieval_encoder: left out {candidates[position]['image_id']}: {reason}")
        train = [candidates[i] for i in prefix.kept]
        # the whole cache's pooled vectors (trainable_blocks 0) fit in memory: a few KB a figure
        cached = prefix.load(range(len(train))) if cfg.trainable_blocks == 0 and train else None
    else:
        pixels: list[torch.Tensor] = []
        for figure in candidates:
            try:
                pixels.append(preprocess_image(figure["image_path"], encoder_config))
            except ValueError as error:
                log(f"retrieval_encoder: left out {figure['image_id']}: {error}")
                continue
            train.append(figure)
    if not train:
        raise ValueError(f"{figures_jsonl}: no readable figure in the training splits {sorted(train_splits)}")
    if cfg.select_splits and not any(f["split"] in set(cfg.select_splits) for f in figures):
        raise ValueError(f"{figures_jsonl}: no figure in the selection splits {list(cfg.select_splits)}")
    images = None if frozen else torch.stack(pixels)
    patents = sorted({f["patent_id"] for f in train})
    patent_labels = torch.tensor([patents.index(f["patent_id"]) for f in train])
    classes_of = [figure_class(f["classifications"]) for f in train]
    class_names = sorted({c for c, _ in classes_of if c})
    category_names = sorted({c for _, c in classes_of if c})
    class_labels = torch.tensor([class_names.index(c) if c else -1 for c, _ in classes_of])
    category_labels = torch.tensor([category_names.index(c) if c else -1 for _, c in classes_of])

    # ---- texts: embedded once by the frozen text encoder
    generated: dict[str, str] = {}
    if cfg.generated_descriptions:
        generated = json.loads(Path(cfg.generated_descriptions).read_text(encoding="utf-8"))
        if not isinstance(generated, dict):
            raise ValueError(f"{cfg.generated_descriptions}: expected a JSON object {{image_id: text}}")
    texts_of = [figure_texts(f, generated) for f in train]
    text_vectors: list[np.ndarray] = [np.zeros((0, encoder_config.text_dim), np.float32)] * len(train)
    if alignment:
        from training.retrieval.text_encoder import encode_texts

        flat = [text for texts in texts_of for text in texts]
        encoded = encode_texts(flat, cfg.text_encoder_dir)
        offsets = np.cumsum([0] + [len(texts) for texts in texts_of])
        text_vectors = [encoded[offsets[i] : offsets[i + 1]] for i in range(len(train))]
        log(f"retrieval_encoder: {len(flat)} texts embedded ({len(generated)} generated descriptions given)")

    # ---- model and losses
    losses = RetrievalLosses(
        cfg.losses,
        num_patents=len(patents),
        embedding_dim=encoder_config.embedding_dim,
        class_prototypes=_prototypes(class_labels.tolist(), len(class_names), text_vectors)
        if class_names
        else None,
        category_prototypes=_prototypes(category_labels.tolist(), len(category_names), text_vectors)
        if category_names
        else None,
        arcface_scale=cfg.arcface_scale,
        arcface_margin=cfg.arcface_margin,
    )
    if not class_names:  # nothing is classified: cls / cat have nothing to learn from
        losses.active = [name for name in losses.active if name not in ("cls", "cat")]
    if encoder_config.head == "whitening":
        pooled = _pooled_training_features(model, cfg, prefix, cached, images)
        shrinkage = _init_whitening_head(model, losses, pooled, patent_labels, cfg.whitening_shrinkage)
        log(
            f"retrieval_encoder: head initialised as the learned whitening of {len(patents)} patents"
            f" (shrinkage {shrinkage})"
        )
    # Augmentation and sampling stay on the CPU (seeded generator); the batches move to `device`.
    model.to(device)
    losses.to(device)
    log(f"retrieval_encoder: training on {device}")
    optimizer = torch.optim.AdamW(_parameter_groups(model, losses, cfg), lr=cfg.lr)
    from transformers import get_cosine_schedule_with_warmup

    views = cfg.views_per_patent
    patents_per_batch = max(1, min(cfg.batch_size // views, len(patents)))
    steps_per_epoch = math.ceil(len(patents) / patents_per_batch)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, max(1, int(cfg.warmup_fraction * total_steps)), max(1, total_steps)
    )

    # Evaluations read the frozen part's features of every figure from the cache too
    eval_cache, eval_blocks = (cache_root, cfg.trainable_blocks) if frozen else (None, 0)

    # ---- resume, or evaluate the untrained encoder (same seed, same init)
    checkpoint_path = out_dir / "checkpoint" / CHECKPOINT_FILE
    history: list[dict[str, Any]] = []
    generator = torch.Generator().manual_seed(cfg.seed)
    start_epoch, step = 0, 0
    best: dict[str, Any] | None = None  # {"epoch", "score", "model"} of model selection
    # MLflow's params: how it trains; where Dagster Pipes reports is none of that
    run_config = {key: value for key, value in asdict(cfg).items() if key != "asset_key"}
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, weights_only=False, map_location="cpu")
        if state["encoder_config"] != encoder_config.to_dict() or state["patents"] != patents:
            raise ValueError(
                f"{checkpoint_path}: made for another encoder config or training set; remove it to start over"
            )
        model.load_state_dict(state["model"])
        losses.load_state_dict(state["losses"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_random"])
        start_epoch, step, history, untrained, best = (
            state["epoch"],
            state["step"],
            state["history"],
            state["untrained"],
            state.get("best"),
        )
        log(f"retrieval_encoder: resumed from {checkpoint_path} at epoch {start_epoch}, step {step}")
    else:
        untrained = evaluate_encoder(
            model, figures, cfg.eval_splits, feature_cache=eval_cache, trainable_blocks=eval_blocks
        )
        log(
            f"retrieval_encoder: untrained same-patent mAP {untrained['same_patent'].get('mAP', float('nan')):.3f}"
        )
        _log_mlflow(
            cfg, "params", {**_flat_params(run_config), "patents": len(patents), "figures": len(train)}
        )

    # ---- the loop
    train_started = time.perf_counter()
    figure_index = torch.arange(len(train))
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        if frozen:
            model.backbone.eval()  # frozen BatchNorm statistics (and no dropout) in the backbone
        for batch in patent_batches(patent_labels, patents_per_batch, views, generator):
            texts, has_text = _sample_texts(batch.tolist(), text_vectors, encoder_config.text_dim, generator)
            if frozen:
                inputs = _feature_batch(prefix, cached, batch.tolist(), cfg, generator)
                embedding = model.suffix(inputs.to(device), cfg.trainable_blocks)
            else:
                pixels_batch = torch.stack([augment(images[i], cfg, generator) for i in batch.tolist()])
                embedding = model(pixels_batch.to(device))
            parts = losses(
                embedding,
                model.project_to_text(embedding),
                patent_labels[batch].to(device),
                figure_index[batch].to(device),
                texts.to(device),
                has_text.to(device),
                class_labels[batch].to(device),
                category_labels[batch].to(device),
            )
            optimizer.zero_grad(set_to_none=True)
            parts["total"].backward()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(losses.parameters()), 5.0)
            optimizer.step()
            scheduler.step()
            step += 1
            row: dict[str, Any] = {"step": step, "epoch": epoch + 1, "lr": scheduler.get_last_lr()[0]}
            row |= {f"{name}_loss": float(value.detach()) for name, value in parts.items()}
            row |= {
                f"{name}_weight": float(torch.exp(-s.detach())) for name, s in losses.log_variances.items()
            }
            history.append(row)
            _log_mlflow(cfg, "metrics", {k: v for k, v in row.items() if k != "step"}, step=step)
        if cfg.select_splits and ((epoch + 1) % cfg.select_every == 0 or epoch + 1 == cfg.epochs):
            model.eval()
            score = _selection_score(model, figures, cfg)
            history[-1]["select_mAP"] = score
            _log_mlflow(cfg, "metrics", {"select_mAP": score}, step=step)
            if best is None or score > best["score"]:
                state_copy = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best = {"epoch": epoch + 1, "score": score, "model": state_copy}
            log(
                f"retrieval_encoder: epoch {epoch + 1} selection mAP {score:.3f} (best epoch {best['epoch']})"
            )
        _save_checkpoint(
            checkpoint_path,
            {
                "model": model.state_dict(),
                "losses": losses.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "torch_random": torch.get_rng_state(),
                "epoch": epoch + 1,
                "step": step,
                "history": history,
                "untrained": untrained,
                "best": best,
                "encoder_config": encoder_config.to_dict(),
                "patents": patents,
            },
        )
        # Logged once the checkpoint is on disk: a run killed after this line resumes from here.
        log(
            f"retrieval_encoder: epoch {epoch + 1}/{cfg.epochs} checkpointed, step {step}, loss {history[-1]['total_loss']:.3f}"
        )
    train_seconds = time.perf_counter() - train_started

    # ---- evaluate, write, log
    if best is not None:
        model.load_state_dict(best["model"])
        log(f"retrieval_encoder: kept epoch {best['epoch']} (selection mAP {best['score']:.3f})")
    model.eval()
    trained = evaluate_encoder(
        model, figures, cfg.eval_splits, feature_cache=eval_cache, trainable_blocks=eval_blocks
    )
    log(f"retrieval_encoder: trained same-patent mAP {trained['same_patent'].get('mAP', float('nan')):.3f}")
    encoder_dir = save_encoder(model, out_dir / "encoder")
    write_jsonl(out_dir / "metrics.jsonl", history)
    summary: dict[str, Any] = {
        "untrained": untrained,
        "trained": trained,
        "steps": step,
        "epochs": cfg.epochs,
        "selected": None if best is None else {"epoch": best["epoch"], "mAP": best["score"]},
        "figures": len(figures),
        "train_figures": len(train),
        "patents": len(patents),
        "classes": len(class_names),
        "categories": len(category_names),
        "losses": losses.active,
        "final_weights": {name: float(torch.exp(-s.detach())) for name, s in losses.log_variances.items()},
        "generated_descriptions": len(generated),
        "rejected": rejected,
        "train_seconds": round(train_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
        "encoder_dir": str(encoder_dir),
        "encoder_config": encoder_config.to_dict(),
    }
    with atomic_write(out_dir / "summary.json") as handle:
        json.dump(summary, handle, indent=1)
    if cfg.mlflow_run_id:
        _log_mlflow(cfg, "metrics", flat_metrics(trained) | flat_metrics(untrained, "untrained_"), step=step)
        if history:
            _log_mlflow(
                cfg,
                "curve",
                [{k: v for k, v in row.items() if k.endswith("_loss") or k == "step"} for row in history],
            )
    return summary


def _flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat |= _flat_params(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return flat


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
