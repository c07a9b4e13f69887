from __future__ import annotations

import json
from pathlib import Path

import pytest

from patent_assets.llava import escape_description, to_llava, write_llava
from patent_assets.records import FigureRecord, OcrWords


def _record(image_id: str, brief: str = "FIG. 1 is a view.", detailed: str = "A pump 10.") -> FigureRecord:
    return FigureRecord(
        image_id=image_id,
        patent_id=image_id.split("__")[0],
        sheet="D00001",
        image_path=f"/images/{image_id}.png",
        figure_labels=["FIG. 1"],
        brief_description=brief,
        detailed_description=detailed,
        grant_date="2021-01-05",
        classifications=[],
        title="Pump",
        ocr=OcrWords(words=["FIG.", "1"], boxes=[[10, 20, 30, 40], [35, 20, 45, 40]], width=800, height=1000),
    )


def test_exact_patentlmm_format() -> None:
    [entry] = to_llava([_record("US11036663B2__2")], "brief")
    assert entry == {
        "id": "US11036663B2__2",
        "image": "US11036663B2__2.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWrite a brief description for this patent image."},
            {"from": "gpt", "value": "FIG. 1 is a view."},
        ],
        "ocr": {
            "words": ["FIG.", "1"],
            "boxes": [[10, 20, 30, 40], [35, 20, 45, 40]],
            "width": 800,
            "height": 1000,
        },
    }
    [detailed] = to_llava([_record("US11036663B2__2")], "detailed", include_ocr=False)
    assert set(detailed) == {"id", "image", "conversations"}
    assert (
        detailed["conversations"][0]["value"]
        == "<image>\nWrite a detailed description for this patent image."
    )
    assert detailed["conversations"][1]["value"] == "A pump 10."


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("shows <image> here", "shows [[image]] here"),
        ("voltage < 5 V and > 2 V", "voltage [[ 5 V and ]] 2 V"),
        ("<im_start><im_patch><im_end>", "[[im_start]][[im_patch]][[im_end]]"),
        ("a <image-placeholder>", "a [[image-placeholder]]"),
        ("no tokens", "no tokens"),
    ],
)
def test_escape_as_patentlmm(raw: str, escaped: str) -> None:
    assert escape_description(raw) == escaped
    [entry] = to_llava([_record("US1B2__1", brief=raw)], "brief")
    gpt = entry["conversations"][1]["value"]
    assert gpt == escaped and "<" not in gpt and ">" not in gpt
    assert entry["conversations"][0]["value"].count("<image>") == 1  # only the prompt's own token


def test_empty_descriptions_are_left_out() -> None:
    records = [_record("US1B2__1"), _record("US1B2__2", brief="  "), _record("US1B2__3", detailed="")]
    assert [e["id"] for e in to_llava(records, "brief")] == ["US1B2__1", "US1B2__3"]
    assert [e["id"] for e in to_llava(records, "detailed")] == ["US1B2__1", "US1B2__2"]
    with pytest.raises(ValueError, match="kind must be one of"):
        to_llava(records, "long")  # type: ignore[arg-type]


def test_write_llava_files(tmp_path: Path) -> None:
    records = [
        _record("US1B2__1"),
        _record("US1B2__2", brief=""),
        _record("US2B2__1", detailed=""),
        _record("US3B2__1"),
        _record("US9B2__1"),  # not in any split
    ]
    splits = {"US1B2__1": "train", "US1B2__2": "train", "US2B2__1": "val", "US3B2__1": "test"}
    counts = write_llava(records, splits, tmp_path)
    assert counts == {
        "not_in_splits": 1,
        "empty_brief": 1,
        "empty_detailed": 1,
        "brief_train": 1,
        "brief_val": 1,
        "brief_test": 1,
        "detailed_train": 2,
        "detailed_val": 0,
        "detailed_test": 1,
    }
    folder = tmp_path / "llava_json"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{k}_{s}.json" for k in ("brief", "detailed") for s in ("train", "val", "test")
    )
    detailed_train = json.loads((folder / "detailed_train.json").read_text(encoding="utf-8"))
    assert [e["id"] for e in detailed_train] == ["US1B2__1", "US1B2__2"]
    assert json.loads((folder / "detailed_val.json").read_text()) == []
    assert json.loads((folder / "brief_test.json").read_text())[0]["image"] == "US3B2__1.png"


def test_write_llava_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duplicate image id US1B2__1"):
        write_llava([_record("US1B2__1"), _record("US1B2__1")], {"US1B2__1": "train"}, tmp_path)
    with pytest.raises(ValueError, match="image US1B2__1: unknown split 'dev'"):
        write_llava([_record("US1B2__1")], {"US1B2__1": "dev"}, tmp_path)
    assert not (tmp_path / "llava_json").exists()  # nothing half-written
