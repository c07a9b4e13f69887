"""Readers for the public patent-figure retrieval benchmarks, so that a user who has the data can
score an encoder on it with ``training.retrieval.metrics.evaluate_rankings``.

DeepPatent (WACV 2022, GoFigure-LANL/DeepPatent-dataset): per split a query list and a database
list (``{split}_query_patent.txt``, ``{split}_db_patent.txt``), one ``relative_png_path
label_int`` line per drawing; a label is a design patent. The task is to retrieve, for each
query drawing, the database drawings of the same patent (relevant = equal label).

UPAIR (ACM MM 2025, TIBHannover/upair): ``metadata.json`` maps a query image hash to
``{"query": {description, component_labels}, "candidates": [{hashcode, description,
component_labels}]}``; images are ``<hash>.png``; one TREC qrels file per relevance dimension
(``qrels_visual.txt``, ``qrels_semantic.txt``, ``qrels_part_whole.txt``: ``query 0 doc rel``).
Each query ranks only its own candidates.

Malformed input raises ``BenchmarkFormatError`` naming the file and, where there is one, the line.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

UPAIR_DIMENSIONS = ("visual", "semantic", "part_whole")


class BenchmarkFormatError(ValueError):
    """A benchmark file does not have the published format; the message names file and line."""

    def __init__(self, path: Path, reason: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line = line


# --------------------------------------------------------------------------- DeepPatent


@dataclass(frozen=True)
class DeepPatentItem:
    path: str  # relative to the image root, as the split list gives it
    label: int  # one label per design patent


@dataclass(frozen=True)
class DeepPatentSplit:
    queries: list[DeepPatentItem]
    database: list[DeepPatentItem]
    # query path -> {database path: 1} for every database drawing of the same label; a query
    # whose label has no database drawing gets an empty dict (skipped by the metrics).
    qrels: dict[str, dict[str, int]]
    image_root: Path | None = None

    def image_path(self, item: DeepPatentItem) -> Path:
        if self.image_root is None:
            raise ValueError("this split was read without an image_root")
        return self.image_root / item.path


def read_split_list(path: Path) -> list[DeepPatentItem]:
    """One DeepPatent split list: ``relative_png_path label_int`` per line (blank lines skipped)."""
    path = Path(path)
    items: list[DeepPatentItem] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if not text:
                continue
            parts = text.rsplit(maxsplit=1)  # the label is the last field
            if len(parts) != 2:
                raise BenchmarkFormatError(path, f"expected 'relative_png_path label', got {text!r}", number)
            image, label = parts
            try:
                label_int = int(label)
            except ValueError:
                raise BenchmarkFormatError(path, f"label {label!r} is not an integer", number) from None
            if image.startswith("/"):
                raise BenchmarkFormatError(
                    path, f"image path {image!r} is absolute, expected relative", number
                )
            if image in seen:
                raise BenchmarkFormatError(
                    path, f"{image!r} is listed again (first on line {seen[image]})", number
                )
            seen[image] = number
            items.append(DeepPatentItem(path=image, label=label_int))
    if not items:
        raise BenchmarkFormatError(path, "the split list is empty")
    return items


def deeppatent_qrels(
    queries: list[DeepPatentItem], database: list[DeepPatentItem]
) -> dict[str, dict[str, int]]:
    """Relevant = database drawings with the query's label, the query's own image excluded."""
    by_label: dict[int, list[str]] = defaultdict(list)
    for item in database:
        by_label[item.label].append(item.path)
    return {
        query.path: {path: 1 for path in by_label.get(query.label, ()) if path != query.path}
        for query in queries
    }


def read_deeppatent_split(
    query_file: Path, database_file: Path, image_root: Path | None = None
) -> DeepPatentSplit:
    """A query list and a database list of one split, and the qrels between them."""
    queries = read_split_list(query_file)
    database = read_split_list(database_file)
    return DeepPatentSplit(
        queries=queries,
        database=database,
        qrels=deeppatent_qrels(queries, database),
        image_root=Path(image_root) if image_root is not None else None,
    )


def read_deeppatent(data_dir: Path, split: str = "val", image_root: Path | None = None) -> DeepPatentSplit:
    """A split by the file names of the public release (``val_query_patent.txt``, ``val_db_patent.txt``)."""
    data_dir = Path(data_dir)
    return read_deeppatent_split(
        data_dir / f"{split}_query_patent.txt", data_dir / f"{split}_db_patent.txt", image_root
    )


# --------------------------------------------------------------------------- UPAIR


@dataclass(frozen=True)
class UpairFigure:
    hashcode: str
    description: str
    component_labels: str  # a list in the JSON is joined with ", "


@dataclass(frozen=True)
class UpairQuery:
    query: UpairFigure
    candidates: tuple[UpairFigure, ...]

    @property
    def candidate_ids(self) -> list[str]:
        return [candidate.hashcode for candidate in self.candidates]


@dataclass(frozen=True)
class UpairBenchmark:
    queries: dict[str, UpairQuery]  # query hash -> query and its candidates
    qrels: dict[str, dict[str, dict[str, int]]]  # dimension -> query hash -> {candidate hash: rel}
    image_dir: Path

    def image_path(self, hashcode: str) -> Path:
        return self.image_dir / f"{hashcode}.png"

    def missing_images(self) -> list[str]:
        """Hashes (queries and candidates) whose ``<hash>.png`` is not in ``image_dir``."""
        hashes = {h for q in self.queries.values() for h in [q.query.hashcode, *q.candidate_ids]}
        return sorted(h for h in hashes if not self.image_path(h).is_file())

    def restrict_to_candidates(self, run: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
        """Keep, for each query, only the scores of its own candidates (UPAIR ranks only those)."""
        restricted: dict[str, dict[str, float]] = {}
        for query_id, scores in run.items():
            if query_id not in self.queries:
                raise ValueError(f"run query {query_id!r} is not a UPAIR query")
            allowed = set(self.queries[query_id].candidate_ids)
            restricted[query_id] = {doc: score for doc, score in scores.items() if doc in allowed}
        return restricted


def read_trec_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Standard 4-column TREC qrels (``query_id iteration doc_id relevance``)."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 4:
                raise BenchmarkFormatError(
                    path, f"expected 4 columns 'query iteration doc relevance', got {len(fields)}", number
                )
            query_id, _iteration, doc_id, relevance = fields
            try:
                relevance_int = int(relevance)
            except ValueError:
                raise BenchmarkFormatError(
                    path, f"relevance {relevance!r} is not an integer", number
                ) from None
            if doc_id in qrels[query_id] and qrels[query_id][doc_id] != relevance_int:
                raise BenchmarkFormatError(
                    path, f"query {query_id} doc {doc_id} judged again with a different relevance", number
                )
            qrels[query_id][doc_id] = relevance_int
    return dict(qrels)


def _figure(path: Path, where: str, data: object) -> UpairFigure:
    if not isinstance(data, dict):
        raise BenchmarkFormatError(path, f"{where}: expected an object, got {type(data).__name__}")
    hashcode = data.get("hashcode", "")
    labels = data.get("component_labels", "")
    if isinstance(labels, list):
        labels = ", ".join(str(label) for label in labels)
    description = data.get("description", "")
    if not isinstance(description, str) or not isinstance(labels, str) or not isinstance(hashcode, str):
        raise BenchmarkFormatError(path, f"{where}: hashcode, description and component_labels must be text")
    return UpairFigure(hashcode=hashcode, description=description, component_labels=labels)


def read_upair_metadata(path: Path) -> dict[str, UpairQuery]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BenchmarkFormatError(path, f"not valid JSON: {error.msg}", error.lineno) from None
    if not isinstance(data, dict):
        raise BenchmarkFormatError(path, "expected an object of query hash -> {query, candidates}")
    queries: dict[str, UpairQuery] = {}
    for query_hash, entry in data.items():
        if not isinstance(entry, dict) or "query" not in entry or "candidates" not in entry:
            raise BenchmarkFormatError(path, f"query {query_hash}: expected keys 'query' and 'candidates'")
        if not isinstance(entry["candidates"], list) or not entry["candidates"]:
            raise BenchmarkFormatError(path, f"query {query_hash}: 'candidates' must be a non-empty list")
        query = _figure(path, f"query {query_hash}", {"hashcode": query_hash, **entry["query"]})
        candidates = tuple(
            _figure(path, f"query {query_hash} candidate {i}", candidate)
            for i, candidate in enumerate(entry["candidates"])
        )
        for i, candidate in enumerate(candidates):
            if not candidate.hashcode:
                raise BenchmarkFormatError(path, f"query {query_hash} candidate {i}: no 'hashcode'")
        queries[query_hash] = UpairQuery(query=query, candidates=candidates)
    if not queries:
        raise BenchmarkFormatError(path, "no queries")
    return queries


def _check_qrels_against_candidates(
    path: Path, qrels: dict[str, dict[str, int]], queries: dict[str, UpairQuery]
) -> None:
    # Re-read for line numbers only when something is wrong (rare), so the fast path stays simple.
    candidate_sets = {q: set(entry.candidate_ids) for q, entry in queries.items()}
    for query_id, judged in qrels.items():
        bad = query_id not in queries or any(doc not in candidate_sets[query_id] for doc in judged)
        if not bad:
            continue
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                fields = line.split()
                if not fields or fields[0] != query_id:
                    continue
                if query_id not in queries:
                    raise BenchmarkFormatError(path, f"query {query_id} is not in metadata.json", number)
                if fields[2] not in candidate_sets[query_id]:
                    raise BenchmarkFormatError(
                        path, f"document {fields[2]} is not a candidate of query {query_id}", number
                    )


def read_upair(
    root: Path,
    *,
    metadata: str = "metadata.json",
    qrels_dir: Path | None = None,
    image_dir: Path | None = None,
    dimensions: tuple[str, ...] = UPAIR_DIMENSIONS,
) -> UpairBenchmark:
    """UPAIR from ``root/metadata.json``, ``qrels_dir/qrels_<dimension>.txt`` (default ``root``)
    and images under ``image_dir`` (default ``root/images``; use ``missing_images`` to check).

    Every judged query must be in the metadata and every judged document one of its candidates.
    """
    root = Path(root)
    qrels_dir = Path(qrels_dir) if qrels_dir is not None else root
    queries = read_upair_metadata(root / metadata)
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for dimension in dimensions:
        path = qrels_dir / f"qrels_{dimension}.txt"
        if not path.is_file():
            raise BenchmarkFormatError(path, f"qrels of dimension {dimension!r} not found")
        dimension_qrels = read_trec_qrels(path)
        _check_qrels_against_candidates(path, dimension_qrels, queries)
        qrels[dimension] = dimension_qrels
    return UpairBenchmark(
        queries=queries,
        qrels=qrels,
        image_dir=Path(image_dir) if image_dir is not None else root / "images",
    )
