"""The figure encoder as an MLflow pyfunc model: an L2-normalised embedding per drawing.

    mlflow.pyfunc.load_model("models:/patent-figure-encoder@champion").predict(df)

`df` has a column `image` (base64 of PNG or TIFF bytes); the answer is one embedding per row (a
list of floats), the vector the search index stores for the encoder alone (`embed_images`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import DataType
from mlflow.types.schema import Array, ColSpec, Schema

from training import pyfunc

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.string, pyfunc.IMAGE)]),
    outputs=Schema([ColSpec(Array(DataType.double))]),
)


class FigureEncoderModel(pyfunc.ImageModel):
    requirements = ("torch", "safetensors", "pillow", "numpy", "efficientnet-lite-pytorch")

    def load(self, directory: Path) -> None:
        from training.retrieval.model import load_encoder

        self.encoder = load_encoder(Path(directory))

    def predict_images(
        self, paths: list[Path], frame: pd.DataFrame, params: dict[str, Any]
    ) -> list[list[float]]:
        from training.retrieval.model import embed_images

        embedded = embed_images(self.encoder, paths)
        for row, reason in sorted(embedded.failed.items()):
            raise pyfunc.InvalidInput(f"row {row}: {reason}")
        return [vector.astype(float).tolist() for vector in embedded.retrieval]


def save(encoder_dir: Path, out: Path) -> Path:
    """A saved figure encoder as an MLflow model at `out`."""
    return pyfunc.save(FigureEncoderModel(), encoder_dir, out, SIGNATURE, pyfunc.input_example())


def load(directory: Path) -> FigureEncoderModel:
    """A saved MLflow model or a plain encoder directory, loaded as `encoder`."""
    return pyfunc.load(directory, FigureEncoderModel)
