"""New USPTO releases become partitions and runs; nothing is skipped, nothing runs twice."""
# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

import json

import dagster as dg

from orchestration.assets import releases
from orchestration.jobs import ingest_release
from orchestration.resources import ReleaseSource


def new_release_keys(instance: dg.DagsterInstance, source: ReleaseSource) -> list[str]:
    """Releases in the source that are not yet partitions, oldest first.

    Deciding by what is known (the partitions), not by a timestamp or the newest key seen,
    means a late-arriving older release is still picked up.
    """
    known = set(instance.get_dynamic_partitions(releases.name))
    return sorted({r.key for r in source.list_releases()} - known)


@dg.sensor(
    job=ingest_release,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the release source; adds a partition and requests the ingest run for each new release.",
)
def new_uspto_releases(context: dg.SensorEvaluationContext, release_source: ReleaseSource) -> dg.SensorResult:
    new = new_release_keys(context.instance, release_source)
    if not new:
        return dg.SensorResult(skip_reason="no new release in the source")
    # run_key = the release: even if the partition request were replayed, Dagster launches
    # each release's run once. The cursor only records what was seen, for the UI.
    return dg.SensorResult(
        dynamic_partitions_requests=[releases.build_add_request(new)],
        run_requests=[dg.RunRequest(partition_key=key, run_key=f"release:{key}") for key in new],
        cursor=json.dumps({"last_added": new}),
    )
