from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from patent_assets.store import CHUNK_SIZE, ArtifactStore, hash_tree, sha256_file


def stored_files(store: ArtifactStore) -> list[Path]:
    return sorted(p for p in store.root.rglob("*") if p.is_file())


def temp_files(store: ArtifactStore) -> list[Path]:
    return [p for p in stored_files(store) if p.name.endswith(".tmp")]


def test_put_file_lands_at_its_content_address(tmp_path: Path) -> None:
    src = tmp_path / "sheet.png"
    src.write_bytes(b"\x89PNG fake sheet")
    store = ArtifactStore(tmp_path / "store")

    artifact = store.put_file(src, ".png")

    digest = hashlib.sha256(b"\x89PNG fake sheet").hexdigest()
    assert artifact.sha256 == digest
    assert artifact.size == len(b"\x89PNG fake sheet")
    assert artifact.path == tmp_path / "store" / "sha256" / digest[:2] / f"{digest[2:]}.png"
    assert artifact.path == store.path_for(digest, ".png")
    assert artifact.path.read_bytes() == src.read_bytes()
    assert store.has(digest) and store.has(digest, ".png")
    assert not store.has(digest, ".jpg")
    assert not store.has(hashlib.sha256(b"other").hexdigest())


def test_put_is_idempotent_and_identical_content_is_stored_once(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(b"same bytes")
    second.write_bytes(b"same bytes")

    one = store.put_file(first, ".bin")
    mtime = one.path.stat().st_mtime_ns
    two = store.put_file(second, ".bin")
    three = store.put_bytes(b"same bytes", ".bin")

    assert one == two == three
    assert one.path.stat().st_mtime_ns == mtime  # not rewritten: a no-op when present
    assert stored_files(store) == [one.path]


def test_put_bytes_and_hard_link(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    src = tmp_path / "checkpoint.pt"
    src.write_bytes(os.urandom(3 * CHUNK_SIZE + 17))  # spans several chunks

    linked = store.put_file(src, ".pt", link=True)

    assert linked.sha256 == sha256_file(src) == hashlib.sha256(src.read_bytes()).hexdigest()
    assert os.path.samefile(linked.path, src)  # a hard link, no second copy
    from_bytes = store.put_bytes(b"index", ".faiss")
    assert from_bytes.path.read_bytes() == b"index"


def test_a_failing_stream_leaves_nothing_behind(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")

    def interrupted_download() -> Iterator[bytes]:
        yield b"first half of the file"
        raise ConnectionError("connection reset mid-download")

    with pytest.raises(ConnectionError):
        store.put_stream(interrupted_download(), ".xml")
    with pytest.raises(ValueError, match="differs from the expected"):
        store.put_stream([b"tampered"], ".xml", expected_sha256=hashlib.sha256(b"original").hexdigest())

    assert temp_files(store) == []
    assert stored_files(store) == []
    assert not store.has(hashlib.sha256(b"first half of the file").hexdigest())


def test_put_stream_stores_a_complete_stream(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    chunks = [b"a" * CHUNK_SIZE, b"b" * 10]
    artifact = store.put_stream(iter(chunks), ".bin")
    assert artifact.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert artifact.size == CHUNK_SIZE + 10
    assert temp_files(store) == []


def test_bad_input_is_named(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        store.put_file(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="not a sha256"):
        store.path_for("abc")
    with pytest.raises(ValueError, match="suffix"):
        store.put_bytes(b"x", "../escape")


def test_concurrent_puts_of_the_same_content(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    payload = os.urandom(4 * CHUNK_SIZE)
    sources = []
    for index in range(8):
        src = tmp_path / f"copy{index}.bin"
        src.write_bytes(payload)
        sources.append(src)
    barrier = threading.Barrier(len(sources))
    results: list = []
    errors: list[BaseException] = []

    def put(src: Path) -> None:
        barrier.wait()  # start together to maximise the overlap
        try:
            results.append(store.put_file(src, ".bin"))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=put, args=(src,)) for src in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len({r.path for r in results}) == 1 and len(results) == len(sources)
    assert stored_files(store) == [results[0].path]
    assert results[0].path.read_bytes() == payload


def test_hash_tree_is_stable_and_sensitive(tmp_path: Path) -> None:
    def build(root: Path, order: list[str]) -> Path:
        for name in order:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"content of {name}")
        return root

    names = ["a.txt", "sub/b.txt", "sub/deeper/c.txt"]
    left = build(tmp_path / "left", names)
    right = build(tmp_path / "right", list(reversed(names)))
    assert hash_tree(left) == hash_tree(right) == ArtifactStore.hash_tree(left)

    (right / "sub" / "b.txt").write_text("changed")
    assert hash_tree(left) != hash_tree(right)

    renamed = build(tmp_path / "renamed", ["a.txt", "sub/b.txt"])
    (renamed / "sub" / "deeper").mkdir()
    (renamed / "sub" / "deeper" / "d.txt").write_text("content of sub/deeper/c.txt")
    assert hash_tree(renamed) != hash_tree(left)  # same bytes under another name differ

    with pytest.raises(NotADirectoryError):
        hash_tree(left / "a.txt")


def test_remove_stale_temp_files_spares_recent_ones(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    shard = tmp_path / "store" / "sha256" / "ab"
    shard.mkdir(parents=True)
    old, fresh = shard / ".put-old.tmp", shard / ".put-fresh.tmp"
    old.write_bytes(b"left by a killed process")
    fresh.write_bytes(b"being written now")
    os.utime(old, (0, 0))

    assert store.remove_stale_temp_files(older_than_s=60) == 1
    assert not old.exists() and fresh.exists()
