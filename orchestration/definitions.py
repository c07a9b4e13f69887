"""The Dagster code location: `dagster dev -m orchestration.definitions`."""

from __future__ import annotations

import dagster as dg

from orchestration import assets, checks
from orchestration.jobs import build_dataset, ingest_release
from orchestration.resources import DataVersioning, LandingDirectory, PatentflowHome, ReleaseSource
from orchestration.sensors import new_uspto_releases


def build_definitions(
    release_source: ReleaseSource | None = None, home: PatentflowHome | None = None
) -> dg.Definitions:
    """The graph with its resources; tests pass another release source or home."""
    home = home or PatentflowHome()
    return dg.Definitions(
        assets=dg.load_assets_from_modules([assets]),
        asset_checks=dg.load_asset_checks_from_modules([checks]),
        jobs=[ingest_release, build_dataset],
        sensors=[new_uspto_releases],
        resources={
            "home": home,
            "release_source": release_source or LandingDirectory(),
            "dvc": DataVersioning(home=home),
        },
    )


defs = build_definitions()
