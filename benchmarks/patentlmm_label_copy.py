"""Does the tiny PatentLMM learn to name the FIG its sheet prints? Prints a markdown table.

    python benchmarks/patentlmm_label_copy.py [--home .patentflow] [--variants 'e60={"epochs": 60}' ...]

Reads what `make run` left under `--home`: the figure dataset (with each sheet's aligned FIG
labels) and the last stage-2 training config. Each variant retrains stage 2 from the same
stage-1 model with the config's fields overridden (the pipeline's own `training/describe/train.py`,
launched as the asset launches it), describes every figure (`generate`, the first 24 tokens:
the first FIG label comes first) and scores `printed_label_rate` on the training and test
sheets, real and synthetic apart. "make run" is the pipeline's own stage-2 model, as trained.
Training sheets tell whether the copy is learned at all; test sheets whether it generalises.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patent_assets.figrefs import first_label_key  # noqa: E402
from patent_assets.records import read_jsonl  # noqa: E402
from training import entry  # noqa: E402
from training.describe.commands import GENERATED_FILE  # noqa: E402
from training.describe.distributed import run_training  # noqa: E402
from training.describe.metrics import printed_label_rate  # noqa: E402


def train_quietly(config: Path) -> None:
    """The training's own log goes to stderr, so that stdout is the table alone."""
    stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        run_training(config, launcher="torchrun")
    finally:
        os.dup2(stdout, 1)
        os.close(stdout)


def describe(model_dir: Path, tokenizer_dir: str, figures_jsonl: Path, out: Path) -> dict[str, str]:
    config = out / "generate.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    options = {"out_dir": str(out), "model_dir": str(model_dir), "figures_jsonl": str(figures_jsonl)}
    config.write_text(json.dumps({**options, "tokenizer_dir": tokenizer_dir, "max_new_tokens": 24}))
    entry.run("generate", config)
    return json.loads((out / GENERATED_FILE).read_text())


def rows_for(name: str, generated: dict[str, str], figures: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for split in ("train", "test"):
        for synthetic in (False, True):
            ids = [i for i, f in figures.items() if f["split"] == split and f["synthetic"] == synthetic]
            ids = [i for i in ids if i in generated]
            rate = printed_label_rate(
                {i: generated[i] for i in ids}, {i: figures[i]["figure_labels"] for i in ids}
            )
            named = collections.Counter(first_label_key(generated[i]) for i in ids).most_common(3)
            share = rate["printed_label_rate"]
            origin = "synthetic" if synthetic else "real"
            lines.append(
                f"| {name} | {split} | {origin} | {rate['labelled_figures']} | "
                f"{'' if share is None else f'{share:.3f}'} | {named} |"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=ROOT / ".patentflow")
    parser.add_argument("--work", type=Path, default=ROOT / ".patentflow" / "bench-label-copy")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=['epochs 60={"epochs": 60}', 'LoRA r 64={"lora_r": 64, "lora_alpha": 128}'],
    )
    args = parser.parse_args(argv)
    figures_jsonl = args.home / "data" / "dataset" / "figures" / "figures.jsonl"
    figures = {row["image_id"]: row for row in read_jsonl(figures_jsonl)}
    configs = sorted((args.home / "store" / "runs" / "patentlmm_stage2").glob("*/full/train_config.json"))
    if not configs:
        raise SystemExit(f"no stage-2 training under {args.home}: run `make run` first")
    base = json.loads(configs[-1].read_text()) | {"mlflow_run_id": None}
    lines = [
        "| stage 2 | sheets | origin | labelled | printed_label_rate | first labels named |",
        "|---|---|---|---|---|---|",
    ]
    generated = describe(
        Path(base["out_dir"]) / "model", base["tokenizer_dir"], figures_jsonl, args.work / "make-run"
    )
    lines += rows_for(f"make run ({base['epochs']} epochs, LoRA r {base['lora_r']})", generated, figures)
    for variant in args.variants:
        name, overrides = variant.split("=", 1)
        out = args.work / name.replace(" ", "-")
        out.mkdir(parents=True, exist_ok=True)
        (out / "train.json").write_text(json.dumps(base | json.loads(overrides) | {"out_dir": str(out)}))
        started = time.perf_counter()
        train_quietly(out / "train.json")
        print(f"{name}: trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        lines += rows_for(
            name, describe(out / "model", base["tokenizer_dir"], figures_jsonl, out / "generated"), figures
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
