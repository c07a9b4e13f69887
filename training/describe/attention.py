"""Which attention kernel the language model uses: flash-attention 2 where it can run, else SDPA."""

from __future__ import annotations

import importlib.util
import logging

logger = logging.getLogger(__name__)


def choose_attention() -> str:
    """ "flash_attention_2" when the `flash_attn` package imports and a CUDA GPU is present, else "sdpa".

    flash-attn builds only against CUDA (an optional GPU extra), so CPU machines always get SDPA.
    The choice is logged and returned so that callers can record it (MLflow params).
    """
    import torch

    choice = "sdpa"
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        try:
            import flash_attn  # noqa: F401  (an installed but broken build must not be chosen)

            choice = "flash_attention_2"
        except Exception as error:  # ImportError, or an undefined CUDA symbol from a mismatched build
            logger.warning("flash_attn is installed but does not import (%s); using sdpa", error)
    logger.info("attention implementation: %s", choice)
    return choice
