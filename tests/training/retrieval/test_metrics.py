from __future__ import annotations

import math

import pytest

from training.retrieval.metrics import (
    DEEPPATENT,
    LO_ET_AL,
    MEASURES,
    UPAIR,
    evaluate_rankings,
    same_patent_qrels,
)


def _ranking(*doc_ids: str) -> dict[str, float]:
    """Scores that rank the documents in the order given."""
    return {doc_id: 1.0 - i / 100 for i, doc_id in enumerate(doc_ids)}


def test_perfect_ranking_scores_one_everywhere() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    run = {"q1": _ranking("a", "x", "y"), "q2": _ranking("b", "a"), "q3": _ranking("c")}
    scores = evaluate_rankings(run, qrels)
    for name in MEASURES:
        assert scores[name] == pytest.approx(1.0), name
    assert scores["queries"] == 3
    assert scores["skipped_queries"] == 0


def test_perfect_ranking_with_several_relevant_items() -> None:
    scores = evaluate_rankings({"q": _ranking("a", "b", "c", "x")}, {"q": {"a": 1, "b": 1, "c": 1}})
    for name in ("mAP", "MAP", "nDCG@10", "MRR", "MRR@10", "Recall@10", "Rank-1", "Rank-5"):
        assert scores[name] == pytest.approx(1.0), name
    assert scores["Recall@1"] == pytest.approx(1 / 3)  # one of three relevant items fits in the top 1


def test_known_case_checked_by_hand() -> None:
    qrels = {
        "q1": {"a": 1, "c": 1, "e": 1},  # e is never retrieved
        "q2": {"x": 1},
        "q3": {"t": 1},
    }
    run = {
        "q1": _ranking("a", "b", "c", "d"),  # relevant at ranks 1 and 3
        "q2": _ranking("y", "z", "u", "v", "w", "x"),  # relevant at rank 6
        "q3": _ranking(*[f"n{i}" for i in range(10)], "t"),  # relevant at rank 11
    }
    scores = evaluate_rankings(run, qrels)

    ap = [(1 / 1 + 2 / 3) / 3, 1 / 6, 1 / 11]
    ideal_q1 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    ndcg = [(1 + 1 / math.log2(4)) / ideal_q1, 1 / math.log2(7), 0.0]
    expected = {
        "mAP": sum(ap) / 3,
        "mAP@all": sum(ap) / 3,
        "MAP": sum(ap) / 3,
        "MRR": (1 + 1 / 6 + 1 / 11) / 3,
        "MRR@10": (1 + 1 / 6 + 0) / 3,  # rank 11 is past the cut-off
        "Recall@10": (2 / 3 + 1 + 0) / 3,
        "Recall@1": (1 / 3 + 0 + 0) / 3,
        "Rank-1": 1 / 3,
        "Rank-5": 1 / 3,  # q2's hit at rank 6 misses the top 5
        "nDCG@10": sum(ndcg) / 3,
    }
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value), name


def test_equal_scores_keep_the_run_order() -> None:
    qrels = {"q": {"a": 1}}
    assert evaluate_rankings({"q": {"b": 0.5, "a": 0.5}}, qrels)["MRR"] == pytest.approx(0.5)
    assert evaluate_rankings({"q": {"a": 0.5, "b": 0.5}}, qrels)["MRR"] == pytest.approx(1.0)


def test_no_truncation_of_long_rankings() -> None:
    run = {"q": {f"d{i}": -float(i) for i in range(3000)}}
    scores = evaluate_rankings(run, {"q": {"d2499": 1}})
    assert scores["mAP@all"] == pytest.approx(1 / 2500)


def test_queries_without_a_relevant_item_are_skipped_and_missing_runs_score_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {}, "q3": {"b": 0}, "q4": {"c": 1}}
    scores = evaluate_rankings({"q1": _ranking("a"), "q2": _ranking("z")}, qrels)
    assert scores["queries"] == 2  # q1 and q4
    assert scores["skipped_queries"] == 2
    assert scores["mAP"] == pytest.approx(0.5)  # q4 retrieved nothing


def test_graded_relevance_feeds_ndcg() -> None:
    qrels = {"q": {"a": 1, "b": 2}}
    best = evaluate_rankings({"q": _ranking("b", "a")}, qrels)["nDCG@10"]
    swapped = evaluate_rankings({"q": _ranking("a", "b")}, qrels)["nDCG@10"]
    assert best == pytest.approx(1.0)
    assert swapped < best
    # trec_eval's ndcg_cut uses the relevance itself as the gain (linear, not 2^rel - 1)
    assert swapped == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))


@pytest.mark.parametrize(
    ("run", "qrels", "message"),
    [
        ({"q9": {"a": 1.0}}, {"q": {"a": 1}}, "without qrels: q9"),
        ({"q": {"a": float("nan")}}, {"q": {"a": 1}}, "not finite"),
        ({"q": {"a": 1.0}}, {"q": {"a": 1.5}}, "not an integer"),
        ({"q": {"a": 1.0}}, {"q": {"a": 0}}, "nothing to evaluate"),
    ],
)
def test_bad_input_is_an_error(run: dict, qrels: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_rankings(run, qrels)


def test_paper_metric_sets_are_computed() -> None:
    scores = evaluate_rankings({"q": _ranking("a")}, {"q": {"a": 1}})
    assert set(LO_ET_AL + DEEPPATENT + UPAIR) <= set(scores)


def test_same_patent_qrels() -> None:
    figures = [("f1", "D1"), ("f2", "D1"), ("f3", "D1"), ("g1", "D2"), ("h1", "D3"), ("h2", "D3")]
    qrels = same_patent_qrels(figures, ["f1", "g1", "h2"])
    assert qrels == {"f1": {"f2": 1, "f3": 1}, "g1": {}, "h2": {"h1": 1}}


def test_same_patent_qrels_end_to_end_with_the_metrics() -> None:
    figures = [("f1", "D1"), ("f2", "D1"), ("g1", "D2"), ("g2", "D2")]
    qrels = same_patent_qrels(figures, ["f1", "g1"])
    run = {"f1": _ranking("g1", "f2", "g2"), "g1": _ranking("g2", "f1", "f2")}
    scores = evaluate_rankings(run, qrels)
    assert scores["mAP@all"] == pytest.approx((1 / 2 + 1) / 2)
    assert scores["Rank-1"] == pytest.approx(0.5)


def test_same_patent_qrels_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="'f1' is listed twice"):
        same_patent_qrels([("f1", "D1"), ("f1", "D2")], ["f1"])
    with pytest.raises(ValueError, match="'zz' is not among the 1 figures"):
        same_patent_qrels([("f1", "D1")], ["zz"])
