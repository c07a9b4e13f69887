"""A content-addressed store for large artifacts (sheet images, OCR shards, checkpoints, indexes).

An artifact lives at `root/sha256/ab/cdef...<suffix>`: its path is a function of its bytes, so
assets pass paths and hashes instead of objects, and storing the same bytes twice is a no-op.
Every write goes to a temporary file in the destination directory and is renamed into place,
so a reader never sees half an artifact and a failed write leaves nothing behind. Concurrent
puts of the same content (threads or processes) are safe: each renames an identical file onto
the same name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK_SIZE = 1 << 20  # 1 MiB
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SUFFIX = re.compile(r"^(\.[A-Za-z0-9_\-]+)*$")  # "", ".png", ".tar.gz"


@dataclass(frozen=True)
class Artifact:
    path: Path
    sha256: str
    size: int


def file_chunks(path: Path | str) -> Iterator[bytes]:
    """A file's bytes in 1 MiB chunks: large enough to stream fast, small enough to keep memory flat."""
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            yield chunk


def sha256_file(path: Path | str) -> str:
    """The sha256 of a file, read in chunks. The one file hash of the project: the store's names,
    the OCR and feature caches, download checks and index manifests all use it."""
    digest = hashlib.sha256()
    for chunk in file_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def hash_tree(directory: Path) -> str:
    """A stable hash of a directory: its files' relative POSIX paths and their sha256.

    Independent of file order on disk, mtimes and permissions; empty directories do not count.
    Two trees hash equal exactly when they hold the same files with the same bytes, which is
    what an idempotent step needs to decide that its output is already up to date.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory}: not a directory, cannot hash it as a tree")
    files = sorted(
        (path.relative_to(directory).as_posix(), path) for path in directory.rglob("*") if path.is_file()
    )
    digest = hashlib.sha256()
    for relative, path in files:
        # NUL and newline cannot occur in a hex digest and separate the fields unambiguously.
        digest.update(f"{relative}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _check_sha256(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise ValueError(f"{sha256!r}: not a sha256 hex digest (64 lowercase hex characters)")
    return sha256


def _check_suffix(suffix: str) -> str:
    if not _SUFFIX.match(suffix):
        raise ValueError(f"{suffix!r}: a suffix must be empty or like '.png' / '.tar.gz'")
    return suffix


class ArtifactStore:
    """Content-addressed files under `root/sha256/`."""

    sha256_file = staticmethod(sha256_file)
    hash_tree = staticmethod(hash_tree)

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str, suffix: str = "") -> Path:
        """Where the artifact with this hash and suffix lives (whether or not it is stored yet)."""
        sha256 = _check_sha256(sha256)
        return self.root / "sha256" / sha256[:2] / f"{sha256[2:]}{_check_suffix(suffix)}"

    def has(self, sha256: str, suffix: str | None = None) -> bool:
        """Whether content with this hash is stored: with exactly `suffix`, or with any if None."""
        if suffix is not None:
            return self.path_for(sha256, suffix).is_file()
        shard = self.path_for(sha256).parent
        stem = _check_sha256(sha256)[2:]
        if not shard.is_dir():
            return False
        # A stored name is the 62-character stem plus an optional ".suffix"; temp files start with ".".
        return any(
            entry.name == stem or entry.name.startswith(stem + ".")
            for entry in shard.iterdir()
            if entry.is_file()
        )

    def put_file(self, src: Path, suffix: str = "", *, link: bool = False) -> Artifact:
        """Store a file's content. A no-op (apart from hashing) when the content is already stored.

        `link=True` hard-links instead of copying when src is on the same filesystem: cheaper for
        large files the caller will not modify afterwards (a later in-place edit of src would
        change the stored artifact too). The copy path re-hashes what it writes and fails if src
        changed in between, so a stored file always matches its name.
        """
        src = Path(src)
        if not src.is_file():
            raise FileNotFoundError(f"{src}: not a file, cannot store it")
        sha256 = sha256_file(src)
        target = self.path_for(sha256, suffix)
        if target.is_file():
            return Artifact(target, sha256, target.stat().st_size)
        if link and self._link_into_place(src, target):
            return Artifact(target, sha256, target.stat().st_size)
        return self._write_chunks(file_chunks(src), suffix, expected_sha256=sha256, source=str(src))

    def put_bytes(self, data: bytes, suffix: str = "") -> Artifact:
        """Store bytes held in memory."""
        sha256 = hashlib.sha256(data).hexdigest()
        target = self.path_for(sha256, suffix)
        if target.is_file():
            return Artifact(target, sha256, len(data))
        return self._write_chunks([data], suffix, expected_sha256=sha256, source="<bytes>")

    def put_stream(
        self, chunks: Iterable[bytes], suffix: str = "", *, expected_sha256: str | None = None
    ) -> Artifact:
        """Store a stream (a download, a generated file) in one pass, hashing as it is written.

        If the stream raises, or its hash differs from `expected_sha256`, nothing is stored.
        """
        return self._write_chunks(chunks, suffix, expected_sha256=expected_sha256, source="<stream>")

    def _write_chunks(
        self, chunks: Iterable[bytes], suffix: str, *, expected_sha256: str | None, source: str
    ) -> Artifact:
        _check_suffix(suffix)
        # The temp file sits in the shard directory of the expected hash when known (a same-directory
        # rename), else in root/tmp; both are on the store's filesystem, so the rename is atomic.
        staging = self.path_for(expected_sha256).parent if expected_sha256 else self.root / "tmp"
        staging.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=staging, prefix=".put-", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    digest.update(chunk)
                    handle.write(chunk)
                    size += len(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            sha256 = digest.hexdigest()
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise ValueError(
                    f"{source}: content hash {sha256} differs from the expected {expected_sha256} "
                    "(the source changed while being stored?)"
                )
            target = self.path_for(sha256, suffix)
            target.parent.mkdir(parents=True, exist_ok=True)
            # Stored artifacts are immutable: read-only guards against an accidental in-place edit.
            tmp.chmod(0o444)
            # Racing writers of the same content rename identical bytes onto the same name: harmless.
            os.replace(tmp, target)
            return Artifact(target, sha256, size)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _link_into_place(self, src: Path, target: Path) -> bool:
        """Hard-link src to target atomically; False when linking is impossible (other device)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".link-{os.getpid()}-{os.urandom(6).hex()}.tmp"
        try:
            os.link(src, tmp)
        except OSError:
            return False
        try:
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return True

    def remove_stale_temp_files(self, older_than_s: float = 3600.0) -> int:
        """Delete temp files a killed process left behind. Returns how many were removed.

        Only files older than `older_than_s` go, so that a write in progress elsewhere survives.
        """
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for tmp in self.root.glob("**/.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
        return removed
