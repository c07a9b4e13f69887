"""What every out-of-process job shares: its strict JSON config (`JobConfig`), the one Pipes
reporter, and small helpers for writing outputs (staging, atomic JSON, flat metric names).

A job reads its config dataclass strictly (`JobConfig.from_json`: unknown keys and wrong types
are errors naming the file), does the work through its family's library modules, writes its
outputs into the config's `out_dir` (each file or directory renamed into place, never
half-written) and, when launched by Dagster Pipes, logs progress and reports
`report_asset_materialization(metadata=...)` through the `Reporter`; without Pipes it runs
plainly. `training.entry` is the command line that runs the jobs.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import shutil
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from patent_assets.records import atomic_write

logger = logging.getLogger("training")

METRICS_FILE = "metrics.json"


# ------------------------------------------------------------------------------------------ configs


@dataclass
class JobConfig:
    """Base of the command configs: read from JSON, strictly."""

    # the asset a Pipes multi-asset reports for; None: the one asset in scope. Keyword-only, so
    # that a subclass's required fields may follow it.
    asset_key: str | None = field(default=None, kw_only=True)

    @classmethod
    def from_json(cls, path: Path) -> JobConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"config {path}: cannot read JSON ({error})") from error
        if not isinstance(raw, dict):
            raise ValueError(f"config {path}: expected a JSON object, got {type(raw).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:  # a typo must not silently fall back to a default
            raise ValueError(f"config {path}: unknown {cls.__name__} keys {unknown}")
        hints = typing.get_type_hints(cls)
        for key, value in raw.items():
            if not _matches(value, hints[key]):
                raise ValueError(f"config {path}: {key}={value!r} is not a {_type_name(hints[key])}")
        try:
            return cls(**raw)
        except TypeError as error:  # a required key is missing
            raise ValueError(f"config {path}: {error}") from error
        except ValueError as error:
            raise ValueError(f"config {path}: {error}") from error

    def to_json(self, path: Path) -> Path:
        with atomic_write(Path(path)) as handle:
            json.dump(asdict(self), handle, indent=2)
        return Path(path)


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type hint (str, int, float, bool, None, Literal, list, dict, unions)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(v, args[1]) for v in value.values())
    return True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# -------------------------------------------------------------------------------- Dagster Pipes


class Reporter:
    """Progress and results: to the log always, and to Dagster when launched by Pipes."""

    def __init__(self, pipes: Any = None, asset_key: str | None = None) -> None:
        self.pipes = pipes
        self.asset_key = asset_key
        self.materialized: dict[str, Any] | None = None

    def log(self, message: str) -> None:
        logger.info(message)
        if self.pipes is not None:
            self.pipes.log.info(message)

    def materialize(self, metadata: Mapping[str, Any]) -> None:
        self.materialized = dict(metadata)
        logger.info("result: %s", json.dumps(self.materialized, default=str))
        if self.pipes is not None:
            self.pipes.report_asset_materialization(
                metadata=pipes_metadata(metadata), asset_key=self.asset_key
            )


def pipes_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata Pipes accepts: paths as path values, dicts and lists as JSON; None and NaN left out."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        if isinstance(value, Path):
            out[key] = {"raw_value": str(value), "type": "path"}
        elif isinstance(value, dict | list | tuple):
            out[key] = {"raw_value": json.loads(json.dumps(value, default=str)), "type": "json"}
        else:
            out[key] = value
    return out


@contextmanager
def reporting(asset_key: str | None = None) -> Iterator[Reporter]:
    """A Reporter connected to Dagster Pipes when the Pipes env vars are set; plain otherwise.

    Inside Pipes, an exception is reported to Dagster and re-raised (the exit status is non-zero).
    """
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        yield Reporter()
        return
    with open_dagster_pipes() as pipes:
        yield Reporter(pipes, asset_key)


# -------------------------------------------------------------------------------- output helpers


def staging_dir(out_dir: Path, command: str) -> Path:
    """A fresh scratch directory inside `out_dir` (same file system: its contents rename into place)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".staging-{command}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def write_json(path: Path, data: Any) -> Path:
    with atomic_write(path) as handle:
        json.dump(data, handle, indent=1, default=str)
    return path


def flat_metrics(
    nested: Mapping[str, Any], prefix: str = "", names: Sequence[str] | None = None
) -> dict[str, float]:
    """{"same_patent": {"mAP": 0.5}} -> {"same_patent_mAP": 0.5}: results nested one level deep as
    the flat metric keys of MLflow and of Dagster metadata. Only numbers are kept; a None (not
    measured), a text or a deeper dict is left out. `names`: only those metrics, in that order."""
    flat: dict[str, float] = {}
    for group, metrics in nested.items():
        if not isinstance(metrics, Mapping):
            continue
        for name in metrics if names is None else names:
            value = metrics.get(name)
            if isinstance(value, numbers.Real):
                flat[f"{prefix}{group}_{name}"] = float(value)
    return flat


def finite(summary: Mapping[str, Any]) -> dict[str, Any]:
    """NaN and infinities as None: JSON has no NaN, and a missing number must read as missing."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
