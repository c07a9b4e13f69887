"""The data steps as plain functions over directories.

One implementation of each step, shared by the Dagster assets (one asset per step, one
partition per release) and by `patentflow ingest` (all steps in a row on any path). Each
step reads the previous step's files and writes its own, atomically, plus the items it
rejected with their reasons; nothing here knows about Dagster.

    parse_sources   release files  -> documents.jsonl        (+ rejected.jsonl)
    convert_sheets  documents      -> images/*.png, sheets.jsonl
    ocr_sheets      sheets         -> ocr.jsonl               (cached by image hash)
    build_figures   documents, sheets, ocr -> figures.jsonl   (FIG sentences aligned to sheets)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from patent_assets import alignment, figrefs, images, ocr, patentdesc, sources
from patent_assets.documents import GrantDocument, PatentBundle, document_from_dict, document_to_dict
from patent_assets.layout import FIGURES_JSONL
from patent_assets.records import FigureRecord, OcrWords, Rejection, atomic_write, read_jsonl, write_jsonl
from patent_assets.store import file_chunks

DOCUMENTS = "documents.jsonl"
SHEETS = "sheets.jsonl"
OCR = "ocr.jsonl"
FIGURES = FIGURES_JSONL
REJECTED = "rejected.jsonl"
SUMMARY = "summary.json"


@dataclass
class StepResult:
    """What a step did: its output directory, counts for the UI, and what it rejected."""

    out_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    rejected: list[Rejection] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def rejected_by_reason(self) -> dict[str, int]:
        return dict(Counter(r.reason.split(":")[0] for r in self.rejected))


def _finish(result: StepResult) -> StepResult:
    """Write what the step rejected and its summary (counts, rates) beside its outputs."""
    write_jsonl(result.out_dir / REJECTED, result.rejected)
    summary = result.counts | {
        k: v for k, v in result.extra.items() if isinstance(v, int | float | str | dict)
    }
    with atomic_write(result.out_dir / SUMMARY) as handle:
        json.dump(summary, handle, indent=2, sort_keys=True)
    return result


def read_step_summary(out_dir: Path) -> dict[str, Any]:
    path = out_dir / SUMMARY
    return json.loads(path.read_text()) if path.exists() else {}


# Bump when a step's output would change for the same input, so the cache below is not reused.
STEP_VERSION = "6"


def inputs_hash(*paths: Path) -> str:
    """A hash of a step's inputs (file bytes, or a directory's files) and of the step version.

    Not `store.hash_tree`: this one streams names and bytes into one digest. Its values are the
    cache keys already in every step summary on disk, so it keeps its own scheme."""
    digest = hashlib.sha256(STEP_VERSION.encode())
    for path in paths:
        files = (
            sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
        )
        for file in files:
            digest.update(str(file.name).encode())
            for chunk in file_chunks(file):
                digest.update(chunk)
    return digest.hexdigest()


def _cached(out_dir: Path, input_hash: str, outputs: tuple[str, ...]) -> StepResult | None:
    """The previous result when the step already ran on these exact inputs (re-runs are free)."""
    summary = read_step_summary(out_dir)
    if summary.get("input_hash") != input_hash or not all((out_dir / name).exists() for name in outputs):
        return None
    counts = {k: v for k, v in summary.items() if isinstance(v, int) and not isinstance(v, bool)}
    extra = {k: v for k, v in summary.items() if k not in counts and k != "input_hash"}
    rejected = [Rejection.from_dict(row) for row in read_jsonl(out_dir / REJECTED)]
    return StepResult(out_dir, counts, rejected, extra | {"reused": True})


# -- 1. release files -> documents ----------------------------------------------------------


def parse_sources(paths: list[Path], out_dir: Path) -> StepResult:
    """Parse every grant and published application of the given release files (any real USPTO
    shape) into documents.jsonl; other document types are skipped and counted by type.

    Drawing sheets are extracted under `out_dir/sheets/` (directory sources are read in place).
    """
    key = inputs_hash(*paths)
    if cached := _cached(out_dir, key, (DOCUMENTS,)):
        return cached
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    skipped: Counter[str] = Counter()
    for path in paths:
        summary = sources.SourceSummary()
        for item in sources.iter_source(Path(path), out_dir / "sheets", summary=summary):
            if isinstance(item, Rejection):
                rejected.append(item)
                continue
            patent_id = item.document.patent_id
            if patent_id in seen:
                rejected.append(
                    Rejection(
                        patent_id,
                        "duplicate patent: already read from an earlier source",
                        stage="source",
                        source=str(path),
                    )
                )
                continue
            seen.add(patent_id)
            rows.append(
                {
                    "document": document_to_dict(item.document),
                    "sheet_files": {name: str(p) for name, p in item.sheet_files.items()},
                }
            )
        skipped.update(summary.skipped)
    write_jsonl(out_dir / DOCUMENTS, rows)
    kinds = Counter(r["document"].get("document_kind", "grant") for r in rows)
    counts = {
        "grants": kinds["grant"],
        "applications": kinds["application"],
        "rejected": len(rejected),
        "skipped_non_grants": sum(skipped.values()),
        "sheets": sum(len(r["document"]["sheets"]) for r in rows),
    }
    return _finish(
        StepResult(out_dir, counts, rejected, {"skipped_by_type": dict(skipped), "input_hash": key})
    )


def read_bundles(documents_dir: Path) -> list[PatentBundle]:
    return [
        PatentBundle(
            document_from_dict(row["document"]), {name: Path(p) for name, p in row["sheet_files"].items()}
        )
        for row in read_jsonl(documents_dir / DOCUMENTS)
    ]


# -- 2. documents -> sheet images -------------------------------------------------------------


def convert_sheets(
    documents_dir: Path, out_dir: Path, limits: images.ImageLimits | None = None
) -> StepResult:
    """Turn each drawing sheet (TIF) into an upright PNG named after the sheet file."""
    limits = limits or images.ImageLimits()
    key = inputs_hash(documents_dir / DOCUMENTS)
    if cached := _cached(out_dir, key, (SHEETS,)):
        return cached
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    rejected: list[Rejection] = []
    bundles = read_bundles(documents_dir)
    if is_text_only(bundles):  # the weekly ipg text product: sheets are named, never shipped
        bundles = []
    for bundle in bundles:
        doc = bundle.document
        for sheet in doc.sheets:
            item = f"{doc.patent_id}/{sheet.file}"
            if sheet.img_content not in ("drawing", ""):
                continue  # chemistry/maths images are not patent figures
            tif = _find_sheet_file(bundle, sheet.file)
            if tif is None:
                rejected.append(
                    Rejection(
                        item,
                        "missing image: the XML names a sheet the release lacks",
                        stage="image",
                        source=doc.source,
                    )
                )
                continue
            png = out_dir / "images" / f"{Path(sheet.file).stem}.png"
            try:
                result = images.sheet_to_png(
                    tif, png, landscape=sheet.orientation == "landscape", limits=limits
                )
            except images.ImageRejected as exc:
                rejected.append(Rejection(item, str(exc), stage="image", source=str(tif)))
                continue
            rows.append(
                {
                    "patent_id": doc.patent_id,
                    "num": sheet.num,
                    "sheet": sheet.sheet_id,
                    "file": sheet.file,
                    "png": str(result.path),
                    "sha256": result.sha256,
                    "width": result.width,
                    "height": result.height,
                }
            )
    write_jsonl(out_dir / SHEETS, rows)
    return _finish(
        StepResult(out_dir, {"sheets": len(rows), "rejected": len(rejected)}, rejected, {"input_hash": key})
    )


def is_text_only(bundles: list[PatentBundle]) -> bool:
    """A full-text release (`ipgYYMMDD.zip`): grants whose XML names drawing sheets, and not one
    sheet file in the release. Its grants are text for the language model; their sheets are not
    missing images (a release with images that lacks some is still rejected sheet by sheet)."""
    return bool(bundles) and not any(bundle.sheet_files for bundle in bundles)


def _find_sheet_file(bundle: PatentBundle, name: str) -> Path | None:
    if name in bundle.sheet_files:
        return bundle.sheet_files[name]
    lowered = {k.lower(): v for k, v in bundle.sheet_files.items()}
    return lowered.get(name.lower())


# -- 3. sheet images -> OCR -------------------------------------------------------------------


def ocr_sheets(sheets_dir: Path, out_dir: Path, cache_dir: Path, workers: int | None = None) -> StepResult:
    """OCR words and 0-1000 boxes of every sheet image; cached by image content hash."""
    key = inputs_hash(sheets_dir / SHEETS)
    if cached := _cached(out_dir, key, (OCR,)):
        return cached
    out_dir.mkdir(parents=True, exist_ok=True)
    sheet_rows = list(read_jsonl(sheets_dir / SHEETS))
    run = ocr.ocr_images(
        [Path(r["png"]) for r in sheet_rows], cache_dir, workers=workers or os.cpu_count() or 1
    )
    rows, rejected = [], []
    for r in sheet_rows:
        png = Path(r["png"])
        if png in run.failed:
            rejected.append(
                Rejection(
                    f"{r['patent_id']}/{r['file']}",
                    f"ocr failed: {run.failed[png]}",
                    stage="ocr",
                    source=str(png),
                )
            )
            continue
        rows.append({"sha256": r["sha256"], "png": str(png), "ocr": asdict(run.results[png])})
    write_jsonl(out_dir / OCR, rows)
    words = sum(len(row["ocr"]["words"]) for row in rows)
    return _finish(
        StepResult(
            out_dir,
            {
                "sheets": len(rows),
                "cached": run.cached,
                "computed": run.computed,
                "words": words,
                "rejected": len(rejected),
            },
            rejected,
            {"input_hash": key},
        )
    )


# -- 4. documents + sheets + OCR -> figure records --------------------------------------------


def build_figures(
    documents_dir: Path,
    sheets_dir: Path,
    ocr_dir: Path,
    out_dir: Path,
    release: str = "",
    cache_dir: Path | None = None,
) -> StepResult:
    """Align each "FIG. n ..." sentence to the sheet that prints that label; one record per sheet.

    `cache_dir` caches the extra OCR passes the alignment runs (turned sheets, second chances).
    """
    key = inputs_hash(documents_dir / DOCUMENTS, sheets_dir / SHEETS, ocr_dir / OCR) + release
    if cached := _cached(out_dir, key, (FIGURES,)):
        return cached
    out_dir.mkdir(parents=True, exist_ok=True)
    sheets_by_patent: dict[str, dict[int, dict[str, Any]]] = {}
    for row in read_jsonl(sheets_dir / SHEETS):
        sheets_by_patent.setdefault(row["patent_id"], {})[row["num"]] = row
    ocr_by_png = {row["png"]: OcrWords(**row["ocr"]) for row in read_jsonl(ocr_dir / OCR)}

    records: list[FigureRecord] = []
    rejected: list[Rejection] = []
    expected = aligned = by_ocr = rescanned = 0
    bundles = read_bundles(documents_dir)
    text_only = is_text_only(bundles)
    for bundle in [] if text_only else bundles:
        doc = bundle.document
        sheets = sheets_by_patent.get(doc.patent_id, {})
        if not doc.brief_paragraphs:
            rejected.append(
                Rejection(
                    doc.patent_id, "no brief description of drawings", stage="alignment", source=doc.source
                )
            )
            continue
        if not sheets:
            rejected.append(
                Rejection(doc.patent_id, "no readable drawing sheets", stage="alignment", source=doc.source)
            )
            continue
        pngs = {num: Path(row["png"]) for num, row in sheets.items()}
        sheet_ocr = {num: ocr_by_png[str(p)] for num, p in pngs.items() if str(p) in ocr_by_png}
        result = alignment.align_figures(doc, pngs, sheet_ocr, cache_dir=cache_dir)
        rescanned += len(result.rescanned)
        n_labels = sum(len(v) for v in result.by_sheet.values())
        expected += n_labels + len(result.unaligned)
        aligned += n_labels
        by_ocr += sum(1 for how in result.evidence.values() if how == "ocr")
        for label, reason in result.unaligned:
            rejected.append(
                Rejection(
                    f"{doc.patent_id} {label}", f"not aligned: {reason}", stage="alignment", source=doc.source
                )
            )
        # What the label scan reads beyond the text layer reaches the description model's OCR words.
        model_ocr = {
            num: alignment.with_label_reads(pngs[num], words, cache_dir=cache_dir)
            for num, words in sheet_ocr.items()
            if result.by_sheet.get(num)
        }
        records.extend(_figure_records(doc, sheets, model_ocr, result, release))
    write_jsonl(out_dir / FIGURES, records)
    counts = {
        "figures": len(records),
        "patents": len({r.patent_id for r in records}),
        "labels_expected": expected,
        "labels_aligned": aligned,
        "labels_by_ocr": by_ocr,
        "sheets_rescanned": rescanned,
        "rejected": len(rejected),
        "text_only_grants": len(bundles) if text_only else 0,
    }
    return _finish(
        StepResult(
            out_dir,
            counts,
            rejected,
            {"alignment_rate": aligned / expected if expected else 0.0, "input_hash": key},
        )
    )


def _figure_records(
    doc: GrantDocument,
    sheets: dict[int, dict[str, Any]],
    sheet_ocr: dict[int, OcrWords],
    result: alignment.Alignment,
    release: str,
) -> list[FigureRecord]:
    records = []
    for num, labels in sorted(result.by_sheet.items()):
        if not labels or num not in sheets:
            continue
        row = sheets[num]
        records.append(
            FigureRecord(
                image_id=f"{doc.patent_id}__{num}",
                patent_id=doc.patent_id,
                sheet=row["sheet"],
                image_path=row["png"],
                figure_labels=labels,
                brief_description=" ".join(result.sentences_by_sheet.get(num, [])),
                # A printed part ("FIG. 2(a)") is described where the text names its figure (FIG. 2).
                detailed_description=figrefs.detailed_description_for(
                    [*labels, *(result.parts[label] for label in labels if label in result.parts)],
                    doc.detailed_paragraphs,
                ),
                grant_date=doc.grant_date,
                classifications=doc.classifications,
                title=doc.title,
                ocr=sheet_ocr.get(num, OcrWords()),
                release=release,
                image_sha256=row["sha256"],
                abstract=doc.abstract,
                document_kind=doc.document_kind,
                synthetic=doc.synthetic,
            )
        )
    return records


# -- PatentDesc-355k JSON -> figure records -------------------------------------------------


def patentdesc_figures(
    json_paths: list[Path], out_dir: Path, cache_dir: Path, workers: int | None = None, concurrency: int = 8
) -> StepResult:
    """PatentDesc entries: images downloaded (bounded, retried, resumable), checked, OCR'd.

    The descriptions come with the entries, so no alignment is needed; a bad entry or a failed
    download is a rejection naming the image id, and the rest go on.
    """
    key = inputs_hash(*json_paths)
    if cached := _cached(out_dir, key, (FIGURES,)):
        return cached
    rejected: list[Rejection] = []
    entries: list[patentdesc.PatentDescEntry] = []
    for path in json_paths:
        try:
            found, bad = patentdesc.read_patentdesc(path)
        except patentdesc.PatentDescError as exc:
            rejected.append(Rejection(str(path), str(exc), stage="source", source=str(path)))
            continue
        entries += found
        rejected += bad
    downloaded, failed = patentdesc.fetch_images(entries, out_dir / "downloads", concurrency=concurrency)
    rejected += failed
    pngs: dict[str, images.SheetImage] = {}
    for entry in entries:
        if entry.image_id not in downloaded:
            continue
        try:
            pngs[entry.image_id] = images.sheet_to_png(
                downloaded[entry.image_id], out_dir / "images" / f"{entry.image_id}.png", landscape=False
            )
        except images.ImageRejected as exc:
            rejected.append(Rejection(entry.image_id, str(exc), stage="image", source=entry.image_url))
    run = ocr.ocr_images([p.path for p in pngs.values()], cache_dir, workers=workers or os.cpu_count() or 1)
    records = []
    for entry in entries:
        if entry.image_id not in pngs:
            continue
        png = pngs[entry.image_id]
        records.append(
            FigureRecord(
                image_id=entry.image_id,
                patent_id=entry.patent_id,
                sheet="",
                image_path=str(png.path),
                figure_labels=[],
                brief_description=entry.brief_description,
                detailed_description=figrefs.clip_tokens(entry.detailed_description, 500),
                grant_date="",
                classifications=[],
                title="",
                ocr=alignment.with_label_reads(png.path, run.results[png.path], cache_dir=cache_dir)
                if png.path in run.results
                else OcrWords(),
                image_sha256=png.sha256,
            )
        )
    write_jsonl(out_dir / FIGURES, records)
    counts = {
        "entries": len(entries),
        "downloaded": len(downloaded),
        "figures": len(records),
        "rejected": len(rejected),
    }
    return _finish(StepResult(out_dir, counts, rejected, {"input_hash": key}))


@dataclass
class IngestSummary:
    out_dir: Path
    steps: dict[str, StepResult]
    figures: int = 0
    duplicates: list[Rejection] = field(default_factory=list)

    @property
    def rejected(self) -> list[Rejection]:
        return [r for step in self.steps.values() for r in step.rejected] + self.duplicates

    def as_dict(self) -> dict[str, Any]:
        steps = {
            name: step.counts | {k: v for k, v in step.extra.items() if isinstance(v, int | float)}
            for name, step in self.steps.items()
        }
        return {"figures": self.figures, "rejected": len(self.rejected), "steps": steps}


def ingest(
    paths: list[Path], out_dir: Path, *, cache_dir: Path | None = None, workers: int | None = None
) -> IngestSummary:
    """All data steps on any sources: `out_dir/figures.jsonl` and `out_dir/rejected.jsonl`.

    A source is a USPTO release in any real shape, or a PatentDesc JSON (`*.json`). Image paths
    are written absolute, so that the records read the same from any working directory.
    """
    out_dir = Path(out_dir).resolve()
    work = out_dir / "work"
    cache_dir = cache_dir or work / "ocr-cache"
    releases = [Path(p) for p in paths if Path(p).suffix.lower() != ".json"]
    descs = [Path(p) for p in paths if Path(p).suffix.lower() == ".json"]
    steps: dict[str, StepResult] = {}
    if releases:
        steps["documents"] = parse_sources(releases, work / "documents")
        steps["sheets"] = convert_sheets(work / "documents", work / "sheets")
        steps["ocr"] = ocr_sheets(work / "sheets", work / "ocr", cache_dir, workers)
        steps["figures"] = build_figures(
            work / "documents", work / "sheets", work / "ocr", work / "figures", cache_dir=cache_dir
        )
    if descs:
        steps["patentdesc"] = patentdesc_figures(descs, work / "patentdesc", cache_dir, workers)
    # one figures.jsonl: an image id met twice (two sources) is kept once, the rest rejected
    records: list[FigureRecord] = []
    duplicates: list[Rejection] = []
    seen: set[str] = set()
    for step in ("figures", "patentdesc"):
        if step not in steps:
            continue
        for record in read_jsonl(steps[step].out_dir / FIGURES):
            if record["image_id"] in seen:
                duplicates.append(
                    Rejection(
                        record["image_id"],
                        "duplicate image id: already read from another source",
                        stage="ingest",
                        source=str(steps[step].out_dir),
                    )
                )
                continue
            seen.add(record["image_id"])
            records.append(record)
    write_jsonl(out_dir / FIGURES, records)
    summary = IngestSummary(out_dir, steps, len(records), duplicates)
    write_jsonl(out_dir / REJECTED, summary.rejected)  # every stage's rejections, in one file
    with atomic_write(out_dir / SUMMARY) as handle:
        json.dump(summary.as_dict(), handle, indent=2)
    return summary
