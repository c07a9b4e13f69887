"""Evaluation of figure retrieval on a figures.jsonl collection, by the two published protocols.

- "same_patent" (DeepPatent, Wang & Zhang): each query figure ranks the whole collection (other
  patents are distractors), itself left out; its relevant items are the other figures of its patent.
- "prior_art" (Lo et al., 2024): a query dated D ranks only the figures granted strictly before D
  (the FAISS date filter of `FigureIndex`); its relevant items are those earlier figures of the
  same category (the coarser level of `figure_class`). Queries with none are skipped and counted.

Both score with `training.retrieval.metrics.evaluate_rankings` (ir-measures), so every paper's metrics
come out. `evaluate_embeddings` takes any vectors (a pixel baseline, another model);
`evaluate_encoder` embeds the images with a `FigureEncoder` and calls it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from training.retrieval.faiss_index import FigureIndex
from training.retrieval.metrics import evaluate_rankings, same_patent_qrels

# image paths -> (L2-normalised vectors of the readable ones, their positions, {position: reason})
Embedder = Callable[[Sequence[Path]], tuple[np.ndarray, list[int], dict[int, str]]]

_LOCARNO = re.compile(r"^(\d{2})-?(\d{2})")
_CPC = re.compile(r"^([A-HY]\d{2}[A-Z])\s*(\d+)")


def figure_class(classifications: Sequence[str]) -> tuple[str, str]:
    """(class, category) of a figure from its first classification; ("", "") when it has none.

    CPC and IPC share their groups: "IPC:F16M 13/02" -> ("CPC/IPC F16M 13", "CPC/IPC F16");
    Locarno "LOCARNO:0808" -> ("LOCARNO 0808", "LOCARNO 08"); USPC "USPC:D8 380" ->
    ("USPC D8 380", "USPC D8"); any other scheme: its code and the code's first word.
    """
    for entry in classifications:
        scheme, _, code = str(entry).partition(":")
        scheme, code = scheme.strip().upper(), code.strip()
        if not code:
            continue
        if scheme in ("CPC", "IPC") and (match := _CPC.match(code)):
            return f"CPC/IPC {match[1]} {match[2]}", f"CPC/IPC {match[1][:3]}"
        if scheme == "LOCARNO" and (match := _LOCARNO.match(code)):
            return f"LOCARNO {match[1]}{match[2]}", f"LOCARNO {match[1]}"
        return f"{scheme} {code}", f"{scheme} {code.split()[0]}"
    return "", ""


def field_of(figure: Any, name: str, default: Any = None) -> Any:
    """A field of a figure given as a dict (a figures.jsonl row) or a record object."""
    if isinstance(figure, dict):
        return figure.get(name, default)
    return getattr(figure, name, default)


def _empty(queries: int) -> dict[str, float]:
    return {"queries": 0.0, "skipped_queries": float(queries)}


def _score(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    if not any(qrels.values()):  # no query can be judged: report the counts, no metrics
        return _empty(len(qrels))
    return evaluate_rankings(run, qrels)


def evaluate_embeddings(
    vectors: np.ndarray,
    figures: Sequence[Any],
    query_ids: Sequence[str] | None = None,
    depth: int | None = None,
    prior_art: bool = True,
) -> dict[str, dict[str, float]]:
    """{"same_patent": metrics, "prior_art": metrics} of `vectors` (row i = `figures[i]`), cosine.

    `query_ids`: the image ids that query (None: every figure). Every figure is in the database.
    `depth`: rank at most this many figures per query (None: all of them); the relevant sets stay
    complete, so mAP is then AP@depth, trec_eval's convention. `prior_art=False` skips that task.
    """
    if len(vectors) != len(figures):
        raise ValueError(f"{len(vectors)} vectors for {len(figures)} figures")
    ids = [str(field_of(f, "image_id")) for f in figures]
    patents = [str(field_of(f, "patent_id")) for f in figures]
    dates = [str(field_of(f, "grant_date")) for f in figures]
    categories = [figure_class(field_of(f, "classifications") or [])[1] for f in figures]
    queries = list(ids) if query_ids is None else [str(q) for q in query_ids]
    if not queries or not ids:
        tasks = ("same_patent", "prior_art") if prior_art else ("same_patent",)
        return {task: _empty(len(queries)) for task in tasks}
    index = FigureIndex.build(
        vectors,
        [
            {"figure_id": i, "patent_id": p, "grant_date": d, "classes": [c] if c else []}
            for i, p, d, c in zip(ids, patents, dates, categories, strict=True)
        ],
    )
    row_of = {figure_id: row for row, figure_id in enumerate(ids)}
    missing = [q for q in queries if q not in row_of]
    if missing:
        raise ValueError(f"query figures {missing[:5]} are not among the {len(ids)} figures")
    query_vectors = np.asarray(vectors, dtype=np.float32)[[row_of[q] for q in queries]]

    depth = len(ids) if depth is None else min(depth, len(ids))

    # Same patent: all of the collection, the query itself removed from its ranking.
    qrels = same_patent_qrels(zip(ids, patents, strict=True), queries)
    hits = index.search(query_vectors, k=min(depth + 1, len(ids)))  # + 1: the query finds itself
    run = {
        q: dict(islice(((h.figure_id, h.score) for h in found if h.figure_id != q), depth))
        for q, found in zip(queries, hits, strict=True)
    }
    result = {"same_patent": _score(run, qrels)}
    if not prior_art:
        return result

    # Prior art: only what was granted strictly before the query; relevant = the same category.
    before = [dates[row_of[q]] for q in queries]
    hits = index.search(query_vectors, k=depth, before=before)
    # The index holds the figures in grant-date order: what is earlier than D is a prefix of it.
    ordered_ids = np.array([figure.figure_id for figure in index.figures])
    ordered_categories = np.array([categories[row_of[figure_id]] for figure_id in ordered_ids])
    prior_qrels: dict[str, dict[str, int]] = {}
    prior_run: dict[str, dict[str, float]] = {}
    for query, day, found in zip(queries, before, hits, strict=True):
        category = categories[row_of[query]]
        prior_run[query] = {h.figure_id: h.score for h in found}
        prior_qrels[query] = {}
        if category:
            earlier = slice(0, index.cutoff(day))
            same = ordered_categories[earlier] == category
            prior_qrels[query] = dict.fromkeys(ordered_ids[earlier][same].tolist(), 1)
    result["prior_art"] = _score(prior_run, prior_qrels)
    return result


def query_ids_of(figures: Sequence[Any], query_splits: Sequence[str] | None) -> list[str] | None:
    """Image ids of the figures in `query_splits`; None (every figure) without splits or split fields."""
    if query_splits is None or not any(field_of(f, "split") for f in figures):
        return None
    wanted = set(query_splits)
    return [str(field_of(f, "image_id")) for f in figures if field_of(f, "split") in wanted]


def image_path_of(figure: Any, base: Path | None = None) -> Path:
    path = Path(str(field_of(figure, "image_path")))
    return path if path.is_absolute() or base is None else base / path


def embed_figures(
    model: Any,
    images: Sequence[Path],
    batch_size: int = 32,
    feature_cache: Path | str | None = None,
    trainable_blocks: int = 0,
) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """(retrieval embeddings, positions kept, {position: reason}) of image files. With
    `feature_cache`, what the backbone computes up to `trainable_blocks` from its end (0: the
    pooled vector) comes from, and goes to, that content-addressed cache (`training.retrieval.features`):
    an image runs through a frozen backbone once."""
    if feature_cache is not None:
        from training.retrieval.features import compute_prefix_features, embed_prefix_features

        features = compute_prefix_features(model, images, trainable_blocks, feature_cache, batch_size)
        vectors, _ = embed_prefix_features(model, features, trainable_blocks)
        return vectors, features.kept, features.failed
    from training.retrieval.model import embed_images

    embedded = embed_images(model, images, batch_size=batch_size)
    return embedded.retrieval, embedded.kept, embedded.failed


def evaluate_encoder(
    model: Any,
    figures: Sequence[Any],
    query_splits: Sequence[str] | None = ("val", "test"),
    batch_size: int = 32,
    base: Path | None = None,
    feature_cache: Path | str | None = None,
    trainable_blocks: int = 0,
) -> dict[str, dict[str, float]]:
    """Embed every figure's image with `model` (a FigureEncoder) and run `evaluate_embeddings`.

    Queries: the figures of `query_splits` (every figure when None or when no figure has a split).
    Figures whose image cannot be read are left out (counted in `unreadable`). `base`: the folder
    relative image paths are relative to (a figures.jsonl's folder). `feature_cache` and
    `trainable_blocks`: see `embed_figures`.
    """
    images = [image_path_of(f, base) for f in figures]
    vectors, kept_positions, failed = embed_figures(
        model, images, batch_size, feature_cache, trainable_blocks
    )
    kept = [figures[i] for i in kept_positions]
    wanted = query_ids_of(figures, query_splits)
    readable = {str(field_of(f, "image_id")) for f in kept}
    queries = None if wanted is None else [q for q in wanted if q in readable]
    result = evaluate_embeddings(vectors, kept, queries)
    for metrics in result.values():
        metrics["unreadable"] = float(len(failed))
    return result


ORIGINS = {"real": False, "synthetic": True}  # task prefix -> FigureRecord.synthetic


def evaluate_by_origin(
    vectors: np.ndarray, figures: Sequence[Any], query_splits: Sequence[str] | None
) -> dict[str, dict[str, float]]:
    """`evaluate_embeddings` on the whole collection ("same_patent", "prior_art"), then on its
    real USPTO figures and on its synthetic ones apart ("real_same_patent", "synthetic_prior_art",
    ...), each its own database: a model is judged on real drawings without synthetic distractors
    and the other way round. An origin with no figures is left out."""
    result = evaluate_embeddings(vectors, figures, query_ids_of(figures, query_splits))
    for origin, synthetic in ORIGINS.items():
        rows = [i for i, f in enumerate(figures) if bool(field_of(f, "synthetic", False)) == synthetic]
        if not rows:
            continue
        subset = [figures[i] for i in rows]
        scores = evaluate_embeddings(np.asarray(vectors)[rows], subset, query_ids_of(subset, query_splits))
        result |= {f"{origin}_{task}": metrics for task, metrics in scores.items()}
    return result


def pixel_embeddings(images: Sequence[str | Path], size: int = 48) -> tuple[np.ndarray, list[int]]:
    """Plain pixel matching, the baseline a learnt encoder must beat: ink-cropped `size` x `size`
    thumbnails (`ink_thumbnails`). Returns (vectors, positions kept); blank and unreadable
    images are left out."""
    from training.retrieval.model import ink_thumbnails

    thumbnails, _ = ink_thumbnails(images, size)
    kept = [position for position in range(len(images)) if thumbnails[position].any()]
    return thumbnails[kept], kept


def retrieval_embedder(
    encoder_dir: Path | None,
    encoder_preset: str,
    overrides: Mapping[str, str] | None = None,
    feature_cache: Path | None = None,
    batch_size: int = 32,
) -> tuple[Embedder, str]:
    """The figure-search encoder as an `Embedder` (what the description baselines' nearest
    neighbour takes), and what it is: the saved encoder at `encoder_dir`, or `encoder_preset`'s backbone as pretrained, no head (`untouched`). With
    `feature_cache`, backbone features are shared with the retrieval training and evaluation."""
    from training.retrieval.model import build_encoder, load_encoder, preset

    if encoder_dir is not None:
        model, name = load_encoder(Path(encoder_dir)), str(encoder_dir)
    else:
        model = build_encoder(preset(encoder_preset, **{**(overrides or {}), "head": "none"}))
        name = f"untouched {encoder_preset}"
    model.eval()

    def embed(images: Sequence[Path]) -> tuple[np.ndarray, list[int], dict[int, str]]:
        vectors, kept, failed = embed_figures(model, list(images), batch_size, feature_cache)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True) if len(vectors) else 1.0
        return vectors / np.maximum(norms, 1e-12), kept, failed

    return embed, name
