"""Parse USPTO `us-patent-grant` (DTD v4.0 to v4.7) and `us-patent-application` XML into
`GrantDocument`s, safely.

USPTO ships grants one per file (inside per-patent ZIPs) or many per file (the weekly
`ipgYYMMDD` text product), where each document starts with its own `<?xml ...?>` line and
other document types (sequence listings) are interleaved. Published applications (the weekly
application product, same v4.x schema with a `us-bibliographic-data-application`) are prior
art from their publication date, so they are parsed too, with `document_kind` "application";
every other document type is skipped and counted. The parser never fetches the DTD
a DOCTYPE names, never resolves entities, and rejects documents that declare entities at
all (billion laughs, external entities): real grants declare none.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date

from lxml import etree

from patent_assets.documents import DrawingSheet, GrantDocument
from patent_assets.records import Rejection

GRANT_ROOT = "us-patent-grant"
APPLICATION_ROOT = "us-patent-application"
# Root element -> (document_kind, the bibliographic-data element it holds).
DOCUMENT_ROOTS = {
    GRANT_ROOT: ("grant", "us-bibliographic-data-grant"),
    APPLICATION_ROOT: ("application", "us-bibliographic-data-application"),
}

# Each document of a concatenated file begins with an XML declaration.
_XML_DECLARATION = re.compile(rb"<\?xml\s")
_DOCTYPE_NAME = re.compile(rb"<!DOCTYPE\s+([\w.:-]+)")
_ROOT_NAME = re.compile(rb"<([A-Za-z_][\w.:-]*)[\s>/]")
# Best-effort id of a document too broken to parse: the publication's doc-number.
_PUBLICATION_NUMBER = re.compile(
    rb"<publication-reference>\s*<document-id>\s*(?:<country>[^<]*</country>\s*)?"
    rb"<doc-number>([A-Za-z0-9]+)</doc-number>"
)
_ROOT_START = re.compile(rb"<[A-Za-z_]")
_ENTITY_DECLARATION = re.compile(rb"<!ENTITY\s")
_ENTITY_REASON = (
    "the DOCTYPE declares entities: refused as a possible entity-expansion or external-entity attack"
)
_SAFE_ID_PART = re.compile(r"^[A-Za-z0-9]+$")
_OLD_IPC = re.compile(r"^([A-H]\d\d[A-Z])\s*0*(\d+)\s*/\s*(\d+)")
# The detailed description's processing-instruction name: DETDESC in the grants of v4.0-v4.5,
# "detailed-description" in the 2025 applications (DTD v4.6).
_DETAILED_PIS = frozenset({"DETDESC", "detailed-description"})
# The prolog is short; sniffing the document type needs only its first bytes.
_SNIFF_BYTES = 4096


class DocumentError(ValueError):
    """A document that cannot become a `GrantDocument`."""


class NotAGrant(DocumentError):
    """Neither a grant nor a published application (sequence listing, ...): skipped and counted."""

    def __init__(self, doc_type: str) -> None:
        super().__init__(f"not a {GRANT_ROOT} or {APPLICATION_ROOT} document: {doc_type}")
        self.doc_type = doc_type


class InvalidDocument(DocumentError):
    """A malformed, truncated, unsafe or incomplete grant document."""

    def __init__(self, reason: str, doc_number: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.doc_number = doc_number


def _safe_parser() -> etree.XMLParser:
    # No DTD loading, no network, no entity expansion, libxml2's default size limits.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
    )


def split_documents(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Split a concatenated file on each `<?xml` declaration: (byte offset, document bytes).

    Leading bytes before the first declaration are yielded too when they hold anything but
    whitespace, so that junk is reported rather than silently dropped.
    """
    starts = [match.start() for match in _XML_DECLARATION.finditer(data)]
    if not starts:
        if data.strip():
            yield 0, data
        return
    if data[: starts[0]].strip():
        yield 0, data[: starts[0]]
    ends = [*starts[1:], len(data)]
    for start, end in zip(starts, ends, strict=True):
        yield start, data[start:end]


def iter_documents_from_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """Streaming `split_documents` over a binary file (memory: one document at a time).

    USPTO starts every document's declaration on a new line, so splitting on lines that
    begin with `<?xml` finds the same boundaries as `split_documents` on real files.
    """
    offset = 0
    start = 0
    chunk: list[bytes] = []
    for line in lines:
        if _XML_DECLARATION.match(line.lstrip()) and chunk:
            document = b"".join(chunk)
            if document.strip():
                yield start, document
            chunk = []
            start = offset
        elif not chunk:
            start = offset
        chunk.append(line)
        offset += len(line)
    if chunk:
        document = b"".join(chunk)
        if document.strip():
            yield start, document


def sniff_document_type(xml: bytes) -> str:
    """The DOCTYPE name, else the root element's name, from the first bytes; "" if neither."""
    head = xml[:_SNIFF_BYTES]
    doctype = _DOCTYPE_NAME.search(head)
    if doctype:
        return doctype.group(1).decode("ascii", "replace")
    body = re.sub(rb"<\?.*?\?>|<!--.*?-->", b"", head, flags=re.S)
    root = _ROOT_NAME.search(body)
    return root.group(1).decode("ascii", "replace") if root else ""


def sniff_doc_number(xml: bytes) -> str:
    match = _PUBLICATION_NUMBER.search(xml)
    return match.group(1).decode("ascii") if match else ""


def _text(element: etree._Element | None) -> str:
    """All text inside an element (inline markup such as figref kept), whitespace normalised."""
    if element is None:
        return ""
    return " ".join("".join(element.itertext()).split())


def _child_text(parent: etree._Element | None, path: str) -> str:
    return _text(parent.find(path)) if parent is not None else ""


def _iso_date(raw: str, what: str, doc_number: str) -> str:
    if not re.fullmatch(r"\d{8}", raw):
        raise InvalidDocument(f"{what} {raw!r} is not a yyyymmdd date", doc_number)
    try:
        return date(int(raw[:4]), int(raw[4:6]), int(raw[6:])).isoformat()
    except ValueError as exc:
        raise InvalidDocument(f"{what} {raw!r} is not a valid date: {exc}", doc_number) from exc


def _int_or_none(raw: str) -> int | None:
    return int(raw) if raw.isdigit() else None


def _ipc_symbol(raw: str) -> str:
    """Old fixed-width IPC ("G06F015/00") to the usual form ("G06F 15/00")."""
    compact = " ".join(raw.split())
    match = _OLD_IPC.match(compact)
    return f"{match.group(1)} {int(match.group(2))}/{match.group(3)}" if match else compact


def _structured_symbol(element: etree._Element) -> str:
    """IPCR/CPC symbol from its parts: section+class+subclass, main-group/subgroup."""
    parts = [_child_text(element, tag) for tag in ("section", "class", "subclass")]
    group, subgroup = _child_text(element, "main-group"), _child_text(element, "subgroup")
    return f"{''.join(parts)} {group}/{subgroup}" if group else "".join(parts)


def _classifications(bib: etree._Element) -> list[str]:
    """The grant's own classifications, as prefixed strings, main before further.

    Only the bibliographic data's own elements: citations and the field of search hold
    classifications too, which are not this patent's.
    """
    found: list[str] = []
    for ipc in bib.findall("classification-ipc"):
        for tag in ("main-classification", "further-classification"):
            found += [f"IPC:{_ipc_symbol(_text(e))}" for e in ipc.findall(tag) if _text(e)]
    for ipcr in bib.findall("classifications-ipcr/classification-ipcr"):
        found.append(f"IPC:{_structured_symbol(ipcr)}")
    for path in ("classifications-cpc/main-cpc", "classifications-cpc/further-cpc"):
        for cpc in bib.findall(f"{path}/classification-cpc"):
            found.append(f"CPC:{_structured_symbol(cpc)}")
    for locarno in bib.findall("classification-locarno"):
        main = _child_text(locarno, "main-classification")
        if main:
            found.append(f"LOCARNO:{main}")
    for national in bib.findall("classification-national"):
        for tag in ("main-classification", "further-classification"):
            found += [f"USPC:{_text(e)}" for e in national.findall(tag) if _text(e)]
    return list(dict.fromkeys(found))


def _sheets(root: etree._Element) -> list[DrawingSheet]:
    sheets = []
    for figure in root.findall("drawings/figure"):
        img = figure.find("img")
        if img is None or not img.get("file"):
            continue
        num = _int_or_none((figure.get("num") or "").strip())
        if num is None:  # fall back on the file name's -Dnnnnn suffix
            match = re.search(r"-D(\d+)\.", img.get("file", ""), re.I)
            num = int(match.group(1)) if match else len(sheets)
        sheets.append(
            DrawingSheet(
                num=num,
                file=img.get("file", "").strip(),
                orientation=(img.get("orientation") or "portrait").strip().lower(),
                img_content=(img.get("img-content") or "drawing").strip().lower(),
            )
        )
    return sheets


@dataclass
class _Paragraph:
    text: str
    sections: frozenset[str]  # the PI-delimited sections it sits in (DETDESC, BRFSUM, ...)
    in_drawings_element: bool
    after_drawings: bool


def _description_paragraphs(description: etree._Element) -> list[_Paragraph]:
    """Walk the description in document order, tracking `<?NAME ... end="lead|tail"?>` sections."""
    paragraphs: list[_Paragraph] = []
    open_sections: set[str] = set()
    drawings_seen = False

    def walk(element: etree._Element, in_drawings: bool) -> None:
        nonlocal drawings_seen
        for node in element:
            if isinstance(node, etree._ProcessingInstruction):
                end = re.search(r'end\s*=\s*"(\w+)"', node.text or "")
                if end and end.group(1) == "lead":
                    open_sections.add(node.target)
                elif end and end.group(1) == "tail":
                    open_sections.discard(node.target)
                    if node.target == "brief-description-of-drawings":
                        drawings_seen = True
                continue
            if not isinstance(node.tag, str):
                continue
            if node.tag == "p":  # a paragraph's nested markup (tables, lists) stays in its text
                paragraphs.append(
                    _Paragraph(_text(node), frozenset(open_sections), in_drawings, drawings_seen)
                )
            elif node.tag == "description-of-drawings":
                walk(node, True)
                drawings_seen = True
            else:
                walk(node, in_drawings)

    walk(description, False)
    return [p for p in paragraphs if p.text]


def _brief_and_detailed(root: etree._Element) -> tuple[list[str], list[str]]:
    description = root.find("description")
    if description is None:
        return [], []
    paragraphs = _description_paragraphs(description)
    brief_pi = "brief-description-of-drawings"
    if any(p.in_drawings_element for p in paragraphs):
        brief = [p.text for p in paragraphs if p.in_drawings_element]
    else:  # some DTDs mark the section only with processing instructions
        brief = [p.text for p in paragraphs if brief_pi in p.sections]
    is_brief = [p.in_drawings_element or brief_pi in p.sections for p in paragraphs]

    if any(p.sections & _DETAILED_PIS for p in paragraphs):
        detailed = [p.text for p in paragraphs if p.sections & _DETAILED_PIS]
    elif brief:  # no DETDESC marks: what follows the drawings' description, outside other sections
        detailed = [
            p.text
            for p, in_brief in zip(paragraphs, is_brief, strict=True)
            if p.after_drawings and not in_brief and not p.sections
        ]
    else:
        detailed = [
            p.text
            for p, in_brief in zip(paragraphs, is_brief, strict=True)
            if not in_brief and not p.sections
        ]
    return brief, detailed


def _reject_entity_declarations(tree: etree._ElementTree, doc_number: str) -> None:
    internal = tree.docinfo.internalDTD
    if internal is None:
        return
    names = [entity.name for entity in internal.entities()]
    if names:
        raise InvalidDocument(f"{_ENTITY_REASON} ({', '.join(names[:5])})", doc_number)


def parse_grant(xml: bytes, source: str = "") -> GrantDocument:
    """Parse one `us-patent-grant` or `us-patent-application` document.

    An application's `grant_date` is its publication date, the date it becomes prior art.
    Raises `NotAGrant` for any other document type, `InvalidDocument` for a broken one.
    """
    doc_type = sniff_document_type(xml)
    if doc_type and doc_type not in DOCUMENT_ROOTS:
        raise NotAGrant(doc_type)
    sniffed_number = sniff_doc_number(xml)
    # Refuse entity declarations before libxml2 sees them (it would stop a billion-laughs
    # expansion itself, but with a less telling message); the parsed DTD is checked again below.
    root_start = _ROOT_START.search(xml)
    if _ENTITY_DECLARATION.search(xml, 0, root_start.start() if root_start else len(xml)):
        raise InvalidDocument(_ENTITY_REASON, sniffed_number)
    try:
        root = etree.fromstring(xml, _safe_parser())
    except etree.XMLSyntaxError as exc:
        raise InvalidDocument(f"malformed or truncated XML: {exc}", sniffed_number) from exc
    if root is None:
        raise InvalidDocument("empty XML document", sniffed_number)
    _reject_entity_declarations(root.getroottree(), sniffed_number)
    if root.tag not in DOCUMENT_ROOTS:
        raise NotAGrant(str(root.tag))

    document_kind, bib_tag = DOCUMENT_ROOTS[root.tag]
    bib = root.find(bib_tag)
    if bib is None:
        raise InvalidDocument(f"no <{bib_tag}>", sniffed_number)
    publication = bib.find("publication-reference/document-id")
    doc_number = _child_text(publication, "doc-number")
    kind = _child_text(publication, "kind")
    raw_date = _child_text(publication, "date")
    if not doc_number:
        raise InvalidDocument("no publication-reference doc-number")
    # The id names files and folders downstream: letters and digits only.
    for what, value in (("doc-number", doc_number), ("kind", kind)):
        if value and not _SAFE_ID_PART.match(value):
            raise InvalidDocument(f"{what} {value!r} is not alphanumeric", doc_number)
    if not raw_date:
        raise InvalidDocument("no publication-reference date", doc_number)
    grant_date = _iso_date(raw_date, "publication date", doc_number)

    application = bib.find("application-reference")
    brief, detailed = _brief_and_detailed(root)
    abstract = "\n".join(_text(p) for p in root.findall("abstract//p") if _text(p)) or _child_text(
        root, "abstract"
    )
    figures = bib.find("figures")
    return GrantDocument(
        patent_id=f"US{doc_number}{kind}",
        doc_number=doc_number,
        kind=kind,
        grant_date=grant_date,
        title=_child_text(bib, "invention-title"),
        dtd_version=(root.get("dtd-version") or "").strip(),
        application_type=(application.get("appl-type") or "").strip() if application is not None else "",
        abstract=abstract,
        classifications=_classifications(bib),
        brief_paragraphs=brief,
        detailed_paragraphs=detailed,
        claims=[_text(claim) for claim in root.findall("claims/claim") if _text(claim)],
        sheets=_sheets(root),
        number_of_sheets=_int_or_none(_child_text(figures, "number-of-drawing-sheets")),
        number_of_figures=_int_or_none(_child_text(figures, "number-of-figures")),
        source=source,
        document_kind=document_kind,
        synthetic=is_synthetic(root),
    )


def is_synthetic(root: etree._Element) -> bool:
    """Whether patentflow's generator wrote the document: it marks its XML with a processing
    instruction `<?patentflow synthetic="yes"?>`, which no USPTO file carries."""
    marks = root.xpath("processing-instruction('patentflow')")
    return any('synthetic="yes"' in (mark.text or "") for mark in marks)


@dataclass
class ParseReport:
    """What a concatenated file held: grants and applications kept (in `grants`), other document
    types skipped by type, rejections."""

    source: str
    documents: int = 0
    grants: list[GrantDocument] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    rejections: list[Rejection] = field(default_factory=list)


def document_item(source: str, offset: int, doc_number: str) -> str:
    """How a rejected document is named: its doc-number if readable, else where it sits."""
    return doc_number or f"{source}@{offset}"


def iter_parsed(
    documents: Iterable[tuple[int, bytes]], source: str, report: ParseReport
) -> Iterator[GrantDocument | Rejection]:
    """Parse each (offset, bytes) document, yielding grants and rejections in file order.

    Non-grant documents are counted in `report.skipped`; rejections are also kept in
    `report.rejections` (grants are not, so a streaming caller holds one at a time).
    """
    for offset, xml in documents:
        report.documents += 1
        try:
            grant = parse_grant(xml, source=f"{source}@{offset}")
        except NotAGrant as exc:
            report.skipped[exc.doc_type] += 1
            continue
        except InvalidDocument as exc:
            rejection = Rejection(
                item=document_item(source, offset, exc.doc_number),
                reason=f"{exc.reason} (document at byte {offset})",
                stage="xml",
                source=source,
            )
            report.rejections.append(rejection)
            yield rejection
            continue
        yield grant


def parse_concatenated(data: bytes, source: str) -> ParseReport:
    """Parse a whole concatenated file (or a single document) into a `ParseReport`."""
    report = ParseReport(source=source)
    for parsed in iter_parsed(split_documents(data), source, report):
        if isinstance(parsed, GrantDocument):
            report.grants.append(parsed)
    return report
