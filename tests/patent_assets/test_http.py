from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from patent_assets.http import (
    DownloadError,
    DownloadResult,
    RetryPolicy,
    download,
    download_batch,
    part_path,
    request,
)
from tests.http_server import Fault, TestServer, serve

FAST = RetryPolicy(attempts=4, initial_wait=0.01, max_wait=0.02, jitter=0.01)
BODY = bytes(range(256)) * 40  # 10 240 bytes, every offset distinguishable


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server() -> Iterator[TestServer]:
    with serve() as running:
        yield running


def assert_nothing_partial(dest: Path) -> None:
    assert not dest.exists()
    assert not part_path(dest).exists()


def test_download_writes_the_file_and_its_checksum(server: TestServer, tmp_path: Path) -> None:
    url = server.add("/file.bin", BODY)
    dest = tmp_path / "sub" / "file.bin"
    result = download(url, dest, sha256=sha(BODY), retry=FAST)
    assert dest.read_bytes() == BODY
    assert (result.path, result.sha256, result.bytes, result.attempts, result.resumed) == (
        dest,
        sha(BODY),
        len(BODY),
        1,
        False,
    )
    assert result.content_type == "application/octet-stream"
    assert not part_path(dest).exists()
    # The request asked for the bytes as stored (no compression that would break Range offsets).
    assert server.requests_for("/file.bin")[0].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.org/a.zip", "data:,hello", "/relative/a.zip"]
)
def test_non_http_urls_are_refused_before_any_io(tmp_path: Path, url: str) -> None:
    dest = tmp_path / "never" / "a.zip"
    with pytest.raises(DownloadError) as caught:
        download(url, dest, retry=FAST)
    assert url in str(caught.value)
    assert "scheme" in caught.value.reason
    assert not dest.parent.exists()


def test_5xx_and_429_are_retried_until_success(server: TestServer, tmp_path: Path) -> None:
    url = server.add(
        "/flaky.bin",
        BODY,
        faults=[Fault(status=500), Fault(status=503), Fault(status=429, headers={"Retry-After": "0"})],
    )
    result = download(url, tmp_path / "flaky.bin", sha256=sha(BODY), retry=FAST)
    assert result.attempts == 4
    assert server.count("/flaky.bin") == 4
    assert (tmp_path / "flaky.bin").read_bytes() == BODY


def test_retries_give_up_with_the_last_status(server: TestServer, tmp_path: Path) -> None:
    url = server.add("/down.bin", BODY, faults=[Fault(status=502)] * 10)
    dest = tmp_path / "down.bin"
    with pytest.raises(DownloadError) as caught:
        download(url, dest, retry=FAST)
    assert caught.value.status == 502
    assert caught.value.attempts == FAST.attempts
    assert "HTTP 502" in caught.value.reason and "gave up after 4 attempts" in caught.value.reason
    assert server.count("/down.bin") == FAST.attempts
    assert not dest.exists()


@pytest.mark.parametrize("status", [404, 403, 410])
def test_client_errors_fail_at_once(server: TestServer, tmp_path: Path, status: int) -> None:
    url = server.add("/gone.bin", BODY, faults=[Fault(status=status)])
    dest = tmp_path / "gone.bin"
    with pytest.raises(DownloadError) as caught:
        download(url, dest, retry=FAST)
    assert caught.value.status == status
    assert f"HTTP {status}" in str(caught.value) and url in str(caught.value)
    assert server.count("/gone.bin") == 1
    assert_nothing_partial(dest)


def test_a_timeout_is_retried(server: TestServer, tmp_path: Path) -> None:
    url = server.add("/slow.bin", BODY, faults=[Fault(delay=3.0)])
    started = time.monotonic()
    result = download(url, tmp_path / "slow.bin", retry=FAST, timeout=0.3)
    assert time.monotonic() - started < 2.5  # the second attempt did not wait for the slow one
    assert result.attempts == 2
    assert (tmp_path / "slow.bin").read_bytes() == BODY


def test_timeouts_exhausted_are_reported_as_timeouts(server: TestServer, tmp_path: Path) -> None:
    url = server.add("/stuck.bin", BODY, faults=[Fault(delay=3.0)] * 2)
    dest = tmp_path / "stuck.bin"
    with pytest.raises(DownloadError, match="timed out"):
        download(url, dest, retry=RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.01), timeout=0.2)
    assert not dest.exists()


def test_a_short_read_is_resumed_with_a_range_request(server: TestServer, tmp_path: Path) -> None:
    url = server.add("/short.bin", BODY, faults=[Fault(truncate_to=3000)])
    result = download(url, tmp_path / "short.bin", sha256=sha(BODY), retry=FAST)
    assert (tmp_path / "short.bin").read_bytes() == BODY
    assert result.attempts == 2 and result.resumed
    first, second = server.requests_for("/short.bin")
    assert "range" not in first.headers
    assert second.headers["range"] == "bytes=3000-"


def test_short_reads_exhausted_leave_only_the_part_file(server: TestServer, tmp_path: Path) -> None:
    url = server.add("/cut.bin", BODY, faults=[Fault(truncate_to=100)] * 2)
    dest = tmp_path / "cut.bin"
    with pytest.raises(DownloadError, match="short read: got only 100 of 10140 bytes"):
        download(url, dest, retry=RetryPolicy(attempts=2, initial_wait=0.01, max_wait=0.01))
    assert not dest.exists()
    # 100 bytes from each attempt, the second resumed: kept for the next run to resume.
    assert part_path(dest).read_bytes() == BODY[:200]
    result = download(url, dest, sha256=sha(BODY), retry=FAST)
    assert result.resumed and dest.read_bytes() == BODY
    assert server.requests_for("/cut.bin")[-1].headers["range"] == "bytes=200-"


def test_resume_from_an_existing_part_file(server: TestServer, tmp_path: Path) -> None:
    url = server.add("/big.bin", BODY)
    dest = tmp_path / "big.bin"
    part_path(dest).write_bytes(BODY[:4000])
    result = download(url, dest, sha256=sha(BODY), retry=FAST)
    assert result.resumed and result.attempts == 1
    assert server.requests_for("/big.bin")[0].headers["range"] == "bytes=4000-"
    assert dest.read_bytes() == BODY and not part_path(dest).exists()


def test_a_server_that_ignores_range_restarts_the_file(server: TestServer, tmp_path: Path) -> None:
    url = server.add("/norange.bin", BODY, faults=[Fault(ignore_range=True)])
    dest = tmp_path / "norange.bin"
    part_path(dest).write_bytes(BODY[:4000])
    result = download(url, dest, sha256=sha(BODY), retry=FAST)
    assert not result.resumed
    assert dest.read_bytes() == BODY  # not the old 4000 bytes followed by the whole file


def test_a_complete_part_file_is_finished_without_refetching(server: TestServer, tmp_path: Path) -> None:
    url = server.add("/done.bin", BODY)
    dest = tmp_path / "done.bin"
    part_path(dest).write_bytes(BODY)
    result = download(url, dest, sha256=sha(BODY), retry=FAST)  # the server answers 416
    assert dest.read_bytes() == BODY and result.bytes == len(BODY)


def test_checksum_mismatch_removes_everything(server: TestServer, tmp_path: Path) -> None:
    url = server.add("/bad.bin", BODY)
    dest = tmp_path / "bad.bin"
    with pytest.raises(DownloadError, match="checksum mismatch") as caught:
        download(url, dest, sha256=sha(b"something else"), retry=FAST)
    assert sha(BODY) in caught.value.reason
    assert_nothing_partial(dest)


def test_a_stale_part_file_is_discarded_when_the_checksum_fails(server: TestServer, tmp_path: Path) -> None:
    url = server.add("/new.bin", BODY)
    dest = tmp_path / "new.bin"
    part_path(dest).write_bytes(b"x" * 500)  # left by a run against an older version of the file
    result = download(url, dest, sha256=sha(BODY), retry=FAST)
    assert dest.read_bytes() == BODY and not result.resumed and result.attempts == 2
    ranges = [r.headers.get("range") for r in server.requests_for("/new.bin")]
    assert ranges == ["bytes=500-", None]


def test_size_mismatch_is_an_error(server: TestServer, tmp_path: Path) -> None:
    url = server.add("/sized.bin", BODY)
    dest = tmp_path / "sized.bin"
    with pytest.raises(DownloadError, match="size mismatch"):
        download(url, dest, expected_size=len(BODY) - 1, retry=FAST)
    assert_nothing_partial(dest)


def test_a_present_verified_file_is_not_fetched(server: TestServer, tmp_path: Path) -> None:
    url = server.add("/here.bin", BODY)
    dest = tmp_path / "here.bin"
    dest.write_bytes(BODY)
    result = download(url, dest, sha256=sha(BODY), retry=FAST)
    assert result.attempts == 0 and server.count("/here.bin") == 0


def download_many(items: list, **options: object) -> tuple[list[DownloadResult], list[tuple[str, str]]]:
    """`download_batch` split into (results, [(url, reason)] of failures)."""
    outcomes = download_batch(items, **options)
    ok = [outcome for outcome in outcomes if isinstance(outcome, DownloadResult)]
    failed = [(outcome.url, outcome.reason) for outcome in outcomes if isinstance(outcome, DownloadError)]
    return ok, failed


def test_download_batch_bounds_concurrency_and_reports_failures(server: TestServer, tmp_path: Path) -> None:
    items = []
    for n in range(12):
        body = BODY + bytes([n])
        url = server.add(f"/f{n}.bin", body, latency=0.1)
        items.append((url, tmp_path / f"f{n}.bin", sha(body)))
    server.add("/missing.bin", b"", faults=[Fault(status=404)])
    items.append((server.url("/missing.bin"), tmp_path / "missing.bin", None))
    items.append(("ftp://example.org/x.bin", tmp_path / "x.bin", None))

    ok, failed = download_many(items, concurrency=3, retry=FAST, progress=False)
    assert 2 <= server.max_in_flight <= 3
    assert sorted(r.path.name for r in ok) == sorted(f"f{n}.bin" for n in range(12))
    assert dict(failed).keys() == {server.url("/missing.bin"), "ftp://example.org/x.bin"}
    assert "HTTP 404" in dict(failed)[server.url("/missing.bin")]
    assert not (tmp_path / "missing.bin").exists()

    # A second run of the batch fetches nothing that is already there and verified...
    before = len(server.requests)
    (tmp_path / "f3.bin").write_bytes(b"corrupted")  # ...except a file whose checksum is wrong.
    ok, _ = download_many(items[:12], concurrency=3, retry=FAST, progress=False)
    assert len(server.requests) - before == 1
    assert server.requests[-1].path == "/f3.bin"
    assert sum(r.attempts == 0 for r in ok) == 11
    assert (tmp_path / "f3.bin").read_bytes() == BODY + bytes([3])


def test_download_batch_refuses_two_items_with_one_destination(server: TestServer, tmp_path: Path) -> None:
    first = server.add("/one.bin", b"one")
    second = server.add("/two.bin", b"two")
    ok, failed = download_many(
        [(first, tmp_path / "same.bin", None), (second, tmp_path / "same.bin", None)], progress=False
    )
    assert [r.path for r in ok] == [tmp_path / "same.bin"]
    assert (tmp_path / "same.bin").read_bytes() == b"one"
    assert failed[0][0] == second and "duplicate destination" in failed[0][1]


def test_request_retries_and_fails_on_client_errors(server: TestServer) -> None:
    url = server.add("/index.html", "<html></html>", content_type="text/html", faults=[Fault(status=500)])
    assert request("GET", url, retry=FAST).text == "<html></html>"
    with pytest.raises(DownloadError, match="HTTP 404"):
        request("GET", server.url("/nope"), retry=FAST)


def test_redirects_are_followed_unless_the_callers_client_refuses(server: TestServer, tmp_path: Path) -> None:
    server.add("/moved.bin", b"", faults=[Fault(status=302, headers={"Location": "/real.bin"})] * 2)
    server.add("/real.bin", BODY)
    assert download(server.url("/moved.bin"), tmp_path / "a.bin", retry=FAST).bytes == len(BODY)
    with (
        httpx.Client(follow_redirects=False) as client,
        pytest.raises(DownloadError, match="redirect not followed"),
    ):
        download(server.url("/moved.bin"), tmp_path / "b.bin", client=client, retry=FAST)
    assert_nothing_partial(tmp_path / "b.bin")
