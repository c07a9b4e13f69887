"""The Dagster UI, driven in headless Chromium (Debian's `chromium`): the asset graph and a
materialization's metadata (row counts, rejected counts, the sample figure, check results)
render for a user."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from patent_assets.layout import Home
from tests.conftest import share_ocr_cache
from training.describe.distributed import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.slow


def _graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory, ocr_cache: Path) -> Iterator[str]:
    root = share_ocr_cache(tmp_path_factory.mktemp("ui-home"), ocr_cache)
    env = os.environ | {"PATENTFLOW_HOME": str(root), "DAGSTER_HOME": str(root / "dagster")}
    # one small release, materialized by the main job into this home's persistent instance
    # (without the real sample: a second release would only add a minute of OCR here)
    run = ["run", "--releases", "1", "--patents", "3", "--no-train", "--no-real-sample"]
    subprocess.run(
        [sys.executable, "-m", "patentflow.cli", *run],
        env=env,
        check=True,
        timeout=600,
    )
    assert Home(root).dagster.is_dir()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "patentflow.cli", "ui", "--port", str(port)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("the Dagster UI did not start") from None
                time.sleep(1)
        _graphql(url, "mutation { setNuxSeen }")  # the first-visit community modal would cover the page
        yield url
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def page(dagster_ui: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        yield page
        browser.close()


def test_asset_graph_renders(dagster_ui: str, page, tmp_path: Path) -> None:
    page.goto(f"{dagster_ui}/asset-groups", wait_until="networkidle")
    for group in ("release", "dataset"):
        page.get_by_text(group, exact=True).first.wait_for(timeout=60_000)
    page.goto(
        f"{dagster_ui}/locations/orchestration.definitions/asset-groups/release", wait_until="networkidle"
    )
    for asset in ("uspto_release", "release_documents", "sheet_images", "sheet_ocr", "release_figures"):
        page.get_by_text(asset, exact=True).first.wait_for(timeout=60_000)
    page.get_by_text("1 / 1 Passed").first.wait_for(timeout=60_000)  # the check's result, on the graph
    page.screenshot(path=str(tmp_path / "graph.png"))


def test_materialization_metadata_renders(dagster_ui: str, page, tmp_path: Path) -> None:
    page.goto(f"{dagster_ui}/assets/release_figures?view=events", wait_until="networkidle")
    for label in ("figures", "labels_aligned", "rejected", "dvc_md5", "dvc_commit"):
        page.get_by_text(label, exact=True).first.wait_for(timeout=60_000)
    page.get_by_text("Show Markdown").first.click()  # the sample figure with its description
    sample = page.locator("img[src^='data:image/png;base64']")
    sample.first.wait_for(timeout=60_000)
    assert sample.first.evaluate("img => img.naturalWidth") > 0  # the sample figure really renders
    dialog = page.get_by_role("dialog")
    assert re.search(r"FIG", dialog.inner_text()), "the sample's brief description is shown with it"
    page.screenshot(path=str(tmp_path / "metadata.png"), full_page=True)


def test_check_results_render(dagster_ui: str, page) -> None:
    page.goto(f"{dagster_ui}/assets/release_figures?view=checks", wait_until="networkidle")
    # the check's own row in the list says it succeeded (a bare "Passed" also matches metadata)
    row = page.locator("[class*=checkRow]").filter(has_text="release_figures_valid")
    row.filter(has_text="Succeeded").first.wait_for(timeout=60_000)
    assert "Failed" not in row.first.inner_text()
