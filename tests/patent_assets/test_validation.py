from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path

import pytest
from PIL import Image

from patent_assets import validation
from patent_assets.records import FigureRecord, OcrWords
from patent_assets.validation import ValidationReport, figures_frame, image_readable, validate_figures


@pytest.fixture(scope="module")
def gx_ready() -> float:
    """Import great_expectations and build the context once for the module; returns the seconds it took."""
    started = time.perf_counter()
    validation._gx()
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    Image.new("1", (200, 300), 1).save(folder / "good.png")
    good = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "not_an_image.png").write_text("hello")
    return folder


def _record(image_dir: Path, n: int, **changes: object) -> FigureRecord:
    record = FigureRecord(
        image_id=f"US{11036660 + n}B2__1",
        patent_id=f"US{11036660 + n}B2",
        sheet="D00001",
        image_path=str(image_dir / "good.png"),
        figure_labels=["FIG. 1"],
        brief_description="FIG. 1 is a perspective view of a pump.",
        detailed_description="Referring to FIG. 1, a pump 10.",
        grant_date="2021-01-05",
        classifications=["CPC:F04D 1/00"],
        title="Pump",
        ocr=OcrWords(words=["FIG.", "1", "10"], boxes=[[1, 2, 3, 4]] * 3, width=200, height=300),
    )
    return dataclasses.replace(record, **changes)


def _good(image_dir: Path, count: int = 10) -> list[FigureRecord]:
    return [_record(image_dir, n) for n in range(count)]


def test_image_readable(image_dir: Path) -> None:
    assert image_readable(image_dir / "good.png")
    assert not image_readable(image_dir / "truncated.png")
    assert not image_readable(image_dir / "not_an_image.png")
    assert not image_readable(image_dir / "missing.png")


def test_figures_frame(image_dir: Path) -> None:
    records = _good(image_dir, 3)
    records[1] = dataclasses.replace(records[1], ocr=OcrWords(words=[" "]), grant_date="2021-13-40")
    frame = figures_frame(records, alignment_rate=0.95)
    assert list(frame["n_ocr_words"]) == [3, 0, 3]
    assert list(frame["has_ocr"]) == [True, False, True]
    assert frame["image_readable"].all()
    assert frame["grant_date_parsed"].isna().tolist() == [False, True, False]
    assert (frame["alignment_rate"] == 0.95).all()
    assert str(frame["n_ocr_words"].dtype) == "int64" and str(frame["has_ocr"].dtype) == "bool"


def test_good_set_passes(image_dir: Path, gx_ready: float) -> None:
    report = validate_figures(_good(image_dir), alignment_rate=0.95)
    assert isinstance(report, ValidationReport)
    assert report.success, report.failing
    names = {o.name for o in report.results}
    assert {
        "unique_image_ids",
        "non_empty_brief_descriptions",
        "readable_images",
        "ocr_coverage",
        "alignment_rate",
        "grant_dates_in_range",
        "grant_dates_iso",
        "schema:type:grant_date",
        "document_kinds_known",
    } <= names
    summary = report.summary()
    assert summary["success"] is True and summary["failed"] == 0 and summary["failing"] == ""
    assert summary["rows"] == 10 and summary["ocr_coverage"] == 1.0 and summary["alignment_rate"] == 0.95
    assert all(isinstance(v, str | int | float | bool) for v in summary.values())
    # Measured: after the one-off import, validating 10 figures takes well under a second.
    assert report.duration_s < 5, report.duration_s


def _bad(image_dir: Path, case: str) -> tuple[list[FigureRecord], float | None]:
    records = _good(image_dir)
    if case == "duplicate_id":
        records[3] = dataclasses.replace(records[3], image_id=records[2].image_id)
    elif case == "empty_description":
        records[4] = dataclasses.replace(records[4], brief_description="  ")
    elif case == "unreadable_image":
        records[5] = dataclasses.replace(records[5], image_path=str(image_dir / "truncated.png"))
    elif case == "future_date":
        records[6] = dataclasses.replace(records[6], grant_date="2999-01-01")
    elif case == "old_date":
        records[6] = dataclasses.replace(records[6], grant_date="1975-12-30")
    elif case == "not_iso_date":
        records[7] = dataclasses.replace(records[7], grant_date="01/05/2021")
    elif case == "low_ocr_coverage":
        for n in range(3):
            records[n] = dataclasses.replace(records[n], ocr=OcrWords())
    elif case == "unknown_kind":
        records[9] = dataclasses.replace(records[9], document_kind="reissue")
    elif case == "wrong_type":
        records[8] = dataclasses.replace(records[8], sheet=1)  # type: ignore[arg-type]
    return records, (0.5 if case == "low_alignment" else 0.95)


@pytest.mark.parametrize(
    ("case", "failing"),
    [
        ("duplicate_id", {"unique_image_ids"}),
        ("empty_description", {"non_empty_brief_descriptions"}),
        ("unreadable_image", {"readable_images"}),
        ("future_date", {"grant_dates_in_range"}),
        ("old_date", {"grant_dates_in_range"}),
        ("not_iso_date", {"grant_dates_iso", "grant_dates_valid"}),
        ("low_ocr_coverage", {"ocr_coverage"}),
        ("low_alignment", {"alignment_rate"}),
        ("wrong_type", {"schema:type:sheet"}),
        ("unknown_kind", {"document_kinds_known"}),
    ],
)
def test_each_bad_case_fails_its_expectation(
    image_dir: Path, gx_ready: float, case: str, failing: set[str]
) -> None:
    records, alignment = _bad(image_dir, case)
    report = validate_figures(records, alignment_rate=alignment, today=dt.date(2026, 1, 1))
    assert not report.success
    assert set(report.failing) == failing
    assert report.summary()["failing"] == ", ".join(report.failing)


def test_published_applications_pass_with_their_publication_date(image_dir: Path, gx_ready: float) -> None:
    records = [
        *_good(image_dir, 3),
        _record(
            image_dir,
            7,
            patent_id="US20250204297A1",
            image_id="US20250204297A1__1",
            document_kind="application",
            grant_date="2025-06-26",  # its publication date
        ),
    ]
    report = validate_figures(records, alignment_rate=1.0, today=dt.date(2026, 1, 1))
    assert report.success, report.failing
    assert figures_frame(records, check_images=False)["document_kind"].tolist() == ["grant"] * 3 + [
        "application"
    ]


def test_records_written_before_document_kind_read_as_grants(image_dir: Path) -> None:
    old = dataclasses.asdict(_record(image_dir, 1))
    del old["document_kind"]
    assert FigureRecord.from_dict(old).document_kind == "grant"


def test_failures_name_the_offending_values(image_dir: Path, gx_ready: float) -> None:
    records, _ = _bad(image_dir, "duplicate_id")
    outcome = validate_figures(records, alignment_rate=None).outcome("unique_image_ids")
    assert outcome.observed == 2 and outcome.details["unexpected_examples"] == [records[2].image_id] * 2
    records, _ = _bad(image_dir, "low_ocr_coverage")
    coverage = validate_figures(records, alignment_rate=None).outcome("ocr_coverage")
    assert coverage.observed == pytest.approx(0.7)
    with pytest.raises(KeyError, match="alignment_rate"):
        validate_figures(records, alignment_rate=None).outcome("alignment_rate")  # skipped when None


def test_thresholds_and_empty_input(image_dir: Path, gx_ready: float) -> None:
    records, _ = _bad(image_dir, "low_ocr_coverage")
    assert validate_figures(records, alignment_rate=None, min_ocr_coverage=0.6).success
    empty = validate_figures([], alignment_rate=None)
    assert not empty.success and "has_rows" in empty.failing


def test_context_is_reused(image_dir: Path, gx_ready: float) -> None:
    """Repeated validations reuse one context and leave no suites or definitions behind."""
    for _ in range(3):
        validate_figures(_good(image_dir, 3), alignment_rate=None)
    _, _, context, _ = validation._gx()
    assert context.suites.all() == []
    assert list(context.validation_definitions.all()) == []
