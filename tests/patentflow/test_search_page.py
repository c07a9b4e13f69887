"""`patentflow serve`: the prior-art search page and its JSON API over an index of real design
grants (../shared/realdata), through a real uvicorn server that the command starts, FastAPI's
TestClient for the bad-input matrix, and Debian's chromium for the page itself."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from patent_assets import pipeline
from patent_assets.records import FigureRecord, read_figures
from patentflow.cli import app
from patentflow.web.app import Settings, create_app
from training.retrieval import search_index
from training.retrieval.model import build_encoder, preset, save_encoder

DESIGNS = "design_patents_with_drawings_2021"
# Three Locarno class 14 grants (recording and communication equipment) on both sides of BEFORE,
# and two of other classes on both sides: the date and the class filter each leave some out.
GRANTS = (
    "USD0910059-20210209",  # LOCARNO:1404, display screen GUI
    "USD0913174-20210316",  # LOCARNO:1403, display screen for automobile
    "USD0928145-20210817",  # LOCARNO:1402, tablet computer: the query's own patent, granted after BEFORE
    "USD0909824-20210209",  # LOCARNO:0703, sport spoon
    "USD0929296-20210831",  # LOCARNO:1216, wheel
)
QUERY = ("USD0928145-20210817", "USD0928145-20210817-D00002.TIF")  # the tablet's front view, as shipped
BEFORE, CLASS, STORED_CLASS = "2021-08-01", "14", "LOCARNO:14"
HIT_FIELDS = [
    "rank", "score", "image_id", "patent_id", "title", "grant_date", "classifications",
    "figure_labels", "brief_description", "generated_description", "image_url",
]  # fmt: skip
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def real_index(realdata: Path, ocr_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Five real design grants ingested (the session's OCR cache), with a stand-in PatentLMM text
    for one patent's figures, indexed by the tiny untrained encoder."""
    root = tmp_path_factory.mktemp("search-page")
    ingested = root / "ingested"
    pipeline.ingest(
        [realdata / DESIGNS / grant for grant in GRANTS], ingested, cache_dir=ocr_cache, workers=2
    )
    records = read_figures(ingested / pipeline.FIGURES)
    described = {
        r.image_id: f"A car display screen, {r.brief_description}" for r in records if "913174" in r.image_id
    }
    generated = root / "generated_descriptions.json"
    generated.write_text(json.dumps(described))
    encoder = save_encoder(build_encoder(preset("tiny"), seed=0), root / "encoder")
    index = root / "index"
    options = search_index.BuildOptions(generated_descriptions=generated)
    search_index.build_search_index(ingested / pipeline.FIGURES, encoder, index, options)
    return {
        "index": index,
        "records": records,
        "described": described,
        "query": realdata / DESIGNS / Path(*QUERY),
    }


def _allowed(records: list[FigureRecord], before: str, prefix: str) -> set[str]:
    return {
        r.image_id
        for r in records
        if r.grant_date < before and any(c.startswith(prefix) for c in r.classifications)
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(real_index: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`patentflow serve --index DIR --port PORT`, as a person starts it; the base URL."""
    home = tmp_path_factory.mktemp("serve-home")
    port = _free_port()
    log = home / "serve.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "patentflow.cli",
                "serve",
                "--index",
                str(real_index["index"]),
                "--port",
                str(port),
            ],
            env=os.environ | {"PATENTFLOW_HOME": str(home), "OMP_NUM_THREADS": "1"},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/api/index", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline or process.poll() is not None:
                raise RuntimeError(f"patentflow serve did not start:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # uvicorn shuts down on SIGTERM
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    assert f"http://127.0.0.1:{port}" in log.read_text()  # bound to this machine only, by default


def _search(url: str, sheets: list[Path] | None = None, **fields: str) -> httpx.Response:
    files = [("image", (sheet.name, sheet.read_bytes(), "image/tiff")) for sheet in sheets or []]
    return httpx.post(f"{url}/api/search", files=files or None, data=fields, timeout=60)


# ---- the API, on the real server ---------------------------------------------------------------


def test_a_real_sheet_with_a_date_and_a_class_finds_exactly_the_figures_both_allow(
    server: str, real_index: dict
) -> None:
    records = real_index["records"]
    allowed = _allowed(records, BEFORE, STORED_CLASS)
    # Both filters bite: the class alone and the date alone would each let more through.
    assert allowed < _allowed(records, "9999-01-01", STORED_CLASS)
    assert allowed < _allowed(records, BEFORE, "LOCARNO:")
    response = _search(server, [real_index["query"]], before=BEFORE, classification=CLASS, k="20")
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert all(list(hit) == HIT_FIELDS for hit in hits)
    assert {hit["image_id"] for hit in hits} == allowed  # exact search: every allowed figure, no other
    assert all(
        hit["grant_date"] < BEFORE and any(c.startswith(STORED_CLASS) for c in hit["classifications"])
        for hit in hits
    )
    assert [hit["rank"] for hit in hits] == list(range(1, len(hits) + 1))
    assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)
    by_id = {r.image_id: r for r in records}
    for hit in hits:
        record = by_id[hit["image_id"]]
        assert (hit["patent_id"], hit["title"], hit["figure_labels"]) == (
            record.patent_id,
            record.title,
            record.figure_labels,
        )
        assert hit["brief_description"] == record.brief_description
        assert hit["generated_description"] == real_index["described"].get(hit["image_id"], "")
    assert any(hit["generated_description"] for hit in hits) and not all(
        hit["generated_description"] for hit in hits
    )

    image = httpx.get(server + hits[0]["image_url"], timeout=30)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    stored = Image.open(by_id[hits[0]["image_id"]].image_path)
    assert Image.open(io.BytesIO(image.content)).size == stored.size
    thumbnail = httpx.get(server + hits[0]["image_url"], params={"max_side": 200}, timeout=30)
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) == 200


def test_two_views_are_one_query_and_a_text_searches_too(server: str, real_index: dict) -> None:
    folder = real_index["query"].parent
    views = [folder / "USD0928145-20210817-D00001.TIF", real_index["query"]]
    both = _search(server, views, k="5")
    assert both.status_code == 200, both.text
    # Each figure scores its best view: the fused list is the top 5 of both views' own lists.
    best: dict[str, float] = {}
    for view in views:
        for hit in _search(server, [view], k="5").json()["hits"]:
            best[hit["image_id"]] = max(best.get(hit["image_id"], -2.0), hit["score"])
    expected = sorted(best.items(), key=lambda item: -item[1])[:5]
    fused = both.json()["hits"]
    assert [hit["image_id"] for hit in fused] == [image_id for image_id, _ in expected]
    assert [hit["score"] for hit in fused] == pytest.approx([score for _, score in expected], abs=1e-5)
    text = _search(server, text="a wheel", k="3", before="2021-12-31")
    assert text.status_code == 200 and len(text.json()["hits"]) == 3


def test_a_patent_s_figures(server: str, real_index: dict) -> None:
    answer = httpx.get(f"{server}/api/patents/USD0913174S1/figures", timeout=30).json()
    expected = sorted(
        (r for r in real_index["records"] if r.patent_id == "USD0913174S1"), key=lambda r: r.image_id
    )
    assert [f["image_id"] for f in answer["figures"]] == [r.image_id for r in expected]
    assert [f["figure_labels"] for f in answer["figures"]] == [r.figure_labels for r in expected]
    assert answer["title"] == expected[0].title and "LOCARNO:1403" in answer["classifications"]
    assert httpx.get(server + answer["figures"][0]["image_url"], timeout=30).status_code == 200


# ---- bad input: a clear 4xx, and nothing else breaks -------------------------------------------


MEGABYTE = 1024 * 1024


@pytest.fixture(scope="module")
def client(real_index: dict) -> TestClient:
    loaded = search_index.SearchIndex.load(real_index["index"]).warm()
    return TestClient(create_app(loaded, Settings(max_upload_bytes=2 * MEGABYTE, max_views=4)))


def _bomb() -> bytes:
    """A PNG of 81 M pixels in a few kB: over the 60 M-pixel limit, decoded it would take 81 MB."""
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000), 1).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunks(total: int) -> Iterator[bytes]:
    """A body of `total` bytes sent without a Content-Length (chunked): only counting stops it."""
    yield b'--edge\r\nContent-Disposition: form-data; name="image"; filename="big.tif"\r\n\r\n'
    for _ in range(total // MEGABYTE):
        yield b"\0" * MEGABYTE


# Each bad search: the request (made when the test runs), the status and a part of the reason.
BAD_POSTS = {
    "not an image": (lambda: {"files": [("image", ("notes.png", b"meeting notes", "image/png"))]}, 400, "notes.png: not an image"),
    "a decompression bomb": (lambda: {"files": [("image", ("bomb.png", _bomb(), "image/png"))]}, 400, "bomb.png: 9000x9000 pixels, over the limit"),
    # Refused from its Content-Length before a byte is read: FastAPI's own plain-text answer.
    "an oversized upload": (lambda: {"files": [("image", ("big.tif", b"\0" * 3 * MEGABYTE, "image/tiff"))]}, 413, "Content Too Large"),
    "an oversized upload, chunked": (lambda: {"content": _chunks(3 * MEGABYTE), "headers": {"content-type": "multipart/form-data; boundary=edge"}}, 413, "over the limit of 2 MB"),
    "too many views": (lambda: {"files": [("image", (f"v{i}.png", b"x", "image/png")) for i in range(5)]}, 400, "Too many files"),
    "a bad date": (lambda: {"data": {"text": "screen", "before": "2021-02-30"}}, 400, "before: '2021-02-30' is not a date"),
    "a bad class": (lambda: {"data": {"text": "screen", "classification": "LOCARNO:1"}}, 400, "a Locarno class is 2 digits"),
    "a class of no scheme": (lambda: {"data": {"text": "screen", "classification": "display"}}, 400, "not a class of LOCARNO"),
    "k of zero": (lambda: {"data": {"text": "screen", "k": "0"}}, 400, "k: 0 is out of range"),
    "k not a number": (lambda: {"data": {"text": "screen", "k": "many"}}, 400, "k: Input should be a valid integer"),
    "drawings and a text": (lambda: {"files": [("image", ("q.tif", b"x", "image/tiff"))], "data": {"text": "screen"}}, 400, "not both"),
    "nothing to search with": (lambda: {"data": {"k": "5"}}, 400, "not both and not neither"),
}  # fmt: skip
BAD_GETS = {
    "a path in the image id": ("/api/figures/..%2F..%2Fetc%2Fpasswd/image", 400, "is a path, not an image id"),
    "an unknown image id": ("/api/figures/USD0000000S1__1/image", 404, "no figure 'USD0000000S1__1'"),
    "a thumbnail too small": ("/api/figures/USD0910059S1__1/image?max_side=2", 400, "max_side: 2 is out of range"),
    "an unknown patent": ("/api/patents/USD0000000S1/figures", 404, "no patent 'USD0000000S1'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_POSTS))
def test_a_bad_search_is_refused_with_its_reason_and_the_next_one_works(
    case: str, client: TestClient, real_index: dict
) -> None:
    request, status, reason = BAD_POSTS[case]
    response = client.post("/api/search", **request())
    assert response.status_code == status and reason in response.text, response.text
    query = real_index["query"]
    good = client.post(
        "/api/search", files=[("image", (query.name, query.read_bytes(), "image/tiff"))], data={"k": "3"}
    )
    assert good.status_code == 200 and len(good.json()["hits"]) == 3


@pytest.mark.parametrize("case", list(BAD_GETS))
def test_a_bad_figure_or_patent_is_refused_with_its_reason(case: str, client: TestClient) -> None:
    path, status, reason = BAD_GETS[case]
    response = client.get(path)
    assert response.status_code == status and reason in response.json()["detail"], response.text


def test_serve_refuses_a_missing_index_and_listens_on_this_machine_by_default(tmp_path: Path) -> None:
    import inspect

    from patentflow.cli import serve

    result = CliRunner().invoke(app, ["serve", "--index", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a search index" in result.output
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(serve).parameters["port"].default == 8000


# ---- the page, in Debian's chromium ------------------------------------------------------------


@pytest.fixture(scope="module")
def browser_page(server: str) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        yield page
        browser.close()


@pytest.mark.slow
def test_the_page_searches_a_real_sheet_with_a_date_and_a_class_opens_a_patent_and_exports_csv(
    server: str, browser_page, real_index: dict, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = browser_page
    allowed = _allowed(real_index["records"], BEFORE, STORED_CLASS)
    page.goto(server, wait_until="networkidle")
    page.set_input_files("#image", str(real_index["query"]))
    page.fill("#before", BEFORE)
    page.fill("#classification", CLASS)  # a person's spelling of Locarno class 14
    page.fill("#k", "20")
    page.click("#search")
    expect(page.locator("#status")).to_have_text(f"{len(allowed)} figures", timeout=60_000)

    cards = page.locator("#results .card")
    shown = cards.evaluate_all(
        "cards => cards.map(c => [c.dataset.imageId, c.dataset.grantDate, c.dataset.classifications])"
    )
    assert {image_id for image_id, _, _ in shown} == allowed
    assert all(granted < BEFORE and STORED_CLASS in classes for _, granted, classes in shown)
    page.wait_for_function(
        "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=60_000,
    )  # the figures themselves render, not their alt text
    assert "PatentLMM: A car display screen" in page.locator("#results").inner_text()
    page.screenshot(path=str(tmp_path / "results.png"), full_page=True)

    patent = "USD0913174S1"
    page.locator(f"#results .card[data-patent-id='{patent}'] .open-patent").first.click()
    dialog = page.locator("#patent")
    dialog.wait_for(state="visible")
    figures = [r for r in real_index["records"] if r.patent_id == patent]
    assert page.locator("#patent-figures .patent-figure").count() == len(figures)
    assert patent in page.locator("#patent-title").inner_text()
    page.click("#patent-close")
    dialog.wait_for(state="hidden")

    with page.expect_download() as download:
        page.click("#export-csv")
    assert download.value.suggested_filename == "prior-art-search.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    assert list(rows[0]) == HIT_FIELDS and {row["image_id"] for row in rows} == allowed
    assert all(row["grant_date"] < BEFORE and STORED_CLASS in row["classifications"] for row in rows)
    assert all(row["image_url"].startswith(f"{server}/api/figures/") for row in rows)

    page.fill("#classification", "LOCARNO:1")  # a bad class: the page shows the server's reason
    page.click("#search")
    expect(page.get_by_role("alert")).to_contain_text("a Locarno class is 2 digits", timeout=30_000)
