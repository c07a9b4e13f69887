"""`patent_assets/records.py`, the one owner of atomic writes and swaps (readers never see half a
file or half a directory, and nothing is left beside the target) and of reading a figures.jsonl
that may hold bad lines (each left out with its reason, the rest go on)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from patent_assets.records import Rejection, atomic_write, read_figure_rows, replace_path


def _listing(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


@pytest.mark.parametrize("fsync", [True, False])
def test_atomic_write_renames_a_complete_file_into_place(tmp_path: Path, fsync: bool) -> None:
    target = tmp_path / "deep" / "out.bin"
    with atomic_write(target, "wb", fsync=fsync) as handle:
        handle.write(b"payload")
        assert not target.exists()  # still under its temporary name
    assert target.read_bytes() == b"payload"
    assert _listing(tmp_path) == ["deep", "deep/out.bin"]


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert _listing(tmp_path) == ["out.txt"]


def test_replace_path_swaps_a_directory_over_a_full_one(tmp_path: Path) -> None:
    target, new = tmp_path / "index", tmp_path / ".staging"
    (target / "old").mkdir(parents=True)
    (target / "old" / "a.bin").write_bytes(b"old")
    new.mkdir()
    (new / "b.bin").write_bytes(b"new")
    assert replace_path(new, target) == target
    assert _listing(tmp_path) == ["index", "index/b.bin"]  # the old one is gone, not kept aside


def test_replace_path_swaps_a_file_and_fills_an_empty_place(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"old")
    (tmp_path / ".model.pt.tmp").write_bytes(b"new")
    replace_path(tmp_path / ".model.pt.tmp", tmp_path / "model.pt")
    (tmp_path / ".fresh").mkdir()
    replace_path(tmp_path / ".fresh", tmp_path / "fresh")
    assert (tmp_path / "model.pt").read_bytes() == b"new"
    assert _listing(tmp_path) == ["fresh", "model.pt"]


def test_replace_path_puts_a_directory_where_a_file_was(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file")
    (tmp_path / ".out.new").mkdir()
    replace_path(tmp_path / ".out.new", tmp_path / "out")
    assert (tmp_path / "out").is_dir()
    assert _listing(tmp_path) == ["out"]


def _figures(path: Path, lines: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_read_figure_rows_leaves_out_each_bad_line_with_its_reason(tmp_path: Path) -> None:
    figures = _figures(
        tmp_path / "data" / "figures.jsonl",
        [
            {"image_id": "US1__1", "image_path": "images/1.png", "patent_id": "US1"},
            "{not json",
            "",  # blank lines are skipped, not rejected; line numbers stay those of the file
            ["a", "list"],
            {"image_path": "images/2.png"},
            {"image_id": "US3__1", "image_path": ""},
            {"image_id": "US1__1", "image_path": "images/other.png"},
            {"image_id": "US4__1", "image_path": "/abs/4.png"},
        ],
    )
    rows, rejected = read_figure_rows(figures, "inference")
    assert [(row["image_id"], row["image_path"]) for row in rows] == [
        ("US1__1", str(tmp_path / "data" / "images" / "1.png")),  # from the file's folder
        ("US4__1", "/abs/4.png"),
    ]
    assert rows[0]["patent_id"] == "US1"  # the other fields as they are
    source = str(figures)
    assert [(r.item, r.reason) for r in rejected if not r.reason.startswith("not JSON")] == [
        ("figures.jsonl:4", "not a JSON object"),
        ("figures.jsonl:5", "missing image_id"),
        ("US3__1", "missing image_path"),
        ("US1__1", "duplicate image_id"),  # the first one counts
    ]
    assert rejected[0].item == "figures.jsonl:2" and rejected[0].reason.startswith("not JSON")
    assert all(r.stage == "inference" and r.source == source for r in rejected)


def test_read_figure_rows_takes_more_fields_a_check_and_paths_as_written(tmp_path: Path) -> None:
    figures = _figures(
        tmp_path / "figures.jsonl",
        [
            {"image_id": "US1__1", "image_path": "1.png", "grant_date": "nope"},
            {"image_id": "US1__1", "image_path": "1.png", "patent_id": "US1", "grant_date": "nope"},
            # a repeat of a rejected line is no duplicate: it is the first usable one
            {"image_id": "US1__1", "image_path": "1.png", "patent_id": "US1", "grant_date": "2020-01-07"},
        ],
    )

    def undated(row: dict[str, Any]) -> str | None:
        return None if row["grant_date"][:2] == "20" else "no date"

    rows, rejected = read_figure_rows(
        figures,
        "index",
        required=("image_id", "patent_id", "image_path"),
        check=undated,
        resolve_images=False,
    )
    assert [row["image_path"] for row in rows] == ["1.png"]
    assert rejected == [
        Rejection("US1__1", "missing patent_id", "index", str(figures)),
        Rejection("US1__1", "no date", "index", str(figures)),
    ]
