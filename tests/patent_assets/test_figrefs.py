from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree

from patent_assets.figrefs import (
    FigureSentence,
    detailed_description_for,
    expected_labels,
    figures_referenced,
    first_label_key,
    label_key,
    normalize_label,
    parse_brief_description,
)
from tests.conftest import ALIGNMENT_SCORER

SCORER = ALIGNMENT_SCORER


@pytest.fixture(scope="module")
def scorer_norm() -> Callable[[str], str]:
    """The scorer's own `norm`, taken from its source (the script runs on import, so exec only the def)."""
    tree = ast.parse(SCORER.read_text())
    func = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "norm")
    namespace: dict = {"re": re}
    exec(compile(ast.Module(body=[func], type_ignores=[]), str(SCORER), "exec"), namespace)
    return namespace["norm"]


@pytest.mark.parametrize(
    ("raw", "human", "key"),
    [
        ("FIG. 3A", "FIG. 3A", "3A"),
        ("Fig. 3a", "FIG. 3A", "3A"),
        ("FIGURE 3A", "FIG. 3A", "3A"),
        ("FIG 5", "FIG. 5", "5"),
        ("Fig.3 (a)", "FIG. 3(a)", "3A"),
        ("FIG. 7(a)", "FIG. 7(a)", "7A"),
        ("FIG. 07", "FIG. 7", "7"),
        ("FIGS. 12", "FIG. 12", "12"),
        ("3A", "FIG. 3A", "3A"),
        ("1.1", "FIG. 1.1", "1.1"),
        ("FIGURE", "FIGURE", "FIGURE"),
        ("The FIGURE", "FIGURE", "FIGURE"),
    ],
)
def test_normalize_label_and_key(raw: str, human: str, key: str, scorer_norm: Callable[[str], str]) -> None:
    assert normalize_label(raw) == human
    assert label_key(raw) == key
    assert scorer_norm(human) == scorer_norm(raw)


@pytest.mark.parametrize("raw", ["", "   ", "foo", "FIG.", "FIGS. 1-3", "Table 2"])
def test_not_a_label(raw: str) -> None:
    assert normalize_label(raw) is None
    with pytest.raises(ValueError, match="not a figure label"):
        label_key(raw)


def test_parenthesised_and_plain_suffix_compare_equal() -> None:
    assert label_key("FIG. 7(a)") == label_key("Fig. 7A") == label_key("fig 7a")
    assert label_key("FIG. 1.1") != label_key("FIG. 11")


@pytest.mark.parametrize(
    ("paragraph", "labels"),
    [
        ("FIG. 1 is a perspective view;", ["FIG. 1"]),
        ("FIGS. 1A and 1B are side views.", ["FIG. 1A", "FIG. 1B"]),
        ("FIGS. 3A-3D show steps.", ["FIG. 3A", "FIG. 3B", "FIG. 3C", "FIG. 3D"]),
        ("FIGS. 3A–3C show sections.", ["FIG. 3A", "FIG. 3B", "FIG. 3C"]),
        ("FIGS. 2A-C are graphs.", ["FIG. 2A", "FIG. 2B", "FIG. 2C"]),
        ("FIG. 7(a) to FIG. 7(c) are views.", ["FIG. 7(a)", "FIG. 7(b)", "FIG. 7(c)"]),
        ("FIGS. 7(a)-(c) are views.", ["FIG. 7(a)", "FIG. 7(b)", "FIG. 7(c)"]),
        ("FIGS. 4, 5A and 5B are views.", ["FIG. 4", "FIG. 5A", "FIG. 5B"]),
        ("FIGS. 1 through 4 are views.", ["FIG. 1", "FIG. 2", "FIG. 3", "FIG. 4"]),
        ("FIGS. 1-3 show graphs.", ["FIG. 1", "FIG. 2", "FIG. 3"]),
        (
            "FIGS. 18A through 18E is a succession",
            ["FIG. 18A", "FIG. 18B", "FIG. 18C", "FIG. 18D", "FIG. 18E"],
        ),
        ("FIGS. 5A and 5B, 5C, and 5D show", ["FIG. 5A", "FIG. 5B", "FIG. 5C", "FIG. 5D"]),
        ("FIGS. 2a and 2b comprise a diagram", ["FIG. 2A", "FIG. 2B"]),
        ("FIG. 2 is a side view thereof;", ["FIG. 2"]),
        ("FIG. 4 is a top plan view of FIG. 1; and,", ["FIG. 4"]),  # FIG. 1 is the object, not the subject
        ("FIG. 4 a perspective view thereof.", ["FIG. 4"]),
        ("Fig.3 (a) is a plan view.", ["FIG. 3(a)"]),
        ("FIGURE 2 is a plan view.", ["FIG. 2"]),
        ("Figured 4 is a rear view thereof;", ["FIG. 4"]),  # a real typo (D0656302)
        ("1.1 : Perspective", ["FIG. 1.1"]),
        ("The FIGURE is a front view of a display screen.", ["FIGURE"]),
        ("The sole view is a plan view of a cooking stove.", ["FIGURE"]),
        ("The broken lines shown in FIGS. 1-7 represent portions that form no part of the design.", []),
        ("1. Display screen for automobile", []),
        ("In the drawings:", []),
    ],
)
def test_brief_description_phrasings(paragraph: str, labels: list[str]) -> None:
    sentences = parse_brief_description([paragraph])
    assert [label for sentence in sentences for label in sentence.labels] == labels
    if labels:
        assert sentences[0].text == paragraph


def test_several_sentences_in_one_paragraph() -> None:
    paragraph = (
        "FIG. 9C shows a signal, FIG. 9D is a graph taken along the A-A line in FIG. 9B, "
        "and FIG. 9E schematically shows a cross section; FIG. 10 is a plan view."
    )
    sentences = parse_brief_description([paragraph])
    assert [s.labels for s in sentences] == [["FIG. 9C"], ["FIG. 9D"], ["FIG. 9E"], ["FIG. 10"]]
    assert sentences[1].text == "FIG. 9D is a graph taken along the A-A line in FIG. 9B,"
    assert sentences[3].text == "FIG. 10 is a plan view."


def test_prose_fallback_when_no_sentence_starts_with_a_figure() -> None:
    paragraphs = ["An embodiment will now be described with reference to FIG. 1 which illustrates a pump."]
    assert parse_brief_description(paragraphs) == [FigureSentence(["FIG. 1"], paragraphs[0])]


def test_expected_labels_in_order_without_duplicates() -> None:
    sentences = [
        FigureSentence(["FIG. 2"], "a"),
        FigureSentence(["FIG. 1A", "FIG. 1B"], "b"),
        FigureSentence(["FIG. 1(a)"], "c"),  # same key as FIG. 1A
        FigureSentence(["FIG. 2"], "d"),
    ]
    assert expected_labels(sentences) == ["FIG. 2", "FIG. 1A", "FIG. 1B"]


def test_design_grants_labels_match_the_sheets(realdata: Path, scorer_norm: Callable[[str], str]) -> None:
    """For each of the 16 design grants, the labels parsed from the brief description are exactly the
    labels printed on its sheets (read by eye), compared through the scorer's own `norm`."""
    truth = json.loads(
        (realdata / "design_patents_with_drawings_2021" / "sheet_figure_labels.json").read_text()
    )
    assert len(truth["patents"]) == 16
    for patent in truth["patents"]:
        labels = expected_labels(parse_brief_description(patent["description_of_drawings"]))
        on_sheets = {scorer_norm(label) for sheet in patent["sheets"] for label in sheet["figures_on_sheet"]}
        assert {scorer_norm(label) for label in labels} == on_sheets, patent["publication"]
        assert len(labels) == patent["number_of_figures"], patent["publication"]
        # Each sheet's verbatim brief-description paragraphs describe exactly the figures on it.
        for sheet in patent["sheets"]:
            if sheet.get("brief_descriptions"):
                sheet_labels = expected_labels(parse_brief_description(sheet["brief_descriptions"]))
                assert {scorer_norm(x) for x in sheet_labels} == {
                    scorer_norm(x) for x in sheet["figures_on_sheet"]
                }


def test_applications_labels_match_the_sheets(realdata: Path, scorer_norm: Callable[[str], str]) -> None:
    """The 2025 applications: "FIG. 1: is a ..." (a colon after the label) and an opening paragraph
    that names "the following figures" without a number still give exactly the printed labels."""
    truth = json.loads(
        (realdata / "applications_with_drawings_2025" / "sheet_figure_labels.json").read_text()
    )
    for patent in truth["patents"]:
        labels = expected_labels(parse_brief_description(patent["description_of_drawings"]))
        printed = [scorer_norm(label) for sheet in patent["sheets"] for label in sheet["figures_on_sheet"]]
        assert [scorer_norm(label) for label in labels] == printed, patent["publication"]


def _grant_documents(path: Path) -> list[etree._Element]:
    """The `us-patent-grant` documents of a single or concatenated file (DOCTYPEs dropped, no DTD fetch)."""
    parser = etree.XMLParser(recover=True, resolve_entities=False, no_network=True, load_dtd=False)
    roots = []
    for chunk in re.split(rb"(?=<\?xml )", path.read_bytes()):
        body = re.sub(rb"<!DOCTYPE[^>]*>", b"", chunk)
        if b"<us-patent-grant" in body:
            root = etree.fromstring(body, parser)
            if root is not None and root.tag == "us-patent-grant":
                roots.append(root)
    return roots


def test_real_grants_match_number_of_figures(realdata: Path) -> None:
    """Across every brief description in the real XML files, the parsed labels match the grant's
    `<number-of-figures>` except for two documented cases, and every `<figref>` that opens a
    figure paragraph is covered by that paragraph's labels."""
    files = sorted((realdata / "uspto_xml").rglob("*.xml")) + sorted(realdata.rglob("*.XML"))
    counted, mismatched = 0, {}
    for path in files:
        for root in _grant_documents(path):
            number = root.findtext(".//publication-reference//doc-number")
            for drawings in root.iter("description-of-drawings"):
                paragraphs = [" ".join("".join(p.itertext()).split()) for p in drawings.iter("p")]
                labels = expected_labels(parse_brief_description(paragraphs))
                declared = int(root.findtext(".//figures/number-of-figures") or -1)
                counted += 1
                if declared != len(labels):
                    mismatched[number] = (declared, len(labels))
                for p in drawings.iter("p"):
                    text = " ".join("".join(p.itertext()).split())
                    first = p.find("figref")
                    if first is not None and text.startswith("".join(first.itertext())):
                        covered = {label_key(x) for s in parse_brief_description([text]) for x in s.labels}
                        # the figref markup sometimes stops before the letter ("FIGS. 3" for "FIGS. 3a")
                        opened = figures_referenced("".join(first.itertext()))
                        assert opened <= covered or {k.rstrip("ABCDEFGH") for k in covered} >= opened, text
    assert counted > 200
    # 08420530 counts inline "(a) being ..." sub-views; D0746099's XML declares 33 for 32 described figures.
    assert mismatched == {"08420530": (17, 11), "D0746099": (33, 32)}


def test_figures_referenced() -> None:
    text = "As shown in FIGS. 2A-C and FIG. 4, the pump (see also Fig. 7(a)) has figures 10 through 12."
    assert figures_referenced(text) == {"2A", "2B", "2C", "4", "7A", "10", "11", "12"}
    assert figures_referenced("The FIGURE shows a lamp.") == {"FIGURE"}
    assert figures_referenced("the figures show a lamp") == set()


def test_detailed_description_for_selects_and_clips() -> None:
    paragraphs = [
        "Referring to FIG. 1, a pump 10 has a housing 12.",
        "The housing 12 is made of steel.",
        "FIGS. 2A-2C show the impeller 14 in three positions.",
        "As seen in FIG. 3, " + "word " * 600,
    ]
    assert detailed_description_for(["FIG. 1"], paragraphs) == paragraphs[0]
    assert detailed_description_for(["FIG. 2B"], paragraphs) == paragraphs[2]
    assert detailed_description_for(["FIG. 1", "FIG. 2(a)"], paragraphs) == f"{paragraphs[0]} {paragraphs[2]}"
    clipped = detailed_description_for(["FIG. 3"], paragraphs)
    assert len(clipped.split()) == 500 and clipped.startswith("As seen in FIG. 3, word")
    assert len(detailed_description_for(["FIG. 3"], paragraphs, max_tokens=20).split()) == 20
    assert detailed_description_for(["FIG. 9"], paragraphs) == ""
    # A sole unnumbered FIGURE: the whole description is about it.
    assert detailed_description_for(["FIGURE"], paragraphs[:2]) == " ".join(paragraphs[:2])


def test_first_label_key_is_the_first_figure_a_text_names() -> None:
    assert first_label_key("FIG. 1 is a perspective view of the device.") == "1"
    assert first_label_key("FIGS. 2A-C are views; FIG. 1 is a plan view") == "2A"
    assert first_label_key("Fig.3(a) shows the hinge") == "3A"
    assert first_label_key("The FIGURE is a front view of a lamp, as in FIG. 2") == "FIGURE"
    assert first_label_key("FIGURE 4 is a front view") == "4"
    # a Hague design's reproduction number, as its brief description names it
    assert first_label_key("1.2 : Front") == label_key("FIG. 1.2") == "1.2"
    assert first_label_key("1.2 : Front; FIG. 3 is ...") == "1.2"
    assert first_label_key("1.2 is a top view of the game piece") == "1.2"  # as a model writes it
    assert first_label_key("1.5 mm of the rim is a view of FIG. 2") == "2"  # a measure, not a number
    assert first_label_key("a perspective view of a bracket") is None
    assert first_label_key("") is None
