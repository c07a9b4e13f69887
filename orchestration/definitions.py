"""The Dagster code location: `dagster dev -m orchestration.definitions`."""

from __future__ import annotations

import dagster as dg

from orchestration import assets, checks, model_assets, retrieval_assets
from orchestration.jobs import build_dataset, ingest_release
from orchestration.resources import (
    DataVersioning,
    LandingDirectory,
    MlflowTracking,
    PatentflowHome,
    PatentLMMSettings,
    ReleaseSource,
    RetrievalSettings,
)
from orchestration.sensors import new_uspto_releases


def build_definitions(
    release_source: ReleaseSource | None = None,
    home: PatentflowHome | None = None,
    settings: PatentLMMSettings | None = None,
    retrieval: RetrievalSettings | None = None,
) -> dg.Definitions:
    """The graph with its resources; tests pass another release source, home or model settings."""
    home = home or PatentflowHome()
    return dg.Definitions(
        assets=dg.load_assets_from_modules([assets, model_assets, retrieval_assets]),
        asset_checks=dg.load_asset_checks_from_modules([checks, model_assets, retrieval_assets]),
        jobs=[
            ingest_release,
            build_dataset,
            model_assets.retrain_patentlmm,
            retrieval_assets.retrain_retrieval,
        ],
        schedules=[model_assets.weekly_retrain],
        sensors=[new_uspto_releases],
        resources={
            "home": home,
            "release_source": release_source or LandingDirectory(),
            "dvc": DataVersioning(home=home),
            "mlflow": MlflowTracking(home=home),
            "settings": settings or PatentLMMSettings(),
            "retrieval": retrieval or RetrievalSettings(),
            # training runs in a subprocess (DeepSpeed launcher); Dagster's K8s/Pipes clients scale it out
            "pipes": dg.PipesSubprocessClient(),
        },
    )


defs = build_definitions()
