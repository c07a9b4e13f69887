"""Jobs: ingest one release (partitioned), and rebuild the dataset across releases."""

from __future__ import annotations

import dagster as dg

from orchestration.assets import DATASET_GROUP, RELEASE_GROUP

ingest_release = dg.define_asset_job(
    "ingest_release",
    selection=dg.AssetSelection.groups(RELEASE_GROUP),
    description="Download, parse, image, OCR and align one USPTO release; validate it.",
)

build_dataset = dg.define_asset_job(
    "build_dataset",
    selection=dg.AssetSelection.groups(DATASET_GROUP),
    description="Merge the validated releases into the split figure dataset and PatentLMM's LLaVA JSON.",
)
