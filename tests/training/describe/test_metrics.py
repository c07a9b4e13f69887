"""Description metrics: the libraries' scores wired up right, bad input caught, files written.

METEOR starts a Java process that loads its paraphrase tables (~10 s); the module keeps one
alive, so the tests share that cost.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from training.describe import metrics
from training.describe.metrics import (
    METRIC_NAMES,
    MissingProgram,
    evaluate_split,
    printed_label_rate,
    score_descriptions,
    sentence_scores,
)

REFERENCES = {
    "US1__1": "FIG. 1 is a perspective view of a folding chair with a padded seat.",
    "US1__2": "FIG. 2 is a side elevation view of the hinge assembly in the open position.",
    "US2__1": "FIG. 3 is a block diagram of a wireless receiver circuit according to an embodiment.",
}


def test_identical_predictions_score_the_maximum() -> None:
    scores = score_descriptions(REFERENCES, REFERENCES)
    assert set(scores) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        if name == "cider":
            # pycocoevalcap's native scale: 10 for a perfect match against one reference.
            assert scores[name] == pytest.approx(10.0)
        else:
            assert scores[name] == pytest.approx(1.0), name
            assert scores[name] <= 1.0, name  # not sacrebleu's 100.00000000000004 / 100
    assert sentence_scores(REFERENCES["US1__1"], REFERENCES["US1__1"])["bleu"] == 1.0


def test_unrelated_text_scores_near_zero() -> None:
    unrelated = {
        "US1__1": "Quarterly revenue grew strongly despite inflation.",
        "US1__2": "Bake bread slowly; knead dough twice beforehand.",
        "US2__1": "Elephants migrate seasonally across savannah grasslands.",
    }
    scores = score_descriptions(unrelated, REFERENCES)
    for name in METRIC_NAMES:
        assert 0.0 <= scores[name] < 0.1, (name, scores[name])


def test_small_example_matches_hand_computed_values() -> None:
    # "the cat sat on the mat" vs "the cat is on the mat": unigram precision 5/6, bigram
    # 3/5, trigram 1/4, 4-gram 1/6, equal lengths (no brevity penalty). LCS is 5 of 6 words.
    predictions = {"a": "the cat sat on the mat", "b": "a red valve with two ports"}
    references = {"a": "the cat is on the mat", "b": "a red valve with two ports"}
    scores = score_descriptions(predictions, references)
    # Corpus BLEU pools the counts: figure b adds 6/6, 5/5, 4/4, 3/3 matches.
    assert scores["bleu1"] == pytest.approx((5 + 6) / 12)
    assert scores["bleu2"] == pytest.approx(((11 / 12) * (8 / 10)) ** 0.5)
    assert scores["bleu4"] == pytest.approx(((11 / 12) * (8 / 10) * (5 / 8) * (3 / 6)) ** 0.25)
    assert scores["rouge1"] == pytest.approx((5 / 6 + 1) / 2)
    assert scores["rouge2"] == pytest.approx((3 / 5 + 1) / 2)
    assert scores["rougeL"] == pytest.approx((5 / 6 + 1) / 2)
    # CIDEr by hand: with two figures every n-gram here has IDF log 2, so each order's score
    # is the clipped cosine of the count vectors; figure a: 1-grams 7/8, 2-grams 3/5,
    # 3-grams 1/4, 4-grams 0 -> mean x 10 = 4.3125; figure b: 10.
    assert scores["cider"] == pytest.approx((4.3125 + 10.0) / 2)
    # METEOR as the METEOR 1.5 jar computes it (pooled statistics; 0.4373 for a alone).
    assert scores["meteor"] == pytest.approx(0.53992, abs=1e-4)

    single = sentence_scores("the cat sat on the mat", "the cat is on the mat")
    assert single["bleu"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25)
    assert single["rougeL"] == pytest.approx(5 / 6)


def test_line_breaks_inside_a_text_do_not_shift_the_others() -> None:
    # The Java tools read one text per line: a CR or U+2028 inside one text must not move
    # the later texts onto the wrong figure.
    broken = {
        key: text.replace(" of ", " of\r\n", 1).replace(" a ", "\u2028a ", 1)
        for key, text in REFERENCES.items()
    }
    assert score_descriptions(broken, REFERENCES)["meteor"] == pytest.approx(1.0)


def test_empty_prediction_scores_zero_and_is_kept() -> None:
    predictions = dict(REFERENCES, US2__1="  ")
    scores = score_descriptions(predictions, REFERENCES)
    assert 0.5 < scores["rougeL"] < 0.7  # two of three figures perfect, one zero
    assert sentence_scores("", REFERENCES["US2__1"]) == {"bleu": 0.0, "rougeL": 0.0}


def test_bad_input_gets_a_clear_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        score_descriptions({}, {})
    with pytest.raises(ValueError, match=r"1 without a prediction \['US2__1'\]"):
        score_descriptions({k: v for k, v in REFERENCES.items() if k != "US2__1"}, REFERENCES)
    with pytest.raises(ValueError, match=r"1 without a reference \['US9__9'\]"):
        score_descriptions(dict(REFERENCES, US9__9="x"), REFERENCES)
    with pytest.raises(ValueError, match=r"references are empty \['US1__2'\]"):
        score_descriptions(REFERENCES, dict(REFERENCES, US1__2=""))


def test_missing_java_names_the_program(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A PATH without java (but with the tools Python itself needs) is a machine without Java.
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("java") is None
    with pytest.raises(MissingProgram, match=r"METEOR.*needs the program 'java'.*default-jre-headless"):
        score_descriptions(REFERENCES, REFERENCES)
    with pytest.raises(MissingProgram, match="METEOR needs the program 'java'"):
        metrics._meteor({"a": ["x"]}, {"a": ["x"]})


def test_evaluate_split_writes_per_kind_files(tmp_path: Path) -> None:
    brief = {
        "US1__1": "FIG. 1 is a perspective view of a chair.",
        "US1__2": "FIG. 2 is a side view of a chair.",
    }
    detailed = {"US1__1": "The chair 10 has a seat 12 and a back 14 joined by a hinge 16."}
    predictions = {"brief": dict(brief, US1__2="FIG. 2 is a top view of a chair."), "detailed": detailed}
    results = evaluate_split(predictions, {"brief": brief, "detailed": detailed}, tmp_path)

    assert results["brief"]["figures"] == 2 and results["detailed"]["figures"] == 1
    assert results["detailed"]["rougeL"] == pytest.approx(1.0)
    assert 0.5 < results["brief"]["bleu4"] < 1.0
    assert "tok:13a" in results["bleu_signature"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == results

    assert json.loads((tmp_path / "predictions_brief.json").read_text()) == predictions["brief"]
    rows = [json.loads(line) for line in (tmp_path / "per_figure_brief.jsonl").read_text().splitlines()]
    assert [row["image_id"] for row in rows] == ["US1__1", "US1__2"]
    assert rows[0]["bleu"] == pytest.approx(1.0) and rows[0]["rougeL"] == pytest.approx(1.0)
    assert (
        rows[1]["prediction"] == "FIG. 2 is a top view of a chair."
        and rows[1]["reference"] == brief["US1__2"]
    )
    assert 0.0 < rows[1]["bleu"] < 1.0
    assert (tmp_path / "per_figure_detailed.jsonl").is_file()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files

    with pytest.raises(ValueError, match="detailed"):
        evaluate_split({"brief": brief}, {"brief": brief, "detailed": detailed}, tmp_path)
    with pytest.raises(ValueError, match=r"brief descriptions: .*without a prediction"):
        evaluate_split({"brief": {}}, {"brief": brief}, tmp_path)


def test_printed_label_rate_counts_the_first_label_named_against_the_sheet() -> None:
    predictions = {
        "a": "FIG. 2 is a side view; FIG. 1 is a top view.",  # first named: 2, printed
        "b": "FIGS. 3A-3C are views of the hinge.",  # 3A, printed as "Fig. 3a"
        "c": "FIG. 7 is a front view.",  # 7: not on this sheet
        "d": "a perspective view of a shoe",  # names no figure: wrong
        "e": "FIG. 1 is a view.",  # its sheet prints no label: not counted
    }
    printed = {"a": ["FIG. 1", "FIG. 2"], "b": ["Fig. 3a"], "c": ["FIG. 5"], "d": ["FIG. 4"], "e": []}
    assert printed_label_rate(predictions, printed) == {"printed_label_rate": 0.5, "labelled_figures": 4}
    assert printed_label_rate({"e": "FIG. 1"}, printed) == {"printed_label_rate": None, "labelled_figures": 0}
    with pytest.raises(ValueError, match="'z'"):
        printed_label_rate({"z": "FIG. 1"}, printed)
