"""The synthetic releases: real USPTO layout, consistent XML, real TIFF format, readable labels."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import time
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytesseract
import pytest
from lxml import etree
from PIL import Image

from patent_assets import synthetic
from patent_assets.synthetic import SyntheticConfig

SAFE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
MEMBER = re.compile(r"^I(\d{8})/(UTIL\d{4}|DESIGN)/(US(D\d{7}|\d{8})-(\d{8}))\.ZIP$")


@dataclass
class Patent:
    member: str
    stem: str
    root: etree._Element
    files: dict[str, bytes]  # ZIP member name -> bytes


def read_release(tar_path: Path) -> list[Patent]:
    patents = []
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            match = MEMBER.match(member.name)
            assert match, f"unexpected tar member {member.name}"
            archive = zipfile.ZipFile(io.BytesIO(tar.extractfile(member).read()))
            stem = match.group(3)
            files = {name: archive.read(name) for name in archive.namelist()}
            root = etree.fromstring(files[f"{stem}/{stem}.XML"], SAFE_PARSER)
            patents.append(Patent(member.name, stem, root, files))
    return patents


def sheet_image(patent: Patent, img: etree._Element) -> Image.Image:
    return Image.open(io.BytesIO(patent.files[f"{patent.stem}/{img.get('file')}"]))


def brief_keys(root: etree._Element) -> set[str]:
    """FIG keys ("3", "3A", "7(a)") the brief description names, with ranges expanded."""
    keys: set[str] = set()
    letters = "ABCDEFGH"
    for paragraph in root.find(".//description-of-drawings").iter("p"):
        text = "".join(paragraph.itertext())
        for figref in paragraph.iter("figref"):
            keys.update(re.findall(r"\d+(?:[A-H](?![a-z])|\([a-h]\))?", figref.text))
        for number, first, last in re.findall(r"FIGS\. (\d+)([A-H])-(?:\d+)?([A-H])\b", text):
            keys.update(f"{number}{c}" for c in letters[letters.index(first) : letters.index(last) + 1])
        for number, first, last in re.findall(r"FIG\. (\d+)\(([a-h])\) to FIG\. \d+\(([a-h])\)", text):
            keys.update(f"{number}({c})" for c in "abcdefgh"[ord(first) - 97 : ord(last) - 96])
        if text.startswith("The FIGURE"):
            keys.add("FIGURE")
    return keys


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticConfig, list[Path], dict]:
    config = SyntheticConfig(releases=2, patents_per_release=10, seed=3)
    out = tmp_path_factory.mktemp("synthetic")
    paths = synthetic.generate(config, out)
    truth = synthetic.ground_truth([synthetic.plan_release(config, i) for i in range(config.releases)])
    return config, paths, truth


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    first = synthetic.generate_releases(tmp_path / "a", seed=5, releases=1, patents_per_release=3)
    again = synthetic.generate_releases(tmp_path / "b", seed=5, releases=1, patents_per_release=3)
    other = synthetic.generate_releases(tmp_path / "c", seed=6, releases=1, patents_per_release=3)
    digest = [hashlib.sha256(paths[0].read_bytes()).hexdigest() for paths in (first, again, other)]
    assert digest[0] == digest[1]
    assert digest[0] != digest[2]
    assert first[0].name == "I20240102.tar"


def test_weekly_tuesday_releases_in_the_uspto_layout(small) -> None:
    config, paths, _ = small
    assert [p.name for p in paths] == ["I20240102.tar", "I20240109.tar"]
    assert all(p.suffix == ".tar" and not p.with_name(p.name + ".tmp").exists() for p in paths)
    kinds = Counter()
    for tar_path, week in zip(paths, range(config.releases), strict=True):
        day = config.start + timedelta(weeks=week)
        assert day.weekday() == 1  # Tuesday
        patents = read_release(tar_path)
        assert len(patents) == config.patents_per_release
        for patent in patents:
            match = MEMBER.match(patent.member)
            assert match.group(1) == match.group(5) == f"{day:%Y%m%d}"
            assert (match.group(2) == "DESIGN") == match.group(4).startswith("D")
            assert all(name.startswith(f"{patent.stem}/") for name in patent.files)
            kind = patent.root.findtext("us-bibliographic-data-grant/publication-reference/document-id/kind")
            kinds[kind] += 1
    assert kinds["S1"] and kinds["B2"]  # designs and utility grants mixed
    assert set(kinds) <= {"S1", "B1", "B2"}


def test_xml_has_the_real_structure_and_consistent_counts(small) -> None:
    _config, paths, _ = small
    for tar_path in paths:
        for patent in read_release(tar_path):
            root, name = patent.root, patent.stem
            tree = root.getroottree()
            assert tree.docinfo.system_url == "us-patent-grant-v45-2014-04-03.dtd", name
            assert patent.files[f"{name}/{name}.XML"].startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
            assert root.tag == "us-patent-grant" and root.get("dtd-version") == "v4.5 2014-04-03"
            biblio = root.find("us-bibliographic-data-grant")
            publication = biblio.find("publication-reference/document-id")
            assert f"US{publication.findtext('doc-number')}-{publication.findtext('date')}" == name
            design = publication.findtext("kind") == "S1"
            application = biblio.find("application-reference")
            assert application.get("appl-type") == ("design" if design else "utility")
            assert application.findtext("document-id/date") < publication.findtext("date")
            assert (biblio.find("classification-locarno") is not None) == design
            assert (biblio.find("classifications-cpc/main-cpc/classification-cpc") is not None) != design
            assert (biblio.find("classifications-ipcr") is not None) != design
            assert biblio.findtext("invention-title")
            assert (root.find("abstract") is not None) != design

            images = root.findall("drawings/figure/img")
            assert int(biblio.findtext("figures/number-of-drawing-sheets")) == len(images) >= 1
            sheet_files = {n.split("/", 1)[1] for n in patent.files if n.endswith(".TIF")}
            assert {img.get("file") for img in images} == sheet_files  # no missing, no extra
            for number, figure in enumerate(root.findall("drawings/figure"), start=1):
                assert figure.get("num") == f"{number:05d}"
                assert figure.get("id") == f"Fig-EMI-D{number:05d}"
                img = figure.find("img")
                assert img.get("file") == f"{name}-D{number:05d}.TIF"
                assert (img.get("img-content"), img.get("img-format")) == ("drawing", "tif")

            description = root.find("description")
            instructions = [
                (pi.target, pi.get("end"))
                for pi in description
                if isinstance(pi, etree._ProcessingInstruction)
            ]
            assert ("brief-description-of-drawings", "lead") in instructions
            assert ("brief-description-of-drawings", "tail") in instructions
            drawings_block = description.find("description-of-drawings")
            lead = drawings_block.getprevious()
            assert lead.target == "brief-description-of-drawings" and lead.get("end") == "lead"
            assert drawings_block.getnext().get("end") == "tail"
            if not design:
                assert ("DETDESC", "lead") in instructions and ("DETDESC", "tail") in instructions
                assert any(p.find("figref") is not None for p in description.findall("p"))
                assert description.find("p/b") is not None  # reference numerals
            assert all(ref.get("idref") == "DRAWINGS" for ref in root.iter("figref"))
            assert root.findtext("us-claim-statement") and root.find("claims/claim/claim-text") is not None


def test_every_printed_label_is_described_and_figs_run_in_order(small) -> None:
    _config, paths, truth = small
    by_stem = {p["patent_dir"]: p for p in truth["patents"]}
    sole_seen = 0
    for tar_path in paths:
        for patent in read_release(tar_path):
            expected = by_stem[patent.stem]
            printed = [key for sheet in expected["sheets"] for key in sheet["figures_on_sheet"]]
            number_of_figures = int(patent.root.findtext(".//figures/number-of-figures"))
            keys = brief_keys(patent.root)
            if not printed:  # a sole unlabelled figure, described as "The FIGURE is ..."
                sole_seen += 1
                assert keys == {"FIGURE"} and number_of_figures == 1 and len(expected["sheets"]) == 1
                continue
            assert set(printed) == keys, patent.stem
            assert len(printed) == number_of_figures
            order = [(int(re.match(r"\d+", k).group()), k) for k in printed]
            assert order == sorted(order), f"{patent.stem}: FIGs out of order {printed}"
            for sheet in expected["sheets"]:
                assert all(label.upper().startswith("FIG. ") for label in sheet["printed_labels"])
    assert sole_seen >= 1
    styles = " ".join(" ".join(p["description_of_drawings"]) for p in truth["patents"])
    assert "thereof" in styles and "respectively" in styles


def test_sheets_are_one_bit_group4_300_dpi_and_landscape_is_stored_portrait(small) -> None:
    config, paths, _ = small
    landscape = 0
    for tar_path in paths:
        for patent in read_release(tar_path):
            for img in patent.root.iter("img"):
                image = sheet_image(patent, img)
                assert image.format == "TIFF" and image.mode == "1"
                assert image.info["compression"] == "group4" and image.info["dpi"] == (300, 300)
                assert image.size == (config.sheet_width, config.sheet_height)  # always portrait pixels
                assert img.get("he") == f"{config.sheet_height / 300 * 25.4:.2f}mm"
                if img.get("orientation") == "landscape":
                    landscape += 1
                # White background with black line art.
                histogram = image.convert("L").histogram()
                assert histogram[255] > 0.85 * sum(histogram) and histogram[0] > 0
    assert landscape >= 1


def test_objects_follow_a_long_tailed_class_distribution_and_drive_the_words() -> None:
    config = SyntheticConfig(releases=30, patents_per_release=10)
    patents = [p for i in range(config.releases) for p in synthetic.plan_release(config, i).patents]
    counts = Counter(p.object_class.name for p in patents)
    common, rare = counts.most_common()[0][1], counts.most_common()[-1][1]
    assert len(counts) >= 10 and common >= 4 * rare
    for patent in patents:
        text = " ".join(patent.brief_paragraphs)
        assert patent.object_class.name in text
        assert (
            all(part in " ".join(patent.detailed_paragraphs) for part in patent.part_numerals)
            or not patent.detailed_paragraphs
        )


def test_bad_config_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="patents_per_release"):
        SyntheticConfig(patents_per_release=0)
    with pytest.raises(ValueError, match="300x300"):
        SyntheticConfig(sheet_width=100)


def _read_labels(item: tuple[str, Image.Image]) -> tuple[str, str]:
    name, image = item
    data = pytesseract.image_to_data(
        image.convert("L"), config="--psm 11", output_type=pytesseract.Output.DICT
    )
    return name, "".join(word for word in data["text"] if word.strip()).upper()


def test_tesseract_reads_most_printed_fig_labels(tmp_path: Path) -> None:
    config = SyntheticConfig(releases=1)
    started = time.perf_counter()
    (tar_path,) = synthetic.generate(config, tmp_path)
    generated_in = time.perf_counter() - started
    truth = synthetic.ground_truth([synthetic.plan_release(config, 0)])
    labels = {s["file"].rsplit("/", 1)[1]: s["printed_labels"] for p in truth["patents"] for s in p["sheets"]}
    sheets = []
    for patent in read_release(tar_path):
        for img in patent.root.iter("img"):
            image = sheet_image(patent, img)
            if img.get("orientation") == "landscape":
                image = image.transpose(Image.Transpose.ROTATE_90)  # the top was at the right
                assert image.width > image.height
            sheets.append((img.get("file"), image))
    with ThreadPoolExecutor(2) as pool:
        read = dict(pool.map(_read_labels, sheets))
    expected = [(name, label) for name, printed in labels.items() for label in printed]
    found = [(name, label) for name, label in expected if label.replace(" ", "").upper() in read[name]]
    print(f"generated 1 release in {generated_in:.2f}s; tesseract read {len(found)}/{len(expected)} labels")
    assert len(expected) >= 15
    assert len(found) >= 0.75 * len(expected), sorted(set(expected) - set(found))


def test_generate_default_and_its_size(tmp_path: Path) -> None:
    paths = synthetic.generate_default(tmp_path)
    config = SyntheticConfig()
    assert (
        len(paths) == config.releases and paths[-1].name == f"I{config.start + timedelta(weeks=2):%Y%m%d}.tar"
    )
    sheets = sum(len(p.root.findall("drawings/figure")) for path in paths for p in read_release(path))
    assert 50 <= sheets <= 120  # small enough to OCR in minutes on 2 cores
    assert config.start == date(2024, 1, 2)
