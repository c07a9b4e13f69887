"""PatentLMM training examples from the pipeline's LLaVA JSON: the dataset and the collator.

An entry (patent_assets/llava.py) is `{"id", "image", "conversations": [human, gpt], "ocr": {words,
boxes, width, height}}`. One example is

    language model: <s> SYSTEM USER: <image>\\nWrite a brief description for this patent image. ASSISTANT: desc</s>
    labels:         -100 ......................................................................  desc</s>
    encoder:        the figure image + its OCR words and 0-1000 boxes (LayoutLMv3Processor)

The prompt is the conversation's human value in LLaVA-1.5's vicuna_v1 template, built by
`prompt_ids`, the same function inference (`modeling.describe`) uses: PatentLMM's own inference
prompt differed from its training one. The collator expands the one `<image>` token into as many
placeholders as the encoder gives features, which the model replaces with the projected features.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler

from patent_assets.llava import escape_description, prompt
from patent_assets.records import read_figure_rows
from training.describe.tokenizer import IMAGE, conversation_prompt

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Most real design grants print fewer than 20 FIGs, the largest here 92; training sheets 1 to 9.
# 50 left the two largest grants' labels past FIG. 59 unseen (12 of their 26 wrong numbers).
RENUMBER_MAX_OFFSET = 100


# LLaVA-1.5's vicuna_v1 conversation (the template the production LM was tuned with).
def prompt_ids(tokenizer: Any, kind_or_value: str) -> list[int]:
    """Token ids of the prompt (bos first, one `<image>`), from a kind ("brief"/"detailed") or a human value."""
    human_value = prompt(kind_or_value) if kind_or_value in ("brief", "detailed") else kind_or_value  # type: ignore[arg-type]
    return tokenizer(conversation_prompt(human_value), add_special_tokens=True)["input_ids"]


def answer_ids(tokenizer: Any, description: str) -> list[int]:
    return tokenizer(" " + description, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def expand_image_tokens(ids: Sequence[int], image_token_id: int, num_image_features: int) -> list[int]:
    """Replace the single `<image>` id by `num_image_features` copies of it."""
    count = sum(1 for i in ids if i == image_token_id)
    if count != 1:
        raise ValueError(f"expected exactly one <image> token in the prompt, found {count}")
    at = list(ids).index(image_token_id)
    return [*ids[:at], *([image_token_id] * num_image_features), *ids[at + 1 :]]


def encode_ocr(processor: Any, image: Image.Image, ocr: Any, ocr_max_tokens: int) -> dict[str, torch.Tensor]:
    """Encoder inputs of one figure: `ocr_input_ids`, `ocr_attention_mask`, `bbox`, `pixel_values` (no batch dim).

    What LayoutLMv3Processor gives for the image with the words and boxes (`encode_words`), in two
    parts so that a dataset can keep the image's costly part and encode the words again.
    """
    return {**encode_words(processor, ocr, ocr_max_tokens), "pixel_values": encode_image(processor, image)}


def encode_image(processor: Any, image: Image.Image) -> torch.Tensor:
    """The encoder's `pixel_values` of one figure (no batch dim): decoded, resized, normalised."""
    return processor.image_processor(image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


def encode_words(processor: Any, ocr: Any, ocr_max_tokens: int) -> dict[str, torch.Tensor]:
    """`ocr_input_ids`, `ocr_attention_mask`, `bbox` of one figure's OCR (no batch dim).

    `ocr` is an OcrWords or a dict with "words" and "boxes" ([x0, y0, x1, y1], 0-1000). The OCR is
    padded to `ocr_max_tokens` so every figure gives the same number of image features. The words
    of the sheet's FIG labels come first, each with its box, its FIG word as "FIG." and then its
    number (`label_words`): a sheet's other words (reference numerals, a table's cells) often
    fill the token budget before tesseract's reading order reaches the label, and the label is
    what the description must name.
    """
    from patent_assets.alignment import label_words

    words = list(ocr["words"] if isinstance(ocr, Mapping) else ocr.words)
    boxes = [list(b) for b in (ocr["boxes"] if isinstance(ocr, Mapping) else ocr.boxes)]
    if len(words) != len(boxes):
        raise ValueError(f"OCR has {len(words)} words but {len(boxes)} boxes")
    labels = label_words(words)
    chosen = {i for i, _ in labels}
    rest = [i for i in range(len(words)) if i not in chosen]
    words = [text for _, text in labels] + [words[i] for i in rest]
    boxes = [boxes[i] for i, _ in labels] + [boxes[i] for i in rest]
    for box in boxes:
        if len(box) != 4:
            raise ValueError(f"OCR box {box} is not [x0, y0, x1, y1]")
    boxes = [[min(max(int(v), 0), 1000) for v in box] for box in boxes]
    encoded = processor.tokenizer(
        text=words,
        boxes=boxes,
        truncation=True,
        padding="max_length",
        max_length=ocr_max_tokens,
        return_tensors="pt",
    )
    return {
        "ocr_input_ids": encoded["input_ids"][0],
        "ocr_attention_mask": encoded["attention_mask"][0],
        "bbox": encoded["bbox"][0],
    }


# What the model is shown (PatentLMM's ablations): "full"; "image_blind": a blank page and no OCR,
# so the description comes from the text prompt alone; "no_ocr": the image without its OCR words.
INPUT_MODES: tuple[str, ...] = ("full", "image_blind", "no_ocr")


def ablate_inputs(image: Image.Image, ocr: Any, mode: str) -> tuple[Image.Image, Any]:
    """The encoder inputs under an ablation; the same function at training and at inference."""
    if mode not in INPUT_MODES:
        raise ValueError(f"input mode must be one of {INPUT_MODES}, got {mode!r}")
    if mode == "image_blind":
        return Image.new("L", image.size, 255), {"words": [], "boxes": []}
    if mode == "no_ocr":
        return image, {"words": [], "boxes": []}
    return image, ocr


class PatentLMMDataset(Dataset):
    """Examples of one LLaVA JSON file (`llava_json/{brief,detailed}_{split}.json`).

    Images: `images_root / entry["image"]`, or `images_root[entry["id"]]` when it is a mapping
    (figures.jsonl's `image_path` per `image_id`), or next to the JSON file when None. Entries that
    cannot be used (no image file, no description, no `<image>` in the prompt) are left out and
    listed in `rejected` as (id, reason); the others are kept.

    Items are deterministic, so each is built once and kept while the kept items' tensors fit in
    `cache_bytes`: decoding a full-size sheet and resizing it cost more than a tiny model's step,
    and every epoch re-read every sheet. Past the budget items are rebuilt each time.

    `renumber_share` of the reads renumber the figure (training only): its FIG labels, in the OCR
    words and in the description alike, are raised by a random 1 to `RENUMBER_MAX_OFFSET`. Without
    it the pointer only learns to copy the labels the training sheets print (mostly 1 to 9, one
    token each) and on a sheet that prints "FIG. 27" or "FIG. 31" (two tokens to this tokenizer)
    the LM's "FIG. 2" or "FIG. 3" wins. The image keeps its printed number: the copy is learnt
    from the OCR, which is what the pointer reads.
    """

    def __init__(
        self,
        llava_json: Path,
        images_root: Path | Mapping[str, Path | str] | None,
        processor: Any,
        tokenizer: Any,
        max_length: int,
        ocr_max_tokens: int,
        inputs: str = "full",
        cache_bytes: int = 512 * 2**20,
        renumber_share: float = 0.0,
        seed: int = 0,
    ):
        if not 0.0 <= renumber_share <= 1.0:
            raise ValueError(f"renumber_share must be in [0, 1], got {renumber_share}")
        self.llava_json = Path(llava_json)
        self.inputs = inputs
        self.cache_bytes = cache_bytes
        self.renumber_share = renumber_share
        self._rng = random.Random(seed)
        self._rng_seed: int | None = None  # a DataLoader worker's seed, once _rng is that worker's
        self._cache: dict[int, dict[str, Any]] = {}
        self._cached_bytes = 0
        self.processor = processor
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.ocr_max_tokens = ocr_max_tokens
        try:
            entries = json.loads(self.llava_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{self.llava_json}: cannot read LLaVA JSON ({error})") from error
        if not isinstance(entries, list):
            raise ValueError(f"{self.llava_json}: expected a list of entries, got {type(entries).__name__}")
        self.entries: list[dict[str, Any]] = []
        self.image_paths: list[Path] = []
        self.rejected: list[tuple[str, str]] = []
        for position, entry in enumerate(entries):
            item = str(entry.get("id", f"#{position}")) if isinstance(entry, dict) else f"#{position}"
            try:
                image_path = self._check(entry, images_root)
            except ValueError as error:
                self.rejected.append((item, str(error)))
                logger.warning("%s: %s left out: %s", self.llava_json.name, item, error)
                continue
            self.entries.append(entry)
            self.image_paths.append(image_path)

    def _check(self, entry: Any, images_root: Path | Mapping[str, Path | str] | None) -> Path:
        if not isinstance(entry, dict) or "conversations" not in entry or "image" not in entry:
            raise ValueError("not a LLaVA entry (needs id, image, conversations)")
        turns = entry["conversations"]
        if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            raise ValueError("conversation must be a human turn then a gpt turn")
        if turns[0].get("value", "").count(IMAGE) != 1:
            raise ValueError(f"the human turn must hold exactly one {IMAGE}")
        if not turns[1].get("value", "").strip():
            raise ValueError("empty description")
        if isinstance(images_root, Mapping):
            if entry.get("id") not in images_root:
                raise ValueError("no image path for this id")
            path = Path(images_root[entry["id"]])
        else:
            root = Path(images_root) if images_root is not None else self.llava_json.parent
            path = Path(entry["image"]) if Path(entry["image"]).is_absolute() else root / entry["image"]
        if not path.is_file():
            raise ValueError(f"image {path} not found")
        return path

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self._cache.get(index)
        if item is None:
            item = self._build(index)
            size = sum(v.nbytes for v in item.values() if isinstance(v, torch.Tensor))
            if self._cached_bytes + size <= self.cache_bytes:
                self._cache[index] = item
                self._cached_bytes += size
        rng = self._renumber_rng()
        if self.renumber_share and rng.random() < self.renumber_share:
            return self._renumbered(index, item, rng.randint(1, RENUMBER_MAX_OFFSET))
        return item

    def _renumber_rng(self) -> random.Random:
        """The renumbering draws of this process. Each DataLoader worker holds its own copy of the
        dataset: seeded from the worker's seed (which torch draws anew for every epoch), workers do
        not all draw the main process's offsets, epoch after epoch."""
        worker = torch.utils.data.get_worker_info()
        if worker is not None and self._rng_seed != worker.seed:
            self._rng, self._rng_seed = random.Random(worker.seed), worker.seed
        return self._rng

    def _build(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        try:
            with Image.open(self.image_paths[index]) as image:
                shown, ocr = ablate_inputs(image, entry.get("ocr") or {"words": [], "boxes": []}, self.inputs)
                encoder_inputs = encode_ocr(self.processor, shown, ocr, self.ocr_max_tokens)
        except (OSError, ValueError) as error:
            raise ValueError(f"{self.llava_json.name}: entry {entry.get('id')}: {error}") from error
        return {"id": entry.get("id"), **self._text_inputs(entry["conversations"]), **encoder_inputs}

    def _text_inputs(self, conversations: Sequence[Mapping[str, str]]) -> dict[str, Any]:
        human, gpt = conversations[0], conversations[1]
        prompt_part = prompt_ids(self.tokenizer, human["value"])
        # Escaping again is a no-op on the pipeline's output and guards hand-made files.
        answer_part = answer_ids(self.tokenizer, escape_description(gpt["value"].strip()))
        return {
            "input_ids": (prompt_part + answer_part)[: self.max_length],
            "labels": ([IGNORE_INDEX] * len(prompt_part) + answer_part)[: self.max_length],
            "prompt_length": len(prompt_part),
        }

    def _renumbered(self, index: int, item: dict[str, Any], offset: int) -> dict[str, Any]:
        """`item` with its FIG labels raised by `offset` in the OCR words and the description; the
        item itself when the sheet prints no label this can shift (none read, a Hague "1.4")."""
        from patent_assets.alignment import renumber_label_words
        from patent_assets.figrefs import shift_figure_numbers

        entry = self.entries[index]
        ocr = entry.get("ocr") or {}
        words = renumber_label_words(ocr.get("words", []), offset) if self.inputs == "full" else None
        if words is None:
            return item
        human, gpt = entry["conversations"][0], entry["conversations"][1]
        try:
            description = shift_figure_numbers(gpt["value"], offset)
        except ValueError:
            return item
        return {
            **item,
            **self._text_inputs([human, {**gpt, "value": description}]),
            **encode_words(self.processor, {**ocr, "words": words}, self.ocr_max_tokens),
        }


def patent_balanced_weights(image_ids: Sequence[str], balance: float, cap: int = 0) -> list[float]:
    """Each figure's draw weight, (figures of its patent) ** -`balance`: 0 draws every figure alike,
    1 every patent alike, 0.5 between (square-root sampling); times min(1, `cap` / figures of its
    patent) with a `cap`, so that a patent of more figures is drawn as often as one of `cap`
    (0: no cap). A figure whose id names no patent (`patent_assets.patentdesc.IMAGE_ID_PATTERN`)
    is a patent of its own."""
    from patent_assets.patentdesc import patent_or_own_id

    if balance < 0 or cap < 0:
        raise ValueError(f"patent_balance and patent_cap must be >= 0, got {balance}, {cap}")
    patents = [patent_or_own_id(image_id) for image_id in image_ids]
    counts = Counter(patents)
    return [counts[p] ** -balance * (min(1.0, cap / counts[p]) if cap else 1.0) for p in patents]


class WeightedDistributedSampler(DistributedSampler):
    """DistributedSampler's shards and epochs, with each epoch drawn with replacement by `weights`.

    The order is a function of (seed, epoch), as DistributedSampler's: a resumed run skips into
    the same epoch. Each rank takes every `num_replicas`-th draw."""

    def __init__(self, dataset: Dataset, weights: Sequence[float], **kwargs: Any):
        super().__init__(dataset, **kwargs)
        if len(weights) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(f"{len(weights)} weights for {len(dataset)} items")  # type: ignore[arg-type]
        self.weights = torch.as_tensor(weights, dtype=torch.double)

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator)
        return iter(draws[self.rank : self.total_size : self.num_replicas].tolist())


class PatentLMMCollator:
    """Batches dataset items into exactly the model's forward inputs.

    Expands `<image>` to `num_image_features` placeholders (labels -100 there), truncates to
    `max_length` (the description's tail goes first), pads with the tokenizer's pad id. With
    `for_generation=True` it keeps only the prompts, left-padded, without labels, for `generate`.
    """

    def __init__(
        self,
        tokenizer: Any,
        num_image_features: int,
        max_length: int,
        *,
        image_token_id: int | None = None,
        for_generation: bool = False,
    ):
        self.pad_id = tokenizer.pad_token_id
        self.image_token_id = (
            image_token_id if image_token_id is not None else tokenizer.convert_tokens_to_ids(IMAGE)
        )
        self.num_image_features = num_image_features
        self.max_length = max_length
        self.for_generation = for_generation

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        rows: list[list[int]] = []
        label_rows: list[list[int]] = []
        for item in items:
            ids = list(item["input_ids"])
            labels = list(item["labels"])
            if self.for_generation:
                ids, labels = ids[: item["prompt_length"]], labels[: item["prompt_length"]]
            expanded = expand_image_tokens(ids, self.image_token_id, self.num_image_features)
            at = ids.index(self.image_token_id)
            expanded_labels = [*labels[:at], *([IGNORE_INDEX] * self.num_image_features), *labels[at + 1 :]]
            prompt_length = item["prompt_length"] - 1 + self.num_image_features
            if prompt_length >= self.max_length:
                raise ValueError(
                    f"item {item.get('id')}: prompt with {self.num_image_features} image placeholders is "
                    f"{prompt_length} tokens, not below max_length {self.max_length}"
                )
            rows.append(expanded[: self.max_length])
            label_rows.append(expanded_labels[: self.max_length])

        longest = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        for i, (row, label_row) in enumerate(zip(rows, label_rows, strict=True)):
            # Left padding for generation (new tokens follow the prompt), right padding for training.
            span = slice(longest - len(row), longest) if self.for_generation else slice(0, len(row))
            input_ids[i, span] = torch.tensor(row)
            attention_mask[i, span] = 1
            labels[i, span] = torch.tensor(label_row)

        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "ocr_input_ids": torch.stack([item["ocr_input_ids"] for item in items]),
            "ocr_attention_mask": torch.stack([item["ocr_attention_mask"] for item in items]),
            "bbox": torch.stack([item["bbox"] for item in items]),
            "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        }
        if not self.for_generation:
            batch["labels"] = labels
        return batch


def image_paths_from_figures(figures_jsonl: Path) -> dict[str, Path]:
    """`image_id` -> `image_path` from figures.jsonl (relative paths are taken from its folder)."""
    rows, rejected = read_figure_rows(Path(figures_jsonl), "training")
    for rejection in rejected:
        logger.warning("%s: %s left out: %s", figures_jsonl, rejection.item, rejection.reason)
    return {str(row["image_id"]): Path(row["image_path"]) for row in rows}
