"""The retrieval gate judges on real drawings: metrics by origin, and the promotion decision on them."""

from __future__ import annotations

import numpy as np

from orchestration.resources import RetrievalSettings
from training import tracking
from training.job import flat_metrics
from training.retrieval.evaluate import evaluate_by_origin


def _figure(patent: str, number: int, synthetic: bool, split: str) -> dict:
    return {
        "image_id": f"{patent}__{number}",
        "patent_id": patent,
        "grant_date": "2021-01-05",
        "classifications": ["LOCARNO:0101"],
        "synthetic": synthetic,
        "split": split,
    }


def _collection() -> list[dict]:
    """Four real and four synthetic patents of two figures each; one of each origin held out."""
    figures = []
    for origin, synthetic in (("R", False), ("S", True)):
        for patent in range(4):
            for number in (1, 2):
                split = "val" if patent == 0 else "train"
                figures.append(_figure(f"US{origin}{patent}", number, synthetic, split))
    return figures


def _vectors(figures: list[dict], good_on: str) -> np.ndarray:
    """Figures of a patent share a direction where the model is good, are random elsewhere."""
    rng = np.random.default_rng(0)
    directions = {p: rng.normal(size=16) for p in {f["patent_id"] for f in figures}}
    rows = []
    for figure in figures:
        real = not figure["synthetic"]
        good = (good_on == "real") == real
        vector = directions[figure["patent_id"]] + 0.05 * rng.normal(size=16) if good else rng.normal(size=16)
        rows.append(vector / np.linalg.norm(vector))
    return np.asarray(rows, np.float32)


def test_metrics_by_origin_use_each_origin_as_its_own_database() -> None:
    figures = _collection()
    result = evaluate_by_origin(_vectors(figures, "real"), figures, ["val"])
    assert {"same_patent", "real_same_patent", "synthetic_same_patent", "real_prior_art"} <= set(result)
    # the held-out real patent's two figures find each other first among the 8 real figures only
    assert result["real_same_patent"]["queries"] == 2
    assert result["real_same_patent"]["mAP"] == 1.0
    assert result["synthetic_same_patent"]["queries"] == 2
    assert result["synthetic_same_patent"]["mAP"] < 1.0


def test_a_collection_without_real_figures_has_no_real_metrics() -> None:
    figures = [f for f in _collection() if f["synthetic"]]
    result = evaluate_by_origin(_vectors(figures, "synthetic"), figures, ["val"])
    assert "real_same_patent" not in result and "synthetic_same_patent" in result


def test_the_default_gate_blocks_a_challenger_worse_on_real_drawings() -> None:
    """Better on the synthetic patents, worse on the real ones: not promoted by default."""
    figures = _collection()
    champion = flat_metrics(evaluate_by_origin(_vectors(figures, "real"), figures, ["val"]))
    challenger = flat_metrics(evaluate_by_origin(_vectors(figures, "synthetic"), figures, ["val"]))
    assert challenger["synthetic_same_patent_mAP"] > champion["synthetic_same_patent_mAP"]
    metric = RetrievalSettings().promotion_metric
    assert metric == "real_same_patent_mAP"
    decision = tracking.compare(challenger, champion, primary=metric)
    assert not decision.promote
    assert "does not beat champion" in decision.reason
    # the same pair judged the other way round promotes: the gate reads the real figures
    assert tracking.compare(champion, challenger, primary=metric).promote
