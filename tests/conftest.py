from __future__ import annotations

from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
# The real USPTO files sit beside the project (../shared/realdata): read, never copied.
REALDATA = SHARED / "realdata"
ALIGNMENT_SCORER = SHARED / "tools" / "score_alignment.py"


@pytest.fixture(scope="session")
def realdata() -> Path:
    assert REALDATA.is_dir(), f"real test data not found at {REALDATA}"
    return REALDATA


@pytest.fixture(autouse=True)
def patentflow_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own $PATENTFLOW_HOME: no test reads or writes the developer's state."""
    home = tmp_path_factory.mktemp("patentflow-home")
    monkeypatch.setenv("PATENTFLOW_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return home
