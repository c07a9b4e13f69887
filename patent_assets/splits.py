"""Train/val/test splits by patent, as PatentLMM's `splits/{all,train,val,test}.txt` lists of image ids.

A patent's split depends only on its id (a salted SHA-256, never Python's `hash` nor a position), so
adding patents or releases never moves one already assigned, and all figures of a patent share a split:
no patent's other views leak from train into test.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from patent_assets.records import FigureRecord, atomic_write

SPLITS = ("train", "val", "test")
DEFAULT_RATIOS = (0.8, 0.1, 0.1)
DEFAULT_SALT = "patentflow"


def _unit_interval(patent_id: str, salt: str) -> float:
    """A uniform number in [0, 1) from the first 64 bits of SHA-256(salt:patent_id)."""
    digest = hashlib.sha256(f"{salt}:{patent_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(
    patent_id: str, ratios: tuple[float, float, float] = DEFAULT_RATIOS, salt: str = DEFAULT_SALT
) -> str:
    """ "train", "val" or "test" for a patent, stable across processes, machines and datasets."""
    if not patent_id or not patent_id.strip():
        raise ValueError("patent id is empty")
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-9:
        raise ValueError(f"split ratios must be three non-negative numbers summing to 1, got {ratios!r}")
    point = _unit_interval(patent_id.strip(), salt)
    train, val, _ = ratios
    if point < train:
        return "train"
    if point < train + val:
        return "val"
    return "test"


def _image_ids_by_patent(
    items: Mapping[str, Iterable[str]] | Iterable[FigureRecord],
) -> dict[str, list[str]]:
    if isinstance(items, Mapping):
        return {patent: list(image_ids) for patent, image_ids in items.items()}
    grouped: dict[str, list[str]] = defaultdict(list)
    for record in items:
        grouped[record.patent_id].append(record.image_id)
    return dict(grouped)


def split_of_images(
    items: Mapping[str, Iterable[str]] | Iterable[FigureRecord],
    ratios: tuple[float, float, float] = DEFAULT_RATIOS,
    salt: str = DEFAULT_SALT,
) -> dict[str, str]:
    """{image_id: split} for figure records or a {patent_id: [image_id, ...]} mapping.

    Raises ValueError naming the image if one image id is claimed by two patents.
    """
    splits: dict[str, str] = {}
    owner: dict[str, str] = {}
    for patent, image_ids in _image_ids_by_patent(items).items():
        split = assign_split(patent, ratios, salt)
        for image_id in image_ids:
            if image_id in owner and owner[image_id] != patent:
                raise ValueError(f"image {image_id} belongs to both {owner[image_id]} and {patent}")
            owner[image_id] = patent
            splits[image_id] = split
    return splits


def write_splits(
    items: Mapping[str, Iterable[str]] | Iterable[FigureRecord],
    out_dir: Path,
    ratios: tuple[float, float, float] = DEFAULT_RATIOS,
    salt: str = DEFAULT_SALT,
) -> dict[str, int]:
    """Write `out_dir/splits/{all,train,val,test}.txt` (sorted image ids, one a line, atomically).

    `items` is figure records or {patent_id: [image_id, ...]}. Returns the number of ids in each file.
    """
    splits = split_of_images(items, ratios, salt)
    by_split: dict[str, list[str]] = {"all": sorted(splits)}
    for name in SPLITS:
        by_split[name] = sorted(image for image, split in splits.items() if split == name)
    folder = Path(out_dir) / "splits"
    for name, image_ids in by_split.items():
        with atomic_write(folder / f"{name}.txt") as handle:
            handle.writelines(f"{image_id}\n" for image_id in image_ids)
    return {name: len(image_ids) for name, image_ids in by_split.items()}


def read_split(out_dir: Path, name: str) -> list[str]:
    """The image ids of one split file written by `write_splits`."""
    path = Path(out_dir) / "splits" / f"{name}.txt"
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
