"""Describing patent figures with a trained PatentLMM: load once, generate greedily, in batches.

A trained model directory is what `training.describe.train` saves as `out_dir/model`: the HF model
(`config.json` + safetensors) with the tokenizer directory (`lm/` + `ocr/`) copied into
`model/tokenizer`. `load_for_inference` checks and loads all of it before any work, so a missing or
corrupt checkpoint fails at once with the path and the reason.

Generation is PatentLMM's (greedy, up to 512 new tokens) from the SAME prompt as training: the
conversation template and `<image>` expansion of `training.describe.data` (`prompt_ids`,
`expand_image_tokens`, `encode_ocr`), the building blocks `modeling.describe` uses too. The OCR goes
to the vision encoder with the image, never into the prompt. Outputs keep PatentLMM's escape of
`<`/`>` (`[[`/`]]`), as the references do.

- `describe_images`: any PNG or TIFF (1-bit CCITT G4 included) read as stored, OCR by tesseract
  (`patent_assets.ocr.ocr_image` and the labels `patent_assets.alignment.with_label_reads` adds, as
  the pipeline reads its sheets; no text found is empty OCR, not an error);
- `describe_split`: the entries of a LLaVA JSON (test split) with the OCR stored in each entry, as
  in training, in file order, to PatentLMM's output `{image_id: text}` JSON.

Both go through `describe_figures`, which batches, skips (and reports) figures whose image cannot
be read, and can resume from a partly written output.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from patent_assets.images import ImageRejected, load_sheet
from patent_assets.llava import KINDS, escape_description, prompt
from patent_assets.records import OcrWords, Rejection, atomic_write

logger = logging.getLogger(__name__)

Kind = Literal["brief", "detailed"]
# Input ablations (training.describe.data.ablate_inputs): "image_blind" = blank page and no OCR, "no_ocr" = no OCR words.
InputMode = Literal["full", "image_blind", "no_ocr"]
INPUT_MODES: tuple[str, ...] = ("full", "image_blind", "no_ocr")
TOKENIZER_SUBDIR = "tokenizer"  # where training.describe.train copies the tokenizer next to the model
DEFAULT_MAX_NEW_TOKENS = 512  # PatentLMM's inference length
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class ModelLoadError(ValueError):
    """A model directory that cannot be used for inference; the message names the path and why."""


@dataclass
class Inference:
    """A loaded PatentLMM with everything generation needs."""

    model: Any  # PatentLMMForConditionalGeneration, in eval mode
    tokenizer: Any  # the language model's tokenizer
    processor: Any  # the encoder's LayoutLMv3Processor
    prompts: dict[str, str]  # kind -> the human turn of training (`patent_assets.llava.prompt`)
    model_dir: Path
    tokenizer_dir: Path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass
class Figure:
    """One figure to describe: its image, and its OCR (None: run tesseract on the image)."""

    image_id: str
    image_path: Path
    ocr: OcrWords | Mapping[str, Any] | None = None
    prompt: str | None = None  # the human turn; None: the kind's training prompt


@dataclass
class DescribeRun:
    """What `describe_figures` did: every description now in the output, and the figures left out."""

    descriptions: dict[str, str]
    generated: int = 0  # described in this run
    kept: int = 0  # already in the output (resumed), not generated again
    rejected: list[Rejection] = field(default_factory=list)
    path: Path | None = None


# ---------------------------------------------------------------------------------------- loading


def load_for_inference(
    model_dir: Path,
    *,
    tokenizer_dir: Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Inference:
    """Load a trained PatentLMM directory (and its `tokenizer/`, or `tokenizer_dir`) for generation.

    Raises `ModelLoadError` (or FileNotFoundError for a missing path) naming the directory and the
    reason: no config, no weights, unreadable or truncated weights, missing weights, a tokenizer
    that does not match the model. `device` None: CUDA when there is one, else CPU.
    """
    from training.describe.modeling import PatentLMMForConditionalGeneration
    from training.describe.tokenizer import IMAGE, load_lm_tokenizer, load_ocr_processor

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"model directory {model_dir}: no config.json (not a saved PatentLMM)")
    if not any((model_dir / name).is_file() for name in _WEIGHT_FILES):
        raise ModelLoadError(f"model directory {model_dir}: no weights ({' or '.join(_WEIGHT_FILES[::2])})")
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else model_dir / TOKENIZER_SUBDIR
    if not tokenizer_dir.is_dir():
        raise FileNotFoundError(
            f"tokenizer directory {tokenizer_dir} does not exist (training.describe.train saves it as model/tokenizer)"
        )

    try:
        model, info = PatentLMMForConditionalGeneration.from_pretrained(
            str(model_dir), local_files_only=True, dtype=dtype, output_loading_info=True
        )
    except Exception as error:  # safetensors, JSON, torch and transformers each raise their own types
        raise ModelLoadError(
            f"model directory {model_dir} cannot be loaded: {type(error).__name__}: {error}"
        ) from error
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # transformers would silently random-initialise them
        raise ModelLoadError(
            f"model directory {model_dir}: {len(missing)} weights missing from the checkpoint, e.g. {missing[:3]}"
        )
    try:
        tokenizer = load_lm_tokenizer(tokenizer_dir)
        processor = load_ocr_processor(tokenizer_dir)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"tokenizer directory {tokenizer_dir} cannot be loaded: {error}") from error
    if tokenizer.convert_tokens_to_ids(IMAGE) != model.config.image_token_id:
        raise ModelLoadError(
            f"tokenizer {tokenizer_dir} gives {IMAGE} id {tokenizer.convert_tokens_to_ids(IMAGE)}, the model "
            f"{model_dir} expects {model.config.image_token_id}: they were not trained together"
        )
    if len(tokenizer) > model.config.text_config.vocab_size:
        raise ModelLoadError(
            f"tokenizer {tokenizer_dir} has {len(tokenizer)} tokens, the model {model_dir} only "
            f"{model.config.text_config.vocab_size}"
        )

    device = torch.device(device) if device is not None else _default_device()
    model.to(device)
    model.eval()
    return Inference(
        model=model,
        tokenizer=tokenizer,
        processor=processor,
        prompts={kind: prompt(kind) for kind in KINDS},
        model_dir=model_dir,
        tokenizer_dir=tokenizer_dir,
    )


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------- generation


def encode_figure(
    inference: Inference, image: Image.Image, ocr: OcrWords | Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """The encoder inputs of one figure, as in training (`data.encode_ocr`); ValueError on bad OCR."""
    from training.describe.data import encode_ocr

    return encode_ocr(inference.processor, image, ocr, inference.model.config.ocr_max_tokens)


def generate_batch(
    inference: Inference,
    images: Sequence[Image.Image],
    ocrs: Sequence[OcrWords | Mapping[str, Any]],
    human_prompt: str,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[str]:
    """Greedy descriptions of several figures that share one prompt (the training human turn).

    One prompt means equal-length rows, so no padding: each row gives what `modeling.describe` gives.
    """
    if len(images) != len(ocrs):
        raise ValueError(f"{len(images)} images but {len(ocrs)} OCR results")
    encoded = [encode_figure(inference, image, ocr) for image, ocr in zip(images, ocrs, strict=True)]
    return generate_encoded(inference, encoded, human_prompt, max_new_tokens)


@torch.no_grad()
def generate_encoded(
    inference: Inference,
    encoded: Sequence[Mapping[str, torch.Tensor]],
    human_prompt: str,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[str]:
    """`generate_batch` on figures already encoded by `encode_figure`."""
    from training.describe.data import expand_image_tokens, prompt_ids

    if not encoded:
        return []
    model, tokenizer, config = inference.model, inference.tokenizer, inference.model.config
    ids = expand_image_tokens(
        prompt_ids(tokenizer, human_prompt), config.image_token_id, config.num_image_features
    )
    # Llama's rotary positions would extrapolate past the trained length: stop there instead.
    room = config.text_config.max_position_embeddings - len(ids)
    if room < 1:
        raise ValueError(
            f"the prompt with image placeholders is {len(ids)} tokens, the model's maximum "
            f"{config.text_config.max_position_embeddings}"
        )
    if max_new_tokens > room:
        logger.debug("max_new_tokens %d -> %d (max_position_embeddings)", max_new_tokens, room)
        max_new_tokens = room

    device = inference.device
    input_ids = torch.tensor([ids] * len(encoded), device=device)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        **{key: torch.stack([item[key] for item in encoded]).to(device) for key in encoded[0]},
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    new_tokens = output[:, input_ids.shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _read_image(path: Path) -> Image.Image:
    """The image as stored (no rotation: whether a sheet is landscape is not known here)."""
    return load_sheet(Path(path), landscape=False)


def _ocr_of(figure: Figure, image: Image.Image) -> OcrWords | Mapping[str, Any]:
    if figure.ocr is not None:
        return figure.ocr
    from patent_assets.alignment import with_label_reads
    from patent_assets.ocr import ocr_image

    # As the pipeline reads its sheets: the text layer, then the labels only the label scan reads.
    # Empty words when tesseract reads nothing.
    return with_label_reads(figure.image_path, ocr_image(figure.image_path))


def describe_figures(
    figures: Iterable[Figure],
    inference: Inference,
    kind: Kind = "brief",
    *,
    out: Path | None = None,
    resume: bool = True,
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    inputs: InputMode = "full",
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> DescribeRun:
    """Describe `figures` in batches; write `{image_id: text}` to `out` (atomically) when given.

    A figure whose image cannot be read (or whose OCR fails) is left out, logged and listed in
    `rejected`; the rest go on. With `resume`, descriptions already in `out` are kept and not
    generated again, and so are those of an interrupted run (appended batch by batch to a journal
    beside `out`, `.{name}.partial.jsonl`, removed once `out` is written). `on_batch(done, total)`
    is called after each batch (progress reporting). `inputs` ablates the encoder's inputs.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if inputs not in INPUT_MODES:
        raise ValueError(f"inputs must be one of {INPUT_MODES}, got {inputs!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    figures = list(figures)
    seen: set[str] = set()
    for figure in figures:
        if figure.image_id in seen:
            raise ValueError(f"figure {figure.image_id} is listed twice")
        seen.add(figure.image_id)

    journal = out.with_name(f".{out.name}.partial.jsonl") if out is not None else None
    from training.describe.data import ablate_inputs

    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    previous: dict[str, str] = {}
    if out is not None and resume:
        previous = _read_existing(out, journal)
    elif journal is not None:
        journal.unlink(missing_ok=True)
    todo = [figure for figure in figures if figure.image_id not in previous]
    run = DescribeRun(descriptions={}, kept=len(figures) - len(todo), path=out)
    if run.kept:
        logger.info(
            "%d of %d figures already described (resumed), %d to go", run.kept, len(figures), len(todo)
        )

    from tqdm import tqdm

    new: dict[str, str] = {}
    bar = tqdm(total=len(todo), desc=f"describe ({kind})", unit="fig", disable=not progress)
    journal_handle = journal.open("a", encoding="utf-8") if journal is not None else None
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            loaded: list[tuple[Figure, dict[str, torch.Tensor]]] = []
            for figure in batch:
                try:
                    image = _read_image(figure.image_path)
                    image, ocr = ablate_inputs(image, _ocr_of(figure, image), inputs)
                    loaded.append((figure, encode_figure(inference, image, ocr)))
                except (ImageRejected, OSError, RuntimeError, ValueError) as error:
                    # pytesseract's failures are RuntimeErrors (TesseractError) or OSErrors; bad
                    # stored OCR (words and boxes that do not pair up) a ValueError.
                    reason = (
                        str(error)
                        if str(figure.image_path) in str(error)
                        else f"{figure.image_path}: {error}"
                    )
                    run.rejected.append(
                        Rejection(figure.image_id, reason, stage="inference", source=str(figure.image_path))
                    )
                    logger.warning("figure %s left out: %s", figure.image_id, reason)
            # Rows of a batch share one prompt; a batch mixing prompts is split by prompt.
            by_prompt: dict[str, list[tuple[Figure, dict[str, torch.Tensor]]]] = {}
            for figure, encoded in loaded:
                by_prompt.setdefault(figure.prompt or inference.prompts[kind], []).append((figure, encoded))
            for human_prompt, items in by_prompt.items():
                texts = generate_encoded(inference, [item[1] for item in items], human_prompt, max_new_tokens)
                for (figure, _), text in zip(items, texts, strict=True):
                    new[figure.image_id] = text
                    if journal_handle is not None:
                        journal_handle.write(json.dumps({"image_id": figure.image_id, "text": text}) + "\n")
            if journal_handle is not None:
                journal_handle.flush()
                os.fsync(journal_handle.fileno())
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(min(start + batch_size, len(todo)), len(todo))
    finally:
        bar.close()
        if journal_handle is not None:
            journal_handle.close()

    run.generated = len(new)
    order = [f.image_id for f in figures]
    merged = {**previous, **new}
    # Figure order first (deterministic), then entries of an earlier run for other figures.
    run.descriptions = {i: merged[i] for i in order if i in merged} | {
        i: text for i, text in previous.items() if i not in seen
    }
    if out is not None:
        with atomic_write(out) as handle:
            json.dump(run.descriptions, handle, ensure_ascii=False, indent=1)
        journal.unlink(missing_ok=True)
    return run


def _read_existing(out: Path, journal: Path) -> dict[str, str]:
    """Descriptions of earlier runs: the finished output and the journal of an interrupted one."""
    existing: dict[str, str] = {}
    if out.is_file():
        try:
            data = json.loads(out.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{out}: existing output is not valid JSON ({error}); remove it to start over"
            ) from error
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(
                f"{out}: existing output is not an {{image_id: text}} object; remove it to start over"
            )
        existing.update(data)
    if journal.is_file():
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                existing[str(row["image_id"])] = str(row["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # the torn last line of a killed run
    return existing


# ------------------------------------------------------------------------------------ entry points


def describe_images(
    paths: Sequence[Path],
    inference: Inference,
    kind: Kind = "brief",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    *,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """Describe image files (PNG or TIFF, read as stored), OCR by tesseract.

    Returns one dict per path, in order: `{"image": path, "description": text, "error": None}`, or
    `description` None and `error` the reason when the image cannot be read.
    """
    figures = [Figure(image_id=f"{i}", image_path=Path(p)) for i, p in enumerate(paths)]
    run = describe_figures(
        figures, inference, kind, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=False
    )
    errors = {r.item: r.reason for r in run.rejected}
    return [
        {
            "image": str(f.image_path),
            "description": run.descriptions.get(f.image_id),
            "error": errors.get(f.image_id),
        }
        for f in figures
    ]


def split_figures(
    llava_json: Path, figures_jsonl: Path | None = None, *, limit: int | None = None
) -> tuple[list[Figure], dict[str, str], list[Rejection]]:
    """The figures of a LLaVA JSON in file order, with their stored OCR and training prompt, and
    their reference descriptions. Images come from figures.jsonl's `image_path` (or, without it,
    the entry's `image` beside the JSON). Unusable entries are returned as rejections."""
    from training.describe.data import image_paths_from_figures

    llava_json = Path(llava_json)
    try:
        entries = json.loads(llava_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{llava_json}: cannot read LLaVA JSON ({error})") from error
    if not isinstance(entries, list):
        raise ValueError(f"{llava_json}: expected a list of entries, got {type(entries).__name__}")
    image_paths = image_paths_from_figures(Path(figures_jsonl)) if figures_jsonl is not None else None

    figures: list[Figure] = []
    references: dict[str, str] = {}
    rejected: list[Rejection] = []
    for position, entry in enumerate(entries):
        if limit is not None and len(figures) >= limit:
            break
        item = str(entry.get("id", f"#{position}")) if isinstance(entry, dict) else f"#{position}"
        try:
            figure, reference = _split_entry(entry, llava_json, image_paths)
        except (KeyError, TypeError, IndexError, ValueError) as error:
            reason = f"{llava_json.name}: {error}"
            rejected.append(Rejection(item, reason, stage="inference", source=str(llava_json)))
            logger.warning("entry %s left out: %s", item, reason)
            continue
        if figure.image_id in references:
            rejected.append(Rejection(item, "duplicate id", stage="inference", source=str(llava_json)))
            continue
        figures.append(figure)
        references[figure.image_id] = reference
    return figures, references, rejected


def _split_entry(entry: Any, llava_json: Path, image_paths: Mapping[str, Path] | None) -> tuple[Figure, str]:
    if not isinstance(entry, dict):
        raise ValueError("not a LLaVA entry")
    image_id = str(entry["id"])
    human, gpt = entry["conversations"][0], entry["conversations"][1]
    if human.get("from") != "human" or gpt.get("from") != "gpt":
        raise ValueError("conversation must be a human turn then a gpt turn")
    if not gpt.get("value", "").strip():
        raise ValueError("empty reference description")
    if image_paths is not None:
        if image_id not in image_paths:
            raise ValueError("no image_path in figures.jsonl for this id")
        path = image_paths[image_id]
    else:
        path = (
            Path(entry["image"]) if Path(entry["image"]).is_absolute() else llava_json.parent / entry["image"]
        )
    ocr = entry.get("ocr") or {"words": [], "boxes": []}
    # Escaped as in training (a no-op on the pipeline's files): predictions come out escaped too.
    return Figure(image_id, Path(path), ocr, prompt=human["value"]), escape_description(gpt["value"].strip())


def describe_split(
    llava_json: Path,
    figures_jsonl: Path | None,
    inference: Inference,
    kind: Kind,
    out: Path,
    *,
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    resume: bool = False,
    limit: int | None = None,
    inputs: InputMode = "full",
    progress: bool = True,
) -> DescribeRun:
    """Describe every figure of a LLaVA JSON (a test split) in file order, from the OCR stored with
    each entry and its own prompt, as in training; write PatentLMM's `{image_id: text}` to `out`."""
    figures, _, rejected = split_figures(llava_json, figures_jsonl, limit=limit)
    run = describe_figures(
        figures,
        inference,
        kind,
        out=Path(out),
        resume=resume,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        inputs=inputs,
        progress=progress,
    )
    run.rejected = rejected + run.rejected
    return run
