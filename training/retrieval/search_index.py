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
grant date, so the prior-art filter (`before`) works the same in all three.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from patent_assets.records import Rejection, read_figure_rows, replace_path, write_jsonl
from patent_assets.store import ArtifactStore
from training.retrieval import text_encoder
from training.retrieval.faiss_index import (
    DateLike,
    FigureIndex,
    Hit,
    IndexFileError,
    IndexKind,
    IndexOptions,
    KReciprocalConfig,
)

# The registry name of the champion encoder, and where the pipeline keeps its current index.
REGISTERED_ENCODER = "patent-figure-encoder"
PIPELINE_INDEX = "retrieval_index"  # under $PATENTFLOW_HOME/data, DVC-tracked

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


def build_search_index(
    figures_jsonl: Path,
    encoder_dir: Path,
    out_dir: Path,
    kind: IndexKind = "flat",
    text_encoder_dir: str | Path | None = None,
    encoder_source: str = "",
    options: IndexOptions | None = None,
    progress: bool = False,
    batch_size: int = 32,
    thumbnail_weight: float = DEFAULT_THUMBNAIL_WEIGHT,
    thumbnail_size: int = DEFAULT_THUMBNAIL_SIZE,
    evaluation_queries: int = EVALUATION_QUERIES,
    feature_cache: str | Path | None = None,
) -> BuildResult:
    """Embed every figure of `figures_jsonl` with the encoder at `encoder_dir`, index the image
    embeddings, their text-space projections and the patents' texts, evaluate same-patent
    retrieval over the collection, and write it all to `out_dir` atomically.

    `thumbnail_weight` > 0 fuses each image embedding with its ink thumbnail (`thumbnail_size`
    squared pixels): image search then scores (1 - w) x the encoder's cosine + w x the
    thumbnails' cosine (the default; 0: the encoder alone). The evaluation reports the fused
    vectors and each part alone: same-patent retrieval over the collection, every figure a query
    up to `evaluation_queries` (then a seeded sample), ranked `EVALUATION_DEPTH` deep.
    `feature_cache`: read the backbone's pooled features from that content-addressed cache
    (`training.retrieval.features`), as training and the gate left them, when the encoder alone is indexed.
    """
    from training.retrieval.evaluate import evaluate_embeddings
    from training.retrieval.model import Embeddings, embed_images, fuse_with_thumbnails, load_encoder

    if not 0.0 <= thumbnail_weight < 1.0:
        raise ValueError(f"the thumbnail weight must be in [0, 1), got {thumbnail_weight}")
    if thumbnail_size < 32:
        raise ValueError(f"the thumbnail size must be at least 32 pixels, got {thumbnail_size}")
    if evaluation_queries < 1:
        raise ValueError(f"evaluation_queries must be at least 1, got {evaluation_queries}")
    figures_jsonl, encoder_dir, out_dir = Path(figures_jsonl), Path(encoder_dir), Path(out_dir)
    if not figures_jsonl.is_file():
        raise FileNotFoundError(f"{figures_jsonl}: no such figures file (write one with `patentflow ingest`)")
    rows, rejected = read_figure_rows(
        figures_jsonl,
        "index",
        required=("image_id", "patent_id", "image_path"),
        check=_undated,
        # As written, as the index always took it: `patentflow ingest --out DIR` writes image paths
        # relative to its working directory, not to DIR.
        resolve_images=False,
    )
    model = load_encoder(encoder_dir)
    paths = [row["image_path"] for row in rows]
    if feature_cache is not None and thumbnail_weight == 0:
        from training.retrieval.features import compute_prefix_features, embed_prefix_features

        features = compute_prefix_features(model, paths, 0, feature_cache, batch_size, progress)
        retrieval, aligned = embed_prefix_features(model, features, 0)
        embedded = Embeddings(retrieval, aligned, features.kept, features.failed)
    else:
        embedded = embed_images(
            model,
            paths,
            batch_size=batch_size,
            progress=progress,
            thumbnail_size=thumbnail_size if thumbnail_weight > 0 else None,
        )
    for position, reason in sorted(embedded.failed.items()):
        rejected.append(Rejection(rows[position]["image_id"], reason, "index", str(figures_jsonl)))
    rows = [rows[position] for position in embedded.kept]
    if not rows:
        raise ValueError(f"{figures_jsonl}: no figure could be indexed ({len(rejected)} rejected)")

    metadata = [
        {
            "figure_id": row["image_id"],
            "patent_id": row["patent_id"],
            "grant_date": row["grant_date"],
            "classes": row.get("classifications", []),
            "description": row.get("brief_description") or row.get("title", ""),
            "image_path": row["image_path"],
        }
        for row in rows
    ]
    patent_metadata, patent_texts = _patent_texts(rows)
    patent_vectors = text_encoder.encode_texts(patent_texts, text_encoder_dir, progress=progress)
    image_vectors = embedded.retrieval
    queries = _evaluation_queries(rows, evaluation_queries)

    def same_patent(vectors: np.ndarray, figures: list[dict[str, Any]]) -> dict[str, float]:
        present = {figure["image_id"] for figure in figures}
        asked = None if queries is None else [query for query in queries if query in present]
        metrics = evaluate_embeddings(vectors, figures, asked, depth=EVALUATION_DEPTH, prior_art=False)
        return metrics["same_patent"]

    evaluation = {"same_patent": same_patent(image_vectors, rows)}
    if (thumbnails := embedded.thumbnails) is not None:
        image_vectors = fuse_with_thumbnails(embedded.retrieval, thumbnails, thumbnail_weight)
        inked = np.flatnonzero(thumbnails.any(axis=1)).tolist()  # a blank sheet has no thumbnail direction
        evaluation = {
            "same_patent": same_patent(image_vectors, rows),
            "same_patent_encoder": evaluation["same_patent"],
            "same_patent_thumbnails": same_patent(thumbnails[inked], [rows[i] for i in inked]),
        }

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        shutil.copytree(encoder_dir, staging / ENCODER)
        FigureIndex.build(image_vectors, metadata, kind=kind, options=options).save(staging / FIGURES)
        FigureIndex.build(embedded.aligned, metadata, kind=kind, options=options).save(staging / ALIGNED)
        FigureIndex.build(patent_vectors, patent_metadata, kind=kind, options=options).save(staging / PATENTS)
        write_jsonl(staging / REJECTED, rejected)
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "figures_jsonl": str(figures_jsonl),
            "kind": kind,
            "encoder": {
                "source": encoder_source or str(encoder_dir),
                "sha256": ArtifactStore.hash_tree(staging / ENCODER),
                "embedding_dim": int(embedded.retrieval.shape[1]),
            },
            "text_encoder": {
                "source": text_encoder.text_encoder_name(text_encoder_dir),
                "path": str(text_encoder_dir) if text_encoder_dir else None,
                "dim": int(patent_vectors.shape[1]),
            },
            "figure_vectors": {
                "dim": int(image_vectors.shape[1]),
                "thumbnail_weight": thumbnail_weight,
                "thumbnail_size": thumbnail_size if thumbnail_weight > 0 else 0,
            },
            "counts": {"figures": len(rows), "patents": len(patent_metadata), "rejected": len(rejected)},
            "grant_dates": list(_date_range(metadata)),
            "evaluation": evaluation,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        replace_path(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return BuildResult(out_dir, manifest, rejected)


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


class SearchIndex:
    """A built index directory, loaded for queries."""

    def __init__(self, directory: Path, manifest: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest = manifest
        # faiss-gpu serves the exact indexes when installed and a GPU is there; CPU otherwise.
        self.figures = FigureIndex.load(directory / FIGURES, use_gpu=True)
        self.aligned = FigureIndex.load(directory / ALIGNED, use_gpu=True)
        self.patents = FigureIndex.load(directory / PATENTS, use_gpu=True)
        self._encoder: Any = None

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

    def _text_vector(self, text: str) -> np.ndarray:
        if not text.strip():
            raise ValueError("the text query is empty")
        return text_encoder.encode_texts([text], self.manifest["text_encoder"].get("path"))

    def search_image(
        self,
        image: Path,
        k: int = 10,
        before: DateLike | None = None,
        rerank: KReciprocalConfig | None = None,
    ) -> list[Hit]:
        """Figures that look like `image`, granted before `before` when given."""
        from training.retrieval.model import embed_images, fuse_with_thumbnails

        fusion = self.manifest.get("figure_vectors", {})  # absent in indexes built before fusion
        weight = fusion.get("thumbnail_weight", 0.0)
        embedded = embed_images(
            self.encoder, [image], thumbnail_size=fusion["thumbnail_size"] if weight else None
        )
        if embedded.failed:
            raise ValueError(embedded.failed[0])
        vector = embedded.retrieval
        if embedded.thumbnails is not None:
            vector = fuse_with_thumbnails(vector, embedded.thumbnails, weight)
        return self.figures.search(vector, k=k, before=before, rerank=rerank)[0]

    def search_text(self, text: str, k: int = 10, before: DateLike | None = None) -> list[Hit]:
        """Figures whose image embedding lies nearest `text` in the aligned text space."""
        return self.aligned.search(self._text_vector(text), k=k, before=before)[0]

    def search_patents(self, text: str, k: int = 10, before: DateLike | None = None) -> list[Hit]:
        """Patents whose title + abstract are nearest `text` (PatentCL's task)."""
        return self.patents.search(self._text_vector(text), k=k, before=before)[0]
