"""One byte-level BPE, saved twice: for the language model (`lm/`) and for the vision encoder (`ocr/`).

The embedded default has no pretrained tokenizer, so it trains one on the training descriptions and
OCR words. Both saved forms share the same vocab.json/merges.txt, so a word has the same ids for the
language model and for LayoutLMv3's text embeddings:

- `lm/`: a `PreTrainedTokenizerFast` with `<s>` (bos, prepended), `</s>` (eos), `<pad>`, `<unk>` and
  `<image>` (the placeholder the model replaces with image features);
- `ocr/`: a `LayoutLMv3Processor` (image processor with `apply_ocr=False`, since our OCR words and
  0-1000 boxes come from the data pipeline, + `LayoutLMv3TokenizerFast` built from the same BPE).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.implementations import ByteLevelBPETokenizer
from transformers import (
    LayoutLMv3ImageProcessorPil,
    LayoutLMv3Processor,
    LayoutLMv3TokenizerFast,
    PreTrainedTokenizerFast,
)

from patent_assets.records import replace_path

BOS, EOS, PAD, UNK, MASK, IMAGE = "<s>", "</s>", "<pad>", "<unk>", "<mask>", "<image>"
# RoBERTa's order (LayoutLMv3 expects <s>=0, <pad>=1, </s>=2, <unk>=3), then <mask> and <image>.
SPECIAL_TOKENS = (BOS, PAD, EOS, UNK, MASK, IMAGE)
LM_SUBDIR, OCR_SUBDIR = "lm", "ocr"


SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def conversation_prompt(human_value: str) -> str:
    return f"{SYSTEM} USER: {human_value} ASSISTANT:"


def corpus_from_llava(llava_jsons: Iterable[Path]) -> Iterator[str]:
    """Texts to train the tokenizer on: the prompts, every description and the OCR words of each entry.

    The prompts (in the conversation template) are included so they become few tokens, not bytes.
    """
    for path in llava_jsons:
        for entry in json.loads(Path(path).read_text(encoding="utf-8")):
            for turn in entry.get("conversations", []):
                if turn.get("from") == "gpt":
                    yield turn.get("value", "")
                elif turn.get("from") == "human":
                    yield conversation_prompt(turn.get("value", ""))
            words = entry.get("ocr", {}).get("words", [])
            if words:
                yield " ".join(words)


def train_tokenizer(
    texts: Iterable[str],
    out_dir: Path,
    vocab_size: int = 4000,
    *,
    image_size: int = 384,
    ocr_max_tokens: int = 512,
    lm_max_length: int = 2048,
    min_frequency: int = 2,
) -> Path:
    """Train a byte-level BPE on `texts`; write `out_dir/lm` and `out_dir/ocr`; return `out_dir`.

    `image_size` and `ocr_max_tokens` configure the OCR processor (the encoder's input size and how
    many OCR tokens it keeps). The directory is written next to `out_dir` and renamed into place, so
    a failure never leaves a half-written tokenizer.
    """
    out_dir = Path(out_dir)
    bpe = ByteLevelBPETokenizer(add_prefix_space=True)
    bpe.train_from_iterator(
        (text for text in texts if text),
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        bpe.save_model(str(staging))  # vocab.json + merges.txt: the one vocabulary both forms read
        vocab = json.loads((staging / "vocab.json").read_text(encoding="utf-8"))
        merges = _read_merges(staging / "merges.txt")
        _lm_tokenizer(vocab, merges, lm_max_length).save_pretrained(staging / LM_SUBDIR)
        _ocr_processor(vocab, merges, image_size, ocr_max_tokens).save_pretrained(staging / OCR_SUBDIR)
        replace_path(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _read_merges(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]  # type: ignore[misc]


def _lm_tokenizer(
    vocab: dict[str, int], merges: list[tuple[str, str]], max_length: int
) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    # No prefix space: the prompt is tokenized exactly as written, like Llama's own tokenizer does.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS]
    )
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=[IMAGE],
        model_max_length=max_length,
        padding_side="right",
    )


def _ocr_processor(
    vocab: dict[str, int], merges: list[tuple[str, str]], image_size: int, ocr_max_tokens: int
) -> LayoutLMv3Processor:
    tokenizer = LayoutLMv3TokenizerFast(vocab=vocab, merges=merges, model_max_length=ocr_max_tokens)
    # The Pil backend: the torchvision one is not installed here, and both give the same pixels.
    image_processor = LayoutLMv3ImageProcessorPil(
        apply_ocr=False, size={"height": image_size, "width": image_size}
    )
    return LayoutLMv3Processor(image_processor=image_processor, tokenizer=tokenizer)


def load_lm_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    """The language model's tokenizer from a tokenizer directory (its `lm/` folder, or the folder itself)."""
    from transformers import AutoTokenizer

    path = _subdir(directory, LM_SUBDIR)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.convert_tokens_to_ids(IMAGE) in (None, tokenizer.unk_token_id):
        raise ValueError(f"tokenizer {path}: no {IMAGE} token (add it before training PatentLMM)")
    if tokenizer.pad_token is None:  # Llama's own tokenizer has none; LLaVA pads with <unk>
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def load_ocr_processor(directory: Path) -> LayoutLMv3Processor:
    """The encoder's processor (image processor + OCR tokenizer) from a tokenizer directory."""
    path = _subdir(directory, OCR_SUBDIR)
    image_processor = LayoutLMv3ImageProcessorPil.from_pretrained(str(path), local_files_only=True)
    if image_processor.apply_ocr:
        raise ValueError(f"OCR processor {path}: apply_ocr must be False (the OCR comes from the data)")
    tokenizer = LayoutLMv3TokenizerFast.from_pretrained(str(path), local_files_only=True)
    return LayoutLMv3Processor(image_processor=image_processor, tokenizer=tokenizer)


def _subdir(directory: Path, name: str) -> Path:
    directory = Path(directory)
    path = directory / name if (directory / name).is_dir() else directory
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {directory} does not exist")
    return path
