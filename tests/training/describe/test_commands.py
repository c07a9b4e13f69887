"""training.entry and training.describe.commands: the commands Dagster launches, run as real subprocesses (and once through Pipes)."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import dagster as dg
import pytest
from transformers import LayoutLMv3Model, LlamaForCausalLM

from patent_assets.alignment import label_words
from patent_assets.documents import document_to_dict
from patent_assets.figrefs import first_label_key, label_key
from patent_assets.records import write_jsonl
from tests.conftest import PROJECT
from tests.training.describe.test_inference import make_trained_model
from tests.training.describe.test_patent_llama import grant
from training import entry, job, tracking
from training.describe import commands
from training.describe.baselines import CONSTANT_DESCRIPTION, commonest_sentence
from training.describe.inference import load_for_inference
from training.describe.metrics import METRIC_NAMES


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_trained_model(tmp_path_factory.mktemp("trained"))


def _config(path: Path, **values) -> Path:
    path.write_text(json.dumps(values, default=str))
    return path


def _run_cli(command: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        entry.command_line(command, config), cwd=PROJECT, capture_output=True, text=True, timeout=300
    )


def test_generate_describes_every_figure_and_resumes(trained, tmp_path: Path) -> None:
    figures = tmp_path / "figures.jsonl"
    rows = [json.loads(line) for line in trained["figures"].read_text().splitlines()]
    for row in rows:
        row["image_path"] = str(trained["images"] / Path(row["image_path"]).name)
    rows.append({"image_id": "US4242B2__1", "image_path": str(tmp_path / "gone.png"), "ocr": {}})
    write_jsonl(figures, rows)
    out = tmp_path / "out"
    config = _config(
        tmp_path / "generate.json",
        out_dir=out,
        model_dir=trained["model"],
        figures_jsonl=figures,
        batch_size=3,
        max_new_tokens=30,
    )

    done = _run_cli("generate", config)
    assert done.returncode == 0, done.stderr
    generated = json.loads((out / commands.GENERATED_FILE).read_text())
    assert list(generated) == [row["image_id"] for row in rows[:4]]
    assert generated["US1000B2__1"] == "FIG. 1 is a front view of the chair."  # memorised, stored OCR
    rejected = [json.loads(line) for line in (out / "generate_rejected.jsonl").read_text().splitlines()]
    assert [r["item"] for r in rejected] == ["US4242B2__1"] and "gone.png" in rejected[0]["reason"]
    assert "generate: 4/5 figures" in done.stderr or "generate: 5/5 figures" in done.stderr

    again = entry.run("generate", config)  # resumed: nothing generated twice
    assert (again["kept"], again["generated"], again["descriptions"]) == (4, 0, 4)


def test_evaluate_scores_both_kinds_and_ablations_and_logs_to_mlflow(trained, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.start_training_run("patentlmm-test", "evaluate", {"stage": 2}, tracking_uri=uri)
    out = tmp_path / "eval"
    # The sheets' printed labels: the first three sheets print their own FIG (the one the memorised
    # descriptions name), the fourth prints another; two sheets are synthetic.
    rows = [json.loads(line) for line in trained["figures"].read_text().splitlines()]
    for number, row in enumerate(rows, start=1):
        row["image_path"] = str(trained["images"] / Path(row["image_path"]).name)
        row["figure_labels"] = [f"FIG. {number}" if number < 4 else "FIG. 9"]
        row["synthetic"] = number % 2 == 0
        row["patent_id"] = f"US{number}"
    figures = tmp_path / "figures.jsonl"
    write_jsonl(figures, rows)
    config = _config(
        tmp_path / "evaluate.json",
        out_dir=out,
        model_dir=trained["model"],
        test_jsons={"brief": trained["brief"], "detailed": trained["detailed"]},
        figures_jsonl=figures,
        ablations={"image_blind": None},
        # the test figures are their own pool: the neighbour of each is another patent's figure
        baselines=["constant", "nearest_neighbour", "ocr_label"],
        train_jsons={"brief": trained["brief"], "detailed": trained["detailed"]},
        feature_cache=tmp_path / "features",
        max_new_tokens=30,
        mlflow_run_id=run_id,
        tracking_uri=uri,
        samples=2,
    )
    done = _run_cli("evaluate", config)
    assert done.returncode == 0, done.stderr

    metrics = json.loads((out / job.METRICS_FILE).read_text())
    for kind in ("brief", "detailed"):
        assert set(METRIC_NAMES) <= set(metrics[kind]) and metrics[kind]["figures"] == 4
        assert all(0.0 <= metrics[kind][m] <= 1.0 for m in METRIC_NAMES if m != "cider"), metrics[kind]
        assert metrics[kind]["bleu1"] > 0.6  # the memorised figures
        predictions = json.loads((out / f"predictions_{kind}.json").read_text())
        assert len(predictions) == 4
        for name in ("image_blind",):
            assert set(METRIC_NAMES) <= set(metrics["ablations"][name][kind])
            assert (out / "ablations" / name / f"predictions_{kind}.json").is_file()
            delta = metrics["comparison"][name][kind]["bleu4"]
            assert delta == pytest.approx(metrics[kind]["bleu4"] - metrics["ablations"][name][kind]["bleu4"])
        # the label rate: recomputed from the written predictions and the sheets' labels
        named = {i: first_label_key(text) for i, text in predictions.items()}
        printed = {row["image_id"]: label_key(row["figure_labels"][0]) for row in rows}
        right = [named[i] == printed[i] for i in sorted(predictions)]
        real = [named[r["image_id"]] == printed[r["image_id"]] for r in rows if not r["synthetic"]]
        assert metrics[kind]["printed_label_rate"] == pytest.approx(sum(right) / 4)
        assert metrics[kind]["real_printed_label_rate"] == pytest.approx(sum(real) / 2)
        assert metrics[kind]["labelled_figures"] == 4 and metrics[kind]["synthetic_labelled_figures"] == 2
        assert metrics[kind]["printed_label_rate"] <= 0.75  # the fourth sheet's FIG 9 is never named
        assert "printed_label_rate" in metrics["ablations"]["image_blind"][kind]
        # every score on the real and the synthetic figures apart
        assert metrics[kind]["real_figures"] == metrics[kind]["synthetic_figures"] == 2
        assert set(METRIC_NAMES) <= {m.removeprefix("real_") for m in metrics[kind]}
        # the baselines, scored on the same figures
        constant = json.loads((out / "baselines" / "constant" / f"predictions_{kind}.json").read_text())
        assert set(constant.values()) == {CONSTANT_DESCRIPTION} and set(constant) == set(predictions)
        neighbour = json.loads(
            (out / "baselines" / "nearest_neighbour" / f"predictions_{kind}.json").read_text()
        )
        per_figure = [json.loads(line) for line in (out / f"per_figure_{kind}.jsonl").open()]
        own = {row["image_id"]: row["reference"] for row in per_figure}
        assert set(neighbour) == set(own) and set(neighbour.values()) <= set(own.values())
        assert all(neighbour[i] != own[i] for i in neighbour)  # never the figure's own patent
        # the OCR label: the first label of the OCR words the model reads, in the pool's commonest sentence
        entries = json.loads(Path(trained[kind]).read_text())
        ocr_label = json.loads((out / "baselines" / "ocr_label" / f"predictions_{kind}.json").read_text())
        # (the detailed references start with no figure number: the constant's sentence)
        rest = commonest_sentence(own) or CONSTANT_DESCRIPTION.removeprefix("FIG. 1")
        assert set(ocr_label) == set(own)
        for llava_entry in entries:
            numbers = [w for _, w in label_words(llava_entry["ocr"]["words"]) if w != "FIG."] or ["1"]
            assert ocr_label[llava_entry["id"]] == f"FIG. {numbers[0]}{rest}"
        for name in ("constant", "nearest_neighbour", "ocr_label"):
            scores = metrics["baselines"][name][kind]
            assert {"bleu4", "rougeL", "real_bleu4", "synthetic_rougeL", "printed_label_rate"} <= set(scores)
    # A blank page loses what the figure showed: the image-blind ablation describes the test set worse.
    assert metrics["comparison"]["image_blind"]["brief"]["rougeL"] > 0

    client = tracking.MlflowClient(tracking_uri=uri)
    logged = client.get_run(run_id).data.metrics
    assert logged["brief_bleu4"] == pytest.approx(metrics["brief"]["bleu4"])
    assert logged["detailed_cider"] == pytest.approx(metrics["detailed"]["cider"])
    assert "image_blind_brief_rougeL" in logged
    assert logged["brief_real_printed_label_rate"] == pytest.approx(
        metrics["brief"]["real_printed_label_rate"]
    )
    assert "image_blind_detailed_printed_label_rate" in logged
    assert logged["brief_real_rougeL"] == pytest.approx(metrics["brief"]["real_rougeL"])
    assert logged["baseline_nearest_neighbour_brief_real_bleu4"] == pytest.approx(
        metrics["baselines"]["nearest_neighbour"]["brief"]["real_bleu4"]
    )
    assert "baseline_constant_detailed_rougeL" in logged
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"samples", "evaluation"} <= artifacts
    samples = {a.path for a in client.list_artifacts(run_id, "samples")}
    assert {"samples/test_brief.png", "samples/test_detailed.png"} <= samples


def test_pipes_asset_receives_the_reported_metadata(trained, tmp_path: Path) -> None:
    config = _config(
        tmp_path / "generate.json",
        out_dir=tmp_path / "out",
        model_dir=trained["model"],
        figures_jsonl=trained["figures"],
        max_new_tokens=8,
    )

    # Left unannotated: this module's postponed annotations are strings Dagster cannot resolve here.
    @dg.asset(required_resource_keys={"pipes"})
    def generated_descriptions(context):
        invocation = context.resources.pipes.run(
            command=entry.command_line("generate", config), context=context
        )
        return invocation.get_materialize_result()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [generated_descriptions],
        resources={"pipes": dg.PipesSubprocessClient(cwd=str(PROJECT))},
        instance=instance,
    )
    assert result.success
    (materialization,) = result.asset_materializations_for_node("generated_descriptions")
    metadata = materialization.metadata
    assert metadata["generated"].value == 4 and metadata["rejected"].value == 0
    assert metadata["path"].value == str(tmp_path / "out" / commands.GENERATED_FILE)
    # The command's progress arrived as Dagster log messages.
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("generate: 4/4 figures" in message for message in messages)


def test_a_failing_command_exits_non_zero_naming_the_item(tmp_path: Path) -> None:
    config = _config(
        tmp_path / "generate.json",
        out_dir=tmp_path / "out",
        model_dir=tmp_path / "no_such_model",
        figures_jsonl=tmp_path / "figures.jsonl",
    )
    done = _run_cli("generate", config)
    assert done.returncode != 0
    assert f"model directory {tmp_path / 'no_such_model'} does not exist" in done.stderr
    assert not (tmp_path / "out" / commands.GENERATED_FILE).exists()


def test_configs_are_read_strictly(tmp_path: Path) -> None:
    base = {"out_dir": "o", "model_dir": "m", "figures_jsonl": "f"}
    with pytest.raises(ValueError, match=r"unknown GenerateJob keys \['batchsize'\]"):
        commands.GenerateJob.from_json(_config(tmp_path / "a.json", **base, batchsize=4))
    with pytest.raises(ValueError, match=r"batch_size='4' is not a int"):
        commands.GenerateJob.from_json(_config(tmp_path / "b.json", **base, batch_size="4"))
    with pytest.raises(ValueError, match=r"resume=1 is not a bool"):
        commands.GenerateJob.from_json(_config(tmp_path / "c.json", **base, resume=1))
    with pytest.raises(ValueError, match=r"figures_jsonl"):
        commands.GenerateJob.from_json(_config(tmp_path / "d.json", out_dir="o", model_dir="m"))
    evaluate = {"out_dir": "o", "model_dir": "m", "test_jsons": {"brief": "b"}}
    for name, bad, error in (
        ("e.json", {"ablations": {"blind": None}}, r"ablations \['blind'\]"),
        (
            "g.json",
            {"baselines": ["ocr_label"]},
            r"the ocr_label baseline needs train_jsons for kinds \['brief'\]",
        ),
    ):
        with pytest.raises(ValueError, match=error):
            commands.EvaluateJob.from_json(_config(tmp_path / name, **evaluate, **bad))
    config = commands.GenerateJob.from_json(_config(tmp_path / "f.json", **base, kind="detailed", limit=None))
    assert (config.kind, config.resume, config.batch_size) == ("detailed", True, 8)


def test_patent_mme_loads_a_checkpoint_or_pretrains(trained, tmp_path: Path) -> None:
    inference = load_for_inference(trained["model"])
    checkpoint = tmp_path / "patentmme"
    inference.model.vision_tower.save_pretrained(checkpoint)
    loaded = entry.run(
        "patent_mme", _config(tmp_path / "load.json", out_dir=tmp_path / "mme", checkpoint_dir=checkpoint)
    )
    assert loaded["pretrained"] is False and loaded["encoder_dir"] == str(checkpoint)

    out = tmp_path / "mme2"
    config = _config(
        tmp_path / "pretrain.json",
        out_dir=out,
        records_jsonl=trained["figures"],
        tokenizer_dir=trained["model"] / "tokenizer",
        steps=2,
        batch_size=2,
    )
    result = entry.run("patent_mme", config)
    assert result["pretrained"] is True and result["steps"] == 2 and result["sheets"] == 4
    assert result["encoder_dir"] == str(out / "encoder")
    LayoutLMv3Model.from_pretrained(out / "encoder", local_files_only=True)
    assert json.loads((out / "patent_mme.json").read_text())["encoder_dir"] == str(out / "encoder")
    assert sorted(p.name for p in out.iterdir()) == [
        "encoder",
        "patent_mme.json",
        "pretraining",
        "rejected.jsonl",
    ]


def test_patent_llama_trains_from_patent_text(trained, tmp_path: Path) -> None:
    rng = random.Random(0)
    rows = [{"document": document_to_dict(grant(rng, i)), "sheet_files": {}} for i in range(12)]
    write_jsonl(tmp_path / "release" / "documents.jsonl", rows)
    out = tmp_path / "llama"
    config = _config(
        tmp_path / "llama.json",
        out_dir=out,
        documents=[tmp_path / "release"],
        tokenizer_dir=trained["model"] / "tokenizer",
        steps=3,
        batch_size=4,
        block_size=32,
    )
    result = entry.run("patent_llama", config)
    assert result["lora"] is False and result["documents"] == 12 and result["steps"] == 3
    assert result["lm_dir"] == str(out / "lm") and result["adapter_dir"] is None
    LlamaForCausalLM.from_pretrained(out / "lm", local_files_only=True)
    assert sorted(p.name for p in out.iterdir()) == ["lm", "patent_llama.json"]


def test_the_tokenizer_job_learns_the_training_text_not_the_held_out_text_and_is_reused(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from tests.training.describe.test_data import make_toy_llava
    from training.describe.tokenizer import load_lm_tokenizer

    rng = random.Random(0)
    kept = replace(grant(rng, 0), abstract="A wobblefrost hinge. " * 30)
    held_out = replace(grant(rng, 1), abstract="A quuxvantle hinge. " * 30)
    documents = tmp_path / "documents.jsonl"
    write_jsonl(documents, [{"document": document_to_dict(doc)} for doc in (kept, held_out)])
    figures = tmp_path / "figures.jsonl"
    write_jsonl(
        figures, [{"image_id": f"{held_out.patent_id}__1", "patent_id": held_out.patent_id, "split": "test"}]
    )
    out = tmp_path / "tokenizer"
    config = _config(
        tmp_path / "tokenizer.json",
        out_dir=out,
        train_jsons=[make_toy_llava(tmp_path / "toy")],
        documents=[documents],
        figures_jsonl=figures,
    )

    trained = entry.run("tokenizer", config)
    vocabulary = load_lm_tokenizer(out).get_vocab()
    assert "Ġwobblefrost" in vocabulary and "Ġquuxvantle" not in vocabulary  # held-out text trains nothing
    assert "Ġchair" in vocabulary  # the training descriptions
    assert (trained["reused"], trained["text_releases"]) == (False, 1)
    assert trained["vocab_size"] == len(vocabulary)

    stamp = (out / "lm").stat().st_mtime_ns
    again = entry.run("tokenizer", config)  # its directory names its training text: kept
    assert again["reused"] is True and again["vocab_size"] == trained["vocab_size"]
    assert (out / "lm").stat().st_mtime_ns == stamp
