"""Retrieval-index benchmarks: build time, query latency and recall@10; prints a table for the README.

    .venv/bin/python benchmarks/retrieval_index.py [--sizes 100000 1000000] [--dim 128]
        [--queries 500] [--batch 1000] [--json PATH] [index knobs: --nlist --nprobe --pq-m ...]

For each collection size and each `FigureIndex` kind (flat = exact, ivf, hnsw, ivfpq, and
ivfpq-refine: IVF-PQ whose candidates are re-scored with the exact vectors, `--refine` x k):

1. build time: `FigureIndex.build` wall time (validating the metadata, sorting by grant date,
   training, adding); the flat row is mostly that bookkeeping, the others add FAISS training.
2. single-query latency p50 / p99 (batch of 1, as an interactive `patentflow search` runs),
   unfiltered and with the prior-art filter (`before=` a date) keeping about 50% and 10% of
   the collection, then with the classification filter: each query restricted to its own
   Locarno class (`classification="LOCARNO:14"`, as a searcher filters by the class of the design
   at hand), alone and with the 50% date; "vs all" is the filtered p50 over the unfiltered p50
   of the same index.
3. recall@10 of each approximate kind against exact flat search under the same filters.
4. throughput of one `search` call over a batch of queries.

The vectors are synthetic but shaped like learned embeddings: a mixture of a few thousand
clusters of unequal size (Dirichlet weights), each with the same anisotropic covariance
(variances falling as 1/i in a random basis), L2-normalised, metric "ip" (cosine); the queries
are held-out draws from the same mixture. Grant dates are weekly release Tuesdays over 20 years
with grants per week growing twofold across the span, independent of the clusters. Each cluster
belongs to one of 32 Locarno classes drawn with Zipf weights (1/rank: the largest class holds about
a quarter of the figures, the smallest under 1%), so a class is a region of the embedding space,
as real classes are; a query's class is its cluster's.

Ratios are measured within one run; absolute times on shared machines are noisy. On a
2-core machine that other work shares, FAISS's OpenMP threads wait on each other: a single
flat query ran about 10x slower with 2 threads than with `--threads 1`, so compare both there.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from patent_assets.records import atomic_write
from training.retrieval.faiss_index import FigureIndex, IndexKind, IndexOptions

KINDS: tuple[IndexKind, ...] = ("flat", "ivf", "hnsw", "ivfpq")
LOCARNO_CLASSES = 32
BENCHED = (*KINDS, "ivfpq-refine")  # the last: kind ivfpq with IndexOptions.refine
FIRST_RELEASE = date(2005, 1, 4)  # a Tuesday: USPTO grants are published weekly on Tuesdays
RELEASE_WEEKS = 20 * 52
TOP_K = 10


@dataclass(frozen=True)
class Collection:
    vectors: np.ndarray  # (count, dim) float32, unit rows
    metadata: list[dict[str, Any]]
    queries: np.ndarray  # (query_count, dim) float32, held out of `vectors`
    sorted_dates: list[str]  # every grant date, ascending (to place the filters)
    query_classes: list[str]  # each query's Locarno class prefix, e.g. "LOCARNO:14"


@dataclass(frozen=True)
class PriorArtFilter:
    name: str  # "all", "50%", "10%", "class", "class + 50%"
    before: str | None  # ISO date; None: no filter
    kept: float  # fraction of the collection that passes (for class filters: the mean over queries)
    by_class: bool = False  # each query restricted to its own class


@dataclass
class Row:
    vectors: int
    kind: str
    build_s: float
    filter: str
    before: str | None
    kept: float
    p50_ms: float
    p99_ms: float
    p50_vs_unfiltered: float
    recall_at_10: float
    batch_qps: float


def synthetic_collection(
    count: int, query_count: int, dim: int, clusters: int, spread: float, seed: int
) -> Collection:
    """`count` database vectors and `query_count` held-out queries from one Gaussian mixture."""
    rng = np.random.default_rng(seed)
    total = count + query_count
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    weights = rng.dirichlet(np.ones(clusters))
    labels = rng.choice(clusters, size=total, p=weights)
    # Learned embeddings have a decaying spectrum, not isotropic noise: variance 1/i per axis
    # of a random orthonormal basis, scaled so that `spread` sets the overlap of clusters.
    scale = (spread / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    vectors = np.empty((total, dim), dtype=np.float32)
    for start in range(0, total, 100_000):  # in chunks: the noise of 1M rows at once is 0.5 GB more
        stop = min(total, start + 100_000)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * scale
        vectors[start:stop] = centres[labels[start:stop]] + noise @ basis
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    # Grants per week grow linearly to twice the first year's rate over the 20 years.
    week_weights = np.linspace(1.0, 2.0, RELEASE_WEEKS)
    weeks = rng.choice(RELEASE_WEEKS, size=count, p=week_weights / week_weights.sum())
    release_dates = [(FIRST_RELEASE + timedelta(weeks=week)).isoformat() for week in range(RELEASE_WEEKS)]
    metadata = [
        {
            "figure_id": f"FIG{position:08d}",
            "patent_id": f"US{position // 6:08d}",  # about six figures a patent
            "grant_date": release_dates[week],
        }
        for position, week in enumerate(weeks.tolist())
    ]
    sorted_dates = [release_dates[week] for week in np.sort(weeks).tolist()]
    # Classes from a generator of their own: the vectors and dates stay those of earlier runs.
    class_rng = np.random.default_rng(seed + 1)
    zipf = 1.0 / np.arange(1, LOCARNO_CLASSES + 1)
    cluster_class = class_rng.choice(LOCARNO_CLASSES, size=clusters, p=zipf / zipf.sum()) + 1
    subclass = class_rng.integers(1, 10, size=count)
    for position, row in enumerate(metadata):
        row["classes"] = [f"LOCARNO:{cluster_class[labels[position]]:02d}{subclass[position]:02d}"]
    query_classes = [f"LOCARNO:{cluster_class[label]:02d}" for label in labels[count:].tolist()]
    return Collection(vectors[:count], metadata, vectors[count:], sorted_dates, query_classes)


def prior_art_filters(sorted_dates: list[str], fractions: list[float]) -> list[PriorArtFilter]:
    """No filter, then one `before` date per fraction, keeping about that share of figures."""
    count = len(sorted_dates)
    filters = [PriorArtFilter("all", None, 1.0)]
    for fraction in fractions:
        before = sorted_dates[min(count - 1, int(fraction * count))]
        kept = bisect.bisect_left(sorted_dates, before) / count  # granted strictly before
        filters.append(PriorArtFilter(f"{fraction:.0%}", before, kept))
    return filters


def class_filters(
    collection: Collection, prior_art: list[PriorArtFilter], query_count: int
) -> list[PriorArtFilter]:
    """Each query in its own class, without a date and with the first prior-art date; `kept` is
    the mean share of the collection that passes, over the first `query_count` queries."""
    figure_classes = np.array([row["classes"][0][: len("LOCARNO:14")] for row in collection.metadata])
    figure_dates = np.array([row["grant_date"] for row in collection.metadata])
    asked = collection.query_classes[:query_count]
    filters = []
    for dated in prior_art[:2]:  # no date, then the first prior-art date
        passes = np.ones(len(figure_dates), bool) if dated.before is None else figure_dates < dated.before
        share = {name: float(np.mean(passes & (figure_classes == name))) for name in set(asked)}
        name = "class" if dated.before is None else f"class + {dated.name}"
        filters.append(PriorArtFilter(name, dated.before, float(np.mean([share[c] for c in asked])), True))
    return filters


def top_ids(
    index: FigureIndex, queries: np.ndarray, before: str | None, classes: list[str] | None = None
) -> list[list[str]]:
    hits = index.search(queries, k=TOP_K, before=before, classification=classes)
    return [[hit.figure_id for hit in row] for row in hits]


def single_query_latencies(
    index: FigureIndex, queries: np.ndarray, before: str | None, label: str, classes: list[str] | None = None
) -> tuple[np.ndarray, list[list[str]]]:
    """Milliseconds of each one-query `search`, and the figure ids it returned; `classes`: each
    query's class filter."""
    index.search(
        queries[:5], k=TOP_K, before=before, classification=classes[:5] if classes else None
    )  # warm up
    latencies = np.empty(len(queries))
    found: list[list[str]] = []
    for row in tqdm(range(len(queries)), desc=label, leave=False, file=sys.stderr):
        classification = classes[row] if classes else None
        started = time.perf_counter()
        hits = index.search(queries[row : row + 1], k=TOP_K, before=before, classification=classification)[0]
        latencies[row] = (time.perf_counter() - started) * 1000.0
        found.append([hit.figure_id for hit in hits])
    return latencies, found


def recall_at_k(found: list[list[str]], exact: list[list[str]]) -> float:
    """Mean share of the exact top-k that the approximate search also returned."""
    shares = [
        len(set(got) & set(truth)) / len(truth) for got, truth in zip(found, exact, strict=True) if truth
    ]
    return float(np.mean(shares)) if shares else float("nan")


def bench_size(count: int, args: argparse.Namespace, options: IndexOptions) -> list[Row]:
    log(f"[{count:,}] generating {count:,} vectors of dim {args.dim} in {args.clusters} clusters")
    collection = synthetic_collection(
        count, max(args.queries, args.batch), args.dim, args.clusters, args.spread, args.seed
    )
    filters = prior_art_filters(collection.sorted_dates, args.filters)
    if args.class_filters:
        filters += class_filters(collection, filters, args.queries)
    single, batch = collection.queries[: args.queries], collection.queries[: args.batch]
    single_classes, batch_classes = (
        collection.query_classes[: args.queries],
        collection.query_classes[: args.batch],
    )
    kinds = [kind for kind in BENCHED if kind in args.kinds]  # flat first: it is the ground truth
    exact: dict[str, list[list[str]]] = {}
    if "flat" not in kinds:
        log(f"[{count:,}] exact search for the recall ground truth")
        truth_index = FigureIndex.build(collection.vectors, collection.metadata, kind="flat", metric="ip")
        exact = {
            f.name: top_ids(truth_index, single, f.before, single_classes if f.by_class else None)
            for f in filters
        }
        del truth_index
    rows: list[Row] = []
    for kind in kinds:
        log(f"[{count:,}] building {kind}")
        started = time.perf_counter()
        refined = kind == "ivfpq-refine"
        index = FigureIndex.build(
            collection.vectors,
            collection.metadata,
            kind="ivfpq" if refined else kind,  # type: ignore[arg-type]
            metric="ip",
            options=replace(options, refine=args.refine if refined else 0),
        )
        build_s = time.perf_counter() - started
        log(f"[{count:,}] {kind} built in {build_s:.1f} s")
        unfiltered_p50 = float("nan")
        for prior_art in filters:
            latencies, found = single_query_latencies(
                index,
                single,
                prior_art.before,
                f"{kind} {prior_art.name}",
                single_classes if prior_art.by_class else None,
            )
            if kind == "flat":
                exact[prior_art.name] = found
            started = time.perf_counter()
            index.search(
                batch,
                k=TOP_K,
                before=prior_art.before,
                classification=batch_classes if prior_art.by_class else None,
            )
            batch_s = time.perf_counter() - started
            p50, p99 = np.percentile(latencies, [50, 99])
            if prior_art.name == "all":
                unfiltered_p50 = float(p50)
            rows.append(
                Row(
                    vectors=count,
                    kind=kind,
                    build_s=build_s,
                    filter=prior_art.name,
                    before=prior_art.before,
                    kept=prior_art.kept,
                    p50_ms=float(p50),
                    p99_ms=float(p99),
                    p50_vs_unfiltered=float(p50) / unfiltered_p50,
                    recall_at_10=recall_at_k(found, exact[prior_art.name]),
                    batch_qps=len(batch) / batch_s,
                )
            )
        del index
        gc.collect()  # free this index before the next one is built beside the vectors
    return rows


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown_table(rows: list[Row], batch: int) -> str:
    header = (
        "| vectors | index | build (s) | filter (kept) | p50 (ms) | p99 (ms) | p50 vs all "
        f"| recall@10 | batch of {batch} (q/s) |"
    )
    lines = [header, "|---:|---|---:|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        first_of_index = row.filter == "all"
        filter_cell = "none" if row.before is None else f"< {row.before} ({row.kept:.0%})"
        if row.filter.startswith("class"):
            dated = "" if row.before is None else f", < {row.before}"
            filter_cell = f"own class{dated} ({row.kept:.1%})"
        recall = "exact" if row.kind == "flat" else f"{row.recall_at_10:.3f}"
        lines.append(
            f"| {row.vectors:,} | {row.kind if first_of_index else ''} "
            f"| {f'{row.build_s:.1f}' if first_of_index else ''} | {filter_cell} "
            f"| {row.p50_ms:.2f} | {row.p99_ms:.2f} | {row.p50_vs_unfiltered:.2f}x "
            f"| {recall} | {row.batch_qps:,.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = IndexOptions()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="collection sizes")
    parser.add_argument("--kinds", nargs="+", choices=BENCHED, default=list(BENCHED), help="index kinds")
    parser.add_argument(
        "--dim", type=int, default=128, help="embedding dimension (the embedded encoder's: 128)"
    )
    parser.add_argument("--clusters", type=int, default=2000, help="mixture components")
    parser.add_argument(
        "--spread", type=float, default=5.0, help="within-cluster scale; larger: clusters overlap more"
    )
    parser.add_argument("--queries", type=int, default=500, help="held-out single queries timed")
    parser.add_argument("--batch", type=int, default=1000, help="queries in the throughput batch")
    parser.add_argument(
        "--filters",
        type=float,
        nargs="+",
        default=[0.5, 0.1],
        help="prior-art filters: share of figures kept",
    )
    parser.add_argument(
        "--class-filters",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time each query restricted to its own Locarno class, without and with the first date filter",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--nlist",
        type=int,
        default=1024,
        help="IVF cells; 0: FigureIndex's default of about 4 sqrt(n), whose k-means over all of 1M vectors "
        "takes many minutes on 2 cores (default: 1024)",
    )
    parser.add_argument("--nprobe", type=int, default=defaults.nprobe, help="IVF cells visited per query")
    parser.add_argument("--pq-m", type=int, default=defaults.m, help="PQ sub-quantizers (must divide --dim)")
    parser.add_argument("--pq-nbits", type=int, default=defaults.nbits, help="bits per PQ code")
    parser.add_argument(
        "--refine", type=int, default=4, help="ivfpq-refine: PQ candidates re-scored exactly, times k"
    )
    parser.add_argument("--hnsw-m", type=int, default=defaults.hnsw_m, help="HNSW graph degree")
    parser.add_argument(
        "--ef-construction", type=int, default=defaults.ef_construction, help="HNSW build beam"
    )
    parser.add_argument("--ef-search", type=int, default=defaults.ef_search, help="HNSW search beam")
    parser.add_argument(
        "--threads", type=int, help="FAISS OpenMP threads (default: FAISS's own, one per CPU)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows and the machine notes as JSON here")
    args = parser.parse_args(argv)
    if any(size < 1 for size in args.sizes):
        parser.error("--sizes: every size must be at least 1")
    if not all(0.0 < fraction < 1.0 for fraction in args.filters):
        parser.error("--filters: each share must lie strictly between 0 and 1")
    if args.nlist < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--nlist must be 0 (automatic) or more, --threads at least 1")
    if args.refine < 1:
        parser.error("--refine must be at least 1")
    if {"ivfpq", "ivfpq-refine"} & set(args.kinds) and args.dim % args.pq_m:
        parser.error(f"--pq-m {args.pq_m} must divide --dim {args.dim} for ivfpq")
    if args.queries < 1 or args.batch < 1:
        parser.error("--queries and --batch must be at least 1")
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    options = IndexOptions(
        nlist=args.nlist or None,
        nprobe=args.nprobe,
        m=args.pq_m,
        nbits=args.pq_nbits,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        ef_search=args.ef_search,
    )
    notes = {
        "faiss_version": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "dim": args.dim,
        "clusters": args.clusters,
        "spread": args.spread,
        "single_queries": args.queries,
        "batch": args.batch,
        "k": TOP_K,
        "seed": args.seed,
        "index_options": asdict(options),
        "refine": args.refine,
    }
    started = time.perf_counter()
    rows: list[Row] = []
    for count in args.sizes:
        rows += bench_size(count, args, options)
    notes["wall_s"] = round(time.perf_counter() - started, 1)

    nlist = "about 4 sqrt(n)" if options.nlist is None else str(options.nlist)
    print(
        f"FAISS {notes['faiss_version']}, {notes['faiss_threads']} OpenMP threads, "
        f"{notes['cpu_count']} CPUs ({notes['cpu_model']}), Python {notes['python']}; "
        f"dim {args.dim}, metric ip, {args.clusters}-cluster mixture (spread {args.spread}), "
        f"k={TOP_K}, {args.queries} single queries, seed {args.seed}. "
        f"ivf: nlist {nlist}, nprobe {options.nprobe}; ivfpq: same plus PQ{options.m}x{options.nbits}, "
        f"ivfpq-refine re-scores {args.refine} x k; "
        f"hnsw: M {options.hnsw_m}, efConstruction {options.ef_construction}, efSearch {options.ef_search}. "
        f"Wall time {notes['wall_s']:.0f} s.\n"
    )
    print(markdown_table(rows, args.batch))
    if args.json:
        with atomic_write(args.json) as handle:
            json.dump({"notes": notes, "rows": [asdict(row) for row in rows]}, handle, indent=2)
            handle.write("\n")
    return rows


if __name__ == "__main__":
    main()
