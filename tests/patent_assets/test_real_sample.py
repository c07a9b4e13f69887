"""The real USPTO sample shipped with the code: the same bytes as ../shared/realdata, every file
in its provenance, and landed by `patentflow run` as a release that ingests as real grants."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from orchestration.runner import RunReport, fill_empty_landing
from patent_assets import pipeline, real_sample
from patent_assets.layout import Home
from patent_assets.records import read_figures, read_jsonl
from patent_assets.release_source import LandingDirectoryReleases

SHARED = "design_patents_with_drawings_2021"
SHARED_TEXT = "concatenated_weekly_ipg/ipg130416.small.xml"
WEEKLY_TEXT = "ipg_text_2013/ipg130416.small.xml"
NOT_USPTO = {"sheet_figure_labels.json", "sample_data.csv"}  # written by others: not shipped
SMALL_GRANTS = ("USD0910059-20210209", "USD0930094-20210907")  # 2 and 3 sheets: OCR in seconds


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _table_rows(markdown: str, first_cell: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("| ")]
    return {
        cells[0].strip(): [c.strip() for c in cells[1:]]
        for cells in rows
        if cells[0].strip().startswith(first_cell)
    }


def test_landed_weekly_text_is_a_text_only_release_that_validates(tmp_path: Path) -> None:
    """The ipg full text: 25 real grants for the language model; their sheets (named, never
    shipped) are not rejected as missing images, and the release passes its own suite."""
    from patent_assets.validation import validate_documents

    release = real_sample.land_text(tmp_path / "landing")
    documents = pipeline.parse_sources([release], tmp_path / "documents")
    assert documents.counts["grants"] == 25 and documents.counts["skipped_non_grants"] == 2
    sheets = pipeline.convert_sheets(tmp_path / "documents", tmp_path / "sheets")
    ocr = pipeline.ocr_sheets(tmp_path / "sheets", tmp_path / "ocr", tmp_path / "cache")
    figures = pipeline.build_figures(
        tmp_path / "documents", tmp_path / "sheets", tmp_path / "ocr", tmp_path / "figures"
    )
    assert not sheets.rejected and not ocr.rejected and not figures.rejected
    assert figures.counts["figures"] == 0 and figures.counts["text_only_grants"] == 25
    report = validate_documents(b.document for b in pipeline.read_bundles(tmp_path / "documents"))
    assert report.success, report.summary()
    # an empty document set does not pass
    assert not validate_documents([]).success


def test_sample_is_the_shared_uspto_files_byte_for_byte(realdata: Path) -> None:
    shipped = real_sample.files()
    shared = [f for f in real_sample.files(realdata / SHARED) if f.name not in NOT_USPTO]
    assert shipped == shared
    assert len({f.parent for f in shipped}) == 16
    assert sum(f.suffix == ".TIF" for f in shipped) == 102 and sum(f.suffix == ".XML" for f in shipped) == 16
    for relative in shipped:
        assert _sha256(real_sample.DESIGN_GRANTS_2021 / relative) == _sha256(realdata / SHARED / relative), (
            relative
        )
    shared_text = realdata / "uspto_xml" / SHARED_TEXT
    assert _sha256(real_sample.WEEKLY_TEXT_2013) == _sha256(shared_text)


def test_sha256sums_and_provenance_list_every_file(realdata: Path) -> None:
    expected = {
        f"design_grants_2021/{relative.as_posix()}": real_sample.DESIGN_GRANTS_2021 / relative
        for relative in real_sample.files()
    }
    expected[WEEKLY_TEXT] = real_sample.WEEKLY_TEXT_2013
    sums = dict(reversed(line.split("  ", 1)) for line in real_sample.SHA256SUMS.read_text().splitlines())
    assert sums.keys() == expected.keys()
    assert all(sums[name] == _sha256(path) for name, path in expected.items())
    provenance = real_sample.PROVENANCE.read_text()
    rows = _table_rows(provenance, "design_grants_2021/") | _table_rows(provenance, WEEKLY_TEXT)
    assert rows.keys() == expected.keys()
    for name, (size, sha_prefix, source_key, _source_path) in rows.items():
        assert int(size) == expected[name].stat().st_size and sums[name].startswith(sha_prefix), name
        assert source_key == ("pv" if name == WEEKLY_TEXT else "impact"), name
    # the rows are the shared provenance's own rows for these files, with the path as it is here
    shared_rows = (realdata / "PROVENANCE.md").read_text()
    shared = {
        name.replace(f"{SHARED}/", "design_grants_2021/", 1): cells
        for name, cells in _table_rows(shared_rows, f"{SHARED}/").items()
    }
    shared[WEEKLY_TEXT] = _table_rows(shared_rows, f"uspto_xml/{SHARED_TEXT}")[f"uspto_xml/{SHARED_TEXT}"]
    assert rows == {name: shared[name] for name in rows}
    assert "| pv | https://github.com/PatentsView/PatentsView-DB |" in provenance
    assert "public domain" in real_sample.PROVENANCE.read_text()
    assert (
        "| impact | https://github.com/hhshomee/designpatent_dataset |" in real_sample.PROVENANCE.read_text()
    )


def test_run_lands_the_sample_beside_the_synthetic_releases_once(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    written = fill_empty_landing(landing, synthetic_releases=1, patents_per_release=1, echo=lambda _: None)
    releases = LandingDirectoryReleases(landing).list_releases()
    assert [r.key for r in releases] == ["2013-04-16", "2024-01-02", real_sample.RELEASE_NAME]
    assert sorted(Path(r.location).name for r in releases) == sorted(p.name for p in written)
    with zipfile.ZipFile(releases[0].location) as archive:  # the weekly text, unchanged inside its zip
        assert archive.namelist() == ["ipg130416.small.xml"]
        assert archive.read("ipg130416.small.xml") == real_sample.WEEKLY_TEXT_2013.read_bytes()
    landed = Path(releases[2].location)
    assert real_sample.files(landed) == real_sample.files()
    assert all(
        (landed / f).read_bytes() == (real_sample.DESIGN_GRANTS_2021 / f).read_bytes()
        for f in real_sample.files()
    )
    assert not [p for p in landing.iterdir() if p.name.startswith(".")]  # no temporary copy left
    # a landing directory that already holds releases is left as it is
    assert fill_empty_landing(landing, synthetic_releases=1, patents_per_release=1, echo=lambda _: None) == []


def test_landed_sample_ingests_as_real_grants(tmp_path: Path, ocr_cache: Path) -> None:
    release = real_sample.land(tmp_path / "landing")
    assert LandingDirectoryReleases(tmp_path / "landing").list_releases()[0].key == real_sample.RELEASE_NAME
    # the release as `release_documents` parses it: every grant, none marked synthetic
    parsed = pipeline.parse_sources([release], tmp_path / "documents")
    documents = [row["document"] for row in read_jsonl(parsed.out_dir / pipeline.DOCUMENTS)]
    assert parsed.counts["grants"] == 16 and parsed.counts["sheets"] == 102 and not parsed.rejected
    assert {(d["document_kind"], d["synthetic"]) for d in documents} == {("grant", False)}
    # and two of its grants all the way to figure records (OCR of the whole sample takes a minute)
    summary = pipeline.ingest(
        [release / name for name in SMALL_GRANTS], tmp_path / "out", cache_dir=ocr_cache, workers=2
    )
    records = read_figures(tmp_path / "out" / pipeline.FIGURES)
    assert summary.figures == len(records) == 3  # every sheet but the front pages (D00000)
    assert {(r.patent_id, r.sheet) for r in records} == {
        ("USD0910059S1", "D00001"),
        ("USD0930094S1", "D00001"),
        ("USD0930094S1", "D00002"),
    }
    assert all(not r.synthetic and r.document_kind == "grant" for r in records)
    assert all(r.figure_labels and r.ocr.words and r.grant_date.startswith("2021") for r in records)


def test_summary_counts_applications_and_real_figures(tmp_path: Path) -> None:
    report = RunReport(Home(tmp_path))
    report.counts.update(grants=40, applications=2, figures=168, real_figures=86, synthetic_figures=82)
    report.dataset = {"figures": 168, "all": 168, "train": 120, "val": 20, "test": 28}
    report.dataset_real = {"figures": 86, "train": 60, "val": 12, "test": 14}
    text = report.render()
    assert "40 grants, 2 applications" in text
    assert "168 figures (86 real USPTO, 82 synthetic;" in text
    assert "168 figures (86 real); splits train 120 (60 real), val 20 (12 real), test 28 (14 real)" in text
