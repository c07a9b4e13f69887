"""The Dagster instance of `patentflow run` and `patentflow ui`: its `dagster.yaml`, chosen by the
environment from the files in `deploy/`.

Without `DAGSTER_POSTGRES_URL`: `deploy/dagster.yaml`, Dagster's local storage (SQLite) under
`$PATENTFLOW_HOME/dagster`, the embedded default. With it (`postgresql://user@host:port/db`):
`deploy/dagster-postgres.yaml`, runs, event logs and schedules in that database
(dagster-postgres), nothing in local SQLite. dagster-postgres speaks through psycopg2 while
SQLAlchemy 2.1 gives a bare `postgresql://` URL to psycopg 3, so the URL's driver is named
(`postgresql+psycopg2://`) in the environment the CLI passes on to Dagster and its processes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from patent_assets.records import atomic_write

POSTGRES_URL = "DAGSTER_POSTGRES_URL"
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
LOCAL_CONFIG = DEPLOY / "dagster.yaml"
POSTGRES_CONFIG = DEPLOY / "dagster-postgres.yaml"


DRIVER = "postgresql+psycopg2"


def driver_url(url: str) -> str:
    """`postgresql://user@host:port/db` with the driver dagster-postgres needs; other forms refused."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in ("postgresql", "postgres", DRIVER) or not rest:
        raise ValueError(f"{POSTGRES_URL}={url!r} is not a postgresql://user@host:port/db URL")
    return f"{DRIVER}://{rest}"


def instance_config(environ: Mapping[str, str] = os.environ) -> Path:
    """The deploy/ file the environment selects."""
    url = environ.get(POSTGRES_URL, "")
    if url:
        driver_url(url)  # a clear error now, not a driver error inside Dagster later
    return POSTGRES_CONFIG if url else LOCAL_CONFIG


def configure(dagster_home: Path, environ: MutableMapping[str, str] = os.environ) -> Path:
    """Write `dagster_home/dagster.yaml` from the selected file (only when it differs), and name
    the PostgreSQL driver in `environ` (the CLI's own, inherited by Dagster's processes)."""
    config = instance_config(environ)
    if environ.get(POSTGRES_URL):
        environ[POSTGRES_URL] = driver_url(environ[POSTGRES_URL])
    wanted = config.read_text(encoding="utf-8")
    path = Path(dagster_home) / "dagster.yaml"
    if not path.is_file() or path.read_text(encoding="utf-8") != wanted:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as handle:
            handle.write(wanted)
    return path
