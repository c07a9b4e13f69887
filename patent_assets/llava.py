"""Figure records as LLaVA training conversations, in exactly PatentLMM's format.

One entry per figure and kind of description (vl2g/PatentLMM `prep_patent_data.py`):

    {"id": image_id, "image": "<image_id>.png",
     "conversations": [{"from": "human", "value": "<image>\\nWrite a brief description for this patent image."},
                       {"from": "gpt", "value": description}]}

Escape: like PatentLMM, the special tokens ("<image>", "<im_patch>", "<im_start>", "<im_end>",
"<image-placeholder>") and any other "<" or ">" inside a description are rewritten with "<" -> "[["
and ">" -> "]]" ("<image>" -> "[[image]]"), so a description can never inject an image token.

OCR: PatentLMM feeds OCR to the vision encoder, not to the prompt. Each entry carries it in an extra
field, ``"ocr": {"words": [...], "boxes": [[x0, y0, x1, y1], ...] (0-1000), "width": w, "height": h}``,
which LLaVA's loader ignores and a PatentMME-style encoder reads beside the image.

Files: `llava_json/{brief,detailed}_{train,val,test}.json` (PatentLMM names them without ".json").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from patent_assets.layout import LLAVA_DIR
from patent_assets.records import FigureRecord, atomic_write

Kind = Literal["brief", "detailed"]
KINDS: tuple[Kind, ...] = ("brief", "detailed")
SPLITS = ("train", "val", "test")

# PatentLMM's list, in its order; the last two catch every other angle bracket.
SPECIAL_TOKENS = ("<image>", "<im_patch>", "<im_start>", "<im_end>", "<image-placeholder>", "<", ">")


def escape_description(text: str) -> str:
    """Escape special tokens as PatentLMM does: every "<" becomes "[[" and every ">" becomes "]]"."""
    for token in SPECIAL_TOKENS:
        text = text.replace(token, token.replace("<", "[[").replace(">", "]]"))
    return text


def prompt(kind: Kind) -> str:
    return f"<image>\nWrite a {kind} description for this patent image."


def _description(record: FigureRecord, kind: Kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return (record.brief_description if kind == "brief" else record.detailed_description) or ""


def to_llava_entry(record: FigureRecord, kind: Kind, *, include_ocr: bool = True) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": record.image_id,
        "image": f"{record.image_id}.png",
        "conversations": [
            {"from": "human", "value": prompt(kind)},
            {"from": "gpt", "value": escape_description(_description(record, kind).strip())},
        ],
    }
    if include_ocr:
        entry["ocr"] = {
            "words": list(record.ocr.words),
            "boxes": [list(box) for box in record.ocr.boxes],
            "width": record.ocr.width,
            "height": record.ocr.height,
        }
    return entry


def to_llava(
    records: Iterable[FigureRecord], kind: Kind, *, include_ocr: bool = True
) -> list[dict[str, Any]]:
    """LLaVA entries for the records whose description of `kind` is not empty, in input order."""
    return [
        to_llava_entry(record, kind, include_ocr=include_ocr)
        for record in records
        if _description(record, kind).strip()
    ]


def write_llava(
    records: Iterable[FigureRecord],
    splits: Mapping[str, str],
    out_dir: Path,
    *,
    include_ocr: bool = True,
) -> dict[str, int]:
    """Write `out_dir/llava_json/{brief,detailed}_{train,val,test}.json`, each atomically.

    `splits` maps image id to "train", "val" or "test". Records with an empty description of a
    kind are left out of that kind's files and counted (`empty_brief`, `empty_detailed`); records
    absent from `splits` are left out and counted (`not_in_splits`). Returns the counts, flat, for
    Dagster metadata: `brief_train`, ..., `detailed_test`, `empty_brief`, `empty_detailed`,
    `not_in_splits`. Raises ValueError naming the item for a duplicate image id or an unknown split.
    """
    records = list(records)
    seen: set[str] = set()
    for record in records:
        if record.image_id in seen:
            raise ValueError(f"duplicate image id {record.image_id}")
        seen.add(record.image_id)
        split = splits.get(record.image_id)
        if split is not None and split not in SPLITS:
            raise ValueError(f"image {record.image_id}: unknown split {split!r}")

    in_splits = [record for record in records if record.image_id in splits]
    counts: dict[str, int] = {"not_in_splits": len(records) - len(in_splits)}
    folder = Path(out_dir) / LLAVA_DIR
    for kind in KINDS:
        counts[f"empty_{kind}"] = sum(1 for r in in_splits if not _description(r, kind).strip())
        for split in SPLITS:
            entries = to_llava(
                (r for r in in_splits if splits[r.image_id] == split), kind, include_ocr=include_ocr
            )
            with atomic_write(folder / f"{kind}_{split}.json") as handle:
                json.dump(entries, handle, ensure_ascii=False)
            counts[f"{kind}_{split}"] = len(entries)
    return counts
