"""Downloading over HTTP(S): retries with backoff, resume, checksums, atomic results.

`download` writes `<dest>.part` and renames it to `dest` only once every byte has arrived and
the checksum (when one is given) matches, so `dest` is either absent or complete. A `.part`
left by a transient failure is resumed with a `Range` request by the next call; a `.part`
that cannot be right (checksum mismatch, 404, a larger size than expected) is removed.

Timeouts, broken connections, short reads, 5xx and 429 are retried with exponential backoff
and jitter (tenacity); other 4xx fail at once with their status.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import tenacity
from tqdm import tqdm

from patent_assets.store import sha256_file

log = logging.getLogger(__name__)

ALLOWED_SCHEMES = ("http", "https")
USER_AGENT = "patentflow/0.1 (+https://github.com/; bulk patent data pipeline)"


class DownloadError(Exception):
    """A download that failed for good. `reason` says why; `status` is the HTTP status if any."""

    def __init__(self, url: str, reason: str, *, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(f"{reason} ({url})")
        self.url = url
        self.reason = reason
        self.status = status
        self.attempts = attempts


class _RetryableError(Exception):
    """A failure worth another attempt: 5xx, 429, a short read, a resume that went wrong."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


# Transport errors that a later attempt can cure; not e.g. UnsupportedProtocol or a local bug.
_TRANSIENT_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry. Waits grow as initial * 2**n plus up to `jitter`."""

    attempts: int = 5
    initial_wait: float = 1.0
    max_wait: float = 60.0
    jitter: float = 1.0

    def retrying(self) -> tenacity.Retrying:
        backoff = tenacity.wait_exponential_jitter(
            multiplier=self.initial_wait, max=self.max_wait, jitter=self.jitter
        )

        def wait(state: tenacity.RetryCallState) -> float:
            seconds = backoff(state)
            error = state.outcome.exception() if state.outcome else None
            # Honour a server's Retry-After on 429/503, but never beyond max_wait.
            if isinstance(error, _RetryableError) and error.retry_after is not None:
                seconds = max(seconds, min(error.retry_after, self.max_wait))
            return seconds

        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, self.attempts)),
            wait=wait,
            retry=tenacity.retry_if_exception_type((_RetryableError, *_TRANSIENT_TRANSPORT_ERRORS)),
            reraise=True,
        )


DEFAULT_RETRY = RetryPolicy()


@dataclass
class DownloadResult:
    path: Path
    sha256: str
    bytes: int
    attempts: int  # 0: the file was already present and verified, nothing was fetched
    resumed: bool  # some bytes came from a .part left by an earlier attempt or run
    content_type: str | None = None  # of the last response, without parameters


def check_url(url: str) -> httpx.URL:
    """Parse `url`, accepting only http(s) with a host; raise DownloadError otherwise (no I/O)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as error:
        raise DownloadError(str(url), f"invalid URL: {error}") from error
    if parsed.scheme not in ALLOWED_SCHEMES:
        scheme = parsed.scheme or "(none)"
        raise DownloadError(url, f"unsupported URL scheme {scheme!r}: only http and https are allowed")
    if not parsed.host:
        raise DownloadError(url, "URL has no host")
    return parsed


def part_path(dest: Path) -> Path:
    """Where the bytes of `dest` accumulate until the download is complete and verified."""
    return dest.with_name(dest.name + ".part")


@contextmanager
def _client_or_new(client: httpx.Client | None, max_connections: int = 10) -> Iterator[httpx.Client]:
    if client is not None:
        yield client
        return
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    with httpx.Client(follow_redirects=True, limits=limits, headers={"User-Agent": USER_AGENT}) as new:
        yield new


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    reason = f"HTTP {status} {response.reason_phrase}".strip()
    if status == 429 or status >= 500:
        raise _RetryableError(reason, status=status, retry_after=_retry_after_seconds(response))
    raise DownloadError(str(response.request.url), reason, status=status)


def _header_int(response: httpx.Response, name: str) -> int | None:
    value = response.headers.get(name)
    return int(value) if value is not None and value.strip().isdigit() else None


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def _content_range(response: httpx.Response) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header; None where absent or unknown."""
    match = _CONTENT_RANGE.match(response.headers.get("content-range", "").strip())
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) else None
    total = int(match.group(3)) if match.group(3) != "*" else None
    return start, total


@dataclass
class _Progress:
    attempts: int = 0
    resumed: bool = False
    content_type: str | None = None


def _attempt(
    url: str,
    part: Path,
    client: httpx.Client,
    timeout: float,
    expected_size: int | None,
    progress: _Progress,
) -> None:
    """One GET into `part`, continuing from its current size when the server allows it."""
    progress.attempts += 1
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0
    # identity: Range offsets and Content-Length must count the bytes we store.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with client.stream("GET", url, headers=headers, timeout=timeout) as response:
        progress.content_type = response.headers.get("content-type", "").split(";")[0].strip() or None
        if response.status_code == 416 and offset:
            _, total = _content_range(response)
            if total == offset:
                return  # the .part already holds every byte
            part.unlink(missing_ok=True)
            raise _RetryableError("range not satisfiable for the partial file; restarting from byte 0")
        if response.is_redirect:  # only a caller's client with follow_redirects=False gets here
            raise DownloadError(
                url, f"HTTP {response.status_code} redirect not followed", status=response.status_code
            )
        if response.status_code == 404:
            part.unlink(missing_ok=True)  # nothing to resume, ever
        _raise_for_status(response)
        mode = "wb"  # a 200 to a Range request: the server ignored it, so start over
        if response.status_code == 206 and offset:
            start, _ = _content_range(response)
            if start != offset:
                part.unlink(missing_ok=True)
                raise _RetryableError(f"server resumed at byte {start}, not {offset}; restarting")
            mode = "ab"
            progress.resumed = True
        length = _header_int(response, "content-length")
        with open(part, mode) as handle:
            try:
                # No chunk size: httpx would hold back a partial chunk, losing it when the stream breaks.
                for chunk in response.iter_bytes():
                    handle.write(chunk)
            except _TRANSIENT_TRANSPORT_ERRORS as error:
                got = f"{response.num_bytes_downloaded} of {length if length is not None else '?'} bytes"
                what = (
                    "timed out after" if isinstance(error, httpx.TimeoutException) else "short read: got only"
                )
                raise _RetryableError(f"{what} {got} ({type(error).__name__}: {error})") from error
            finally:
                handle.flush()
                os.fsync(handle.fileno())
        if length is not None and response.num_bytes_downloaded < length:
            raise _RetryableError(f"short read: got {response.num_bytes_downloaded} of {length} bytes")
    size = part.stat().st_size
    if expected_size is not None and size < expected_size:
        raise _RetryableError(f"short read: have {size} of the expected {expected_size} bytes")


def _fetch_part(
    url: str,
    part: Path,
    client: httpx.Client,
    retry: RetryPolicy,
    timeout: float,
    expected_size: int | None,
    progress: _Progress,
) -> None:
    try:
        retry.retrying()(_attempt, url, part, client, timeout, expected_size, progress)
    except _RetryableError as error:
        raise DownloadError(
            url,
            f"{error.reason} (gave up after {progress.attempts} attempts)",
            status=error.status,
            attempts=progress.attempts,
        ) from error
    except _TRANSIENT_TRANSPORT_ERRORS as error:
        kind = "timed out" if isinstance(error, httpx.TimeoutException) else "connection failed"
        raise DownloadError(
            url,
            f"{kind}: {type(error).__name__}: {error} (gave up after {progress.attempts} attempts)",
            attempts=progress.attempts,
        ) from error
    except DownloadError as error:
        error.attempts = progress.attempts
        raise
    except httpx.HTTPError as error:  # not transient: a protocol or URL problem
        raise DownloadError(url, f"{type(error).__name__}: {error}", attempts=progress.attempts) from error


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    expected_size: int | None = None,
    client: httpx.Client | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    timeout: float = 30,
) -> DownloadResult:
    """Download `url` to `dest` atomically, resuming `<dest>.part` and verifying `sha256`."""
    check_url(url)
    dest = Path(dest)
    expected_sha = sha256.lower() if sha256 else None
    if expected_sha and dest.is_file() and sha256_file(dest) == expected_sha:
        return DownloadResult(dest, expected_sha, dest.stat().st_size, attempts=0, resumed=False)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    progress = _Progress()
    had_part = part.exists()
    with _client_or_new(client) as http:
        _fetch_part(url, part, http, retry, timeout, expected_size, progress)
        size = part.stat().st_size
        if expected_size is not None and size != expected_size:
            part.unlink(missing_ok=True)
            raise DownloadError(url, f"size mismatch: expected {expected_size} bytes, got {size}")
        digest = sha256_file(part)
        if expected_sha and digest != expected_sha and had_part and progress.resumed:
            # A stale .part (say, of an older version of the file) spoiled the resume: once more from 0.
            log.warning("checksum mismatch after resuming %s; downloading it again from the start", url)
            part.unlink(missing_ok=True)
            progress.resumed = False
            _fetch_part(url, part, http, retry, timeout, expected_size, progress)
            size, digest = part.stat().st_size, sha256_file(part)
    if expected_sha and digest != expected_sha:
        part.unlink(missing_ok=True)
        raise DownloadError(
            url,
            f"checksum mismatch: expected sha256 {expected_sha}, got {digest}",
            attempts=progress.attempts,
        )
    os.replace(part, dest)
    return DownloadResult(dest, digest, size, progress.attempts, progress.resumed, progress.content_type)


def request(
    method: str,
    url: str,
    *,
    client: httpx.Client | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    timeout: float = 30,
) -> httpx.Response:
    """A small request (a listing page, a HEAD) with the same retries; 4xx raise DownloadError."""
    check_url(url)

    def once() -> httpx.Response:
        response = http.request(method, url, timeout=timeout)
        _raise_for_status(response)
        return response

    with _client_or_new(client) as http:
        try:
            return retry.retrying()(once)
        except _RetryableError as error:
            raise DownloadError(url, f"{error.reason} (gave up)", status=error.status) from error
        except httpx.HTTPError as error:
            raise DownloadError(url, f"{type(error).__name__}: {error}") from error


@dataclass(frozen=True)
class _Job:
    url: str
    dest: Path
    sha256: str | None


def _present_and_valid(job: _Job) -> DownloadResult | None:
    """The finished file, if it is already there: renames are atomic, so a present file is whole."""
    if not job.dest.is_file():
        return None
    digest = sha256_file(job.dest)
    if job.sha256 and digest != job.sha256.lower():
        return None
    return DownloadResult(job.dest, digest, job.dest.stat().st_size, attempts=0, resumed=False)


def download_batch(
    items: Sequence[tuple[str, Path, str | None]],
    *,
    concurrency: int = 8,
    client: httpx.Client | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    timeout: float = 30,
    progress: bool | None = None,
    desc: str = "download",
) -> list[DownloadResult | DownloadError]:
    """Download many files with at most `concurrency` at once; one outcome per item, in order.

    Items already present (and matching their checksum, when one is given) are not fetched.
    Two items with the same destination would share a `.part`: the later one fails.
    """
    outcomes: list[DownloadResult | DownloadError | None] = [None] * len(items)
    jobs: list[tuple[int, _Job]] = []
    destinations: dict[Path, str] = {}
    for index, (url, dest, sha256) in enumerate(items):
        dest = Path(dest)
        key = dest.resolve()
        if key in destinations:
            outcomes[index] = DownloadError(
                url, f"duplicate destination {dest} (also used for {destinations[key]})"
            )
            continue
        destinations[key] = url
        jobs.append((index, _Job(url, dest, sha256)))

    def run(job: _Job) -> DownloadResult | DownloadError:
        try:
            check_url(job.url)
            return _present_and_valid(job) or download(
                job.url, job.dest, sha256=job.sha256, client=http, retry=retry, timeout=timeout
            )
        except DownloadError as error:
            return error
        except OSError as error:  # a disk problem with one file must not stop the batch
            return DownloadError(job.url, f"cannot write {job.dest}: {error}")
        except Exception as error:  # nor may anything unforeseen about one item
            log.exception("unexpected failure downloading %s", job.url)
            return DownloadError(job.url, f"unexpected {type(error).__name__}: {error}")

    workers = max(1, concurrency)
    with (
        _client_or_new(client, max_connections=workers) as http,
        ThreadPoolExecutor(max_workers=workers) as pool,
        # disable=None: tqdm shows the bar only on a terminal, so logs of scheduled runs stay clean.
        tqdm(
            total=len(items), desc=desc, unit="file", disable=None if progress is None else not progress
        ) as bar,
    ):
        bar.update(len(items) - len(jobs))
        futures = {pool.submit(run, job): index for index, job in jobs}
        for future in as_completed(futures):
            index = futures[future]
            outcomes[index] = future.result()
            bar.update(1)
    return [outcome for outcome in outcomes if outcome is not None]
