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
    TrainingLauncher,
)
from orchestration.sensors import new_uspto_releases


def build_definitions(
    release_source: ReleaseSource | None = None,
    home: PatentflowHome | None = None,
    settings: PatentLMMSettings | None = None,
    retrieval: RetrievalSettings | None = None,
    launcher: TrainingLauncher | None = None,
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
            # each training step through Pipes: a subprocess here, a pod with TrainingLauncher(kind="k8s")
            "launcher": launcher or TrainingLauncher.from_environment(home),
        },
    )


defs = build_definitions()
