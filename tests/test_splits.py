from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from patent_assets.records import FigureRecord, OcrWords
from patent_assets.splits import assign_split, read_split, split_of_images, write_splits

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
        cwd=Path(__file__).resolve().parents[1],
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
