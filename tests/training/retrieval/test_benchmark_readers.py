from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from training.retrieval.benchmark_readers import (
    BenchmarkFormatError,
    read_deeppatent,
    read_split_list,
    read_trec_qrels,
    read_upair,
)
from training.retrieval.metrics import evaluate_rankings

QUERY_LIST = """\
I20181127/USD0834581-20181127/USD0834581-20181127-D00001.png 1
I20180220/USD0810412-20180220/USD0810412-20180220-D00005.png 2

I20190101/USD0837058-20190101/USD0837058-20190101-D00005.png 3
"""
DB_LIST = """\
I20181127/USD0834581-20181127/USD0834581-20181127-D00002.png 1
I20181127/USD0834581-20181127/USD0834581-20181127-D00003.png 1
I20180220/USD0810412-20180220/USD0810412-20180220-D00001.png 2
I20190129/USD0839076-20190129/USD0839076-20190129-D00000.png 4
"""


def _deeppatent(tmp_path: Path) -> Path:
    (tmp_path / "val_query_patent.txt").write_text(QUERY_LIST)
    (tmp_path / "val_db_patent.txt").write_text(DB_LIST)
    return tmp_path


def test_deeppatent_split_and_qrels(tmp_path: Path) -> None:
    split = read_deeppatent(_deeppatent(tmp_path), "val", image_root=tmp_path / "images")
    assert [item.label for item in split.queries] == [1, 2, 3]
    assert len(split.database) == 4
    q1, q2, q3 = (item.path for item in split.queries)
    assert split.qrels[q1] == {
        "I20181127/USD0834581-20181127/USD0834581-20181127-D00002.png": 1,
        "I20181127/USD0834581-20181127/USD0834581-20181127-D00003.png": 1,
    }
    assert split.qrels[q2] == {"I20180220/USD0810412-20180220/USD0810412-20180220-D00001.png": 1}
    assert split.qrels[q3] == {}  # label 3 has no database drawing
    assert split.image_path(split.queries[0]) == tmp_path / "images" / q1

    # Ranking the database by label match is the perfect run; the label-less query is skipped.
    run = {
        query.path: {item.path: float(item.label == query.label) for item in split.database}
        for query in split.queries
    }
    scores = evaluate_rankings(run, split.qrels)
    assert scores["mAP@all"] == pytest.approx(1.0)
    assert scores["skipped_queries"] == 1


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        ("a.png 1\nb.png one\n", 2, "label 'one' is not an integer"),
        ("a.png 1\nlonely.png\n", 2, "expected 'relative_png_path label'"),
        ("a.png 1\nb.png 2\na.png 1\n", 3, "'a.png' is listed again \\(first on line 1\\)"),
        ("/abs/a.png 1\n", 1, "image path .* is absolute"),
    ],
)
def test_split_list_errors_name_file_and_line(tmp_path: Path, content: str, line: int, reason: str) -> None:
    path = tmp_path / "val_query_patent.txt"
    path.write_text(content)
    with pytest.raises(BenchmarkFormatError, match=f"val_query_patent.txt:{line}: {reason}") as error:
        read_split_list(path)
    assert error.value.line == line and error.value.path == path


def test_empty_split_list_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("\n\n")
    with pytest.raises(BenchmarkFormatError, match=r"empty.txt: the split list is empty"):
        read_split_list(path)


METADATA = {
    "q1": {
        "query": {"description": "FIG. 1 is a side view of a pump", "component_labels": "pump, housing"},
        "candidates": [
            {"hashcode": "c1", "description": "a pump housing", "component_labels": "housing"},
            {"hashcode": "c2", "description": "a valve", "component_labels": ["valve", "seat"]},
            {"hashcode": "c3", "description": "a gear", "component_labels": "gear"},
        ],
    },
    "q2": {
        "query": {"description": "FIG. 2 is a plan view", "component_labels": "frame"},
        "candidates": [
            {"hashcode": "c4", "description": "a frame", "component_labels": "frame"},
            {"hashcode": "c5", "description": "a wheel", "component_labels": "wheel"},
        ],
    },
}
QRELS = {
    "visual": "q1 0 c1 1\nq1 0 c2 0\nq1 0 c3 0\nq2 0 c4 1\nq2 0 c5 0\n",
    "semantic": "q1 0 c1 1\nq1 0 c3 1\nq2 0 c5 1\n",
    "part_whole": "q1 0 c2 1\nq2 0 c4 0\n",
}


def _upair(tmp_path: Path, qrels: dict[str, str] | None = None) -> Path:
    (tmp_path / "metadata.json").write_text(json.dumps(METADATA))
    for dimension, text in (qrels or QRELS).items():
        (tmp_path / f"qrels_{dimension}.txt").write_text(text)
    return tmp_path


def test_upair_reader(tmp_path: Path) -> None:
    bench = read_upair(_upair(tmp_path))
    assert set(bench.queries) == {"q1", "q2"}
    q1 = bench.queries["q1"]
    assert q1.query.hashcode == "q1" and q1.query.description.startswith("FIG. 1")
    assert q1.candidate_ids == ["c1", "c2", "c3"]
    assert q1.candidates[1].component_labels == "valve, seat"
    assert bench.qrels["visual"]["q1"] == {"c1": 1, "c2": 0, "c3": 0}
    assert bench.qrels["semantic"]["q2"] == {"c5": 1}
    assert set(bench.qrels) == {"visual", "semantic", "part_whole"}


def test_upair_ranks_only_candidates_and_evaluates_per_dimension(tmp_path: Path) -> None:
    bench = read_upair(_upair(tmp_path))
    # c4 (q2's candidate) and an outsider score highest for q1: restricting must drop them.
    run = {
        "q1": {"outsider": 9.0, "c4": 8.0, "c1": 0.9, "c3": 0.5, "c2": 0.1},
        "q2": {"c4": 0.9, "c5": 0.2},
    }
    restricted = bench.restrict_to_candidates(run)
    assert restricted["q1"] == {"c1": 0.9, "c3": 0.5, "c2": 0.1}
    visual = evaluate_rankings(restricted, bench.qrels["visual"])
    assert visual["MAP"] == pytest.approx(1.0) and visual["Recall@1"] == pytest.approx(1.0)
    semantic = evaluate_rankings(restricted, bench.qrels["semantic"])
    # q1: relevant c1, c3 at ranks 1, 2 -> AP 1; q2: c5 at rank 2 -> AP 0.5
    assert semantic["MAP"] == pytest.approx(0.75)
    assert semantic["MRR"] == pytest.approx(0.75)
    part_whole = evaluate_rankings(restricted, bench.qrels["part_whole"])
    assert part_whole["queries"] == 1 and part_whole["skipped_queries"] == 1
    assert part_whole["MRR"] == pytest.approx(1 / 3)  # c2 ranked third
    with pytest.raises(ValueError, match="'zz' is not a UPAIR query"):
        bench.restrict_to_candidates({"zz": {"c1": 1.0}})


def test_upair_missing_images(tmp_path: Path) -> None:
    root = _upair(tmp_path)
    (root / "images").mkdir()
    for hashcode in ("q1", "c1", "c2", "c3", "q2", "c4"):
        Image.new("L", (4, 4), 255).save(root / "images" / f"{hashcode}.png")
    bench = read_upair(root)
    assert bench.image_path("c1") == root / "images" / "c1.png"
    assert bench.missing_images() == ["c5"]


def test_trec_qrels_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "qrels_visual.txt"
    path.write_text("q1 0 c1 1\nq1 0 c2\n")
    with pytest.raises(BenchmarkFormatError, match=r"qrels_visual.txt:2: expected 4 columns"):
        read_trec_qrels(path)
    path.write_text("q1 0 c1 yes\n")
    with pytest.raises(BenchmarkFormatError, match=r"qrels_visual.txt:1: relevance 'yes' is not an integer"):
        read_trec_qrels(path)
    path.write_text("q1 0 c1 1\nq1 0 c1 0\n")
    with pytest.raises(BenchmarkFormatError, match=r"qrels_visual.txt:2: .*different relevance"):
        read_trec_qrels(path)


def test_upair_qrels_must_match_the_metadata(tmp_path: Path) -> None:
    root = _upair(tmp_path, {**QRELS, "semantic": "q1 0 c1 1\nq2 0 c1 1\n"})
    with pytest.raises(
        BenchmarkFormatError, match=r"qrels_semantic.txt:2: document c1 is not a candidate of query q2"
    ):
        read_upair(root)
    root = _upair(tmp_path, {**QRELS, "semantic": "q1 0 c1 1\nq7 0 c1 1\n"})
    with pytest.raises(BenchmarkFormatError, match=r"qrels_semantic.txt:2: query q7 is not in metadata.json"):
        read_upair(root)
    (root / "qrels_part_whole.txt").unlink()
    (root / "qrels_semantic.txt").write_text(QRELS["semantic"])
    with pytest.raises(
        BenchmarkFormatError, match=r"qrels_part_whole.txt: qrels of dimension 'part_whole' not found"
    ):
        read_upair(root)


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ('{"q1": {"query": {}, ', "metadata.json:1: not valid JSON"),
        ('["q1"]', "expected an object of query hash"),
        ('{"q1": {"query": {}}}', "query q1: expected keys 'query' and 'candidates'"),
        ('{"q1": {"query": {}, "candidates": []}}', "'candidates' must be a non-empty list"),
        (
            '{"q1": {"query": {}, "candidates": [{"description": "x"}]}}',
            "query q1 candidate 0: no 'hashcode'",
        ),
        ('{"q1": {"query": {"description": 3}, "candidates": [{"hashcode": "c"}]}}', "must be text"),
    ],
)
def test_upair_metadata_errors(tmp_path: Path, metadata: str, reason: str) -> None:
    _upair(tmp_path)
    (tmp_path / "metadata.json").write_text(metadata)
    with pytest.raises(BenchmarkFormatError, match=reason):
        read_upair(tmp_path)
