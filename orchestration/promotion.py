"""The challenger / champion gate that both model families share.

A challenger asset writes a record {"version", "metrics", "champion_version", "champion_metrics"};
the blocking check compares the two on the promotion metric and, when the challenger loses,
tags the version with the reason; the champion asset (which runs only when the check passed)
moves the registry alias.
"""
# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

import json
from collections.abc import Sequence
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


def beats_baselines(
    context: dg.AssetCheckExecutionContext,
    challenger_asset: str,
    baselines: Sequence[str],
    model: str,
    metrics: Sequence[str],
    uri: str,
) -> dg.AssetCheckResult:
    """A warning check: does the challenger beat every model-free baseline of its record (e.g. the
    untouched pretrained backbone, `"<baseline>_metrics"`) on every one of `metrics`? The answer
    goes on the version's tags (`beats_<baseline>`, `<baseline>_<metric>`) either way, so a loss
    is never shipped silently; a metric missing on either side counts as a loss."""
    from training import tracking

    record = json.loads(Path(latest(context, challenger_asset)).read_text())
    metadata: dict[str, Any] = {"metrics": ", ".join(metrics), "challenger_version": record["version"]}
    losses, wins, tags = [], [], {}
    for baseline in baselines:
        theirs_all = record.get(f"{baseline}_metrics") or {}
        beaten = True
        for metric in metrics:
            ours, theirs = record["metrics"].get(metric), theirs_all.get(metric)
            if ours is None or theirs is None:
                losses.append(f"no {metric} for the challenger or the {baseline} baseline")
                beaten = False
                continue
            verdict = f"challenger {metric} {float(ours):.4f} vs the {baseline} baseline {float(theirs):.4f}"
            (wins if float(ours) > float(theirs) else losses).append(verdict)
            beaten &= float(ours) > float(theirs)
            tags[f"{baseline}_{metric}"] = f"{float(theirs):.4f}"
            metadata[f"{baseline}_{metric}"] = float(theirs)
        tags[f"beats_{baseline}"] = str(beaten)
    tracking.tag_version(model, record["version"], tags, tracking_uri=uri)
    reason = ("does NOT beat: " + "; ".join(losses)) if losses else ("beats: " + "; ".join(wins))
    if losses:
        context.log.warning(reason)
    return dg.AssetCheckResult(
        passed=not losses,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={**metadata, "reason": reason},
    )
