"""Which drawing sheet prints which FIG label: OCR evidence under the order constraint.

`<figref>` never names a sheet, so the brief description's "FIG. n is ..." sentences are tied to
sheet images by the labels printed on the sheets. OCR alone misses labels (stroke fonts, labels
touching the drawing, rotated labels) and pure order fails wherever a sheet holds several FIGs.
Both together: FIG numbers run in order through the sheets, so each sheet takes a contiguous run
of the ordered labels, and a dynamic programme picks the runs that agree best with what OCR read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from patent_assets.documents import GrantDocument
from patent_assets.figrefs import (
    SOLE_FIGURE,
    expected_labels,
    label_key,
    normalize_label,
    parse_brief_description,
)
from patent_assets.ocr import ocr_cached
from patent_assets.records import OcrWords

Evidence = Literal["ocr", "order"]


@dataclass(frozen=True)
class LabelHit:
    label: str  # human form, "FIG. 3A"
    key: str  # label_key, "3A"
    confidence: float  # 0-1: tesseract's confidence, lowered when OCR confusions had to be undone
    box: tuple[int, int, int, int]  # 0-1000 of the image the words were read from
    rotation: int = 0  # degrees counter-clockwise the image was turned to read it


@dataclass
class SheetScan:
    """What OCR read on one sheet: numbered labels, and FIG words whose number could not be read."""

    hits: list[LabelHit] = field(default_factory=list)
    unnumbered: int = 0

    @property
    def label_count(self) -> int:
        return len({hit.key for hit in self.hits}) + self.unnumbered


@dataclass
class Alignment:
    by_sheet: dict[int, list[str]] = field(default_factory=dict)  # sheet num -> labels, in order
    sentences_by_sheet: dict[int, list[str]] = field(default_factory=dict)
    evidence: dict[str, Evidence] = field(default_factory=dict)  # label -> what placed it
    unaligned: list[tuple[str, str]] = field(default_factory=list)  # (label, reason)
    rate_ocr: float = 0.0  # share of the placed labels that OCR saw on their sheet
    detected: dict[int, list[str]] = field(default_factory=dict)  # sheet num -> labels OCR read there


# "FIG", "FIG.", "Fig,", "FIGS", "FIGURE", and tesseract's usual misreads of them ("F1G", "FlG", "IG,").
_FIG_WORD_RE = re.compile(r"^(?:F[I1L]GURE|F[I1L|!T]G|[I1|]G)S?[.,:;·]*(?P<rest>.*)$", re.IGNORECASE)
_LABEL_RE = re.compile(r"^(?P<num>\d{1,3}(?:\.\d{1,2})?)(?P<suffix>[A-Z]|\([A-Za-z]\))?$")
# Characters tesseract puts for digits in a label's number.
_DIGIT_CONFUSIONS = str.maketrans(
    {
        "S": "5",
        "s": "5",
        "O": "0",
        "o": "0",
        "I": "1",
        "l": "1",
        "|": "1",
        "!": "1",
        "L": "1",
        "/": "1",
        "Z": "2",
        "z": "2",
        "B": "8",
        "g": "9",
    }
)
_HAGUE_RE = re.compile(r"^(?P<major>[1-9])(?P<dot>[.,:]?)(?P<minor>\d{1,2})$")
_CONFUSED_PENALTY = 0.6  # a label read only after undoing a confusion counts for less

ROTATIONS = (270, 90)  # labels printed across the sheet, read when the upright pass finds none
# A sheet whose upright pass gives more words than this is a screen shot or a text-heavy drawing:
# its turned passes cost ~10 s each and find no label there, so the order constraint decides it.
BUSY_SHEET_WORDS = 250


def _strip(word: str) -> str:
    return (
        word.strip("\"'`‘’“”()[]{}<>*_~—–-=+»«:;")
        if not re.search(r"\([A-Za-z]\)$", word)
        else word.strip("\"'`")
    )


def _parse_number(text: str) -> tuple[str, bool] | None:
    """A label's number part ("3", "3A", "3(a)", "1.1"), and whether a confusion had to be undone."""
    text = text.strip().rstrip(".,;:")
    if not text:
        return None
    if _LABEL_RE.match(text):
        return text, False
    # Undo confusions in the number, but keep a trailing letter as a suffix ("S" alone is a 5).
    head, tail = (
        (text[:-1], text[-1])
        if len(text) > 1 and text[-1].isalpha() and text[-1] not in "SOIlLBZ"
        else (text, "")
    )
    fixed = head.translate(_DIGIT_CONFUSIONS) + tail.upper()
    if fixed != text and _LABEL_RE.match(fixed):
        return fixed, True
    return None


def _hague_number(word: str) -> tuple[str, bool] | None:
    """A Hague reproduction number printed bare ("1.2"); "15" and "L5" are read as 1.5, with a penalty."""
    fixed = word.strip(".,;:").translate(_DIGIT_CONFUSIONS)
    match = _HAGUE_RE.match(fixed)
    if not match:
        return None
    exact = fixed == word.strip(".,;:") and bool(match["dot"])
    return f"{match['major']}.{int(match['minor'])}", not exact


def _near_right(boxes: list[list[int]], i: int, j: int) -> bool:
    """Whether word j sits just after word i on the same line (or just below it, for stacked labels)."""
    x0, y0, x1, y1 = boxes[i]
    a0, b0, a1, b1 = boxes[j]
    height = max(y1 - y0, 1)
    width = max(x1 - x0, 1)
    same_line = min(y1, b1) - max(y0, b0) > -0.2 * height and -0.5 * width <= a0 - x1 <= 4 * height + width
    below = 0 <= b0 - y1 <= 1.5 * height and min(x1, a1) - max(x0, a0) > -width
    return same_line or below


def scan_words(
    words: OcrWords, *, bare_numbers: bool = False, sole_figure: bool = False, rotation: int = 0
) -> SheetScan:
    """Find FIG labels among OCR words.

    `bare_numbers` also accepts Hague numbers printed alone ("1.2"); `sole_figure` reads a "FIGURE"
    with no number as the label of a sole figure (otherwise it is a label whose number was not read).
    """
    scan = SheetScan()
    used: set[int] = set()
    tokens = [_strip(w) for w in words.words]
    confidences = words.confidences or [50.0] * len(tokens)

    def add(label_text: str, confidence: float, box: list[int]) -> bool:
        label = normalize_label(label_text)
        if label is None:
            return False
        scan.hits.append(LabelHit(label, label_key(label), round(confidence, 3), tuple(box), rotation))
        return True

    for i, token in enumerate(tokens):
        if i in used:
            continue
        match = _FIG_WORD_RE.match(token)
        if match:
            conf = confidences[i] / 100.0
            rest = match["rest"]
            number = _parse_number(rest) if rest else None
            if number is None and not rest:
                for j in range(i + 1, min(i + 4, len(tokens))):
                    if j not in used and tokens[j] and _near_right(words.boxes, i, j):
                        number = _parse_number(tokens[j])
                        if number is not None:
                            used.add(j)
                            conf = min(conf, confidences[j] / 100.0)
                            break
            if number is not None:
                text, confused = number
                add(f"FIG. {text}", conf * (_CONFUSED_PENALTY if confused else 1.0), words.boxes[i])
            elif sole_figure and token.upper().rstrip(".,") == "FIGURE":
                add(SOLE_FIGURE, conf, words.boxes[i])
            else:
                scan.unnumbered += 1
            continue
        if bare_numbers:
            hague = _hague_number(token)
            if hague is not None:
                text, confused = hague
                add(
                    f"FIG. {text}",
                    confidences[i] / 100.0 * (_CONFUSED_PENALTY if confused else 1.0),
                    words.boxes[i],
                )
    return scan


def scan_sheet(
    png: Path,
    ocr: OcrWords | None = None,
    *,
    bare_numbers: bool = False,
    sole_figure: bool = False,
    rotations: tuple[int, ...] = ROTATIONS,
    cache_dir: Path | None = None,
) -> SheetScan:
    """Labels on one sheet image: the upright OCR first, then turned passes only if it found none.

    The turned passes double or triple the OCR cost of a sheet, so they run only where needed.
    """
    upright = ocr if ocr is not None else ocr_cached(png, cache_dir)
    scan = scan_words(upright, bare_numbers=bare_numbers, sole_figure=sole_figure)
    if scan.hits or len(upright.words) > BUSY_SHEET_WORDS or not rotations:
        return scan
    # Most turned labels are on landscape sheets stored as portrait and read bottom-to-top, so the
    # quarter turn clockwise (270 counter-clockwise) goes first and the other only if it finds nothing.
    for rotation in rotations:
        turned = scan_words(
            ocr_cached(png, cache_dir, rotation=rotation),
            bare_numbers=bare_numbers,
            sole_figure=sole_figure,
            rotation=rotation,
        )
        scan.unnumbered = max(scan.unnumbered, turned.unnumbered)
        if turned.hits:
            scan.hits.extend(turned.hits)
            break
    return scan


def detect_labels(
    png: Path,
    ocr: OcrWords | None = None,
    *,
    bare_numbers: bool = False,
    sole_figure: bool = False,
    cache_dir: Path | None = None,
) -> list[LabelHit]:
    """The FIG labels printed on a sheet image (upright, then turned 90/270 degrees if none were found)."""
    return scan_sheet(png, ocr, bare_numbers=bare_numbers, sole_figure=sole_figure, cache_dir=cache_dir).hits


# Scores of the assignment: a label placed where OCR read it gains 1 + confidence; a sheet left
# without a label costs (drawing sheets almost always hold one); a run whose length differs from the
# number of FIG words OCR saw on the sheet costs a little; a slight preference for even runs breaks
# ties when OCR is silent.
_HIT_GAIN = 1.0
_EMPTY_SHEET_COST = 1.0
_COUNT_COST = 0.4
_BALANCE_COST = 0.01


def align_figures(
    document: GrantDocument,
    sheet_pngs: dict[int, Path],
    sheet_ocr: dict[int, OcrWords] | None = None,
    *,
    cache_dir: Path | None = None,
    scans: dict[int, SheetScan] | None = None,
) -> Alignment:
    """Place each label of the brief description on the drawing sheet that prints it.

    `sheet_pngs` maps sheet nums to upright images; `sheet_ocr` gives their upright OCR where it is
    already known (else it is computed, cached under `cache_dir`); `scans` gives finished scans.
    The front page (sheet 0) only repeats a figure and takes no label.
    """
    sentences = parse_brief_description(document.brief_paragraphs)
    labels = expected_labels(sentences)
    keys = [label_key(label) for label in labels]
    sheet_nums = sorted(
        {s.num for s in document.sheets if s.num > 0 and s.img_content in ("drawing", "")}
        or {num for num in sheet_pngs if num > 0}
    )
    result = Alignment()
    if not labels:
        return result
    if not sheet_nums:
        result.unaligned = [(label, "the grant has no drawing sheets") for label in labels]
        return result

    key_set = set(keys)
    bare_numbers = any("." in key for key in keys)  # Hague reproductions print "1.2" with no "FIG."
    scans = dict(scans or {})
    for num in sheet_nums:
        if num in scans or num not in sheet_pngs:
            continue
        scans[num] = scan_sheet(
            sheet_pngs[num],
            (sheet_ocr or {}).get(num),
            bare_numbers=bare_numbers,
            sole_figure=keys == [SOLE_FIGURE],
            cache_dir=cache_dir,
        )
    result.detected = {num: [hit.label for hit in scans[num].hits] for num in sheet_nums if num in scans}

    evidence = [[0.0] * len(keys) for _ in sheet_nums]
    counts = [0] * len(sheet_nums)
    for s, num in enumerate(sheet_nums):
        scan = scans.get(num)
        if scan is None:
            continue
        counts[s] = scan.label_count
        best: dict[str, float] = {}
        for hit in scan.hits:
            best[hit.key] = max(best.get(hit.key, 0.0), hit.confidence)
            # "FIG. 4A" read where the text has only FIG. 4: a stray mark taken for a suffix.
            base = hit.key.rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
            if base != hit.key and hit.key not in key_set and base in key_set:
                best[base] = max(best.get(base, 0.0), hit.confidence * _CONFUSED_PENALTY)
        for index, key in enumerate(keys):
            if key in best:
                evidence[s][index] = _HIT_GAIN + best[key]

    runs = _best_runs(evidence, counts, len(keys))
    for s, (start, end) in enumerate(runs):
        num = sheet_nums[s]
        placed = labels[start:end]
        if placed:
            result.by_sheet[num] = placed
        for index in range(start, end):
            result.evidence[labels[index]] = "ocr" if evidence[s][index] > 0 else "order"
    for sentence in sentences:
        sentence_keys = {label_key(label) for label in sentence.labels}
        for num, placed in result.by_sheet.items():
            if sentence_keys & {label_key(label) for label in placed}:
                result.sentences_by_sheet.setdefault(num, []).append(sentence.text)
    placed_count = len(result.evidence)
    result.rate_ocr = (
        sum(v == "ocr" for v in result.evidence.values()) / placed_count if placed_count else 0.0
    )
    return result


def _best_runs(evidence: list[list[float]], counts: list[int], n_labels: int) -> list[tuple[int, int]]:
    """Split labels 0..n-1 into one contiguous (possibly empty) run per sheet, in order, best score."""
    n_sheets = len(evidence)
    mean = n_labels / n_sheets
    prefix = [[0.0] * (n_labels + 1) for _ in range(n_sheets)]
    for s in range(n_sheets):
        for index in range(n_labels):
            prefix[s][index + 1] = prefix[s][index] + evidence[s][index]
    neg = float("-inf")
    score = [[neg] * (n_labels + 1) for _ in range(n_sheets + 1)]
    back = [[0] * (n_labels + 1) for _ in range(n_sheets + 1)]
    score[0][0] = 0.0
    for s in range(1, n_sheets + 1):
        for end in range(n_labels + 1):
            for start in range(end + 1):
                if score[s - 1][start] == neg:
                    continue
                size = end - start
                run = prefix[s - 1][end] - prefix[s - 1][start]
                run -= _EMPTY_SHEET_COST if size == 0 else 0.0
                run -= _COUNT_COST * abs(size - counts[s - 1]) if counts[s - 1] else 0.0
                run -= _BALANCE_COST * (size - mean) ** 2
                total = score[s - 1][start] + run
                if total > score[s][end]:
                    score[s][end], back[s][end] = total, start
    runs: list[tuple[int, int]] = []
    end = n_labels
    for s in range(n_sheets, 0, -1):
        start = back[s][end]
        runs.append((start, end))
        end = start
    return runs[::-1]
