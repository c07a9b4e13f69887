"""Figure references in patent text: labels, brief-description sentences, detailed-description excerpts.

Pure text (no OCR). Conventions, chosen to stay compatible with `norm` in
../shared/tools/score_alignment.py (a produced label must normalise there to what the ground truth does):

- Human label form (`normalize_label`): ``"FIG. <number><suffix>"``.
  * number: digits without leading zeros, or a Hague "reproduction" number ``1.1``;
  * a plain letter suffix is upper-cased: "Fig. 3a" -> "FIG. 3A";
  * a parenthesised suffix keeps its parentheses and case: "Fig.3 (a)" -> "FIG. 3(a)".
  * a sole unnumbered figure ("The FIGURE is ...") is labelled ``"FIGURE"``.
- Comparison key (`label_key`): number + upper-case suffix without parentheses or spaces:
  "FIG. 7(a)" and "FIG. 7A" both give "7A"; "FIG. 1.1" gives "1.1"; "FIGURE" gives "FIGURE".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

SOLE_FIGURE = "FIGURE"

# A range wider than this is taken as a typo or a non-figure number, not expanded.
_MAX_RANGE = 200

# "Figured 4 is" is a real typo (D0656302); "figures" in running text needs a number to count.
_FIGWORD = r"\bfig(?:ure[sd]?|s)?\b\.?"
_NUMBER = r"\d+(?:\.\d+)?"
_SUFFIX = r"(?:\s?\(\s*[a-z]{1,2}\s*\)|[a-z]{1,2}(?![a-z]))"
_LABEL = rf"{_NUMBER}{_SUFFIX}?"
_SUFFIX_ONLY = r"(?:\(\s*[a-z]{1,2}\s*\)|[a-z](?![a-z]))"
_RANGE_SEP = r"\s*(?:-|–|—|~|\bto\b|\bthrough\b|\bthru\b)\s*"
_LIST_SEP = r"\s*(?:,\s*(?:and\b|or\b)?|\band\b|\bor\b|&)\s*"
# One reference phrase: "FIG. 1", "FIGS. 1A and 1B", "FIGS. 3A-3D", "FIG. 7(a) to FIG. 7(c)", "FIGS. 4, 5A and 5B".
_REF = (
    rf"{_FIGWORD}\s*{_LABEL}"
    rf"(?:{_RANGE_SEP}(?:{_FIGWORD}\s*)?(?:{_LABEL}|{_SUFFIX_ONLY})"
    rf"|{_LIST_SEP}(?:{_FIGWORD}\s*)?{_LABEL})*"
)
_REF_RE = re.compile(_REF, re.IGNORECASE)
_LABEL_TOKEN_RE = re.compile(
    rf"(?P<sep>{_RANGE_SEP}|{_LIST_SEP})?(?:{_FIGWORD}\s*)?(?:(?P<label>{_LABEL})|(?P<suffix>{_SUFFIX_ONLY}))",
    re.IGNORECASE,
)
_RANGE_SEP_RE = re.compile(rf"^{_RANGE_SEP}$", re.IGNORECASE)
_LABEL_PARTS_RE = re.compile(
    r"^\s*(?P<num>\d+(?:\.\d+)?)\s*(?:\(\s*(?P<paren>[a-z]{1,2})\s*\)|(?P<plain>[a-z]{1,2}))?\s*$",
    re.IGNORECASE,
)
_RAW_LABEL_RE = re.compile(rf"^\s*(?:the\s+)?(?:{_FIGWORD})?\s*(?P<rest>.*?)\s*[.,;:]?\s*$", re.IGNORECASE)
# "The FIGURE is ...", "The sole figure shows ...": a single unnumbered figure.
_SOLE_FIGURE_START_RE = re.compile(
    r"^\s*the\s+(?:(?:sole\s+|single\s+|only\s+)?figure|(?:sole|single|only)\s+(?:view|drawing))\b(?!\s*\.?\s*\d)",
    re.IGNORECASE,
)
# In running text only the upper-case word counts ("the figures" is not a reference).
_SOLE_FIGURE_IN_TEXT_RE = re.compile(r"\bFIGURE\b(?!\s*\.?\s*\d)")
# Hague-style design descriptions: "1.1 : Perspective".
_HAGUE_RE = re.compile(r"^\s*(?P<num>\d+\.\d+)\s*:\s*\S")
# A text may name a reproduction first with or without the colon: "1.2 is a front view" names
# reproduction 1.2 as "1.2 : Front" does; a measure ("1.5 mm of ...") names none.
_HAGUE_NAMED_RE = re.compile(r"^\s*(?P<num>\d{1,2}\.\d{1,2})(?:\s*:\s*\S|\s+(?:is|are|shows?)\b)")
# A later clause in the same paragraph starts a new figure sentence only if its reference is the
# subject: "...; FIG. 3 is ..." (not "... taken along line 3-3 of FIG. 2;").
_CLAUSE_BREAK = r"(?:[;.,]\s*(?:and\s+)?|\s+and\s+)"
_SUBJECT_VERB = (
    r"\s*,?\s*(?:each\s+|respectively\s+|also\s+|both\s+|[a-z]+ly\s+)?"  # "FIG. 14C schematically shows"
    r"(?:is|are|shows?|illustrates?|depicts?|describes?|represents?|comprises?|provides?|presents?"
    r"|displays?|discloses?|sets?\s+forth|a|an)\b"
)
_LATER_CLAUSE_RE = re.compile(rf"{_CLAUSE_BREAK}(?=(?P<ref>{_REF}){_SUBJECT_VERB})", re.IGNORECASE)
# Prose naming the figure it describes: "... with reference to FIG. 1 which illustrates ...".
_PROSE_REF_RE = re.compile(
    rf"(?P<ref>{_REF})\s*,?\s*(?:which|that)\s+(?:[a-z]+ly\s+)?(?:illustrates?|shows?|depicts?|is|are)\b",
    re.IGNORECASE,
)
_LEADING_REF_RE = re.compile(rf"^\s*(?P<ref>{_REF})", re.IGNORECASE)


@dataclass
class FigureSentence:
    """One sentence of the brief description and the figures it describes (human label form)."""

    labels: list[str]
    text: str


@dataclass(frozen=True)
class _Label:
    number: str  # "3", "1.1"
    suffix: str = ""  # "A", "a", "" (as written; upper-cased unless parenthesised)
    parenthesised: bool = False

    @property
    def human(self) -> str:
        if self.parenthesised:
            return f"FIG. {self.number}({self.suffix})"
        return f"FIG. {self.number}{self.suffix.upper()}"


def _parse_parts(text: str) -> _Label | None:
    match = _LABEL_PARTS_RE.match(text)
    if not match:
        return None
    number = match["num"]
    if "." in number:
        major, minor = number.split(".", 1)
        number = f"{int(major)}.{int(minor)}"
    else:
        number = str(int(number))
    if match["paren"]:
        return _Label(number, match["paren"], parenthesised=True)
    return _Label(number, (match["plain"] or "").upper())


def normalize_label(raw: str) -> str | None:
    """The human form of a figure label ("Fig.3 (a)" -> "FIG. 3(a)"), or None if `raw` is not one.

    Accepts "FIG. 3A", "Fig. 3a", "FIGURE 3A", "FIG 5", "Figs. 2", a bare "3A" or "1.1" (as sheets
    print them), and "FIGURE" / "The FIGURE" for a sole unnumbered figure (-> "FIGURE").
    """
    if raw is None:
        return None
    text = " ".join(str(raw).split())
    if not text:
        return None
    if re.fullmatch(r"(?:the\s+)?(?:sole\s+|single\s+|only\s+)?figure\.?", text, re.IGNORECASE):
        return SOLE_FIGURE
    match = _RAW_LABEL_RE.match(text)
    if not match:
        return None
    label = _parse_parts(match["rest"])
    return label.human if label else None


def label_key(label: str) -> str:
    """The comparison key of a label: "FIG. 7(a)" and "Fig. 7A" -> "7A"; "FIGURE" -> "FIGURE".

    Raises ValueError naming the label if it is not a figure label.
    """
    human = normalize_label(label)
    if human is None:
        raise ValueError(f"not a figure label: {label!r}")
    if human == SOLE_FIGURE:
        return SOLE_FIGURE
    parsed = _parse_parts(human[len("FIG. ") :])
    assert parsed is not None  # normalize_label produced it
    return f"{parsed.number}{parsed.suffix.upper()}"


def _expand_range(start: _Label, end: _Label) -> list[_Label]:
    """Expand "3A-3D", "2A-C", "7(a) to 7(c)", "1 through 4", "1.1-1.4"; otherwise keep the endpoints."""
    if start.number == end.number and start.suffix and end.suffix:
        first, last = start.suffix.upper(), end.suffix.upper()
        if len(first) == 1 and len(last) == 1 and first <= last:
            letters = [chr(c) for c in range(ord(first), ord(last) + 1)]
            if start.parenthesised:
                lower = start.suffix.islower()
                return [_Label(start.number, c.lower() if lower else c, True) for c in letters]
            return [_Label(start.number, c) for c in letters]
    if not start.suffix and not end.suffix:
        if "." not in start.number and "." not in end.number:
            low, high = int(start.number), int(end.number)
            if 0 <= high - low <= _MAX_RANGE:
                return [_Label(str(n)) for n in range(low, high + 1)]
        elif "." in start.number and "." in end.number:
            (major_a, minor_a), (major_b, minor_b) = start.number.split("."), end.number.split(".")
            if major_a == major_b and 0 <= int(minor_b) - int(minor_a) <= _MAX_RANGE:
                return [_Label(f"{major_a}.{n}") for n in range(int(minor_a), int(minor_b) + 1)]
    return [start, end] if start != end else [start]


def _labels_in_ref(ref: str) -> list[_Label]:
    """Every label one reference phrase covers, ranges expanded, in order."""
    labels: list[_Label] = []
    for token in _LABEL_TOKEN_RE.finditer(ref):
        is_range = bool(token["sep"]) and bool(_RANGE_SEP_RE.match(token["sep"]))
        if token["label"]:
            label = _parse_parts(token["label"])
        elif labels and labels[-1].suffix:
            # "2A-C": the end of the range inherits the number of its start.
            suffix = token["suffix"].strip("() ")
            label = _Label(
                labels[-1].number,
                suffix if labels[-1].parenthesised else suffix.upper(),
                labels[-1].parenthesised,
            )
        else:
            continue
        if label is None:
            continue
        if is_range and labels:
            labels.extend(_expand_range(labels[-1], label)[1:])
        else:
            labels.append(label)
    return labels


def _dedupe(labels: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for label in labels:
        key = label_key(label)
        if key not in seen:
            seen.add(key)
            out.append(label)
    return out


def _sentences_in_paragraph(paragraph: str) -> list[FigureSentence]:
    text = " ".join(paragraph.split())
    if not text:
        return []
    if _SOLE_FIGURE_START_RE.match(text):
        return [FigureSentence([SOLE_FIGURE], text)]
    hague = _HAGUE_RE.match(text)
    if hague:
        return [FigureSentence([f"FIG. {_parse_parts(hague['num']).human[len('FIG. ') :]}"], text)]
    if not _LEADING_REF_RE.match(text):
        return []  # e.g. "The broken lines shown in FIGS. 1-7 ...": mentions figures, describes none
    # Each clause runs from its reference to the break before the next one (keeping its ";" or ".").
    breaks = [m for m in _LATER_CLAUSE_RE.finditer(text) if m.start() > 0]
    bounds = [0, *[m.end() for m in breaks]]
    ends = [*[m.start() + (1 if text[m.start()] in ";.," else 0) for m in breaks], len(text)]
    sentences = []
    for begin, end in zip(bounds, ends, strict=True):
        clause = text[begin:end].strip()
        leading = _LEADING_REF_RE.match(clause)
        if not leading:
            continue
        labels = _dedupe(label.human for label in _labels_in_ref(leading["ref"]))
        if labels:
            sentences.append(FigureSentence(labels, clause))
    return sentences


def parse_brief_description(paragraphs: list[str]) -> list[FigureSentence]:
    """One entry per sentence that describes figures, with every label it covers (ranges expanded).

    A sentence describes the figures it starts with: in "FIG. 4 is a top plan view of FIG. 1" the
    sentence covers FIG. 4 only. Paragraphs that start with no figure reference (the broken-lines
    statement, "1. Display screen for automobile") are not figure sentences. A paragraph holding
    several sentences ("FIG. 1 is ...; FIG. 2 is ...") gives one entry each.
    """
    sentences: list[FigureSentence] = []
    for paragraph in paragraphs:
        sentences.extend(_sentences_in_paragraph(paragraph))
    if not sentences:
        # Fallback for prose like "... with reference to FIG. 1 which illustrates ...": when no
        # sentence starts with a figure, a paragraph naming a figure "which illustrates" describes it.
        for paragraph in paragraphs:
            text = " ".join(paragraph.split())
            refs = [m["ref"] for m in _PROSE_REF_RE.finditer(text)]
            labels = _dedupe(label.human for ref in refs for label in _labels_in_ref(ref))
            if labels:
                sentences.append(FigureSentence(labels, text))
    return sentences


def expected_labels(sentences: Iterable[FigureSentence]) -> list[str]:
    """All labels of the figure sentences, in document order, without duplicates (by `label_key`)."""
    return _dedupe(label for sentence in sentences for label in sentence.labels)


def figures_referenced(paragraph: str) -> set[str]:
    """The label keys of every figure a paragraph refers to anywhere ("FIGS. 2A-C" -> 2A, 2B, 2C)."""
    text = " ".join(paragraph.split())
    keys = {
        label_key(label.human) for match in _REF_RE.finditer(text) for label in _labels_in_ref(match.group(0))
    }
    if _SOLE_FIGURE_IN_TEXT_RE.search(text):
        keys.add(SOLE_FIGURE)
    return keys


def first_label_key(text: str) -> str | None:
    """The label key of the first figure a text names ("FIGS. 2A-C are ..." -> "2A"; a bare
    "The FIGURE" -> "FIGURE"; a Hague "1.2 : Front" or "1.2 is a front view" -> "1.2"), or None if
    it names none: what a generated description says it describes."""
    text = " ".join(str(text).split())
    found = []
    match = _REF_RE.search(text)
    if match:
        labels = _labels_in_ref(match.group(0))
        if labels:
            found.append((match.start(), label_key(labels[0].human)))
    sole = _SOLE_FIGURE_IN_TEXT_RE.search(text)
    if sole:
        found.append((sole.start(), SOLE_FIGURE))
    hague = _HAGUE_NAMED_RE.match(text)  # "1.2 : Front": a Hague design names its reproduction so
    if hague:
        found.append((hague.start(), label_key(hague["num"])))
    return min(found)[1] if found else None


def clip_tokens(text: str, max_tokens: int) -> str:
    """The first `max_tokens` whitespace tokens of `text` (as PatentDesc clips detailed descriptions)."""
    tokens = text.split()
    return " ".join(tokens[:max_tokens])


def detailed_description_for(labels: list[str], paragraphs: list[str], max_tokens: int = 500) -> str:
    """The detailed-description paragraphs that refer to any of `labels`, joined, clipped at `max_tokens`.

    For a sole unnumbered FIGURE the whole description is about it: if no paragraph names it,
    every paragraph is used.
    """
    keys = {label_key(label) for label in labels}
    if not keys:
        return ""
    chosen = [p for p in paragraphs if figures_referenced(p) & keys]
    if not chosen and keys == {SOLE_FIGURE}:
        chosen = [p for p in paragraphs if p.strip()]
    return clip_tokens(" ".join(" ".join(p.split()) for p in chosen), max_tokens)


def shift_figure_numbers(text: str, offset: int) -> str:
    """`text` with the number of every FIG reference raised by `offset` ("FIGS. 3A-3D and 4" ->
    "FIGS. 13A-13D and 14" for 10); other numbers (reference numerals, "line 4-4") are kept. Raises
    ValueError for a Hague-style "1.4" in a reference, whose renumbering is not defined."""

    def shifted(match: re.Match[str]) -> str:
        ref = match.group(0)
        if re.search(r"\d\.\d", ref):
            raise ValueError(f"{ref!r}: a dotted FIG number cannot be shifted")
        return re.sub(r"\d+", lambda number: str(int(number.group(0)) + offset), ref)

    return _REF_RE.sub(shifted, text)
