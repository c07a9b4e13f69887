"""MLflow tracking and registry against a real SQLite store (and once, a real server)."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.http_server import Fault, serve
from tests.mlflow_server import mlflow_server as running_mlflow_server
from training import tracking
from training.describe import pyfunc as describe_model
from training.describe.distributed import free_port
from training.pyfunc import artifact_dir
from training.tracking import TrackingUnavailable


def _version_tags(store: str, name: str, version: int) -> dict[str, str]:
    return dict(MlflowClient(tracking_uri=store).get_model_version(name, str(version)).tags)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module: creating its tables takes a few seconds."""
    home = tmp_path_factory.mktemp("mlflow-home")
    uri = f"sqlite:///{home}/mlflow/mlflow.db"
    tracking.check_reachable(uri)
    return uri


def _model_dir(root: Path, marker: str) -> Path:
    """A small HF-format directory whose weights file tells versions apart."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "patentlmm", "marker": marker}))
    (root / "model.safetensors").write_bytes(marker.encode() * 64)
    return root


def test_tracking_uri_default_and_override(monkeypatch: pytest.MonkeyPatch, patentflow_home: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.tracking_uri()
    assert uri == f"sqlite:///{patentflow_home.resolve()}/mlflow/mlflow.db"
    assert tracking.artifact_root(uri) == patentflow_home.resolve() / "mlflow" / "artifacts"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.tracking_uri(patentflow_home) == "http://tracking.example:5000"
    assert tracking.artifact_root("http://tracking.example:5000") is None


def test_run_logs_config_data_version_commit_plots_and_samples(store: str, tmp_path: Path) -> None:
    params = {"stage": 1, "lr": 1e-3, "model": {"hidden_size": 64, "layers": [1, 2]}}
    run_id = tracking.start_training_run(
        "test-runs",
        "stage1-brief",
        params,
        tags={"kind": "brief"},
        data_version={"dvc_md5": "0123abcd", "dvc_commit": "feedbeef"},
        tracking_uri=store,
    )
    tracking.log_metrics(run_id, {"eval_loss": 2.5, "bleu4": 0.12}, step=3, tracking_uri=store)
    history = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.1, "eval_loss": 2.6}, {"step": 3, "loss": 1.7}]
    assert tracking.log_curve_plot(run_id, history, "stage1", tracking_uri=store) == "plots/stage1.png"
    drawing = tmp_path / "US1__1.png"
    Image.new("L", (300, 200), 255).save(drawing)
    samples = [
        (drawing, "FIG. 1 is a view.", "FIG. 1 is a perspective view."),
        (tmp_path / "gone.png", "p", "r"),
    ]
    tracking.log_samples(run_id, samples, tracking_uri=store)
    tracking.finish_run(run_id, tracking_uri=store)

    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {
        "stage": "1",
        "lr": "0.001",
        "model.hidden_size": "64",
        "model.layers": "[1, 2]",
    }
    assert run.data.tags["data.dvc_md5"] == "0123abcd" and run.data.tags["data.dvc_commit"] == "feedbeef"
    assert run.data.tags["kind"] == "brief"
    expected_commit = tracking.read_git_commit()
    assert run.data.tags["git_commit"] == expected_commit
    assert expected_commit == "unknown" or len(expected_commit) == 40
    assert tracking.read_git_commit(tmp_path) == "unknown"
    assert run.data.metrics == {"eval_loss": 2.5, "bleu4": 0.12}

    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(tracking.artifact_root(store))
    assert json.loads((artifacts / "config.json").read_text()) == params
    with Image.open(artifacts / "plots" / "stage1.png") as plot:
        assert plot.format == "PNG" and plot.width > 300
    with Image.open(artifacts / "samples" / "samples.png") as grid:
        assert grid.format == "PNG" and grid.height > grid.width / 3  # two rows
    table = json.loads((artifacts / "samples" / "samples.json").read_text())
    assert table["columns"] == ["image", "prediction", "reference"]
    assert table["data"][0] == ["images/000_US1__1.png", "FIG. 1 is a view.", "FIG. 1 is a perspective view."]
    assert table["data"][1][0].startswith("unreadable: ")
    assert (artifacts / "samples" / "images" / "000_US1__1.png").is_file()

    with pytest.raises(ValueError, match="history is empty"):
        tracking.log_curve_plot(run_id, [], tracking_uri=store)
    with pytest.raises(ValueError, match="row 0 has no 'step'"):
        tracking.log_curve_plot(run_id, [{"loss": 1.0}], tracking_uri=store)


def test_a_training_run_ends_finished_or_failed_with_its_block(store: str) -> None:
    client = MlflowClient(store)
    with tracking.training_run("lifecycle", "ok", {"lr": 0.1}, tracking_uri=store) as run_id:
        assert client.get_run(run_id).info.status == "RUNNING"
    assert client.get_run(run_id).info.status == "FINISHED"
    with (
        pytest.raises(RuntimeError, match="launch failed"),
        tracking.training_run("lifecycle", "bad", {"lr": 0.1}, tracking_uri=store) as failed_id,
    ):
        raise RuntimeError("launch failed")
    assert client.get_run(failed_id).info.status == "FAILED"
    assert client.get_run(failed_id).data.params == {"lr": "0.1"}


def test_register_promote_and_download_by_alias(store: str, tmp_path: Path) -> None:
    name = "patentlmm-brief-promotion"
    primary = "bleu4"

    def new_version(marker: str) -> int:
        run_id = tracking.start_training_run("test-registry", marker, {"marker": marker}, tracking_uri=store)
        return tracking.register_model(
            run_id,
            _model_dir(tmp_path / marker, marker),
            name,
            describe_model.save,
            description=f"the {marker} one",
            model_description="descriptions of drawings",
            tags={"kind": "brief"},
            tracking_uri=store,
        )

    assert tracking.get_alias_version(name, tracking.CHAMPION, tracking_uri=store) is None
    first = new_version("first")
    assert first == 1
    assert tracking.get_alias_version(name, tracking.CHALLENGER, tracking_uri=store) == 1
    # No champion yet: the first version is promoted even by a negative decision.
    applied = tracking.promote(name, first, tracking.Decision(False, "not compared"), tracking_uri=store)
    assert applied.promote and applied.reason == "first version"
    assert tracking.get_alias_version(name, tracking.CHAMPION, tracking_uri=store) == 1
    assert _version_tags(store, name, first)["promotion_decision"] == "promoted"

    champion_scores = {"bleu4": 0.30, "rougeL": 0.50}
    worse = new_version("worse")
    decision = tracking.compare({"bleu4": 0.25, "rougeL": 0.55}, champion_scores, primary)
    tracking.promote(name, worse, decision, tracking_uri=store)
    assert tracking.get_alias_version(name, tracking.CHAMPION, tracking_uri=store) == first
    assert tracking.get_alias_version(name, tracking.CHALLENGER, tracking_uri=store) == worse
    tags = _version_tags(store, name, worse)
    assert tags["promotion_decision"] == "rejected" and tags["promotion_metric"] == "bleu4"
    assert (
        float(tags["promotion_challenger_value"]) == 0.25 and float(tags["promotion_champion_value"]) == 0.30
    )
    assert tags["promotion_champion_version"] == "1" and tags["kind"] == "brief"
    assert len(tags) <= 6  # few and filterable; the scores and the reason are in the description
    described = MlflowClient(tracking_uri=store).get_model_version(name, str(worse)).description
    assert described.startswith("the worse one") and "Not promoted" in described
    assert "does not beat champion 0.3" in described and "against champion version 1" in described
    registered = MlflowClient(tracking_uri=store).get_registered_model(name)
    assert registered.description == "descriptions of drawings"

    better = new_version("better")
    decision = tracking.compare({"bleu4": 0.35}, champion_scores, primary)
    assert decision.promote
    tracking.promote(name, better, decision, tracking_uri=store)
    assert tracking.get_alias_version(name, tracking.CHAMPION, tracking_uri=store) == better == 3
    assert _version_tags(store, name, better)["promotion_decision"] == "promoted"

    local = artifact_dir(tracking.download_model(f"models:/{name}@champion", tracking_uri=store))
    assert json.loads((local / "config.json").read_text())["marker"] == "better"
    assert (local / "model.safetensors").read_bytes() == b"better" * 64

    # A named destination is filled atomically, reused while the alias stays, refreshed when it moves.
    cache = tmp_path / "cache" / "champion"
    assert tracking.download_model(f"models:/{name}@champion", cache, tracking_uri=store) == cache
    stamp = (cache / "MLmodel").stat().st_mtime_ns
    tracking.download_model(f"models:/{name}@champion", cache, tracking_uri=store)
    assert (cache / "MLmodel").stat().st_mtime_ns == stamp
    MlflowClient(tracking_uri=store).set_registered_model_alias(name, tracking.CHAMPION, str(first))
    tracking.download_model(f"models:/{name}@champion", cache, tracking_uri=store)
    assert json.loads((artifact_dir(cache) / "config.json").read_text())["marker"] == "first"
    second = artifact_dir(tracking.download_model(f"models:/{name}/2", tracking_uri=store))
    assert json.loads((second / "config.json").read_text())["marker"] == "worse"
    assert tracking.download_model(tmp_path / "first", tracking_uri=store) == tmp_path / "first"


def test_registry_bad_input_gets_clear_errors(store: str, tmp_path: Path) -> None:
    run_id = tracking.start_training_run("test-registry", "bad", {}, tracking_uri=store)
    with pytest.raises(FileNotFoundError, match="missing-model"):
        tracking.register_model(
            run_id, tmp_path / "missing-model", "bad-model", describe_model.save, tracking_uri=store
        )
    (tmp_path / "not-hf").mkdir()
    (tmp_path / "not-hf" / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not in HF format"):
        tracking.register_model(
            run_id, tmp_path / "not-hf", "bad-model", describe_model.save, tracking_uri=store
        )
    with pytest.raises(LookupError, match="no alias 'champion'"):
        tracking.download_model("models:/never-registered@champion", tracking_uri=store)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        tracking.download_model(tmp_path / "nowhere", tracking_uri=store)


def test_compare_rules() -> None:
    champion = {"bleu4": 0.30, "loss": 2.0}
    tie = tracking.compare({"bleu4": 0.30}, champion, "bleu4")
    assert not tie.promote and "ties with champion" in tie.reason  # a tie keeps the champion
    assert not tracking.compare({"bleu4": 0.305}, champion, "bleu4", min_delta=0.01).promote
    assert tracking.compare({"bleu4": 0.32}, champion, "bleu4", min_delta=0.01).promote
    assert tracking.compare({"loss": 1.9}, champion, "loss", higher_is_better=False).promote
    assert not tracking.compare({"loss": 2.1}, champion, "loss", higher_is_better=False).promote
    assert not tracking.compare({"bleu4": float("nan")}, champion, "bleu4").promote
    first = tracking.compare({"bleu4": 0.1}, None, "bleu4")
    assert first.promote and first.reason == "first version"
    with pytest.raises(ValueError, match="challenger metrics have no 'cider'"):
        tracking.compare({"bleu4": 0.1}, champion, "cider")
    with pytest.raises(ValueError, match="champion metrics have no 'rougeL'"):
        tracking.compare({"rougeL": 0.1}, champion, "rougeL")


def test_unreachable_server_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingUnavailable, match=f"MLflow tracking server {closed} is unreachable"):
        tracking.check_reachable(closed, timeout=2)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:secret@127.0.0.1:{free_port()}")
    with pytest.raises(TrackingUnavailable, match=r"user:\*\*\*@127\.0\.0\.1") as raised:
        tracking.configure(timeout=2)
    assert "secret" not in str(raised.value)

    with serve() as server:  # a server that answers, but not healthy
        server.add("/health", b"OK", faults=[Fault(status=503)])
        with pytest.raises(TrackingUnavailable, match="answered 503"):
            tracking.check_reachable(server.url(""), timeout=2)
        tracking.check_reachable(server.url(""), timeout=2)  # the next answer is 200


@pytest.fixture
def mlflow_server(store: str, tmp_path: Path) -> Iterator[str]:
    """`mlflow/server.sh` on 127.0.0.1 with its own SQLite store and proxied artifacts.

    The store starts as a copy of the module's, whose tables exist: creating them would add
    ~8 s to the server's start."""
    source = sqlite3.connect(store.removeprefix("sqlite:///"))
    with sqlite3.connect(tmp_path / "mlflow.db") as copy:
        source.backup(copy)
    source.close()
    env = {
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "art"),
    }
    with running_mlflow_server(tmp_path, env) as url:
        yield url


def test_round_trip_through_a_real_tracking_server(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert tracking.configure(timeout=5) == mlflow_server
    run_id = tracking.start_training_run("served", "stage2", {"lr": 2e-4})
    model_dir = _model_dir(tmp_path / "model", "served")
    version = tracking.register_model(run_id, model_dir, "patentlmm-served", describe_model.save)
    tracking.promote(
        version=version, name="patentlmm-served", decision=tracking.compare({"bleu4": 0.2}, None, "bleu4")
    )
    local = artifact_dir(
        tracking.download_model("models:/patentlmm-served@champion", tmp_path / "downloaded")
    )
    assert json.loads((local / "config.json").read_text())["marker"] == "served"
    # Artifacts went through the server to its own destination, not to a local path.
    assert list((tmp_path / "art").rglob("model.safetensors"))


def test_retrieval_metric_names_with_at_are_logged(store: str) -> None:
    """ir-measures names like "Recall@10" are not valid MLflow names: they are logged as "_at_"."""
    run_id = tracking.start_training_run("names", "at", params={}, tracking_uri=store)
    tracking.log_metrics(
        run_id, {"same_patent_mAP@all": 0.5, "prior_art_Recall@10": 0.25}, tracking_uri=store
    )
    logged = tracking._client(store).get_run(run_id).data.metrics
    assert logged == {"same_patent_mAP_at_all": 0.5, "prior_art_Recall_at_10": 0.25}
