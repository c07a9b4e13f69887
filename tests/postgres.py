"""A real PostgreSQL server for tests (Debian's `postgresql`), on 127.0.0.1 and a free port.

    with postgres_server() as server:
        url = server.create_database("dagster")   # postgresql://postgres@127.0.0.1:PORT/dagster

The cluster lives in a fresh temporary directory with trust authentication for local TCP and is
removed at the end. PostgreSQL refuses to run as root, so under root (CI, containers) its
programs run as the `postgres` system user that the Debian package creates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from training.describe.distributed import free_port

VERSIONS = Path("/usr/lib/postgresql")


def _bin() -> Path:
    installed = sorted(VERSIONS.glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not installed:
        pytest.fail("PostgreSQL is not installed: `scripts/ensure-system-deps.sh --test` installs it")
    return installed[-1].parent


@dataclass
class Server:
    root: Path
    port: int
    bin: Path

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess:
        command = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def create_database(self, name: str) -> str:
        self.run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def query(self, database: str, sql: str) -> list[str]:
        done = self.run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database, "-Atc", sql
        )
        return done.stdout.splitlines()


@contextmanager
def postgres_server() -> Iterator[Server]:
    root = Path(tempfile.mkdtemp(prefix="patentflow-postgres-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = Server(root, free_port(), _bin())
    data = root / "data"
    try:
        server.run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        # -F: no fsync (a test cluster); -k: the socket in the cluster's own folder
        options = f"-p {server.port} -h 127.0.0.1 -k {root} -F"
        server.run("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-w", "-o", options, "start")
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            with suppress(RuntimeError):
                server.run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
