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


def plan_patent(
    rng: np.random.Generator, config: SyntheticConfig, doc_number: str, design: bool, grant: date
) -> PatentPlan:
    object_class = CLASSES[int(rng.choice(len(CLASSES), p=CLASS_WEIGHTS))]
    noun = object_class.name
    object_seed = int(rng.integers(0, 2**31))
    parts = [part.name for part in object_class.build(np.random.default_rng(object_seed))]
    base = int(rng.choice([10, 20, 100]))
    step = 2 if base < 100 or rng.random() < 0.5 else 10
    part_numerals = {name: base + step * (i + 1) for i, name in enumerate(parts)}

    # Sheets, and how many FIGs each holds.
    n_sheets = (
        1
        if rng.random() < 0.1
        else int(rng.integers(min(2, config.max_sheets_per_patent), config.max_sheets_per_patent + 1))
    )
    two_share = 0.15 if design else config.two_figure_share
    per_sheet = [2 if n_sheets > 1 and rng.random() < two_share else 1 for _ in range(n_sheets)]
    landscape = [(not design and rng.random() < config.landscape_share) for _ in range(n_sheets)]
    n_figures = sum(per_sheet)
    sole = n_figures == 1
    style = (
        "plain"
        if design or n_figures < 3
        else str(rng.choice(["plain", "letter", "paren"], p=[0.4, 0.4, 0.2]))
    )
    groups = _figure_groups(rng, n_figures, style)
    keys = [key for group in groups for key in group]
    label_prefix = "Fig." if rng.random() < 0.2 else "FIG."
    views = list(VIEW_ORDER[: max(n_figures, 1)])
    while len(views) < n_figures:
        views.append(VIEW_ORDER[len(views) % len(VIEW_ORDER)])

    figures: list[FigurePlan] = []
    for key, view in zip(keys, views, strict=False):
        shown = [part_numerals[name] for name in parts]
        if not design and view != "perspective":
            shown = sorted(
                rng.choice(shown, size=min(len(shown), int(rng.integers(2, 4))), replace=False).tolist()
            )
        label = "" if sole else f"{label_prefix} {key}"
        figures.append(FigurePlan(label, "" if sole else key, view, [] if design else shown))
    sheets, cursor = [], 0
    for num, (count, is_landscape) in enumerate(zip(per_sheet, landscape, strict=True), start=1):
        sheets.append(SheetPlan(num, figures[cursor : cursor + count], is_landscape))
        cursor += count

    title = str(rng.choice(object_class.design_titles if design else object_class.utility_titles))
    article = "an" if noun[0] in "aeiou" else "a"
    view_words = {figure.key: VIEWS[figure.view][1] for figure in figures}

    # Brief description of drawings: one paragraph per FIG group, real phrasings.
    brief: list[str] = []
    if sole:
        what = VIEWS[figures[0].view][1]
        brief.append(
            f"The FIGURE is a {what} of {article} {noun} showing our new design."
            if design
            else f"The FIGURE is a {what} of {article} {noun} **{base}** according to an embodiment."
        )
    elif design:
        for i, key in enumerate(keys):
            end = "." if i == len(keys) - 1 else ("; and" if i == len(keys) - 2 else ";")
            if i == 0:
                brief.append(
                    f"[[FIG. {key}]] is a {view_words[key]} of {article} {noun} showing our new design{end}"
                )
            else:
                brief.append(f"[[FIG. {key}]] is a {view_words[key]} thereof{end}")
        if rng.random() < 0.5:
            brief.append(
                f"The broken lines show portions of the {noun} that form no part of the claimed design."
            )
    else:
        if rng.random() < 0.5:
            brief.append(
                "The accompanying drawings, which are incorporated in and constitute a part of this specification, illustrate embodiments of the disclosure."
            )
        for i, group in enumerate(groups):
            figref, verb = _group_figref(group, rng)
            words = [view_words[key].removesuffix(" view") for key in group]
            if len(group) == 1:
                what = f"{'a' if words[0][0] not in 'aeiou' else 'an'} {words[0]} view"
            else:
                what = f"{_join_words(words)} views, respectively,"
            subject = (
                f"{article} {noun} **{base}** according to an embodiment of the present disclosure"
                if i == 0
                else str(
                    rng.choice(
                        [
                            f"the {noun} of [[FIG. {keys[0]}]]",
                            f"the {noun} **{base}**",
                            f"the {noun} shown in [[FIG. {keys[0]}]]",
                        ]
                    )
                )
            )
            brief.append(f"{figref} {verb} {what} of {subject};")
        brief[-1] = brief[-1].rstrip(";") + "."

    # Detailed description (utility only; real design grants have none).
    detailed: list[str] = []
    summary: list[str] = []
    abstract = ""
    claims: list[str] = []

    def with_article(name: str) -> str:
        return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"

    parts_text = _join_words([f"{with_article(n)} **{part_numerals[n]}**" for n in parts])
    if design:
        title_article = "an" if title[0].lower() in "aeiou" else "a"
        claims = [f"The ornamental design for {title_article} {title.lower()}, as shown and described."]
    else:
        first = "the FIGURE" if sole else f"[[FIG. {keys[0]}]]"
        detailed.append(
            f"Referring to {first}, {article} {noun} **{base}** according to an embodiment includes {parts_text}. "
            f"The {noun} **{base}** {object_class.purpose}."
        )
        for figure in figures[1:]:
            names = [n for n in parts if part_numerals[n] in figure.numerals] or parts[:2]
            pool = names if len(names) >= 2 else list(dict.fromkeys(names + parts))[:2]
            a, b = rng.choice(pool, size=2, replace=False).tolist()
            relation = str(rng.choice(object_class.relations)).format(
                a=f"{a} **{part_numerals[a]}**", b=f"{b} **{part_numerals[b]}**"
            )
            opener = str(
                rng.choice(["As shown in", "Referring to", "In the embodiment of", "With reference to"])
            )
            view = VIEWS[figure.view][1]
            detailed.append(f"{opener} [[FIG. {figure.key}]], which is a {view}, {relation}.")
        detailed.append(
            f"While the {noun} **{base}** has been described with reference to particular embodiments, "
            "changes in form and detail may be made without departing from the scope of the claims."
        )
        summary = [
            f"Known {noun}s are heavy and costly to make. There is a need for a simpler {noun}.",
            f"A {noun} is provided that includes {_join_words([with_article(n) for n in parts])}. "
            f"The {noun} {object_class.purpose}.",
        ]
        abstract = (
            f"{article.capitalize()} {noun} includes {_join_words([with_article(n) for n in parts])}. "
            f"The {noun} {object_class.purpose}."
        )
        elements = [f"{with_article(n)};" for n in parts[:-1]] + [f"and {with_article(parts[-1])}."]
        claims.append(f"1. {article.capitalize()} {noun}, comprising:|" + "|".join(elements))
        for number, relation in enumerate(object_class.relations[:2], start=2):
            text = relation.format(a=parts[number - 1], b=parts[0])
            claims.append(f"{number}. The {noun} of claim 1, wherein {text}.")

    application_date = grant - timedelta(days=int(rng.integers(420, 1600)))
    series = "29" if design else str(rng.choice(["17", "18"]))
    inventors = [
        (str(rng.choice(FIRST_NAMES)), str(rng.choice(LAST_NAMES)), str(rng.choice(CITIES)))
        for _ in range(int(rng.integers(1, 4)))
    ]
    return PatentPlan(
        doc_number=doc_number,
        kind="S1" if design else ("B2" if rng.random() < 0.8 else "B1"),
        application_type="design" if design else "utility",
        object_class=object_class,
        object_seed=object_seed,
        title=title,
        application_number=f"{series}{int(rng.integers(100000, 999999)):06d}",
        application_date=application_date,
        grant_date=grant,
        sheets=sheets,
        brief_paragraphs=brief,
        detailed_paragraphs=detailed,
        summary_paragraphs=summary,
        abstract=abstract,
        claims=claims,
        part_numerals=part_numerals,
        label_prefix=label_prefix,
        inventors=inventors,
    )


def release_dates(config: SyntheticConfig) -> list[date]:
    # Releases are weekly, on the weekday of `start` (USPTO: Tuesdays).
    return [config.start + timedelta(weeks=index) for index in range(config.releases)]


def plan_release(config: SyntheticConfig, index: int) -> ReleasePlan:
    """Everything about release `index` but the pixels: a pure function of (seed, index)."""
    grant = config.start + timedelta(weeks=index)
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
