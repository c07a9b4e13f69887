"""The entry point of the out-of-process jobs the Dagster assets launch: one command per asset,
one JSON config each, both model families behind one argv.

    python -m training tokenizer          --config tokenizer.json           (training.describe)
    python -m training patent_mme         --config patent_mme.json
    python -m training patent_llama       --config patent_llama.json
    python -m training evaluate           --config evaluate.json
    python -m training generate           --config generate.json
    python -m training retrieval_encoder  --config retrieval_encoder.json   (training.retrieval)
    python -m training retrieval_evaluate --config retrieval_evaluate.json
    python -m training search_index       --config search_index.json

An asset writes the config, launches `command_line(...)` through `dagster.PipesSubprocessClient`
and gets back what the command reports (`training.job` says what a job is). Errors propagate: a
non-zero exit with a message naming the item.

This module is the only one that knows both families: the description job's nearest-neighbour
baseline embeds with the retrieval family's encoder, wired in here. Nothing imports it but the
launchers (`training.__main__`, the orchestration, tests and benchmarks), so there is no cycle.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.describe import commands as describe
from training.job import JobConfig, Reporter, reporting
from training.retrieval import commands as retrieval
from training.retrieval.configs import RetrievalTrainConfig


def _evaluate(cfg: describe.EvaluateJob, report: Reporter) -> dict[str, Any]:
    # FAISS and the image encoder load only when the nearest-neighbour baseline needs them
    from training.retrieval.evaluate import retrieval_embedder

    return describe.run_evaluate(cfg, report, embedder_factory=retrieval_embedder)


# Every command: its config class and its function.
COMMANDS: dict[str, tuple[type[JobConfig], Callable[[Any, Reporter], dict[str, Any]]]] = {
    "tokenizer": (describe.TokenizerJob, describe.run_tokenizer),
    "patent_mme": (describe.PatentMMEJob, describe.run_patent_mme),
    "patent_llama": (describe.PatentLlamaJob, describe.run_patent_llama),
    "evaluate": (describe.EvaluateJob, _evaluate),
    "generate": (describe.GenerateJob, describe.run_generate),
    "retrieval_encoder": (RetrievalTrainConfig, retrieval.run_retrieval_encoder),
    "retrieval_evaluate": (retrieval.RetrievalEvaluateJob, retrieval.run_retrieval_evaluate),
    "search_index": (retrieval.SearchIndexJob, retrieval.run_search_index),
}


def command_line(command: str, config_path: Path) -> list[str]:
    """argv running `command` on `config_path` with this interpreter (so the same virtualenv)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}: one of {sorted(COMMANDS)}")
    return [sys.executable, "-m", "training", command, "--config", str(Path(config_path).resolve())]


def run(command: str, config_path: Path) -> dict[str, Any]:
    """Run one command on a config file; report to Dagster Pipes when launched by it."""
    config_class, function = COMMANDS[command]
    config = config_class.from_json(Path(config_path))
    with reporting(config.asset_key) as report:
        metadata = function(config, report)
        report.materialize(metadata)
    return metadata


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--config", type=Path, required=True, help="the command's JSON config file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    run(args.command, args.config)
