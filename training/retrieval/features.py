"""What a frozen backbone computes for a figure, cached on disk by content.

A pretrained backbone that stays frozen gives every image the same features in every run: the
weekly retraining, the challenger / champion / untouched-backbone evaluations and the index all
need them. So they are computed once per image and kept under a content-addressed path,

    <root>/<prefix key>/<image sha256[:2]>/<image sha256>.npy   (float16, (2, *shape): as is, mirrored)

where the prefix key hashes the frozen weights, the preprocessing and the split point
(`FigureEncoder.prefix`), so a changed backbone or image size never reads stale features.
Files are written to a temporary name and renamed: a killed run leaves no half-written entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from patent_assets.records import atomic_write
from patent_assets.store import sha256_file
from training.retrieval.model import FigureEncoder, preprocess_image, read_gray

PREPROCESSING_FIELDS = ("image_size", "ink_margin", "downscale", "channels", "pixel_norm", "regional_pooling")


def _prefix_parameter(name: str, model: FigureEncoder, trainable_blocks: int) -> bool:
    if name.startswith("pool."):
        return trainable_blocks == 0
    if not name.startswith("backbone."):
        return False
    if trainable_blocks == 0 or not model.is_lite:
        return True
    parts = name.split(".")
    if parts[1] == "_blocks":
        return int(parts[2]) < model.num_blocks - trainable_blocks
    return parts[1] in ("_conv_stem", "_bn0")


def prefix_key(model: FigureEncoder, trainable_blocks: int) -> str:
    """A hash of everything `model.prefix(., trainable_blocks)` depends on."""
    model.check_trainable_blocks(trainable_blocks)
    digest = hashlib.sha256()
    settings = {name: getattr(model.config, name) for name in PREPROCESSING_FIELDS}
    settings |= {
        "backbone": model.config.backbone,
        "feature_block": model.config.feature_block,
        "trainable_blocks": trainable_blocks,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if _prefix_parameter(name, model, trainable_blocks):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


@dataclass
class FeatureCache:
    """Prefix features of one (model, split point) under `root`; see the module docstring."""

    root: Path
    key: str

    def path(self, image_sha256: str) -> Path:
        return Path(self.root) / self.key / image_sha256[:2] / f"{image_sha256}.npy"

    def get(self, image_sha256: str) -> np.ndarray | None:
        path = self.path(image_sha256)
        if not path.is_file():
            return None
        try:
            return np.load(path)
        except (OSError, ValueError):  # unreadable: recomputed and rewritten
            return None

    def put(self, image_sha256: str, features: np.ndarray) -> None:
        path = self.path(image_sha256)
        # One file per image: a lost entry is recomputed, so it is not synced to disk one by one.
        with atomic_write(path, "wb", fsync=False) as stream:
            np.save(stream, features.astype(np.float16))


@dataclass
class PrefixFeatures:
    """Which inputs have cached features: `shas[i]` is the cache entry of input `kept[i]`."""

    cache: FeatureCache
    kept: list[int] = field(default_factory=list)
    shas: list[str] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)

    def load(self, rows: Sequence[int]) -> torch.Tensor:
        """(len(rows), 2, *shape) float32 features of the kept rows `rows` (positions in `kept`)."""
        arrays = []
        for row in rows:
            array = self.cache.get(self.shas[row])
            if array is None:
                raise FileNotFoundError(f"{self.cache.path(self.shas[row])}: cache entry vanished")
            arrays.append(array)
        return torch.from_numpy(np.stack(arrays).astype(np.float32))


@torch.no_grad()
def compute_prefix_features(
    model: FigureEncoder,
    images: Sequence[str | Path],
    trainable_blocks: int,
    root: Path | str,
    batch_size: int = 16,
    progress: bool = False,
) -> PrefixFeatures:
    """Make sure every readable image has its prefix features (as is and mirrored) in the cache
    under `root`; only the missing ones are computed. An image is known by its file's SHA-256, so
    a figure re-cut from its sheet is a new entry. Unreadable images go to `failed`."""
    from tqdm.auto import tqdm

    cache = FeatureCache(Path(root), prefix_key(model, trainable_blocks))
    result = PrefixFeatures(cache)
    todo: list[tuple[str, torch.Tensor]] = []
    was_training = model.training
    model.eval()

    def flush() -> None:
        if not todo:
            return
        pixels = torch.stack([pixels for _, pixels in todo])
        plain = model.prefix(pixels, trainable_blocks)
        mirrored = model.prefix(torch.flip(pixels, dims=[-1]), trainable_blocks)
        for (sha, _), a, b in zip(todo, plain, mirrored, strict=True):
            cache.put(sha, torch.stack([a, b]).numpy())
        todo.clear()

    try:
        for position in tqdm(
            range(len(images)), disable=not progress, desc="backbone features", unit="image"
        ):
            path = images[position]
            try:
                sha = sha256_file(path)
                if cache.get(sha) is None:
                    todo.append((sha, preprocess_image(read_gray(path), model.config)))
            except (OSError, ValueError) as error:
                result.failed[position] = str(error) if isinstance(error, ValueError) else f"{path}: {error}"
                continue
            result.kept.append(position)
            result.shas.append(sha)
            if len(todo) >= batch_size:
                flush()
        flush()
    finally:
        model.train(was_training)
    return result


@torch.no_grad()
def embed_prefix_features(
    model: FigureEncoder, features: PrefixFeatures, trainable_blocks: int, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(retrieval, aligned) L2-normalised embeddings of the kept images from their cached features,
    as `embed_pixels` gives them (the mean of the image's and its mirror's embedding with flip TTA)."""
    was_training = model.training
    model.eval()
    retrieval, aligned = [], []
    try:
        for start in range(0, len(features.kept), batch_size):
            both = features.load(range(start, min(start + batch_size, len(features.kept))))
            embedding = model.suffix(both[:, 0], trainable_blocks)
            if model.config.flip_tta:
                embedding = 0.5 * (embedding + model.suffix(both[:, 1], trainable_blocks))
            retrieval.append(torch.nn.functional.normalize(embedding, dim=-1).numpy())
            aligned.append(torch.nn.functional.normalize(model.project_to_text(embedding), dim=-1).numpy())
    finally:
        model.train(was_training)
    dim, text_dim = model.config.embedding_dim, model.config.text_dim
    return (
        np.concatenate(retrieval) if retrieval else np.zeros((0, dim), np.float32),
        np.concatenate(aligned) if aligned else np.zeros((0, text_dim), np.float32),
    )
