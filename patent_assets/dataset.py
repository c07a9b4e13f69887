"""The figure dataset across releases: validated releases merged, split, and put in LLaVA form.

A release enters the dataset only when its validation passed (`validation/validation.json`
in the release's directory, written by the validation step). Splits come from a stable hash of the patent id,
so adding a release never moves an existing patent.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from patent_assets import llava, splits
from patent_assets.pipeline import DOCUMENTS, FIGURES, REJECTED, SUMMARY
from patent_assets.records import FigureRecord, Rejection, atomic_write, read_figures, read_jsonl, write_jsonl

VALIDATION = "validation.json"


def validation_dir(release_dir: Path) -> Path:
    # Beside the figures, not inside: the figures' DVC hash must not change when they are validated.
    return release_dir / "validation"


def write_validation(release_dir: Path, report: Any) -> Path:
    path = validation_dir(release_dir) / VALIDATION
    with atomic_write(path) as handle:
        json.dump(
            {"success": bool(report.success), "summary": report.summary()}, handle, indent=2, default=str
        )
    return path.parent


def release_passed(release_dir: Path) -> bool:
    path = validation_dir(release_dir) / VALIDATION
    return path.exists() and bool(json.loads(path.read_text()).get("success"))


def validated_documents(releases_dir: Path) -> list[Path]:
    """The documents.jsonl of every release that passed validation (text-only releases too): the
    patent text the language model and the tokenizer may learn from."""
    releases_dir = Path(releases_dir)
    if not releases_dir.is_dir():
        return []
    return [
        release / "documents" / DOCUMENTS
        for release in sorted(releases_dir.iterdir())
        if release_passed(release) and (release / "documents" / DOCUMENTS).is_file()
    ]


def held_out_patents(figures_jsonl: Path) -> set[str]:
    """Patents with figures in the dataset's val or test split: their text (the test references
    among it) must train nothing, not even the language model's pretraining."""
    if not Path(figures_jsonl).is_file():
        return set()
    # Every row counts, even one that `read_figure_rows` would reject (no image, a repeated id):
    # a held-out patent missed here would leak its text into training.
    return {
        row["patent_id"]
        for row in read_jsonl(Path(figures_jsonl))
        if row.get("split") in ("val", "test") and row.get("patent_id")
    }


@dataclass
class BuiltDataset:
    out_dir: Path
    figures: int
    patents: int
    split_counts: dict[str, int]
    releases_used: list[str] = field(default_factory=list)
    releases_skipped: list[str] = field(default_factory=list)
    duplicates: int = 0


def build_dataset(releases_dir: Path, out_dir: Path) -> BuiltDataset:
    """Merge `releases/*/figures/figures.jsonl` of validated releases into `out_dir`.

    Writes `figures.jsonl` (with the split of each record), `rejected.jsonl` (duplicates across
    releases) and `splits/{all,train,val,test}.txt`.
    """
    records: list[FigureRecord] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    used, skipped = [], []
    for figures_dir in sorted(releases_dir.glob("*/figures")):
        release = figures_dir.parent.name
        if not (figures_dir / FIGURES).exists() or not release_passed(figures_dir.parent):
            skipped.append(release)
            continue
        used.append(release)
        for record in read_figures(figures_dir / FIGURES):
            if record.image_id in seen:
                rejected.append(
                    Rejection(
                        record.image_id,
                        "duplicate image id: already in an earlier release",
                        stage="dataset",
                        source=release,
                    )
                )
                continue
            seen.add(record.image_id)
            records.append(record)
    out_dir.mkdir(parents=True, exist_ok=True)
    split_of = splits.split_of_images(records)
    write_jsonl(out_dir / FIGURES, ({**asdict(r), "split": split_of[r.image_id]} for r in records))
    write_jsonl(out_dir / REJECTED, rejected)
    counts = splits.write_splits(records, out_dir)
    with atomic_write(out_dir / SUMMARY) as handle:
        json.dump(
            {
                "figures": len(records),
                "patents": len({r.patent_id for r in records}),
                "splits": counts,
                "releases_used": used,
                "releases_skipped": skipped,
            },
            handle,
            indent=2,
        )
    return BuiltDataset(
        out_dir, len(records), len({r.patent_id for r in records}), counts, used, skipped, len(rejected)
    )


def split_problems(dataset_dir: Path) -> list[str]:
    """Patents whose figures sit in more than one split, and image ids listed twice."""
    split_of_patent: dict[str, set[str]] = {}
    ids: set[str] = set()
    problems = []
    for row in read_jsonl(dataset_dir / FIGURES):
        split_of_patent.setdefault(row["patent_id"], set()).add(row["split"])
        if row["image_id"] in ids:
            problems.append(f"{row['image_id']}: listed twice")
        ids.add(row["image_id"])
    problems += [f"{pid}: in {sorted(s)}" for pid, s in split_of_patent.items() if len(s) > 1]
    return problems


def build_llava(dataset_dir: Path, out_dir: Path) -> dict[str, int]:
    """`out_dir/llava_json/{brief,detailed}_{split}.json` from the split figure dataset."""
    rows = list(read_jsonl(dataset_dir / FIGURES))
    records = [FigureRecord.from_dict({k: v for k, v in row.items() if k != "split"}) for row in rows]
    return llava.write_llava(records, {row["image_id"]: row["split"] for row in rows}, out_dir)
