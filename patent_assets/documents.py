"""What the parser extracts from one `us-patent-grant` (any DTD v4.0 to v4.7) or
`us-patent-application` document."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class DrawingSheet:
    """One `<drawings>/<figure>/<img>`: a drawing sheet, not a FIG (a sheet may hold several)."""

    num: int  # <figure num="00003"> -> 3; 0 is the front-page drawing
    file: str  # the TIF's file name as the XML gives it, e.g. USD0907292-20210105-D00003.TIF
    orientation: str = "portrait"  # "landscape" sheets are stored as portrait pixels
    img_content: str = "drawing"  # "drawing", "chem", "math", ...

    @property
    def sheet_id(self) -> str:
        return f"D{self.num:05d}"


@dataclass
class GrantDocument:
    patent_id: str  # US + doc-number + kind, e.g. USD0907292S1, US11036663B2
    doc_number: str  # D0907292, 11036663
    kind: str  # the kind code: S1, B2, B1, E; A1, A2, A9 for applications
    grant_date: str  # ISO yyyy-mm-dd; for an application its publication date (prior art from then)
    title: str
    dtd_version: str = ""  # "v4.5 2014-04-03"
    application_type: str = ""  # utility, design, plant, reissue
    abstract: str = ""
    classifications: list[str] = field(
        default_factory=list
    )  # "IPC:A61B 5/00", "CPC:...", "LOCARNO:1403", "USPC:D12192"
    brief_paragraphs: list[str] = field(default_factory=list)  # <description-of-drawings> <p> texts, in order
    detailed_paragraphs: list[str] = field(default_factory=list)  # the detailed description's <p> texts
    claims: list[str] = field(default_factory=list)
    sheets: list[DrawingSheet] = field(default_factory=list)
    number_of_sheets: int | None = None  # <figures><number-of-drawing-sheets>
    number_of_figures: int | None = None  # <figures><number-of-figures>
    source: str = ""  # where it came from: file, zip member, offset in a concatenated file
    document_kind: str = "grant"  # "grant" or "application" (a published application)
    synthetic: bool = False  # drawn by patentflow's own generator (`<?patentflow synthetic?>`), not USPTO's


@dataclass
class PatentBundle:
    """A parsed grant with its drawing sheets, as a source delivers them.

    `sheet_files` maps each `DrawingSheet.file` that was found to its extracted local path;
    a sheet whose file is missing is simply absent (the caller rejects it, with its reason).
    """

    document: GrantDocument
    sheet_files: dict[str, Path] = field(default_factory=dict)


def document_text(document: GrantDocument) -> str:
    """A grant's patent text in reading order: title, abstract, brief and detailed description, claims."""
    parts = [document.title, document.abstract, *document.brief_paragraphs, *document.detailed_paragraphs]
    parts += document.claims
    return "\n".join(part.strip() for part in parts if part and part.strip())


def document_to_dict(document: GrantDocument) -> dict:
    return asdict(document)


def document_from_dict(data: dict) -> GrantDocument:
    data = dict(data)
    data["sheets"] = [DrawingSheet(**sheet) for sheet in data.get("sheets", [])]
    return GrantDocument(**data)
