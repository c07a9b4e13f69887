"""Read every real shape of a USPTO grant release into `PatentBundle`s, safely.

Shapes:
1. the weekly "with embedded images" product: a tar (or .tar.gz) of per-patent ZIPs laid out
   like `I20210105/UTIL0907/USD0907292-20210105.ZIP`, each holding the grant XML and its
   `-D000nn.TIF` sheets (possibly in a subfolder);
2. one per-patent ZIP;
3. the text-only weekly `ipgYYMMDD.zip` (one concatenated XML inside), or that XML bare;
4. a directory of XML + TIF (one folder per grant, or flat): files are used in place.

Archives are hostile until proven otherwise: members with absolute or `..` paths and links
are rejected and never extracted; sizes and compression ratios are checked on the bytes
actually decompressed (headers can lie); nesting depth is bounded; a corrupt per-patent ZIP
rejects that patent only. Extracted sheets land atomically under
`work_dir/<patent_id>/<file>`.
"""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path, PurePosixPath
from typing import IO

from patent_assets.documents import GrantDocument, PatentBundle
from patent_assets.records import Rejection, atomic_write
from patent_assets.uspto_xml import ParseReport, iter_documents_from_lines, iter_parsed

GiB = 1 << 30
MiB = 1 << 20
_CHUNK = 1 << 20
_XML_SUFFIXES = {".xml"}
_SHEET_SUFFIXES = {".tif", ".tiff"}
_ZIP_SUFFIXES = {".zip"}
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds that keep a hostile archive from filling the disk or memory.

    The defaults admit real releases: a weekly ipg XML is about 1 GB uncompressed and
    compresses about 10x; TIFF G4 sheets barely compress.
    """

    max_total_bytes: int = 128 * GiB  # everything decompressed from one release
    max_member_bytes: int = 4 * GiB  # one member
    max_ratio: float = 200.0  # uncompressed / compressed, per member
    ratio_floor_bytes: int = 1 * MiB  # tiny members compress oddly: ratio checked above this
    max_depth: int = 2  # archive nesting: tar (1) of per-patent ZIPs (2)


class ArchiveError(Exception):
    """One archive or member is unsafe or unreadable: reject it, go on with the rest."""


class BudgetExceeded(ArchiveError):
    """The whole release decompresses to more than allowed: stop reading it."""


@dataclass
class SourceSummary:
    """Counts for one source, filled while `iter_source` runs."""

    source: str = ""
    documents: int = 0  # XML documents seen, of any type
    grants: int = 0  # bundles yielded
    skipped: Counter[str] = field(default_factory=Counter)  # non-grant documents by type
    rejected: int = 0  # rejections yielded (documents, archives, members)
    sheets_found: int = 0  # sheet files mapped in bundles
    ignored_members: int = 0  # archive members that are neither XML, sheet nor archive
    bytes_decompressed: int = 0  # bytes read out of every archive layer (nested ones count twice)

    def add_report(self, report: ParseReport) -> None:
        self.documents += report.documents
        self.skipped.update(report.skipped)


class _Budget:
    def __init__(self, limits: ArchiveLimits, summary: SourceSummary) -> None:
        self.limits = limits
        self.summary = summary

    def consume(self, count: int) -> None:
        self.summary.bytes_decompressed += count
        if self.summary.bytes_decompressed > self.limits.max_total_bytes:
            raise BudgetExceeded(
                f"release decompresses to more than max_total_bytes={self.limits.max_total_bytes}"
            )


class _LimitedReader(io.RawIOBase):
    """Counts the bytes actually decompressed from a member and stops at the limits."""

    def __init__(
        self, raw: IO[bytes], name: str, compressed_size: int, limits: ArchiveLimits, budget: _Budget
    ) -> None:
        self.raw = raw
        self.name = name
        self.compressed_size = compressed_size
        self.limits = limits
        self.budget = budget
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.raw.read(len(buffer))
        size = len(data)
        buffer[:size] = data
        self.count += size
        if self.count > self.limits.max_member_bytes:
            raise ArchiveError(
                f"{self.name}: decompresses to more than max_member_bytes={self.limits.max_member_bytes}"
            )
        if (
            self.compressed_size > 0
            and self.count > self.limits.ratio_floor_bytes
            and self.count / self.compressed_size > self.limits.max_ratio
        ):
            raise ArchiveError(
                f"{self.name}: compression ratio above max_ratio={self.limits.max_ratio:g} "
                f"({self.count} bytes from {self.compressed_size}): possible zip bomb"
            )
        self.budget.consume(size)
        return size


def _copy(reader: _LimitedReader, sink: IO[bytes]) -> None:
    while chunk := reader.read(_CHUNK):
        sink.write(chunk)


def release_key(path: Path) -> str:
    """A stable release key from a USPTO file name: ipg210105.zip / I20210105.tar -> 2021-01-05."""
    name = Path(path).name
    stem = name
    for suffix in (*_TAR_SUFFIXES, ".zip", ".xml"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    patterns = (
        (r"i?pg(\d{2})(\d{2})(\d{2})", lambda m: (2000 + int(m[1]), int(m[2]), int(m[3]))),
        (r"I(\d{4})(\d{2})(\d{2})", lambda m: (int(m[1]), int(m[2]), int(m[3]))),
    )
    for pattern, to_ymd in patterns:
        match = re.fullmatch(pattern, stem, flags=re.IGNORECASE)
        if match:
            try:
                return date(*to_ymd(match)).isoformat()
            except ValueError:
                break
    return stem


def _is_tar_name(name: str) -> bool:
    return name.lower().endswith(_TAR_SUFFIXES)


def _suffix(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).suffix.lower()


def _unsafe_name_reason(name: str) -> str | None:
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised):
        return f"absolute member path {name!r} refused"
    if ".." in PurePosixPath(normalised).parts:
        return f"path traversal in member name {name!r} refused"
    if "\x00" in name:
        return f"NUL byte in member name {name!r} refused"
    return None


def _zip_member_reason(info: zipfile.ZipInfo, limits: ArchiveLimits) -> str | None:
    """Why a ZIP member must not be used, from its header (the stream is checked again)."""
    reason = _unsafe_name_reason(info.filename)
    if reason:
        return reason
    if stat.S_ISLNK(info.external_attr >> 16):
        return f"symlink member {info.filename!r} refused"
    if info.flag_bits & 0x1:
        return f"encrypted member {info.filename!r} refused"
    if info.file_size > limits.max_member_bytes:
        return f"member {info.filename!r} declares {info.file_size} bytes, above max_member_bytes"
    if (
        info.file_size > limits.ratio_floor_bytes
        and info.file_size / max(info.compress_size, 1) > limits.max_ratio
    ):
        return f"member {info.filename!r} declares a compression ratio above {limits.max_ratio:g}: possible zip bomb"
    return None


@dataclass
class _Context:
    source: str
    work_dir: Path
    limits: ArchiveLimits
    summary: SourceSummary
    budget: _Budget

    def reject(self, item: str, reason: str, stage: str = "source") -> Rejection:
        self.summary.rejected += 1
        return Rejection(item=item, reason=reason, stage=stage, source=self.source)


def _parsed_documents(
    documents: Iterable[tuple[int, bytes]], label: str, ctx: _Context
) -> Iterator[GrantDocument | Rejection]:
    report = ParseReport(source=label)
    try:
        for parsed in iter_parsed(documents, label, report):
            if isinstance(parsed, Rejection):
                ctx.summary.rejected += 1
                parsed.source = ctx.source
            yield parsed
    finally:
        ctx.summary.add_report(report)


def _bundle(document: GrantDocument, sheet_files: dict[str, Path], ctx: _Context) -> PatentBundle:
    ctx.summary.grants += 1
    ctx.summary.sheets_found += len(sheet_files)
    return PatentBundle(document=document, sheet_files=sheet_files)


# --- ZIP archives: per-patent ZIPs and ipg text ZIPs ------------------------------------


def _iter_zip(
    archive: zipfile.ZipFile, label: str, depth: int, ctx: _Context
) -> Iterator[PatentBundle | Rejection]:
    xml_members: list[zipfile.ZipInfo] = []
    sheet_members: dict[str, zipfile.ZipInfo] = {}
    nested: list[zipfile.ZipInfo] = []
    for info in archive.infolist():
        if info.is_dir():
            continue
        reason = _zip_member_reason(info, ctx.limits)
        if reason:
            yield ctx.reject(f"{label}!{info.filename}", reason)
            continue
        suffix = _suffix(info.filename)
        if suffix in _XML_SUFFIXES:
            xml_members.append(info)
        elif suffix in _SHEET_SUFFIXES:
            sheet_members[PurePosixPath(info.filename.replace("\\", "/")).name.lower()] = info
        elif suffix in _ZIP_SUFFIXES or _is_tar_name(info.filename):
            nested.append(info)
        else:
            ctx.summary.ignored_members += 1

    for info in xml_members:
        member_label = f"{label}!{info.filename}"
        with archive.open(info) as raw:
            reader = _LimitedReader(raw, member_label, info.compress_size, ctx.limits, ctx.budget)
            documents = iter_documents_from_lines(io.BufferedReader(reader, _CHUNK))
            for parsed in _parsed_documents(documents, member_label, ctx):
                if isinstance(parsed, Rejection):
                    yield parsed
                else:
                    yield from _extract_sheets(archive, parsed, sheet_members, ctx)

    for info in nested:
        member_label = f"{label}!{info.filename}"
        if depth + 1 > ctx.limits.max_depth:
            yield ctx.reject(
                member_label, f"nested archive deeper than max_depth={ctx.limits.max_depth} refused"
            )
            continue
        buffer = io.BytesIO()
        with archive.open(info) as raw:
            _copy(_LimitedReader(raw, member_label, info.compress_size, ctx.limits, ctx.budget), buffer)
        yield from _iter_archive_bytes(buffer, info.filename, member_label, depth + 1, ctx)


def _extract_sheets(
    archive: zipfile.ZipFile,
    document: GrantDocument,
    sheet_members: dict[str, zipfile.ZipInfo],
    ctx: _Context,
) -> Iterator[PatentBundle | Rejection]:
    """Extract the sheets the XML names (atomically); on any failure, drop this patent's files."""
    sheet_files: dict[str, Path] = {}
    try:
        for sheet in document.sheets:
            info = sheet_members.get(PurePosixPath(sheet.file.replace("\\", "/")).name.lower())
            if info is None or sheet.file in sheet_files:
                continue
            target = ctx.work_dir / document.patent_id / PurePosixPath(info.filename.replace("\\", "/")).name
            with archive.open(info) as raw, atomic_write(target, "wb") as sink:
                _copy(_LimitedReader(raw, info.filename, info.compress_size, ctx.limits, ctx.budget), sink)
            sheet_files[sheet.file] = target
    except BudgetExceeded:
        _remove(sheet_files.values())
        raise
    except (ArchiveError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        _remove(sheet_files.values())
        yield ctx.reject(document.patent_id, f"sheet extraction failed: {exc}")
        return
    yield _bundle(document, sheet_files, ctx)


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _iter_archive_bytes(
    buffer: IO[bytes], name: str, label: str, depth: int, ctx: _Context
) -> Iterator[PatentBundle | Rejection]:
    """An archive read from inside another: a corrupt one rejects itself only."""
    try:
        if _suffix(name) in _ZIP_SUFFIXES:
            with zipfile.ZipFile(buffer) as archive:
                yield from _iter_zip(archive, label, depth, ctx)
        else:
            with tarfile.open(fileobj=buffer, mode="r:*") as tar:
                yield from _iter_tar(tar, label, depth, ctx)
    except BudgetExceeded:
        raise
    except (ArchiveError, zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        yield ctx.reject(label, f"corrupt or unsafe archive: {type(exc).__name__}: {exc}")


# --- tar archives: the weekly product with embedded images ------------------------------


def _iter_tar(
    tar: tarfile.TarFile, label: str, depth: int, ctx: _Context
) -> Iterator[PatentBundle | Rejection]:
    for member in tar:  # sequential: works on a compressed stream too
        member_label = f"{label}!{member.name}"
        if member.isdir():
            continue
        if member.issym() or member.islnk():
            yield ctx.reject(member_label, f"link member {member.name!r} -> {member.linkname!r} refused")
            continue
        reason = _unsafe_name_reason(member.name)
        if reason:
            yield ctx.reject(member_label, reason)
            continue
        if not member.isfile():
            ctx.summary.ignored_members += 1
            continue
        if _suffix(member.name) not in _ZIP_SUFFIXES and not _is_tar_name(member.name):
            # Skipping a member of a compressed tar still decompresses it: it counts.
            ctx.budget.consume(member.size)
            ctx.summary.ignored_members += 1
            continue
        if depth + 1 > ctx.limits.max_depth:
            yield ctx.reject(
                member_label, f"nested archive deeper than max_depth={ctx.limits.max_depth} refused"
            )
            continue
        if member.size > ctx.limits.max_member_bytes:
            yield ctx.reject(member_label, f"member of {member.size} bytes, above max_member_bytes")
            continue
        handle = tar.extractfile(member)
        if handle is None:
            ctx.summary.ignored_members += 1
            continue
        buffer = io.BytesIO()
        # A tar stores members uncompressed: no ratio to check at this level.
        _copy(_LimitedReader(handle, member_label, 0, ctx.limits, ctx.budget), buffer)
        yield from _iter_archive_bytes(buffer, member.name, member_label, depth + 1, ctx)


# --- bare XML and directories -------------------------------------------------------------


def _iter_xml_file(
    path: Path, label: str, sheets_here: dict[str, Path], ctx: _Context
) -> Iterator[PatentBundle | Rejection]:
    with open(path, "rb") as handle:
        for parsed in _parsed_documents(iter_documents_from_lines(handle), label, ctx):
            if isinstance(parsed, Rejection):
                yield parsed
                continue
            sheet_files = {}
            for sheet in parsed.sheets:
                found = sheets_here.get(Path(sheet.file.replace("\\", "/")).name.lower())
                if found is not None:
                    sheet_files[sheet.file] = found
            yield _bundle(parsed, sheet_files, ctx)


def _sheets_in(folder: Path, names: Iterable[str]) -> dict[str, Path]:
    return {name.lower(): folder / name for name in names if Path(name).suffix.lower() in _SHEET_SUFFIXES}


def _iter_directory(root: Path, ctx: _Context) -> Iterator[PatentBundle | Rejection]:
    """XML + TIF folders, flat or one per grant; sheets match within the XML's own folder.

    Files are used in place. Symlinked folders are not followed (no loops, no escaping the tree).
    """
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(folder)
        sheets_here = _sheets_in(here, files)
        for name in sorted(files):
            path = here / name
            label = str(path.relative_to(root))
            if Path(name).suffix.lower() in _XML_SUFFIXES:
                yield from _iter_xml_file(path, label, sheets_here, ctx)
            elif Path(name).suffix.lower() in _ZIP_SUFFIXES or _is_tar_name(name):
                yield from _iter_archive_file(path, label, ctx)


def _iter_archive_file(path: Path, label: str, ctx: _Context) -> Iterator[PatentBundle | Rejection]:
    try:
        if _is_tar_name(path.name):
            with tarfile.open(path, mode="r:*") as tar:
                yield from _iter_tar(tar, label, 1, ctx)
        else:
            with zipfile.ZipFile(path) as archive:
                yield from _iter_zip(archive, label, 1, ctx)
    except BudgetExceeded as exc:
        yield ctx.reject(label, f"release abandoned: {exc}")
    except (ArchiveError, zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        yield ctx.reject(label, f"corrupt or unsafe archive: {type(exc).__name__}: {exc}")


def iter_source(
    path: Path,
    work_dir: Path,
    limits: ArchiveLimits = ArchiveLimits(),  # frozen: a shared default is safe
    summary: SourceSummary | None = None,
) -> Iterator[PatentBundle | Rejection]:
    """Every grant of a release as a `PatentBundle`, and every problem as a `Rejection`.

    Pass a `SourceSummary` to get the counts (documents, grants, skipped by type, rejected).
    Non-grant documents (sequence listings) are counted, not rejected.
    """
    path = Path(path)
    summary = summary if summary is not None else SourceSummary()
    summary.source = str(path)
    ctx = _Context(str(path), Path(work_dir), limits, summary, _Budget(limits, summary))
    if path.is_dir():
        yield from _iter_directory(path, ctx)
    elif _is_tar_name(path.name) or path.suffix.lower() in _ZIP_SUFFIXES:
        yield from _iter_archive_file(path, path.name, ctx)
    elif path.suffix.lower() in _XML_SUFFIXES:
        yield from _iter_xml_file(path, path.name, _sheets_in(path.parent, os.listdir(path.parent)), ctx)
    elif not path.exists():
        yield ctx.reject(path.name, f"source {path} does not exist")
    else:
        yield ctx.reject(
            path.name, "not a USPTO release shape (expected .tar[.gz], .zip, .xml or a directory)"
        )
