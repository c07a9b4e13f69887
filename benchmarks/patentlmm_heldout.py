"""`make run`'s champion on real drawings it never trained on, beside the three free baselines.

    python benchmarks/patentlmm_heldout.py [--home .patentflow] [--realdata ../shared/realdata]
                                           [--work DIR]

What issue 11 measured as a new user would: the model `patentflow describe` loads after
`make run` (the registry's champion, `$PATENTFLOW_HOME/store/models/champions/patentlmm`) describes the
figures that the pipeline's own steps ingest from real grants `make run` does not ship: the
design grants of `design_patents_with_drawings_2021_more` and the two utility applications of
2025, less any sibling of a patent `make run` trained on (one sibling group, one split key:
near-duplicate designs). The `evaluate` job scores it beside `constant`, `nearest_neighbour`
(untouched pretrained encoder) and `ocr_label`, whose pool is `make run`'s training figures.
One trained model, so no spread: `benchmarks/patentlmm_real.py` is the cross-validated measure.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from patentlmm_real import (  # noqa: E402
    SYSTEMS,
    base_parser,
    evaluate_fold,
    kind_of,
    log,
    pooled_scores,
    quiet,
)

from patent_assets import dataset, pipeline  # noqa: E402
from patent_assets.layout import Home  # noqa: E402
from patent_assets.records import FigureRecord, read_jsonl, write_jsonl  # noqa: E402
from patent_assets.splits import split_key  # noqa: E402
from training.pyfunc import artifact_dir  # noqa: E402

HELD_OUT_SOURCES = ("design_patents_with_drawings_2021_more", "applications_with_drawings_2025")


def held_out_figures(realdata: Path, work: Path, trained_keys: set[str]) -> list[dict]:
    """The real figures of `HELD_OUT_SOURCES` (ingested by the pipeline's steps, cached), less the
    sibling groups `make run` trained on."""
    rows = []
    for name in HELD_OUT_SOURCES:
        out = work / "real" / name
        with quiet():
            pipeline.ingest([realdata / name], out, cache_dir=work / "ocr-cache")
        rows += [row | {"synthetic": False} for row in read_jsonl(out / pipeline.FIGURES)]
    return [row for row in rows if group_of(row) not in trained_keys]


def group_of(row: dict) -> str:
    """The sibling group (split key) of a figure row, with or without its "split" field."""
    return split_key(FigureRecord.from_dict({k: v for k, v in row.items() if k != "split"}))


def main(argv: list[str] | None = None) -> None:
    args = base_parser(__doc__, "bench-patentlmm-heldout").parse_args(argv)
    started = time.perf_counter()
    home = Home(args.home)
    # the MLflow model the pipeline downloaded; the evaluation job reads the trained directory in it
    champion, home_figures = artifact_dir(home.champion_dir("patentlmm")), home.figures_jsonl
    if not (champion / "config.json").exists() or not home_figures.exists():
        raise SystemExit(f"no champion or figure dataset under {args.home}: run `make run` first")
    trained = [row for row in read_jsonl(home_figures) if row["split"] == "train"]
    trained_keys = {group_of(row) for row in trained}
    held_out = held_out_figures(args.realdata, args.work, trained_keys)
    log(
        f"{len(held_out)} held-out real figures of {len({r['patent_id'] for r in held_out})} patents; "
        f"pool: make run's {len(trained)} training figures"
    )
    # One "fold": make run's training figures as the pool, the held-out ones as the test split.
    rows = trained + [row | {"split": "test"} for row in held_out]
    write_jsonl(args.work / "figures" / pipeline.FIGURES, rows)
    dataset.build_llava(args.work / "figures", args.work)
    shutil.rmtree(args.work / "evaluation", ignore_errors=True)  # the champion may be new
    evaluation = evaluate_fold(args.work, champion, args.work)
    scores = pooled_scores(
        [evaluation],
        {r["image_id"]: kind_of(r) for r in held_out},
        {r["image_id"]: r.get("figure_labels", []) for r in held_out},
    )
    print("| real figures never trained on | system | BLEU-4 | ROUGE-L | printed_label_rate |")
    print("|---|---|---|---|---|")
    for group in ("design", "utility"):
        for system in SYSTEMS:
            if group in scores.get(system, {}):
                cell = scores[system][group]
                print(
                    f"| {group} ({cell['figures']}) | {system} | {cell['bleu4']:.3f} | {cell['rougeL']:.3f} "
                    f"| {cell['printed_label_rate']:.3f} |"
                )
    print(f"\nin {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
