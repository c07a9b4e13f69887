from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from patent_assets.http import RetryPolicy
from patent_assets.patentdesc import (
    PatentDescEntry,
    PatentDescError,
    fetch_images,
    patent_id_of,
    read_patentdesc,
)
from tests.http_server import Fault, TestServer, serve

FAST = RetryPolicy(attempts=3, initial_wait=0.01, max_wait=0.02, jitter=0.01)


def png_bytes(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (40, 30), color=shade).save(buffer, format="PNG")
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_json(url: str, **extra: object) -> dict[str, object]:
    return {
        "image_url": url,
        "brief_description": "FIG. 1 is a view.",
        "detailed_description": "Long.",
        **extra,
    }


@pytest.fixture
def server() -> Iterator[TestServer]:
    with serve() as running:
        yield running


def test_patent_id_of() -> None:
    assert patent_id_of("US11036663B2__2") == "US11036663B2"
    assert patent_id_of("USD0907292S1__10") == "USD0907292S1"
    with pytest.raises(ValueError, match="not a PatentDesc image id"):
        patent_id_of("US11036663B2")


def test_read_keeps_valid_entries_and_rejects_each_bad_one_with_its_reason(tmp_path: Path) -> None:
    url = "https://patentimages.storage.googleapis.com/a/b/US11036663-20210615-D00002.png"
    # Written by hand: json.dumps cannot produce the repeated keys that real files may hold.
    text = (
        "{"
        f'"US11036663B2__2": {json.dumps(entry_json(url))},'
        f'"USD0907292S1__1": {json.dumps(entry_json(url, sha256="AB" * 32))},'
        f'"../../etc/passwd__1": {json.dumps(entry_json(url))},'
        f'"US1234567B1__1/x": {json.dumps(entry_json(url))},'
        f'"US1234567B1__\\\\1": {json.dumps(entry_json(url))},'
        f'"US1234567B1\\u0000__1": {json.dumps(entry_json(url))},'
        f'"fig_7": {json.dumps(entry_json(url))},'
        f'"US5555555B2__1": {json.dumps(entry_json(url))},'
        f'"US5555555B2__1": {json.dumps(entry_json(url + "?other"))},'
        f'"US6666666B2__1": {json.dumps(entry_json(url))},'
        f'"US6666666B2__1": {json.dumps(entry_json(url))},'
        f'"US7000001B1__1": {json.dumps({"image_url": url, "brief_description": "x"})},'
        f'"US7000002B1__1": {json.dumps(entry_json("file:///etc/passwd"))},'
        f'"US7000003B1__1": {json.dumps(entry_json("ftp://example.org/a.png"))},'
        f'"US7000004B1__1": {json.dumps(entry_json(url, sha256="nothex"))},'
        f'"US7000005B1__1": ["not", "an", "object"],'
        f'"US7000006B1__1": {{"image_url": "{url}", "image_url": "{url}", "brief_description": "b",'
        f' "detailed_description": "d"}},'
        f'"US7000007B1__1": {json.dumps(entry_json(url, brief_description=7))}'
        "}"
    )
    path = tmp_path / "patentdesc.json"
    path.write_text(text, encoding="utf-8")

    entries, rejected = read_patentdesc(path)

    assert [e.image_id for e in entries] == ["US11036663B2__2", "USD0907292S1__1", "US6666666B2__1"]
    assert entries[0] == PatentDescEntry("US11036663B2__2", url, "FIG. 1 is a view.", "Long.", None)
    assert entries[0].patent_id == "US11036663B2"
    assert entries[1].sha256 == "ab" * 32
    reasons = {(r.item, r.reason) for r in rejected}
    assert all(r.stage == "source" and r.source == str(path) for r in rejected)
    assert ("../../etc/passwd__1", "image id contains the path character '/'") in reasons
    assert ("US1234567B1__1/x", "image id contains the path character '/'") in reasons
    assert ("US1234567B1__\\1", "image id contains the path character '\\\\'") in reasons
    assert ("US1234567B1\x00__1", "image id contains the path character '\\x00'") in reasons
    assert any(item == "fig_7" and "does not match the PatentDesc pattern" in why for item, why in reasons)
    # Differing duplicates are all rejected; identical ones keep the first.
    assert [r.reason for r in rejected if r.item == "US5555555B2__1"] == [
        "duplicate image id: 2 entries that differ, none kept"
    ] * 2
    assert [r.reason for r in rejected if r.item == "US6666666B2__1"] == [
        "duplicate image id: 2 identical entries, the first kept"
    ]
    assert ("US7000001B1__1", "missing field(s): detailed_description") in reasons
    assert any(
        item == "US7000002B1__1" and "not an http(s) URL" in why and "'file'" in why for item, why in reasons
    )
    assert any(item == "US7000003B1__1" and "not an http(s) URL" in why for item, why in reasons)
    assert any(item == "US7000004B1__1" and "sha256" in why for item, why in reasons)
    assert ("US7000005B1__1", "entry is a JSON list, not an object") in reasons
    assert ("US7000006B1__1", "entry repeats the field(s) image_url") in reasons
    assert ("US7000007B1__1", "field brief_description is a JSON int, not a string") in reasons
    assert len(rejected) == 15


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not valid JSON"), ('[{"image_url": "x"}]', "expected a JSON object keyed by image id")],
)
def test_an_unreadable_file_is_an_error_naming_it(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(PatentDescError, match=message) as caught:
        read_patentdesc(path)
    assert str(path) in str(caught.value)


def test_fetch_images_downloads_what_it_can_and_rejects_the_rest(server: TestServer, tmp_path: Path) -> None:
    images = {n: png_bytes(n * 20) for n in range(8)}
    ok_url = server.add("/img/US1000000B2-D00001.png", images[0], content_type="image/png")
    jpeg_url = server.add("/img/noext", images[1], content_type="image/jpeg")
    flaky_url = server.add("/img/flaky.png", images[2], faults=[Fault(status=500)])
    short_url = server.add("/img/short.png", images[3], faults=[Fault(truncate_to=50)])
    missing_url = server.add("/img/missing.png", b"", faults=[Fault(status=404)])
    down_url = server.add("/img/down.png", images[4], faults=[Fault(status=500)] * 5)
    slow_url = server.add("/img/slow.png", images[5], faults=[Fault(delay=3.0)] * 5)
    corrupt_url = server.add("/img/corrupt.png", images[6])
    entries = [
        PatentDescEntry("US1000000B2__1", ok_url, "b", "d", sha(images[0])),
        PatentDescEntry("US1000001B2__1", jpeg_url, "b", "d"),
        PatentDescEntry("US1000002B2__1", flaky_url, "b", "d"),
        PatentDescEntry("US1000003B2__1", short_url, "b", "d", sha(images[3])),
        PatentDescEntry("US1000004B2__1", missing_url, "b", "d"),
        PatentDescEntry("US1000005B2__1", down_url, "b", "d"),
        PatentDescEntry("US1000006B2__1", slow_url, "b", "d"),
        PatentDescEntry("US1000007B2__1", corrupt_url, "b", "d", sha(b"the published image")),
        PatentDescEntry("US1000008B2__1/../../x", ok_url, "b", "d"),  # built by hand, never read
    ]
    images_dir = tmp_path / "images"

    downloaded, rejected = fetch_images(
        entries, images_dir, concurrency=4, retry=FAST, timeout=0.3, progress=False
    )

    assert downloaded == {
        "US1000000B2__1": images_dir / "US1000000B2__1.png",
        "US1000001B2__1": images_dir / "US1000001B2__1.jpg",  # from the content type
        "US1000002B2__1": images_dir / "US1000002B2__1.png",
        "US1000003B2__1": images_dir / "US1000003B2__1.png",
    }
    for image_id, path in downloaded.items():
        assert path.read_bytes() == images[int(image_id[8])]
    by_id = {r.item: r for r in rejected}
    assert set(by_id) == {
        "US1000004B2__1",
        "US1000005B2__1",
        "US1000006B2__1",
        "US1000007B2__1",
        "US1000008B2__1/../../x",
    }
    assert all(r.stage == "download" for r in rejected)
    assert "HTTP 404" in by_id["US1000004B2__1"].reason
    assert (
        "HTTP 500" in by_id["US1000005B2__1"].reason
        and "gave up after 3 attempts" in by_id["US1000005B2__1"].reason
    )
    assert "timed out" in by_id["US1000006B2__1"].reason
    assert "checksum mismatch" in by_id["US1000007B2__1"].reason
    assert "path character" in by_id["US1000008B2__1/../../x"].reason
    assert by_id["US1000004B2__1"].source == missing_url
    assert server.count("/img/missing.png") == 1  # a 404 is not retried
    # Only finished images are in the folder: no partial file under an image's name.
    assert sorted(p.name for p in images_dir.iterdir() if not p.name.endswith(".part")) == sorted(
        p.name for p in downloaded.values()
    )
    assert not (tmp_path / "x").exists()


def test_fetch_images_resumes_a_batch(server: TestServer, tmp_path: Path) -> None:
    images = [png_bytes(n * 30) for n in range(4)]
    entries = [
        PatentDescEntry(f"US200000{n}B1__1", server.add(f"/{n}.png", images[n]), "b", "d", sha(images[n]))
        for n in range(4)
    ]
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    (images_dir / "US2000000B1__1.png").write_bytes(images[0])  # fetched by an earlier run
    (images_dir / "US2000001B1__1.png").write_bytes(b"damaged")  # wrong checksum: fetched again

    downloaded, rejected = fetch_images(entries, images_dir, concurrency=2, retry=FAST, progress=False)

    assert rejected == []
    assert [server.count(f"/{n}.png") for n in range(4)] == [0, 1, 1, 1]
    assert all(downloaded[e.image_id].read_bytes() == images[n] for n, e in enumerate(entries))
    before = len(server.requests)
    again, _ = fetch_images(entries, images_dir, retry=FAST, progress=False)
    assert again == downloaded and len(server.requests) == before  # nothing fetched twice
