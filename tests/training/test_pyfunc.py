"""training.pyfunc and the two families' MLflow models: registered, loaded by MLflow alone,
served by `mlflow models serve`, and refusing bad rows with the row and the reason."""

from __future__ import annotations

import base64
import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.training.describe.test_inference import make_trained_model
from training import pyfunc, tracking
from training.describe import pyfunc as describe_model
from training.describe.distributed import free_port
from training.retrieval import pyfunc as encoder_model
from training.retrieval.model import build_encoder, embed_images, preset, save_encoder

# a real design grant's drawing sheet (USPTO, CCITT G4 TIFF)
REAL_SHEET = "design_patents_with_drawings_2021/USD0910059-20210209/USD0910059-20210209-D00001.TIF"
SERVE_START_LIMIT_S = 120.0


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Both families' models registered as champions in one SQLite store."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    trained = make_trained_model(root / "patentlmm")
    encoder_dir = save_encoder(build_encoder(preset("tiny"), seed=0), root / "encoder")
    for name, directory, save in (
        ("patentlmm", trained["model"], describe_model.save),
        ("patent-figure-encoder", encoder_dir, encoder_model.save),
    ):
        run_id = tracking.start_training_run("pyfunc", name, {}, tracking_uri=uri)
        version = tracking.register_model(run_id, directory, name, save, tracking_uri=uri)
        tracking.promote(name, version, tracking.compare({"m": 1.0}, None, "m"), tracking_uri=uri)
    return {"uri": uri, "encoder_dir": str(encoder_dir)}


@pytest.fixture
def from_registry(registry: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["uri"])
    mlflow.set_tracking_uri(registry["uri"])
    return registry


def _frame(*paths: Path, **columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"image": [pyfunc.encode_image(p) for p in paths], **columns})


def test_mlflow_alone_describes_a_real_sheet_and_embeds_it_as_the_library_does(
    from_registry: dict[str, str], realdata: Path
) -> None:
    sheet = realdata / REAL_SHEET
    described = mlflow.pyfunc.load_model("models:/patentlmm@champion")
    answers = described.predict(
        _frame(sheet, sheet, kind=["brief", "detailed"]), params={"max_new_tokens": 24}
    )
    # the tiny model has memorised toy sentences about FIG labels: what it writes of any sheet
    assert len(answers) == 2 and all(isinstance(text, str) and "FIG." in text for text in answers)
    signature = described.metadata.get_input_schema().input_names()
    assert signature == ["image", "kind"]

    encoder = mlflow.pyfunc.load_model("models:/patent-figure-encoder@champion")
    (embedding,) = encoder.predict(_frame(sheet))
    library = embed_images(encoder_model.load(Path(from_registry["encoder_dir"])).encoder, [sheet]).retrieval[
        0
    ]
    np.testing.assert_allclose(np.asarray(embedding), library, atol=1e-6)
    assert abs(np.linalg.norm(embedding) - 1.0) < 1e-5


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height`: what a decompression bomb looks like before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


def _gif() -> str:
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 255).save(buffer, format="GIF")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"image": "not base64 at all!"}, r"row 1: image is not base64"),
        ({"image": base64.b64encode(b"just some text").decode()}, r"row 1: not a readable image"),
        ({"image": _gif()}, r"row 1: a GIF image; a drawing is a PNG or TIFF"),
        (
            {"image": base64.b64encode(_png_header(10_000, 10_000)).decode()},
            r"row 1: 10000 x 10000 pixels is over the 60000000 pixel limit \(a decompression bomb\?\)",
        ),
        (
            {"image": base64.b64encode(_png_header(100_000, 100_000)).decode()},
            r"row 1: over the 60000000 pixel limit \(a decompression bomb\?\): Image size",
        ),
        ({"kind": "claims"}, r"row 1: unknown kind 'claims'"),
        ({"image": None}, r"row 1: image must be base64 text"),
    ],
)
def test_a_bad_row_fails_the_request_naming_the_row_and_the_reason(
    from_registry: dict[str, str], realdata: Path, row: dict, message: str
) -> None:
    good = {"image": pyfunc.encode_image(realdata / REAL_SHEET), "kind": "brief"}
    model = mlflow.pyfunc.load_model("models:/patentlmm@champion")
    with pytest.raises(pyfunc.InvalidInput, match=message):
        model.predict(pd.DataFrame([good, {**good, **row}]), params={"max_new_tokens": 4})


def test_a_plain_directory_loads_through_the_same_class(from_registry: dict[str, str]) -> None:
    downloaded = tracking.download_model("models:/patent-figure-encoder@champion")
    through_mlflow = encoder_model.load(downloaded)
    plain = encoder_model.load(pyfunc.artifact_dir(downloaded))
    assert type(through_mlflow) is type(plain) and plain.encoder.config == through_mlflow.encoder.config
    with pytest.raises(ValueError, match="is a FigureEncoderModel, not a PatentLMMModel"):
        describe_model.load(downloaded)


@pytest.fixture
def served(from_registry: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """`mlflow models serve` of both champions, each on its own port of 127.0.0.1."""
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # as in an activated virtualenv: the server runs `uvicorn` from PATH
    env = {**os.environ, "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    processes, urls = [], {}
    try:
        for name in ("patentlmm", "patent-figure-encoder"):
            port = free_port()
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - the server writes it until the end
            command = [str(mlflow_cli), "models", "serve", "-m", f"models:/{name}@champion"]
            command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
            processes.append(
                subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            )
            urls[name] = f"http://127.0.0.1:{port}"
        for name, url in urls.items():
            deadline = time.monotonic() + SERVE_START_LIMIT_S
            while True:
                try:
                    if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"{name} did not answer /ping: {(tmp_path / f'{name}.log').read_text()[-2000:]}"
                    )
                time.sleep(0.5)
        yield urls
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def test_mlflow_models_serve_answers_a_real_sheet_and_refuses_a_bad_one(
    served: dict[str, str], from_registry: dict[str, str], realdata: Path
) -> None:
    sheet = realdata / REAL_SHEET
    record = {"image": pyfunc.encode_image(sheet)}
    answer = httpx.post(
        f"{served['patentlmm']}/invocations",
        json={"dataframe_records": [record], "params": {"max_new_tokens": 24}},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    (description,) = answer.json()["predictions"]
    assert "FIG." in description

    answer = httpx.post(
        f"{served['patent-figure-encoder']}/invocations", json={"dataframe_records": [record]}, timeout=120
    )
    assert answer.status_code == 200, answer.text
    (embedding,) = answer.json()["predictions"]
    library = embed_images(encoder_model.load(Path(from_registry["encoder_dir"])).encoder, [sheet]).retrieval[
        0
    ]
    np.testing.assert_allclose(np.asarray(embedding), library, atol=1e-6)

    refused = httpx.post(
        f"{served['patentlmm']}/invocations",
        json={"dataframe_records": [record, {"image": "%%%"}]},
        timeout=60,
    )
    assert refused.status_code == 400 and "row 1: image is not base64" in refused.text


def test_patentflow_index_loads_the_registry_encoder_through_its_mlflow_model(
    from_registry: dict[str, str], realdata: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from patent_assets.records import write_jsonl
    from patentflow.cli import app
    from training.retrieval import search_index

    grant = realdata / "design_patents_with_drawings_2021" / "USD0910059-20210209"
    rows = [
        {
            "image_id": f"USD0910059S1__{n}",
            "patent_id": "USD0910059S1",
            "image_path": str(sheet),
            "grant_date": "2021-02-09",
        }
        for n, sheet in enumerate(sorted(grant.glob("*.TIF")), start=1)
    ]
    write_jsonl(tmp_path / "figures.jsonl", rows)
    result = CliRunner().invoke(
        app, ["index", str(tmp_path / "figures.jsonl"), "--out", str(tmp_path / "index")]
    )
    assert result.exit_code == 0, result.output
    loaded = search_index.SearchIndex.load(tmp_path / "index")
    assert loaded.manifest["encoder"]["source"] == "models:/patent-figure-encoder@champion"
    # the index's copy of the encoder is the registered one: its vectors are the served model's (the
    # index reads the backbone's features through the feature cache, so equal to float precision)
    served = mlflow.pyfunc.load_model("models:/patent-figure-encoder@champion")
    embeddings = np.asarray(served.predict(_frame(*(Path(row["image_path"]) for row in rows))))
    position = {figure.figure_id: i for i, figure in enumerate(loaded.figures.figures)}
    indexed = loaded.figures.reconstruct(np.array([position[row["image_id"]] for row in rows]))
    cosines = embeddings @ indexed.T
    assert np.all(np.diag(cosines) > 0.9999) and np.all(np.diag(cosines) > cosines.max(axis=1) - 1e-9)
