from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from patent_assets.http import RetryPolicy, part_path
from patent_assets.release_source import (
    HttpIndexReleases,
    LandingDirectoryReleases,
    Release,
    ReleaseSourceError,
    is_partial_name,
    release_key,
)
from tests.http_server import Fault, TestServer, serve

FAST = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.02, jitter=0.01)
ZIP = b"PK\x03\x04" + bytes(range(256)) * 20
JAN_2 = 1704153600.0  # 2024-01-02T00:00:00Z


@pytest.fixture
def server() -> Iterator[TestServer]:
    with serve() as running:
        yield running


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("ipg210105.zip", "2021-01-05"),
        ("I20210105.tar", "2021-01-05"),
        ("I20210105.tar.gz", "2021-01-05"),
        ("I20210105.zip", "2021-01-05"),
        ("I20210105", "2021-01-05"),  # an extracted release directory
        ("ipg219999.zip", "ipg219999"),  # not a date
        ("grants_batch.tar.gz", "grants_batch"),
        ("notes.txt", "notes"),
    ],
)
def test_release_key(name: str, key: str) -> None:
    assert release_key(name) == key


def test_partial_names() -> None:
    assert all(map(is_partial_name, [".ipg210105.zip", "ipg210105.zip.part", "a.TMP", "b.zip.crdownload"]))
    assert not any(map(is_partial_name, ["ipg210105.zip", "I20210105", "I20210105.tar"]))


def test_landing_directory_lists_complete_releases_sorted(tmp_path: Path) -> None:
    (tmp_path / "ipg210112.zip").write_bytes(ZIP)
    (tmp_path / "ipg210105.zip").write_bytes(b"x" * 10)
    (tmp_path / "I20210119").mkdir()
    for partial in (".ipg210126.zip", "ipg210202.zip.part", "ipg210209.zip.tmp", "ipg210216.zip.crdownload"):
        (tmp_path / partial).write_bytes(b"half")
    source = LandingDirectoryReleases(tmp_path)

    releases = source.list_releases()

    assert [(r.key, r.name, r.size) for r in releases] == [
        ("2021-01-05", "ipg210105.zip", 10),
        ("2021-01-12", "ipg210112.zip", len(ZIP)),
        ("2021-01-19", "I20210119", None),
    ]
    assert releases[0].location == str((tmp_path / "ipg210105.zip").resolve())
    assert releases[0].modified == pytest.approx((tmp_path / "ipg210105.zip").stat().st_mtime)
    # Fetch uses the file in place, every time.
    assert source.fetch(releases[1], tmp_path / "unused") == tmp_path / "ipg210112.zip"
    assert source.fetch(releases[1], tmp_path / "unused") == tmp_path / "ipg210112.zip"
    assert not (tmp_path / "unused").exists()
    (tmp_path / "ipg210112.zip").unlink()
    with pytest.raises(ReleaseSourceError, match="2021-01-12"):
        source.fetch(releases[1], tmp_path)


def test_landing_directory_options_and_errors(tmp_path: Path) -> None:
    (tmp_path / "ipg210105.zip").write_bytes(ZIP)
    (tmp_path / "I20210105.tar").write_bytes(ZIP)  # the same week, with images: preferred
    (tmp_path / "README.txt").write_text("not a release")
    old = time.time() - 600
    for name in ("ipg210105.zip", "I20210105.tar", "README.txt"):
        os.utime(tmp_path / name, (old, old))
    (tmp_path / "ipg210112.zip").write_bytes(ZIP)  # still being copied under its final name

    everything = LandingDirectoryReleases(tmp_path).list_releases()
    assert [r.name for r in everything] == ["I20210105.tar", "ipg210112.zip", "README.txt"]
    settled = LandingDirectoryReleases(tmp_path, pattern=r"ipg\d{6}\.zip|I\d{8}\.tar", min_age_s=60)
    assert [r.name for r in settled.list_releases()] == ["I20210105.tar"]
    with pytest.raises(ReleaseSourceError, match="does not exist"):
        LandingDirectoryReleases(tmp_path / "nowhere").list_releases()


INDEX_HTML = """<!DOCTYPE html><html><head><title>Index of /2024</title></head><body>
<table>
<tr><td><a href="../">Parent Directory</a></td></tr>
<tr><td><a href="ipg240102.zip">ipg240102.zip</a></td><td>1.2G</td></tr>
<tr><td><a href="ipg240102.zip"><img src="zip.gif"></a></td></tr>
<tr><td><a href="/data/2024/ipg240109.zip">ipg240109.zip</a></td></tr>
<tr><td><a href="{absolute}">ipg240116.zip</a></td></tr>
<tr><td><a href="ipg240123.zip#top">ipg240123.zip</a></td></tr>
<tr><td><a href="ipg240102.zip.md5">checksum</a></td></tr>
<tr><td><a href="readme.html">readme</a> <a href="mailto:bulk@uspto.gov">mail</a></td></tr>
<tr><td><a href="ftp://example.org/ipg240130.zip">ftp mirror</a></td></tr>
<tr><td><a name="no-href">anchor</a></td></tr>
</table></body></html>"""


def test_html_index_links_relative_and_absolute(server: TestServer) -> None:
    absolute = server.url("/data/2024/ipg240116.zip")
    server.add("/data/2024/", INDEX_HTML.format(absolute=absolute), content_type="text/html")
    # USPTO's folder URLs without a trailing slash redirect; links resolve against the final page.
    server.add("/data/2024", "", faults=[Fault(status=301, headers={"Location": "/data/2024/"})])

    releases = HttpIndexReleases(server.url("/data/2024"), retry=FAST).list_releases()

    assert releases == [
        Release("2024-01-02", "ipg240102.zip", server.url("/data/2024/ipg240102.zip")),
        Release("2024-01-09", "ipg240109.zip", server.url("/data/2024/ipg240109.zip")),
        Release("2024-01-16", "ipg240116.zip", absolute),
        Release("2024-01-23", "ipg240123.zip", server.url("/data/2024/ipg240123.zip")),
    ]


def test_json_index(server: TestServer) -> None:
    listing = {
        "files": [
            {"name": "ipg240109.zip", "size": 123, "modified": "2024-01-09T00:00:00Z"},
            {"url": server.url("/other/ipg240102.zip"), "size": 7, "modified": JAN_2},
            "I20240116.tar",
            {"name": "notes.txt"},
            {"size": 5},
        ]
    }
    server.add("/index.json", json.dumps(listing), content_type="application/json")

    releases = HttpIndexReleases(server.url("/index.json"), retry=FAST).list_releases()

    assert [(r.key, r.name, r.location, r.size) for r in releases] == [
        ("2024-01-02", "ipg240102.zip", server.url("/other/ipg240102.zip"), 7),
        ("2024-01-09", "ipg240109.zip", server.url("/ipg240109.zip"), 123),
        ("2024-01-16", "I20240116.tar", server.url("/I20240116.tar"), None),
    ]
    assert releases[0].modified == JAN_2
    assert releases[1].modified == JAN_2 + 7 * 86400


def test_an_unreachable_index_is_an_error_naming_it(server: TestServer) -> None:
    server.add("/broken/", "", faults=[Fault(status=500)] * 5)
    with pytest.raises(ReleaseSourceError, match=r"cannot list releases at .*/broken/: HTTP 500"):
        HttpIndexReleases(server.url("/broken/"), retry=FAST).list_releases()
    assert server.count("/broken/") == FAST.attempts
    with pytest.raises(ReleaseSourceError, match="scheme"):
        HttpIndexReleases("file:///srv/uspto/")


def http_release(server: TestServer, faults: list[Fault] | None = None, body: bytes = ZIP) -> Release:
    url = server.add("/ipg240102.zip", body, faults=faults, last_modified=JAN_2)
    return Release("2024-01-02", "ipg240102.zip", url)


def test_fetch_downloads_once_then_reuses_the_file(server: TestServer, tmp_path: Path) -> None:
    source = HttpIndexReleases(server.url("/"), retry=FAST)
    release = http_release(server)

    path = source.fetch(release, tmp_path)
    assert path == tmp_path / "ipg240102.zip" and path.read_bytes() == ZIP
    assert path.stat().st_mtime == JAN_2  # the server's Last-Modified
    assert source.fetch(release, tmp_path) == path
    assert server.count("/ipg240102.zip") == 1  # the second fetch only asked HEAD
    assert server.count("/ipg240102.zip", "HEAD") == 2

    # The file is replaced upstream: the next fetch notices and downloads it again.
    server.add("/ipg240102.zip", ZIP[::-1], last_modified=JAN_2 + 3600)
    assert source.fetch(release, tmp_path).read_bytes() == ZIP[::-1]
    assert server.count("/ipg240102.zip") == 2  # one more GET, after a third HEAD
    assert path.stat().st_mtime == JAN_2 + 3600


@pytest.mark.parametrize(
    "faults",
    [
        [Fault(status=500), Fault(status=503)],
        [Fault(delay=3.0)],
        [Fault(truncate_to=1000)],
    ],
    ids=["5xx", "timeout", "short-read"],
)
def test_fetch_retries_transient_failures(server: TestServer, tmp_path: Path, faults: list[Fault]) -> None:
    source = HttpIndexReleases(server.url("/"), retry=FAST, timeout=0.3)
    path = source.fetch(http_release(server, faults), tmp_path)
    assert path.read_bytes() == ZIP
    gets = server.requests_for("/ipg240102.zip")
    assert len(gets) == len(faults) + 1
    if faults[0].truncate_to:
        assert gets[-1].headers["range"] == "bytes=1000-"


def test_fetch_fails_at_once_on_404_and_leaves_nothing(server: TestServer, tmp_path: Path) -> None:
    source = HttpIndexReleases(server.url("/"), retry=FAST)
    release = http_release(server, [Fault(status=404)])
    with pytest.raises(ReleaseSourceError, match=r"2024-01-02.*HTTP 404"):
        source.fetch(release, tmp_path)
    assert server.count("/ipg240102.zip") == 1
    assert list(tmp_path.iterdir()) == []


def test_fetch_gives_up_after_retries_and_leaves_no_file_at_the_destination(
    server: TestServer, tmp_path: Path
) -> None:
    source = HttpIndexReleases(server.url("/"), retry=FAST)
    release = http_release(server, [Fault(truncate_to=100)] * 3)
    with pytest.raises(ReleaseSourceError, match="short read"):
        source.fetch(release, tmp_path)
    assert not (tmp_path / "ipg240102.zip").exists()
    assert part_path(tmp_path / "ipg240102.zip").stat().st_size == 300  # resumable next time


def test_fetch_resumes_a_part_file_and_discards_a_stale_one(server: TestServer, tmp_path: Path) -> None:
    source = HttpIndexReleases(server.url("/"), retry=FAST)
    release = http_release(server)
    part = part_path(tmp_path / "ipg240102.zip")
    part.write_bytes(ZIP[:2000])  # written after the file's Last-Modified: resumable
    assert source.fetch(release, tmp_path).read_bytes() == ZIP
    assert server.requests_for("/ipg240102.zip")[-1].headers["range"] == "bytes=2000-"

    (tmp_path / "ipg240102.zip").unlink()
    part.write_bytes(b"old version")
    os.utime(part, (JAN_2 - 86400, JAN_2 - 86400))  # older than the file on the server
    assert source.fetch(release, tmp_path).read_bytes() == ZIP
    assert "range" not in server.requests_for("/ipg240102.zip")[-1].headers
