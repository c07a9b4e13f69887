"""PatentDesc-355k (PatentLMM): its JSON of figure descriptions, and fetching its images.

The file is one JSON object keyed by image id (`"US11036663B2__2"`), each value holding
`image_url`, `brief_description` and `detailed_description` (and, optionally here, the
image's `sha256`). Every entry is checked; a bad one becomes a `Rejection` naming the image id
and the reason, and the rest go on.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from patent_assets.http import (
    DEFAULT_RETRY,
    DownloadError,
    DownloadResult,
    RetryPolicy,
    check_url,
    download_batch,
)
from patent_assets.records import Rejection
from patent_assets.store import sha256_file

# US + an optional series (D design, RE reissue, PP plant, H, T) + the number + kind code,
# then "__" and the figure's index: US11036663B2__2, USD0907292S1__3, USRE049000E1__1.
IMAGE_ID_PATTERN = re.compile(r"(?P<patent>US(?:D|RE|PP|H|T)?\d{4,11}[A-Z]\d?)__(?P<index>[A-Z]?\d{1,6})")
REQUIRED_FIELDS = ("image_url", "brief_description", "detailed_description")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".webp", ".bmp")
DEFAULT_EXTENSION = ".png"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class PatentDescError(ValueError):
    """The file as a whole cannot be read (not JSON, not an object of entries)."""


@dataclass
class PatentDescEntry:
    image_id: str
    image_url: str
    brief_description: str
    detailed_description: str
    sha256: str | None = None

    @property
    def patent_id(self) -> str:
        return patent_id_of(self.image_id)


def image_id_problem(image_id: object) -> str | None:
    """Why `image_id` is unusable (as an id and as a file name), or None if it is fine."""
    if not isinstance(image_id, str) or not image_id:
        return "image id is empty or not a string"
    for bad in ("/", "\\", "..", "\x00"):
        if bad in image_id:
            return f"image id contains the path character {bad!r}"
    if not IMAGE_ID_PATTERN.fullmatch(image_id):
        return "image id does not match the PatentDesc pattern US<number><kind>__<index>"
    return None


def patent_or_own_id(image_id: str) -> str:
    """The patent of `image_id`, or the id itself where it names none (a figure of its own)."""
    match = IMAGE_ID_PATTERN.fullmatch(image_id)
    return match.group("patent") if match else image_id


def patent_id_of(image_id: str) -> str:
    """`"US11036663B2__2"` -> `"US11036663B2"`."""
    match = IMAGE_ID_PATTERN.fullmatch(image_id)
    if not match:
        raise ValueError(f"not a PatentDesc image id: {image_id!r}")
    return match.group("patent")


class _Pairs(list):
    """A JSON object kept as its (key, value) pairs, so repeated keys stay visible."""


def _keep_pairs(pairs: list[tuple[str, Any]]) -> _Pairs:
    return _Pairs(pairs)


def _entry_problem(image_id: str, value: Any) -> str | None:
    if not isinstance(value, _Pairs):
        return f"entry is a JSON {type(value).__name__}, not an object"
    keys = [key for key, _ in value]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        return f"entry repeats the field(s) {', '.join(repeated)}"
    fields = dict(value)
    missing = [name for name in REQUIRED_FIELDS if fields.get(name) is None]
    if missing:
        return f"missing field(s): {', '.join(missing)}"
    for name in (*REQUIRED_FIELDS, "sha256"):
        if name in fields and fields[name] is not None and not isinstance(fields[name], str):
            return f"field {name} is a JSON {type(fields[name]).__name__}, not a string"
    url = fields["image_url"]
    try:
        check_url(url)
    except DownloadError as error:
        return f"image_url is not an http(s) URL: {error.reason}: {url!r}"
    if fields.get("sha256") is not None and not _SHA256.fullmatch(fields["sha256"]):
        return f"sha256 is not 64 hex digits: {fields['sha256']!r}"
    return None


def read_patentdesc(path: Path) -> tuple[list[PatentDescEntry], list[Rejection]]:
    """Read a PatentDesc JSON file: (valid entries in file order, rejections with reasons).

    A duplicated image id is ambiguous unless all its copies are identical: identical copies
    keep the first and reject the rest; differing copies are all rejected.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            top = json.load(handle, object_pairs_hook=_keep_pairs)
    except json.JSONDecodeError as error:
        raise PatentDescError(f"{path}: not valid JSON: {error}") from error
    except UnicodeDecodeError as error:
        raise PatentDescError(f"{path}: not UTF-8 text: {error}") from error
    if not isinstance(top, _Pairs):
        raise PatentDescError(f"{path}: expected a JSON object keyed by image id, found {type(top).__name__}")

    source = str(path)
    occurrences: dict[str, list[Any]] = {}
    for image_id, value in top:
        occurrences.setdefault(image_id, []).append(value)

    entries: list[PatentDescEntry] = []
    rejected: list[Rejection] = []
    for image_id, values in occurrences.items():
        problem = image_id_problem(image_id)
        if problem:
            rejected.extend(Rejection(image_id, problem, "source", source) for _ in values)
            continue
        if len(values) > 1:
            if all(value == values[0] for value in values[1:]):
                reason = f"duplicate image id: {len(values)} identical entries, the first kept"
                rejected.extend(Rejection(image_id, reason, "source", source) for _ in values[1:])
                values = values[:1]
            else:
                reason = f"duplicate image id: {len(values)} entries that differ, none kept"
                rejected.extend(Rejection(image_id, reason, "source", source) for _ in values)
                continue
        value = values[0]
        problem = _entry_problem(image_id, value)
        if problem:
            rejected.append(Rejection(image_id, problem, "source", source))
            continue
        fields = dict(value)
        entries.append(
            PatentDescEntry(
                image_id=image_id,
                image_url=fields["image_url"],
                brief_description=fields["brief_description"],
                detailed_description=fields["detailed_description"],
                sha256=fields["sha256"].lower() if fields.get("sha256") else None,
            )
        )
    return entries, rejected


def extension_from_url(url: str) -> str | None:
    """The image extension the URL's path ends with (".png"), or None."""
    suffix = PurePosixPath(httpx.URL(url).path).suffix.lower()
    return suffix if suffix in IMAGE_EXTENSIONS else None


def extension_from_content_type(content_type: str | None) -> str | None:
    if not content_type or not content_type.startswith("image/"):
        return None
    guessed = mimetypes.guess_extension(content_type)
    return ".jpg" if guessed == ".jpe" else guessed if guessed in IMAGE_EXTENSIONS else None


def _present_images(images_dir: Path) -> dict[str, Path]:
    """Image files already in `images_dir`, by image id (the file stem)."""
    if not images_dir.is_dir():
        return {}
    present: dict[str, Path] = {}
    with os.scandir(images_dir) as scan:
        for item in scan:
            path = Path(item.path)
            if item.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                present.setdefault(path.stem, path)
    return present


def fetch_images(
    entries: Sequence[PatentDescEntry],
    images_dir: Path,
    *,
    concurrency: int = 8,
    retry: RetryPolicy = DEFAULT_RETRY,
    timeout: float = 30,
    client: httpx.Client | None = None,
    progress: bool | None = None,
) -> tuple[dict[str, Path], list[Rejection]]:
    """Download each entry's image to `images_dir/<image_id>.<ext>`: (paths by id, rejections).

    The extension comes from the URL, else from the response's content type, else ".png".
    Images already present (and matching `sha256` when the entry gives one) are not fetched
    again, so a second run only fetches what the first one missed.
    """
    images_dir = Path(images_dir)
    downloaded: dict[str, Path] = {}
    rejected: list[Rejection] = []
    present = _present_images(images_dir)
    pending: list[tuple[PatentDescEntry, Path, bool]] = []  # entry, destination, extension guessed
    seen: set[str] = set()
    for entry in entries:
        problem = image_id_problem(entry.image_id)
        if problem is None and entry.image_id in seen:
            problem = "duplicate image id in the entries to fetch"
        if problem:
            rejected.append(Rejection(entry.image_id, problem, "download", entry.image_url))
            continue
        seen.add(entry.image_id)
        existing = present.get(entry.image_id)
        if existing is not None and (entry.sha256 is None or sha256_file(existing) == entry.sha256):
            downloaded[entry.image_id] = existing
            continue
        from_url = extension_from_url(entry.image_url)
        dest = existing or images_dir / f"{entry.image_id}{from_url or DEFAULT_EXTENSION}"
        pending.append((entry, dest, existing is None and from_url is None))

    outcomes = download_batch(
        [(entry.image_url, dest, entry.sha256) for entry, dest, _ in pending],
        concurrency=concurrency,
        client=client,
        retry=retry,
        timeout=timeout,
        progress=progress,
        desc="images",
    )
    for (entry, dest, guessed), outcome in zip(pending, outcomes, strict=True):
        if isinstance(outcome, DownloadError):
            rejected.append(Rejection(entry.image_id, outcome.reason, "download", entry.image_url))
            continue
        downloaded[entry.image_id] = _named_by_content(outcome, dest) if guessed else dest
    return downloaded, rejected


def _named_by_content(result: DownloadResult, dest: Path) -> Path:
    """Rename a file saved under the default extension to the one its content type names."""
    extension = extension_from_content_type(result.content_type)
    if extension is None or extension == dest.suffix:
        return dest
    renamed = dest.with_suffix(extension)
    os.replace(dest, renamed)
    return renamed
