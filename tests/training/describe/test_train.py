"""training.describe.train through the real DeepSpeed launcher on CPU (gloo): train, checkpoint, resume, ZeRO-3.

Each launch is a real `deepspeed` (or torchrun) process tree running the tiny PatentLMM preset on a
dozen drawn figures. The first DeepSpeed use on a machine JIT-compiles its shared-memory comm op
(~45 s on 2 cores, cached in ~/.cache/torch_extensions); later launches take ~15-25 s.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import psutil
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from training.describe import plans
from training.describe.configs import PRODUCTION, STAGE1, STAGE2_EMBEDDED, TINY, StageConfig
from training.describe.distributed import PROJECT_ROOT, launch_command, training_env
from training.describe.tokenizer import corpus_from_llava, train_tokenizer
from training.describe.train import TrainConfig

pytestmark = pytest.mark.slow

PARTS = ["housing", "lid", "hinge", "lever", "spring", "shaft", "gear", "panel", "bracket", "sensor"]
N_TRAIN, N_VAL = 12, 4


def _figure(path: Path, number: int) -> dict:
    """A drawn figure: a box, a circle, reference numerals; its OCR words and 0-1000 boxes."""
    image = Image.new("L", (128, 128), 255)
    draw = ImageDraw.Draw(image)
    draw.rectangle((10 + number, 20, 90, 100 - number), outline=0, width=2)
    draw.ellipse((40, 40, 70 + number, 70), outline=0, width=2)
    draw.text((95, 30), str(10 + number), fill=0)
    draw.text((30, 108), f"FIG. {number}", fill=0)
    image.save(path)
    return {
        "words": [str(10 + number), "FIG.", str(number)],
        "boxes": [[742, 234, 800, 300], [234, 843, 400, 900], [420, 843, 470, 900]],
        "width": 128,
        "height": 128,
    }


def _entries(images: Path, numbers: range) -> list[dict]:
    entries = []
    for number in numbers:
        fig_id = f"US{1000000 + number}B2__{number}"
        ocr = _figure(images / f"{fig_id}.png", number)
        a, b = PARTS[number % len(PARTS)], PARTS[(3 * number + 1) % len(PARTS)]
        entries.append(
            {
                "id": fig_id,
                "image": f"{fig_id}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWrite a brief description for this patent image."},
                    {"from": "gpt", "value": f"FIG. {number} is a perspective view of the {a} and the {b}."},
                ],
                "ocr": ocr,
            }
        )
    return entries


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LLaVA JSON train/val files, their images and a tokenizer trained on them."""
    root = tmp_path_factory.mktemp("train")
    images = root / "images"
    images.mkdir()
    (root / "brief_train.json").write_text(json.dumps(_entries(images, range(1, N_TRAIN + 1))))
    (root / "brief_val.json").write_text(
        json.dumps(_entries(images, range(N_TRAIN + 1, N_TRAIN + N_VAL + 1)))
    )
    corpus = list(corpus_from_llava([root / "brief_train.json", root / "brief_val.json"]))
    train_tokenizer(
        corpus, root / "tokenizer", vocab_size=400, image_size=64, ocr_max_tokens=32, min_frequency=1
    )
    return root


def _config(workdir: Path, out: Path, **overrides) -> Path:
    values = {
        "stage": 1,
        "train_json": str(workdir / "brief_train.json"),
        "val_json": str(workdir / "brief_val.json"),
        "images_root": str(workdir / "images"),
        "tokenizer_dir": str(workdir / "tokenizer"),
        "model_preset": "tiny",
        "out_dir": str(out),
        "epochs": 2,
        "lr": 1e-2,
        "warmup_ratio": 0.1,
        "per_device_batch": 2,
        "grad_accum": 2,
        "max_length": 512,
        "zero_stage": 2,
        "checkpoint_every_steps": 2,
        "seed": 7,
        **overrides,
    }
    path = out.parent / f"{out.name}.json"
    TrainConfig(**values).to_json(path)
    return path


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=training_env(), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, **kwargs
    )


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def full_run(workdir: Path) -> Path:
    """One uninterrupted stage-1 run through the deepspeed launcher (the reference for resume)."""
    out = workdir / "full"
    started = time.perf_counter()
    result = _run(launch_command(_config(workdir, out), nproc_per_node=1))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    print(f"full run: {time.perf_counter() - started:.1f} s")
    return out


def test_deepspeed_launch_trains_checkpoints_and_saves_hf_model(full_run: Path) -> None:
    from training.describe.modeling import PatentLMMForConditionalGeneration

    records = _metrics(full_run)
    train = [r for r in records if "train/loss" in r]
    # 12 examples / (batch 2 x accum 2) = 3 steps an epoch, 2 epochs.
    assert [r["step"] for r in train] == list(range(1, 7))
    # Only the projector learns, in front of a frozen random LM whose logits are near uniform
    # (ln 400 = 5.99): the loss can move only a little, but it must move (6.00 -> 5.88 measured).
    assert train[-1]["train/loss"] < train[0]["train/loss"] - 0.05
    assert all(r["train/tokens_per_s"] > 0 and "train/lr_projector" in r for r in train)
    val = [r["val/loss"] for r in records if "val/loss" in r]
    assert len(val) == 2 and val[-1] < val[0]
    assert records[-1]["event"].startswith("done") and records[-1]["steps"] == 6
    # Checkpoints: the last two kept, `latest` names the final one.
    checkpoints = full_run / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step6"
    assert sorted(p.name for p in checkpoints.glob("step*")) == ["step4", "step6"]
    # The final model: HF format with its tokenizer, reloadable; only the projector moved.
    model_dir = full_run / "model"
    assert (model_dir / "config.json").is_file() and (model_dir / "tokenizer" / "lm").is_dir()
    assert not list(full_run.glob(".model.tmp-*"))
    # bf16 "auto": bf16 where CUDA supports it, fp32 on CPU; the saved weights carry that dtype.
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert _weights(full_run)["multi_modal_projector.linear_1.weight"].dtype == (
        torch.bfloat16 if bf16 else torch.float32
    )
    model = PatentLMMForConditionalGeneration.from_pretrained(model_dir, local_files_only=True)
    assert model.config.lora is None
    assert isinstance(model, PatentLMMForConditionalGeneration)


def test_killed_run_resumes_from_its_checkpoint(workdir: Path, full_run: Path) -> None:
    out = workdir / "killed"
    command = launch_command(_config(workdir, out), nproc_per_node=1, launcher="torchrun")
    # SIGKILL every process of the launch (a lost machine) as soon as the first checkpoint (step 2, the
    # middle of epoch 1: the resume must skip that epoch's first micro-batches) is complete. torchrun
    # starts its workers in sessions of their own, so killing its process group would orphan them.
    process = subprocess.Popen(
        command,
        env=training_env(),
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = out / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline and not latest.is_file():
        time.sleep(0.02)
    tree = [process, *psutil.Process(process.pid).children(recursive=True)]
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGKILL)
    process.wait()
    psutil.wait_procs([p for p in tree if isinstance(p, psutil.Process)], timeout=10)
    killed_at = int(latest.read_text().strip().removeprefix("step"))
    assert killed_at < 6, "the run finished before it could be killed"
    assert not (out / "model").exists()

    result = _run(command)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert f"resumed from checkpoint step{killed_at}" in result.stdout
    records = _metrics(out)
    resumed = next(i for i, r in enumerate(records) if r.get("event", "").startswith("resumed"))
    after = [r["step"] for r in records[resumed:] if "train/loss" in r]
    assert after == list(range(killed_at + 1, 7))  # no step before the checkpoint is redone
    assert records[-1]["steps"] == 6
    # Same data order, optimizer, schedule and RNG: the weights of the uninterrupted run.
    reference, resumed_weights = _weights(full_run), _weights(out)
    assert reference.keys() == resumed_weights.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed_weights[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_zero3_stage2_lora_from_stage1_model_via_torchrun(workdir: Path, full_run: Path) -> None:
    """Stage 2 (LoRA + projector) on ZeRO-3, started from stage 1's model, launched by torchrun."""
    out = workdir / "stage2"
    config = _config(
        workdir,
        out,
        stage=2,
        zero_stage=3,
        init_model_dir=str(full_run / "model"),
        tokenizer_dir=None,
        model_preset=None,
        lr=1e-3,
        projector_lr=1e-4,
        lora_r=4,
        lora_alpha=8,
        max_steps=2,
        checkpoint_every_steps=100,
    )
    result = _run(launch_command(config, nproc_per_node=1, launcher="torchrun"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    train = [r for r in _metrics(out) if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert {"train/lr_projector", "train/lr_lora"} <= train[0].keys()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step2"
    assert (out / "lora_adapter" / "adapter_config.json").is_file()
    stage1, stage2 = _weights(full_run), _weights(out)
    lora = [name for name in stage2 if "lora_" in name]
    assert lora and all(name.startswith("language_model.") for name in lora)
    # The encoder stayed frozen; the LoRA B matrices left zero.
    for name, tensor in stage1.items():
        if name.startswith("vision_tower."):
            torch.testing.assert_close(stage2[name], tensor, msg=name)
    assert any(stage2[name].abs().sum() > 0 for name in lora if "lora_B" in name)


def test_bad_config_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(
        json.dumps({"stage": 1, "train_json": "x", "out_dir": "o", "model_preset": "tiny", "epoch": 3})
    )
    with pytest.raises(ValueError, match="unknown TrainConfig keys \\['epoch'\\]"):
        TrainConfig.from_json(path)
    for bad in ({"patent_balance": -0.5}, {"patent_cap": -1}):
        with pytest.raises(ValueError, match="patent_balance and patent_cap must be >= 0"):
            TrainConfig(stage=1, train_json="x", out_dir="o", model_preset="tiny", **bad)


def test_a_stage_reaches_the_training_config_under_its_own_names(tmp_path: Path) -> None:
    """TrainConfig is a StageConfig: every stage setting arrives as it is, with nothing renamed."""
    inputs = plans.TrainingInputs(tmp_path, tmp_path / "tok", tmp_path / "enc", tmp_path / "lm")
    stage1 = plans.train_config(1, inputs, tmp_path / "o1", PRODUCTION)
    stage2 = plans.train_config(2, inputs, tmp_path / "o2", TINY, init_model_dir=tmp_path / "m", max_steps=3)
    for name in (f.name for f in fields(StageConfig)):
        assert getattr(stage1, name) == getattr(STAGE1, name), name
        if name != "max_steps":
            assert getattr(stage2, name) == getattr(STAGE2_EMBEDDED, name), name
    assert stage2.max_steps == 3 and stage2.train_json.endswith("brief_train.json")
    stage2.to_json(tmp_path / "stage2.json")
    assert TrainConfig.from_json(tmp_path / "stage2.json") == stage2
    assert plans.train_config(1, inputs, tmp_path, TINY, kind="detailed").val_json.endswith(
        "detailed_val.json"
    )


def test_launch_commands(tmp_path: Path) -> None:
    config = tmp_path / "run.json"
    ds = launch_command(config, nproc_per_node=8, master_port=1234)
    assert ds[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]
    assert ds[3:] == ["--num_nodes", "1", "--num_gpus", "8", "--master_port", "1234", "--module",
                      "training.describe.train", "--config", str(config.resolve())]  # fmt: skip
    multi = launch_command(config, nproc_per_node=8, nnodes=2, hostfile=tmp_path / "hosts")
    assert multi[3:9] == ["--hostfile", str(tmp_path / "hosts"), "--num_nodes", "2", "--num_gpus", "8"]
    tr = launch_command(config, nproc_per_node=4, launcher="torchrun", master_port=1234)
    assert tr[1:7] == ["-m", "torch.distributed.run", "--nproc_per_node", "4", "--nnodes", "1"]
    assert tr[-4:] == ["-m", "training.describe.train", "--config", str(config.resolve())]
    with pytest.raises(ValueError, match="hostfile"):
        launch_command(config, nnodes=2)
