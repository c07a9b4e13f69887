from __future__ import annotations

from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
# The real USPTO files sit beside the project (../shared/realdata): read, never copied.
REALDATA = PROJECT.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    assert REALDATA.is_dir(), f"real test data not found at {REALDATA}"
    return REALDATA
