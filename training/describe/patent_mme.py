"""PatentMME-style pretraining of a LayoutLMv3 encoder on patent drawing sheets.

PatentLMM's vision encoder, PatentMME, is LayoutLMv3 pretrained on patent figures with three
objectives, all three kept here:

1. Masked language modelling (MLM) of 30% of the OCR tokens (BERT's 80/10/10 replacement), the
   head tied to the word embeddings.
2. Layout-aware masked image modelling (MIM) of 40% of the patches that hold drawing structure:
   the masked patches' embeddings are replaced by a learned mask embedding and the model predicts
   each one's discrete code. PatentMME's codes come from an OCR-VQGAN codebook of 16384 entries,
   which is not available offline. The substitute is a k-means codebook over the grey-level pixels
   of the ink patches of the training sheets (Lloyd's algorithm in torch), fitted before training
   and saved with the heads: like a VQ tokenizer it maps a patch to the nearest of K prototypes,
   so the target is still "which kind of drawing fragment was here" rather than raw pixels.
   Masked patches are chosen only among patches holding ink (the "layout-aware" part): blank
   paper is trivially predictable and would teach nothing.
3. Patch classification (multi-label) over the classes we can derive honestly from our data,
   `PATCH_CLASSES`: `figure_label` (the patch overlaps an OCR word of a printed FIG label),
   `node_label` (it overlaps a reference numeral such as "12" or "14a"), `text` (other OCR words)
   and `drawing` (it holds ink outside every OCR word box: strokes). The paper's node and arrow
   classes need drawing annotations we do not have; both are strokes, so they fall into `drawing`.

The encoder alone is saved as a plain `LayoutLMv3Model` directory (`out_dir/encoder`), which is
what stages 1 and 2 load; the pretraining model with its heads and codebook goes to
`out_dir/pretraining`. In production a PatentMME or LayoutLMv3 checkpoint is loaded instead
(`load_or_pretrain`).
"""

from __future__ import annotations

import logging
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from torch import nn
from transformers import (
    LayoutLMv3Config,
    LayoutLMv3Model,
    LayoutLMv3Processor,
    PretrainedConfig,
    PreTrainedModel,
    get_cosine_schedule_with_warmup,
)
from transformers.utils import ModelOutput

from patent_assets.alignment import scan_words
from patent_assets.records import OcrWords, Rejection, read_figure_rows, write_jsonl

from .configs import TINY, ModelPreset, PatentMMEPretraining
from .modeling import encoder_config
from .tokenizer import load_ocr_processor

log = logging.getLogger(__name__)

PATCH_CLASSES: tuple[str, ...] = ("figure_label", "node_label", "text", "drawing")
ENCODER_SUBDIR = "encoder"
PRETRAINING_SUBDIR = "pretraining"

# A reference numeral on a drawing: "12", "14a", "102'", "3B" (digits first, short).
_NUMERAL_RE = re.compile(r"^\d{1,4}[A-Za-z]?['’]?$")


class PatentMMEConfig(PretrainedConfig):
    """The encoder's config plus the pretraining objectives' settings."""

    model_type = "patent_mme"
    sub_configs = {"encoder_config": LayoutLMv3Config}

    def __init__(
        self,
        encoder_config: LayoutLMv3Config | dict[str, Any] | None = None,
        codebook_size: int = 16384,
        patch_classes: Sequence[str] = PATCH_CLASSES,
        mlm_probability: float = 0.3,
        mim_probability: float = 0.4,
        ink_threshold: float = 0.6,  # grey level (0 black, 1 white) below which a pixel is ink
        min_ink_fraction: float = 0.01,  # share of a patch's pixels that must be ink to count
        tie_word_embeddings: bool = True,
        **kwargs: Any,
    ) -> None:
        if isinstance(encoder_config, dict):
            encoder_config = LayoutLMv3Config(**encoder_config)
        self.encoder_config = encoder_config if encoder_config is not None else LayoutLMv3Config()
        self.codebook_size = codebook_size
        self.patch_classes = list(patch_classes)
        self.mlm_probability = mlm_probability
        self.mim_probability = mim_probability
        self.ink_threshold = ink_threshold
        self.min_ink_fraction = min_ink_fraction
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(**kwargs)

    @property
    def patch_dim(self) -> int:
        return self.encoder_config.patch_size**2


@dataclass
class PatentMMEOutput(ModelOutput):
    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    mim_loss: torch.Tensor | None = None
    patch_loss: torch.Tensor | None = None
    mlm_logits: torch.Tensor | None = None
    mim_logits: torch.Tensor | None = None
    patch_logits: torch.Tensor | None = None


class MaskedLMHead(nn.Module):
    """RoBERTa's MLM head: dense, GELU, layer norm, then a decoder tied to the word embeddings."""

    def __init__(self, hidden_size: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(hidden))))


class PatentMMEForPretraining(PreTrainedModel):
    """LayoutLMv3 with the three PatentMME heads and the MIM codebook (a persistent buffer)."""

    config_class = PatentMMEConfig
    base_model_prefix = "layoutlmv3"
    main_input_name = "input_ids"
    _tied_weights_keys = {"mlm_head.decoder.weight": "layoutlmv3.embeddings.word_embeddings.weight"}

    def __init__(self, config: PatentMMEConfig) -> None:
        super().__init__(config)
        enc = config.encoder_config
        self.layoutlmv3 = LayoutLMv3Model(enc)
        self.mask_patch_embedding = nn.Parameter(torch.zeros(enc.hidden_size))
        self.mlm_head = MaskedLMHead(enc.hidden_size, enc.vocab_size, enc.layer_norm_eps)
        self.mim_head = nn.Linear(enc.hidden_size, config.codebook_size)
        self.patch_head = nn.Linear(enc.hidden_size, len(config.patch_classes))
        self.register_buffer("codebook", torch.zeros(config.codebook_size, config.patch_dim))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The encoder's own initialisation (normal linears, zero CLS/position, visual boxes).
        self.layoutlmv3._init_weights(module)
        if module is self:
            nn.init.normal_(self.mask_patch_embedding, std=self.config.encoder_config.initializer_range)

    def get_input_embeddings(self) -> nn.Module:
        return self.layoutlmv3.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.mlm_head.decoder

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        bbox: torch.Tensor,
        pixel_values: torch.Tensor,
        masked_patches: torch.Tensor | None = None,  # [batch, patches] bool: replaced by the mask embedding
        mlm_labels: torch.Tensor | None = None,  # [batch, tokens], -100 where not masked
        mim_labels: torch.Tensor | None = None,  # [batch, patches], codebook index, -100 where not masked
        patch_labels: torch.Tensor | None = None,  # [batch, patches, classes] 0/1
    ) -> PatentMMEOutput:
        hook = None
        if masked_patches is not None:
            mask = masked_patches.unsqueeze(-1)

            def replace_masked(_module: nn.Module, _inputs: Any, embeddings: torch.Tensor) -> torch.Tensor:
                # BEiT/LayoutLMv3 masking: the masked patches' embeddings become the learned mask token.
                return torch.where(mask, self.mask_patch_embedding.to(embeddings.dtype), embeddings)

            hook = self.layoutlmv3.patch_embed.register_forward_hook(replace_masked)
        try:
            hidden = self.layoutlmv3(
                input_ids=input_ids, attention_mask=attention_mask, bbox=bbox, pixel_values=pixel_values
            ).last_hidden_state
        finally:
            if hook is not None:
                hook.remove()
        n_text = input_ids.shape[1]
        text_hidden, patch_hidden = hidden[:, :n_text], hidden[:, n_text + 1 :]  # skip the visual CLS

        mlm_logits = self.mlm_head(text_hidden)
        mim_logits = self.mim_head(patch_hidden)
        patch_logits = self.patch_head(patch_hidden)
        losses: dict[str, torch.Tensor] = {}
        if mlm_labels is not None and (mlm_labels != -100).any():
            losses["mlm"] = F.cross_entropy(mlm_logits.flatten(0, 1), mlm_labels.flatten(), ignore_index=-100)
        if mim_labels is not None and (mim_labels != -100).any():
            losses["mim"] = F.cross_entropy(mim_logits.flatten(0, 1), mim_labels.flatten(), ignore_index=-100)
        if patch_labels is not None:
            losses["patch"] = F.binary_cross_entropy_with_logits(
                patch_logits, patch_labels.to(patch_logits.dtype)
            )
        return PatentMMEOutput(
            loss=sum(losses.values()) if losses else None,
            mlm_loss=losses.get("mlm"),
            mim_loss=losses.get("mim"),
            patch_loss=losses.get("patch"),
            mlm_logits=mlm_logits,
            mim_logits=mim_logits,
            patch_logits=patch_logits,
        )


# -- data: sheets -> encoder inputs, patch pixels, ink and patch labels ----------------------------


@dataclass
class SheetExample:
    image_id: str
    input_ids: torch.Tensor  # [tokens]
    attention_mask: torch.Tensor  # [tokens]
    bbox: torch.Tensor  # [tokens, 4]
    pixel_values: torch.Tensor  # [3, size, size]
    patch_pixels: torch.Tensor  # [patches, patch*patch] grey levels 0-1 (codebook input)
    ink: torch.Tensor  # [patches] bool: the patch holds drawing structure (any ink)
    patch_labels: torch.Tensor  # [patches, classes] 0/1
    special_tokens: torch.Tensor  # [tokens] bool: never masked (<s>, </s>, <pad>)


def word_classes(ocr: OcrWords) -> list[str]:
    """The patch class of each OCR word: figure_label, node_label or text."""
    classes = ["text"] * len(ocr.words)
    label_boxes = {tuple(hit.box) for hit in scan_words(ocr).hits}
    for i, (word, box) in enumerate(zip(ocr.words, ocr.boxes, strict=True)):
        if tuple(box) in label_boxes:
            classes[i] = "figure_label"
            # "FIG." and its number are separate words: the number belongs to the label too.
            if not any(ch.isdigit() for ch in word) and i + 1 < len(ocr.words):
                classes[i + 1] = "figure_label"
        elif classes[i] == "text" and _NUMERAL_RE.match(word.strip(".,;:()")):
            classes[i] = "node_label"
    return classes


def _patch_span(low: int, high: int, grid: int) -> range:
    """The patch indices (along one axis) that a 0-1000 interval overlaps."""
    first = min(grid - 1, max(0, low * grid // 1000))
    last = min(grid - 1, max(first, math.ceil(high * grid / 1000) - 1))
    return range(first, last + 1)


def sheet_example(
    record: dict[str, Any],
    processor: LayoutLMv3Processor,
    config: PatentMMEConfig,
    records_dir: Path,
) -> SheetExample:
    """Encoder inputs, patch pixels, ink and patch labels of one figures.jsonl record."""
    enc = config.encoder_config
    size, patch = enc.input_size, enc.patch_size
    grid = size // patch
    image_path = Path(record["image_path"])
    if not image_path.is_absolute() and not image_path.exists():
        image_path = records_dir / image_path
    with Image.open(image_path) as opened:
        image = opened.convert("RGB")
    ocr = OcrWords(**record.get("ocr", {}))
    if len(ocr.words) != len(ocr.boxes):
        raise ValueError(f"{len(ocr.words)} OCR words but {len(ocr.boxes)} boxes")
    boxes = [[min(1000, max(0, int(v))) for v in box] for box in ocr.boxes]

    pixel_values = processor.image_processor(
        image, size={"height": size, "width": size}, return_tensors="pt"
    ).pixel_values[0]
    tokens = processor.tokenizer(
        ocr.words or [""],
        boxes=boxes or [[0, 0, 0, 0]],
        truncation=True,
        max_length=enc.max_position_embeddings - enc.pad_token_id - 1,
        padding="max_length",
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    special = tokens["special_tokens_mask"][0].bool() | (tokens["attention_mask"][0] == 0)

    # Grey levels back in 0-1 (undo the processor's normalisation), cut into patches row by row,
    # the order of LayoutLMv3's patch sequence.
    mean = torch.tensor(processor.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(3, 1, 1)
    grey = (pixel_values * std + mean).mean(0).clamp(0, 1)  # [size, size]
    patch_pixels = grey.unfold(0, patch, patch).unfold(1, patch, patch).reshape(grid * grid, patch * patch)
    is_ink = grey < config.ink_threshold
    ink = is_ink.float().unfold(0, patch, patch).unfold(1, patch, patch).mean((-1, -2)).flatten()

    labels = torch.zeros(grid, grid, len(config.patch_classes))
    class_index = {name: i for i, name in enumerate(config.patch_classes)}
    in_words = torch.zeros(size, size, dtype=torch.bool)
    for word_class, (x0, y0, x1, y1) in zip(word_classes(ocr), boxes, strict=True):
        if x1 <= x0 or y1 <= y0:
            continue
        for row in _patch_span(y0, y1, grid):
            for col in _patch_span(x0, x1, grid):
                labels[row, col, class_index[word_class]] = 1.0
        in_words[
            y0 * size // 1000 : math.ceil(y1 * size / 1000), x0 * size // 1000 : math.ceil(x1 * size / 1000)
        ] = True
    strokes = (is_ink & ~in_words).float().unfold(0, patch, patch).unfold(1, patch, patch).mean((-1, -2))
    labels[..., class_index["drawing"]] = (strokes >= config.min_ink_fraction).float()

    return SheetExample(
        image_id=str(record.get("image_id", image_path.stem)),
        input_ids=tokens["input_ids"][0],
        attention_mask=tokens["attention_mask"][0],
        bbox=tokens["bbox"][0],
        pixel_values=pixel_values,
        patch_pixels=patch_pixels,
        ink=ink >= config.min_ink_fraction,
        patch_labels=labels.reshape(grid * grid, -1),
        special_tokens=special,
    )


def load_sheets(
    records_jsonl: Path, processor: LayoutLMv3Processor, config: PatentMMEConfig
) -> tuple[list[SheetExample], list[Rejection]]:
    """Every readable sheet of figures.jsonl; a bad record is rejected with its reason, the rest go on."""
    # `sheet_example` resolves each image path itself: as written first, then from the file's folder.
    records, rejected = read_figure_rows(records_jsonl, "pretraining", resolve_images=False)
    for rejection in rejected:
        log.warning("patent_mme: skipping %s: %s", rejection.item, rejection.reason)
    examples: list[SheetExample] = []
    for record in records:
        try:
            examples.append(sheet_example(record, processor, config, records_jsonl.parent))
        except (OSError, ValueError, KeyError, TypeError) as error:
            item = str(record["image_id"])
            rejected.append(
                Rejection(item, f"{type(error).__name__}: {error}", "pretraining", str(records_jsonl))
            )
            log.warning("patent_mme: skipping %s: %s", item, error)
    return examples, rejected


# -- the MIM codebook: k-means over ink patches ------------------------------------------------


def _nearest(points: torch.Tensor, centroids: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Index of the nearest centroid of each point, in chunks so that a 16384-code book fits in memory."""
    return torch.cat([torch.cdist(part, centroids).argmin(1) for part in points.split(chunk)])


def fit_codebook(
    patches: torch.Tensor, codebook_size: int, iterations: int = 20, seed: int = 0
) -> torch.Tensor:
    """K-means (k-means++ seeding, Lloyd iterations) of patch pixel vectors: the MIM codebook."""
    if len(patches) == 0:
        raise ValueError("no ink patches to fit the MIM codebook on: the sheets are blank")
    generator = torch.Generator().manual_seed(seed)
    points = patches.float()
    # k-means++ seeding: each new centroid drawn in proportion to its squared distance to the chosen ones.
    centroids = points[torch.randint(len(points), (1,), generator=generator)]
    nearest_sq = torch.cdist(points, centroids).squeeze(1) ** 2
    while len(centroids) < codebook_size:
        weights = nearest_sq if nearest_sq.sum() > 0 else torch.ones_like(nearest_sq)
        chosen = points[torch.multinomial(weights, 1, generator=generator)]
        centroids = torch.cat([centroids, chosen])
        nearest_sq = torch.minimum(nearest_sq, torch.cdist(points, chosen).squeeze(1) ** 2)
    for _ in range(iterations):
        assignment = _nearest(points, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=codebook_size).unsqueeze(1)
        moved = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)  # empty clusters stay put
        if torch.allclose(moved, centroids):
            break
        centroids = moved
    return centroids


# -- masking ----------------------------------------------------------------------------------------


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    probability: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of `probability` of the OCR tokens: 80% <mask>, 10% a random token, 10% unchanged."""
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special_tokens
    # A sheet with a few OCR words may draw none: mask one of them, so every step has an MLM target.
    for row in (~chosen.any(1)).nonzero().flatten():
        candidates = (~special_tokens[row]).nonzero().flatten()
        if len(candidates):
            chosen[row, candidates[torch.randint(len(candidates), (1,), generator=generator)]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    masked = input_ids.clone()
    draw = torch.rand(input_ids.shape, generator=generator)
    masked[chosen & (draw < 0.8)] = mask_token_id
    random_tokens = torch.randint(vocab_size, input_ids.shape, generator=generator)
    swap = chosen & (draw >= 0.8) & (draw < 0.9)
    masked[swap] = random_tokens[swap]
    return masked, labels


def mask_ink_patches(ink: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Choose `probability` of each sheet's ink patches (at least one where there is ink); never blank ones."""
    masked = torch.zeros_like(ink)
    for row, sheet_ink in enumerate(ink):
        candidates = sheet_ink.nonzero().flatten()
        if len(candidates) == 0:
            continue
        count = max(1, round(probability * len(candidates)))
        masked[row, candidates[torch.randperm(len(candidates), generator=generator)[:count]]] = True
    return masked


# -- training -------------------------------------------------------------------------------------------


@dataclass
class PretrainResult:
    encoder_dir: Path  # a LayoutLMv3Model directory: what stages 1 and 2 load
    pretraining_dir: Path | None  # the PatentMMEForPretraining (heads + codebook); None when loaded
    losses: dict[str, list[float]] = field(default_factory=dict)  # per objective and "total", per step
    steps: int = 0
    sheets: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    seconds: float = 0.0
    pretrained: bool = True  # False: an existing checkpoint was loaded and pretraining skipped


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def pretrain_patent_mme(
    records_jsonl: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    preset: ModelPreset = TINY,
    options: PatentMMEPretraining | None = None,
) -> PretrainResult:
    """Pretrain a random-initialised LayoutLMv3 of `preset`'s size on the sheets of figures.jsonl.

    `tokenizer_dir` holds the OCR processor (`training.describe.tokenizer`'s `ocr/` directory).
    `options` says how long and how (default: `PatentMMEPretraining()`, one epoch). Writes
    `out_dir/encoder` (LayoutLMv3Model), `out_dir/pretraining` (heads + codebook) and
    `out_dir/rejected.jsonl` (sheets left out).
    """
    started = time.perf_counter()
    options = options if options is not None else PatentMMEPretraining()
    _seed_everything(options.seed)
    processor = load_ocr_processor(Path(tokenizer_dir))
    tokenizer = processor.tokenizer
    if tokenizer.mask_token_id is None:
        raise ValueError(f"the OCR tokenizer in {tokenizer_dir} has no mask token: MLM needs one")
    config = PatentMMEConfig(
        encoder_config=encoder_config(preset, len(tokenizer), pad_token_id=tokenizer.pad_token_id),
        # The paper's 16384 codes at full size; a tiny model on a handful of sheets gets fewer.
        codebook_size=options.codebook_size or (16384 if preset.vision_hidden_size >= 512 else 64),
    )
    examples, rejected = load_sheets(Path(records_jsonl), processor, config)
    if not examples:
        raise ValueError(f"no usable sheet in {records_jsonl} ({len(rejected)} rejected)")

    model = PatentMMEForPretraining(config)
    ink_patches = torch.cat([ex.patch_pixels[ex.ink] for ex in examples])
    model.codebook.copy_(fit_codebook(ink_patches, config.codebook_size, seed=options.seed))
    codes = [_nearest(ex.patch_pixels, model.codebook) for ex in examples]

    batch_size = options.batch_size
    batches_per_epoch = math.ceil(len(examples) / batch_size)
    total_steps = options.steps if options.steps is not None else (options.epochs or 1) * batches_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=0.01)
    warmup = math.ceil(options.warmup_ratio * total_steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    generator = torch.Generator().manual_seed(options.seed)
    losses: dict[str, list[float]] = {"total": [], "mlm": [], "mim": [], "patch": []}

    model.train()
    order: list[int] = []
    for step in range(total_steps):
        if not order:
            order = torch.randperm(len(examples), generator=generator).tolist()
        batch_ids, order = order[:batch_size], order[batch_size:]
        batch = [examples[i] for i in batch_ids]
        input_ids, mlm_labels = mask_tokens(
            torch.stack([ex.input_ids for ex in batch]),
            torch.stack([ex.special_tokens for ex in batch]),
            tokenizer.mask_token_id,
            len(tokenizer),
            config.mlm_probability,
            generator,
        )
        masked_patches = mask_ink_patches(
            torch.stack([ex.ink for ex in batch]), config.mim_probability, generator
        )
        batch_codes = torch.stack([codes[i] for i in batch_ids])
        output = model(
            input_ids=input_ids,
            attention_mask=torch.stack([ex.attention_mask for ex in batch]),
            bbox=torch.stack([ex.bbox for ex in batch]),
            pixel_values=torch.stack([ex.pixel_values for ex in batch]),
            masked_patches=masked_patches,
            mlm_labels=mlm_labels,
            mim_labels=torch.where(masked_patches, batch_codes, torch.full_like(batch_codes, -100)),
            patch_labels=torch.stack([ex.patch_labels for ex in batch]),
        )
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses["total"].append(output.loss.item())
        for name in ("mlm", "mim", "patch"):
            value = getattr(output, f"{name}_loss")
            losses[name].append(value.item() if value is not None else float("nan"))
        if step % 10 == 0 or step == total_steps - 1:
            log.info("patent_mme step %d/%d loss %.4f", step + 1, total_steps, output.loss.item())

    out_dir = Path(out_dir)
    encoder_dir, pretraining_dir = out_dir / ENCODER_SUBDIR, out_dir / PRETRAINING_SUBDIR
    model.eval()
    model.layoutlmv3.save_pretrained(encoder_dir)
    model.save_pretrained(pretraining_dir)
    write_jsonl(out_dir / "rejected.jsonl", rejected)
    return PretrainResult(
        encoder_dir=encoder_dir,
        pretraining_dir=pretraining_dir,
        losses=losses,
        steps=total_steps,
        sheets=len(examples),
        rejected=rejected,
        seconds=time.perf_counter() - started,
    )


def load_encoder(encoder_dir: Path) -> LayoutLMv3Model:
    """A LayoutLMv3 / PatentMME encoder from a local directory, with a clear error when it is not one."""
    encoder_dir = Path(encoder_dir)
    if not (encoder_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"vision encoder checkpoint {encoder_dir}: no config.json (missing or not a model dir)"
        )
    try:
        return LayoutLMv3Model.from_pretrained(str(encoder_dir), local_files_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise ValueError(f"vision encoder checkpoint {encoder_dir} cannot be loaded: {error}") from error


def load_or_pretrain(
    checkpoint_dir: Path | None,
    records_jsonl: Path | None = None,
    tokenizer_dir: Path | None = None,
    out_dir: Path | None = None,
    preset: ModelPreset = TINY,
    options: PatentMMEPretraining | None = None,
) -> PretrainResult:
    """Production: load the configured PatentMME / LayoutLMv3 checkpoint and skip pretraining.

    Embedded default (`checkpoint_dir` None): pretrain on `records_jsonl` as `pretrain_patent_mme` does.
    """
    if checkpoint_dir is not None:
        load_encoder(Path(checkpoint_dir))  # fail now, before any later stage, if it does not load
        log.info("patent_mme: using the checkpoint %s, pretraining skipped", checkpoint_dir)
        return PretrainResult(encoder_dir=Path(checkpoint_dir), pretraining_dir=None, pretrained=False)
    if records_jsonl is None or tokenizer_dir is None or out_dir is None:
        raise ValueError("without a checkpoint, pretraining needs records_jsonl, tokenizer_dir and out_dir")
    return pretrain_patent_mme(records_jsonl, tokenizer_dir, out_dir, preset, options)
