"""The model half of the graph, materialized for real on a tiny data set: pretraining, both
stages through the DeepSpeed launcher (Pipes), evaluation with ablations, the MLflow registry,
the blocking promotion check and the generated descriptions; then the retrieval encoder trained
on them, gated the same way, and the search index that `patentflow search` reads."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import mlflow.pyfunc
import pytest
from mlflow.tracking import MlflowClient

from orchestration.assets import releases
from orchestration.definitions import build_definitions
from orchestration.resources import LandingDirectory, PatentflowHome, PatentLMMSettings, RetrievalSettings
from patent_assets import real_sample, synthetic
from tests.conftest import share_ocr_cache
from tests.mlflow_server import mlflow_server, s3_server
from tests.postgres import postgres_server
from training import tracking

pytestmark = pytest.mark.slow
# Four of the shipped real grants: the split holds out USD0909824 (val) and USD0928323 (test), so
# the retrieval gate has real drawings to judge by.
# The gate of each model, re-materialized alone to show that a tie does not promote.
GATE = {
    "patentlmm": [dg.AssetKey("patentlmm_challenger"), dg.AssetKey("patentlmm_champion")],
    "retrieval": [dg.AssetKey(k) for k in ("retrieval_challenger", "retrieval_champion", "retrieval_index")],
}
REAL_GRANTS = ("USD0907292-20210105", "USD0909824-20210209", "USD0915935-20210413", "USD0928323-20210817")


@pytest.fixture(scope="module")
def production_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """MLflow as in production (README, "Running past one machine"): `mlflow/server.sh` with its
    backend store on PostgreSQL and its artifacts on an S3 API; every command of the module
    reaches it through MLFLOW_TRACKING_URI."""
    with s3_server("patentflow") as s3, postgres_server() as database, pytest.MonkeyPatch.context() as env:
        backend = database.create_database("mlflow").replace("postgresql://", "postgresql+psycopg2://", 1)
        config = {
            **s3.env,
            "MLFLOW_BACKEND_STORE_URI": backend,
            "MLFLOW_ARTIFACTS_DESTINATION": "s3://patentflow/mlflow",
        }
        with mlflow_server(tmp_path_factory.mktemp("mlflow-server"), config) as url:
            env.setenv("MLFLOW_TRACKING_URI", url)
            yield {"uri": url, "s3": s3, "database": database}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, ocr_cache: Path, production_mlflow: dict):
    root = share_ocr_cache(tmp_path_factory.mktemp("model-home"), ocr_cache)
    landing = root / "landing"
    # seed 0: the hash splits give this release a non-empty test split
    synthetic.generate(synthetic.SyntheticConfig(releases=1, patents_per_release=6, seed=0), landing)
    subset = root / "real-grants"
    for grant in REAL_GRANTS:
        shutil.copytree(real_sample.DESIGN_GRANTS_2021 / grant, subset / grant)
    real_sample.land(landing, source=subset)
    real_sample.land_text(landing)  # 25 real grants of text for the language model, no drawings
    settings = PatentLMMSettings(max_steps=12, pretrain_steps=10)
    defs = build_definitions(
        release_source=LandingDirectory(path=str(landing)),
        home=PatentflowHome(root=str(root)),
        settings=settings,
        retrieval=RetrievalSettings(epochs=3),
    )
    # closed at the module's end, so that no instance of this module stays current for the next
    with dg.DagsterInstance.ephemeral() as instance:
        keys = [r.key for r in LandingDirectory(path=str(landing)).list_releases()]
        assert len(keys) == 3
        instance.add_dynamic_partitions(releases.name, keys)
        for key in keys:
            assert (
                defs.resolve_job_def("ingest_release")
                .execute_in_process(instance=instance, partition_key=key)
                .success
            )
        assert defs.resolve_job_def("build_dataset").execute_in_process(instance=instance).success
        first = defs.resolve_job_def("retrain_patentlmm").execute_in_process(
            instance=instance, raise_on_error=False
        )
        yield defs, instance, root, first


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    return next(
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == asset
    )


def test_first_model_is_trained_evaluated_registered_and_becomes_champion(trained, production_mlflow) -> None:
    _, _, root, first = trained
    assert first.success
    uri = os.environ["MLFLOW_TRACKING_URI"]  # the production server of the module
    challenger = _metadata(first, "patentlmm_challenger")
    assert challenger["model_version"].value == 1
    for name in ("brief_bleu4", "brief_rougeL", "brief_meteor", "brief_cider"):
        assert name in challenger
    assert set(challenger["ablations"].value) == {"image_blind"}  # PatentLMMSettings.ablations default
    # judged on the real test drawings, beside the three baselines that need no description model
    for name in ("", "constant_", "nearest_neighbour_", "ocr_label_"):
        assert 0.0 <= challenger[f"{name}brief_real_rougeL"].value <= 1.0
        assert f"{name}brief_real_bleu4" in challenger and f"{name}brief_rougeL" in challenger
    # twelve steps cannot beat them: the warning fails visibly, and the first model is still champion
    [warning] = [
        c for c in first.get_asset_check_evaluations() if c.check_name == "challenger_beats_baselines"
    ]
    assert warning.severity == dg.AssetCheckSeverity.WARN and not warning.passed
    assert (
        "does NOT beat" in warning.metadata["reason"].value and "baseline" in warning.metadata["reason"].value
    )
    assert tracking.get_alias_version("patentlmm", "champion", tracking_uri=uri) == 1
    # the registry reads well: an MLflow model, a few tags, a description of data, scores and decision
    client = MlflowClient(tracking_uri=uri)
    version = client.get_model_version("patentlmm", "1")
    assert version.tags["promotion_decision"] == "promoted" and version.tags["beats_constant"] == "False"
    assert len(version.tags) <= 10, version.tags
    assert (
        "Trained on `llava_dataset` (DVC md5 `" in version.description and "2013-04-16" in version.description
    )
    table = version.description.split("\n\n")[1].splitlines()
    assert table[0] == "| metric | challenger | constant | nearest_neighbour | ocr_label |"
    assert any(row.startswith("| brief_real_rougeL | ") for row in table)
    assert "Promoted to champion" in version.description and "first version" in version.description
    assert "PatentLMM" in client.get_registered_model("patentlmm").description
    # the registry lives in PostgreSQL, the model's files in the S3 bucket, served through the server
    database = production_mlflow["database"]
    assert database.query("mlflow", "SELECT version FROM model_versions WHERE name = 'patentlmm'") == ["1"]
    stored = production_mlflow["s3"].keys("mlflow/")
    assert any(key.endswith("/model/MLmodel") for key in stored) and not (root / "mlflow").exists()
    served = mlflow.pyfunc.load_model(
        str(tracking.download_model("models:/patentlmm@champion", tracking_uri=uri))
    )
    assert served.metadata.get_input_schema().input_names() == ["image", "kind"]
    # the training runs carry what was trained on and how it went
    # PatentLLaMA and the tokenizer read the real text of every validated release, the weekly
    # full-text file's 25 grants too, and not the held-out patents' text
    from patent_assets.dataset import held_out_patents, validated_documents
    from patent_assets.records import read_jsonl

    sources = validated_documents(root / "data" / "releases")
    assert [p.parts[-3] for p in sources][:1] == ["2013-04-16"] and len(sources) == 3
    held_out = held_out_patents(root / "data" / "dataset" / "figures" / "figures.jsonl")
    grants = [row["document"]["patent_id"] for source in sources for row in read_jsonl(source)]
    assert held_out and held_out <= set(grants)
    assert _metadata(first, "patent_llama")["documents"].value == len(set(grants) - held_out) >= 25 + 3
    assert _metadata(first, "description_tokenizer")["text_releases"].value == 3
    stage2 = _metadata(first, "patentlmm_stage2")
    run = tracking._client(uri).get_run(stage2["mlflow_run_id"].value)
    assert run.data.tags["data.llava_dataset_md5"].endswith(".dir")
    assert run.data.tags["git_commit"]
    assert "train/loss" in run.data.metrics and run.data.params["stage"] == "2"
    model_dir = Path(stage2["path"].value)
    assert (model_dir / "config.json").exists() and (model_dir / "tokenizer").is_dir()
    generated = json.loads(Path(_metadata(first, "generated_descriptions")["path"].value).read_text())
    figures = [json.loads(line) for line in (root / "data" / "dataset" / "figures" / "figures.jsonl").open()]
    assert set(generated) == {f["image_id"] for f in figures}
    assert all(isinstance(text, str) for text in generated.values())


def test_a_challenger_that_ties_with_the_champion_is_not_promoted(trained) -> None:
    defs, instance, _, first = trained
    uri = os.environ["MLFLOW_TRACKING_URI"]  # the production server of the module
    # The same stage-2 model evaluated again and registered as version 2: it ties with the
    # champion, and a tie does not promote. Only the gate runs again, not the training.
    second = defs.resolve_job_def("retrain_patentlmm").execute_in_process(
        instance=instance, raise_on_error=False, asset_selection=GATE["patentlmm"]
    )
    [check] = [c for c in second.get_asset_check_evaluations() if c.check_name == "challenger_beats_champion"]
    assert not check.passed
    assert "ties with champion" in check.metadata["reason"].value
    metric = check.metadata["metric"].value
    assert (
        _metadata(second, "patentlmm_challenger")[metric].value
        == _metadata(first, "patentlmm_challenger")[metric].value
    )
    assert "patentlmm_champion" not in {
        e.asset_key.to_user_string() for e in second.get_asset_materialization_events()
    }
    assert tracking.get_alias_version("patentlmm", "champion", tracking_uri=uri) == 1
    assert tracking.get_alias_version("patentlmm", "challenger", tracking_uri=uri) == 2
    client = MlflowClient(tracking_uri=uri)
    version = client.get_model_version("patentlmm", "2")
    assert version.tags["promotion_decision"] == "rejected" and "Not promoted" in version.description
    assert "ties with champion" in version.description
    assert dict(client.get_model_version("patentlmm", "1").tags)["promotion_decision"] == "promoted"


def test_describe_uses_the_champion_on_real_sheets(trained, realdata: Path, monkeypatch) -> None:
    """`patentflow describe` on real drawing sheets: JSON lines; different drawings, different text."""
    from typer.testing import CliRunner

    from patentflow.cli import app

    _, _, root, _ = trained
    monkeypatch.setenv("PATENTFLOW_HOME", str(root))
    design = realdata / "design_patents_with_drawings_2021"
    sheets = [
        design / "USD0907292-20210105" / "USD0907292-20210105-D00001.TIF",
        design / "USD0909824-20210209" / "USD0909824-20210209-D00002.TIF",
        design / "USD0929296-20210831" / "USD0929296-20210831-D00002.TIF",
        design / "USD0913174-20210316" / "USD0913174-20210316-D00005.TIF",
    ]
    result = CliRunner().invoke(app, ["describe", *map(str, sheets), "--max-new-tokens", "40"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [Path(r["image"]).name for r in rows] == [s.name for s in sheets]
    assert all(r["description"] and r["error"] is None for r in rows)
    assert len({r["description"] for r in rows}) >= 2, rows

    missing = CliRunner().invoke(app, ["describe", str(sheets[0]), "--model", str(root / "no-such-model")])
    assert missing.exit_code == 2 and "no-such-model" in missing.output


@pytest.fixture(scope="module")
def retrieval_runs(trained):
    """retrain_retrieval, then its gate again on the same encoder: promoted first, a tie second."""
    defs, instance, _, first = trained
    assert first.success
    job = defs.resolve_job_def("retrain_retrieval")
    once = job.execute_in_process(instance=instance, raise_on_error=False)
    # the same encoder judged again: only the gate and what it guards run
    return once, job.execute_in_process(
        instance=instance, raise_on_error=False, asset_selection=GATE["retrieval"]
    )


def test_retrieval_encoder_is_trained_registered_promoted_and_indexed(trained, retrieval_runs) -> None:
    _, _, root, _ = trained
    first, _ = retrieval_runs
    assert first.success
    uri = os.environ["MLFLOW_TRACKING_URI"]  # the production server of the module
    encoder = _metadata(first, "retrieval_encoder")
    assert {"same_patent_mAP", "untrained_same_patent_mAP"} <= set(encoder)
    # the gate's evaluation: the challenger and its bars, on the real held-out drawings
    challenger = _metadata(first, "retrieval_challenger")
    for name in ("", "untouched_", "pixels_"):
        assert 0.0 < challenger[f"{name}real_same_patent_mAP"].value <= 1.0
        assert f"{name}synthetic_same_patent_mAP" in challenger
    [warning] = [
        c
        for c in first.get_asset_check_evaluations()
        if c.check_name == "retrieval_challenger_beats_pretrained"
    ]
    assert (
        warning.severity == dg.AssetCheckSeverity.WARN
        and "untouched baseline" in warning.metadata["reason"].value
    )
    tags = dict(MlflowClient(tracking_uri=uri).get_model_version("patent-figure-encoder", "1").tags)
    assert tags["beats_untouched"] == str(warning.passed)
    run = tracking._client(uri).get_run(encoder["mlflow_run_id"].value)
    assert run.data.tags["data.figure_dataset_md5"].endswith(".dir")
    assert run.data.tags["data.generated_descriptions_md5"]
    assert tracking.get_alias_version("patent-figure-encoder", "champion", tracking_uri=uri) == 1
    index = _metadata(first, "retrieval_index")
    figures = [json.loads(line) for line in (root / "data" / "dataset" / "figures" / "figures.jsonl").open()]
    assert index["figures"].value == len(figures)
    assert 0 < index["generated_descriptions"].value <= len(figures)  # hits show PatentLMM's text
    assert index["dvc_md5"].value.endswith(".dir")
    assert "prior art only" in index["sample_query"].value
    assert index["thumbnail_weight"].value == 0.0 and 0.0 < index["collection_same_patent_mAP"].value <= 1.0
    # What `patentflow run` prints about the index
    from orchestration.runner import _retrieval_summary

    assert "(flat; thumbnail weight 0.0), same-patent mAP" in _retrieval_summary(first)["index"]


def test_a_retrieval_challenger_that_ties_is_not_promoted(trained, retrieval_runs) -> None:
    _, second = retrieval_runs
    uri = os.environ["MLFLOW_TRACKING_URI"]  # the production server of the module
    [check] = [
        c
        for c in second.get_asset_check_evaluations()
        if c.check_name == "retrieval_challenger_beats_champion"
    ]
    assert not check.passed and "ties with champion" in check.metadata["reason"].value
    assert "retrieval_index" not in {
        e.asset_key.to_user_string() for e in second.get_asset_materialization_events()
    }
    assert tracking.get_alias_version("patent-figure-encoder", "champion", tracking_uri=uri) == 1
    tags = dict(MlflowClient(tracking_uri=uri).get_model_version("patent-figure-encoder", "2").tags)
    assert tags["promotion_decision"] == "rejected"


def test_search_and_index_default_to_the_pipeline(trained, retrieval_runs, tmp_path, monkeypatch) -> None:
    """`patentflow search` reads the pipeline's index; `patentflow index` uses the champion encoder."""
    from typer.testing import CliRunner

    from patentflow.cli import app

    _, _, root, _ = trained
    monkeypatch.setenv("PATENTFLOW_HOME", str(root))
    figures = root / "data" / "dataset" / "figures" / "figures.jsonl"
    query = json.loads(figures.read_text().splitlines()[-1])
    found = CliRunner().invoke(app, ["search", "--image", query["image_path"], "--k", "2", "--json"])
    assert found.exit_code == 0, found.output
    hits = [json.loads(line) for line in found.stdout.splitlines() if line.startswith("{")]
    assert hits[0]["figure_id"] == query["image_id"]
    built = CliRunner().invoke(app, ["index", str(figures), "--out", str(tmp_path / "index")])
    assert built.exit_code == 0, built.output
    manifest = json.loads((tmp_path / "index" / "index.json").read_text())
    assert manifest["encoder"]["source"] == "models:/patent-figure-encoder@champion"
