"""The data half of the asset graph. Each asset is a short function over a `patent_assets` call.

Per release (one dynamic partition per USPTO weekly release):
    uspto_release -> release_documents -> sheet_images -> sheet_ocr -> release_figures
Across releases (rebuilt when a release's figures change):
    figure_dataset (all validated releases, splits) -> llava_dataset
Every output directory is versioned with DVC; its hash is in the materialization metadata.
"""
# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

import os
import shutil
from pathlib import Path

import dagster as dg

from orchestration.metadata import dataset_metadata, sample_figure_markdown, step_metadata, version_metadata
from orchestration.resources import DataVersioning, PatentflowHome, ReleaseSource
from patent_assets import dataset, pipeline
from patent_assets.records import read_figures

releases = dg.DynamicPartitionsDefinition(name="releases")

RELEASE_GROUP = "release"
DATASET_GROUP = "dataset"


def _version(context: dg.AssetExecutionContext, dvc: DataVersioning, out_dir: Path) -> dict:
    key = context.partition_key if context.has_partition_key else "all"
    return version_metadata(dvc.track(out_dir, f"{context.asset_key.to_user_string()} {key}"))


@dg.asset(
    partitions_def=releases,
    group_name=RELEASE_GROUP,
    kinds={"uspto"},
    description="The weekly USPTO release file, fetched from the release source and kept as received.",
)
def uspto_release(
    context: dg.AssetExecutionContext,
    home: PatentflowHome,
    release_source: ReleaseSource,
    dvc: DataVersioning,
) -> dg.MaterializeResult:
    out_dir = home.home.release_dir(context.partition_key, "raw")
    fetched = release_source.fetch(context.partition_key, home.home.root / "downloads")
    target = out_dir / fetched.name
    if not target.exists() or target.stat().st_size != fetched.stat().st_size:
        out_dir.mkdir(parents=True, exist_ok=True)
        _link_or_copy(fetched, target)
    return dg.MaterializeResult(
        metadata={"file": fetched.name, "bytes": target.stat().st_size, **_version(context, dvc, out_dir)}
    )


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    if src.is_dir():
        shutil.copytree(src, tmp)
    else:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
    os.replace(tmp, dst)


@dg.asset(
    partitions_def=releases,
    deps=[uspto_release],
    group_name=RELEASE_GROUP,
    kinds={"xml"},
    description="Every grant (us-patent-grant, DTD v4.0-v4.7) and published application (us-patent-application) "
    "of the release parsed; other document types skipped and counted, bad documents rejected.",
)
def release_documents(
    context: dg.AssetExecutionContext, home: PatentflowHome, dvc: DataVersioning
) -> dg.MaterializeResult:
    raw = sorted(home.home.release_dir(context.partition_key, "raw").iterdir())
    result = pipeline.parse_sources(raw, home.home.release_dir(context.partition_key, "documents"))
    return dg.MaterializeResult(metadata=step_metadata(result) | _version(context, dvc, result.out_dir))


@dg.asset(
    partitions_def=releases,
    deps=[release_documents],
    group_name=RELEASE_GROUP,
    kinds={"pillow"},
    description="Drawing sheets (1-bit CCITT G4 TIFF) as upright PNGs; landscape sheets rotated, bombs and corrupt files rejected.",
)
def sheet_images(
    context: dg.AssetExecutionContext, home: PatentflowHome, dvc: DataVersioning
) -> dg.MaterializeResult:
    key = context.partition_key
    result = pipeline.convert_sheets(
        home.home.release_dir(key, "documents"), home.home.release_dir(key, "sheet_images")
    )
    return dg.MaterializeResult(metadata=step_metadata(result) | _version(context, dvc, result.out_dir))


@dg.asset(
    partitions_def=releases,
    deps=[sheet_images],
    group_name=RELEASE_GROUP,
    kinds={"tesseract"},
    description="OCR words and 0-1000 boxes of every sheet (LayoutLMv3's input), cached by image content hash.",
)
def sheet_ocr(
    context: dg.AssetExecutionContext, home: PatentflowHome, dvc: DataVersioning
) -> dg.MaterializeResult:
    key = context.partition_key
    result = pipeline.ocr_sheets(
        home.home.release_dir(key, "sheet_images"), home.home.release_dir(key, "ocr"), home.home.ocr_cache
    )
    return dg.MaterializeResult(metadata=step_metadata(result) | _version(context, dvc, result.out_dir))


@dg.asset(
    partitions_def=releases,
    deps=[release_documents, sheet_images, sheet_ocr],
    group_name=RELEASE_GROUP,
    kinds={"pandas"},
    description="One record per figure image: FIG sentences of the brief description aligned to the sheets that print them.",
)
def release_figures(
    context: dg.AssetExecutionContext, home: PatentflowHome, dvc: DataVersioning
) -> dg.MaterializeResult:
    key = context.partition_key
    result = pipeline.build_figures(
        home.home.release_dir(key, "documents"),
        home.home.release_dir(key, "sheet_images"),
        home.home.release_dir(key, "ocr"),
        home.home.release_dir(key, "figures"),
        release=key,
        cache_dir=home.home.ocr_cache,  # the extra OCR passes (turned sheets, second chances), as sheet_ocr's
    )
    records = read_figures(result.out_dir / pipeline.FIGURES)
    metadata = step_metadata(result) | {"sample": sample_figure_markdown(records)}
    return dg.MaterializeResult(metadata=metadata | _version(context, dvc, result.out_dir))


@dg.asset(
    deps=[release_figures],
    group_name=DATASET_GROUP,
    kinds={"pandas"},
    automation_condition=dg.AutomationCondition.eager(),
    description="All validated releases' figures in one set, split train/val/test by a stable hash of the patent id.",
)
def figure_dataset(
    context: dg.AssetExecutionContext, home: PatentflowHome, dvc: DataVersioning
) -> dg.MaterializeResult:
    built = dataset.build_dataset(home.home.releases, home.home.figures_dir)
    context.log.info(
        f"releases used: {built.releases_used}; left out (not validated): {built.releases_skipped}"
    )
    return dg.MaterializeResult(metadata=dataset_metadata(built) | _version(context, dvc, built.out_dir))


@dg.asset(
    deps=[figure_dataset],
    group_name=DATASET_GROUP,
    kinds={"json"},
    automation_condition=dg.AutomationCondition.eager(),
    description="PatentLMM's LLaVA-format JSON (brief and detailed, per split) with OCR words and boxes alongside.",
)
def llava_dataset(
    context: dg.AssetExecutionContext, home: PatentflowHome, dvc: DataVersioning
) -> dg.MaterializeResult:
    counts = dataset.build_llava(home.home.figures_dir, home.home.dataset)  # writes llava_json/
    return dg.MaterializeResult(metadata=counts | _version(context, dvc, home.home.llava_json))
