"""`patentflow ingest`: real data in, figures.jsonl and rejected.jsonl out; bad items are
rejected with their reason while the rest of the release goes on, and nothing is half-written."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from patent_assets import pipeline, synthetic
from patent_assets.records import FigureRecord, read_figure_rows, read_figures, read_rejections
from patentflow.cli import app
from tests.conftest import ALIGNMENT_SCORER
from tests.http_server import Fault, serve

SCORER = ALIGNMENT_SCORER


def _ingest(*args: str) -> None:
    result = CliRunner().invoke(app, ["ingest", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _no_partial_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".tmp", ".part")) or p.name.startswith(".tmp")]


def test_real_design_grants_land_on_the_right_sheets(
    realdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = realdata / "design_patents_with_drawings_2021" / "sheet_figure_labels.json"
    monkeypatch.chdir(tmp_path)  # a relative --out: the records must not depend on the working directory
    _ingest(str(realdata / "design_patents_with_drawings_2021"), "--out", "out")
    records = read_figures(tmp_path / "out" / "figures.jsonl")
    rows, _ = read_figure_rows(tmp_path / "out" / "figures.jsonl", "test")
    monkeypatch.chdir(realdata)
    assert len(rows) == len(records) and all(Path(row["image_path"]).is_file() for row in rows)
    assert len({r.patent_id for r in records}) == 16
    # our own count: every printed label on the sheet the answer key names
    truth = {
        (p["publication"], s["sheet"]): set(s.get("figures_on_sheet") or [])
        for p in json.loads(labels.read_text())["patents"]
        for s in p["sheets"]
    }
    found = {(r.patent_id, r.sheet): {lab.removeprefix("FIG. ") for lab in r.figure_labels} for r in records}
    total = sum(len(v) for v in truth.values())
    hit = sum(len(v & found.get(k, set())) for k, v in truth.items())
    assert total == 93 and hit / total >= 0.95, (hit, total)
    # and the shared scorer agrees, read exactly as users will read our output
    scored = subprocess.run(
        [sys.executable, str(SCORER), str(labels), str(tmp_path / "out" / "figures.jsonl"), "0.95"],
        capture_output=True,
        text=True,
    )
    assert scored.returncode == 0, scored.stdout
    record = next(r for r in records if r.figure_labels == ["FIG. 1"])
    assert (
        record.brief_description.startswith("FIG. 1 is")
        and record.ocr.words
        and record.grant_date.startswith("2021")
    )
    assert all(0 <= v <= 1000 for r in records for box in r.ocr.boxes for v in box)


APPLICATIONS = "applications_with_drawings_2025"


@pytest.fixture(scope="module")
def applications(
    realdata: Path, tmp_path_factory: pytest.TempPathFactory, ocr_cache: Path
) -> tuple[Path, pipeline.IngestSummary]:
    """The two real published applications (24 sheets), ingested once for the module."""
    out = tmp_path_factory.mktemp("applications") / "out"
    summary = pipeline.ingest([realdata / APPLICATIONS], out, cache_dir=ocr_cache, workers=2)
    return out, summary


def test_published_applications_are_ingested_with_their_publication_date(
    applications: tuple[Path, pipeline.IngestSummary],
) -> None:
    out, summary = applications
    documents = summary.steps["documents"].counts
    assert (documents["applications"], documents["grants"], documents["skipped_non_grants"]) == (2, 0, 0)
    assert summary.rejected == []
    records = read_figures(out / "figures.jsonl")
    published = {"US20250204297A1": "2025-06-26", "US20250250937A1": "2025-08-07"}
    assert {r.patent_id for r in records} == set(published)
    assert all(r.document_kind == "application" for r in records)
    # The date the prior-art filter reads is the publication date.
    assert all(r.grant_date == published[r.patent_id] for r in records)
    # The detailed description (marked <?detailed-description?> in these files) is read: 19 of the
    # 22 sheets have paragraphs that refer to their figures.
    assert sum(1 for r in records if r.detailed_description) >= 0.8 * len(records)


def test_applications_labels_land_on_their_sheets_and_none_is_invented(
    realdata: Path, applications: tuple[Path, pipeline.IngestSummary]
) -> None:
    out, _ = applications
    labels = realdata / APPLICATIONS / "sheet_figure_labels.json"
    truth = {
        (p["publication"], s["sheet"]): set(s["figures_on_sheet"])
        for p in json.loads(labels.read_text())["patents"]
        for s in p["sheets"]
    }
    found = {
        (r.patent_id, r.sheet): {lab.removeprefix("FIG. ") for lab in r.figure_labels}
        for r in read_figures(out / "figures.jsonl")
    }
    total = sum(len(v) for v in truth.values())
    hit = sum(len(v & found.get(k, set())) for k, v in truth.items())
    invented = sum(len(v - truth.get(k, set())) for k, v in found.items())
    assert total == 27 and hit / total >= 0.97 and invented == 0, (hit, total, invented)
    scored = subprocess.run(
        [sys.executable, str(SCORER), str(labels), str(out / "figures.jsonl"), "0.97"],
        capture_output=True,
        text=True,
    )
    assert scored.returncode == 0 and "extra=0" in scored.stdout, scored.stdout


def test_records_without_document_kind_still_read(tmp_path: Path) -> None:
    row = {
        "image_id": "USD0907292S1__1",
        "patent_id": "USD0907292S1",
        "sheet": "D00001",
        "image_path": "x.png",
        "figure_labels": ["FIG. 1"],
        "brief_description": "FIG. 1 is a view.",
        "detailed_description": "",
        "grant_date": "2021-01-05",
        "classifications": [],
        "title": "Thing",
        "ocr": {},
    }
    (tmp_path / "figures.jsonl").write_text(json.dumps(row) + "\n")
    [record] = read_figures(tmp_path / "figures.jsonl")
    assert isinstance(record, FigureRecord) and record.document_kind == "grant"


def test_inputs_hash_keeps_its_scheme(tmp_path: Path) -> None:
    """The step cache keys on disk stay valid: the step version, then each file's name and bytes."""
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "dir" / "one.txt").write_bytes(b"a" * 10)
    (tmp_path / "dir" / "sub" / "big.bin").write_bytes(b"x" * (2 * 1024 * 1024 + 17))  # spans chunks
    (tmp_path / "solo.xml").write_bytes(b"solo")
    expected = hashlib.sha256(pipeline.STEP_VERSION.encode())
    for name, data in (
        ("one.txt", b"a" * 10),
        ("big.bin", b"x" * (2 * 1024 * 1024 + 17)),
        ("solo.xml", b"solo"),
    ):
        expected.update(name.encode() + data)
    assert pipeline.inputs_hash(tmp_path / "dir", tmp_path / "solo.xml") == expected.hexdigest()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _tiff(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", size, 1).save(buffer, format="TIFF", compression="group4")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def release_with_bad_items(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A real-shaped weekly tar: good synthetic patents plus one bad item of each kind."""
    work = tmp_path_factory.mktemp("bad-release")
    [good_tar] = synthetic.generate(
        synthetic.SyntheticConfig(releases=1, patents_per_release=6, seed=3), work / "src"
    )
    with tarfile.open(good_tar) as tar:
        zips = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    names = sorted(zips)
    folder = names[0].rsplit("/", 2)[0]

    def patent(index: int) -> dict[str, bytes]:
        with zipfile.ZipFile(io.BytesIO(zips[names[index]])) as archive:
            return {n: archive.read(n) for n in archive.namelist()}

    bad: dict[str, bytes] = {}
    members = patent(0)  # malformed XML
    xml = next(n for n in members if n.endswith(".XML"))
    members[xml] = members[xml][: len(members[xml]) // 2]
    bad[names[0]] = _zip_bytes(members)
    members = patent(1)  # a corrupt (truncated) TIFF: that sheet rejected, the patent kept
    tif = sorted(n for n in members if n.endswith(".TIF"))[0]
    members[tif] = members[tif][:40]
    bad[names[1]] = _zip_bytes(members)
    members = patent(2)  # a missing image
    members.pop(sorted(n for n in members if n.endswith(".TIF"))[-1])
    bad[names[2]] = _zip_bytes(members)
    members = patent(3)  # a decompression bomb: a tiny file that decodes to 64 M pixels
    members[sorted(n for n in members if n.endswith(".TIF"))[0]] = _tiff((8000, 8000))
    bad[names[3]] = _zip_bytes(members)
    bad[f"{folder}/UTIL9999/US99999999-20240102.ZIP"] = _zip_bytes({"../../evil.XML": b"<x/>"})  # traversal
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE us-patent-grant [<!ENTITY a "aaaaaaaaaa">'
        + b"".join(
            f'<!ENTITY a{i} "{"&a;" * 10 if i == 0 else f"&a{i - 1};" * 10}">'.encode() for i in range(8)
        )
        + b"]><us-patent-grant>&a7;</us-patent-grant>"
    )
    bad[f"{folder}/UTIL9998/US99999998-20240102.ZIP"] = _zip_bytes(
        {"US99999998-20240102/US99999998-20240102.XML": bomb}
    )
    release = work / "I20240102.tar"
    with tarfile.open(release, "w") as tar:
        for name in sorted(zips | bad):
            data = (zips | bad)[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return release, names


def test_each_bad_item_is_rejected_with_its_reason_and_the_rest_goes_on(
    release_with_bad_items, tmp_path: Path
) -> None:
    release, names = release_with_bad_items
    out = tmp_path / "out"
    _ingest(str(release), "--out", str(out))
    rejected = read_rejections(out / "rejected.jsonl")
    reasons = " | ".join(f"{r.item}: {r.reason}" for r in rejected)
    patents = [Path(n).stem.split("-")[0] for n in names]
    for needle in (
        "US99999999",
        "US99999998",
        "missing image",
        "over the limit",
        "path traversal",
        "entities",
    ):
        assert needle.lower() in reasons.lower(), f"{needle} not among: {reasons}"
    # malformed XML, named by its document number
    assert any(
        patents[0].removeprefix("US") in r.item and "malformed" in r.reason
        for r in rejected
        if r.stage == "xml"
    )
    assert any(patents[1] in r.item and r.stage == "image" for r in rejected)  # the truncated TIFF
    records = read_figures(out / "figures.jsonl")
    kept = {r.patent_id for r in records}
    assert all(any(p in pid for pid in kept) for p in patents[4:]), "the good patents still make figures"
    assert any(patents[1] in pid for pid in kept), "a patent with one corrupt sheet keeps its other sheets"
    assert not any(patents[0] in pid for pid in kept)
    assert not _no_partial_files(out)
    assert not (tmp_path / "evil.XML").exists() and not (out.parent / "evil.XML").exists()


def test_patentdesc_json_with_downloads(tmp_path: Path) -> None:
    png = io.BytesIO()
    Image.new("L", (400, 300), 255).save(png, format="PNG")
    good = png.getvalue()
    with serve() as server:
        ok = server.add("/img/ok.png", good, content_type="image/png")
        flaky = server.add("/img/flaky.png", good, content_type="image/png", faults=[Fault(status=500)])
        short = server.add("/img/short.png", good, content_type="image/png", faults=[Fault(truncate_to=100)])
        missing = server.add("/img/missing.png", good, faults=[Fault(status=404)])
        corrupt = server.add("/img/corrupt.png", good[:50], content_type="image/png")
        data = {
            "US11036663B2__2": {
                "image_url": ok,
                "brief_description": "FIG. 2 is a view.",
                "detailed_description": "A " * 900,
            },
            "US11036663B2__3": {
                "image_url": flaky,
                "brief_description": "FIG. 3.",
                "detailed_description": "d",
            },
            "US11036664B2__1": {
                "image_url": short,
                "brief_description": "FIG. 1.",
                "detailed_description": "d",
            },
            "US11036665B2__1": {
                "image_url": missing,
                "brief_description": "FIG. 1.",
                "detailed_description": "d",
            },
            "US11036666B2__1": {
                "image_url": corrupt,
                "brief_description": "FIG. 1.",
                "detailed_description": "d",
            },
            "US11036667B2__1": {
                "image_url": "file:///etc/passwd",
                "brief_description": "x",
                "detailed_description": "d",
            },
            "../etc/US1__1": {"image_url": ok, "brief_description": "x", "detailed_description": "d"},
            "US11036668B2__1": {
                "image_url": ok,
                "brief_description": "x",
                "detailed_description": "d",
                "sha256": hashlib.sha256(b"something else").hexdigest(),
            },
        }
        source = tmp_path / "patentdesc.json"
        source.write_text(json.dumps(data))
        out = tmp_path / "out"
        _ingest(str(source), "--out", str(out))
    records = {r.image_id: r for r in read_figures(out / "figures.jsonl")}
    assert set(records) == {"US11036663B2__2", "US11036663B2__3", "US11036664B2__1"}
    assert len(records["US11036663B2__2"].detailed_description.split()) == 500  # clipped like PatentDesc
    rejected = {r.item: r.reason for r in read_rejections(out / "rejected.jsonl")}
    assert "404" in rejected["US11036665B2__1"]
    assert "US11036666B2__1" in rejected  # unreadable image
    assert "US11036667B2__1" in rejected and "../etc/US1__1" in rejected
    assert "checksum" in rejected["US11036668B2__1"]
    assert not _no_partial_files(out)
