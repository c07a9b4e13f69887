"""MLflow tracking and model registry of both model families: PatentLMM and the figure-search encoder.

The store is SQLite under `$PATENTFLOW_HOME/mlflow/mlflow.db` with artifacts beside it in
`$PATENTFLOW_HOME/mlflow/artifacts` (the plain `./mlruns` file store is deprecated);
`MLFLOW_TRACKING_URI` points every command at another store or a remote server instead.

Promotion uses registry aliases, never the deprecated stages: a new version becomes
`challenger`; `compare` decides from metrics on the same test split; `promote` moves
`champion` only when the decision says so (the first version always becomes champion) and
records the decision on the version (a few tags, and its description) either way. A version is
an MLflow pyfunc model (`training.pyfunc`), so `mlflow.pyfunc.load_model` and
`mlflow models serve` open it.

Every function takes an optional `tracking_uri`; without it the URI comes from the
environment each time (`tracking_uri()`), so nothing depends on process-global MLflow state.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

# Before MLflow is imported: it reads this when it starts its telemetry client.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
# Progress bars of artifact transfers would flood the Dagster and training logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from patent_assets.layout import Home
from patent_assets.records import replace_path

CHAMPION = "champion"
CHALLENGER = "challenger"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Written into a downloaded model directory: which registry version it holds, to reuse it.
_SOURCE_MARKER = ".patentflow-model-source"
_MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value


class TrackingUnavailable(RuntimeError):
    """The tracking store or server cannot be used; raised before any training work."""


@dataclass(frozen=True)
class Decision:
    """Whether a challenger replaces the champion, and why (recorded on the version's tags)."""

    promote: bool
    reason: str
    metric: str = ""
    challenger_value: float | None = None
    champion_value: float | None = None
    details: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- where the store is


def tracking_uri(home: Path | Home | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else `sqlite:///$PATENTFLOW_HOME/mlflow/mlflow.db`."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = home if isinstance(home, Home) else Home(Path(home).resolve()) if home else Home.from_env()
    return f"sqlite:///{root.mlflow / 'mlflow.db'}"


def artifact_root(uri: str) -> Path | None:
    """Where runs of a SQLite store keep their artifacts: `artifacts/` beside the database.
    None for a server or another database, which decide it themselves."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:":
        raise TrackingUnavailable(f"MLflow tracking URI {uri} names no database file")
    return Path(database).resolve().parent / "artifacts"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise `TrackingUnavailable` naming `uri` if the store cannot be used.

    An http(s) server must answer its `/health` endpoint; a SQLite store's directory must be
    creatable and writable. Other stores (PostgreSQL, Databricks) are left to MLflow."""
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        health = uri.rstrip("/") + "/health"
        try:
            response = httpx.get(health, timeout=timeout)
        except httpx.HTTPError as error:
            raise TrackingUnavailable(
                f"MLflow tracking server {_redacted(uri)} is unreachable ({type(error).__name__}: {error}); "
                "start it (mlflow/server.sh) or set MLFLOW_TRACKING_URI"
            ) from error
        if response.status_code != 200:
            raise TrackingUnavailable(
                f"MLflow tracking server {_redacted(uri)} is not healthy: "
                f"GET /health answered {response.status_code}"
            )
    elif scheme == "sqlite":
        root = artifact_root(uri)
        assert root is not None
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingUnavailable(f"MLflow store {uri}: cannot create {root}: {error}") from error
        if not os.access(root.parent, os.W_OK):
            raise TrackingUnavailable(f"MLflow store {uri}: {root.parent} is not writable")


def configure(home: Path | Home | None = None, timeout: float = 5.0) -> str:
    """Resolve the tracking URI, check that it is usable, and make it MLflow's default."""
    import mlflow

    uri = tracking_uri(home)
    check_reachable(uri, timeout)
    mlflow.set_tracking_uri(uri)
    return uri


def _client(uri: str | None) -> MlflowClient:
    uri = uri or tracking_uri()
    root = artifact_root(uri)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _redacted(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


# ---------------------------------------------------------------- runs


def read_git_commit(repo: Path = PROJECT_ROOT) -> str:
    """`git rev-parse HEAD` of `repo`, or "unknown" when it is not a git checkout (or no git)."""
    try:
        result = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def start_training_run(
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    data_version: Mapping[str, str] | None = None,
    git_commit: str | None = None,
    tracking_uri: str | None = None,
) -> str:
    """Create a run (and its experiment when new) with its config; return the run id.

    `params` may nest: keys are flattened with dots, and the whole config is also logged as
    `config.json`. `data_version` (e.g. `{"dvc_md5": ..., "dvc_commit": ...}`) becomes tags
    `data.<key>`; the git commit (default: `read_git_commit()`) becomes `git_commit` and MLflow's own source tag."""
    client = _client(tracking_uri)
    experiment_id = _experiment_id(client, experiment)
    commit = git_commit or read_git_commit()
    run_tags = {
        **{key: str(value) for key, value in (tags or {}).items()},
        **{f"data.{key}": str(value) for key, value in (data_version or {}).items()},
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
    }
    run = client.create_run(experiment_id, run_name=run_name, tags=run_tags)
    run_id = run.info.run_id
    log_params(run_id, params, tracking_uri)
    client.log_dict(run_id, _jsonable(dict(params)), "config.json")
    return run_id


@contextmanager
def training_run(
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
    data_version: Mapping[str, str] | None = None,
    tracking_uri: str | None = None,
) -> Iterator[str]:
    """A training run's whole life: started with its config and data version (as
    `start_training_run`), FINISHED when the block ends, FAILED when it raises (and re-raised)."""
    run_id = start_training_run(experiment, run_name, params, tags, data_version, tracking_uri=tracking_uri)
    try:
        yield run_id
    except BaseException:
        finish_run(run_id, status="FAILED", tracking_uri=tracking_uri)
        raise
    finish_run(run_id, tracking_uri=tracking_uri)


def mlflow_key(name: str) -> str:
    """A metric or tag name MLflow accepts: retrieval metrics are named like "Recall@10", and
    MLflow allows no "@" in names ("Recall_at_10")."""
    return name.replace("@", "_at_")


def log_metrics(
    run_id: str, metrics: Mapping[str, float], step: int | None = None, tracking_uri: str | None = None
) -> None:
    """Log numeric metrics at `step` (None: step 0)."""
    now = int(datetime.now(UTC).timestamp() * 1000)
    entries = [Metric(mlflow_key(key), float(value), now, step or 0) for key, value in metrics.items()]
    _client(tracking_uri).log_batch(run_id, metrics=entries)


def log_params(run_id: str, params: Mapping[str, Any], tracking_uri: str | None = None) -> None:
    """Log (nested) params as `start_training_run` does: dotted keys, JSON values, long ones cut."""
    flat = _flatten(params)
    _client(tracking_uri).log_batch(
        run_id, params=[Param(key, _param_value(value)) for key, value in flat.items()]
    )


def log_artifacts(run_id: str, local_dir: Path, artifact_path: str, tracking_uri: str | None = None) -> None:
    """Every file under `local_dir` into the run's `artifact_path`."""
    _client(tracking_uri).log_artifacts(run_id, str(local_dir), artifact_path)


def finish_run(run_id: str, status: str = "FINISHED", tracking_uri: str | None = None) -> None:
    """Mark the run FINISHED, FAILED or KILLED."""
    _client(tracking_uri).set_terminated(run_id, status=status)


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    root = artifact_root(client.tracking_uri)
    try:
        return client.create_experiment(name, artifact_location=root.as_uri() if root else None)
    except MlflowException as error:
        # Another process created it between our look-up and our create.
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(_jsonable(value))
    # MLflow rejects longer values; the full value is in config.json.
    return text if len(text) <= _MAX_PARAM_LENGTH else text[: _MAX_PARAM_LENGTH - 20] + "...(see config.json)"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# ---------------------------------------------------------------- plots and samples


def log_curve_plot(
    run_id: str, history: Sequence[Mapping[str, Any]], name: str = "loss", tracking_uri: str | None = None
) -> str:
    """Plot every numeric series of `history` (rows `{"step": s, "loss": x, "eval_loss": y, ...}`)
    against step and log it as `plots/{name}.png`; return the artifact path."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, Agg renders the PNG

    if not history:
        raise ValueError(f"loss curve {name!r}: the history is empty")
    series: dict[str, tuple[list[float], list[float]]] = {}
    for index, row in enumerate(history):
        if "step" not in row:
            raise ValueError(f"loss curve {name!r}: history row {index} has no 'step': {dict(row)}")
        for key, value in row.items():
            if key in ("step", "epoch") or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(float(row["step"]))
            values.append(float(value))
    if not series:
        raise ValueError(f"loss curve {name!r}: no numeric values besides 'step' in the history")

    figure = Figure(figsize=(7, 4.5), dpi=100)
    axes = figure.add_subplot()
    for key, (steps, values) in sorted(series.items()):
        # Sparse series (validation once per epoch) get markers so single points show.
        marker = "o" if len(values) < len(history) else None
        axes.plot(steps, values, label=key, marker=marker)
    axes.set_xlabel("step")
    axes.set_ylabel("loss" if all("loss" in key for key in series) else "value")
    axes.set_title(name)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return _log_figure(run_id, figure, f"{name}.png", "plots", tracking_uri)


def log_samples(
    run_id: str,
    samples: Sequence[tuple[str | Path, str, str]],
    name: str = "samples",
    max_samples: int = 16,
    tracking_uri: str | None = None,
) -> str:
    """Log sample predictions next to their images: `samples/{name}.png` (a grid, one row per
    figure: image, predicted and reference text), `samples/{name}.json` (an MLflow table) and
    the images under `samples/images/`. An unreadable image is drawn as its error message."""
    from matplotlib.figure import Figure
    from PIL import Image, UnidentifiedImageError

    if not samples:
        raise ValueError(f"sample grid {name!r}: no samples")
    chosen = list(samples)[:max_samples]
    figure = Figure(figsize=(14, 3.2 * len(chosen)), dpi=80)
    grid = figure.add_gridspec(len(chosen), 2, width_ratios=[1, 2])
    rows: dict[str, list[str]] = {"image": [], "prediction": [], "reference": []}
    client = _client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="patentflow-samples-") as scratch:
        images_dir = Path(scratch) / "images"
        images_dir.mkdir()
        for index, (image_path, prediction, reference) in enumerate(chosen):
            image_path = Path(image_path)
            image_axes = figure.add_subplot(grid[index, 0])
            image_axes.set_xticks([])  # keep the frame: a white drawing on white needs its edge
            image_axes.set_yticks([])
            logged_name = f"{index:03d}_{image_path.name}"
            try:
                with Image.open(image_path) as image:
                    image.thumbnail((768, 768))
                    shown = image.convert("RGB")
                image_axes.imshow(shown)
                shutil.copyfile(image_path, images_dir / logged_name)
                rows["image"].append(f"images/{logged_name}")
            except (OSError, UnidentifiedImageError) as error:
                image_axes.text(
                    0.5, 0.5, f"image not readable:\n{image_path}\n{error}", ha="center", wrap=True
                )
                rows["image"].append(f"unreadable: {image_path}")
            image_axes.set_title(image_path.name, fontsize=9)

            text_axes = figure.add_subplot(grid[index, 1])
            text_axes.axis("off")
            text = f"PREDICTED: {_shorten(prediction)}\n\nREFERENCE: {_shorten(reference)}"
            text_axes.text(0, 1, text, va="top", ha="left", fontsize=9, family="monospace")
            rows["prediction"].append(prediction)
            rows["reference"].append(reference)
        figure.tight_layout()
        client.log_artifacts(run_id, str(images_dir), "samples/images")
    client.log_table(run_id, data=rows, artifact_file=f"samples/{name}.json")
    return _log_figure(run_id, figure, f"{name}.png", "samples", tracking_uri)


def _shorten(text: str, width: int = 90, limit: int = 700) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return "\n".join(textwrap.wrap(text, width)) or "(empty)"


def _log_figure(run_id: str, figure: Any, file_name: str, artifact_dir: str, tracking_uri: str | None) -> str:
    with tempfile.TemporaryDirectory(prefix="patentflow-plot-") as scratch:
        path = Path(scratch) / file_name
        figure.savefig(path, format="png")
        _client(tracking_uri).log_artifact(run_id, str(path), artifact_dir)
    return f"{artifact_dir}/{file_name}"


# ---------------------------------------------------------------- registry


def register_model(
    run_id: str,
    model_dir: Path,
    name: str,
    save: Callable[[Path, Path], Path],
    *,
    description: str = "",
    model_description: str = "",
    tags: Mapping[str, str] | None = None,
    alias: str | None = CHALLENGER,
    tracking_uri: str | None = None,
) -> int:
    """Log the HF-format `model_dir` as the run's MLflow model `model/` (`save` writes it: the
    family's pyfunc, `training.pyfunc`), register `runs:/<run_id>/model` as a new version of
    `name` with `description` and `tags`, and point `alias` at it (`challenger` by default; None
    for no alias). `model_description` describes the registered model itself. Return the version."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    if not any((model_dir / marker).is_file() for marker in ("config.json", "adapter_config.json")):
        raise ValueError(
            f"model directory {model_dir} is not in HF format: no config.json or adapter_config.json"
        )

    client = _client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="patentflow-mlflow-model-") as scratch:
        client.log_artifacts(run_id, str(save(model_dir, Path(scratch) / "model")), "model")
    try:
        client.create_registered_model(name, description=model_description or None)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        if model_description and client.get_registered_model(name).description != model_description:
            client.update_registered_model(name, description=model_description)
    version = client.create_model_version(
        name,
        source=f"runs:/{run_id}/model",
        run_id=run_id,
        tags={mlflow_key(k): str(v) for k, v in (tags or {}).items()},
        description=description or None,
    )
    if alias:
        client.set_registered_model_alias(name, alias, str(version.version))
    return int(version.version)


def get_alias_version(name: str, alias: str, tracking_uri: str | None = None) -> int | None:
    """The version `alias` points at, or None when the alias (or the model) does not exist."""
    try:
        version = _client(tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return int(version.version)


def download_model(uri: str | Path, dst: Path | None = None, tracking_uri: str | None = None) -> Path:
    """A local directory holding the model that `uri` names.

    `uri` is a local directory (returned as is), `models:/name@alias`, `models:/name/version`
    or `runs:/<run_id>/model`. The download lands in `dst` (a fresh temporary directory when
    None) atomically; a `dst` already holding the same registry version is reused."""
    text = str(uri)
    if "://" not in text and ":/" not in text:
        path = Path(text)
        if not path.is_dir():
            raise FileNotFoundError(f"model path {path} does not exist or is not a directory")
        return path

    client = _client(tracking_uri)
    source = _resolve_model_uri(client, text)
    if dst is not None:
        dst = Path(dst)
        marker = dst / _SOURCE_MARKER
        if source.startswith("models:/") and marker.is_file() and marker.read_text() == source:
            return dst
        dst.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    else:
        scratch = Path(tempfile.mkdtemp(prefix="patentflow-model-"))

    import mlflow.artifacts

    try:
        # A registry URI becomes its storage location here: MLflow's own `models:/` resolver
        # would ask the process-global registry, not this client's.
        location = _artifact_location(client, source)
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(scratch), tracking_uri=client.tracking_uri
            )
        )
        if not any(local.iterdir()):
            raise FileNotFoundError(f"model {text} ({source}) has no files")
        (local / _SOURCE_MARKER).write_text(source)
        if dst is None:
            return local
        return replace_path(local, dst)
    finally:
        if dst is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _artifact_location(client: MlflowClient, source: str) -> str:
    if source.startswith("models:/"):
        name, _, version = source.removeprefix("models:/").rpartition("/")
        return client.get_model_version_download_uri(name, version)
    if source.startswith("runs:/"):
        run_id, _, path = source.removeprefix("runs:/").partition("/")
        return client.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + path
    return source


def _resolve_model_uri(client: MlflowClient, uri: str) -> str:
    """`models:/name@alias` -> `models:/name/<version>` (so a cache key names one version)."""
    if not uri.startswith("models:/"):
        return uri
    reference = uri.removeprefix("models:/").rstrip("/")
    if "@" in reference:
        name, alias = reference.split("@", 1)
        version = get_alias_version(name, alias, tracking_uri=client.tracking_uri)
        if version is None:
            raise LookupError(f"model {uri}: registered model {name!r} has no alias {alias!r}")
        return f"models:/{name}/{version}"
    name, _, version = reference.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"model URI {uri} is neither models:/<name>@<alias> nor models:/<name>/<version>")
    try:
        client.get_model_version(name, version)
    except MlflowException as error:
        raise LookupError(f"model {uri}: no such registered model version") from error
    return uri


# ---------------------------------------------------------------- promotion


def compare(
    challenger_metrics: Mapping[str, float],
    champion_metrics: Mapping[str, float] | None,
    primary: str,
    higher_is_better: bool = True,
    min_delta: float = 0.0,
) -> Decision:
    """Promote when the challenger beats the champion on `primary` by more than `min_delta`
    (a tie does not promote). No champion metrics: promote, "first version"."""
    if primary not in challenger_metrics:
        raise ValueError(f"challenger metrics have no {primary!r}: {sorted(challenger_metrics)}")
    challenger = float(challenger_metrics[primary])
    details = {f"challenger_{k}": float(v) for k, v in challenger_metrics.items() if _is_number(v)}
    if champion_metrics is None:
        return Decision(True, "first version", primary, challenger, None, details)
    if primary not in champion_metrics:
        raise ValueError(f"champion metrics have no {primary!r}: {sorted(champion_metrics)}")
    champion = float(champion_metrics[primary])
    details |= {f"champion_{k}": float(v) for k, v in champion_metrics.items() if _is_number(v)}
    if math.isnan(challenger):
        return Decision(False, f"challenger {primary} is NaN", primary, challenger, champion, details)
    gain = (challenger - champion) if higher_is_better else (champion - challenger)
    better = "higher" if higher_is_better else "lower"
    if gain > min_delta or math.isnan(champion):
        reason = f"challenger {primary} {challenger:.6g} beats champion {champion:.6g} ({better} is better"
        return Decision(
            True, reason + f", margin {gain:.6g} > {min_delta:g})", primary, challenger, champion, details
        )
    if gain == 0:  # the same model, or one no better: said plainly, since a tie keeps the champion
        reason = (
            f"challenger {primary} {challenger:.6g} ties with champion {champion:.6g}: a tie does not promote"
        )
        return Decision(False, reason, primary, challenger, champion, details)
    reason = (
        f"challenger {primary} {challenger:.6g} does not beat champion {champion:.6g} ({better} is better"
    )
    return Decision(
        False, reason + f", margin {gain:.6g} <= {min_delta:g})", primary, challenger, champion, details
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def promote(name: str, version: int, decision: Decision, tracking_uri: str | None = None) -> Decision:
    """Move `champion` to `version` when `decision.promote`, or when there is no champion yet
    ("first version"); record the decision either way: a few filterable tags (decision, metric,
    both values, the champion's version) and the reason, in the version's description. Returns
    the decision actually applied."""
    client = _client(tracking_uri)
    current = get_alias_version(name, CHAMPION, tracking_uri=client.tracking_uri)
    if current is None and not decision.promote:
        decision = Decision(
            True, "first version", decision.metric, decision.challenger_value, None, decision.details
        )
    tags = {
        "promotion_decision": "promoted" if decision.promote else "rejected",
        "promotion_metric": decision.metric,
        "promotion_challenger_value": _tag_number(decision.challenger_value),
        "promotion_champion_value": _tag_number(decision.champion_value),
        "promotion_champion_version": str(current) if current is not None else "none",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    described = client.get_model_version(name, str(version)).description or ""
    client.update_model_version(name, str(version), description=described + _decision_text(decision, current))
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    return decision


def _decision_text(decision: Decision, champion_version: int | None) -> str:
    """The decision as a paragraph of the version's description (the scores are in its table)."""
    verdict = "Promoted to champion" if decision.promote else "Not promoted"
    against = f"champion version {champion_version}" if champion_version is not None else "no champion"
    when = datetime.now(UTC).isoformat(timespec="seconds")
    return f"\n\n### Promotion\n\n{verdict} ({when}, against {against}): {decision.reason}."


def tag_version(name: str, version: int, tags: Mapping[str, str], tracking_uri: str | None = None) -> None:
    """Set tags on a registered model version."""
    client = _client(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), mlflow_key(key), value)


def _tag_number(value: float | None) -> str:
    return "none" if value is None else repr(float(value))
