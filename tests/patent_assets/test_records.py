"""The one owner of atomic writes and swaps (`patent_assets/records.py`): readers never see half
a file or half a directory, and nothing is left beside the target."""

from __future__ import annotations

from pathlib import Path

import pytest

from patent_assets.records import atomic_write, replace_path


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
