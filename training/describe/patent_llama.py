"""Domain pretraining of the language model on patent text (PatentLLaMA's role in PatentLMM).

PatentLLaMA is a LoRA adapter from continued causal-LM pretraining of LLaMA on patent text. Two
paths, one loop:

- embedded default (`base_model_dir=None`): a tiny `LlamaForCausalLM` of the preset's size is
  trained from scratch, saved at `out_dir/lm`;
- production (`base_model_dir` a local LLaMA checkpoint, `lora=True`): LoRA continued pretraining
  as PatentLLaMA did; the adapter is saved at `out_dir/adapter` (peft format, what stage 2 starts
  from), and optionally merged into a full model at `out_dir/lm`.

The text is the releases' patent text (abstract, brief and detailed description, claims of each
grant in `documents.jsonl`), tokenized, joined with `</s>` and packed into fixed-length blocks, as
causal-LM pretraining usually is. A share of the documents (whole documents, so that no text leaks)
is held out to measure perplexity before and after.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    get_cosine_schedule_with_warmup,
)

from patent_assets.documents import document_from_dict, document_text
from patent_assets.pipeline import DOCUMENTS
from patent_assets.records import read_jsonl

from .attention import choose_attention
from .configs import LLAMA_LORA_TARGETS, TINY, ModelPreset, PatentLlamaPretraining
from .modeling import lm_config
from .tokenizer import load_lm_tokenizer

log = logging.getLogger(__name__)

LM_SUBDIR = "lm"
ADAPTER_SUBDIR = "adapter"


# -- text -------------------------------------------------------------------------------------------


def read_patent_texts(sources: Iterable[Path], skip_patents: Collection[str] = ()) -> Iterator[str]:
    """One text per grant from documents.jsonl files (or directories holding one), skipping empty
    ones and the grants of `skip_patents` (the held-out patents: their text is test material)."""
    for source in sources:
        path = Path(source)
        path = path / DOCUMENTS if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"patent text source {source}: no {DOCUMENTS} there")
        for row in read_jsonl(path):
            document = document_from_dict(row.get("document", row))
            if document.patent_id in skip_patents:
                continue
            if text := document_text(document):
                yield text


def split_held_out(texts: list[str], held_out_fraction: float) -> tuple[list[str], list[str]]:
    """Whole texts to train on and to hold out, by a stable hash (the same text always lands the same side)."""

    def bucket(text: str) -> float:
        return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF

    held = [t for t in texts if bucket(t) < held_out_fraction]
    train = [t for t in texts if bucket(t) >= held_out_fraction]
    if not held and len(texts) > 1:  # few texts: hold out at least one
        held, train = train[-1:], train[:-1]
    return train, held


@dataclass
class Blocks:
    input_ids: torch.Tensor  # [blocks, block_size]
    attention_mask: torch.Tensor  # [blocks, block_size]; 0 only on the padded tail of the last block
    labels: torch.Tensor  # input_ids, -100 on padding

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def pack_blocks(texts: Iterable[str], tokenizer: PreTrainedTokenizerBase, block_size: int) -> Blocks:
    """Tokenize, join each text with </s>, and cut the stream into `block_size` blocks.

    Every block but the last is full; the last is padded (and its padding masked out of the loss)
    rather than dropped, so a small corpus loses no text.
    """
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if not stream:
        raise ValueError("no patent text to pack: the corpus is empty")
    n_blocks = math.ceil(len(stream) / block_size)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    padded = torch.full((n_blocks * block_size,), pad, dtype=torch.long)
    padded[: len(stream)] = torch.tensor(stream)
    mask = torch.zeros(n_blocks * block_size, dtype=torch.long)
    mask[: len(stream)] = 1
    input_ids, attention_mask = padded.view(n_blocks, block_size), mask.view(n_blocks, block_size)
    return Blocks(input_ids, attention_mask, input_ids.masked_fill(attention_mask == 0, -100))


# -- model --------------------------------------------------------------------------------------------


def load_base_model(base_model_dir: Path) -> LlamaForCausalLM:
    base_model_dir = Path(base_model_dir)
    if not (base_model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"base language model {base_model_dir}: no config.json (missing or not a model dir)"
        )
    return LlamaForCausalLM.from_pretrained(
        str(base_model_dir), local_files_only=True, attn_implementation=choose_attention()
    )


@torch.no_grad()
def perplexity(model: torch.nn.Module, blocks: Blocks, batch_size: int = 8) -> float:
    """exp of the mean next-token loss over every predicted token of `blocks`."""
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        ids = blocks.input_ids[start : start + batch_size]
        labels = blocks.labels[start : start + batch_size]
        logits = model(input_ids=ids, attention_mask=blocks.attention_mask[start : start + batch_size]).logits
        shifted = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), shifted.flatten(), ignore_index=-100, reduction="sum"
        )
        total_loss += loss.item()
        total_tokens += int((shifted != -100).sum())
    model.train(was_training)
    return math.exp(total_loss / max(total_tokens, 1))


# -- training ---------------------------------------------------------------------------------------


@dataclass
class PretrainResult:
    lm_dir: Path | None  # a LlamaForCausalLM directory (from scratch, or the LoRA merged in)
    adapter_dir: Path | None  # the peft LoRA adapter (LoRA path only)
    losses: list[float] = field(default_factory=list)  # training loss per step
    steps: int = 0
    perplexity_before: float = math.nan  # on the held-out text
    perplexity_after: float = math.nan
    train_tokens: int = 0
    held_out_tokens: int = 0
    seconds: float = 0.0


def pretrain_patent_llama(
    texts: Iterable[str],
    tokenizer_dir: Path,
    out_dir: Path,
    preset: ModelPreset = TINY,
    *,
    base_model_dir: Path | None = None,
    lora: bool = False,
    options: PatentLlamaPretraining | None = None,
) -> PretrainResult:
    """Causal-LM pretraining on patent text; returns where the model went and its held-out perplexity.

    Without `base_model_dir`, a tiny Llama of `preset`'s size is trained from scratch (`out_dir/lm`).
    With it, the local checkpoint is loaded; `lora=True` trains a LoRA adapter (`out_dir/adapter`,
    plus `out_dir/lm` merged when `options.merge`), `lora=False` trains every weight (`out_dir/lm`).
    `options` says how long and how (default: `PatentLlamaPretraining()`, one epoch over the packed blocks).
    """
    started = time.perf_counter()
    options = options if options is not None else PatentLlamaPretraining()
    random.seed(options.seed)
    torch.manual_seed(options.seed)
    tokenizer = load_lm_tokenizer(Path(tokenizer_dir))
    train_texts, held_texts = split_held_out(list(texts), options.held_out_fraction)
    if not train_texts:
        raise ValueError("no patent text to train on")
    train_blocks = pack_blocks(train_texts, tokenizer, options.block_size)
    held_blocks = pack_blocks(held_texts, tokenizer, options.block_size) if held_texts else None

    if base_model_dir is None:
        if lora:
            raise ValueError("LoRA needs a base model (base_model_dir): a tiny LM from scratch trains fully")
        model = LlamaForCausalLM(lm_config(preset, tokenizer))
    else:
        model = load_base_model(Path(base_model_dir))
        if model.config.vocab_size < len(tokenizer):
            raise ValueError(
                f"tokenizer {tokenizer_dir} has {len(tokenizer)} tokens, the base model {base_model_dir} "
                f"only {model.config.vocab_size}"
            )
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=options.lora_r,
                lora_alpha=options.lora_alpha,
                lora_dropout=options.lora_dropout,
                target_modules=list(LLAMA_LORA_TARGETS),
                bias="none",
                task_type="CAUSAL_LM",
            ),
        )

    ppl_before = perplexity(model, held_blocks) if held_blocks is not None else math.nan
    batch_size = options.batch_size
    batches_per_epoch = math.ceil(len(train_blocks) / batch_size)
    total_steps = options.steps if options.steps is not None else (options.epochs or 1) * batches_per_epoch
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=0.0 if lora else 0.01)
    warmup = math.ceil(options.warmup_ratio * total_steps)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    generator = torch.Generator().manual_seed(options.seed)
    losses: list[float] = []

    model.train()
    order: list[int] = []
    for step in range(total_steps):
        if not order:
            order = torch.randperm(len(train_blocks), generator=generator).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        output = model(
            input_ids=train_blocks.input_ids[batch],
            attention_mask=train_blocks.attention_mask[batch],
            labels=train_blocks.labels[batch],
        )
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(output.loss.item())
        if step % 10 == 0 or step == total_steps - 1:
            log.info("patent_llama step %d/%d loss %.4f", step + 1, total_steps, losses[-1])

    ppl_after = perplexity(model, held_blocks) if held_blocks is not None else math.nan
    out_dir = Path(out_dir)
    lm_dir: Path | None = None
    adapter_dir: Path | None = None
    model.eval()
    if lora:
        adapter_dir = out_dir / ADAPTER_SUBDIR
        model.save_pretrained(str(adapter_dir))
        if options.merge:
            lm_dir = out_dir / LM_SUBDIR
            model.merge_and_unload().save_pretrained(lm_dir)
    else:
        lm_dir = out_dir / LM_SUBDIR
        model.save_pretrained(lm_dir)
    return PretrainResult(
        lm_dir=lm_dir,
        adapter_dir=adapter_dir,
        losses=losses,
        steps=total_steps,
        perplexity_before=ppl_before,
        perplexity_after=ppl_after,
        train_tokens=train_blocks.tokens,
        held_out_tokens=held_blocks.tokens if held_blocks is not None else 0,
        seconds=time.perf_counter() - started,
    )
