"""Where PatentFlow keeps its runtime state: the one layout of `$PATENTFLOW_HOME`.

Everything a run writes (Dagster home, artifact store, MLflow store, DVC remote, landing
directory, the DVC-tracked data) lives under one root, `$PATENTFLOW_HOME`, default `.patentflow/`
in the current directory (the repository root when run from there). It lives in the lowest
library so that the data and model libraries, the Dagster resources and the CLI all read the
same paths from `Home`; nothing else spells them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# the figure dataset, under a dataset folder: figures/figures.jsonl (+ images), llava_json/{kind}_{split}.json
FIGURES_DIR, FIGURES_JSONL, LLAVA_DIR = "figures", "figures.jsonl", "llava_json"


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

    @property
    def releases(self) -> Path:
        """One folder per ingested release, one subfolder per step."""
        return self.data / "releases"

    def release_dir(self, release: str, step: str) -> Path:
        """Where a release's step writes: data/releases/<release>/<step>."""
        return self.releases / release / step

    @property
    def dataset(self) -> Path:
        """The figure dataset built from every release: `figures/` and `llava_json/`."""
        return self.data / "dataset"

    @property
    def figures_dir(self) -> Path:
        return self.dataset / FIGURES_DIR

    @property
    def figures_jsonl(self) -> Path:
        return self.figures_dir / FIGURES_JSONL

    @property
    def llava_json(self) -> Path:
        return self.dataset / LLAVA_DIR

    @property
    def search_index(self) -> Path:
        """The pipeline's figure-search index (`retrieval_index`), DVC-tracked; `patentflow search` reads it."""
        return self.data / "retrieval_index"

    def champion_dir(self, registered_model: str) -> Path:
        """A local copy of a registered model's champion version (refreshed when the alias moves)."""
        return self.store / "models" / "champions" / registered_model

    @property
    def ocr_cache(self) -> Path:
        """Tesseract's output, content-addressed by image and settings: shared by every release."""
        return self.store / "ocr"

    @property
    def feature_cache(self) -> Path:
        """Frozen-backbone features, content-addressed: shared by every run, evaluation and model."""
        return self.store / "features"
