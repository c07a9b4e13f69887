"""`training/job.py`'s shared output helpers."""

from __future__ import annotations

import math

from training.job import flat_metrics


def test_flat_metrics_names_each_number_by_its_group() -> None:
    nested = {
        "same_patent": {"mAP": 0.5, "queries": 4, "note": "text", "by_class": {"a": 1.0}},
        "prior_art": {"mAP": None, "Rank-1": math.nan},
        "encoder_dir": "/models/x",  # not a group of metrics
    }
    flat = flat_metrics(nested, "untrained_")
    assert list(flat) == [
        "untrained_same_patent_mAP",
        "untrained_same_patent_queries",
        "untrained_prior_art_Rank-1",
    ]
    assert flat["untrained_same_patent_queries"] == 4.0 and isinstance(
        flat["untrained_same_patent_queries"], float
    )
    assert math.isnan(
        flat["untrained_prior_art_Rank-1"]
    )  # a number, even NaN: `finite` is the caller's choice


def test_flat_metrics_keeps_only_the_names_asked_for_in_their_order() -> None:
    nested = {"brief": {"rougeL": 0.2, "bleu4": 0.1, "figures": 3}, "detailed": {"bleu4": None}}
    assert list(flat_metrics(nested, names=("bleu4", "rougeL", "cider")).items()) == [
        ("brief_bleu4", 0.1),
        ("brief_rougeL", 0.2),
    ]
