"""The grant parser on the real USPTO files (grants DTD v4.0 to v4.5, applications v4.6) and on
hostile documents."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from patent_assets.documents import GrantDocument
from patent_assets.uspto_xml import (
    DocumentError,
    InvalidDocument,
    NotAGrant,
    iter_documents_from_lines,
    parse_concatenated,
    parse_grant,
    split_documents,
)

DESIGN_DIR = "design_patents_with_drawings_2021"
APPLICATIONS_DIR = "applications_with_drawings_2025"


def _single(realdata: Path, name: str) -> bytes:
    return (realdata / "uspto_xml" / "single_grants" / name).read_bytes()


def _count_text_paragraphs(xml: bytes) -> int:
    """<p> elements holding some text (a paragraph of only a chemistry image has none)."""
    bodies = re.findall(rb"<p(?:\s[^>]*)?>(.*?)</p>", xml, re.S)
    return sum(1 for body in bodies if re.sub(rb"<[^>]*>", b"", body).strip())


# file, patent_id, grant date, dtd-version, sheets in <drawings>, <number-of-drawing-sheets>, claims
SINGLE_GRANTS = [
    ("US06859910.xml", "US06859910B2", "2005-02-22", "v40 2004-12-02", 10, 9, 2),
    ("US06970935.xml", "US06970935B1", "2005-11-29", "v40 2004-12-02", 19, 18, 30),
    ("US07272630B2.xml", "US07272630B2", "2007-09-18", "v4.2 2006-08-23", 16, 15, 17),
    ("US08926509.xml", "US08926509B2", "2015-01-06", "v4.5 2014-04-03", 11, 10, 31),
    ("US08927118.xml", "US08927118B2", "2015-01-06", "v4.5 2014-04-03", 0, None, 45),
    ("US08930553.xml", "US08930553B2", "2015-01-06", "v4.5 2014-04-03", 6, 5, 8),
]


@pytest.mark.parametrize(
    ("name", "patent_id", "grant_date", "dtd", "sheets", "declared", "claims"), SINGLE_GRANTS
)
def test_single_grants_of_every_dtd(
    realdata: Path,
    name: str,
    patent_id: str,
    grant_date: str,
    dtd: str,
    sheets: int,
    declared: int | None,
    claims: int,
) -> None:
    xml = _single(realdata, name)
    grant = parse_grant(xml, source=name)
    assert (grant.patent_id, grant.grant_date, grant.dtd_version) == (patent_id, grant_date, dtd)
    assert grant.application_type == "utility"
    assert grant.title and grant.abstract
    assert len(grant.sheets) == sheets
    assert grant.number_of_sheets == declared
    assert len(grant.claims) == claims
    assert grant.source == name
    # Sheet numbers and files follow <figure num>, D00000 (front page) first.
    assert [s.sheet_id for s in grant.sheets] == [f"D{n:05d}" for n in range(sheets)]
    assert all(s.file.endswith(f"-{s.sheet_id}.TIF") and s.img_content == "drawing" for s in grant.sheets)
    # Brief paragraphs are exactly the <p> in <description-of-drawings>.
    brief_block = re.search(rb"<description-of-drawings>(.*?)</description-of-drawings>", xml, re.S)
    expected_brief = _count_text_paragraphs(brief_block.group(1)) if brief_block else 0
    assert len(grant.brief_paragraphs) == expected_brief
    # Detailed paragraphs are the <p> between the DETDESC marks, none of the brief ones.
    detdesc = re.search(rb'<\?DETDESC[^>]*end="lead"\?>(.*?)<\?DETDESC[^>]*end="tail"\?>', xml, re.S)
    assert len(grant.detailed_paragraphs) == _count_text_paragraphs(detdesc.group(1))
    assert not set(grant.detailed_paragraphs) & set(grant.brief_paragraphs)
    assert all(c.split(":", 1)[0] in {"IPC", "CPC", "USPC", "LOCARNO"} for c in grant.classifications)


def test_v40_text_and_old_ipc(realdata: Path) -> None:
    grant = parse_grant(_single(realdata, "US06859910.xml"))
    assert grant.brief_paragraphs[0] == "FIG. 1 describes an embodiment of conventional tunneling."
    assert grant.detailed_paragraphs[0].startswith("Tunneling is a method of transporting data")
    # The brief summary (BRFSUM) and related-application paragraphs are not the detailed description.
    assert not any("field of electronic commerce" in p for p in grant.detailed_paragraphs)
    assert grant.classifications[:2] == ["IPC:G06F 15/00", "IPC:G06F 17/00"]  # from "G06F015/00"
    assert "USPC:715513" in grant.classifications
    assert grant.number_of_figures == 10


def test_v45_cpc_main_and_further_not_field_of_search(realdata: Path) -> None:
    grant = parse_grant(_single(realdata, "US08926509.xml"))
    cpc = [c for c in grant.classifications if c.startswith("CPC:")]
    assert cpc[0] == "CPC:A61B 5/0205"  # <main-cpc> first
    assert "CPC:A61B 5/0024" in cpc  # a <further-cpc>
    assert "IPC:A61B 5/00" in grant.classifications
    assert len(cpc) == len(set(cpc))


def test_chemistry_grant_without_drawings(realdata: Path) -> None:
    grant = parse_grant(_single(realdata, "US08927118.xml"))
    assert grant.sheets == [] and grant.brief_paragraphs == []
    assert grant.number_of_sheets is None and grant.number_of_figures is None
    assert len(grant.detailed_paragraphs) > 100


def test_design_grants_brief_paragraphs_and_orientation(realdata: Path) -> None:
    labels = json.loads((realdata / DESIGN_DIR / "sheet_figure_labels.json").read_text())
    assert len(labels["patents"]) == 16
    landscape_total = 0
    for patent in labels["patents"]:
        folder = realdata / DESIGN_DIR / patent["patent_dir"]
        xml = (folder / f"{patent['patent_dir']}.XML").read_bytes()
        grant = parse_grant(xml)
        assert grant.patent_id == patent["publication"]
        assert grant.title == patent["title"]
        assert grant.application_type == "design"
        assert grant.brief_paragraphs == patent["description_of_drawings"]
        assert grant.detailed_paragraphs == []  # a design grant's description is its drawings' one
        assert grant.number_of_sheets == patent["number_of_drawing_sheets"]
        assert any(c.startswith("LOCARNO:") for c in grant.classifications)
        # Landscape exactly where the XML says so, portrait elsewhere.
        img_tags = re.findall(rb"<img [^>]*>", xml)
        landscape_files = {
            re.search(rb'file="([^"]+)"', tag).group(1).decode()
            for tag in img_tags
            if b'orientation="landscape"' in tag
        }
        assert {s.file for s in grant.sheets if s.orientation == "landscape"} == landscape_files
        assert {s.orientation for s in grant.sheets} <= {"portrait", "landscape"}
        landscape_total += len(landscape_files)
        assert [s.file.split("/")[-1] for s in grant.sheets] == [
            Path(s["file"]).name for s in patent["sheets"]
        ]
    assert landscape_total > 0  # the real set has landscape sheets: the check above bites


def test_brief_section_marked_only_by_processing_instructions(realdata: Path) -> None:
    xml = (realdata / DESIGN_DIR / "USD0909824-20210209" / "USD0909824-20210209.XML").read_bytes()
    with_element = parse_grant(xml)
    pi_only = parse_grant(
        xml.replace(b"<description-of-drawings>", b"").replace(b"</description-of-drawings>", b"")
    )
    assert len(with_element.brief_paragraphs) == 8
    assert pi_only.brief_paragraphs == with_element.brief_paragraphs
    assert with_element.brief_paragraphs[-1].startswith("The broken lines shown in FIGS. 1-7 represent")


def test_detailed_fallback_without_detdesc_marks(realdata: Path) -> None:
    xml = _single(realdata, "US06859910.xml")
    marked = parse_grant(xml)
    unmarked = parse_grant(re.sub(rb"<\?DETDESC[^>]*\?>", b"", xml))
    # Without DETDESC marks: the paragraphs after the drawings' description, outside other sections.
    assert unmarked.detailed_paragraphs == marked.detailed_paragraphs
    assert len(marked.detailed_paragraphs) == 36


def test_weekly_ipg_files_skip_sequence_listings(realdata: Path) -> None:
    for name, dtd in (("ipg060103.small.xml", "v4.1 2005-08-25"), ("ipg130416.small.xml", "v4.3 2012-12-04")):
        data = (realdata / "uspto_xml" / "concatenated_weekly_ipg" / name).read_bytes()
        report = parse_concatenated(data, name)
        assert report.documents == 27
        assert len(report.grants) == 25
        assert report.skipped == {"sequence-cwu": 2}
        assert report.rejections == []
        assert {g.dtd_version for g in report.grants} == {dtd}
        assert len({g.patent_id for g in report.grants}) == 25
        assert all(g.source.startswith(f"{name}@") for g in report.grants)
        assert sum(1 for g in report.grants if g.application_type == "design") == 2
        assert sum(1 for g in report.grants if g.brief_paragraphs and g.sheets) >= 20


def test_design_concatenated_with_truncated_last_document(realdata: Path) -> None:
    folder = realdata / "uspto_xml" / "design_grants_concatenated"
    small = parse_concatenated((folder / "ipg120327.18.xml").read_bytes(), "ipg120327.18.xml")
    assert (small.documents, len(small.grants), small.rejections) == (18, 18, [])

    name = "ipg151229.sax2pats_test.xml"
    data = (folder / name).read_bytes()
    report = parse_concatenated(data, name)
    assert report.documents == 147
    assert len(report.grants) == 146
    assert all(g.application_type == "design" and g.kind == "S1" for g in report.grants)
    [rejection] = report.rejections
    last_offset = data.rindex(b"<?xml")
    assert rejection.item == f"{name}@{last_offset}"  # no doc-number to read in a bare header
    assert rejection.stage == "xml" and rejection.source == name
    assert "truncated" in rejection.reason


def test_split_documents_matches_streaming_split(realdata: Path) -> None:
    path = realdata / "uspto_xml" / "concatenated_weekly_ipg" / "ipg060103.small.xml"
    data = path.read_bytes()
    pieces = list(split_documents(data))
    assert len(pieces) == 27
    assert b"".join(doc for _, doc in pieces) == data
    assert all(data[offset : offset + len(doc)] == doc for offset, doc in pieces)
    with path.open("rb") as handle:
        assert list(iter_documents_from_lines(handle)) == pieces


def test_split_documents_many_small_documents() -> None:
    one = b'<?xml version="1.0"?>\n<r/>\n'
    data = b"junk\n" + one * 50_000
    pieces = list(split_documents(data))
    assert len(pieces) == 50_001  # leading junk is reported as a document of its own
    assert pieces[0] == (0, b"junk\n")
    assert pieces[-1] == (len(data) - len(one), one)


def _minimal_grant(
    doc_number: str = "D0900001", grant_date: str = "20210105", extra_prolog: str = ""
) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE us-patent-grant SYSTEM "us-patent-grant-v45-2014-04-03.dtd" [ {extra_prolog} ]>
<us-patent-grant dtd-version="v4.5 2014-04-03"><us-bibliographic-data-grant>
<publication-reference><document-id><country>US</country><doc-number>{doc_number}</doc-number>
<kind>S1</kind><date>{grant_date}</date></document-id></publication-reference>
<invention-title>Thing</invention-title></us-bibliographic-data-grant></us-patent-grant>
""".encode()


def test_minimal_grant_parses() -> None:
    grant = parse_grant(_minimal_grant())
    assert isinstance(grant, GrantDocument)
    assert (grant.patent_id, grant.grant_date, grant.title) == ("USD0900001S1", "2021-01-05", "Thing")
    assert grant.document_kind == "grant"


def test_sequence_listing_is_not_a_grant(realdata: Path) -> None:
    data = (realdata / "uspto_xml" / "concatenated_weekly_ipg" / "ipg060103.small.xml").read_bytes()
    sequence = next(doc for _, doc in split_documents(data) if b"<!DOCTYPE sequence-cwu" in doc)
    with pytest.raises(NotAGrant) as caught:
        parse_grant(sequence)
    assert caught.value.doc_type == "sequence-cwu"
    assert isinstance(caught.value, DocumentError) and isinstance(caught.value, ValueError)
    # An application is parsed now: one without its bibliographic data is invalid, not skipped.
    with pytest.raises(InvalidDocument, match="no <us-bibliographic-data-application>"):
        parse_grant(b'<?xml version="1.0"?>\n<us-patent-application><x/></us-patent-application>')


def _application_xml(realdata: Path, stem: str) -> bytes:
    return (realdata / APPLICATIONS_DIR / stem / f"{stem}.XML").read_bytes()


def test_published_applications_parse_with_their_publication_date(realdata: Path) -> None:
    labels = json.loads((realdata / APPLICATIONS_DIR / "sheet_figure_labels.json").read_text())
    for patent in labels["patents"]:
        xml = _application_xml(realdata, patent["patent_dir"])
        document = parse_grant(xml, source=patent["patent_dir"])
        assert document.document_kind == "application"
        assert document.patent_id == patent["publication"] and document.kind == "A1"
        # The publication date (the prior-art date) is the folder name's date.
        published = patent["patent_dir"].rsplit("-", 1)[1]
        assert document.grant_date == f"{published[:4]}-{published[4:6]}-{published[6:]}"
        assert document.dtd_version == patent["dtd_version"] and document.application_type == "utility"
        assert document.title == patent["title"]
        # No <number-of-drawing-sheets> / <number-of-figures> in application XML.
        assert document.number_of_sheets is None and document.number_of_figures is None
        assert [s.sheet_id for s in document.sheets] == [s["sheet"] for s in patent["sheets"]]
        assert {s.sheet_id for s in document.sheets if s.orientation == "landscape"} == {
            s["sheet"] for s in patent["sheets"] if s["orientation"] == "landscape"
        }
        assert document.brief_paragraphs == [" ".join(p.split()) for p in patent["description_of_drawings"]]
        assert document.claims and document.abstract
        # The detailed description is marked <?detailed-description?> here, not <?DETDESC?>.
        assert len(document.detailed_paragraphs) > 20
        assert not set(document.detailed_paragraphs) & set(document.brief_paragraphs)
        assert any(c.startswith("CPC:") for c in document.classifications)


def test_applications_and_grants_in_one_file_other_types_skipped(realdata: Path) -> None:
    application = _application_xml(realdata, "US20250250937A1-20250807")
    weekly = (realdata / "uspto_xml" / "concatenated_weekly_ipg" / "ipg060103.small.xml").read_bytes()
    sequence = next(doc for _, doc in split_documents(weekly) if b"<!DOCTYPE sequence-cwu" in doc)
    report = parse_concatenated(_minimal_grant() + application + sequence, "mixed.xml")
    assert [(d.patent_id, d.document_kind) for d in report.grants] == [
        ("USD0900001S1", "grant"),
        ("US20250250937A1", "application"),
    ]
    assert report.skipped == {"sequence-cwu": 1} and report.rejections == []


BILLION_LAUGHS = (
    '<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(2, 10))
)


@pytest.mark.parametrize(
    ("xml", "reason"),
    [
        (_minimal_grant()[: len(_minimal_grant()) // 2], "malformed or truncated"),
        (_minimal_grant(doc_number=""), "no publication-reference doc-number"),
        (_minimal_grant(grant_date=""), "no publication-reference date"),
        (_minimal_grant(grant_date="20211345"), "not a valid date"),
        (_minimal_grant(doc_number="../../etc"), "not alphanumeric"),
        (_minimal_grant(extra_prolog=BILLION_LAUGHS).replace(b"Thing", b"&lol9;"), "declares entities"),
        (
            _minimal_grant(extra_prolog='<!ENTITY xxe SYSTEM "file:///etc/passwd">').replace(
                b"Thing", b"&xxe;"
            ),
            "declares entities",
        ),
        (b"", "empty|malformed"),
        (b"<?xml version='1.0'?>\n<!DOCTYPE us-patent-grant SYSTEM 'x.dtd' [ ]>\n", "truncated"),
    ],
)
def test_invalid_documents_are_refused_with_a_reason(xml: bytes, reason: str) -> None:
    with pytest.raises(InvalidDocument, match=reason) as caught:
        parse_grant(xml)
    assert isinstance(caught.value, DocumentError)


def test_truncated_grant_is_named_by_its_doc_number(realdata: Path) -> None:
    whole = _single(realdata, "US08930553.xml")
    data = _minimal_grant() + whole[: len(whole) // 2] + _minimal_grant("D0900002")
    report = parse_concatenated(data, "week.xml")
    assert [g.patent_id for g in report.grants] == ["USD0900001S1", "USD0900002S1"]
    [rejection] = report.rejections
    assert rejection.item == "08930553"
    assert "malformed or truncated" in rejection.reason
