"""Everything about a release but the pixels: views, figures, sheets, texts, numbers.

`plan_release` is a pure function of (seed, index); rendering and packing only read its plans.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np

from patent_assets.synthetic.config import SyntheticConfig
from patent_assets.synthetic.geometry import rot_x, rot_z
from patent_assets.synthetic.objects import CLASS_WEIGHTS, CLASSES, ObjectClass

VIEWS: dict[str, tuple[np.ndarray, str]] = {
    # name -> (object rotation before projecting onto the x-z plane, the words for it)
    "perspective": (rot_x(np.radians(28)) @ rot_z(np.radians(-35)), "perspective view"),
    "front": (np.eye(3), "front view"),
    "top": (rot_x(np.radians(90)), "top plan view"),
    "right": (rot_z(np.radians(-90)), "right side view"),
    "rear": (rot_z(np.radians(180)), "rear view"),
    "left": (rot_z(np.radians(90)), "left side view"),
    "bottom": (rot_x(np.radians(-90)), "bottom view"),
    "rear_perspective": (rot_x(np.radians(25)) @ rot_z(np.radians(145)), "rear perspective view"),
}
VIEW_ORDER = ("perspective", "front", "top", "right", "rear", "left", "bottom", "rear_perspective")


@dataclass
class FigurePlan:
    label: str  # "FIG. 3A" as printed on the sheet; "" for an unlabelled sole figure
    key: str  # "3A": the label's number part, as ground truth
    view: str  # a key of VIEWS
    numerals: list[int]  # reference numerals drawn with leader lines


@dataclass
class SheetPlan:
    num: int  # sheet number (D0000n)
    figures: list[FigurePlan]
    landscape: bool


@dataclass
class PatentPlan:
    doc_number: str  # "11856001" or "D1010001"
    kind: str  # B2, B1, S1
    application_type: str  # utility, design
    object_class: ObjectClass
    object_seed: int
    title: str
    application_number: str
    application_date: date
    grant_date: date
    sheets: list[SheetPlan]
    brief_paragraphs: list[str]  # mini markup: [[FIG. 1]] is a figref, **10** is bold
    detailed_paragraphs: list[str]
    summary_paragraphs: list[str]
    abstract: str
    claims: list[str]
    part_numerals: dict[str, int]
    label_prefix: str = "FIG."
    inventors: list[tuple[str, str, str]] = field(default_factory=list)  # first, last, city

    @property
    def stem(self) -> str:
        return f"US{self.doc_number}-{self.grant_date:%Y%m%d}"

    @property
    def patent_id(self) -> str:
        return f"US{self.doc_number}{self.kind}"

    @property
    def figures(self) -> list[FigurePlan]:
        return [figure for sheet in self.sheets for figure in sheet.figures]

    def sheet_file(self, sheet: SheetPlan) -> str:
        return f"{self.stem}-D{sheet.num:05d}.TIF"


@dataclass
class ReleasePlan:
    release_date: date
    patents: list[PatentPlan]

    @property
    def name(self) -> str:
        return f"I{self.release_date:%Y%m%d}"


FIRST_NAMES = (
    "Maria",
    "James",
    "Wei",
    "Aiko",
    "Carlos",
    "Ingrid",
    "Ravi",
    "Olga",
    "Samuel",
    "Fatima",
    "Lukas",
    "Grace",
)
LAST_NAMES = (
    "Nguyen",
    "Schmidt",
    "Okafor",
    "Tanaka",
    "Rossi",
    "Kowalski",
    "Patel",
    "Larsen",
    "Moreau",
    "Silva",
    "Chen",
    "Brooks",
)
CITIES = ("Austin", "Dayton", "Osaka", "Munich", "Lyon", "Denver", "Pune", "Malmo", "Porto", "Boise")
LETTERS = "ABCDEFGH"


def _figure_groups(rng: np.random.Generator, count: int, style: str) -> list[list[str]]:
    """Split `count` figures into numbered groups and give each its label key ("3", "3A", "7(a)")."""
    if style == "plain":
        return [[str(number)] for number in range(1, count + 1)]
    sizes: list[int] = []
    left = count
    while left:
        size = int(min(left, rng.choice([1, 2, 2, 3, 4])))
        sizes.append(size)
        left -= size
    groups = []
    for number, size in enumerate(sizes, start=1):
        if size == 1:
            groups.append([str(number)])
        elif style == "letter":
            groups.append([f"{number}{LETTERS[i]}" for i in range(size)])
        else:
            groups.append([f"{number}({LETTERS[i].lower()})" for i in range(size)])
    return groups


def _join_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _with_article(name: str) -> str:
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _group_figref(keys: list[str], rng: np.random.Generator) -> tuple[str, str]:
    """The figref markup for a group and its verb: ("[[FIG. 1]]", "is"), ("[[FIGS. 3A-3D]]", "are")."""
    if len(keys) == 1:
        return f"[[FIG. {keys[0]}]]", "is"
    if "(" in keys[0]:
        joiner = " to " if len(keys) > 2 else " and "
        return f"[[FIG. {keys[0]}]]{joiner}[[FIG. {keys[-1]}]]", "are"
    if len(keys) == 2:
        return f"[[FIGS. {keys[0]} and {keys[1]}]]", "are"
    if rng.random() < 0.5:
        return f"[[FIGS. {keys[0]}-{keys[-1]}]]", "are"
    return f"[[FIGS. {keys[0]}-{keys[-1][-1]}]]", "are"  # "FIGS. 2A-C": ranges must be expanded


@dataclass(frozen=True)
class _Invention:
    """The object a patent is about, as its texts name it: "a bracket **20**", "a gusset **26**"."""

    object_class: ObjectClass
    parts: list[str]  # part names, in the order the object's builder makes them
    base: int  # the object's own reference numeral
    part_numerals: dict[str, int]

    @property
    def noun(self) -> str:
        return self.object_class.name

    @property
    def article(self) -> str:
        return "an" if self.noun[0] in "aeiou" else "a"


@dataclass(frozen=True)
class _Drawings:
    """A patent's sheets, the FIGs on them and their label keys grouped by FIG number."""

    sheets: list[SheetPlan]
    groups: list[list[str]]  # [["1"], ["2A", "2B"]]: "FIGS. 2A and 2B" share a brief paragraph
    label_prefix: str  # "FIG." or "Fig."

    @property
    def figures(self) -> list[FigurePlan]:
        return [figure for sheet in self.sheets for figure in sheet.figures]

    @property
    def keys(self) -> list[str]:
        return [key for group in self.groups for key in group]

    @property
    def sole(self) -> bool:
        """One figure only: USPTO prints it without a label and the texts call it "the FIGURE"."""
        return len(self.keys) == 1


@dataclass(frozen=True)
class _Texts:
    """A patent's texts beside the brief description; a design grant has its one claim only."""

    claims: list[str]
    detailed: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    abstract: str = ""


@dataclass(frozen=True)
class _Filing:
    """The application behind a grant, and the kind code it was granted under."""

    kind: str  # B2, B1, S1
    application_number: str
    application_date: date
    inventors: list[tuple[str, str, str]]  # first, last, city


def plan_patent(
    rng: np.random.Generator, config: SyntheticConfig, doc_number: str, design: bool, grant: date
) -> PatentPlan:
    """One patent: its object, drawings, texts and filing data, all drawn from `rng`.

    The steps run in the order the draws have always been made (object, numerals, drawings,
    title, brief description, detailed description, filing): reordering them would change
    every patent a seed gives, and with it every release's bytes.
    """
    object_class = CLASSES[int(rng.choice(len(CLASSES), p=CLASS_WEIGHTS))]
    object_seed = int(rng.integers(0, 2**31))
    # Building the object names its parts, so that the texts name what the drawings show.
    parts = [part.name for part in object_class.build(np.random.default_rng(object_seed))]
    invention = _Invention(object_class, parts, *_number_parts(rng, parts))
    drawings = _plan_drawings(rng, config, invention, design)
    title = str(rng.choice(object_class.design_titles if design else object_class.utility_titles))
    brief = _brief_description(rng, invention, drawings, design)
    texts = _design_texts(title) if design else _utility_texts(rng, invention, drawings)
    filing = _plan_filing(rng, design, grant)
    return PatentPlan(
        doc_number=doc_number,
        kind=filing.kind,
        application_type="design" if design else "utility",
        object_class=object_class,
        object_seed=object_seed,
        title=title,
        application_number=filing.application_number,
        application_date=filing.application_date,
        grant_date=grant,
        sheets=drawings.sheets,
        brief_paragraphs=brief,
        detailed_paragraphs=texts.detailed,
        summary_paragraphs=texts.summary,
        abstract=texts.abstract,
        claims=texts.claims,
        part_numerals=invention.part_numerals,
        label_prefix=drawings.label_prefix,
        inventors=filing.inventors,
    )


def _number_parts(rng: np.random.Generator, parts: list[str]) -> tuple[int, dict[str, int]]:
    """The object's reference numeral and its parts' after it: 20 with 22, 24, ...; 100 with 110, ..."""
    base = int(rng.choice([10, 20, 100]))
    step = 2 if base < 100 or rng.random() < 0.5 else 10  # only a base of 100 draws its step
    return base, {name: base + step * (i + 1) for i, name in enumerate(parts)}


def _plan_drawings(
    rng: np.random.Generator, config: SyntheticConfig, invention: _Invention, design: bool
) -> _Drawings:
    """How many sheets, which FIG labels, and which view (with which numerals) each figure shows."""
    per_sheet, landscape = _sheet_shapes(rng, config, design)
    count = sum(per_sheet)
    # Design grants number their figures plainly (FIG. 1, FIG. 2, ...), as real ones do.
    style = (
        "plain" if design or count < 3 else str(rng.choice(["plain", "letter", "paren"], p=[0.4, 0.4, 0.2]))
    )
    groups = _figure_groups(rng, count, style)
    label_prefix = "Fig." if rng.random() < 0.2 else "FIG."
    keys = [key for group in groups for key in group]
    figures = _plan_figures(rng, invention, keys, label_prefix, design)
    sheets, cursor = [], 0
    for num, (held, is_landscape) in enumerate(zip(per_sheet, landscape, strict=True), start=1):
        sheets.append(SheetPlan(num, figures[cursor : cursor + held], is_landscape))
        cursor += held
    return _Drawings(sheets, groups, label_prefix)


def _sheet_shapes(
    rng: np.random.Generator, config: SyntheticConfig, design: bool
) -> tuple[list[int], list[bool]]:
    """How many FIGs each sheet holds (one or two), and which sheets are drawn landscape."""
    n_sheets = (
        1
        if rng.random() < 0.1
        else int(rng.integers(min(2, config.max_sheets_per_patent), config.max_sheets_per_patent + 1))
    )
    two_share = 0.15 if design else config.two_figure_share
    per_sheet = [2 if n_sheets > 1 and rng.random() < two_share else 1 for _ in range(n_sheets)]
    # Design sheets are never landscape, and `not design` first means they draw nothing for it.
    landscape = [(not design and rng.random() < config.landscape_share) for _ in range(n_sheets)]
    return per_sheet, landscape


def _plan_figures(
    rng: np.random.Generator, invention: _Invention, keys: list[str], label_prefix: str, design: bool
) -> list[FigurePlan]:
    """One figure per label key, the views in VIEW_ORDER, each with the numerals it points at."""
    sole = len(keys) == 1
    views = list(VIEW_ORDER[: max(len(keys), 1)])
    while len(views) < len(keys):
        views.append(VIEW_ORDER[len(views) % len(VIEW_ORDER)])
    figures: list[FigurePlan] = []
    for key, view in zip(keys, views, strict=False):
        shown = [invention.part_numerals[name] for name in invention.parts]
        if not design and view != "perspective":
            # Beside the perspective, a utility figure points at two or three parts only.
            shown = sorted(
                rng.choice(shown, size=min(len(shown), int(rng.integers(2, 4))), replace=False).tolist()
            )
        label = "" if sole else f"{label_prefix} {key}"
        figures.append(FigurePlan(label, "" if sole else key, view, [] if design else shown))
    return figures


def _brief_description(
    rng: np.random.Generator, invention: _Invention, drawings: _Drawings, design: bool
) -> list[str]:
    """The brief description of the drawings: one paragraph per FIG group, in real phrasings."""
    figures = drawings.figures
    if drawings.sole:
        what, article, noun = VIEWS[figures[0].view][1], invention.article, invention.noun
        if design:
            return [f"The FIGURE is a {what} of {article} {noun} showing our new design."]
        return [
            f"The FIGURE is a {what} of {article} {noun} **{invention.base}** according to an embodiment."
        ]
    view_words = {figure.key: VIEWS[figure.view][1] for figure in figures}
    if design:
        return _brief_design(rng, invention, drawings.keys, view_words)
    return _brief_utility(rng, invention, drawings, view_words)


def _brief_design(
    rng: np.random.Generator, invention: _Invention, keys: list[str], view_words: dict[str, str]
) -> list[str]:
    """A design grant's: "FIG. 1 is a perspective view of a lamp showing our new design;", then
    "FIG. 2 is a front view thereof;" and so on, one sentence of a list per figure."""
    noun = invention.noun
    brief: list[str] = []
    for i, key in enumerate(keys):
        end = "." if i == len(keys) - 1 else ("; and" if i == len(keys) - 2 else ";")
        if i == 0:
            brief.append(
                f"[[FIG. {key}]] is a {view_words[key]} of {invention.article} {noun} "
                f"showing our new design{end}"
            )
        else:
            brief.append(f"[[FIG. {key}]] is a {view_words[key]} thereof{end}")
    if rng.random() < 0.5:
        brief.append(f"The broken lines show portions of the {noun} that form no part of the claimed design.")
    return brief


def _brief_utility(
    rng: np.random.Generator, invention: _Invention, drawings: _Drawings, view_words: dict[str, str]
) -> list[str]:
    """A utility grant's: "FIGS. 2A-2C are front, top and right side views, respectively, of ..."."""
    noun, base, first_key = invention.noun, invention.base, drawings.keys[0]
    brief: list[str] = []
    if rng.random() < 0.5:
        brief.append(
            "The accompanying drawings, which are incorporated in and constitute a part of this "
            "specification, illustrate embodiments of the disclosure."
        )
    for i, group in enumerate(drawings.groups):
        figref, verb = _group_figref(group, rng)
        words = [view_words[key].removesuffix(" view") for key in group]
        if len(group) == 1:
            what = f"{_with_article(words[0])} view"
        else:
            what = f"{_join_words(words)} views, respectively,"
        # The first group introduces the object; the later ones refer back to it.
        subject = (
            f"{invention.article} {noun} **{base}** according to an embodiment of the present disclosure"
            if i == 0
            else str(
                rng.choice(
                    [
                        f"the {noun} of [[FIG. {first_key}]]",
                        f"the {noun} **{base}**",
                        f"the {noun} shown in [[FIG. {first_key}]]",
                    ]
                )
            )
        )
        brief.append(f"{figref} {verb} {what} of {subject};")
    brief[-1] = brief[-1].rstrip(";") + "."
    return brief


def _design_texts(title: str) -> _Texts:
    """A design grant's one claim; real design grants have no description beyond the brief one."""
    title_article = "an" if title[0].lower() in "aeiou" else "a"
    return _Texts(
        claims=[f"The ornamental design for {title_article} {title.lower()}, as shown and described."]
    )


def _utility_texts(rng: np.random.Generator, invention: _Invention, drawings: _Drawings) -> _Texts:
    """A utility grant's detailed description, summary, abstract and claims."""
    noun, purpose = invention.noun, invention.object_class.purpose
    detailed = _detailed_description(rng, invention, drawings)  # the only one of these that draws
    parts_words = _join_words([_with_article(name) for name in invention.parts])
    summary = [
        f"Known {noun}s are heavy and costly to make. There is a need for a simpler {noun}.",
        f"A {noun} is provided that includes {parts_words}. The {noun} {purpose}.",
    ]
    abstract = f"{invention.article.capitalize()} {noun} includes {parts_words}. The {noun} {purpose}."
    return _Texts(_utility_claims(invention), detailed, summary, abstract)


def _detailed_description(rng: np.random.Generator, invention: _Invention, drawings: _Drawings) -> list[str]:
    """A paragraph naming the object and all its parts, one per further figure, and a closing one."""
    noun, base, numerals = invention.noun, invention.base, invention.part_numerals
    first = "the FIGURE" if drawings.sole else f"[[FIG. {drawings.keys[0]}]]"
    parts_text = _join_words([f"{_with_article(name)} **{numerals[name]}**" for name in invention.parts])
    detailed = [
        f"Referring to {first}, {invention.article} {noun} **{base}** according to an embodiment "
        f"includes {parts_text}. The {noun} **{base}** {invention.object_class.purpose}."
    ]
    detailed.extend(_figure_paragraph(rng, invention, figure) for figure in drawings.figures[1:])
    detailed.append(
        f"While the {noun} **{base}** has been described with reference to particular embodiments, "
        "changes in form and detail may be made without departing from the scope of the claims."
    )
    return detailed


def _figure_paragraph(rng: np.random.Generator, invention: _Invention, figure: FigurePlan) -> str:
    """ "As shown in FIG. 2, which is a front view, the lid **14** covers the body **12**." """
    parts, numerals = invention.parts, invention.part_numerals
    # Relate two parts the figure points at; short of two, take the object's first parts.
    names = [name for name in parts if numerals[name] in figure.numerals] or parts[:2]
    pool = names if len(names) >= 2 else list(dict.fromkeys(names + parts))[:2]
    a, b = rng.choice(pool, size=2, replace=False).tolist()
    relation = str(rng.choice(invention.object_class.relations)).format(
        a=f"{a} **{numerals[a]}**", b=f"{b} **{numerals[b]}**"
    )
    opener = str(rng.choice(["As shown in", "Referring to", "In the embodiment of", "With reference to"]))
    return f"{opener} [[FIG. {figure.key}]], which is a {VIEWS[figure.view][1]}, {relation}."


def _utility_claims(invention: _Invention) -> list[str]:
    """Claim 1 lists every part ("|" splits its elements for the XML); claims 2 and 3 depend on it."""
    noun, parts = invention.noun, invention.parts
    elements = [f"{_with_article(name)};" for name in parts[:-1]] + [f"and {_with_article(parts[-1])}."]
    claims = [f"1. {invention.article.capitalize()} {noun}, comprising:|" + "|".join(elements)]
    for number, relation in enumerate(invention.object_class.relations[:2], start=2):
        text = relation.format(a=parts[number - 1], b=parts[0])
        claims.append(f"{number}. The {noun} of claim 1, wherein {text}.")
    return claims


def _plan_filing(rng: np.random.Generator, design: bool, grant: date) -> _Filing:
    """When it was filed, under which series, by whom, and the kind code it was granted under."""
    application_date = grant - timedelta(days=int(rng.integers(420, 1600)))
    series = "29" if design else str(rng.choice(["17", "18"]))  # 29: the design series
    inventors = [
        (str(rng.choice(FIRST_NAMES)), str(rng.choice(LAST_NAMES)), str(rng.choice(CITIES)))
        for _ in range(int(rng.integers(1, 4)))
    ]
    # The kind is drawn before the application number: the order PatentPlan's fields were drawn in.
    kind = "S1" if design else ("B2" if rng.random() < 0.8 else "B1")
    application_number = f"{series}{int(rng.integers(100000, 999999)):06d}"
    return _Filing(kind, application_number, application_date, inventors)


def plan_release(config: SyntheticConfig, index: int) -> ReleasePlan:
    """Everything about release `index` but the pixels: a pure function of (seed, index)."""
    grant = config.start + timedelta(weeks=index)  # weekly, on the weekday of `start` (USPTO: Tuesdays)
    rng = np.random.default_rng([config.seed, index, 7919])
    designs = [bool(rng.random() < config.design_share) for _ in range(config.patents_per_release)]
    utility_number = 11_856_001 + index * 6_500
    design_number = 1_010_001 + index * 450
    patents = []
    for position, design in enumerate(designs):
        patent_rng = np.random.default_rng([config.seed, index, position])
        if design:
            doc_number, design_number = f"D{design_number:07d}", design_number + 1
        else:
            doc_number, utility_number = f"{utility_number}", utility_number + 1
        patents.append(plan_patent(patent_rng, config, doc_number, design, grant))
    return ReleasePlan(grant, patents)
