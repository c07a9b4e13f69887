"""Smoke test of benchmarks/retrieval_index.py at a tiny size, plus its helpers on their own."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from datetime import date

import numpy as np
import pytest

from tests.conftest import PROJECT as ROOT

SCRIPT = ROOT / "benchmarks" / "retrieval_index.py"


@pytest.fixture(scope="module")
def bench():
    # benchmarks/ is a folder of scripts, not a package: load the file as a module.
    spec = importlib.util.spec_from_file_location("retrieval_index_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_tiny_run_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_script(
        "--sizes", "3000", "--dim", "32", "--clusters", "30", "--queries", "40", "--batch", "60",
        "--nlist", "16", "--nprobe", "4", "--pq-m", "4", "--pq-nbits", "4", "--hnsw-m", "16", "--ef-construction", "40",
        "--threads", "1", "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = [line for line in result.stdout.splitlines() if line.startswith("| 3,000 |")]
    # five kinds, each unfiltered, under two prior-art filters, its own class and class + date
    assert len(table) == 5 * 5
    assert "| 3,000 | flat |" in table[0] and "| exact |" in table[0]
    assert "FAISS " in result.stdout and "1 OpenMP threads" in result.stdout

    report = json.loads(out.read_text())
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file
    assert report["notes"]["faiss_threads"] == 1 and report["notes"]["cpu_count"] >= 1
    assert report["notes"]["index_options"]["nlist"] == 16
    rows = {(row["kind"], row["filter"]): row for row in report["rows"]}
    kinds = ("flat", "ivf", "hnsw", "ivfpq", "ivfpq-refine")
    filters = ("all", "50%", "10%", "class", "class + 50%")
    assert set(rows) == {(k, f) for k in kinds for f in filters}
    for name in ("all", "50%", "10%"):  # exact re-scoring only adds what the PQ codes lost
        assert rows["ivfpq-refine", name]["recall_at_10"] >= rows["ivfpq", name]["recall_at_10"]
    for (kind, name), row in rows.items():
        assert row["p99_ms"] >= row["p50_ms"] > 0 and row["batch_qps"] > 0 and row["build_s"] > 0
        assert 0.0 <= row["recall_at_10"] <= 1.0
        if name == "all":
            assert row["before"] is None and row["kept"] == 1.0 and row["p50_vs_unfiltered"] == 1.0
        elif name.startswith("class"):
            assert 0.0 < row["kept"] < 0.5 and row["before"] == (
                None if name == "class" else rows[kind, "50%"]["before"]
            )
        else:
            assert abs(row["kept"] - float(name.rstrip("%")) / 100) < 0.03
    assert rows["flat", "class + 50%"]["kept"] < rows["flat", "class"]["kept"]
    assert "| own class (" in result.stdout and "| own class, < " in result.stdout
    assert all(rows[("flat", name)]["recall_at_10"] == 1.0 for name in filters)
    # On 3,000 vectors a graph search with efSearch 128 is near exact: a wrong ground truth
    # (say, one taken without the date or the class filter) would pull this far down.
    assert all(rows[("hnsw", name)]["recall_at_10"] >= 0.9 for name in filters)
    assert rows[("ivf", "10%")]["before"] < rows[("ivf", "50%")]["before"]


def test_bad_arguments_are_refused_with_the_reason():
    result = run_script("--sizes", "1000", "--filters", "1.5")
    assert result.returncode == 2 and "--filters" in result.stderr
    result = run_script("--sizes", "1000", "--dim", "30", "--pq-m", "8")
    assert result.returncode == 2 and "--pq-m 8 must divide --dim 30" in result.stderr


def test_synthetic_collection_is_unit_vectors_on_weekly_tuesdays(bench):
    collection = bench.synthetic_collection(2000, 50, dim=16, clusters=10, spread=5.0, seed=3)
    assert collection.vectors.shape == (2000, 16) and collection.queries.shape == (50, 16)
    assert collection.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(collection.vectors, axis=1), 1.0, rtol=1e-5)
    dates = [date.fromisoformat(row["grant_date"]) for row in collection.metadata]
    assert {d.weekday() for d in dates} == {1}  # Tuesdays
    assert (max(dates) - min(dates)).days > 19 * 365
    assert collection.sorted_dates == sorted(row["grant_date"] for row in collection.metadata)
    # Grants per week grow over the span: the later half holds more figures than the first.
    middle = date.fromordinal((min(dates).toordinal() + max(dates).toordinal()) // 2)
    assert sum(d >= middle for d in dates) > sum(d < middle for d in dates)
    # Same seed, same collection: runs are comparable.
    again = bench.synthetic_collection(2000, 50, dim=16, clusters=10, spread=5.0, seed=3)
    np.testing.assert_array_equal(again.vectors, collection.vectors)


def test_each_query_has_its_cluster_s_class_and_the_class_filters_count_what_passes(bench):
    collection = bench.synthetic_collection(3000, 80, dim=16, clusters=40, spread=5.0, seed=5)
    classes = [row["classes"][0] for row in collection.metadata]
    assert all(len(name) == len("LOCARNO:1403") and name.startswith("LOCARNO:") for name in classes)
    assert len({name[:10] for name in classes}) > 5  # several Locarno classes, of unequal size
    assert set(collection.query_classes) <= {name[:10] for name in classes}
    prior_art = bench.prior_art_filters(collection.sorted_dates, [0.5])
    alone, dated = bench.class_filters(collection, prior_art, 80)
    assert (alone.name, alone.before, dated.name, dated.before) == (
        "class",
        None,
        "class + 50%",
        prior_art[1].before,
    )
    expected = np.mean([np.mean([c.startswith(q) for c in classes]) for q in collection.query_classes])
    assert alone.kept == pytest.approx(expected)
    dates = [row["grant_date"] for row in collection.metadata]
    expected = np.mean(
        [
            np.mean([c.startswith(q) and d < dated.before for c, d in zip(classes, dates, strict=True)])
            for q in collection.query_classes
        ]
    )
    assert dated.kept == pytest.approx(expected) and dated.by_class and alone.by_class


def test_prior_art_filters_keep_the_requested_share(bench):
    sorted_dates = sorted(f"2010-01-{day:02d}" for day in range(1, 29) for _ in range(10))
    filters = bench.prior_art_filters(sorted_dates, [0.5, 0.1])
    assert [f.name for f in filters] == ["all", "50%", "10%"]
    assert filters[0].before is None and filters[0].kept == 1.0
    for prior_art in filters[1:]:
        kept = sum(value < prior_art.before for value in sorted_dates) / len(sorted_dates)
        assert prior_art.kept == kept
    assert abs(filters[1].kept - 0.5) < 0.04 and abs(filters[2].kept - 0.1) < 0.04


def test_recall_at_k_counts_the_shared_hits(bench):
    exact = [["a", "b", "c", "d"], ["e", "f", "g", "h"], []]
    found = [["a", "b", "x", "y"], ["h", "g", "f", "e"], []]
    assert bench.recall_at_k(found, exact) == pytest.approx((0.5 + 1.0) / 2)  # empty truth skipped
