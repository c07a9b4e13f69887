"""How fast the embedded PatentLMM trains: samples/s of stage 1 and stage 2. Prints a markdown table.

    python benchmarks/patentlmm_training_speed.py [--home .patentflow] [--steps 40] [--work DIR]

Reads what `make run` left under `--home` (the figure dataset, the tokenizer, PatentMME and
PatentLLaMA of its last run) and trains each stage for `--steps` optimizer steps with the
pipeline's own configs (`training.describe.plans.train_config`, the tiny preset) and launcher (torchrun,
DeepSpeed ZeRO-2 on gloo), with and without the OCR pointer (`ModelPreset.ocr_copy`); stage 2
starts from the same variant's stage-1 model. A last row trains stage 2 again with the dataset's
item cache off (`TrainConfig.item_cache_mb=0`: every step decodes and resizes its sheets). The
rate is the training's own `train/samples_per_s` (metrics.jsonl), the median over steps after the
first two, so start-up is left out; with the cache, items come from memory from the second epoch
on (~34 steps), so use --steps well above that. All rows run in one invocation: compare them with
each other, not across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patent_assets.records import read_jsonl  # noqa: E402
from training.describe import plans  # noqa: E402
from training.describe.configs import TINY  # noqa: E402
from training.describe.distributed import run_training  # noqa: E402


def train_quietly(config: Path) -> None:
    """The training's own log goes to stderr, so that stdout is the table alone."""
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        run_training(config, launcher="torchrun")
    finally:
        os.dup2(stdout, 1)
        os.close(stdout)


def make_run_inputs(home: Path) -> plans.TrainingInputs:
    """The dataset, tokenizer, encoder and LM of the last stage-1 training under `home`."""
    configs = sorted(
        (home / "store" / "runs" / "patentlmm_stage1").glob("*/full/train_config.json"),
        key=lambda path: path.stat().st_mtime,
    )
    if not configs:
        raise SystemExit(f"no stage-1 training under {home}: run `make run` first")
    stage1 = json.loads(configs[-1].read_text())
    return plans.TrainingInputs(
        dataset_dir=Path(stage1["train_json"]).parents[1],
        tokenizer_dir=Path(stage1["tokenizer_dir"]),
        encoder_dir=Path(stage1["encoder_dir"]),
        lm_dir=Path(stage1["lm_dir"]),
    )


def rate(out_dir: Path) -> tuple[float, float]:
    """Median samples/s and tokens/s of the steps after the first two."""
    steps = [row for row in read_jsonl(out_dir / "metrics.jsonl") if "train/samples_per_s" in row][2:]
    if not steps:
        raise SystemExit(f"{out_dir}: too few steps logged; raise --steps")
    return (
        statistics.median(row["train/samples_per_s"] for row in steps),
        statistics.median(row["train/tokens_per_s"] for row in steps),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=ROOT / ".patentflow")
    parser.add_argument("--work", type=Path, default=ROOT / ".patentflow" / "bench-training-speed")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)
    inputs = make_run_inputs(args.home)
    lines = [
        "| stage | OCR pointer | item cache | micro-batch | samples/s | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    yes_no = {True: "yes", False: "no"}
    runs = [(ocr_copy, stage, True) for ocr_copy in (False, True) for stage in (1, 2)] + [(True, 2, False)]
    for ocr_copy, stage, cached in runs:
        preset = replace(TINY, ocr_copy=ocr_copy)
        stage1_dir = args.work / f"ocr_copy-{ocr_copy}" / "stage1"
        out = stage1_dir.parent / (f"stage{stage}" if cached else f"stage{stage}-uncached")
        shutil.rmtree(out, ignore_errors=True)  # a checkpoint left there would be resumed
        out.mkdir(parents=True)
        config = plans.train_config(
            stage,
            inputs,
            out,
            preset,
            init_model_dir=None if stage == 1 else stage1_dir / "model",
            max_steps=args.steps,
        )
        config = replace(config, item_cache_mb=config.item_cache_mb if cached else 0)
        config.to_json(out / "train.json")
        train_quietly(out / "train.json")
        samples, tokens = rate(out)
        print(f"stage {stage}, pointer {ocr_copy}, cache {cached}: {samples:.1f} samples/s", file=sys.stderr)
        lines.append(
            f"| {stage} | {yes_no[ocr_copy]} | {yes_no[cached]} | {config.per_device_batch} "
            f"| {samples:.1f} | {tokens:.0f} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
