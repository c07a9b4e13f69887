"""Helpers of the training assets: read an upstream asset's metadata, launch a job through Pipes."""
# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

from pathlib import Path

import dagster as dg

from orchestration.resources import PatentflowHome, TrainingLauncher
from training import entry, job


def latest(context: dg.AssetExecutionContext, asset: str, key: str = "path") -> str:
    event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"{asset} has not been materialized yet: materialize it first")
    return str(event.asset_materialization.metadata[key].value)


def run_job(
    launcher: TrainingLauncher,
    context: dg.AssetExecutionContext,
    command: str,
    config: job.JobConfig,
    config_path: Path,
    extra: dict | None = None,
) -> dg.MaterializeResult:
    """Run `python -m training COMMAND --config CONFIG` through Pipes (a subprocess or a pod, as
    the launcher says); add our own metadata.

    `config` is the command's own config class, built by the asset: a key the job does not know
    fails here, in the Dagster process, not in the launched job."""
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config.to_json(config_path)
    reported = launcher.run(context, entry.command_line(command, config_path))
    return dg.MaterializeResult(metadata={**(reported.metadata or {}), **(extra or {})})


def work_dir(home: PatentflowHome, context: dg.AssetExecutionContext) -> Path:
    return home.home.store / "runs" / context.asset_key.to_user_string() / context.run.run_id[:8]
