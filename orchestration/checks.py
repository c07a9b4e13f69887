"""Quality gates as asset checks. A failing blocking check stops the assets downstream."""
# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

import dagster as dg

from orchestration.assets import figure_dataset, release_figures
from orchestration.resources import DataVersioning, PatentflowHome
from patent_assets import dataset, pipeline, validation
from patent_assets.records import read_figures


@dg.asset_check(
    asset=release_figures,
    blocking=True,
    description="great-expectations suite: schema, unique ids, non-empty descriptions, readable images, "
    "OCR coverage, alignment rate, grant-date range (a text-only release: its grants' ids, text and dates). "
    "Only releases that pass enter the dataset and the language model's text.",
)
def release_figures_valid(
    context: dg.AssetCheckExecutionContext, home: PatentflowHome, dvc: DataVersioning
) -> dg.AssetCheckResult:
    figures_dir = home.home.release_dir(context.partition_key, "figures") if _partitioned(context) else None
    if figures_dir is None:  # a check run without a partition (should not happen): nothing to validate
        return dg.AssetCheckResult(passed=False, description="no release partition given")
    summary = pipeline.read_step_summary(figures_dir)
    if summary.get("text_only_grants"):  # a full-text release: its grants are text for the LM
        documents_dir = home.home.release_dir(context.partition_key, "documents")
        report = validation.validate_documents(b.document for b in pipeline.read_bundles(documents_dir))
    else:
        report = validation.validate_figures(
            read_figures(figures_dir / pipeline.FIGURES), alignment_rate=summary.get("alignment_rate")
        )
    # the dataset takes only releases that passed; the result itself is versioned data too
    version = dvc.track(
        dataset.write_validation(figures_dir.parent, report), f"validation {context.partition_key}"
    )
    return dg.AssetCheckResult(
        passed=report.success,
        metadata=_flat(report.summary()) | version.metadata(),
        severity=dg.AssetCheckSeverity.ERROR,
    )


@dg.asset_check(
    asset=figure_dataset,
    blocking=True,
    description="No patent straddles splits and every image id is unique across releases.",
)
def figure_dataset_splits_disjoint(home: PatentflowHome) -> dg.AssetCheckResult:
    problems = dataset.split_problems(home.home.figures_dir)
    return dg.AssetCheckResult(
        passed=not problems, metadata={"problems": len(problems), "first": "; ".join(problems[:5]) or "none"}
    )


def _partitioned(context: dg.AssetCheckExecutionContext) -> bool:
    try:
        return context.partition_key is not None
    except Exception:  # dagster raises when the run has no partition
        return False


def _flat(summary: dict) -> dict:
    """Dagster metadata takes scalars, text and JSON; keep numbers as numbers."""
    return {
        k: v if isinstance(v, int | float | str | bool) else dg.MetadataValue.json(v)
        for k, v in summary.items()
    }
