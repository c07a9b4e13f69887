"""Where PatentFlow keeps its runtime state.

Everything a run writes (Dagster home, artifact store, MLflow store, DVC remote, landing
directory) lives under one root, `$PATENTFLOW_HOME`, default `.patentflow/` in the current
directory (the repository root when run from there). Nothing else is hard-coded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def from_env(cls) -> Home:
        return cls(Path(os.environ.get("PATENTFLOW_HOME", ".patentflow")).expanduser().resolve())

    @property
    def dagster(self) -> Path:
        return self.root / "dagster"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def dvc_remote(self) -> Path:
        return self.root / "dvc-remote"

    @property
    def data(self) -> Path:
        """The DVC-tracked workspace: the data assets' outputs live here."""
        return self.root / "data"
