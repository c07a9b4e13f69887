"""Where new USPTO releases appear: a landing directory, or an HTTP index of bulk files.

Both sources have the same two calls: `list_releases()` (sorted by key) and
`fetch(release, dest_dir)`, which returns a local path and is idempotent: fetching an
unchanged release again costs a stat (and, over HTTP, a HEAD request), nothing more.
The orchestration layer wraps these in Dagster resources; nothing here imports Dagster.

A release key is the release's date when the file name carries one:
`ipg210105.zip` (weekly full text) and `I20210105.tar` (full text with images) are both
"2021-01-05". When one source holds several files for one key, the one with images is kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import unquote

import httpx
import lxml.html

from patent_assets.http import (
    DEFAULT_RETRY,
    DownloadError,
    RetryPolicy,
    check_url,
    download,
    part_path,
    request,
)

log = logging.getLogger(__name__)

# The weekly grant products: full text (ipgYYMMDD.zip) and full text with images (IYYYYMMDD.tar).
RELEASE_FILE_PATTERN = r"ipg\d{6}\.zip|I\d{8}\.(?:tar|tar\.gz|tgz|zip)"
PARTIAL_PREFIXES = (".",)
PARTIAL_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".download", ".filepart")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".gz")
_FULL_TEXT = re.compile(r"ipg(\d{6})\.zip", re.IGNORECASE)
_WITH_IMAGES = re.compile(r"I(\d{8})(?:\.tar\.gz|\.tgz|\.tar|\.zip)?", re.IGNORECASE)


class ReleaseSourceError(Exception):
    """A source that cannot be listed, or a release that cannot be fetched; says which and why."""


@dataclass(frozen=True)
class Release:
    key: str  # "2021-01-05", or the file's stem when the name carries no date
    name: str  # the file (or directory) name: ipg210105.zip
    location: str  # a local path or an http(s) URL
    size: int | None = None  # bytes, where the source says
    modified: float | None = None  # epoch seconds, where the source says


class ReleaseSource(Protocol):
    def list_releases(self) -> list[Release]: ...

    def fetch(self, release: Release, dest_dir: Path) -> Path: ...


def _date_key(digits: str, layout: str) -> str | None:
    try:
        return datetime.strptime(digits, layout).date().isoformat()
    except ValueError:
        return None


def release_key(name: str) -> str:
    """`ipg210105.zip` and `I20210105.tar[.gz]|.zip` -> "2021-01-05"; any other name -> its stem."""
    for pattern, layout in ((_FULL_TEXT, "%y%m%d"), (_WITH_IMAGES, "%Y%m%d")):
        match = pattern.fullmatch(name)
        if match and (key := _date_key(match.group(1), layout)):
            return key
    lowered = name.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if lowered.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return PurePosixPath(name).stem or name


def is_partial_name(name: str) -> bool:
    """A file still being written: hidden, or named by a downloader or copier in progress."""
    lowered = name.lower()
    return lowered.startswith(PARTIAL_PREFIXES) or lowered.endswith(PARTIAL_SUFFIXES)


def _preference(release: Release) -> tuple[int, str]:
    """Which of several files for one key to keep: the product with images, then full text."""
    if _WITH_IMAGES.fullmatch(release.name):
        return 0, release.name
    if _FULL_TEXT.fullmatch(release.name):
        return 1, release.name
    return 2, release.name


def _one_per_key(releases: Iterable[Release], source: str) -> list[Release]:
    by_key: dict[str, list[Release]] = {}
    for release in releases:
        by_key.setdefault(release.key, []).append(release)
    kept = []
    for key, candidates in by_key.items():
        candidates.sort(key=_preference)
        if len(candidates) > 1:
            log.warning(
                "%s: %d files for release %s; using %s, ignoring %s",
                source,
                len(candidates),
                key,
                candidates[0].name,
                ", ".join(c.name for c in candidates[1:]),
            )
        kept.append(candidates[0])
    return sorted(kept, key=lambda release: (release.key, release.name))


def _safe_file_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(c in name for c in ("/", "\\", "\x00"))


class LandingDirectoryReleases:
    """Releases dropped (as files or directories) into a landing directory; fetched in place.

    Partial files (hidden, `.part`, `.tmp`, `.crdownload`, ...) are never listed. A copy made
    under the final name cannot be told apart by name: `min_age_s` also skips entries modified
    in the last seconds, for landing directories filled that way.
    """

    def __init__(self, path: Path | str, *, pattern: str | None = None, min_age_s: float = 0.0) -> None:
        self.path = Path(path)
        self.pattern = re.compile(pattern) if pattern else None
        self.min_age_s = min_age_s

    def list_releases(self) -> list[Release]:
        if not self.path.is_dir():
            raise ReleaseSourceError(f"landing directory {self.path} does not exist or is not a directory")
        newest_allowed = time.time() - self.min_age_s
        found = []
        with os.scandir(self.path) as scan:
            for item in scan:
                if is_partial_name(item.name) or (self.pattern and not self.pattern.fullmatch(item.name)):
                    continue
                try:
                    is_file, is_dir = item.is_file(), item.is_dir()
                    stat = item.stat()
                except OSError:  # vanished between listing and stat (moved away): not a release now
                    continue
                if not (is_file or is_dir) or (self.min_age_s and stat.st_mtime > newest_allowed):
                    continue
                found.append(
                    Release(
                        key=release_key(item.name),
                        name=item.name,
                        location=str(Path(item.path).resolve()),
                        size=stat.st_size if is_file else None,
                        modified=stat.st_mtime,
                    )
                )
        return _one_per_key(found, str(self.path))

    def fetch(self, release: Release, dest_dir: Path | None = None) -> Path:
        """The release's own path: files in the landing directory are used where they lie."""
        path = Path(release.location)
        if not path.exists():
            raise ReleaseSourceError(f"release {release.key}: {path} is no longer in the landing directory")
        return path


def _parse_modified(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
        try:
            return parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return None
    return None


class HttpIndexReleases:
    """Release files linked from an HTTP directory listing (HTML, like USPTO's bulk-data
    pages) or listed by a JSON document; fetched with `http.download` into `dest_dir`.

    A JSON listing is a list (or `{"files": [...]}`) of names/URLs, or of objects with
    `name` or `url`/`href` and optional `size` and `modified` (epoch seconds or ISO 8601).
    Only names that fully match `pattern` are releases; other links are ignored.
    """

    def __init__(
        self,
        url: str,
        pattern: str = RELEASE_FILE_PATTERN,
        *,
        client: httpx.Client | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        timeout: float = 60,
    ) -> None:
        try:
            check_url(url)
        except DownloadError as error:
            raise ReleaseSourceError(f"release index {url!r}: {error.reason}") from error
        self.url = url
        self.pattern = re.compile(pattern)
        self.client = client
        self.retry = retry
        self.timeout = timeout

    def list_releases(self) -> list[Release]:
        try:
            response = request("GET", self.url, client=self.client, retry=self.retry, timeout=self.timeout)
        except DownloadError as error:
            raise ReleaseSourceError(f"cannot list releases at {self.url}: {error.reason}") from error
        base = str(response.url)  # after redirects: relative links resolve against the final page
        content_type = response.headers.get("content-type", "")
        if "json" in content_type or response.content.lstrip()[:1] in (b"[", b"{"):
            candidates = self._from_json(response.content, base)
        else:
            candidates = self._from_html(response.content, base)
        releases: dict[str, Release] = {}
        for link, size, modified in candidates:
            try:
                parsed = check_url(link)
            except DownloadError:
                continue  # mailto:, ftp:, javascript: ... are not release files
            name = unquote(PurePosixPath(parsed.path).name)
            if not _safe_file_name(name) or not self.pattern.fullmatch(name) or name in releases:
                continue
            location = str(parsed.copy_with(fragment=None))
            releases[name] = Release(release_key(name), name, location, size, modified)
        return _one_per_key(releases.values(), self.url)

    def _from_html(self, content: bytes, base: str) -> list[tuple[str, int | None, float | None]]:
        if not content.strip():
            return []
        document = lxml.html.document_fromstring(content, base_url=base)
        document.make_links_absolute(base, resolve_base_href=True)
        return [
            (link, None, None)
            for element, attribute, link, _ in document.iterlinks()
            if element.tag == "a" and attribute == "href"
        ]

    def _from_json(self, content: bytes, base: str) -> list[tuple[str, int | None, float | None]]:
        try:
            listing = json.loads(content)
        except json.JSONDecodeError as error:
            raise ReleaseSourceError(f"{self.url}: listing is not valid JSON: {error}") from error
        if isinstance(listing, dict):
            listing = listing.get("files", listing.get("releases"))
        if not isinstance(listing, list):
            raise ReleaseSourceError(f"{self.url}: JSON listing must be a list or have a 'files' list")
        found = []
        for item in listing:
            if isinstance(item, str):
                found.append((str(httpx.URL(base).join(item)), None, None))
            elif isinstance(item, dict):
                target = item.get("url") or item.get("href") or item.get("name")
                if not isinstance(target, str):
                    continue
                size = item.get("size")
                size = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None
                found.append((str(httpx.URL(base).join(target)), size, _parse_modified(item.get("modified"))))
        return found

    def _remote_state(self, release: Release) -> tuple[int | None, float | None]:
        """Size and Last-Modified from a HEAD request; the listing's values if HEAD fails."""
        try:
            response = request(
                "HEAD", release.location, client=self.client, retry=self.retry, timeout=self.timeout
            )
        except DownloadError as error:
            log.info("HEAD %s failed (%s); using the listing's size and date", release.location, error.reason)
            return release.size, release.modified
        length = response.headers.get("content-length", "")
        size = int(length) if length.isdigit() else release.size
        modified = _parse_modified(response.headers.get("last-modified")) or release.modified
        return size, modified

    def fetch(self, release: Release, dest_dir: Path) -> Path:
        """Download the release into `dest_dir` (resuming, retrying, atomic), or reuse it.

        The downloaded file takes the server's Last-Modified as its mtime, so a later fetch
        can tell an unchanged release (same size and date) from a replaced one.
        """
        if not _safe_file_name(release.name):
            raise ReleaseSourceError(f"release {release.key}: unsafe file name {release.name!r}")
        dest = Path(dest_dir) / release.name
        size, modified = self._remote_state(release)
        if dest.is_file():
            stat = dest.stat()
            same_size = size is None or stat.st_size == size
            same_date = modified is None or abs(stat.st_mtime - modified) < 1
            if same_size and same_date:
                return dest
            log.info("release %s changed upstream; downloading it again", release.key)
        part = part_path(dest)
        if modified is not None and part.exists() and part.stat().st_mtime < modified:
            part.unlink()  # bytes of an older version of the file: resuming would splice two versions
        try:
            download(
                release.location,
                dest,
                expected_size=size,
                client=self.client,
                retry=self.retry,
                timeout=self.timeout,
            )
        except DownloadError as error:
            raise ReleaseSourceError(
                f"release {release.key}: cannot download {release.location}: {error.reason}"
            ) from error
        if modified is not None:
            os.utime(dest, (modified, modified))
        return dest
