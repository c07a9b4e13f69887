"""The registry's models as MLflow pyfunc models: what `mlflow.pyfunc.load_model(URI).predict(df)`
and `mlflow models serve` run, and the one way this project loads a registered model.

Both families take the same input, a DataFrame with a column `image` (base64 of PNG or TIFF
bytes), and answer one value per row (`ImageModel`): PatentLMM a description
(`training.describe.pyfunc`), the figure encoder an embedding (`training.retrieval.pyfunc`).
A model version is the family's trained directory as the pyfunc's `model` artifact, with its
signature, an input example (a real drawing sheet), pinned requirements and this project's
`training` and `patent_assets` code, so that a consumer needs MLflow and those requirements only.
A bad row (not base64, not a PNG or TIFF, a decompression bomb, an unknown option) fails the
request with a message naming the row: MLflow's scoring server answers it with a 400.
"""

from __future__ import annotations

import base64
import binascii
import io
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image

from patent_assets import real_sample
from patent_assets.images import ImageLimits

IMAGE = "image"  # the input column: base64 of the image file's bytes
ARTIFACT = "model"  # the pyfunc artifact holding the family's trained directory
MLMODEL = "MLmodel"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The packages a model's code needs, copied into the model (tests, demo data and caches left out).
CODE_PACKAGES = ("training", "patent_assets")
_CODE_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "real_sample", "synthetic")
_FORMATS = {"PNG": ".png", "TIFF": ".tif"}
# The input example stored with every version: a real design grant's sheet (3 KB, CCITT G4 TIFF).
EXAMPLE_SHEET = real_sample.DESIGN_GRANTS_2021 / "USD0913174-20210316" / "USD0913174-20210316-D00004.TIF"

Model = TypeVar("Model", bound="ImageModel")


class InvalidInput(MlflowException):
    """A request MLflow's scoring server answers with 400 and this message."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class ImageModel(mlflow.pyfunc.PythonModel):
    """A model answering one value per drawing of the `image` column; subclasses say how it loads
    (`load`), what it answers (`predict_images`) and which distributions it needs (`requirements`)."""

    requirements: tuple[str, ...] = ()
    limits = ImageLimits()

    def load_context(self, context: Any) -> None:
        self.load(Path(context.artifacts[ARTIFACT]))

    def load(self, directory: Path) -> None:
        raise NotImplementedError

    def predict_images(self, paths: list[Path], frame: pd.DataFrame, params: dict[str, Any]) -> list[Any]:
        raise NotImplementedError

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[Any]:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if IMAGE not in frame.columns:
            raise InvalidInput(f"the input has no {IMAGE!r} column (base64 of a PNG or TIFF drawing)")
        with decoded_images(frame[IMAGE].tolist(), self.limits) as paths:
            return self.predict_images(paths, frame.reset_index(drop=True), dict(params or {}))


@contextmanager
def decoded_images(values: Sequence[Any], limits: ImageLimits) -> Iterator[list[Path]]:
    """Each row's image as a file in a temporary folder (the families read files), checked first:
    base64, a PNG or TIFF, within the byte and pixel limits. The first bad row fails the request."""
    with tempfile.TemporaryDirectory(prefix="patentflow-predict-") as folder:
        paths = []
        for row, value in enumerate(values):
            data, suffix = _checked_image(row, value, limits)
            path = Path(folder) / f"{row}{suffix}"
            path.write_bytes(data)
            paths.append(path)
        yield paths


def _checked_image(row: int, value: Any, limits: ImageLimits) -> tuple[bytes, str]:
    if not isinstance(value, str | bytes) or not value:
        raise InvalidInput(f"row {row}: {IMAGE} must be base64 text of a PNG or TIFF file")
    if len(value) > limits.max_file_bytes * 4 // 3 + 4:
        raise InvalidInput(f"row {row}: the image is over the {limits.max_file_bytes} byte limit")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidInput(f"row {row}: {IMAGE} is not base64 ({error})") from error
    bomb = f"over the {limits.max_pixels} pixel limit (a decompression bomb?)"
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only: no pixels decoded yet
            kind, (width, height) = image.format, image.size
    except Image.DecompressionBombError as error:  # Pillow's own, process-wide limit
        raise InvalidInput(f"row {row}: {bomb}: {error}") from error
    except (OSError, ValueError) as error:
        raise InvalidInput(f"row {row}: not a readable image ({error})") from error
    if kind not in _FORMATS:
        raise InvalidInput(f"row {row}: a {kind} image; a drawing is a PNG or TIFF")
    if width * height > limits.max_pixels:
        raise InvalidInput(f"row {row}: {width} x {height} pixels is {bomb}")
    return data, _FORMATS[kind]


def encode_image(path: Path) -> str:
    """A drawing file as the `image` column wants it."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def input_example(**columns: str) -> pd.DataFrame:
    return pd.DataFrame([{IMAGE: encode_image(EXAMPLE_SHEET), **columns}])


def pinned(distributions: Sequence[str]) -> list[str]:
    """`name==version` of each installed distribution: the model's requirements, as trained."""
    return [f"{name}=={metadata.version(name)}" for name in ("mlflow", *distributions)]


def save(
    python_model: ImageModel,
    model_dir: Path,
    out: Path,
    signature: Any,
    input_example: pd.DataFrame,
) -> Path:
    """Write `model_dir` as an MLflow pyfunc model at `out` (a fresh directory)."""
    with tempfile.TemporaryDirectory(prefix="patentflow-code-") as code:
        code_paths = []
        for package in CODE_PACKAGES:
            shutil.copytree(PROJECT_ROOT / package, Path(code) / package, ignore=_CODE_IGNORED)
            code_paths.append(str(Path(code) / package))
        mlflow.pyfunc.save_model(
            path=str(out),
            python_model=python_model,
            artifacts={ARTIFACT: str(model_dir)},
            signature=signature,
            input_example=input_example,
            pip_requirements=pinned(python_model.requirements),
            code_paths=code_paths,
        )
    return out


def artifact_dir(directory: Path) -> Path:
    """The family's trained directory inside a saved pyfunc model; a plain directory as it is."""
    directory = Path(directory)
    if not (directory / MLMODEL).is_file():
        return directory
    from mlflow.models import Model as MlflowModel

    artifacts = MlflowModel.load(str(directory)).flavors["python_function"].get("artifacts", {})
    if ARTIFACT not in artifacts:
        raise ValueError(f"MLflow model {directory}: no {ARTIFACT!r} artifact (not a patentflow model?)")
    return directory / artifacts[ARTIFACT]["path"]


def load(directory: Path, model_class: type[Model]) -> Model:
    """The model in `directory`: through MLflow when it is a saved pyfunc model (the registry's),
    else a plain trained directory loaded by the same class."""
    directory = Path(directory)
    if (directory / MLMODEL).is_file():
        loaded = mlflow.pyfunc.load_model(str(directory)).unwrap_python_model()
        if not isinstance(loaded, model_class):
            raise ValueError(
                f"MLflow model {directory} is a {type(loaded).__name__}, not a {model_class.__name__}"
            )
        return loaded
    model = model_class()
    model.load(directory)
    return model
