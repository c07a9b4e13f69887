"""Every release shape, built in tmp_path from the real files, and hostile archives."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from patent_assets.documents import PatentBundle
from patent_assets.records import Rejection
from patent_assets.sources import (
    ArchiveLimits,
    SourceSummary,
    iter_source,
    release_key,
)


@dataclass
class SourceResult:
    bundles: list[PatentBundle]
    rejections: list[Rejection]
    summary: SourceSummary


def read_source(path: Path, work_dir: Path, limits: ArchiveLimits | None = None) -> SourceResult:
    """`iter_source` collected into lists (the library streams; these releases are small)."""
    summary = SourceSummary()
    bundles: list[PatentBundle] = []
    rejections: list[Rejection] = []
    for item in iter_source(path, work_dir, limits or ArchiveLimits(), summary):
        (rejections if isinstance(item, Rejection) else bundles).append(item)
    return SourceResult(bundles, rejections, summary)


DESIGN_DIR = "design_patents_with_drawings_2021"
WEEK = "I20210105"


def _grant_dirs(realdata: Path) -> list[Path]:
    return sorted(p for p in (realdata / DESIGN_DIR).iterdir() if p.is_dir())


def _patent_zip_bytes(folder: Path, *, skip: str = "", lower_sheets: bool = False) -> bytes:
    """A per-patent ZIP as USPTO ships it: <DOC>/<DOC>.XML and <DOC>/<DOC>-D000nn.TIF."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            if skip and path.name.endswith(skip):
                continue
            name = path.name.lower() if lower_sheets and path.suffix == ".TIF" else path.name
            archive.write(path, f"{folder.name}/{name}")
    return buffer.getvalue()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _weekly_tar(path: Path, folders: list[Path], extra: dict[str, bytes] | None = None) -> Path:
    mode = "w:gz" if path.name.endswith(".gz") else "w"
    with tarfile.open(path, mode) as tar:
        for folder in folders:
            _add_bytes(tar, f"{WEEK}/UTIL0907/{folder.name}.ZIP", _patent_zip_bytes(folder))
        for name, data in (extra or {}).items():
            _add_bytes(tar, name, data)
    return path


def _leftovers(work_dir: Path) -> list[Path]:
    return [p for p in work_dir.rglob("*") if p.name.endswith(".tmp")] if work_dir.exists() else []


def _expected_sheet_count(realdata: Path) -> int:
    labels = json.loads((realdata / DESIGN_DIR / "sheet_figure_labels.json").read_text())
    return sum(len(p["sheets"]) for p in labels["patents"])


def _check_design_release(realdata: Path, result, work_dir: Path, in_place: bool) -> None:
    assert result.rejections == []
    assert len(result.bundles) == 16
    assert result.summary.grants == 16 and result.summary.documents == 16
    sheets = [(b, name, path) for b in result.bundles for name, path in b.sheet_files.items()]
    assert len(sheets) == _expected_sheet_count(realdata) == 102
    for bundle, name, path in sheets:
        original = next((realdata / DESIGN_DIR).glob(f"*/{name}"))
        if in_place:
            assert path == original
        else:
            assert path == work_dir / bundle.document.patent_id / name
            assert path.read_bytes() == original.read_bytes()
    assert _leftovers(work_dir) == []


@pytest.mark.parametrize("name", [f"{WEEK}.tar", f"{WEEK}.tar.gz"])
def test_weekly_tar_of_patent_zips(realdata: Path, tmp_path: Path, name: str) -> None:
    tar_path = _weekly_tar(tmp_path / name, _grant_dirs(realdata))
    work_dir = tmp_path / "work"
    result = read_source(tar_path, work_dir)
    _check_design_release(realdata, result, work_dir, in_place=False)
    assert release_key(tar_path) == "2021-01-05"
    # Run again on the same work_dir: same paths, overwritten atomically.
    again = read_source(tar_path, work_dir)
    assert [b.sheet_files for b in again.bundles] == [b.sheet_files for b in result.bundles]


def test_directory_source_points_at_files_in_place(realdata: Path, tmp_path: Path) -> None:
    work_dir = tmp_path / "work"
    result = read_source(realdata / DESIGN_DIR, work_dir)
    _check_design_release(realdata, result, work_dir, in_place=True)
    assert not work_dir.exists()  # nothing copied


def test_flat_directory(realdata: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for folder in _grant_dirs(realdata)[:3]:
        for path in folder.iterdir():
            shutil.copy(path, flat / path.name)
    result = read_source(flat, tmp_path / "work")
    assert len(result.bundles) == 3
    for bundle in result.bundles:
        assert set(bundle.sheet_files) == {s.file for s in bundle.document.sheets}
        assert all(path.parent == flat for path in bundle.sheet_files.values())


def test_single_patent_zip_sheets_in_subfolder_matched_case_insensitively(
    realdata: Path, tmp_path: Path
) -> None:

    folder = _grant_dirs(realdata)[0]
    zip_path = tmp_path / f"{folder.name}.ZIP"
    zip_path.write_bytes(_patent_zip_bytes(folder, lower_sheets=True, skip="-D00002.TIF"))
    summary = SourceSummary()
    items = list(iter_source(zip_path, tmp_path / "work", summary=summary))
    [bundle] = items
    document = bundle.document
    assert document.patent_id == "USD0907292S1"
    # Keys are the XML's names; the sheet the archive lacks is simply absent.
    expected = {s.file for s in document.sheets} - {f"{folder.name}-D00002.TIF"}
    assert set(bundle.sheet_files) == expected
    assert all(
        p.is_file() and p.parent == tmp_path / "work" / "USD0907292S1" for p in bundle.sheet_files.values()
    )
    assert summary.sheets_found == len(expected) and summary.rejected == 0


def test_text_only_ipg_zip_and_bare_xml(realdata: Path, tmp_path: Path) -> None:
    source = realdata / "uspto_xml" / "concatenated_weekly_ipg" / "ipg060103.small.xml"
    zip_path = tmp_path / "ipg060103.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(source, "ipg060103.xml")
    for path in (zip_path, source):
        result = read_source(path, tmp_path / "work")
        assert len(result.bundles) == 25
        assert result.rejections == []
        assert result.summary.documents == 27
        assert result.summary.skipped == {"sequence-cwu": 2}
        assert all(b.sheet_files == {} for b in result.bundles)
    assert release_key(zip_path) == "2006-01-03"


def test_bare_xml_with_truncated_last_document(realdata: Path, tmp_path: Path) -> None:
    path = realdata / "uspto_xml" / "design_grants_concatenated" / "ipg151229.sax2pats_test.xml"
    result = read_source(path, tmp_path / "work")
    assert len(result.bundles) == 146
    [rejection] = result.rejections
    assert rejection.stage == "xml" and "truncated" in rejection.reason
    assert rejection.item.startswith(f"{path.name}@")
    assert rejection.source == str(path)
    assert (result.summary.documents, result.summary.grants, result.summary.rejected) == (147, 146, 1)


def test_release_keys() -> None:
    assert release_key(Path("ipg210105.zip")) == "2021-01-05"
    assert release_key(Path("/x/I20210105.tar")) == "2021-01-05"
    assert release_key(Path("I20210105.tar.gz")) == "2021-01-05"
    assert release_key(Path("ipg060103.xml")) == "2006-01-03"
    assert release_key(Path("ipg219999.zip")) == "ipg219999"  # not a date: the stem
    assert release_key(Path("my_release.tar.gz")) == "my_release"


# --- hostile archives ----------------------------------------------------------------------


def _zip_with(folder: Path, extra: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO(_patent_zip_bytes(folder))
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as archive:
        for info, data in extra:
            archive.writestr(info, data)
    return buffer.getvalue()


def test_traversal_absolute_and_symlink_members_are_refused(realdata: Path, tmp_path: Path) -> None:
    folder = _grant_dirs(realdata)[0]
    link = zipfile.ZipInfo(f"{folder.name}/link-D00009.TIF")
    link.external_attr = 0o120777 << 16  # a symlink, pointing at /etc/passwd
    data = _zip_with(
        folder,
        [
            ("../evil.TIF", b"evil"),
            ("/abs/evil.TIF", b"evil"),
            ("..\\win.TIF", b"evil"),
            (link, b"/etc/passwd"),
        ],
    )
    zip_path = tmp_path / "patent.zip"
    zip_path.write_bytes(data)
    work_dir = tmp_path / "deep" / "work"
    result = read_source(zip_path, work_dir)
    reasons = {r.item.split("!", 1)[1]: r.reason for r in result.rejections}
    assert "path traversal" in reasons["../evil.TIF"]
    assert "path traversal" in reasons["..\\win.TIF"]
    assert "absolute" in reasons["/abs/evil.TIF"]
    assert "symlink" in reasons[f"{folder.name}/link-D00009.TIF"]
    assert all(r.stage == "source" for r in result.rejections)
    assert not list(tmp_path.rglob("evil*")) and not list(tmp_path.rglob("win*"))
    # The patent itself is still read, with all its sheets.
    [bundle] = result.bundles
    assert len(bundle.sheet_files) == len(bundle.document.sheets) == 9
    d1 = bundle.sheet_files[f"{folder.name}-D00001.TIF"]
    assert d1.read_bytes() == (folder / f"{folder.name}-D00001.TIF").read_bytes()


def test_link_members_in_tar_are_refused(realdata: Path, tmp_path: Path) -> None:
    tar_path = tmp_path / "I20210105.tar"
    with tarfile.open(tar_path, "w") as tar:
        _add_bytes(tar, f"{WEEK}/a.ZIP", _patent_zip_bytes(_grant_dirs(realdata)[0]))
        link = tarfile.TarInfo(f"{WEEK}/b.ZIP")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        _add_bytes(tar, f"../{WEEK}/c.ZIP", _patent_zip_bytes(_grant_dirs(realdata)[1]))
    result = read_source(tar_path, tmp_path / "work")
    assert len(result.bundles) == 1
    reasons = sorted(r.reason for r in result.rejections)
    assert "link member" in reasons[0] and "path traversal" in reasons[1]


def test_zip_bomb_member_is_refused_by_ratio(realdata: Path, tmp_path: Path) -> None:
    folder = _grant_dirs(realdata)[0]
    bomb = f"{folder.name}/{folder.name}-D00003.TIF"
    data = _patent_zip_bytes(folder, skip="-D00003.TIF")
    buffer = io.BytesIO(data)
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(bomb, b"\0" * (40 << 20))  # 40 MiB of zeros: ratio ~1000
    zip_path = tmp_path / "bomb.zip"
    zip_path.write_bytes(buffer.getvalue())
    result = read_source(zip_path, tmp_path / "work")
    [rejection] = result.rejections
    assert rejection.item.endswith(bomb) and "zip bomb" in rejection.reason
    [bundle] = result.bundles
    assert f"{folder.name}-D00003.TIF" not in bundle.sheet_files
    assert sum(p.stat().st_size for p in (tmp_path / "work").rglob("*")) < (5 << 20)


def test_zip_bomb_is_stopped_while_streaming(realdata: Path, tmp_path: Path) -> None:
    """The declared sizes look harmless; the decompressed bytes give the bomb away."""
    folder = _grant_dirs(realdata)[0]
    buffer = io.BytesIO(_patent_zip_bytes(folder, skip="-D00001.TIF"))
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{folder.name}/{folder.name}-D00001.TIF", b"\0" * (20 << 20))
    # Streaming limit below the member's real size, header checks disarmed by a huge ratio.
    limits = ArchiveLimits(max_member_bytes=30 << 20, max_ratio=1e9)
    zip_path = tmp_path / "p.zip"
    zip_path.write_bytes(buffer.getvalue())
    ok = read_source(zip_path, tmp_path / "ok", limits)
    assert ok.rejections == [] and len(ok.bundles[0].sheet_files) == 9

    # Now make the headers lie: claim the 20 MiB member is 5000 bytes.
    raw = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as archive:
        info = archive.getinfo(f"{folder.name}/{folder.name}-D00001.TIF")
    for signature, size_offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (start := raw.find(signature, start)) >= 0:
            if raw[start + size_offset : start + size_offset + 4] == info.file_size.to_bytes(4, "little"):
                raw[start + size_offset : start + size_offset + 4] = (5000).to_bytes(4, "little")
            start += 4
    tar_path = tmp_path / "I20210105.tar"
    with tarfile.open(tar_path, "w") as tar:
        _add_bytes(tar, f"{WEEK}/liar.ZIP", bytes(raw))
        _add_bytes(tar, f"{WEEK}/good.ZIP", _patent_zip_bytes(_grant_dirs(realdata)[1]))
    result = read_source(tar_path, tmp_path / "work", ArchiveLimits())
    [rejection] = result.rejections
    assert rejection.item == "USD0907292S1" and "sheet extraction failed" in rejection.reason
    assert "CRC" in rejection.reason  # the bytes did not match what the header promised
    assert [b.document.patent_id for b in result.bundles] == ["USD0909824S1"]
    # Nothing of the rejected patent, and nothing half-written, is left behind.
    assert not (tmp_path / "work" / "USD0907292S1").exists() or not any(
        (tmp_path / "work" / "USD0907292S1").iterdir()
    )
    assert _leftovers(tmp_path / "work") == []


def test_release_budget_stops_reading(realdata: Path, tmp_path: Path) -> None:
    tar_path = _weekly_tar(tmp_path / "I20210105.tar", _grant_dirs(realdata))
    work_dir = tmp_path / "work"
    result = read_source(tar_path, work_dir, ArchiveLimits(max_total_bytes=1 << 20))
    assert 0 < len(result.bundles) < 16
    assert "max_total_bytes" in result.rejections[-1].reason
    assert _leftovers(work_dir) == []
    for bundle in result.bundles:  # every yielded bundle is complete
        assert all(p.is_file() for p in bundle.sheet_files.values())


def test_nested_archives_deeper_than_the_limit(realdata: Path, tmp_path: Path) -> None:
    folders = _grant_dirs(realdata)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("deeper.zip", _patent_zip_bytes(folders[0]))
    tar_path = tmp_path / "I20210105.tar"
    with tarfile.open(tar_path, "w") as tar:
        _add_bytes(tar, f"{WEEK}/nest.ZIP", inner.getvalue())
        _add_bytes(tar, f"{WEEK}/ok.ZIP", _patent_zip_bytes(folders[1]))
    result = read_source(tar_path, tmp_path / "work")
    [rejection] = result.rejections
    assert rejection.item.endswith("nest.ZIP!deeper.zip") and "max_depth" in rejection.reason
    assert len(result.bundles) == 1
    # One level less deep is allowed: the same inner ZIP at the top of the source.
    (tmp_path / "nest.zip").write_bytes(inner.getvalue())
    assert len(read_source(tmp_path / "nest.zip", tmp_path / "work").bundles) == 1


def test_corrupt_zip_in_tar_rejects_that_patent_only(realdata: Path, tmp_path: Path) -> None:
    folders = _grant_dirs(realdata)
    truncated = _patent_zip_bytes(folders[0])[:5000]
    tar_path = _weekly_tar(
        tmp_path / "I20210105.tar.gz",
        folders[1:],
        extra={
            f"{WEEK}/UTIL0907/garbage.ZIP": b"not a zip at all" * 100,
            f"{WEEK}/UTIL0907/cut.ZIP": truncated,
        },
    )
    result = read_source(tar_path, tmp_path / "work")
    assert len(result.bundles) == 15
    assert sorted(r.item.rsplit("/", 1)[1] for r in result.rejections) == ["cut.ZIP", "garbage.ZIP"]
    assert all("corrupt" in r.reason and r.stage == "source" for r in result.rejections)
    assert result.summary.rejected == 2


def test_hostile_and_malformed_xml_in_a_release(realdata: Path, tmp_path: Path) -> None:
    folders = _grant_dirs(realdata)
    xml = (folders[0] / f"{folders[0].name}.XML").read_bytes()
    laughs = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    bomb_xml = xml.replace(b"[ ]>", f'[ <!ENTITY l0 "lol">{laughs} ]>'.encode()).replace(
        b"Shaving blade cartridge", b"&l9;"
    )
    broken_xml = xml[: len(xml) // 2]
    tar_path = tmp_path / "I20210105.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, document in (("bomb", bomb_xml), ("broken", broken_xml)):
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                archive.writestr(f"{name}/{name}.XML", document)
                archive.write(
                    folders[0] / f"{folders[0].name}-D00001.TIF", f"{name}/{folders[0].name}-D00001.TIF"
                )
            _add_bytes(tar, f"{WEEK}/{name}.ZIP", buffer.getvalue())
        _add_bytes(tar, f"{WEEK}/good.ZIP", _patent_zip_bytes(folders[1]))
    work_dir = tmp_path / "work"
    result = read_source(tar_path, work_dir)
    assert [b.document.patent_id for b in result.bundles] == ["USD0909824S1"]
    by_reason = {r.reason.split(":")[0]: r for r in result.rejections}
    assert len(result.rejections) == 2 and all(r.stage == "xml" for r in result.rejections)
    assert "the DOCTYPE declares entities" in by_reason
    assert "malformed or truncated XML" in by_reason
    assert {r.item for r in result.rejections} == {"D0907292"}  # read from the raw bytes
    assert not (work_dir / "USD0907292S1").exists()


def test_missing_and_unknown_sources(tmp_path: Path) -> None:
    items = list(iter_source(tmp_path / "nope.zip", tmp_path / "work"))
    assert len(items) == 1 and isinstance(items[0], Rejection)
    (tmp_path / "notes.txt").write_text("hello")
    [rejection] = list(iter_source(tmp_path / "notes.txt", tmp_path / "work"))
    assert "not a USPTO release shape" in rejection.reason
