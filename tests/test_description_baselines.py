"""training.description_baselines: the bars a description model has to clear."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.description_baselines import constant_descriptions, nearest_neighbour_descriptions

# Unit vectors by image name: q1 is closest to p1 (same patent), then to p2.
VECTORS = {
    "q1": [1.0, 0.0],
    "q2": [0.0, 1.0],
    "p1": [1.0, 0.0],
    "p2": [0.8, 0.6],
    "p3": [0.0, 1.0],
}


def _embed(images):
    kept = [i for i, path in enumerate(images) if Path(path).name in VECTORS]
    failed = {i: "cannot read" for i in range(len(images)) if i not in kept}
    return np.array([VECTORS[Path(images[i]).name] for i in kept]), kept, failed


def test_nearest_neighbour_takes_another_patents_closest_figure() -> None:
    queries = {"a__1": Path("q1"), "b__1": Path("q2"), "c__1": Path("broken")}
    pool = {"a__2": (Path("p1"), "own patent"), "d__1": (Path("p2"), "near"), "e__1": (Path("p3"), "far")}
    patent_of = {"a__1": "A", "a__2": "A", "b__1": "B", "c__1": "C", "d__1": "D", "e__1": "E"}
    described, unanswered = nearest_neighbour_descriptions(queries, pool, patent_of, _embed)
    assert described == {"a__1": "near", "b__1": "far", "c__1": ""}
    assert list(unanswered) == ["c__1"] and "cannot read" in unanswered["c__1"]


def test_constant_describes_every_figure_alike() -> None:
    assert constant_descriptions(["x", "y"]) == {
        "x": "FIG. 1 is a perspective view of the device.",
        "y": "FIG. 1 is a perspective view of the device.",
    }
