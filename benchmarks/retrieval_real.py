"""Figure retrieval on real USPTO drawings, cross-validated by patent: prints markdown tables.

    python benchmarks/retrieval_real.py [--realdata ../shared/realdata] [--seeds 0 1 2]

The real design grants of `../shared/realdata` (the 2021 folder and `_more`: 34 grants) are
ingested as `patentflow ingest` does, then split into folds by sibling group (designs of one
class granted on one day stay together, `patent_assets.splits.split_key`). For each fold and
seed an encoder trains on the other folds (`train_retrieval_encoder`, the pipeline's own code)
and every figure of the fold queries the whole collection (the training figures are
distractors): each grant is a test grant once, and the table's mAP is the mean AP over all
queries. The untouched backbone and pixel matching need no training: every figure queries.

The second table checks the order on drawings of another kind, never tuned on: the two
published utility applications of 2025 (several FIGs a sheet), with an encoder trained on all
34 design grants. Backbone features are cached by content (`--work`), so reruns are quick.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from patent_assets import pipeline, splits  # noqa: E402
from patent_assets.records import FigureRecord, read_jsonl  # noqa: E402
from training.retrieval.evaluate import embed_figures, evaluate_embeddings  # noqa: E402
from training.retrieval.model import build_encoder, fuse_with_thumbnails, ink_thumbnails, load_encoder, preset  # noqa: E402
from training.retrieval.train import RetrievalTrainConfig, train_retrieval_encoder  # noqa: E402

DESIGN_FOLDERS = ("design_patents_with_drawings_2021", "design_patents_with_drawings_2021_more")
UTILITY_FOLDER = "applications_with_drawings_2025"

# name -> (encoder overrides of the "pretrained" preset, training overrides); epochs 0: the head
# is the learned whitening alone
LAST_MAP = {"feature_block": None, "embedding_dim": 256}
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "whitening only, last map, 512 px": ({**LAST_MAP, "image_size": 512}, {"epochs": 0}),
    "whitening only, last map, 640 px": ({**LAST_MAP}, {"epochs": 0}),
    "whitening only, block 14, 512 px": ({"image_size": 512}, {"epochs": 0}),
    "whitening only, block 14, 640 px": ({}, {"epochs": 0}),
    "default: whitening + head fine-tuned (frozen backbone), block 14, 640 px": ({}, {}),
    "whitening + last 3 blocks fine-tuned, block 14, 640 px": ({}, {"trainable_blocks": 3}),
}
# the untouched backbone: GeM over a map, no training
UNTOUCHED: dict[str, dict[str, Any]] = {
    "untouched Lite0, last map, 320 px": {"image_size": 320},
    "untouched Lite0, last map, 640 px": {},
    "untouched Lite0, block 14, 640 px": {"feature_block": 14},
}
DEFAULT_VARIANT = "default: whitening + head fine-tuned (frozen backbone), block 14, 640 px"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ingest(realdata: Path, folder: str, work: Path) -> list[dict[str, Any]]:
    out = work / "ingested" / folder
    if not (out / "figures.jsonl").is_file():
        log(f"ingesting {folder}")
        pipeline.ingest([realdata / folder], out, cache_dir=work / "ocr-cache")
    rows = []
    for row in read_jsonl(out / "figures.jsonl"):
        row["image_path"] = str((out / row["image_path"]).resolve())
        rows.append(row)
    return rows


def folds_by_group(figures: list[dict[str, Any]], count: int) -> list[int]:
    """Fold of each figure: sibling groups, largest first, each to the fold with fewest figures."""
    groups: dict[str, list[int]] = {}
    for position, figure in enumerate(figures):
        groups.setdefault(splits.split_key(FigureRecord.from_dict(figure)), []).append(position)
    ordered = sorted(groups.values(), key=lambda m: (-len(m), hashlib.sha256(str(m).encode()).hexdigest()))
    sizes, fold_of = [0] * count, [0] * len(figures)
    for members in ordered:
        fold = sizes.index(min(sizes))
        sizes[fold] += len(members)
        for position in members:
            fold_of[position] = fold
    return fold_of


def write_split(figures: list[dict[str, Any]], held_out: set[int], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for position, figure in enumerate(figures):
            handle.write(json.dumps({**figure, "split": "val" if position in held_out else "train"}) + "\n")
    return path


def pooled_scores(results: list[dict[str, dict[str, float]]], task: str = "same_patent") -> dict[str, float]:
    """Query-weighted means over folds: the mean over every judged query."""
    queries = sum(r[task].get("queries", 0.0) for r in results)
    if not queries:
        return {}
    names = ("mAP", "Rank-1", "Rank-5")
    return {n: sum(r[task].get(n, 0.0) * r[task]["queries"] for r in results) / queries for n in names}


def embed(model: Any, figures: list[dict[str, Any]], cache: Path) -> np.ndarray:
    vectors, _, failed = embed_figures(model, [Path(f["image_path"]) for f in figures], feature_cache=cache)
    if failed:
        raise ValueError(f"unreadable figures: {failed}")
    return vectors


def train_fold(
    figures: list[dict[str, Any]], held_out: set[int], variant: str, seed: int, args: argparse.Namespace
) -> Path:
    encoder, training = VARIANTS[variant]
    run = (
        args.work / "runs" / hashlib.sha256(f"{variant}|{seed}|{sorted(held_out)}".encode()).hexdigest()[:16]
    )
    jsonl = write_split(figures, held_out, run / "figures.jsonl")
    options: dict[str, Any] = {
        "preset": "pretrained",
        "encoder": encoder,
        "trainable_blocks": 0,
        "eval_splits": ["val"] if held_out else [],
        "seed": seed,
        "num_threads": args.threads,
        "feature_cache": str(args.work / "features"),
        **training,
    }
    train_retrieval_encoder(
        RetrievalTrainConfig(figures_jsonl=str(jsonl), out_dir=str(run / "out"), **options)
    )
    return run / "out" / "encoder"


def untouched_encoder(overrides: dict[str, Any]) -> Any:
    return build_encoder(preset("pretrained", **{"head": "none", "feature_block": None, **overrides}))


def cross_validate(figures: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    fold_of = folds_by_group(figures, args.folds)
    ids = [f["image_id"] for f in figures]
    thumbnails, _ = ink_thumbnails([f["image_path"] for f in figures], 32)
    rows: list[dict[str, Any]] = []

    pixels, _ = ink_thumbnails([f["image_path"] for f in figures], 48)
    rows.append(
        {
            "name": "pixel matching (48x48 ink thumbnails, cosine)",
            **_score([evaluate_embeddings(pixels, figures)]),
        }
    )
    for name, overrides in UNTOUCHED.items():
        vectors = embed(untouched_encoder(overrides), figures, args.work / "features")
        rows.append({"name": f"{name} (GeM, flip)", **_score([evaluate_embeddings(vectors, figures)])})

    for variant in args.variants:
        per_seed: dict[float, list[dict[str, Any]]] = {w: [] for w in args.weights}
        seeds = [0] if VARIANTS[variant][1].get("epochs") == 0 else args.seeds  # closed form: no seed
        for seed in seeds:
            started = time.perf_counter()
            folds: dict[float, list[dict[str, dict[str, float]]]] = {w: [] for w in args.weights}
            for fold in range(args.folds):
                held_out = {p for p, f in enumerate(fold_of) if f == fold}
                model = load_encoder(train_fold(figures, held_out, variant, seed, args))
                vectors = embed(model, figures, args.work / "features")
                queries = [ids[p] for p in sorted(held_out)]
                for weight in args.weights:
                    fused = fuse_with_thumbnails(vectors, thumbnails, weight) if weight else vectors
                    folds[weight].append(evaluate_embeddings(fused, figures, queries))
            for weight in args.weights:
                per_seed[weight].append(_score(folds[weight]))
            log(
                f"{variant} seed {seed}: {per_seed[0.0][-1]['mAP']:.4f} ({time.perf_counter() - started:.0f} s)"
            )
        for weight in args.weights:
            suffix = "" if weight == 0 else f", index fused with 32x32 thumbnails W {weight}"
            rows.append({"name": f"{variant}{suffix}", **_mean_over_seeds(per_seed[weight])})
    return rows


def _score(results: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    same, prior = pooled_scores(results), pooled_scores(results, "prior_art")
    return {
        "mAP": same["mAP"],
        "Rank-1": same["Rank-1"],
        "prior_art_mAP": prior.get("mAP"),
        "seeds": 1,
        "std": 0.0,
    }


def _mean_over_seeds(scores: list[dict[str, Any]]) -> dict[str, Any]:
    mean = {k: statistics.mean(s[k] for s in scores) for k in ("mAP", "Rank-1")}
    prior = [s["prior_art_mAP"] for s in scores if s["prior_art_mAP"] is not None]
    mean["prior_art_mAP"] = statistics.mean(prior) if prior else None
    spread = statistics.stdev(s["mAP"] for s in scores) if len(scores) > 1 else 0.0
    return {**mean, "seeds": len(scores), "std": spread}


def utility_check(
    design: list[dict[str, Any]], utility: list[dict[str, Any]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Order on the utility applications: fine-tuned on all design grants > untouched > pixels."""
    rows = []
    pixels, _ = ink_thumbnails([f["image_path"] for f in utility], 48)
    rows.append({"name": "pixel matching (48x48)", **_score([evaluate_embeddings(pixels, utility)])})
    for name, overrides in UNTOUCHED.items():
        vectors = embed(untouched_encoder(overrides), utility, args.work / "features")
        rows.append({"name": name, **_score([evaluate_embeddings(vectors, utility)])})
    scores = []
    for seed in args.seeds:
        model = load_encoder(train_fold(design, set(), DEFAULT_VARIANT, seed, args))
        scores.append(_score([evaluate_embeddings(embed(model, utility, args.work / "features"), utility)]))
    rows.append({"name": "the default encoder, trained on the 34 design grants", **_mean_over_seeds(scores)})
    return rows


def table(rows: list[dict[str, Any]], title: str) -> str:
    lines = [
        f"| {title} | same-patent mAP | spread (seeds) | Rank-1 | prior-art mAP |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        spread = f"±{row['std']:.3f} ({row['seeds']})" if row["seeds"] > 1 else ""
        prior = f"{row['prior_art_mAP']:.3f}" if row.get("prior_art_mAP") is not None else ""
        lines.append(f"| {row['name']} | {row['mAP']:.3f} | {spread} | {row['Rank-1']:.3f} | {prior} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--realdata", type=Path, default=ROOT.parent / "shared" / "realdata")
    parser.add_argument("--work", type=Path, default=ROOT / ".patentflow" / "bench-retrieval-real")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    design = [f for folder in DESIGN_FOLDERS for f in ingest(args.realdata, folder, args.work)]
    utility = ingest(args.realdata, UTILITY_FOLDER, args.work)
    patents = len({f["patent_id"] for f in design})
    print(
        table(
            cross_validate(design, args),
            f"{patents} real design grants, {args.folds} folds by sibling group, {len(design)} queries",
        )
    )
    print()
    print(
        table(
            utility_check(design, utility, args),
            f"2 utility applications, {len(utility)} figures, never tuned on",
        )
    )


if __name__ == "__main__":
    main()
