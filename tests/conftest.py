from __future__ import annotations

import os
from pathlib import Path

import pytest

from patent_assets.layout import Home

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
# The real USPTO files sit beside the project (../shared/realdata): read, never copied.
REALDATA = SHARED / "realdata"
ALIGNMENT_SCORER = SHARED / "tools" / "score_alignment.py"


@pytest.fixture(scope="session")
def realdata() -> Path:
    assert REALDATA.is_dir(), f"real test data not found at {REALDATA}"
    return REALDATA


@pytest.fixture(scope="session")
def ocr_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One OCR cache for the whole session, so tesseract reads each real sheet once, not once per
    test file. Its entries are keyed by the image's bytes and the OCR settings, so a hit is what a
    cold read gives; tests/patent_assets/test_ocr.py reads into a cold cache of its own. Under
    pytest-xdist the workers share it too (entries are written to a temporary name and renamed)."""
    root = tmp_path_factory.getbasetemp()
    cache = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "ocr-cache"
    cache.mkdir(exist_ok=True)
    return cache


def share_ocr_cache(home: Path, cache: Path) -> Path:
    """Point a $PATENTFLOW_HOME's OCR cache at the session's."""
    link = Home(home).ocr_cache
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(cache, target_is_directory=True)
    return home


@pytest.fixture(autouse=True)
def patentflow_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, ocr_cache: Path
) -> Path:
    """Every test gets its own $PATENTFLOW_HOME: no test reads or writes the developer's state
    (the content-addressed OCR cache excepted, shared by the session)."""
    home = share_ocr_cache(tmp_path_factory.mktemp("patentflow-home"), ocr_cache)
    monkeypatch.setenv("PATENTFLOW_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return home
