"""training.describe.baselines: the bars a description model has to clear."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.describe.baselines import (
    commonest_sentence,
    constant_descriptions,
    nearest_neighbour_descriptions,
    ocr_label_descriptions,
)

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


def test_commonest_sentence_is_what_the_most_patents_write_after_the_figure_number() -> None:
    pool = {
        "USD0000001S1__2": "FIG. 2 is a front view thereof;",
        "USD0000002S1__12": "FIG. 12 is a front view thereof;",
        "USD0000003S1__3": "FIG. 3A is a front view thereof;",  # a lettered label counts alike
        # one patent repeating its own sentence is one voice, however many sheets it has
        **{f"USD0000004S1__{n}": f"FIG. {n} is a view of a game piece;" for n in range(1, 9)},
        "USD0000005S1__4": "FIGS. 4 and 5 are side views thereof;",  # names two figures: not counted
        "USD0000006S1__1": "1.1 : Front",  # a Hague reproduction: not counted
    }
    assert commonest_sentence(pool) == " is a front view thereof;"
    assert commonest_sentence({"USD0000006S1__1": "1.1 : Front"}) is None


def test_ocr_label_names_the_first_label_the_sheet_prints_in_the_commonest_sentence() -> None:
    pool = {
        "USD0000001S1__2": "FIG. 2 is a front view thereof;",
        "USD0000002S1__5": "FIG. 5 is a front view thereof;",
        "USD0000003S1__1": "FIG. 1 is a top view.",
    }
    words = {
        "a__1": ["10", "Fig.", "27", "FIG.", "28"],  # the first label, not a reference numeral
        "b__1": ["Figure", "3"],  # written as the descriptions write it
        "c__1": ["no", "label"],  # none read: FIG. 1
    }
    assert ocr_label_descriptions(words, pool) == {
        "a__1": "FIG. 27 is a front view thereof;",
        "b__1": "FIG. 3 is a front view thereof;",
        "c__1": "FIG. 1 is a front view thereof;",
    }
    # a pool with no numbered sentence falls back on the constant's
    assert ocr_label_descriptions({"d__1": ["FIG.", "4"]}, {"USD0000006S1__1": "1.1 : Front"}) == {
        "d__1": "FIG. 4 is a perspective view of the device."
    }
