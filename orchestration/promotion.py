"""The challenger / champion gate that both model families share.

A challenger asset looks up the current champion (`current_champion`), evaluates, registers its
model as an MLflow model whose description says what it trained on and how it scored
(`register_challenger`) and writes a record {"version", "metrics", "champion_version",
"champion_metrics", "<baseline>_metrics"...} (`challenger_result`); the blocking check compares
challenger and champion on the promotion metric and, when the challenger loses, records the
decision on the version; a warning check compares it with the model-free baselines of its
record; the champion asset (which runs only when the blocking check passed) moves the
registry alias. `gate_definitions` builds the two checks and the champion asset of one family
from a `Gate`, so the chain is written once.
"""
# No `from __future__ import annotations`: Dagster inspects the `context` annotation at definition time.

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from orchestration.launching import latest
from patent_assets.layout import Home
from training.job import write_json

RECORD = "challenger.json"


@dataclass(frozen=True)
class Champion:
    """A registered model's champion version and a local copy of it; both None before the first."""

    model_uri: str  # models:/<name>@champion
    version: int | None
    directory: Path | None  # the trained directory inside the MLflow model


def current_champion(home: Home, model: str, uri: str, required: bool = False) -> Champion:
    """The champion of `model` in the registry at `uri`, downloaded to `home.champion_dir(model)`
    (kept while the alias stays). `required`: no champion yet is a failure, not an empty answer."""
    from training import tracking

    model_uri = f"models:/{model}@{tracking.CHAMPION}"
    version = tracking.get_alias_version(model, tracking.CHAMPION, tracking_uri=uri)
    if version is None:
        if required:
            raise dg.Failure(f"{model} has no champion yet: materialize the gate's champion asset first")
        return Champion(model_uri, None, None)
    from training.pyfunc import artifact_dir

    downloaded = tracking.download_model(model_uri, dst=home.champion_dir(model), tracking_uri=uri)
    return Champion(model_uri, version, artifact_dir(downloaded))


@dataclass(frozen=True)
class Family:
    """What registering a family's challenger needs: how its MLflow model is written, what the
    registered model is, and what a version's description tabulates."""

    save: Callable[[Path, Path], Path]  # (trained dir, out) -> the pyfunc model (`training.pyfunc`)
    description: str  # the registered model's
    headline: Sequence[str]  # the metrics in a version's score table
    compared: Sequence[str]  # the other columns: record keys "<name>_metrics" (champion, baselines)
    dataset_asset: str  # the data asset the model trained on (its DVC md5 goes in the description)


def register_challenger(
    context: dg.AssetExecutionContext,
    family: Family,
    *,
    home: Home,
    model: str,
    run_id: str,
    model_dir: str,
    record: dict[str, Any],
    promotion_metric: str,
    uri: str,
) -> int:
    """Register `model_dir` as a new version of `model` (alias `challenger`), an MLflow model whose
    description says what it trained on and how it scored beside the champion and the baselines of
    `record`; warn when the scores lack the promotion metric (the gate will refuse to judge)."""
    from training import tracking

    if promotion_metric not in record["metrics"]:
        context.log.warning(
            f"no {promotion_metric} among the challenger's metrics (no real held-out figures?): the gate "
            f"cannot judge; set promotion_metric to {promotion_metric.replace('real_', '')} for a "
            "synthetic-only collection"
        )
    description = _trained_on(context, family, home, run_id) + "\n\n" + _score_table(family, record)
    return tracking.register_model(
        run_id,
        Path(model_dir),
        model,
        family.save,
        description=description,
        model_description=family.description,
        tracking_uri=uri,
    )


def _trained_on(context: dg.AssetExecutionContext, family: Family, home: Home, run_id: str) -> str:
    from patent_assets import dataset

    landed = sorted(home.releases.iterdir()) if home.releases.is_dir() else []
    releases = [release.name for release in landed if dataset.release_passed(release)]
    md5 = latest(context, family.dataset_asset, "dvc_md5")
    return (
        f"Trained on `{family.dataset_asset}` (DVC md5 `{md5}`) from {len(releases)} validated releases "
        f"({', '.join(releases)}); MLflow run `{run_id}`, Dagster run `{context.run.run_id}`."
    )


def _score_table(family: Family, record: dict[str, Any]) -> str:
    columns = {"challenger": record["metrics"]}
    columns |= {name: record[f"{name}_metrics"] for name in family.compared if record.get(f"{name}_metrics")}
    rows = [f"| metric | {' | '.join(columns)} |", "|---" * (len(columns) + 1) + "|"]
    for metric in family.headline:
        values = [scores.get(metric) for scores in columns.values()]
        if values[0] is not None:
            rows.append(f"| {metric} | " + " | ".join("" if v is None else f"{v:.4f}" for v in values) + " |")
    return "\n".join(rows)


def challenger_result(
    out_dir: Path, record: dict[str, Any], metadata: dict[str, Any]
) -> dg.MaterializeResult:
    """Write the challenger's record (what the checks and the champion read) and report it."""
    path = write_json(out_dir / RECORD, record)
    return dg.MaterializeResult(
        metadata={
            "path": str(path),
            "model_version": record["version"],
            "champion_version": record["champion_version"] or 0,
            **metadata,
        }
    )


def _decision(context: Any, challenger_asset: str, metric: str) -> tuple[dict, Any]:
    from training import tracking

    record = json.loads(Path(latest(context, challenger_asset)).read_text())
    return record, tracking.compare(record["metrics"], record["champion_metrics"], primary=metric)


def gate_check(
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
    """Move the `champion` alias of `model` to the challenger; the decision goes on the version."""
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
    goes on the version's tags (`beats_<baseline>`; the scores are in its description) either way, so a loss
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


@dataclass(frozen=True)
class Gate:
    """What differs between two families' gates: names, resources, baselines, descriptions."""

    challenger: dg.AssetsDefinition
    champion: str  # the champion asset's name
    group: str
    settings_key: str  # the resource whose `promotion_metric` the gate judges by
    model_field: str  # the `MlflowTracking` field naming the registered model
    beats_champion: str  # the blocking check's name
    beats_champion_description: str
    beats_baselines: str  # the warning check's name
    beats_baselines_description: str
    baselines: Sequence[str]
    # the metrics the warning check compares, from the settings resource
    baseline_metrics: Callable[[Any], Sequence[str]]
    champion_description: str


def gate_definitions(
    gate: Gate, automation_condition: dg.AutomationCondition
) -> tuple[dg.AssetChecksDefinition, dg.AssetChecksDefinition, dg.AssetsDefinition]:
    """The blocking check, the warning check and the champion asset of one challenger."""
    name = gate.challenger.key.to_user_string()
    keys = {"mlflow", gate.settings_key}

    def judged(context: Any) -> tuple[str, str, str]:
        mlflow, settings = context.resources.mlflow, getattr(context.resources, gate.settings_key)
        return getattr(mlflow, gate.model_field), settings.promotion_metric, mlflow.uri()

    @dg.asset_check(
        name=gate.beats_champion,
        asset=gate.challenger,
        blocking=True,
        required_resource_keys=keys,
        description=gate.beats_champion_description,
    )
    def beats_champion(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        model, metric, uri = judged(context)
        return gate_check(context, name, model, metric, uri)

    @dg.asset_check(
        name=gate.beats_baselines,
        asset=gate.challenger,
        required_resource_keys=keys,
        description=gate.beats_baselines_description,
    )
    def beats_the_baselines(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        model, _, uri = judged(context)
        metrics = gate.baseline_metrics(getattr(context.resources, gate.settings_key))
        return beats_baselines(context, name, gate.baselines, model, metrics, uri)

    @dg.asset(
        name=gate.champion,
        deps=[gate.challenger],
        group_name=gate.group,
        kinds={"mlflow"},
        automation_condition=automation_condition,
        required_resource_keys=keys,
        description=gate.champion_description,
    )
    def champion(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        model, metric, uri = judged(context)
        return promote(context, name, model, metric, uri)

    return beats_champion, beats_the_baselines, champion
