from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from patent_assets.records import FigureRecord, OcrWords
from patent_assets.splits import (
    assign_split,
    design_class,
    read_split,
    split_key,
    split_of_images,
    write_splits,
)
from tests.conftest import PROJECT

# Pinned: these must never change, or every published split moves.
PINNED = {
    "US11036660B2": "train",
    "US11036661B2": "test",
    "US11036666B2": "val",
    "USD0907292S1": "train",
    "US06970935B2": "val",
}


def _ids(count: int) -> list[str]:
    return [f"US{10_000_000 + n}B2" for n in range(count)]


def test_known_ids_have_known_splits() -> None:
    assert {patent: assign_split(patent) for patent in PINNED} == PINNED


def test_stable_across_processes() -> None:
    """A fresh interpreter (with a different PYTHONHASHSEED) gives the same splits."""
    code = (
        "import json; from patent_assets.splits import assign_split; "
        f"print(json.dumps({{p: assign_split(p) for p in {list(PINNED)!r}}}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        cwd=PROJECT,
    )
    assert out.stdout.strip() == json.dumps(PINNED)


def test_proportions_on_10k_ids() -> None:
    counts = Counter(assign_split(patent) for patent in _ids(10_000))
    assert 7_800 <= counts["train"] <= 8_200
    assert 900 <= counts["val"] <= 1_100
    assert 900 <= counts["test"] <= 1_100


def test_ratios_and_salt() -> None:
    ids = _ids(2_000)
    assert {assign_split(p, ratios=(1.0, 0.0, 0.0)) for p in ids} == {"train"}
    assert {assign_split(p, ratios=(0.0, 0.0, 1.0)) for p in ids} == {"test"}
    other = [assign_split(p, salt="another") for p in ids]
    assert other != [assign_split(p) for p in ids]  # the salt reshuffles
    with pytest.raises(ValueError, match="summing to 1"):
        assign_split("US1B2", ratios=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="empty"):
        assign_split("  ")


def test_adding_patents_never_moves_an_existing_one() -> None:
    before = split_of_images({p: [f"{p}__1"] for p in _ids(500)})
    after = split_of_images({p: [f"{p}__1"] for p in _ids(1_500)[::-1]})  # more patents, other order
    assert {image: after[image] for image in before} == before


def _record(patent: str, sheet: int) -> FigureRecord:
    return FigureRecord(
        image_id=f"{patent}__{sheet}",
        patent_id=patent,
        sheet=f"D{sheet:05d}",
        image_path=f"/images/{patent}__{sheet}.png",
        figure_labels=[f"FIG. {sheet}"],
        brief_description="FIG. 1 is a view.",
        detailed_description="",
        grant_date="2021-01-05",
        classifications=[],
        title="t",
        ocr=OcrWords(),
    )


def test_write_splits_files(tmp_path: Path) -> None:
    records = [_record(patent, sheet) for patent in _ids(300) for sheet in (1, 2, 3)]
    counts = write_splits(records, tmp_path)
    assert counts["all"] == 900 == counts["train"] + counts["val"] + counts["test"]
    files = {name: read_split(tmp_path, name) for name in ("all", "train", "val", "test")}
    for name, ids in files.items():
        assert ids == sorted(ids) and len(ids) == counts[name], name
    assert set(files["all"]) == set(files["train"]) | set(files["val"]) | set(files["test"])
    # No patent straddles splits: all three sheets of a patent are in the same file.
    split_of = {image: name for name in ("train", "val", "test") for image in files[name]}
    for patent in _ids(300):
        assert len({split_of[f"{patent}__{sheet}"] for sheet in (1, 2, 3)}) == 1
        assert split_of[f"{patent}__1"] == assign_split(patent)
    text = (tmp_path / "splits" / "all.txt").read_text()
    assert text.endswith("\n") and not text.startswith("\n")
    assert not list((tmp_path / "splits").glob(".*.tmp"))  # no temporary file left


def test_write_splits_from_mapping(tmp_path: Path) -> None:
    counts = write_splits({"US11036660B2": ["b", "a"], "US11036661B2": ["c"]}, tmp_path)
    assert counts == {"all": 3, "train": 2, "val": 0, "test": 1}
    assert read_split(tmp_path, "train") == ["a", "b"]
    assert (tmp_path / "splits" / "val.txt").read_text() == ""


def test_image_claimed_by_two_patents_is_an_error() -> None:
    with pytest.raises(ValueError, match="image X__1 belongs to both"):
        split_of_images({"US1B2": ["X__1"], "US2B2": ["X__1"]})


# ----------------------------------------------------------------- design siblings share a split


def _figure(patent: str, grant_date: str, classifications: list[str], sheet: int = 1) -> FigureRecord:
    return FigureRecord(
        image_id=f"{patent}__{sheet}",
        patent_id=patent,
        sheet=f"D{sheet:05d}",
        image_path=f"/images/{patent}__{sheet}.png",
        figure_labels=[],
        brief_description="",
        detailed_description="",
        grant_date=grant_date,
        classifications=classifications,
        title="t",
        ocr=OcrWords(),
    )


def test_design_class_reads_the_first_uspc_design_entry() -> None:
    assert design_class(["LOCARNO:1216", "USPC:D12209"]) == "D12"
    assert design_class(["USPC:D12 209"]) == "D12"
    assert design_class(["USPC:D 2973", "USPC:D2969"]) == "D2"  # padded to three characters
    assert design_class(["LOCARNO:0204", "USPC:D 5 32"]) == "D5"
    assert design_class(["uspc: d14341"]) == "D14"
    assert design_class(["LOCARNO:1216"]) == ""
    assert design_class(["USPC:248176.1"]) == ""  # a utility class
    assert design_class([]) == ""


def test_sibling_designs_share_a_split_whatever_their_ids() -> None:
    """Two designs of one USPC class granted the same day share a split key, and so a split; over
    200 such pairs with unrelated numbers, splitting by patent would part many of them. Classes
    are written as the USPTO does ("D 2973", "D12209") and with a space ("D12 209")."""
    records, pairs = [], []
    for n in range(200):
        date = f"20{10 + n % 12}-{1 + n % 12:02d}-{1 + n % 28:02d}"
        cls = f"D{1 + n % 34}"
        first, second = f"USD0{700_000 + 997 * n:06d}S1", f"USD0{950_000 - 613 * n:06d}S"
        records += [
            _figure(first, date, ["LOCARNO:1216", f"USPC:{cls:<3}{100 + n}"], sheet) for sheet in (1, 2)
        ]
        records.append(_figure(second, date, [f"USPC:{cls} {200 + n}"]))
        pairs.append((first, second))
        assert split_key(records[-1]) == split_key(records[-2]) == f"design-siblings:{date}:{cls}"
    splits = split_of_images(records)
    for first, second in pairs:
        assert splits[f"{first}__1"] == splits[f"{first}__2"] == splits[f"{second}__1"]
    assert sum(assign_split(first) != assign_split(second) for first, second in pairs) > 40
    assert {splits[f"{first}__1"] for first, _ in pairs} == {"train", "val", "test"}


def test_designs_of_another_day_or_class_and_utility_patents_are_keyed_apart() -> None:
    base = _figure("USD0929296S1", "2021-08-31", ["LOCARNO:1216", "USPC:D12209"])
    keys = {
        split_key(record)
        for record in (
            base,
            _figure("USD0929297S1", "2021-09-07", ["USPC:D12209"]),  # a week later
            _figure("USD0929298S1", "2021-08-31", ["USPC:D13209"]),  # another class
            _figure("USD0929299S1", "2021-08-31", ["LOCARNO:1216"]),  # no USPC class: its own
        )
    }
    assert keys == {
        "design-siblings:2021-08-31:D12",
        "design-siblings:2021-09-07:D12",
        "design-siblings:2021-08-31:D13",
        "USD0929299S1",
    }
    # Utility patents (and applications) are keyed by their patent whatever their classes and dates
    for patent in ("US11036660B2", "US11036661B2", "US20250204297A1"):
        record = _figure(patent, "2021-08-31", ["USPC:D12209", "CPC:F16M 13/02"])
        assert split_key(record) == patent
        assert split_of_images([record]) == {f"{patent}__1": assign_split(patent)}
    assert split_of_images([base]) == {"USD0929296S1__1": assign_split("design-siblings:2021-08-31:D12")}


def test_real_sibling_designs_share_a_split(realdata) -> None:
    """Grants parsed from the real USPTO XML: the two wheels (D12, 2021-08-31), the tablet
    computers (D14, 2021-08-17: the dental abutment granted that day is D24) and the shoes (D2,
    2021-05-04: the string light of that day is D26)."""
    from patent_assets.uspto_xml import parse_grant

    keys = {}
    for xml in sorted(realdata.glob("design_patents_with_drawings_2021*/USD*/*.XML")):
        document = parse_grant(xml.read_bytes())
        keys[document.patent_id] = split_key(
            _figure(document.patent_id, document.grant_date, document.classifications)
        )
    assert len(keys) >= 30
    assert keys["USD0929296S1"] == keys["USD0929297S1"] == "design-siblings:2021-08-31:D12"
    assert keys["USD0928144S1"] == keys["USD0928145S1"] != keys["USD0928323S1"]
    assert keys["USD0917866S1"] == keys["USD0917867S1"] != keys["USD0918440S1"]
    assert keys["USD0913174S1"] == keys["USD0913175S1"]  # consecutive numbers, one class and day
    assert keys["USD0930094S1"] == keys["USD0930095S1"]  # D21 725 and D21 743, one day
    assert keys["USD0907292S1"] == keys["USD0907293S1"] != keys["USD0909824S1"]
    assert keys["USD0909824S1"] != keys["USD0910059S1"]  # one day, D7 and D14


def test_the_real_design_grants_split_with_no_patent_or_sibling_group_on_both_sides(realdata) -> None:
    """The real validation set: every figure of a patent, and of its sibling designs, on one side;
    both sides non-empty on the 34 shared grants."""
    from patent_assets.uspto_xml import parse_grant

    records = []
    for xml in sorted(realdata.glob("design_patents_with_drawings_2021*/USD*/*.XML")):
        document = parse_grant(xml.read_bytes())
        for sheet in (1, 2, 3):
            records.append(_figure(document.patent_id, document.grant_date, document.classifications, sheet))
    split_of = split_of_images(records)
    sides: dict[str, set[str]] = {}
    for record in records:
        held_out = split_of[record.image_id] != "train"
        sides.setdefault(record.patent_id, set()).add(held_out)
        sides.setdefault(split_key(record), set()).add(held_out)
    assert all(len(side) == 1 for side in sides.values())
    held_out_patents = {r.patent_id for r in records if split_of[r.image_id] != "train"}
    assert 0 < len(held_out_patents) < len({r.patent_id for r in records})
