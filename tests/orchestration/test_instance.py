"""The Dagster instance by configuration: local SQLite by default; with DAGSTER_POSTGRES_URL, runs,
events and dynamic partitions of `patentflow run` in a real PostgreSQL server, nothing in SQLite.
And the weekly schedule, evaluated for a given time."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from orchestration.instance import LOCAL_CONFIG, POSTGRES_CONFIG, POSTGRES_URL, driver_url, instance_config
from orchestration.model_assets import weekly_retrain
from tests.conftest import PROJECT
from tests.postgres import postgres_server


def test_the_environment_chooses_the_instance_file() -> None:
    assert instance_config({}) == LOCAL_CONFIG
    assert instance_config({POSTGRES_URL: "postgresql://u@127.0.0.1:5432/dagster"}) == POSTGRES_CONFIG
    with pytest.raises(ValueError, match=r"DAGSTER_POSTGRES_URL='mysql://x' is not a postgresql://"):
        instance_config({POSTGRES_URL: "mysql://x"})
    assert driver_url("postgres://u:p@h:1/db") == "postgresql+psycopg2://u:p@h:1/db"


def test_patentflow_run_keeps_runs_and_events_in_postgresql(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with postgres_server() as server:
        url = server.create_database("dagster")
        env = {
            **os.environ,
            "PATENTFLOW_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster"),
            POSTGRES_URL: url,
        }
        command = [
            sys.executable,
            "-m",
            "patentflow.cli",
            "run",
            "--no-train",
            "--releases",
            "1",
            "--patents",
            "2",
        ]
        done = subprocess.run(
            [*command, "--no-real-sample"], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "dataset:    5 figures" in done.stdout, done.stdout
        jobs = server.query("dagster", "SELECT pipeline_name, status FROM runs ORDER BY create_timestamp")
        assert jobs == ["ingest_release|SUCCESS", "build_dataset|SUCCESS"], jobs
        assert server.query("dagster", "SELECT partition FROM dynamic_partitions") == ["2024-01-02"]
        materialized = server.query(
            "dagster", "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
        )
        assert int(materialized[0]) >= 5

        os.environ[POSTGRES_URL] = driver_url(url)  # the same instance, read back through Dagster
        try:
            with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
                assert type(instance.run_storage).__name__ == "PostgresRunStorage"
                assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
                assert len(instance.get_runs()) == 2
        finally:
            del os.environ[POSTGRES_URL]
    local = [
        p.relative_to(home) for p in (home / "dagster").rglob("*") if p.suffix == ".db" or p.name == "runs"
    ]
    assert local == [], f"SQLite storage under DAGSTER_HOME: {local}"
    assert (home / "dagster" / "dagster.yaml").read_text() == POSTGRES_CONFIG.read_text()


def test_the_weekly_schedule_requests_the_retraining_on_tuesday_morning() -> None:
    tuesday = datetime(2026, 12, 8, 6, 0, tzinfo=UTC)
    assert weekly_retrain.cron_schedule == "0 6 * * 2" and tuesday.weekday() == 1
    # The context enters an instance of its own: closed with it, it leaves no current
    # DefsStateStorage behind for the next test that loads Definitions in this process.
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(instance=instance, scheduled_execution_time=tuesday) as context,
    ):
        [request] = weekly_retrain.evaluate_tick(context).run_requests
    assert weekly_retrain.job_name == "retrain_patentlmm" and request.job_name in (None, "retrain_patentlmm")
