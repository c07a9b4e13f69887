"""Train/val/test splits by patent, as PatentLMM's `splits/{all,train,val,test}.txt` lists of image ids.

A patent's split depends only on its own record (a salted SHA-256 of its split key, never Python's
`hash` nor a position), so adding patents or releases never moves one already assigned, and all
figures of a patent share a split: no patent's other views leak from train into test.

The split key is the patent, except for sibling designs: the USPTO numbers a week's design grants
in the order of their US design class, so designs of one class granted on one day are consecutive
numbers, often variants of one object by one applicant (two wheels, two game housings). They are the
hardest negatives of figure retrieval, and one of them trained on while its sibling is held out
would flatter the held-out score; so they share a key, and a split.
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
    """ "train", "val" or "test" for a patent (or a split key), stable across processes, machines
    and datasets."""
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


def design_class(classifications: Iterable[str]) -> str:
    """The US design class of the first USPC entry: "USPC:D14486" and "USPC:D14 486" -> "D14",
    "USPC:D 2973" -> "D2" (USPTO pads the class to three characters, then the subclass)."""
    for entry in classifications:
        scheme, _, code = str(entry).partition(":")
        code = code.strip()
        if scheme.strip().upper() == "USPC" and code.upper().startswith("D"):
            return code[:3].replace(" ", "").upper()
    return ""


def split_key(record: FigureRecord) -> str:
    """What a split is drawn for: a design's sibling group (grant date and design class), else the
    patent. A design without a USPC class is its own group."""
    if record.patent_id.upper().startswith("USD") and (cls := design_class(record.classifications)):
        return f"design-siblings:{record.grant_date}:{cls}"
    return record.patent_id


def _image_ids_by_key(
    items: Mapping[str, Iterable[str]] | Iterable[FigureRecord],
) -> dict[str, dict[str, list[str]]]:
    """{split key: {patent_id: [image_id, ...]}}; a {patent_id: [image_id]} mapping splits by patent."""
    if isinstance(items, Mapping):
        return {patent: {patent: list(image_ids)} for patent, image_ids in items.items()}
    grouped: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for record in items:
        grouped[split_key(record)][record.patent_id].append(record.image_id)
    return grouped


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
    for key, patents in _image_ids_by_key(items).items():
        split = assign_split(key, ratios, salt)
        for patent, image_ids in patents.items():
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
