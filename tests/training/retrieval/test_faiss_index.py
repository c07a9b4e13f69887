from __future__ import annotations

import json
import time
from datetime import date, timedelta

import faiss
import numpy as np
import pytest

from training.retrieval.faiss_index import (
    FigureIndex,
    IndexFileError,
    KReciprocalConfig,
    rerank_k_reciprocal,
)

DIM = 64
COUNT = 20_000
KINDS = ["flat", "ivf", "hnsw", "ivfpq"]


def clustered(count: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, size=count)
    return (centres[labels] + 1.0 * rng.normal(size=(count, dim))).astype(np.float32)


def metadata(count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    start = date(2005, 1, 4)
    # Weekly grant Tuesdays, shuffled: build() must put them in date order itself.
    weeks = rng.integers(0, 52 * 15, size=count)
    return [
        {
            "figure_id": f"USD{i:07d}S1__D{i % 7:05d}",
            "patent_id": f"USD{i // 4:07d}S1",
            "grant_date": (start + timedelta(weeks=int(w))).isoformat(),
            # stored form, as uspto_xml writes it: 30 Locarno classes of 7 subclasses, a USPC class
            "classes": [f"LOCARNO:{i % 30 + 1:02d}{i % 7 + 1:02d}", f"USPC:D{i % 30 + 1}"],
        }
        for i, w in enumerate(weeks)
    ]


@pytest.fixture(scope="module")
def corpus() -> tuple[np.ndarray, list[dict], np.ndarray]:
    vectors = clustered(COUNT + 200, DIM, clusters=1000, seed=1)
    return vectors[:COUNT], metadata(COUNT, seed=2), vectors[COUNT:]


@pytest.fixture(scope="module")
def indexes(corpus) -> dict[str, FigureIndex]:
    embeddings, rows, _ = corpus
    built = {}
    for kind in KINDS:
        started = time.perf_counter()
        built[kind] = FigureIndex.build(embeddings, rows, kind=kind)
        print(f"build {kind}: {time.perf_counter() - started:.2f} s")
    built["ivfpq-refine"] = FigureIndex.build(embeddings, rows, kind="ivfpq", refine=4)
    return built


def brute_force(
    embeddings: np.ndarray, rows: list[dict], query: np.ndarray, k: int, before: str, prefix: str = ""
):
    """Cosine top-k over the figures granted strictly before `before` with a class starting with
    `prefix`, by plain numpy."""
    allowed = np.array(
        [row["grant_date"] < before and any(c.startswith(prefix) for c in row["classes"]) for row in rows]
    )
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    scores[~allowed] = -np.inf
    top = np.argsort(-scores, kind="stable")[: min(k, int(allowed.sum()))]
    return [rows[i]["figure_id"] for i in top], scores[top]


def test_ids_follow_grant_date_order(indexes):
    index = indexes["flat"]
    dates = [figure.grant_date for figure in index.figures]
    assert dates == sorted(dates)
    for a, b in zip(index.figures, index.figures[1:], strict=False):
        if a.grant_date == b.grant_date:
            assert a.figure_id < b.figure_id  # ties broken by figure id
    cutoff = index.cutoff("2012-06-01")
    assert all(d < "2012-06-01" for d in dates[:cutoff])
    assert all(d >= "2012-06-01" for d in dates[cutoff:])
    assert index.cutoff(date(2012, 6, 1)) == cutoff
    assert index.cutoff(None) == COUNT


@pytest.mark.parametrize("before", ["2005-02-01", "2009-03-17", "2014-11-11", "2030-01-01"])
def test_filtered_exact_search_equals_brute_force(corpus, indexes, before):
    embeddings, rows, queries = corpus
    results = indexes["flat"].search(queries[:20], k=10, before=before)
    for query, hits in zip(queries[:20], results, strict=True):
        expected_ids, expected_scores = brute_force(embeddings, rows, query, 10, before)
        assert [hit.figure_id for hit in hits] == expected_ids
        np.testing.assert_allclose([hit.score for hit in hits], expected_scores, rtol=1e-4, atol=1e-5)
        assert [hit.rank for hit in hits] == list(range(1, len(hits) + 1))


def test_date_before_every_figure_gives_no_hits(indexes):
    assert indexes["flat"].search(np.ones(DIM, np.float32), k=5, before="1999-01-01") == [[]]


@pytest.mark.parametrize("kind", [*KINDS, "ivfpq-refine"])
def test_every_hit_is_prior_art_for_each_kind(corpus, indexes, kind):
    _, _, queries = corpus
    index = indexes[kind]
    before = "2006-03-01"  # a small allowed prefix: an over-fetch-and-drop would come up short
    allowed = index.cutoff(before)
    assert 10 < allowed < 0.1 * COUNT
    for hits in index.search(queries[:50], k=10, before=before):
        assert hits, "an approximate index must still find prior art when some exists"
        assert all(hit.grant_date < before for hit in hits)
        if kind == "flat":
            assert len(hits) == 10


def test_per_query_dates(corpus, indexes):
    _, _, queries = corpus
    befores = ["2008-01-01", None, "2005-01-01", date(2016, 5, 3)]
    results = indexes["flat"].search(queries[:4], k=5, before=befores)
    assert all(hit.grant_date < "2008-01-01" for hit in results[0])
    assert results[1] == indexes["flat"].search(queries[1], k=5)[0]
    assert results[2] == []  # nothing granted before the first Tuesday of the corpus
    assert all(hit.grant_date < "2016-05-03" for hit in results[3])


CLASS_FILTERS = [
    ("2030-01-01", "LOCARNO:14"),  # a class alone: 1/30 of the corpus
    ("2012-06-01", "LOCARNO:1403"),  # a subclass and a date: about 1/210 of 60%
    ("2006-03-01", "LOCARNO:07"),  # a few dozen figures: an over-fetch-and-drop would come up short
    ("2030-01-01", "USPC:D1"),  # a bare string prefix: D1, D10-D19 alike
]


@pytest.mark.parametrize(("before", "prefix"), CLASS_FILTERS)
def test_class_and_date_filtered_exact_search_equals_brute_force(corpus, indexes, before, prefix):
    embeddings, rows, queries = corpus
    index = indexes["flat"]
    allowed = sum(r["grant_date"] < before and any(c.startswith(prefix) for c in r["classes"]) for r in rows)
    assert index.count_allowed(before, prefix) == allowed > 10
    for query, hits in zip(
        queries[:20], index.search(queries[:20], k=10, before=before, classification=prefix), strict=True
    ):
        expected_ids, expected_scores = brute_force(embeddings, rows, query, 10, before, prefix)
        assert [hit.figure_id for hit in hits] == expected_ids
        np.testing.assert_allclose([hit.score for hit in hits], expected_scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", [*KINDS, "ivfpq-refine"])
def test_every_hit_obeys_both_filters_for_each_kind(corpus, indexes, kind):
    _, _, queries = corpus
    index = indexes[kind]
    for before, prefix in CLASS_FILTERS:
        for hits in index.search(queries[:30], k=10, before=before, classification=prefix):
            assert hits, f"{kind} found nothing for {prefix} before {before} though some exists"
            assert all(hit.grant_date < before for hit in hits)
            assert all(any(c.startswith(prefix) for c in hit.classes) for hit in hits)
            if kind == "flat":
                assert len(hits) == 10
    assert index.search(queries[:2], k=5, classification="LOCARNO:99") == [[], []]  # no such class


def test_per_query_classes_and_the_selection_cache(corpus, indexes):
    _, _, queries = corpus
    index = indexes["flat"]
    prefixes = ["LOCARNO:14", None, "LOCARNO:1403", "LOCARNO:14"]
    results = index.search(queries[:4], k=5, classification=prefixes)
    for row, prefix in enumerate(prefixes):
        assert results[row] == index.search(queries[row], k=5, classification=prefix)[0]
    assert all(hit.classes[0].startswith("LOCARNO:14") for hit in results[0])
    ids, bitmap = index.class_selection("LOCARNO:14")
    members = np.unpackbits(bitmap, bitorder="little")[: len(index.figures)].astype(bool)
    assert list(np.flatnonzero(members)) == list(ids)
    assert all(index.figures[i].classes[0].startswith("LOCARNO:14") for i in ids)
    with pytest.raises(ValueError, match="classification: 2 values for 4 queries"):
        index.search(queries[:4], k=5, classification=["LOCARNO:14", None])


def recall_at_10(approximate: list[list], exact: list[list]) -> float:
    found = [
        len({h.figure_id for h in a} & {h.figure_id for h in e}) / max(len(e), 1)
        for a, e in zip(approximate, exact, strict=True)
    ]
    return float(np.mean(found))


def test_recall_of_approximate_kinds_against_exact(corpus, indexes):
    _, _, queries = corpus
    exact_all = indexes["flat"].search(queries, k=10)
    exact_filtered = indexes["flat"].search(queries, k=10, before="2012-01-01")
    recalls = {}
    for kind in ("ivf", "hnsw", "ivfpq", "ivfpq-refine"):
        started = time.perf_counter()
        results = indexes[kind].search(queries, k=10)
        elapsed = (time.perf_counter() - started) / len(queries)
        filtered = indexes[kind].search(queries, k=10, before="2012-01-01")
        recalls[kind] = (recall_at_10(results, exact_all), recall_at_10(filtered, exact_filtered))
        print(
            f"{kind}: recall@10 {recalls[kind][0]:.3f}, filtered {recalls[kind][1]:.3f}, {elapsed * 1e3:.3f} ms/q"
        )
    # Overlapping clusters: IVF at nprobe 16 of 512 cells misses some neighbours, more so under
    # the filter (the allowed neighbours spread over more cells); visiting more cells recovers them.
    assert recalls["ivf"][0] >= 0.8 and recalls["ivf"][1] >= 0.75
    assert recalls["hnsw"][0] >= 0.95 and recalls["hnsw"][1] >= 0.95
    assert recalls["ivfpq"][0] >= 0.4  # 8-byte codes of 64-d vectors: coarse by design
    # Re-scoring 4 x k PQ candidates exactly recovers what the codes lose, up to IVF's own misses.
    assert recalls["ivfpq-refine"][0] >= max(recalls["ivfpq"][0] + 0.1, recalls["ivf"][0] - 0.05)
    assert recalls["ivfpq-refine"][1] >= max(recalls["ivfpq"][1] + 0.1, recalls["ivf"][1] - 0.05)
    ivf = indexes["ivf"]
    ivf.options.nprobe = 64
    try:
        wider = ivf.search(queries, k=10), ivf.search(queries, k=10, before="2012-01-01")
    finally:
        ivf.options.nprobe = 16
    wide_recall = recall_at_10(wider[0], exact_all), recall_at_10(wider[1], exact_filtered)
    print(f"ivf nprobe 64: recall@10 {wide_recall[0]:.3f}, filtered {wide_recall[1]:.3f}")
    assert wide_recall[0] > recalls["ivf"][0] and wide_recall[1] > recalls["ivf"][1]
    assert min(wide_recall) >= 0.9


@pytest.mark.parametrize("kind", ["flat", "ivfpq", "ivfpq-refine"])
def test_save_load_round_trip(tmp_path, corpus, indexes, kind):
    _, _, queries = corpus
    index = indexes[kind]
    target = index.save(tmp_path / "index")
    assert sorted(p.name for p in target.iterdir()) == ["index.faiss", "index.json", "metadata.jsonl"]
    manifest = json.loads((target / "index.json").read_text())
    assert manifest["kind"] == index.kind and manifest["metric"] == "ip"
    assert manifest["dim"] == DIM and manifest["count"] == COUNT
    assert manifest["first_grant_date"] == index.figures[0].grant_date
    assert manifest["last_grant_date"] == index.figures[-1].grant_date
    loaded = FigureIndex.load(target)
    assert loaded.figures == index.figures and loaded.kind == index.kind
    assert loaded.options == index.options
    assert isinstance(loaded.index, faiss.IndexRefine) == (index.options.refine > 0)
    before = "2013-07-09"
    assert loaded.search(queries[:10], k=10, before=before) == index.search(queries[:10], k=10, before=before)
    # Saving over an existing index replaces it whole, and leaves no temporary directory.
    index.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def small_index(count: int = 300, seed: int = 3) -> tuple[FigureIndex, np.ndarray]:
    vectors = clustered(count, 16, clusters=10, seed=seed)
    return FigureIndex.build(vectors, metadata(count, seed=seed)), vectors


def test_load_names_missing_and_corrupt_files(tmp_path):
    index, _ = small_index()
    target = index.save(tmp_path / "idx")

    (target / "metadata.jsonl").rename(tmp_path / "aside.jsonl")
    with pytest.raises(IndexFileError, match=r"metadata\.jsonl: missing"):
        FigureIndex.load(target)
    (tmp_path / "aside.jsonl").rename(target / "metadata.jsonl")

    data = (target / "index.faiss").read_bytes()
    (target / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match=r"index\.faiss: corrupt"):
        FigureIndex.load(target)

    # Without the checksums, FAISS's own reader still names the truncated file.
    manifest = json.loads((target / "index.json").read_text())
    del manifest["sha256"]
    (target / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match=r"index\.faiss: corrupt FAISS index"):
        FigureIndex.load(target)

    (target / "index.json").write_text("{not json")
    with pytest.raises(IndexFileError, match=r"index\.json: corrupt manifest"):
        FigureIndex.load(target)

    with pytest.raises(IndexFileError, match="missing"):
        FigureIndex.load(tmp_path / "nowhere")


def test_corrupt_metadata_line_is_named(tmp_path):
    index, _ = small_index()
    target = index.save(tmp_path / "idx")
    lines = (target / "metadata.jsonl").read_text().splitlines()
    lines[4] = lines[4][:-3]
    (target / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    manifest = json.loads((target / "index.json").read_text())
    del manifest["sha256"]
    (target / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match=r"metadata\.jsonl:5: corrupt JSON"):
        FigureIndex.load(target)


def test_bad_inputs_give_clear_errors():
    index, vectors = small_index()
    rows = metadata(len(vectors), seed=3)
    with pytest.raises(ValueError, match="dimension 8 does not match the index's 16"):
        index.search(np.ones((2, 8), np.float32), k=3)
    with pytest.raises(ValueError, match="zero figures"):
        FigureIndex.build(np.zeros((0, 16), np.float32), [])
    poisoned = vectors.copy()
    poisoned[7, 3] = np.nan
    with pytest.raises(ValueError, match=rf"NaN or infinite.*row 7 \(figure {rows[7]['figure_id']}\)"):
        FigureIndex.build(poisoned, rows)
    with pytest.raises(ValueError, match=r"queries: .*NaN"):
        index.search(np.full((1, 16), np.nan, np.float32), k=3)
    with pytest.raises(ValueError, match="300 rows but metadata 299"):
        FigureIndex.build(vectors, rows[:-1])
    with pytest.raises(ValueError, match="zero vector"):
        FigureIndex.build(np.zeros_like(vectors), rows)
    bad_date = [dict(row) for row in rows]
    bad_date[2]["grant_date"] = "20/05/2019"
    with pytest.raises(ValueError, match=r"metadata row 2 .*not an ISO date"):
        FigureIndex.build(vectors, bad_date)
    with pytest.raises(ValueError, match="must divide the dimension 16"):
        FigureIndex.build(vectors, rows, kind="ivfpq", m=5, nbits=4)
    with pytest.raises(ValueError, match="refine must be 0"):
        FigureIndex.build(vectors, rows, kind="ivfpq", m=4, nbits=4, refine=-1)
    with pytest.raises(ValueError, match=r"before: .*not an ISO date"):
        index.search(vectors[:1], k=3, before="last week")
    with pytest.raises(ValueError, match="unknown index kind"):
        FigureIndex.build(vectors, rows, kind="lsh")


def test_use_gpu_without_a_gpu_stays_on_cpu():
    vectors = clustered(200, 16, clusters=5, seed=4)
    rows = metadata(200, seed=4)
    cpu = FigureIndex.build(vectors, rows)
    asked = FigureIndex.build(vectors, rows, use_gpu=True)
    import faiss

    assert asked.on_gpu == (faiss.get_num_gpus() > 0 and hasattr(faiss, "StandardGpuResources"))
    assert asked.search(vectors[:5], k=4, before="2010-01-01") == cpu.search(
        vectors[:5], k=4, before="2010-01-01"
    )


def rerank_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A query whose true match t (row 0) is farther than a distractor d (row 1).

    t sits among the query's class (C) on its far side; d sits next to another class (B).
    t is a neighbour of the query's neighbours, d is not.
    """
    rng = np.random.default_rng(seed)
    same_class = rng.normal(size=(10, 2)) * 0.3
    other_class = rng.normal(size=(10, 2)) * 0.3 + np.array([-2.6, 0.0])
    background = rng.uniform(-6, 6, size=(20, 2))
    background = background[np.linalg.norm(background, axis=1) > 3.5]
    true_match, distractor = np.array([[0.9, 0.0]]), np.array([[-1.7, 0.0]])
    gallery = np.concatenate([true_match, distractor, same_class, other_class, background])
    return np.array([[-0.6, 0.0]]), gallery


def average_precision(distances: np.ndarray, relevant: np.ndarray) -> float:
    order = np.argsort(distances, kind="stable")
    hits = relevant[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


@pytest.mark.parametrize("seed", range(4))
def test_k_reciprocal_rerank_lifts_a_neighbour_of_neighbours(seed):
    query, gallery = rerank_case(seed)
    relevant = np.zeros(len(gallery), bool)
    relevant[0] = relevant[2:12] = True
    original = ((query - gallery) ** 2).sum(axis=1)
    assert original[1] < original[0]  # plain distance puts the distractor first
    reranked = rerank_k_reciprocal(query, gallery, k1=10, k2=3, lambda_value=0.3)
    assert reranked.shape == (1, len(gallery))
    assert reranked[0, 0] < reranked[0, 1]
    assert average_precision(reranked[0], relevant) > average_precision(original, relevant)
    # lambda 1 keeps only the original (column-normalised) distance: the old order comes back.
    plain = rerank_k_reciprocal(query, gallery, lambda_value=1.0)[0]
    assert list(np.argsort(plain, kind="stable")) == list(np.argsort(original, kind="stable"))


def test_rerank_inside_search_keeps_the_date_filter(corpus, indexes):
    _, _, queries = corpus
    before = "2010-01-01"
    config = KReciprocalConfig(pool=50)
    for kind in ("flat", "ivf"):
        results = indexes[kind].search(queries[:5], k=10, before=before, rerank=config)
        plain = indexes[kind].search(queries[:5], k=50, before=before)
        for hits, pool in zip(results, plain, strict=True):
            assert len(hits) == 10 and all(hit.grant_date < before for hit in hits)
            assert {h.figure_id for h in hits} <= {h.figure_id for h in pool}
            assert [h.score for h in hits] == sorted(h.score for h in hits)  # distances, ascending
    with pytest.raises(ValueError, match="k1 >= 1"):
        rerank_k_reciprocal(queries[:1], queries[1:5], k1=0)


def test_date_filter_survives_faiss_torch_utils() -> None:
    """pytorch-metric-learning imports faiss.contrib.torch_utils, which swaps `Index.search` for a
    wrapper without `params`: the prior-art filter must still work in such a process."""
    import faiss.contrib.torch_utils  # noqa: F401

    vectors = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    rows = [
        {"figure_id": f"f{i}", "patent_id": "p", "grant_date": f"2024-01-{1 + i % 28:02d}"} for i in range(40)
    ]
    for kind in ("flat", "hnsw"):
        hits = FigureIndex.build(vectors, rows, kind=kind).search(vectors[:1], k=5, before="2024-01-10")[0]
        assert len(hits) == 5 and all(hit.grant_date < "2024-01-10" for hit in hits)
