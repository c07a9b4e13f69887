"""FAISS index over figure embeddings, with the prior-art date filter and the classification
filter done inside the search.

Figures get FAISS ids in grant-date order (stable sort by date, then figure id), so "granted
strictly before D" is always the id prefix [0, cutoff). The filter is an `IDSelectorRange`
passed in the search parameters of every index kind (flat, IVF, HNSW, IVF-PQ): FAISS never
scores a later figure, so a query gets its k best prior-art hits however few of them there are,
with no over-fetching and dropping. A classification prefix (`LOCARNO:14`, stored form) becomes
an `IDSelectorBitmap` over the same ids: the union of the per-class id lists made when the index
is loaded, cut at the date's prefix, so both filters are one selector that FAISS tests per id.

On disk an index is a directory: `index.faiss`, `metadata.jsonl` (one figure per line, in id
order) and `index.json` (kind, metric, dim, count, date range, file checksums), written to a
temporary directory and renamed into place.

`rerank_k_reciprocal` is k-reciprocal re-ranking (Zhong et al., CVPR 2017), as Wang & Zhang
(PRCV 2023) applied it to patent drawings with k1=10, k2=3, lambda=0.3.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import shutil
import tempfile
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from patent_assets.records import replace_path
from patent_assets.store import sha256_file

IndexKind = Literal["flat", "ivf", "hnsw", "ivfpq"]
Metric = Literal["ip", "l2"]
DateLike = str | date

INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.jsonl"
MANIFEST_FILE = "index.json"
FORMAT_VERSION = 1
# Class filters whose selections stay built: at 1M figures a bitmap is 125 kB, plus 4 bytes a member.
SELECTIONS_KEPT = 64


class IndexFileError(ValueError):
    """A saved index is missing a file, or a file is corrupt or inconsistent."""


@dataclass(frozen=True)
class FigureMeta:
    figure_id: str
    patent_id: str
    grant_date: str
    classes: list[str] = field(default_factory=list)  # stored form: LOCARNO:1403, CPC:A61C 8/00, ...
    description: str = ""  # what `patentflow search` prints: the brief description (or a title)
    image_path: str = ""
    # What the search page shows beside the figure (absent from indexes built before the page).
    title: str = ""
    brief_description: str = ""
    figure_labels: list[str] = field(default_factory=list)
    generated_description: str = ""  # PatentLMM's description of the figure, when it has one


@dataclass(frozen=True)
class Hit:
    figure_id: str
    patent_id: str
    grant_date: str  # ISO yyyy-mm-dd
    score: float  # cosine / inner product for metric "ip" (higher is better); squared L2 for "l2"
    rank: int  # 1-based
    description: str = ""
    image_path: str = ""
    title: str = ""
    classes: list[str] = field(default_factory=list)
    figure_labels: list[str] = field(default_factory=list)
    brief_description: str = ""
    generated_description: str = ""

    @classmethod
    def of(cls, figure: FigureMeta, score: float, rank: int) -> Hit:
        return cls(
            figure_id=figure.figure_id,
            patent_id=figure.patent_id,
            grant_date=figure.grant_date,
            score=float(score),
            rank=rank,
            description=figure.description,
            image_path=figure.image_path,
            title=figure.title,
            classes=list(figure.classes),
            figure_labels=list(figure.figure_labels),
            brief_description=figure.brief_description,
            generated_description=figure.generated_description,
        )


@dataclass
class IndexOptions:
    """Knobs of the approximate kinds; the flat index ignores them."""

    nlist: int | None = None  # IVF cells; None: about 4 sqrt(n), at least 39 training points a cell
    nprobe: int = 16  # IVF cells visited per query
    m: int = 8  # PQ sub-quantizers (must divide the dimension)
    nbits: int = 8  # bits per PQ code
    # ivfpq: re-score refine x k PQ candidates with the exact vectors, kept beside the codes
    # (FAISS IndexRefineFlat: memory of a flat index, recall near IVF's); 0: PQ scores as they are
    refine: int = 0
    hnsw_m: int = 32  # HNSW graph degree
    ef_construction: int = 80
    ef_search: int = 128


@dataclass
class KReciprocalConfig:
    k1: int = 10
    k2: int = 3
    lambda_value: float = 0.3
    pool: int = 100  # shortlist re-ranked per query, taken from the date-filtered search


def _iso_date(value: DateLike, what: str) -> str:
    if isinstance(value, date):
        return value.isoformat()
    try:
        return date.fromisoformat(str(value)).isoformat()
    except ValueError as error:
        raise ValueError(f"{what}: {value!r} is not an ISO date (yyyy-mm-dd)") from error


def _check_vectors(vectors: np.ndarray, dim: int | None, what: str, names: Sequence[str] | None = None):
    array = np.asarray(vectors)
    if array.ndim == 1 and what == "queries":
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array (n, d), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{what}: expected numbers, got dtype {array.dtype}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{what}: dimension {array.shape[1]} does not match the index's {dim}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad_rows.size:
        row = int(bad_rows[0])
        label = f"row {row}" + (f" (figure {names[row]})" if names is not None else "")
        raise ValueError(f"{what}: {bad_rows.size} row(s) hold NaN or infinite values, first {label}")
    return array


def _normalised(array: np.ndarray, what: str, names: Sequence[str] | None = None) -> np.ndarray:
    norms = np.linalg.norm(array, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        row = int(zero[0])
        label = f"row {row}" + (f" (figure {names[row]})" if names is not None else "")
        raise ValueError(f"{what}: {zero.size} zero vector(s) have no direction for cosine, first {label}")
    return np.ascontiguousarray(array / norms[:, None], dtype=np.float32)


def _metadata(rows: Sequence[dict[str, Any]]) -> list[FigureMeta]:
    figures: list[FigureMeta] = []
    seen: set[str] = set()
    for position, row in enumerate(rows):
        figure_id = str(row.get("figure_id") or "")
        if not figure_id:
            raise ValueError(f"metadata row {position}: missing figure_id")
        if figure_id in seen:
            raise ValueError(f"metadata row {position}: duplicate figure_id {figure_id}")
        seen.add(figure_id)
        if "grant_date" not in row:
            raise ValueError(f"metadata row {position} (figure {figure_id}): missing grant_date")
        figures.append(
            FigureMeta(
                figure_id=figure_id,
                patent_id=str(row.get("patent_id") or ""),
                grant_date=_iso_date(row["grant_date"], f"metadata row {position} (figure {figure_id})"),
                classes=_strings(row.get("classes")),
                description=str(row.get("description") or ""),
                image_path=str(row.get("image_path") or ""),
                title=str(row.get("title") or ""),
                brief_description=str(row.get("brief_description") or ""),
                figure_labels=_strings(row.get("figure_labels")),
                generated_description=str(row.get("generated_description") or ""),
            )
        )
    return figures


def _strings(value: Any) -> list[str]:
    """A metadata list field: absent is empty, a lone string is a list of one."""
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(item) for item in value]


def _per_query(value: Any, count: int, what: str, single: tuple[type, ...]) -> list[Any]:
    """One filter value for all queries, or one per query."""
    if value is None or isinstance(value, single):
        return [value] * count
    if len(value) != count:
        raise ValueError(f"{what}: {len(value)} values for {count} queries")
    return list(value)


def _class_members(figures: list[FigureMeta]) -> dict[str, np.ndarray]:
    """Each class's figure ids, ascending: what a classification filter unites into its bitmap."""
    members: dict[str, list[int]] = defaultdict(list)
    for position, figure in enumerate(figures):
        for name in dict.fromkeys(figure.classes):
            members[name].append(position)
    return {name: np.asarray(ids, dtype=np.int64) for name, ids in members.items()}


def _allowed(cutoff: int, selection: tuple[np.ndarray, np.ndarray] | None) -> int:
    """How many of the ids below `cutoff` a class selection keeps (all of them without one)."""
    return cutoff if selection is None else int(np.searchsorted(selection[0], cutoff))


def _default_nlist(count: int) -> int:
    # FAISS wants about 39 training points per centroid; 4 sqrt(n) is its usual cell count.
    return max(1, min(int(4 * math.sqrt(count)), count // 39))


class FigureIndex:
    """A FAISS index whose ids are positions in grant-date order, plus the figures' metadata."""

    def __init__(
        self,
        index: faiss.Index,
        figures: list[FigureMeta],
        kind: IndexKind,
        metric: Metric,
        options: IndexOptions,
    ) -> None:
        if index.ntotal != len(figures):
            raise ValueError(f"index holds {index.ntotal} vectors but metadata {len(figures)} figures")
        self.index = index
        self.figures = figures
        self.kind: IndexKind = kind
        self.metric: Metric = metric
        self.options = options
        self.dim = int(index.d)
        self._dates = [figure.grant_date for figure in figures]
        self._classes = _class_members(figures)
        self._class_names = sorted(self._classes)
        self._selections: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._gpu_index: Any = None
        self._gpu_resources: Any = None
        self._gpu_vectors: np.ndarray | None = None

    # ---- building -------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        metadata: Sequence[dict[str, Any]],
        kind: IndexKind = "flat",
        metric: Metric = "ip",
        options: IndexOptions | None = None,
        use_gpu: bool = False,
        **option_overrides: Any,
    ) -> FigureIndex:
        """Index `embeddings` (n, d); row i is the figure `metadata[i]`. Metric "ip" is cosine."""
        options = options or IndexOptions()
        for name, value in option_overrides.items():
            if not hasattr(options, name):
                raise TypeError(f"unknown index option {name!r}")
            setattr(options, name, value)
        if kind not in ("flat", "ivf", "hnsw", "ivfpq"):
            raise ValueError(f"unknown index kind {kind!r}: use flat, ivf, hnsw or ivfpq")
        if metric not in ("ip", "l2"):
            raise ValueError(f"unknown metric {metric!r}: use ip (cosine) or l2")
        figures = _metadata(metadata)
        names = [figure.figure_id for figure in figures]
        vectors = _check_vectors(embeddings, None, "embeddings", names)
        if vectors.shape[0] == 0:
            raise ValueError("embeddings: cannot build an index over zero figures")
        if vectors.shape[0] != len(figures):
            raise ValueError(f"embeddings has {vectors.shape[0]} rows but metadata {len(figures)} figures")
        if metric == "ip":
            vectors = _normalised(vectors, "embeddings", names)

        # Stable sort by (date, figure id): the prior-art set of any date is an id prefix.
        order = sorted(range(len(figures)), key=lambda i: (figures[i].grant_date, figures[i].figure_id))
        figures = [figures[i] for i in order]
        vectors = np.ascontiguousarray(vectors[order])

        index = cls._new_index(kind, metric, vectors.shape[1], vectors.shape[0], options)
        if not index.is_trained:
            index.train(vectors)
        index.add(vectors)
        built = cls(index, figures, kind, metric, options)
        if use_gpu:
            built.to_gpu()
        return built

    @staticmethod
    def _new_index(kind: IndexKind, metric: Metric, dim: int, count: int, options: IndexOptions):
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        if kind == "flat":
            return faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
        if kind == "hnsw":
            index = faiss.index_factory(dim, f"HNSW{options.hnsw_m},Flat", faiss_metric)
            index.hnsw.efConstruction = options.ef_construction
            index.hnsw.efSearch = options.ef_search
            return index
        nlist = options.nlist or _default_nlist(count)
        if nlist > count:
            raise ValueError(f"ivf: nlist {nlist} exceeds the {count} vectors to train on")
        if kind == "ivf":
            return faiss.index_factory(dim, f"IVF{nlist},Flat", faiss_metric)
        if dim % options.m:
            raise ValueError(f"ivfpq: m={options.m} sub-quantizers must divide the dimension {dim}")
        if count < 2**options.nbits:
            raise ValueError(f"ivfpq: {count} vectors cannot train 2^{options.nbits} PQ centroids")
        if options.refine < 0:
            raise ValueError(f"ivfpq: refine must be 0 (off) or a factor of k, got {options.refine}")
        # "np": no polysemous training; the search never uses it, and it tripled the build time.
        factory = f"IVF{nlist},PQ{options.m}x{options.nbits}np" + (",RFlat" if options.refine else "")
        return faiss.index_factory(dim, factory, faiss_metric)

    # ---- GPU ------------------------------------------------------------------------------------

    def to_gpu(self, device: int = 0) -> bool:
        """Use faiss-gpu for the flat index when a GPU is there; returns whether it now does.

        GPU indexes ignore `IDSelector`s, so a date-filtered query runs exact brute force
        (`knn_gpu`) over the allowed id prefix, which is contiguous by construction.
        """
        if self.kind != "flat" or not hasattr(faiss, "StandardGpuResources"):
            return False
        if faiss.get_num_gpus() <= 0:
            return False
        self._gpu_resources = faiss.StandardGpuResources()
        self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, device, self.index)
        # Host copy in id order: a filtered query hands knn_gpu the contiguous allowed prefix.
        self._gpu_vectors = self.index.reconstruct_n(0, self.index.ntotal)
        return True

    @property
    def on_gpu(self) -> bool:
        return self._gpu_index is not None

    # ---- searching ------------------------------------------------------------------------------

    def cutoff(self, before: DateLike | None) -> int:
        """Number of figures granted strictly before `before` (all of them for None)."""
        if before is None:
            return len(self._dates)
        return bisect.bisect_left(self._dates, _iso_date(before, "before"))

    def class_selection(self, prefix: str | None) -> tuple[np.ndarray, np.ndarray] | None:
        """(ids, bitmap) of the figures with a class starting with `prefix` (stored form, e.g.
        `LOCARNO:14`): the ids ascending and FAISS's one bit per id, little-endian bytes. None: no
        class filter. The last few prefixes asked are kept, so a page's repeated filter costs nothing."""
        if not prefix:
            return None
        if prefix in self._selections:
            self._selections.move_to_end(prefix)
            return self._selections[prefix]
        first = bisect.bisect_left(self._class_names, prefix)
        members = np.zeros(len(self.figures), dtype=bool)
        for name in self._class_names[first:]:
            if not name.startswith(prefix):
                break  # sorted: every name with the prefix comes in one run
            members[self._classes[name]] = True
        selection = np.flatnonzero(members).astype(np.int32), np.packbits(members, bitorder="little")
        self._selections[prefix] = selection
        if len(self._selections) > SELECTIONS_KEPT:
            self._selections.popitem(last=False)
        return selection

    def count_allowed(self, before: DateLike | None = None, classification: str | None = None) -> int:
        """How many figures pass both filters: granted strictly before `before`, with a class
        starting with `classification`."""
        return _allowed(self.cutoff(before), self.class_selection(classification))

    def _selector(self, cutoff: int, bitmap: np.ndarray | None) -> tuple[Any, list[Any]]:
        """The FAISS selector of ids below `cutoff` (and set in `bitmap`), and what it points into."""
        if bitmap is None:
            if cutoff >= self.index.ntotal:
                return None, []
            # IVF lists hold ids in increasing order (added in id order), so the range selector
            # may binary-search each list instead of testing every entry.
            return faiss.IDSelectorRange(0, cutoff, self.kind in ("ivf", "ivfpq")), []
        # The date's prefix cut into the class bitmap: one selector, tested once per candidate.
        prefix = np.ascontiguousarray(bitmap[: (cutoff + 7) // 8]).copy()
        if cutoff % 8:
            prefix[-1] &= (1 << (cutoff % 8)) - 1
        return faiss.IDSelectorBitmap(len(prefix), faiss.swig_ptr(prefix)), [prefix]

    def _nprobe(self, allowed: int, k: int) -> int:
        """IVF cells to visit: `options.nprobe`, or more when the filters keep few figures, so that
        the cells visited hold about 2k allowed figures (were the filter independent of the cells).
        A cell's entries that the selector refuses cost a bit test, not a distance."""
        nlist = faiss.extract_index_ivf(self.index).nlist
        wanted = math.ceil(2 * k * nlist / max(allowed, 1))
        return min(nlist, max(self.options.nprobe, wanted))

    def _search_params(self, cutoff: int, bitmap: np.ndarray | None = None, allowed: int = 0, k: int = 1):
        selector, keep_alive = self._selector(cutoff, bitmap)
        selection = {} if selector is None else {"sel": selector}
        if self.kind in ("ivf", "ivfpq"):
            nprobe = self._nprobe(allowed, k) if selector is not None else self.options.nprobe
            params = faiss.SearchParametersIVF(nprobe=nprobe, **selection)
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=self.options.ef_search, **selection)
        else:
            params = faiss.SearchParameters(**selection)
        keep_alive += [selector, params]  # FAISS holds raw pointers to these while it searches
        if isinstance(self.index, faiss.IndexRefine):
            # The filters and nprobe go to the PQ index; its refine x k candidates are re-scored.
            params = faiss.IndexRefineSearchParameters(
                k_factor=float(max(self.options.refine, 1)), base_index_params=params
            )
        return params, keep_alive

    def _raw_search(
        self,
        queries: np.ndarray,
        k: int,
        cutoff: int,
        bitmap: np.ndarray | None = None,
        allowed: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's (scores, ids) among ids below `cutoff` and set in `bitmap`; `allowed`: how many
        pass both (default: `cutoff`), which sets how many IVF cells a filtered query visits."""
        # GPU indexes ignore selectors: a class-filtered query runs on the CPU index, kept beside.
        if self.on_gpu and bitmap is None:
            if cutoff >= self.index.ntotal:
                return self._gpu_index.search(queries, k)
            faiss_metric = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
            return faiss.knn_gpu(
                self._gpu_resources, queries, self._gpu_vectors[:cutoff], min(k, cutoff), metric=faiss_metric
            )
        params, keep_alive = self._search_params(cutoff, bitmap, cutoff if allowed is None else allowed, k)
        # faiss.contrib.torch_utils (imported by pytorch-metric-learning) replaces `search` with a
        # wrapper that has no `params`; it keeps the original as `search_numpy`.
        search = getattr(self.index, "search_numpy", self.index.search)
        scores, ids = search(queries, k, params=params)
        del keep_alive
        return scores, ids

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        before: DateLike | Sequence[DateLike | None] | None = None,
        rerank: KReciprocalConfig | None = None,
        classification: str | Sequence[str | None] | None = None,
    ) -> list[list[Hit]]:
        """The k nearest figures of each query, only among those granted strictly before `before`
        and with a class starting with `classification` (stored form, e.g. `LOCARNO:14`).

        `before` and `classification` are one value for all queries or one per query (None: no
        filter). With `rerank`, each query's filtered shortlist of `rerank.pool` is re-ranked
        k-reciprocally.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        vectors = _check_vectors(queries, self.dim, "queries")
        if self.metric == "ip":
            vectors = _normalised(vectors, "queries")
        count = vectors.shape[0]
        cutoffs = [self.cutoff(value) for value in _per_query(before, count, "before", (str, date))]
        prefixes = _per_query(classification, count, "classification", (str,))

        fetch = max(k, rerank.pool) if rerank else k
        results: list[list[Hit]] = [[] for _ in range(count)]
        # One FAISS call per distinct pair of filters: queries that share them share a selector.
        for cutoff, prefix in dict.fromkeys(zip(cutoffs, prefixes, strict=True)):
            rows = [row for row in range(count) if (cutoffs[row], prefixes[row]) == (cutoff, prefix)]
            selection = self.class_selection(prefix)
            allowed = _allowed(cutoff, selection)
            if allowed == 0:
                continue  # nothing was granted before that date in that class
            bitmap = None if selection is None or len(selection[0]) == len(self.figures) else selection[1]
            scores, ids = self._raw_search(vectors[rows], min(fetch, allowed), cutoff, bitmap, allowed)
            for position, row in enumerate(rows):
                found = ids[position] >= 0  # -1: fewer allowed figures than asked for
                row_ids, row_scores = ids[position][found], scores[position][found]
                if rerank and row_ids.size > 1:
                    row_ids, row_scores = self._rerank(vectors[row], row_ids, rerank)
                results[row] = [
                    Hit.of(self.figures[i], score, rank)
                    for rank, (i, score) in enumerate(zip(row_ids[:k], row_scores[:k], strict=True), start=1)
                ]
        return results

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of `ids` (PQ codes decode to approximations, unless refined)."""
        if self.kind in ("ivf", "ivfpq") and not isinstance(self.index, faiss.IndexRefine):
            ivf = faiss.extract_index_ivf(self.index)
            if ivf.direct_map.type == faiss.DirectMap.NoMap:
                ivf.make_direct_map()
        return np.stack([self.index.reconstruct(int(i)) for i in ids]).astype(np.float32)

    def _rerank(
        self, query: np.ndarray, ids: np.ndarray, config: KReciprocalConfig
    ) -> tuple[np.ndarray, np.ndarray]:
        gallery = self.reconstruct(ids)
        distance = rerank_k_reciprocal(
            query[None, :], gallery, k1=config.k1, k2=config.k2, lambda_value=config.lambda_value
        )[0]
        order = np.argsort(distance, kind="stable")
        return ids[order], distance[order]  # scores become re-ranked distances (lower is better)

    # ---- persistence ----------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "metric": self.metric,
            "dim": self.dim,
            "count": len(self.figures),
            "first_grant_date": self._dates[0] if self._dates else None,
            "last_grant_date": self._dates[-1] if self._dates else None,
            "options": asdict(self.options),
            "faiss_version": faiss.__version__,
        }

    def save(self, directory: Path | str) -> Path:
        """Write the index directory atomically: readers see the old one or the whole new one."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
        try:
            faiss.write_index(self.index, str(staging / INDEX_FILE))
            with open(staging / METADATA_FILE, "w", encoding="utf-8") as handle:
                for figure in self.figures:
                    handle.write(json.dumps(asdict(figure), ensure_ascii=False) + "\n")
            manifest = self.manifest()
            manifest["sha256"] = {name: sha256_file(staging / name) for name in (INDEX_FILE, METADATA_FILE)}
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            for name in (INDEX_FILE, METADATA_FILE, MANIFEST_FILE):
                with open(staging / name, "rb") as handle:
                    os.fsync(handle.fileno())
            replace_path(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory: Path | str, use_gpu: bool = False) -> FigureIndex:
        directory = Path(directory)
        for name in (MANIFEST_FILE, INDEX_FILE, METADATA_FILE):
            if not (directory / name).is_file():
                raise IndexFileError(f"{directory / name}: missing (not a saved figure index?)")
        manifest_path = directory / MANIFEST_FILE
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            kind, metric, dim, count = (
                manifest["kind"],
                manifest["metric"],
                manifest["dim"],
                manifest["count"],
            )
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise IndexFileError(f"{manifest_path}: corrupt manifest ({error})") from error
        for name, expected in (manifest.get("sha256") or {}).items():
            if sha256_file(directory / name) != expected:
                raise IndexFileError(f"{directory / name}: corrupt (checksum differs from {MANIFEST_FILE})")

        index_path = directory / INDEX_FILE
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as error:
            raise IndexFileError(f"{index_path}: corrupt FAISS index ({error})") from error
        if index.d != dim or index.ntotal != count:
            raise IndexFileError(
                f"{index_path}: holds {index.ntotal} vectors of dim {index.d}, "
                f"{MANIFEST_FILE} says {count} of dim {dim}"
            )

        metadata_path = directory / METADATA_FILE
        rows: list[dict[str, Any]] = []
        with open(metadata_path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise IndexFileError(f"{metadata_path}:{number}: corrupt JSON ({error})") from error
        try:
            figures = _metadata(rows)
        except ValueError as error:
            raise IndexFileError(f"{metadata_path}: {error}") from error
        if len(figures) != count:
            raise IndexFileError(f"{metadata_path}: {len(figures)} figures, {MANIFEST_FILE} says {count}")
        dates = [figure.grant_date for figure in figures]
        if dates != sorted(dates):
            raise IndexFileError(f"{metadata_path}: figures are not in grant-date order")

        options = IndexOptions(**manifest.get("options", {}))
        loaded = cls(index, figures, kind, metric, options)
        if use_gpu:
            loaded.to_gpu()
        return loaded


def rerank_k_reciprocal(
    query_feats: np.ndarray,
    gallery_feats: np.ndarray,
    k1: int = 10,
    k2: int = 3,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017): (n_query, n_gallery) distances, lower is better.

    Queries and gallery form one neighbourhood graph. Each item's k1-reciprocal neighbours
    (expanded by its neighbours' k1/2-reciprocal sets that overlap by more than 2/3) become a
    Gaussian-weighted vector V; k2 averages V over the k2 nearest (local query expansion); the
    final distance is lambda * original + (1 - lambda) * Jaccard distance of the V vectors.
    """
    query = _check_vectors(query_feats, None, "query_feats").astype(np.float64)
    gallery = _check_vectors(gallery_feats, query.shape[1], "gallery_feats").astype(np.float64)
    if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"need k1 >= 1, k2 >= 1 and 0 <= lambda <= 1; got {k1}, {k2}, {lambda_value}")
    query_count = query.shape[0]
    features = np.concatenate([query, gallery])
    total = features.shape[0]
    k1 = min(k1, total - 1) if total > 1 else 1
    k2 = min(k2, total)

    squared = np.sum(features**2, axis=1)
    original = np.maximum(squared[:, None] + squared[None, :] - 2.0 * features @ features.T, 0.0)
    # As in the reference implementation: scale each column by its maximum, then transpose.
    original = (original / np.maximum(original.max(axis=0), 1e-12)).T
    initial_rank = np.argsort(original, axis=1, kind="stable")

    def reciprocal(item: int, k: int) -> np.ndarray:
        forward = initial_rank[item, : k + 1]
        backward = initial_rank[forward, : k + 1]
        return forward[np.any(backward == item, axis=1)]

    weights = np.zeros((total, total), dtype=np.float64)
    half_k1 = int(np.around(k1 / 2.0))
    for item in range(total):
        neighbours = reciprocal(item, k1)
        expansion = neighbours
        for candidate in neighbours:
            candidate_set = reciprocal(int(candidate), half_k1)
            if len(np.intersect1d(candidate_set, neighbours)) > 2.0 / 3.0 * len(candidate_set):
                expansion = np.append(expansion, candidate_set)
        expansion = np.unique(expansion)
        weight = np.exp(-original[item, expansion])
        weights[item, expansion] = weight / np.sum(weight)

    if k2 > 1:
        weights = np.stack([weights[initial_rank[item, :k2]].mean(axis=0) for item in range(total)])

    jaccard = np.zeros((query_count, total), dtype=np.float64)
    for item in range(query_count):
        nonzero = np.flatnonzero(weights[item])
        shared = np.minimum(weights[item, nonzero][None, :], weights[:, nonzero]).sum(axis=1)
        jaccard[item] = 1.0 - shared / (2.0 - shared)

    final = jaccard * (1.0 - lambda_value) + original[:query_count] * lambda_value
    return final[:, query_count:]
