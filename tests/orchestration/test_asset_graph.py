"""The asset graph as a snapshot: a change to keys, deps, checks, partitions or automation
shows up in review. Regenerate deliberately with `UPDATE_SNAPSHOTS=1 pytest tests/orchestration/test_asset_graph.py`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from orchestration.definitions import defs

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def graph_description(definitions: dg.Definitions) -> dict:
    graph = definitions.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        assets[key.to_user_string()] = {
            "deps": sorted(d.to_user_string() for d in node.parent_keys),
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "partitions": getattr(partitions, "name", None)
            or (type(partitions).__name__ if partitions else None),
            "automation": str(
                node.automation_condition.get_label() or type(node.automation_condition).__name__
            )
            if node.automation_condition
            else None,
        }
    checks = {}
    for check_key in sorted(graph.asset_check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name)):
        spec = graph.get_check_spec(check_key)
        checks[f"{check_key.asset_key.to_user_string()}:{check_key.name}"] = {"blocking": spec.blocking}
    repo = definitions.get_repository_def()
    return {
        "assets": assets,
        "checks": checks,
        "jobs": sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")),
        "sensors": sorted(s.name for s in repo.sensor_defs),
        "schedules": sorted(s.name for s in repo.schedule_defs),
    }


def test_asset_graph_matches_snapshot() -> None:
    current = graph_description(defs)
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert SNAPSHOT.exists(), (
        "no snapshot yet: run UPDATE_SNAPSHOTS=1 pytest tests/orchestration/test_asset_graph.py"
    )
    assert current == json.loads(SNAPSHOT.read_text()), (
        "the asset graph changed: if deliberate, run UPDATE_SNAPSHOTS=1 pytest tests/orchestration/test_asset_graph.py"
    )


def test_definitions_load_without_error() -> None:
    dg.Definitions.validate_loadable(defs)
