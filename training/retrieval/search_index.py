"""A search index over ingested figures: what `patentflow index` builds and `patentflow search` reads.

One directory holds everything a search needs, so that an index is a single versioned artifact:

    DIR/index.json       manifest: encoder, text encoder, counts, kind, evaluation, checksums
    DIR/encoder/         the image encoder that embedded the figures (queries use the same one)
    DIR/figures/         FigureIndex of the image embeddings              (--image queries),
                         fused with ink thumbnails when built with a thumbnail weight
    DIR/aligned/         FigureIndex of the same images in the text space  (--text queries)
    DIR/patents/         FigureIndex of each patent's title + abstract     (--text --patents)
    DIR/rejected.jsonl   figures left out, each with the reason

`aligned/` exists because the encoder is trained to align its image embeddings with a frozen text
encoder (Lo et al., 2024): a text query is embedded by that text encoder and searched among the
images' projections. `patents/` is PatentCL's patent-level text search. Every FigureIndex sorts by
grant date, so the prior-art filter (`before`) and the classification filter work the same in all three.

Several views of one design are one query: each view is searched under the same filters and a
figure scores its best match among the views (max-score fusion, CombMAX). Each indexed figure is a
single view, so a front view found by the query's front view must not be diluted by its cosine to
the query's side view, as a mean of the views' embeddings would; and the fused top k is exact,
since a figure whose best view-score ranks it in the top k ranks in that view's own top k.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from patent_assets.classifications import class_prefix
from patent_assets.images import ImageLimits, load_sheet
from patent_assets.records import Rejection, read_figure_rows, replace_path, write_jsonl
from patent_assets.store import ArtifactStore
from training.retrieval import text_encoder
from training.retrieval.faiss_index import (
    DateLike,
    FigureIndex,
    FigureMeta,
    Hit,
    IndexFileError,
    IndexKind,
    IndexOptions,
    KReciprocalConfig,
)

if TYPE_CHECKING:
    from PIL import Image

    from training.retrieval.model import Embeddings, FigureEncoder

MANIFEST = "index.json"
ENCODER = "encoder"
FIGURES = "figures"
ALIGNED = "aligned"
PATENTS = "patents"
REJECTED = "rejected.jsonl"
FORMAT_VERSION = 1

# Image vectors are the encoder's alone by default: with the pretrained encoder, fusing ink
# thumbnails no longer pays on the real design grants (W 0.5: -0.008 same-patent mAP, -0.028
# prior-art; W 0.25: +0.010 and -0.006, a weight chosen on the grants it is reported on;
# benchmarks/retrieval_real.py, README). The from-scratch encoder needed W 0.5.
DEFAULT_THUMBNAIL_WEIGHT = 0.0
DEFAULT_THUMBNAIL_SIZE = 32
# The build's self-evaluation ranks at most this many queries (a seeded sample) this deep, so
# that indexing a million figures does not rank a million by a million.
EVALUATION_QUERIES = 1000
EVALUATION_DEPTH = 1000


@dataclass
class BuildResult:
    directory: Path
    manifest: dict[str, Any]
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def evaluation(self) -> dict[str, Any]:
        return self.manifest.get("evaluation", {})


def _undated(row: dict[str, Any]) -> str | None:
    """Why a figure cannot be placed in prior-art order, if it cannot."""
    try:
        date.fromisoformat(str(row.get("grant_date")))
    except ValueError:
        return f"grant_date {row.get('grant_date')!r} is not a date: cannot be placed in prior-art order"
    return None


def _patent_texts(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """One entry per patent: PatentCL's `title [SEP] abstract`; without an abstract (older
    figure files), the title and the patent's brief descriptions stand in for it."""
    by_patent: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_patent[row["patent_id"]].append(row)
    metadata, texts = [], []
    for patent_id, figures in sorted(by_patent.items()):
        first = figures[0]
        body = first.get("abstract") or " ".join(f.get("brief_description", "") for f in figures)
        title = first.get("title", "")
        metadata.append(
            {
                "figure_id": patent_id,
                "patent_id": patent_id,
                "grant_date": first["grant_date"],
                "classes": first.get("classifications", []),
                "description": title or body[:200],
            }
        )
        texts.append(f"{title} [SEP] {body}" if title else body)
    return metadata, texts


@dataclass(frozen=True)
class BuildOptions:
    """How `build_search_index` builds an index: the FAISS kind, the image vectors (thumbnail
    fusion), the self-evaluation, the text encoder, and how the images are read.

    `thumbnail_weight` > 0 fuses each image embedding with its ink thumbnail (`thumbnail_size`
    squared pixels): image search then scores (1 - w) x the encoder's cosine + w x the
    thumbnails' cosine (0: the encoder alone, the default). The evaluation ranks every figure as a
    query up to `evaluation_queries` (then a seeded sample), `EVALUATION_DEPTH` deep.
    `feature_cache`: read the backbone's pooled features from that content-addressed cache
    (`training.retrieval.features`), as training and the gate left them, when the encoder alone is indexed.
    `generated_descriptions`: PatentLMM's `{image_id: text}` (the `generated_descriptions` asset),
    kept with each figure's metadata so that a hit shows it; figures without one show none.
    """

    kind: IndexKind = "flat"
    index_options: IndexOptions | None = None
    text_encoder_dir: str | Path | None = None  # None: the embedded all-MiniLM-L6-v2
    encoder_source: str = ""  # where the encoder came from, for the manifest (default: its directory)
    thumbnail_weight: float = DEFAULT_THUMBNAIL_WEIGHT
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE
    evaluation_queries: int = EVALUATION_QUERIES
    feature_cache: str | Path | None = None
    generated_descriptions: str | Path | None = None
    batch_size: int = 32
    progress: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.thumbnail_weight < 1.0:
            raise ValueError(f"the thumbnail weight must be in [0, 1), got {self.thumbnail_weight}")
        if self.thumbnail_size < 32:
            raise ValueError(f"the thumbnail size must be at least 32 pixels, got {self.thumbnail_size}")
        if self.evaluation_queries < 1:
            raise ValueError(f"evaluation_queries must be at least 1, got {self.evaluation_queries}")


@dataclass
class IndexContents:
    """What the three FigureIndexes of a build hold, and the evaluation its manifest reports."""

    figures: list[dict[str, Any]]  # metadata of each figure indexed, figures/ and aligned/ alike
    image_vectors: np.ndarray  # figures/: the encoder's embeddings, fused with thumbnails when weighted
    aligned_vectors: np.ndarray  # aligned/: the same images projected into the text space
    encoder_dim: int  # the encoder's embedding alone, before any fusion
    patents: list[dict[str, Any]]  # patents/: metadata of each patent
    patent_vectors: np.ndarray  # their title + abstract, embedded by the text encoder
    evaluation: dict[str, Any]


def build_search_index(
    figures_jsonl: Path,
    encoder_dir: Path,
    out_dir: Path,
    options: BuildOptions | None = None,
    encoder: FigureEncoder | None = None,
) -> BuildResult:
    """Embed every figure of `figures_jsonl` with the encoder at `encoder_dir` (`encoder`: that
    directory already loaded), index the image embeddings, their text-space projections and the
    patents' texts, evaluate same-patent retrieval over the collection, and write it all (the
    encoder directory too) to `out_dir` atomically."""
    from training.retrieval.model import load_encoder

    options = options or BuildOptions()
    figures_jsonl, encoder_dir, out_dir = Path(figures_jsonl), Path(encoder_dir), Path(out_dir)
    rows, rejected = _read_figures(figures_jsonl)
    generated = read_generated_descriptions(options.generated_descriptions)  # before the long part
    encoder = encoder if encoder is not None else load_encoder(encoder_dir)
    embedded = _embed_images(encoder, [row["image_path"] for row in rows], options)
    for position, reason in sorted(embedded.failed.items()):
        rejected.append(Rejection(rows[position]["image_id"], reason, "index", str(figures_jsonl)))
    rows = [rows[position] for position in embedded.kept]
    if not rows:
        raise ValueError(f"{figures_jsonl}: no figure could be indexed ({len(rejected)} rejected)")
    contents = _index_contents(rows, embedded, options, generated)
    manifest = _write_index(out_dir, encoder_dir, figures_jsonl, contents, rejected, options)
    return BuildResult(out_dir, manifest, rejected)


def read_generated_descriptions(path: str | Path | None) -> dict[str, str]:
    """PatentLMM's `{image_id: text}` file (none: empty); a file that is not one is an error naming it."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such generated-descriptions file ({{image_id: text}} JSON)")
    try:
        texts = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not JSON ({error})") from error
    if not isinstance(texts, dict) or not all(isinstance(text, str) for text in texts.values()):
        raise ValueError(f"{path}: expected a JSON object of image_id -> description text")
    return {str(image_id): text.strip() for image_id, text in texts.items()}


def _read_figures(figures_jsonl: Path) -> tuple[list[dict[str, Any]], list[Rejection]]:
    """The rows of `figures_jsonl` that name an image, a patent and a grant date; the others rejected."""
    if not figures_jsonl.is_file():
        raise FileNotFoundError(f"{figures_jsonl}: no such figures file (write one with `patentflow ingest`)")
    return read_figure_rows(
        figures_jsonl,
        "index",
        required=("image_id", "patent_id", "image_path"),
        check=_undated,
        # As written, as the index always took it: `patentflow ingest --out DIR` writes image paths
        # relative to its working directory, not to DIR.
        resolve_images=False,
    )


def _embed_images(model: FigureEncoder, paths: list[str], options: BuildOptions) -> Embeddings:
    """The encoder's `Embeddings` of every image, with its ink thumbnail when fused; the encoder
    alone reads the backbone's pooled features from the feature cache when there is one."""
    from training.retrieval.model import Embeddings, embed_images

    if options.feature_cache is not None and options.thumbnail_weight == 0:
        from training.retrieval.features import compute_prefix_features, embed_prefix_features

        features = compute_prefix_features(
            model, paths, 0, options.feature_cache, options.batch_size, options.progress
        )
        retrieval, aligned = embed_prefix_features(model, features, 0)
        return Embeddings(retrieval, aligned, features.kept, features.failed)
    return embed_images(
        model,
        paths,
        batch_size=options.batch_size,
        progress=options.progress,
        thumbnail_size=options.thumbnail_size if options.thumbnail_weight > 0 else None,
    )


def _index_contents(
    rows: list[dict[str, Any]], embedded: Embeddings, options: BuildOptions, generated: dict[str, str]
) -> IndexContents:
    """The indexed figures' metadata and vectors, the patents' texts embedded, and the evaluation."""
    figures = [
        {
            "figure_id": row["image_id"],
            "patent_id": row["patent_id"],
            "grant_date": row["grant_date"],
            "classes": row.get("classifications", []),
            "description": row.get("brief_description") or row.get("title", ""),
            "image_path": row["image_path"],
            "title": row.get("title", ""),
            "brief_description": row.get("brief_description", ""),
            "figure_labels": row.get("figure_labels", []),
            "generated_description": generated.get(row["image_id"], ""),
        }
        for row in rows
    ]
    patents, patent_texts = _patent_texts(rows)
    patent_vectors = text_encoder.encode_texts(
        patent_texts, options.text_encoder_dir, progress=options.progress
    )
    image_vectors, evaluation = _fuse_and_evaluate(rows, embedded, options)
    return IndexContents(
        figures=figures,
        image_vectors=image_vectors,
        aligned_vectors=embedded.aligned,
        encoder_dim=int(embedded.retrieval.shape[1]),
        patents=patents,
        patent_vectors=patent_vectors,
        evaluation=evaluation,
    )


def _fuse_and_evaluate(
    rows: list[dict[str, Any]], embedded: Embeddings, options: BuildOptions
) -> tuple[np.ndarray, dict[str, Any]]:
    """(the image vectors as searched, same-patent retrieval over the collection with them): the
    encoder's embeddings, or those fused with the ink thumbnails, then evaluated with each part alone too."""
    from training.retrieval.evaluate import evaluate_embeddings
    from training.retrieval.model import fuse_with_thumbnails

    queries = _evaluation_queries(rows, options.evaluation_queries)

    def same_patent(vectors: np.ndarray, figures: list[dict[str, Any]]) -> dict[str, float]:
        present = {figure["image_id"] for figure in figures}
        asked = None if queries is None else [query for query in queries if query in present]
        metrics = evaluate_embeddings(vectors, figures, asked, depth=EVALUATION_DEPTH, prior_art=False)
        return metrics["same_patent"]

    encoder_alone = same_patent(embedded.retrieval, rows)
    if (thumbnails := embedded.thumbnails) is None:
        return embedded.retrieval, {"same_patent": encoder_alone}
    fused = fuse_with_thumbnails(embedded.retrieval, thumbnails, options.thumbnail_weight)
    inked = np.flatnonzero(thumbnails.any(axis=1)).tolist()  # a blank sheet has no thumbnail direction
    return fused, {
        "same_patent": same_patent(fused, rows),
        "same_patent_encoder": encoder_alone,
        "same_patent_thumbnails": same_patent(thumbnails[inked], [rows[i] for i in inked]),
    }


def _write_index(
    out_dir: Path,
    encoder_dir: Path,
    figures_jsonl: Path,
    contents: IndexContents,
    rejected: list[Rejection],
    options: BuildOptions,
) -> dict[str, Any]:
    """The encoder, the three FigureIndexes, the rejections and, last, the manifest, written to a
    staging directory beside `out_dir` and renamed into place: a failed build leaves nothing behind.
    Returns the manifest."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        shutil.copytree(encoder_dir, staging / ENCODER)
        for part, vectors, metadata in (
            (FIGURES, contents.image_vectors, contents.figures),
            (ALIGNED, contents.aligned_vectors, contents.figures),
            (PATENTS, contents.patent_vectors, contents.patents),
        ):
            index = FigureIndex.build(vectors, metadata, kind=options.kind, options=options.index_options)
            index.save(staging / part)
        write_jsonl(staging / REJECTED, rejected)
        manifest = _manifest(figures_jsonl, encoder_dir, staging / ENCODER, contents, len(rejected), options)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        replace_path(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _manifest(
    figures_jsonl: Path,
    encoder_dir: Path,
    staged_encoder: Path,
    contents: IndexContents,
    rejected: int,
    options: BuildOptions,
) -> dict[str, Any]:
    """index.json: what was indexed, with which encoders, how the vectors were made, and how well
    the collection retrieves itself; the encoder's checksum is the copy's inside the index."""
    return {
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "figures_jsonl": str(figures_jsonl),
        "kind": options.kind,
        "encoder": {
            "source": options.encoder_source or str(encoder_dir),
            "sha256": ArtifactStore.hash_tree(staged_encoder),
            "embedding_dim": contents.encoder_dim,
        },
        "text_encoder": {
            "source": text_encoder.text_encoder_name(options.text_encoder_dir),
            "path": str(options.text_encoder_dir) if options.text_encoder_dir else None,
            "dim": int(contents.patent_vectors.shape[1]),
        },
        "figure_vectors": {
            "dim": int(contents.image_vectors.shape[1]),
            "thumbnail_weight": options.thumbnail_weight,
            "thumbnail_size": options.thumbnail_size if options.thumbnail_weight > 0 else 0,
        },
        "counts": {"figures": len(contents.figures), "patents": len(contents.patents), "rejected": rejected},
        "generated_descriptions": {
            "path": str(options.generated_descriptions) if options.generated_descriptions else None,
            "figures": sum(1 for figure in contents.figures if figure["generated_description"]),
        },
        "grant_dates": list(_date_range(contents.figures)),
        "evaluation": contents.evaluation,
    }


def _evaluation_queries(rows: list[dict[str, Any]], limit: int) -> list[str] | None:
    """Every figure (None) when there are at most `limit`; otherwise a seeded sample of `limit`
    figures whose patent has another figure to find."""
    if len(rows) <= limit:
        return None
    views = Counter(row["patent_id"] for row in rows)
    judged = [row["image_id"] for row in rows if views[row["patent_id"]] > 1]
    if len(judged) <= limit:
        return judged
    return sorted(np.random.default_rng(0).choice(judged, size=limit, replace=False).tolist())


def _date_range(metadata: list[dict[str, Any]]) -> tuple[str, str]:
    dates = sorted(str(row["grant_date"]) for row in metadata)
    return dates[0], dates[-1]


@dataclass(frozen=True)
class Query:
    """One search: drawings (several views of one design are one query) or a text, and its filters.

    `classification` is a person's spelling or the stored form (`14-03`, `LOCARNO:1403`, `CPC:A61C`);
    `patents` searches patents' title + abstract with the text; `rerank` re-ranks one drawing's hits
    k-reciprocally."""

    images: tuple[Path | Image.Image, ...] = ()
    text: str | None = None
    before: DateLike | None = None
    classification: str | None = None
    k: int = 10
    patents: bool = False
    rerank: bool = False
    id: str = ""

    def __post_init__(self) -> None:
        if bool(self.images) == (self.text is not None):
            raise ValueError("a query is drawings or a text: give exactly one")
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.patents and self.text is None:
            raise ValueError("a patent search is a text search: give a text")
        if self.rerank and len(self.images) != 1:
            raise ValueError("re-ranking works on image queries of one drawing")
        if self.before is not None and not isinstance(self.before, date):
            try:
                date.fromisoformat(str(self.before))
            except ValueError as error:
                raise ValueError(f"before: {self.before!r} is not a date (YYYY-MM-DD)") from error
        class_prefix(self.classification)  # a spelling of no class is refused here, not mid-run


QUERY_FIELDS = ("id", "image", "images", "text", "before", "classification", "k")


def read_queries(
    path: Path, *, k: int = 10, before: DateLike | None = None, classification: str | None = None
) -> list[Query]:
    """The queries of a JSON-lines file, one object a line with `id`, `image` (a path) or `images`
    (paths: one query over several views) or `text`, and optional `before`, `classification`, `k`.

    Relative image paths are taken from the file's folder; `k`, `before` and `classification` fill
    what a line leaves out. A bad line is an error naming the file and line, raised before any
    query runs."""
    path = Path(path)
    defaults = {"k": k, "before": before, "classification": classification}
    queries: list[Query] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                query = _query_of(json.loads(line), path.parent, defaults)
            except (json.JSONDecodeError, ValueError, TypeError) as error:
                raise ValueError(f"{path}:{number}: {error}") from error
            if query.id in seen:
                raise ValueError(f"{path}:{number}: id {query.id!r} is used by an earlier query")
            seen.add(query.id)
            queries.append(query)
    return queries


def _query_of(row: Any, folder: Path, defaults: dict[str, Any]) -> Query:
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    unknown = sorted(set(row) - set(QUERY_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; a query has {', '.join(QUERY_FIELDS)}")
    if row.get("id") in (None, ""):
        raise ValueError("missing id: each hit line carries its query's id")
    given = [name for name in ("image", "images", "text") if row.get(name) not in (None, "", [])]
    if len(given) != 1:
        raise ValueError("give exactly one of image, images and text")
    images = [row["image"]] if "image" in given else row.get("images") or []
    if not isinstance(images, list) or not all(isinstance(image, str) for image in images):
        raise ValueError("images: a list of paths")
    k = row.get("k", defaults["k"])
    if not isinstance(k, int) or isinstance(k, bool):
        raise ValueError(f"k: {k!r} is not a whole number")
    return Query(
        images=tuple(folder / image for image in images),
        text=str(row["text"]) if "text" in given else None,
        before=row.get("before", defaults["before"]),
        classification=row.get("classification", defaults["classification"]),
        k=k,
        id=str(row["id"]),
    )


class SearchIndex:
    """A built index directory, loaded for queries."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest
        # faiss-gpu serves the exact indexes when installed and a GPU is there; CPU otherwise.
        self.figures = FigureIndex.load(directory / FIGURES, use_gpu=True)
        self.aligned = FigureIndex.load(directory / ALIGNED, use_gpu=True)
        self.patents = FigureIndex.load(directory / PATENTS, use_gpu=True)
        self.image_limits = ImageLimits()  # what a query drawing may be (size, pixels: no bombs)
        self._encoder: Any = None
        self._by_id = {figure.figure_id: figure for figure in self.figures.figures}
        self._by_patent: dict[str, list[FigureMeta]] = defaultdict(list)
        for figure in self.figures.figures:
            self._by_patent[figure.patent_id].append(figure)

    @classmethod
    def load(cls, directory: Path | str) -> SearchIndex:
        directory = Path(directory)
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise IndexFileError(
                f"{directory}: not a search index (no {MANIFEST}); build one with `patentflow index`"
            )
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise IndexFileError(f"{manifest_path}: corrupt manifest ({error})") from error
        if manifest.get("format_version") != FORMAT_VERSION:
            raise IndexFileError(
                f"{manifest_path}: format version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
            )
        return cls(directory, manifest)

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from training.retrieval.model import load_encoder

            self._encoder = load_encoder(self.directory / ENCODER)
        return self._encoder

    def warm(self) -> SearchIndex:
        """Load the image and the text encoder now, so that a server's first query is not the slow one."""
        _ = self.encoder
        text_encoder.load_text_encoder(self.manifest["text_encoder"].get("path"))
        return self

    def figure(self, figure_id: str) -> FigureMeta | None:
        return self._by_id.get(figure_id)

    def patent_figures(self, patent_id: str) -> list[FigureMeta]:
        """Every indexed figure of a patent, in sheet order (figure id)."""
        return sorted(self._by_patent.get(patent_id, []), key=lambda figure: figure.figure_id)

    def _text_vector(self, text: str) -> np.ndarray:
        if not text.strip():
            raise ValueError("the text query is empty")
        return text_encoder.encode_texts([text], self.manifest["text_encoder"].get("path"))

    def read_image(self, image: Path | Image.Image) -> Image.Image:
        """A query drawing, decoded within `image_limits` (ImageRejected, a ValueError, says why not)."""
        return (
            image if not isinstance(image, (str, Path)) else load_sheet(Path(image), limits=self.image_limits)
        )

    def _image_vectors(self, images: Sequence[Path | Image.Image]) -> np.ndarray:
        """One searchable vector per view: the encoder's embedding, fused with the ink thumbnail
        when the index was built so."""
        from training.retrieval.model import embed_images, fuse_with_thumbnails

        fusion = self.manifest.get("figure_vectors", {})  # absent in indexes built before fusion
        weight = fusion.get("thumbnail_weight", 0.0)
        decoded = [self.read_image(image) for image in images]
        embedded = embed_images(
            self.encoder, decoded, thumbnail_size=fusion["thumbnail_size"] if weight else None
        )
        if embedded.failed:
            position, reason = next(iter(embedded.failed.items()))
            raise ValueError(f"view {position + 1}: {reason}")
        vectors = embedded.retrieval
        if embedded.thumbnails is not None:
            vectors = fuse_with_thumbnails(vectors, embedded.thumbnails, weight)
        return vectors

    def search_images(
        self,
        images: Sequence[Path | Image.Image],
        k: int = 10,
        before: DateLike | None = None,
        classification: str | None = None,
        rerank: KReciprocalConfig | None = None,
    ) -> list[Hit]:
        """Figures that look like a design drawn in one or several views, granted before `before`
        and of a class starting with `classification` (a person's spelling or the stored form).
        Views are fused by their best score (max-score fusion: see the module's docstring)."""
        if not images:
            raise ValueError("no drawing to search with")
        if rerank and len(images) > 1:
            raise ValueError("re-ranking works on image queries of one drawing")
        prefix = class_prefix(classification)
        vectors = self._image_vectors(images)
        per_view = self.figures.search(vectors, k=k, before=before, rerank=rerank, classification=prefix)
        return per_view[0] if len(per_view) == 1 else _best_of_views(per_view, k)

    def search_image(
        self,
        image: Path | Image.Image,
        k: int = 10,
        before: DateLike | None = None,
        rerank: KReciprocalConfig | None = None,
        classification: str | None = None,
    ) -> list[Hit]:
        """Figures that look like `image`, granted before `before` when given."""
        return self.search_images([image], k=k, before=before, classification=classification, rerank=rerank)

    def search_text(
        self, text: str, k: int = 10, before: DateLike | None = None, classification: str | None = None
    ) -> list[Hit]:
        """Figures whose image embedding lies nearest `text` in the aligned text space."""
        prefix = class_prefix(classification)
        return self.aligned.search(self._text_vector(text), k=k, before=before, classification=prefix)[0]

    def search_patents(
        self, text: str, k: int = 10, before: DateLike | None = None, classification: str | None = None
    ) -> list[Hit]:
        """Patents whose title + abstract are nearest `text` (PatentCL's task)."""
        prefix = class_prefix(classification)
        return self.patents.search(self._text_vector(text), k=k, before=before, classification=prefix)[0]

    def run(self, query: Query) -> list[Hit]:
        """The hits of one `Query`."""
        filters = {"k": query.k, "before": query.before, "classification": query.classification}
        if query.images:
            rerank = KReciprocalConfig() if query.rerank else None
            return self.search_images(list(query.images), rerank=rerank, **filters)
        if query.patents:
            return self.search_patents(query.text or "", **filters)
        return self.search_text(query.text or "", **filters)


def _best_of_views(per_view: list[list[Hit]], k: int) -> list[Hit]:
    """Max-score fusion: each figure keeps its best score among the views' hits (inner product:
    higher is better); the k best, ranked again. Ties keep the earlier view's order."""
    best: dict[str, Hit] = {}
    for hits in per_view:
        for hit in hits:
            if hit.figure_id not in best or hit.score > best[hit.figure_id].score:
                best[hit.figure_id] = hit
    ranked = sorted(best.values(), key=lambda hit: -hit.score)[:k]
    return [replace(hit, rank=rank) for rank, hit in enumerate(ranked, start=1)]
