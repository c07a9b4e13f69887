"""The production MLflow launch (`mlflow/server.sh`) for tests, and an S3 API for its artifacts.

    with s3_server("patentflow") as s3, postgres_server() as db:
        env = {**s3.env, "MLFLOW_BACKEND_STORE_URI": driver_url(db.create_database("mlflow")),
               "MLFLOW_ARTIFACTS_DESTINATION": "s3://patentflow/mlflow"}
        with mlflow_server(tmp_path, env) as url:     # http://127.0.0.1:PORT
            ...

`s3_server` is moto's S3 server on 127.0.0.1 (a real HTTP S3 API; any keys are accepted) with
one bucket; its `env` is what a client or the MLflow server needs to reach it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import PROJECT
from training.describe.distributed import free_port

# STACK.md: ~22 s on a fresh SQLite database; well past that, the server is broken, not slow.
START_LIMIT_S = 120.0


@dataclass
class S3:
    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "patentflow-test",
            "AWS_SECRET_ACCESS_KEY": "patentflow-test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def keys(self, prefix: str = "") -> list[str]:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, **_keys(self.env))
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _keys(env: Mapping[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


@contextmanager
def s3_server(bucket: str) -> Iterator[S3]:
    import boto3
    from moto import server as moto_server

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = S3(f"http://{host}:{port}", bucket)
        boto3.client("s3", endpoint_url=s3.endpoint, **_keys(s3.env)).create_bucket(Bucket=bucket)
        yield s3
    finally:
        server.stop()


@contextmanager
def mlflow_server(log_dir: Path, env: Mapping[str, str]) -> Iterator[str]:
    """`mlflow/server.sh` on a free port of 127.0.0.1 with `env` (its backend, artifacts, keys)."""
    port = free_port()
    environment = {**os.environ, "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1", **env}
    environment.pop("MLFLOW_TRACKING_URI", None)
    log_path = Path(log_dir) / f"mlflow-server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["bash", str(PROJECT / "mlflow" / "server.sh")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(process, url, log_path)
            yield url
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _wait_healthy(process: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_LIMIT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"mlflow server did not answer /health in {START_LIMIT_S:.0f} s: {log_path.read_text()[-2000:]}"
            )
        time.sleep(0.3)
