"""Which drawing sheet prints which FIG label: OCR evidence under the order constraint.

`<figref>` never names a sheet, so the brief description's "FIG. n is ..." sentences are tied to
sheet images by the labels printed on the sheets. OCR alone misses labels (stroke fonts, labels
touching the drawing, rotated labels) and pure order fails wherever a sheet holds several FIGs.
Both together: FIG numbers run in order through the sheets, so each sheet takes a contiguous run
of the ordered labels, and a dynamic programme picks the runs that agree best with what OCR read.

Where the two disagree, or the order alone cannot pin a label that OCR did not read, the label
is left out rather than guessed: a wrong label on a sheet is worse than a missing one. Before
giving up, the sheets in doubt get a second chance (every quarter turn, a finer text layer), and
every FIG word whose number was not read is read again from the pixels around it.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from patent_assets.documents import GrantDocument
from patent_assets.figrefs import (
    SOLE_FIGURE,
    expected_labels,
    label_key,
    normalize_label,
    parse_brief_description,
)
from patent_assets.ocr import LABEL_NUMBER_CONFIG, ocr_cached, ocr_region
from patent_assets.records import OcrWords

Evidence = Literal["ocr", "order"]
T = TypeVar("T")


@dataclass(frozen=True)
class LabelHit:
    label: str  # human form, "FIG. 3A"
    key: str  # label_key, "3A"
    confidence: float  # 0-1: tesseract's confidence, lowered when OCR confusions had to be undone
    box: tuple[int, int, int, int]  # 0-1000 of the image the words were read from
    rotation: int = 0  # degrees counter-clockwise the image was turned to read it
    bare: bool = False  # a Hague number read alone, with no FIG word beside it


@dataclass
class SheetScan:
    """What OCR read on one sheet: numbered labels, and FIG words whose number could not be read."""

    hits: list[LabelHit] = field(default_factory=list)
    unnumbered: int = 0
    unread: list[tuple[int, int, int, int]] = field(default_factory=list)  # their boxes, 0-1000


@dataclass
class Alignment:
    by_sheet: dict[int, list[str]] = field(default_factory=dict)  # sheet num -> labels, in order
    sentences_by_sheet: dict[int, list[str]] = field(default_factory=dict)
    evidence: dict[str, Evidence] = field(default_factory=dict)  # label -> what placed it
    unaligned: list[tuple[str, str]] = field(default_factory=list)  # (label, reason)
    rate_ocr: float = 0.0  # share of the placed labels that OCR saw on their sheet
    detected: dict[int, list[str]] = field(default_factory=dict)  # sheet num -> labels OCR read there
    rescanned: list[int] = field(default_factory=list)  # sheets that got the second-chance OCR passes
    # Printed part label -> the label the text names: "FIG. 2(a)" -> "FIG. 2" where the text says
    # "FIG. 2 is ... with (a) being a section and (b) a plan view" and the sheets print 2(a), 2(b).
    parts: dict[str, str] = field(default_factory=dict)


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
# The second chance reads upside down too: a sheet whose orientation the XML gets wrong.
DEEP_ROTATIONS = (270, 90, 180)
MAX_RESCANNED = 10  # sheets of one patent that get the second chance (~2.5 s each)
# A sheet whose upright pass gives more words than this is a screen shot or a text-heavy drawing:
# its turned passes cost ~10 s each and find no label there, so the order constraint decides it.
BUSY_SHEET_WORDS = 250
# Label regions read again per pass, at most (~0.1 s each): a text-heavy sheet can hold many FIG-like
# words, a drawing sheet a few labels.
MAX_REREADS = 8


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


def label_words(words: Sequence[str]) -> list[tuple[int, str]]:
    """The OCR words that print a FIG label, as (position, text), label by label in reading order:
    the label's FIG word, written "FIG." whatever tesseract read ("Fig.", "Figure", "F1G,"), then its
    number, read as the alignment reads it (tesseract's "|" is a 1); a "Fig.3" read as one word
    gives both, from its one position. The number is the word after the FIG word, or the one after
    a lone punctuation mark ("FIG", "-", "1"). A FIG word with no number read stays "FIG." or
    "FIGURE" (a sole figure's "The FIGURE is ...").

    What PatentLMM's OCR tokens start with. The FIG word comes first, in the form the descriptions
    write it (USPTO brief descriptions say "FIG. 3" whether the sheet prints "Fig. 3" or
    "Figure 3"): the pointer copies "FIG." and then, with the selective read, the number that
    follows it on the sheet. With the number first, and the sheet's own spelling, the real-drawing
    benchmark's model often began at the copied number ("2 is a top view") or copied "Figure"."""
    labels: list[tuple[int, str]] = []
    used: set[int] = set()
    for i, word in enumerate(words):
        stripped = _strip(word)
        match = _FIG_WORD_RE.match(stripped)
        if match is None or i in used:
            continue
        if match["rest"]:
            number = _parse_number(match["rest"])
            if number is None:
                continue  # "FIGHT", "IGNITION": not a label
            labels += [(i, "FIG."), (i, number[0])]
            used.add(i)
            continue
        after = i + 1
        if after < len(words) and not _strip(words[after]) and after + 1 < len(words):
            after += 1  # skip the punctuation
        number = _parse_number(_strip(words[after])) if after < len(words) else None
        bare = "FIGURE" if re.match(r"F[I1L]GURE", stripped, re.IGNORECASE) else "FIG."
        labels.append((i, "FIG." if number is not None else bare))
        used.add(i)
        if number is not None:
            labels.append((after, number[0]))
            used.add(after)
    return labels


def renumber_label_words(words: Sequence[str], offset: int) -> list[str] | None:
    """The OCR words with the number of every FIG label (`label_words`) raised by `offset`, as
    `patent_assets.figrefs.shift_figure_numbers` raises them in a description; a "Fig.3" read as
    one word becomes "Fig.13". None when the sheet prints no numbered label, or a number that
    cannot be shifted (a Hague "1.4")."""
    renumbered = list(words)
    shifted = False
    for position, text in label_words(words):
        if _FIG_WORD_RE.match(_strip(text)):
            continue  # the FIG word of a label
        match = re.fullmatch(r"(\d+)([A-Za-z]{0,2}|\([A-Za-z]{1,2}\))", text)
        if match is None:
            return None
        number = f"{int(match[1]) + offset}{match[2]}"
        word = _strip(words[position])
        fig_word = _FIG_WORD_RE.match(word)
        renumbered[position] = (
            word[: -len(fig_word["rest"])] + number if fig_word and fig_word["rest"] else number
        )
        shifted = True
    return renumbered if shifted else None


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

    def add(label_text: str, confidence: float, box: list[int], bare: bool = False) -> bool:
        label = normalize_label(label_text)
        if label is None:
            return False
        scan.hits.append(LabelHit(label, label_key(label), round(confidence, 3), tuple(box), rotation, bare))
        return True

    def next_word(i: int, parse: Callable[[str], T | None]) -> tuple[int, T] | None:
        """The first of the next few words that sits just after word i and parses."""
        for j in range(i + 1, min(i + 4, len(tokens))):
            if j not in used and tokens[j] and _near_right(words.boxes, i, j):
                parsed = parse(tokens[j])
                if parsed is not None:
                    return j, parsed
        return None

    for i, token in enumerate(tokens):
        if i in used:
            continue
        match = _FIG_WORD_RE.match(token)
        if match:
            conf = confidences[i] / 100.0
            rest = match["rest"]
            number = _parse_number(rest) if rest else None
            last = i
            if number is None and not rest and (found := next_word(i, _parse_number)):
                last, number = found
                used.add(last)
                conf = min(conf, confidences[last] / 100.0)
            if number is not None:
                text, confused = number
                # "Fig. 3 (a)": a parenthesised letter read as a word of its own is the suffix.
                if _LABEL_RE.match(text)["suffix"] is None and (paren := next_word(last, _paren_suffix)):
                    used.add(paren[0])
                    text += paren[1]
                add(f"FIG. {text}", conf * (_CONFUSED_PENALTY if confused else 1.0), words.boxes[i])
            elif sole_figure and token.upper().rstrip(".,") == "FIGURE":
                add(SOLE_FIGURE, conf, words.boxes[i])
            else:
                scan.unnumbered += 1
                scan.unread.append(tuple(words.boxes[i]))
            continue
        if bare_numbers:
            hague = _hague_number(token)
            if hague is not None:
                text, confused = hague
                add(
                    f"FIG. {text}",
                    confidences[i] / 100.0 * (_CONFUSED_PENALTY if confused else 1.0),
                    words.boxes[i],
                    bare=True,
                )
    return scan


def _paren_suffix(token: str) -> str | None:
    match = re.fullmatch(r"\(([A-Za-z])\)", token)
    return f"({match[1]})" if match else None


@dataclass(frozen=True)
class ScanOptions:
    """How to read one patent's sheets: which label forms to accept, and which labels its text names."""

    bare_numbers: bool = False  # Hague reproductions print "1.2" with no "FIG."
    sole_figure: bool = False  # a bare "FIGURE" is the sole figure's label
    expected: frozenset[str] = frozenset()  # label keys of the brief description (empty: unknown)


def _read_pass(png: Path, words: OcrWords, rotation: int, options: ScanOptions) -> SheetScan:
    """Labels in one OCR pass, with the doubtful ones read again from the pixels around them.

    A FIG word whose number was not read, and a label the text does not name ("FIG. 14" on a
    patent of 7 figures, "FIG. 3S"), get a second look at the label's region (`ocr.ocr_region`).
    """
    scan = scan_words(
        words, bare_numbers=options.bare_numbers, sole_figure=options.sole_figure, rotation=rotation
    )
    doubtful = [box for box in scan.unread]
    if options.expected:
        named = options.expected
        doubtful += [hit.box for hit in scan.hits if hit.key not in named]
    for box in doubtful[:MAX_REREADS]:
        again = scan_words(
            ocr_region(png, box, rotation=rotation),
            bare_numbers=options.bare_numbers,
            sole_figure=options.sole_figure,
            rotation=rotation,
        )
        if not again.hits or (options.expected and not _named(again.hits[0].key, options.expected)):
            continue
        hit = replace(again.hits[0], box=box)
        if box in scan.unread:
            scan.unread.remove(box)
            scan.unnumbered -= 1
        scan.hits = [h for h in scan.hits if h.box != box] + [hit]
    return scan


def _base_key(key: str) -> str:
    return key.rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _named(key: str, expected: Collection[str]) -> bool:
    """Whether the text names this label, or its number with a stray mark read as a suffix."""
    return key in expected or _base_key(key) in expected


def scan_sheet(
    png: Path,
    ocr: OcrWords | None = None,
    *,
    bare_numbers: bool = False,
    sole_figure: bool = False,
    rotations: tuple[int, ...] = ROTATIONS,
    cache_dir: Path | None = None,
    expected: Collection[str] = (),
    deep: bool = False,
) -> SheetScan:
    """Labels on one sheet image: the upright OCR first, then turned passes only if it found none.

    The turned passes double or triple the OCR cost of a sheet, so they run only where needed.
    `deep` is the second chance for a sheet whose labels the alignment could not settle: every
    quarter turn and a finer text layer are read too, whatever the upright pass found, and merged
    (~2.5 s a sheet; not on busy sheets, where it would cost ~40 s).
    """
    options = ScanOptions(bare_numbers, sole_figure, frozenset(expected))
    upright = ocr if ocr is not None else ocr_cached(png, cache_dir)
    scan = _read_pass(png, upright, 0, options)
    if deep and len(upright.words) <= BUSY_SHEET_WORDS:
        passes = [(rotation, False) for rotation in DEEP_ROTATIONS] + [(0, True)]
        for rotation, fine in passes:
            words = ocr_cached(png, cache_dir, rotation=rotation, fine=fine)
            _merge(scan, _read_pass(png, words, rotation, options))
        return scan
    # A reading the text does not name ("FIG. 12" on a patent of 9 figures) is no reason to stop.
    if _names_a_label(scan, options) or len(upright.words) > BUSY_SHEET_WORDS or not rotations:
        return scan
    # Most turned labels are on landscape sheets stored as portrait and read bottom-to-top, so the
    # quarter turn clockwise (270 counter-clockwise) goes first and the other only if it finds nothing.
    for rotation in rotations:
        turned = _read_pass(png, ocr_cached(png, cache_dir, rotation=rotation), rotation, options)
        _merge(scan, turned)
        if _names_a_label(turned, options):
            break
    return scan


def with_label_reads(png: Path, words: OcrWords, *, cache_dir: Path | None = None) -> OcrWords:
    """A sheet's OCR words with its FIG labels as the label scan reads them.

    The text layer loses some labels' numbers (a "FIG" whose "6" touches a stroke), misreads others
    ("FIG. 1 |" for FIG. 11) and reads turned labels as noise; the pixels around each label give
    them back. Those readings are what the description model must copy, so they go into its OCR
    words: a number the text layer misread is replaced (`reread_label_numbers`), a FIG word read
    again is replaced by "FIG.6" at its box, a turned label is added at its box in the upright
    sheet. Uses no text (no expected labels), so that training, evaluation and `patentflow
    describe` read a sheet alike. On the 314 real design sheets of `../shared/realdata` the printed
    label number is in the words of 271 sheets from the text layer, 279 with the scan's readings,
    284 with the numbers read again (Hague numbers apart).
    """
    completed, reread = reread_label_numbers(png, words)
    scan = scan_sheet(png, words, cache_dir=cache_dir)
    known = {text for _, text in label_words(completed.words)}
    for hit in scan.hits:
        number = hit.label.removeprefix("FIG. ")
        if hit.bare or hit.label == SOLE_FIGURE or number in known:
            continue
        box = _upright_box(hit.box, hit.rotation)
        if hit.rotation % 360 == 0 and box in reread:
            continue  # the text layer's reading of a label read again above
        known.add(number)
        word = f"FIG.{number}"
        at = completed.boxes.index(box) if hit.rotation % 360 == 0 and box in completed.boxes else None
        if at is not None:
            completed.words[at] = word
            continue
        completed.words.append(word)
        completed.boxes.append(box)
        if completed.confidences:
            completed.confidences.append(round(100 * hit.confidence, 1))
    return completed


_PLAIN_NUMBER_RE = re.compile(r"\d{1,3}")


def reread_label_numbers(png: Path, words: OcrWords) -> tuple[OcrWords, list[list[int]]]:
    """The words with each numbered FIG label's number read again from the pixels around its FIG
    word (`ocr.LABEL_NUMBER_CONFIG`: digits and the FIG word's letters only), and the boxes of the
    FIG words whose number changed. A plain number ("11") replaces a different plain number the text layer
    gave ("1", the "|" after it left out); a label with a letter ("3A") or a Hague number is kept,
    as the whitelist cannot read it. On the real sheets: 6 labels right that were wrong, none wrong
    that was right. ~0.1 s a label."""
    copy = replace(
        words,
        words=list(words.words),
        boxes=[list(b) for b in words.boxes],
        confidences=list(words.confidences),
    )
    labels = label_words(words.words)
    reread: list[list[int]] = []
    for (fig_at, fig), (number_at, number) in itertools.pairwise(labels):
        if fig != "FIG." or not _PLAIN_NUMBER_RE.fullmatch(number):  # (FIG word, its number)
            continue
        box = copy.boxes[fig_at]
        again = scan_words(ocr_region(png, tuple(box), config=LABEL_NUMBER_CONFIG)).hits
        if not again or not _PLAIN_NUMBER_RE.fullmatch(again[0].key) or again[0].key == number:
            continue
        reread.append(box)
        word = _strip(copy.words[number_at])
        fig_word = _FIG_WORD_RE.match(word) if number_at == fig_at else None
        copy.words[number_at] = word[: -len(fig_word["rest"])] + again[0].key if fig_word else again[0].key
    return copy, reread


def _upright_box(box: Sequence[int], rotation: int) -> list[int]:
    """A 0-1000 box read on the sheet turned `rotation` degrees counter-clockwise, on the upright sheet."""
    x0, y0, x1, y1 = box
    turn = rotation % 360
    if turn == 90:  # a turned point (x, y) was upright (1000 - y, x)
        return [1000 - y1, x0, 1000 - y0, x1]
    if turn == 180:
        return [1000 - x1, 1000 - y1, 1000 - x0, 1000 - y0]
    if turn == 270:  # (x, y) was (y, 1000 - x)
        return [y0, 1000 - x1, y1, 1000 - x0]
    return list(box)


def _names_a_label(scan: SheetScan, options: ScanOptions) -> bool:
    """Whether a pass read a label the text names (any label, when the text is not known)."""
    return any(not options.expected or _named(hit.key, options.expected) for hit in scan.hits)


def _merge(scan: SheetScan, other: SheetScan) -> None:
    """Add another pass's labels to a sheet's scan; FIG words without a number count once per pass.

    A printed label is read once: where a later pass reads the same spot again, the earlier reading
    stands (on the real sheets the finer pass misread three labels the first pass had right).
    """
    scan.hits.extend(hit for hit in other.hits if not any(_same_spot(hit, seen) for seen in scan.hits))
    if other.unnumbered > scan.unnumbered:
        scan.unnumbered, scan.unread = other.unnumbered, list(other.unread)


def _same_spot(a: LabelHit, b: LabelHit) -> bool:
    """Whether two hits are one printed label: read at the same turn, their boxes overlapping."""
    if a.rotation % 360 != b.rotation % 360:
        return False
    width = min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])
    height = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
    return width > 0 and height > 0


# Scores of the assignment: a label placed where OCR read it gains 1 + confidence; a sheet left
# without a label costs (drawing sheets almost always hold one); a run whose length differs from the
# number of FIG words OCR saw on the sheet costs a little; a slight preference for even runs breaks
# ties when OCR is silent.
_HIT_GAIN = 1.0
_EMPTY_SHEET_COST = 1.0
_COUNT_COST = 0.4
_BALANCE_COST = 0.01
# An order-only placement is kept when the best split that moves the label elsewhere is this much
# worse: more than the run-length (count) and balance terms can add, less than an empty sheet costs.
_ORDER_MARGIN = 0.5


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
    The front page (sheet 0) only repeats a figure and takes no label. A label that OCR did not
    read on its sheet and that the order alone cannot pin to one sheet is left out (`unaligned`)
    rather than guessed.
    """
    sentences = parse_brief_description(document.brief_paragraphs)
    labels = expected_labels(sentences)
    sheet_nums = _drawing_sheets(document, sheet_pngs)
    result = Alignment()
    if not labels:
        return result
    if not sheet_nums:
        result.unaligned = [(label, "the grant has no drawing sheets") for label in labels]
        return result

    read = _sheet_reader(labels, cache_dir)
    scans = dict(scans or {})
    for num in sheet_nums:
        if num not in scans and num in sheet_pngs:
            scans[num] = read(sheet_pngs[num], (sheet_ocr or {}).get(num))
    result, doubtful = _align_once(labels, [scans.get(num) for num in sheet_nums], sheet_nums)
    # Sheets where a label could not be settled get every other OCR pass, then the split is redone.
    # At most MAX_RESCANNED a patent: where OCR fails on every sheet, more passes rarely help.
    deepened = [sheet_nums[s] for s in sorted(doubtful) if sheet_nums[s] in sheet_pngs][:MAX_RESCANNED]
    if deepened:
        for num in deepened:
            scans[num] = read(sheet_pngs[num], (sheet_ocr or {}).get(num), deep=True)
        result, _ = _align_once(labels, [scans.get(num) for num in sheet_nums], sheet_nums)
        result.rescanned = deepened
    result.detected = {num: [hit.label for hit in scans[num].hits] for num in sheet_nums if num in scans}
    for sentence in sentences:
        sentence_keys = {label_key(label) for label in sentence.labels}
        for num, placed in result.by_sheet.items():
            placed_keys = {label_key(result.parts.get(label, label)) for label in placed}
            if sentence_keys & placed_keys:
                result.sentences_by_sheet.setdefault(num, []).append(sentence.text)
    placed_count = len(result.evidence)
    result.rate_ocr = (
        sum(v == "ocr" for v in result.evidence.values()) / placed_count if placed_count else 0.0
    )
    return result


def scan_sheets(
    document: GrantDocument,
    sheet_pngs: dict[int, Path],
    sheet_ocr: dict[int, OcrWords] | None = None,
    *,
    cache_dir: Path | None = None,
) -> dict[int, SheetScan]:
    """The labels OCR reads on each drawing sheet (first passes), as `align_figures` reads them."""
    read = _sheet_reader(expected_labels(parse_brief_description(document.brief_paragraphs)), cache_dir)
    return {
        num: read(sheet_pngs[num], (sheet_ocr or {}).get(num))
        for num in _drawing_sheets(document, sheet_pngs)
        if num in sheet_pngs
    }


def _drawing_sheets(document: GrantDocument, sheet_pngs: dict[int, Path]) -> list[int]:
    """The sheet nums that can hold labels: drawings, not the front page (sheet 0)."""
    return sorted(
        {s.num for s in document.sheets if s.num > 0 and s.img_content in ("drawing", "")}
        or {num for num in sheet_pngs if num > 0}
    )


def _sheet_reader(labels: list[str], cache_dir: Path | None) -> Callable[..., SheetScan]:
    """`scan_sheet` with the options the patent's labels call for."""
    keys = [label_key(label) for label in labels]
    return functools.partial(
        scan_sheet,
        bare_numbers=any("." in key for key in keys),  # Hague reproductions print "1.2" bare
        sole_figure=keys == [SOLE_FIGURE],
        cache_dir=cache_dir,
        expected=keys,
    )


def _align_once(
    labels: list[str], scans: list[SheetScan | None], sheet_nums: list[int]
) -> tuple[Alignment, set[int]]:
    """One placement of the labels (with the parts OCR read in place of their parent)."""
    result = Alignment()
    labels, result.parts = _with_printed_parts(labels, scans)
    doubtful = _place(result, labels, scans, sheet_nums)
    return result, doubtful


def _with_printed_parts(labels: list[str], scans: list[SheetScan | None]) -> tuple[list[str], dict[str, str]]:
    """The labels, each unsuffixed one that the sheets print only as lettered parts replaced by them.

    "FIG. 2" becomes "FIG. 2(a)", "FIG. 2(b)" when OCR read at least two parts of it (one could be
    a stray mark) and never "FIG. 2" itself; the letters between the first and the last read count.
    """
    keys = {label_key(label) for label in labels}
    read = {hit.key: hit.label for scan in scans if scan is not None for hit in scan.hits}
    out: list[str] = []
    parts: dict[str, str] = {}
    for label in labels:
        key = label_key(label)
        letters = sorted(k[len(key) :] for k in read if k not in keys and _base_key(k) == key)
        letters = [letter for letter in letters if len(letter) == 1]
        lettered = any(_base_key(k) == key != k for k in keys)  # the text names its parts itself
        if key == SOLE_FIGURE or not key[-1].isdigit() or key in read or lettered or len(letters) < 2:
            out.append(label)
            continue
        parenthesised = "(" in read[key + letters[0]]
        for code in range(ord(letters[0]), ord(letters[-1]) + 1):
            letter = chr(code)
            part = f"{label}({letter.lower()})" if parenthesised else f"{label}{letter}"
            out.append(part)
            parts[part] = label
    return out, parts


def _evidence(scan: SheetScan | None, keys: list[str]) -> list[float]:
    """What OCR on one sheet says for each expected label: 0, or 1 + its confidence."""
    if scan is None:
        return [0.0] * len(keys)
    key_set = set(keys)
    best: dict[str, float] = {}
    for hit in scan.hits:
        best[hit.key] = max(best.get(hit.key, 0.0), hit.confidence)
        # "FIG. 4A" read where the text has only FIG. 4: a stray mark taken for a suffix.
        base = _base_key(hit.key)
        if base != hit.key and hit.key not in key_set and base in key_set:
            best[base] = max(best.get(base, 0.0), hit.confidence * _CONFUSED_PENALTY)
    return [_HIT_GAIN + best[key] if key in best else 0.0 for key in keys]


def _place(
    result: Alignment, labels: list[str], scans: list[SheetScan | None], sheet_nums: list[int]
) -> set[int]:
    """Fill `by_sheet`, `evidence` and `unaligned` from the best order-constrained split.

    A label is kept only when every split that puts it on another sheet scores at least
    `_ORDER_MARGIN` worse. Read by OCR on its sheet, it nearly always is; not read, it is when the
    order pins it (the sheets around it are full), not when only the run-length and balance terms
    prefer it there; read weakly where the order puts another sheet, it is left out too: OCR and
    the order disagree. Returns the indices of the sheets that a label left out could be on.
    """
    keys = [label_key(label) for label in labels]
    evidence = [_evidence(scan, keys) for scan in scans]
    counts = [_labels_seen(scan, set(keys)) for scan in scans]
    runs, on_sheet = _solve_runs(evidence, counts, len(keys))
    best = float(on_sheet.max(axis=0)[0])
    doubtful: set[int] = set()
    for s, (start, end) in enumerate(runs):
        for index in range(start, end):
            label = labels[index]
            rivals = [
                t for t in range(len(sheet_nums)) if t != s and on_sheet[t, index] > best - _ORDER_MARGIN
            ]
            if rivals:
                result.unaligned.append((label, _doubt(sheet_nums, s, rivals, read=evidence[s][index] > 0)))
                doubtful.update([s, *rivals])
                continue
            result.evidence[label] = "ocr" if evidence[s][index] > 0 else "order"
            result.by_sheet.setdefault(sheet_nums[s], []).append(label)
    return doubtful


def _labels_seen(scan: SheetScan | None, keys: set[str]) -> int:
    """How many labels OCR saw on a sheet: FIG words with a number the text names, or none read.

    Bare Hague numbers and numbers the text does not name are left out: on a drawing they are
    mostly misread marks, and counting them would pull labels onto the sheet.
    """
    if scan is None:
        return 0
    named = {hit.key for hit in scan.hits if not hit.bare and _named(hit.key, keys)}
    return len(named) + scan.unnumbered


def _doubt(sheet_nums: list[int], s: int, rivals: list[int], *, read: bool) -> str:
    """Why a label was left out: the sheets the order allows, and what OCR said."""
    allowed = " or ".join(str(sheet_nums[t]) for t in sorted([s, *rivals]))
    if read:
        return f"read by OCR on sheet {sheet_nums[s]} only weakly, and the order allows sheet {allowed}"
    return f"not read by OCR, and the order allows sheet {allowed}"


def _run_values(evidence: np.ndarray, count: int, n_labels: int, mean: float) -> np.ndarray:
    """Score of giving one sheet the run of labels start..end-1, as a (start, end) matrix (-inf if end < start)."""
    prefix = np.concatenate([[0.0], np.cumsum(evidence)])
    start, end = np.meshgrid(np.arange(n_labels + 1), np.arange(n_labels + 1), indexing="ij")
    size = end - start
    values = prefix[end] - prefix[start]
    values -= np.where(size == 0, _EMPTY_SHEET_COST, 0.0)
    if count:
        values -= _COUNT_COST * np.abs(size - count)
    values -= _BALANCE_COST * (size - mean) ** 2
    return np.where(size >= 0, values, -np.inf)


def _solve_runs(
    evidence: list[list[float]], counts: list[int], n_labels: int
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Split labels 0..n-1 into one contiguous (possibly empty) run per sheet, in order, best score.

    Also returns, for every (sheet, label), the best total score of a split that puts the label on
    that sheet: how much worse the runner-up sheet is tells how sure the order is of a placement.
    """
    n_sheets = len(evidence)
    mean = n_labels / n_sheets
    values = [
        _run_values(np.asarray(row, dtype=float), counts[s], n_labels, mean) for s, row in enumerate(evidence)
    ]
    forward = np.full((n_sheets + 1, n_labels + 1), -np.inf)  # sheets before s cover labels before j
    backward = np.full((n_sheets + 1, n_labels + 1), -np.inf)  # sheets from s on cover labels from j on
    back = np.zeros((n_sheets + 1, n_labels + 1), dtype=int)
    forward[0, 0] = 0.0
    backward[n_sheets, n_labels] = 0.0
    for s in range(n_sheets):
        totals = forward[s][:, None] + values[s]
        back[s + 1] = np.argmax(totals, axis=0)  # the first best start, as the loop it replaces
        forward[s + 1] = totals[back[s + 1], np.arange(n_labels + 1)]
    for s in range(n_sheets - 1, -1, -1):
        backward[s] = np.max(values[s] + backward[s + 1][None, :], axis=1)
    runs: list[tuple[int, int]] = []
    end = n_labels
    for s in range(n_sheets, 0, -1):
        start = int(back[s][end])
        runs.append((start, end))
        end = start
    on_sheet = np.full((n_sheets, n_labels), -np.inf)
    start_before = np.triu(np.ones((n_labels, n_labels), dtype=bool))  # [start, i]: start <= i
    for s in range(n_sheets):
        totals = forward[s][:, None] + values[s] + backward[s + 1][None, :]
        best_to = np.maximum.accumulate(totals[:, ::-1], axis=1)[:, ::-1]  # [start, e]: best end >= e
        # label i is in the run [start, end) when start <= i and end >= i + 1
        on_sheet[s] = np.where(start_before, best_to[:-1, 1:], -np.inf).max(axis=0)
    return runs[::-1], on_sheet
