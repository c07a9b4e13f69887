"""Data-quality gates on figure records, with great-expectations 1.x called directly (no dagster-ge).

`figures_frame` flattens FigureRecords into one row per figure (plus derived columns: OCR word
count, whether the image opens with Pillow, the parsed grant date); `validate_figures` runs one
expectation suite over it and returns a `ValidationReport` whose `summary()` is Dagster metadata.

great_expectations is imported lazily (about 5-7 s) and its ephemeral context is created once per
process and reused: each validation adds its suite and validation definition, runs, and removes them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import math
import os
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from patent_assets.documents import GrantDocument, document_text
from patent_assets.records import FigureRecord

if TYPE_CHECKING:
    import pandas as pd

EARLIEST_GRANT_DATE = "1976-01-01"  # the USPTO full-text era
DOCUMENT_KINDS = ("grant", "application")  # FigureRecord.document_kind
ISO_DATE_REGEX = r"^\d{4}-\d{2}-\d{2}$"

# Column -> GX type name. "str" accepts pandas' string dtype and, for object columns, checks each value.
REQUIRED_COLUMNS: dict[str, str] = {
    "image_id": "str",
    "patent_id": "str",
    "sheet": "str",
    "image_path": "str",
    "brief_description": "str",
    "grant_date": "str",
    "n_figure_labels": "int64",
    "n_ocr_words": "int64",
    "has_ocr": "bool",
    "image_readable": "bool",
}

_lock = threading.Lock()


@dataclass
class ExpectationOutcome:
    name: str  # e.g. "unique_image_ids", "schema:type:grant_date"
    success: bool
    observed: Any  # the observed value (a share, a type) or the number of offending rows
    details: dict[str, Any] = field(default_factory=dict)  # expectation type, examples, exception


@dataclass
class ValidationReport:
    success: bool
    results: list[ExpectationOutcome]
    rows: int
    duration_s: float

    @property
    def failing(self) -> list[str]:
        return [outcome.name for outcome in self.results if not outcome.success]

    def outcome(self, name: str) -> ExpectationOutcome:
        for outcome in self.results:
            if outcome.name == name:
                return outcome
        raise KeyError(f"no expectation named {name!r}")

    def summary(self) -> dict[str, Any]:
        """Flat str/int/float/bool values, ready for `MaterializeResult`/`AssetCheckResult` metadata."""
        summary: dict[str, Any] = {
            "success": self.success,
            "rows": self.rows,
            "expectations": len(self.results),
            "passed": sum(1 for o in self.results if o.success),
            "failed": len(self.failing),
            "failing": ", ".join(self.failing),
            "duration_s": round(self.duration_s, 3),
        }
        for name in ("ocr_coverage", "alignment_rate", "readable_images"):
            try:
                observed = self.outcome(name).observed
            except KeyError:
                continue
            if isinstance(observed, int | float):
                summary[name] = float(observed)
        return summary


def image_readable(path: str | Path) -> bool:
    """True if Pillow can open and fully decode the image (a truncated or non-image file is False)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.width > 0 and image.height > 0
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def _parse_iso_date(text: Any) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None


def figures_frame(
    records: Iterable[FigureRecord], *, alignment_rate: float | None = None, check_images: bool = True
) -> pd.DataFrame:
    """One row per figure: the record's scalar fields plus `n_figure_labels`, `n_ocr_words`, `has_ocr`,
    `image_readable` (opened with Pillow, unless `check_images` is False), `grant_date_parsed`
    (NaT when not an ISO date) and, when given, the constant `alignment_rate`."""
    import pandas as pd

    records = list(records)
    readable = [True] * len(records)
    if check_images:
        # Decoding is mostly zlib / libtiff work that releases the GIL: threads overlap it.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            readable = list(pool.map(image_readable, (record.image_path for record in records)))
    rows = []
    for record, is_readable in zip(records, readable, strict=True):
        n_words = sum(1 for word in record.ocr.words if str(word).strip())
        rows.append(
            {
                "image_id": record.image_id,
                "patent_id": record.patent_id,
                "sheet": record.sheet,
                "image_path": record.image_path,
                "release": record.release,
                "title": record.title,
                "brief_description": record.brief_description,
                "brief_tokens": len(str(record.brief_description or "").split()),
                "detailed_tokens": len(str(record.detailed_description or "").split()),
                "grant_date": record.grant_date,
                "document_kind": record.document_kind,
                "n_figure_labels": len(record.figure_labels),
                "n_ocr_words": n_words,
                "has_ocr": n_words > 0,
                "image_readable": is_readable,
            }
        )
    columns = [*REQUIRED_COLUMNS, "release", "title", "brief_tokens", "detailed_tokens", "document_kind"]
    frame = pd.DataFrame(rows, columns=list(dict.fromkeys(columns)))
    for column, dtype in REQUIRED_COLUMNS.items():
        if dtype in ("int64", "bool"):
            frame[column] = frame[column].astype(dtype)
    parsed = [_parse_iso_date(value) for value in frame["grant_date"]]
    frame["grant_date_parsed"] = pd.to_datetime(pd.Series(parsed, dtype=object), errors="coerce")
    if alignment_rate is not None:
        frame["alignment_rate"] = float(alignment_rate)
    return frame


@functools.cache
def _gx() -> tuple[Any, Any, Any, Any]:
    """great_expectations, its expectations module, the process's ephemeral context, a batch definition."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm noise in run logs
    batch = (
        context.data_sources.add_pandas("patentflow_figures")
        .add_dataframe_asset("figures")
        .add_batch_definition_whole_dataframe("whole_frame")
    )
    return gx, gxe, context, batch


def figure_expectations(
    *,
    with_alignment: bool,
    min_ocr_coverage: float = 0.8,
    min_alignment_rate: float = 0.9,
    today: dt.date | None = None,
) -> list[tuple[str, Any]]:
    """The suite, as (name, expectation) pairs: schema, identity, content, images, OCR, alignment, dates.

    `grant_date` is the date a figure is prior art from: for a published application, its
    publication date; both kinds are held to the same date range.
    """

    _, gxe, _, _ = _gx()
    today = today or dt.date.today()
    pairs: list[tuple[str, Any]] = [("has_rows", gxe.ExpectTableRowCountToBeBetween(min_value=1))]
    for column, type_name in REQUIRED_COLUMNS.items():
        pairs.append((f"schema:column:{column}", gxe.ExpectColumnToExist(column=column)))
        pairs.append(
            (f"schema:type:{column}", gxe.ExpectColumnValuesToBeOfType(column=column, type_=type_name))
        )
    pairs += [
        ("unique_image_ids", gxe.ExpectColumnValuesToBeUnique(column="image_id")),
        ("image_ids_present", gxe.ExpectColumnValuesToMatchRegex(column="image_id", regex=r"\S")),
        (
            "non_empty_brief_descriptions",
            gxe.ExpectColumnValuesToMatchRegex(column="brief_description", regex=r"\S"),
        ),
        ("readable_images", gxe.ExpectColumnValuesToBeInSet(column="image_readable", value_set=[True])),
        ("ocr_coverage", gxe.ExpectColumnMeanToBeBetween(column="has_ocr", min_value=min_ocr_coverage)),
        ("grant_dates_iso", gxe.ExpectColumnValuesToMatchRegex(column="grant_date", regex=ISO_DATE_REGEX)),
        *_kind_and_date_expectations(today),
    ]
    if with_alignment:
        pairs.append(
            (
                "alignment_rate",
                gxe.ExpectColumnMinToBeBetween(
                    column="alignment_rate", min_value=min_alignment_rate, max_value=1.0
                ),
            )
        )
    return pairs


def _kind_and_date_expectations(today: dt.date) -> list[tuple[str, Any]]:
    """Shared by the figure and the document suites: known document kinds, grant dates that
    parse and lie in 1976-01-01 .. today (`grant_date_parsed`)."""
    import pandas as pd

    _, gxe, _, _ = _gx()
    return [
        (
            "document_kinds_known",
            gxe.ExpectColumnValuesToBeInSet(column="document_kind", value_set=list(DOCUMENT_KINDS)),
        ),
        ("grant_dates_valid", gxe.ExpectColumnValuesToNotBeNull(column="grant_date_parsed")),
        (
            "grant_dates_in_range",
            gxe.ExpectColumnValuesToBeBetween(
                column="grant_date_parsed",
                min_value=pd.Timestamp(EARLIEST_GRANT_DATE),
                max_value=pd.Timestamp(today),
            ),
        ),
    ]


def _plain(value: Any) -> Any:
    """numpy / pandas scalars and containers as plain Python (for JSON and Dagster metadata)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "item") and callable(value.item):
        with contextlib.suppress(TypeError, ValueError):
            value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _outcome(name: str, result: Any) -> ExpectationOutcome:
    body = result.result or {}
    details: dict[str, Any] = {"expectation": result.expectation_config.type}
    if body.get("unexpected_count") is not None:
        details["unexpected_count"] = _plain(body["unexpected_count"])
        details["unexpected_examples"] = _plain(body.get("partial_unexpected_list") or [])[:10]
    exception = result.exception_info or {}
    if exception.get("raised_exception"):
        details["exception"] = str(exception.get("exception_message"))
    observed = body.get("observed_value")
    if observed is None and "unexpected_count" in details:
        observed = details["unexpected_count"]
    return ExpectationOutcome(
        name=name, success=bool(result.success), observed=_plain(observed), details=details
    )


def validate_frame(frame: pd.DataFrame, expectations: list[tuple[str, Any]]) -> ValidationReport:
    """Run named expectations over a dataframe in the process's GX context."""
    gx, _, context, batch = _gx()
    started = time.perf_counter()
    token = uuid.uuid4().hex
    with _lock:  # the context's stores are shared; one validation at a time
        suite = context.suites.add(gx.ExpectationSuite(name=f"figures-{token}"))
        for name, expectation in expectations:
            expectation.meta = {**(expectation.meta or {}), "name": name}
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"figures-{token}", data=batch, suite=suite)
        )
        try:
            run = definition.run(batch_parameters={"dataframe": frame})
        finally:
            context.validation_definitions.delete(definition.name)
            context.suites.delete(suite.name)
    order = {name: index for index, (name, _) in enumerate(expectations)}
    outcomes = sorted(
        (_outcome(result.expectation_config.meta["name"], result) for result in run.results),
        key=lambda outcome: order[outcome.name],
    )
    return ValidationReport(
        success=all(o.success for o in outcomes),
        results=outcomes,
        rows=len(frame),
        duration_s=time.perf_counter() - started,
    )


def validate_figures(
    records: Iterable[FigureRecord],
    *,
    alignment_rate: float | None,
    min_ocr_coverage: float = 0.8,
    min_alignment_rate: float = 0.9,
    check_images: bool = True,
    today: dt.date | None = None,
) -> ValidationReport:
    """Validate figure records: schema, unique ids, non-empty brief descriptions, readable images,
    OCR coverage (share of figures with >= 1 OCR word), alignment rate (aligned / expected figures,
    skipped when None), document kinds (grant or application) and grant dates (ISO, 1976-01-01 ..
    today; an application's is its publication date). `duration_s` includes building the
    frame (opening every image); the first call in a process also pays the GX import."""
    started = time.perf_counter()
    frame = figures_frame(records, alignment_rate=alignment_rate, check_images=check_images)
    expectations = figure_expectations(
        with_alignment=alignment_rate is not None,
        min_ocr_coverage=min_ocr_coverage,
        min_alignment_rate=min_alignment_rate,
        today=today,
    )
    report = validate_frame(frame, expectations)
    report.duration_s = time.perf_counter() - started
    return report


def documents_frame(documents: Iterable[GrantDocument]) -> pd.DataFrame:
    """One row per grant of a text-only release: identity, date, kind and how much text it has."""
    import pandas as pd

    rows = [
        {
            "patent_id": doc.patent_id,
            "grant_date": doc.grant_date,
            "document_kind": doc.document_kind,
            "text_chars": len(document_text(doc)),
        }
        for doc in documents
    ]
    frame = pd.DataFrame(rows, columns=["patent_id", "grant_date", "document_kind", "text_chars"])
    parsed = [_parse_iso_date(value) for value in frame["grant_date"]]
    frame["grant_date_parsed"] = pd.to_datetime(pd.Series(parsed, dtype=object), errors="coerce")
    return frame


def validate_documents(
    documents: Iterable[GrantDocument], *, today: dt.date | None = None
) -> ValidationReport:
    """The suite of a text-only release (the weekly `ipg` product, no drawings): at least one
    grant, unique patent ids, text in every grant, known document kinds, grant dates in range."""

    _, gxe, _, _ = _gx()
    started = time.perf_counter()
    today = today or dt.date.today()
    expectations = [
        ("has_rows", gxe.ExpectTableRowCountToBeBetween(min_value=1)),
        ("unique_patent_ids", gxe.ExpectColumnValuesToBeUnique(column="patent_id")),
        ("patent_ids_present", gxe.ExpectColumnValuesToMatchRegex(column="patent_id", regex=r"\S")),
        ("non_empty_text", gxe.ExpectColumnValuesToBeBetween(column="text_chars", min_value=1)),
        *_kind_and_date_expectations(today),
    ]
    report = validate_frame(documents_frame(documents), expectations)
    report.duration_s = time.perf_counter() - started
    return report
