"""The `us-patent-grant` XML document (DTD v4.5) of a planned patent, and its mini markup."""

from __future__ import annotations

import re
from datetime import date, timedelta

from lxml import etree

from patent_assets.synthetic.config import DPI
from patent_assets.synthetic.plans import PatentPlan

DTD_DOCTYPE = '<!DOCTYPE us-patent-grant SYSTEM "us-patent-grant-v45-2014-04-03.dtd" [ ]>'
DTD_VERSION = "v4.5 2014-04-03"


MARKUP = re.compile(r"\[\[(.+?)\]\]|\*\*(.+?)\*\*")


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attributes: str) -> etree._Element:
    """A child element on its own line, as USPTO writes structural elements."""
    element = etree.SubElement(parent, tag, {k.replace("_", "-"): v for k, v in attributes.items()})
    element.text = text
    element.tail = "\n"
    if parent.text is None and len(parent) == 1:
        parent.text = "\n"
    return element


def _mixed(element: etree._Element, marked: str) -> None:
    """Fill `element` with text where [[FIG. 1]] becomes a <figref> and **10** a <b>."""
    position, last = 0, None
    for match in MARKUP.finditer(marked):
        text = marked[position : match.start()]
        if last is None:
            element.text = (element.text or "") + text
        else:
            last.tail = (last.tail or "") + text
        if match.group(1) is not None:
            last = etree.SubElement(element, "figref", {"idref": "DRAWINGS"})
            last.text = match.group(1)
        else:
            last = etree.SubElement(element, "b")
            last.text = match.group(2)
        position = match.end()
    rest = marked[position:]
    if last is None:
        element.text = (element.text or "") + rest
    else:
        last.tail = (last.tail or "") + rest


def plain_text(marked: str) -> str:
    """A marked-up paragraph as the parser should read it: the text without the markup."""
    return MARKUP.sub(lambda m: m.group(1) or m.group(2), marked)


def _document_id(parent: etree._Element, number: str, kind: str | None, day: date) -> None:
    document_id = _sub(parent, "document-id")
    _sub(document_id, "country", "US")
    _sub(document_id, "doc-number", number)
    if kind:
        _sub(document_id, "kind", kind)
    _sub(document_id, "date", f"{day:%Y%m%d}")


def _classification(parent: etree._Element, tag: str, cpc: tuple[str, ...], day: date, position: str) -> None:
    section, klass, subclass, group, subgroup = cpc
    element = _sub(parent, tag)
    version = "cpc-version-indicator" if tag == "classification-cpc" else "ipc-version-indicator"
    _sub(_sub(element, version), "date", "20130101")
    if tag == "classification-ipcr":
        _sub(element, "classification-level", "A")
    for name, value in (
        ("section", section),
        ("class", klass),
        ("subclass", subclass),
        ("main-group", group),
        ("subgroup", subgroup),
    ):
        _sub(element, name, value)
    _sub(element, "symbol-position", position)
    _sub(element, "classification-value", "I")
    _sub(_sub(element, "action-date"), "date", f"{day:%Y%m%d}")
    _sub(_sub(element, "generating-office"), "country", "US")
    _sub(element, "classification-status", "B")
    _sub(element, "classification-data-source", "H")
    if tag == "classification-cpc":
        _sub(element, "scheme-origination-code", "C")


def build_xml(patent: PatentPlan, sheet_sizes: dict[int, tuple[int, int]]) -> bytes:
    """The `us-patent-grant` document (DTD v4.5), serialised by lxml so escaping is right.

    Its parts are written in the DTD's order: bibliographic data, abstract, drawings,
    description, claims.
    """
    root = _grant_root(patent)
    _bibliographic_data(root, patent)
    if patent.abstract:
        abstract = _sub(root, "abstract", id="abstract")
        _sub(abstract, "p", patent.abstract, id="p-0001", num="0000")
    _drawings(root, patent, sheet_sizes)
    _description(root, patent)
    _claims(root, patent)
    # Written by hand: lxml's own declaration uses single quotes, USPTO's double quotes.
    body = etree.tostring(root.getroottree(), encoding="UTF-8", xml_declaration=False, doctype=DTD_DOCTYPE)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body + b"\n"


def _grant_root(patent: PatentPlan) -> etree._Element:
    grant = patent.grant_date
    root = etree.Element(
        "us-patent-grant",
        {
            "lang": "EN",
            "dtd-version": DTD_VERSION,
            "file": f"{patent.stem}.XML",
            "status": "PRODUCTION",
            "id": "us-patent-grant",
            "country": "US",
            "date-produced": f"{grant - timedelta(days=14):%Y%m%d}",
            "date-publ": f"{grant:%Y%m%d}",
        },
    )
    # Marks the document as ours, so that models can be judged on real drawings apart from these.
    root.append(etree.ProcessingInstruction("patentflow", 'synthetic="yes"'))
    root[-1].tail = "\n"
    root.text = "\n"
    return root


def _bibliographic_data(root: etree._Element, patent: PatentPlan) -> None:
    """Numbers, dates, term, classifications, title, counts and inventors."""
    grant = patent.grant_date
    biblio = _sub(root, "us-bibliographic-data-grant")
    _document_id(_sub(biblio, "publication-reference"), patent.doc_number, patent.kind, grant)
    _document_id(
        _sub(biblio, "application-reference", appl_type=patent.application_type),
        patent.application_number,
        None,
        patent.application_date,
    )
    _sub(biblio, "us-application-series-code", patent.application_number[:2])
    term = _sub(biblio, "us-term-of-grant")
    # Design and utility grants differ in their term and in how they are classified.
    if patent.application_type == "design":
        _sub(term, "length-of-grant", "15")
        _design_classification(biblio, patent.object_class.locarno)
    else:
        _sub(term, "us-term-extension", str(len(patent.doc_number) * 37))
        ipcr = _sub(biblio, "classifications-ipcr")
        _classification(ipcr, "classification-ipcr", patent.object_class.cpc, grant, "F")
        cpcs = _sub(biblio, "classifications-cpc")
        _classification(_sub(cpcs, "main-cpc"), "classification-cpc", patent.object_class.cpc, grant, "F")
    _sub(biblio, "invention-title", patent.title, id="d2e53")
    _sub(biblio, "number-of-claims", str(len(patent.claims)))
    _sub(biblio, "us-exemplary-claim", "1")
    figures = _sub(biblio, "figures")
    _sub(figures, "number-of-drawing-sheets", str(len(patent.sheets)))
    _sub(figures, "number-of-figures", str(len(patent.figures)))
    _inventors(_sub(biblio, "us-parties"), patent.inventors)


def _design_classification(biblio: etree._Element, locarno: str) -> None:
    """A design grant's Locarno class and a US design class (D8 156, ...) made up from it."""
    element = _sub(biblio, "classification-locarno")
    _sub(element, "edition", "14")
    _sub(element, "main-classification", locarno)
    national = _sub(biblio, "classification-national")
    _sub(national, "country", "US")
    _sub(national, "main-classification", f"D{int(locarno[:2])} {int(locarno[2:]) * 7 + 100}")


def _inventors(parties: etree._Element, inventors: list[tuple[str, str, str]]) -> None:
    listing = _sub(parties, "inventors")
    for sequence, (first, last, city) in enumerate(inventors, start=1):
        book = _sub(
            _sub(listing, "inventor", sequence=f"{sequence:03d}", designation="us-only"), "addressbook"
        )
        _sub(book, "last-name", last)
        _sub(book, "first-name", first)
        address = _sub(book, "address")
        _sub(address, "city", city)
        _sub(address, "country", "US")


def _drawings(root: etree._Element, patent: PatentPlan, sheet_sizes: dict[int, tuple[int, int]]) -> None:
    """One <figure><img> per sheet, sized in mm at DPI from the rendered pixels."""
    drawings = _sub(root, "drawings", id="DRAWINGS")
    for sheet in patent.sheets:
        width, height = sheet_sizes[sheet.num]
        figure = _sub(drawings, "figure", id=f"Fig-EMI-D{sheet.num:05d}", num=f"{sheet.num:05d}")
        attributes = {
            "id": f"EMI-D{sheet.num:05d}",
            "he": f"{height / DPI * 25.4:.2f}mm",
            "wi": f"{width / DPI * 25.4:.2f}mm",
        }
        if sheet.landscape:  # in USPTO's attribute order: after the size, before the file
            attributes["orientation"] = "landscape"
        attributes |= {
            "file": patent.sheet_file(sheet),
            "alt": "embedded image",
            "img-content": "drawing",
            "img-format": "tif",
        }
        _sub(figure, "img", **{k.replace("-", "_"): v for k, v in attributes.items()})


class _Description:
    """The <description> being written: numbers its paragraphs and headings as USPTO does."""

    def __init__(self, root: etree._Element, has_abstract: bool) -> None:
        self.element = _sub(root, "description", id="description")
        self._paragraphs = iter(range(1, 10_000))
        self._headings = iter(range(1, 1000))
        self._id_offset = int(has_abstract)  # num counts description paragraphs; id also the abstract's

    def paragraph(self, marked: str, parent: etree._Element | None = None) -> None:
        number = next(self._paragraphs)
        attributes = {"id": f"p-{number + self._id_offset:04d}", "num": f"{number:04d}"}
        _mixed(_sub(self.element if parent is None else parent, "p", **attributes), marked)

    def heading(self, text: str, parent: etree._Element | None = None) -> None:
        number = next(self._headings)
        _sub(self.element if parent is None else parent, "heading", text, id=f"h-{number:04d}", level="1")

    def instruction(self, target: str, label: str, end: str) -> None:
        """A section mark (`<?BRFSUM description="Brief Summary" end="lead"?>`): the parser finds
        the sections by them."""
        pi = etree.ProcessingInstruction(target, f'description="{label}" end="{end}"')
        pi.tail = "\n"
        if self.element.text is None and len(self.element) == 0:
            self.element.text = "\n"
        self.element.append(pi)


def _description(root: etree._Element, patent: PatentPlan) -> None:
    """Brief summary, brief description of the drawings and detailed description, each between
    its lead and tail marks; a design grant has the drawings' description only."""
    description = _Description(root, bool(patent.abstract))
    if patent.summary_paragraphs:
        description.instruction("BRFSUM", "Brief Summary", "lead")
        description.heading("BACKGROUND")
        description.paragraph(patent.summary_paragraphs[0])
        description.heading("SUMMARY")
        for text in patent.summary_paragraphs[1:]:
            description.paragraph(text)
        description.instruction("BRFSUM", "Brief Summary", "tail")
    description.instruction("brief-description-of-drawings", "Brief Description of Drawings", "lead")
    drawings_text = _sub(description.element, "description-of-drawings")
    if patent.application_type != "design":
        description.heading("BRIEF DESCRIPTION OF THE DRAWINGS", drawings_text)
    for text in patent.brief_paragraphs:
        description.paragraph(text, drawings_text)
    description.instruction("brief-description-of-drawings", "Brief Description of Drawings", "tail")
    if patent.detailed_paragraphs:
        description.instruction("DETDESC", "Detailed Description", "lead")
        description.heading("DETAILED DESCRIPTION")
        for text in patent.detailed_paragraphs:
            description.paragraph(text)
        description.instruction("DETDESC", "Detailed Description", "tail")


def _claims(root: etree._Element, patent: PatentPlan) -> None:
    """The claim statement and the claims; "|" in a claim's text separates its elements."""
    statement = "CLAIM" if patent.application_type == "design" else "What is claimed is:"
    _sub(root, "us-claim-statement", statement)
    claims = _sub(root, "claims", id="claims")
    for number, text in enumerate(patent.claims, start=1):
        claim = _sub(claims, "claim", id=f"CLM-{number:05d}", num=f"{number:05d}")
        head, *elements = text.split("|")
        claim_text = _sub(claim, "claim-text")
        if " of claim 1" in head:  # a dependent claim: "claim 1" becomes a <claim-ref>
            before, after = head.split("claim 1", 1)
            claim_text.text = before
            reference = etree.SubElement(claim_text, "claim-ref", idref="CLM-00001")
            reference.text = "claim 1"
            reference.tail = after
        else:
            claim_text.text = head
        for element_text in elements:
            _sub(claim_text, "claim-text", element_text)
