"""PatentLMM as an MLflow pyfunc model: a description per drawing, OCR by tesseract inside.

    mlflow.pyfunc.load_model("models:/patentlmm@champion").predict(df)

`df` has a column `image` (base64 of PNG or TIFF bytes) and an optional column `kind`
(`brief`, the default, or `detailed`); the answer is one description per row, as
`patentflow describe` writes it (the same `describe_images`). Param `max_new_tokens`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import DataType
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from patent_assets.llava import KINDS
from training import pyfunc

KIND = "kind"
MAX_NEW_TOKENS = 128

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.string, pyfunc.IMAGE), ColSpec(DataType.string, KIND, required=False)]),
    outputs=Schema([ColSpec(DataType.string)]),
    params=ParamSchema([ParamSpec("max_new_tokens", DataType.long, MAX_NEW_TOKENS)]),
)


class PatentLMMModel(pyfunc.ImageModel):
    requirements = (
        "torch",
        "transformers",
        "tokenizers",
        "safetensors",
        "peft",
        "pillow",
        "pytesseract",
        "numpy",
    )

    def load(self, directory: Path) -> None:
        from training.describe.inference import load_for_inference

        self.inference = load_for_inference(Path(directory))

    def predict_images(self, paths: list[Path], frame: pd.DataFrame, params: dict[str, Any]) -> list[str]:
        from training.describe.inference import describe_images

        kinds = frame[KIND].fillna("brief").tolist() if KIND in frame.columns else ["brief"] * len(paths)
        for row, kind in enumerate(kinds):
            if kind not in KINDS:
                raise pyfunc.InvalidInput(f"row {row}: unknown {KIND} {kind!r}: one of {list(KINDS)}")
        max_new_tokens = int(params.get("max_new_tokens", MAX_NEW_TOKENS))
        descriptions: list[str] = [""] * len(paths)
        for kind in sorted(set(kinds)):
            rows = [row for row, k in enumerate(kinds) if k == kind]
            answers = describe_images([paths[row] for row in rows], self.inference, kind, max_new_tokens)
            for row, answer in zip(rows, answers, strict=True):
                if answer["error"]:
                    raise pyfunc.InvalidInput(f"row {row}: {answer['error']}")
                descriptions[row] = answer["description"]
        return descriptions


def save(model_dir: Path, out: Path) -> Path:
    """A trained PatentLMM directory as an MLflow model at `out`."""
    return pyfunc.save(PatentLMMModel(), model_dir, out, SIGNATURE, pyfunc.input_example(kind="brief"))


def load(directory: Path) -> PatentLMMModel:
    """A saved MLflow model or a plain trained directory, loaded for `inference`."""
    return pyfunc.load(directory, PatentLMMModel)
