"""The challenger / champion gate that both model families share.

A challenger asset writes a record {"version", "metrics", "champion_version", "champion_metrics"};
the blocking check compares the two on the promotion metric and, when the challenger loses,
tags the version with the reason; the champion asset (which runs only when the check passed)
moves the registry alias.
"""
# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

import json
from pathlib import Path
from typing import Any

import dagster as dg

from orchestration.launching import latest


def _decision(context: Any, challenger_asset: str, metric: str) -> tuple[dict, Any]:
    from training import tracking

    record = json.loads(Path(latest(context, challenger_asset)).read_text())
    return record, tracking.compare(record["metrics"], record["champion_metrics"], primary=metric)


def gate(
    context: dg.AssetCheckExecutionContext, challenger_asset: str, model: str, metric: str, uri: str
) -> dg.AssetCheckResult:
    """The blocking check: pass when the challenger beats the champion on `metric`."""
    from training import tracking

    record, decision = _decision(context, challenger_asset, metric)
    if not decision.promote:  # record why on the version; the champion alias stays where it is
        tracking.promote(model, record["version"], decision, tracking_uri=uri)
    return dg.AssetCheckResult(
        passed=bool(decision.promote),
        metadata={
            "reason": decision.reason,
            "metric": metric,
            "challenger_version": record["version"],
            "champion_version": record["champion_version"] or 0,
        },
    )


def promote(
    context: dg.AssetExecutionContext, challenger_asset: str, model: str, metric: str, uri: str
) -> dg.MaterializeResult:
    """Move the `champion` alias of `model` to the challenger; its decision is on the version's tags."""
    from training import tracking

    record, decision = _decision(context, challenger_asset, metric)
    decision = tracking.promote(model, record["version"], decision, tracking_uri=uri)
    return dg.MaterializeResult(
        metadata={
            "champion_version": tracking.get_alias_version(model, tracking.CHAMPION, tracking_uri=uri) or 0,
            "reason": decision.reason,
            "model_uri": f"models:/{model}@{tracking.CHAMPION}",
        }
    )


def beats_baseline(
    context: dg.AssetCheckExecutionContext,
    challenger_asset: str,
    baseline: str,
    model: str,
    metric: str,
    uri: str,
) -> dg.AssetCheckResult:
    """A warning check: does the challenger beat a model-free baseline of its record (e.g. the
    untouched pretrained backbone, `"<baseline>_metrics"`) on `metric`? The answer goes on the
    version's tags (`beats_<baseline>`) either way, so a loss is never shipped silently."""
    from training import tracking

    record = json.loads(Path(latest(context, challenger_asset)).read_text())
    baseline_metrics = record.get(f"{baseline}_metrics") or {}
    ours, theirs = record["metrics"].get(metric), baseline_metrics.get(metric)
    metadata: dict[str, Any] = {"metric": metric, "challenger_version": record["version"]}
    if ours is None or theirs is None:
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={**metadata, "reason": f"no {metric} for the challenger or the {baseline} baseline"},
        )
    passed = float(ours) > float(theirs)
    verb = "beats" if passed else "does NOT beat"
    reason = f"challenger {metric} {float(ours):.4f} {verb} the {baseline} baseline {float(theirs):.4f}"
    tracking.tag_version(
        model,
        record["version"],
        {f"beats_{baseline}": str(passed), f"{baseline}_{metric}": f"{float(theirs):.4f}"},
        tracking_uri=uri,
    )
    if not passed:
        context.log.warning(reason)
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={**metadata, "reason": reason, "challenger": float(ours), baseline: float(theirs)},
    )
