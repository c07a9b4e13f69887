"""Descriptions written without a description model: the bars PatentLMM has to clear.

- `constant`: one sentence for every figure, "FIG. 1 is a perspective view of the device." A
  model that does not beat it has learnt the corpus's commonest sentence, not the drawing.
- `nearest_neighbour`: the reference description of the most similar training figure of
  another patent, by the figure-search encoder's embedding (cosine). This is retrieval used
  as captioning, and it is strong on real design patents, whose brief descriptions are
  formulaic ("FIG. 3 is a front elevational view thereof;"). The encoder is the registry's
  champion, or the pretrained backbone untouched before there is one; it comes in as an
  `Embedder` (`training.retrieval.evaluate.retrieval_embedder`, wired in by `training.entry`).
- `ocr_label`: the description the most patents of the training pool write, with its FIG
  number left open ("FIG. n is a front view thereof;" on real design grants), filled in with the
  first FIG label the sheet's OCR words print (`patent_assets.alignment.label_words`; FIG. 1
  where they print none).
  What the OCR alone gives, with no description model: a model that copies the label but writes
  worse than the commonest sentence around it has not learnt the view.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

CONSTANT_DESCRIPTION = "FIG. 1 is a perspective view of the device."
BASELINES = ("constant", "nearest_neighbour", "ocr_label")
# A description that starts with one figure's number: "FIG. 3 is ...", "FIG. 12A: is ...".
_LEADING_LABEL_RE = re.compile(r"^FIG\.\s*(?P<label>\d+[A-Z]?)(?P<rest>(?![\dA-Za-z]).*)$", re.DOTALL)

# image paths -> (L2-normalised vectors of the readable ones, their positions, {position: reason})
Embedder = Callable[[Sequence[Path]], tuple[np.ndarray, list[int], dict[int, str]]]


def constant_descriptions(image_ids: Sequence[str], text: str = CONSTANT_DESCRIPTION) -> dict[str, str]:
    return dict.fromkeys(image_ids, text)


def commonest_sentence(texts: Mapping[str, str]) -> str | None:
    """What follows "FIG. n" in the description (of `texts`, image id -> text) that the most patents
    write (" is a front view thereof;"), counting each patent once: a grant of 60 sheets that repeats
    its own sentence does not outvote the others. Ties go to the first seen; None if no text
    starts with one figure's number."""
    from patent_assets.patentdesc import patent_or_own_id

    writers: dict[str, set[str]] = {}
    for image_id, text in texts.items():
        match = _LEADING_LABEL_RE.match(text)
        if match is not None:
            writers.setdefault(match["rest"], set()).add(patent_or_own_id(image_id))
    return max(writers, key=lambda rest: len(writers[rest])) if writers else None


def ocr_label_descriptions(
    ocr_words: Mapping[str, Sequence[str]], pool_texts: Mapping[str, str]
) -> dict[str, str]:
    """For each image id, the pool's commonest sentence (`commonest_sentence`; else the constant's)
    about the first FIG label its OCR words print (FIG. 1 where they print none)."""
    from patent_assets.alignment import label_words

    rest = commonest_sentence(pool_texts) or CONSTANT_DESCRIPTION.removeprefix("FIG. 1")
    described = {}
    for image_id, words in ocr_words.items():
        numbers = [text for _, text in label_words(list(words)) if text not in ("FIG.", "FIGURE")]
        described[image_id] = f"FIG. {numbers[0] if numbers else 1}{rest}"
    return described


def nearest_neighbour_descriptions(
    queries: Mapping[str, Path],
    pool: Mapping[str, tuple[Path, str]],
    patent_of: Mapping[str, str],
    embed: Embedder,
) -> tuple[dict[str, str], dict[str, str]]:
    """For each query image id, the text of its most similar pool figure of another patent.

    `queries`: image id -> image; `pool`: image id -> (image, reference text); `patent_of`: image
    id -> patent, for queries and pool alike. Returns (descriptions, {image id: why it got none});
    a query whose image cannot be embedded, or with no pool figure of another patent, gets an
    empty description (scored as a miss), so that every baseline covers the same figures.
    """
    missing = sorted((set(queries) | set(pool)) - set(patent_of))
    if missing:
        raise ValueError(f"no patent known for image ids {missing[:5]}")
    pool_ids = list(pool)
    pool_vectors, pool_kept, _ = embed([pool[i][0] for i in pool_ids])
    pool_ids = [pool_ids[p] for p in pool_kept]
    pool_patents = np.array([patent_of[i] for i in pool_ids])
    query_ids = list(queries)
    query_vectors, query_kept, failed = embed([queries[i] for i in query_ids])
    descriptions = dict.fromkeys(query_ids, "")
    unanswered = {query_ids[p]: f"image not embedded: {reason}" for p, reason in failed.items()}
    if not pool_ids:
        unanswered |= {i: "no readable pool figure" for i in query_ids if i not in unanswered}
        return descriptions, unanswered
    similarity = np.asarray(query_vectors, np.float32) @ np.asarray(pool_vectors, np.float32).T
    for row, position in enumerate(query_kept):
        image_id = query_ids[position]
        scores = np.where(pool_patents == patent_of[image_id], -np.inf, similarity[row])
        best = int(np.argmax(scores))
        if np.isneginf(scores[best]):
            unanswered[image_id] = "every pool figure is of the same patent"
            continue
        descriptions[image_id] = pool[pool_ids[best]][1]
    return descriptions, unanswered
