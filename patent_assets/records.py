"""The records that flow between the data steps, and their JSON-lines files.

`FigureRecord` is one line of `figures.jsonl`; `Rejection` one line of `rejected.jsonl`.
Both are interfaces that users and scripts rely on: add fields, never rename them.
`read_figure_rows` is the one reader of a figures.jsonl that may hold bad lines.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any


@dataclass
class OcrWords:
    """OCR of one image in LayoutLMv3's input format: words and their boxes, 0-1000."""

    words: list[str] = field(default_factory=list)
    boxes: list[list[int]] = field(default_factory=list)  # [x0, y0, x1, y1], 0-1000
    width: int = 0  # pixel size of the image the boxes are relative to
    height: int = 0
    confidences: list[float] = field(default_factory=list)  # tesseract's 0-100, one per word


@dataclass
class FigureRecord:
    image_id: str  # PatentDesc style: US<number><kind>__<sheet>
    patent_id: str  # US<number><kind>, e.g. USD0907292S1
    sheet: str  # D00001
    image_path: str
    figure_labels: list[str]  # ["FIG. 3A", "FIG. 3B"]
    brief_description: str
    detailed_description: str
    # ISO yyyy-mm-dd: the date the figure is prior art from, which the prior-art filter uses; for a
    # published application (document_kind "application") it is the publication date.
    grant_date: str
    classifications: list[str]
    title: str
    ocr: OcrWords
    release: str = ""
    image_sha256: str = ""
    abstract: str = ""  # the patent's abstract: with the title, its text for patent-level search
    document_kind: str = "grant"  # "grant" or "application"; records written before it are grants
    # From patentflow's synthetic releases rather than the USPTO: kept apart when models are
    # judged on real drawings. Records written before the field are read as real.
    synthetic: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FigureRecord:
        data = dict(data)
        data["ocr"] = OcrWords(**data.get("ocr", {}))
        return cls(**data)


@dataclass
class Rejection:
    """An item left out, and why. `item` names it (a patent, a file, a sheet, an image id)."""

    item: str
    reason: str
    stage: str = ""  # source, xml, image, ocr, alignment, download, validation
    source: str = ""  # the file or release it came from

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rejection:
        return cls(**data)


@contextmanager
def atomic_write(path: Path, mode: str = "w", *, fsync: bool = True) -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path`, then rename: readers never see half a file.

    `fsync=False` skips flushing to disk before the rename, for a cache entry that is cheaper to
    recompute after a crash than to sync once per entry."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_path(new: Path, target: Path) -> Path:
    """Put the fully written `new` (a file or a directory, on the same file system) at `target`:
    readers see the old one or the whole new one. A directory cannot be renamed over a non-empty
    one, so an old `target` is moved aside first and removed after."""
    new, target = Path(new), Path(target)
    previous = None
    if target.exists():
        previous = target.with_name(f".{target.name}.{os.getpid()}.old")
        os.replace(target, previous)
    os.replace(new, target)
    if previous is not None:
        if previous.is_dir():
            shutil.rmtree(previous, ignore_errors=True)
        else:
            previous.unlink(missing_ok=True)
    return target


def write_jsonl(path: Path, rows: Iterable[Any]) -> int:
    """Write dataclasses or dicts as JSON lines, atomically. Returns the number of rows."""
    count = 0
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(
                json.dumps(
                    asdict(row) if hasattr(row, "__dataclass_fields__") else row,
                    ensure_ascii=False,
                    sort_keys=False,
                )
            )
            handle.write("\n")
            count += 1
    return count


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def read_figures(path: Path) -> list[FigureRecord]:
    """Every record of a figures.jsonl this project wrote; a bad line is an error."""
    return [FigureRecord.from_dict(row) for row in read_jsonl(path)]


FIGURE_FIELDS = ("image_id", "image_path")  # what every reader of a figure needs


def read_figure_rows(
    path: Path,
    stage: str,
    *,
    required: Sequence[str] = FIGURE_FIELDS,
    check: Callable[[dict[str, Any]], str | None] | None = None,
    resolve_images: bool = True,
) -> tuple[list[dict[str, Any]], list[Rejection]]:
    """The usable rows of a figures.jsonl in file order, and a `Rejection` of `stage` for each other line.

    The one reader for the jobs that take a figures.jsonl from outside (a user's, or a dataset
    of an earlier run): a bad line is left out with its reason and the rest go on. A line is
    rejected when it is not a JSON object, when a `required` field is missing or empty
    ("missing image_id, image_path"), when its image_id was accepted on an earlier line
    ("duplicate image_id": the first one counts), or when `check` gives a reason. A line is
    named by its image_id, or by `<file name>:<line number>` without one. With `resolve_images`,
    a relative image_path is taken from the file's folder (and given as a str)."""
    path = Path(path)
    rows: list[dict[str, Any]] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            item = f"{path.name}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                rejected.append(Rejection(item, f"not JSON ({error})", stage, str(path)))
                continue
            if not isinstance(row, dict):
                rejected.append(Rejection(item, "not a JSON object", stage, str(path)))
                continue
            item = str(row.get("image_id") or item)
            missing = [key for key in required if not row.get(key)]
            if missing:
                reason: str | None = f"missing {', '.join(missing)}"
            elif item in seen:
                reason = "duplicate image_id"
            else:
                reason = check(row) if check is not None else None
            if reason is not None:
                rejected.append(Rejection(item, reason, stage, str(path)))
                continue
            seen.add(item)
            if resolve_images and row.get("image_path"):
                image = Path(str(row["image_path"]))
                row["image_path"] = str(image if image.is_absolute() else path.parent / image)
            rows.append(row)
    return rows, rejected


def read_rejections(path: Path) -> list[Rejection]:
    return [Rejection.from_dict(row) for row in read_jsonl(path)]
