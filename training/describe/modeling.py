"""PatentLMM: a LayoutLMv3 encoder (PatentMME), an `mlp2x_gelu` projector and a Llama language model.

    image + OCR words/boxes -> LayoutLMv3Model -> hidden states of layer -2, first token dropped
                            -> projector (Linear, GELU, Linear) -> replace the <image> placeholders
    prompt + description    -> Llama embeddings ---------------------------^ -> LlamaForCausalLM -> loss

A config class and a model class, in transformers' shape, so a tiny random model and PatentMME +
LLaVA-1.5-7B are the same code. The encoder and the language model are transformers' own
`LayoutLMv3Model` and `LlamaForCausalLM`; LoRA is peft's, injected into the language model only, and
recorded in the config so `save_pretrained` / `from_pretrained` round-trip the whole model.

Training stages (PatentLMM): stage 1 trains the projector only; stage 2 trains LoRA + projector.
The encoder is frozen in both.

`ocr_copy` adds a pointer over the OCR tokens (M4C's dynamic pointer network, See et al.'s
pointer-generator): each next-token distribution mixes the LM's softmax with an attention over the
sheet's OCR tokens, scattered onto their ids, so the model can emit a token it reads on the sheet
(a FIG label, a reference numeral) without having learnt it in the LM's embedding space. It needs the
OCR and LM tokenizers to share ids (the embedded default's one BPE); it trains with the projector.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    GenerationMixin,
    LayoutLMv3Config,
    LayoutLMv3Model,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from training.describe.attention import choose_attention
from training.describe.configs import LLAMA_LORA_TARGETS, ModelPreset

logger = logging.getLogger(__name__)

# The encoder inputs: used on the first generation step (prefill) only; later steps use the KV cache.
IMAGE_INPUTS = ("pixel_values", "ocr_input_ids", "ocr_attention_mask", "bbox")


class PatentLMMConfig(PreTrainedConfig):
    """`vision_config` (LayoutLMv3), `text_config` (Llama) and how they are joined.

    `ocr_max_tokens` is the OCR length the encoder always sees (the processor pads to it), so the
    number of image features is fixed: OCR tokens + visual CLS + patches - the dropped first token.
    `lora` is None, or the peft LoRA settings injected into the language model ({"r", "lora_alpha",
    "lora_dropout", "target_modules"}).
    """

    model_type = "patentlmm"
    sub_configs_defaults = {"vision_config": LayoutLMv3Config, "text_config": LlamaConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector_type: str = "mlp2x_gelu"
    projector_hidden_act: str = "gelu"
    image_token_id: int = 5
    vision_feature_layer: int = -2
    ocr_max_tokens: int = 512
    lora: dict | None = None
    ocr_copy: bool = False
    ocr_copy_read: bool = False
    ocr_copy_word: bool = False
    ocr_copy_pair: bool = False
    tie_word_embeddings: bool = False

    @property
    def num_patches(self) -> int:
        return (self.vision_config.input_size // self.vision_config.patch_size) ** 2

    @property
    def num_image_features(self) -> int:
        return self.ocr_max_tokens + self.num_patches


class PatentLMMProjector(nn.Module):
    """LLaVA-1.5's `mlp2x_gelu`: encoder hidden size -> LM hidden size -> LM hidden size."""

    def __init__(self, config: PatentLMMConfig):
        super().__init__()
        if config.projector_type != "mlp2x_gelu":
            raise ValueError(f"projector_type {config.projector_type!r} is not supported (only mlp2x_gelu)")
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(config.text_config.hidden_size, config.text_config.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class PatentLMMOcrPointer(nn.Module):
    """Where to copy from and how much: attention of the LM's hidden state over the projected OCR
    features, and a gate between copying and the LM's vocabulary.

    With `config.ocr_copy_read`, CopyNet's selective read (Gu et al. 2016) joins the query and the
    gate: the features of the OCR tokens that follow the current input token on the sheet. A label
    the tokenizer splits ("FIG. 31": "3", "1") is copied one piece at a time, and only the piece
    just copied says whether the number goes on: without the read, on the real-drawing
    benchmark's "FIG. 31" the pointer copied the "3" and the LM's " is" followed.

    With `config.ocr_copy_word` the gate also learns how much to keep copying where the token just
    copied is followed, in its own OCR word (same box), by another piece. With the read alone, after
    "FIG. 2" of a sheet's "FIG. 27" the attention was on the "7" but the gate, learnt mostly on
    labels of one token, still gave the LM's " is" 0.69 of the mass.

    With `config.ocr_copy_pair` the read finds the input token on the sheet by the pair (the token
    before it, the token): where the sheet has that pair, only there. The "." of "FIG." is on
    most sheets more than once (a quarter of the real design sheets print another within their
    32 OCR tokens), and the read after it, averaged over every ".", was no longer the label's
    number.
    """

    def __init__(self, config: PatentLMMConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.gate = nn.Linear(hidden, 1)
        self.read_query = nn.Linear(hidden, hidden) if config.ocr_copy_read else None
        self.read_gate = nn.Linear(hidden, 1) if config.ocr_copy_read else None
        if config.ocr_copy_word and not config.ocr_copy_read:
            raise ValueError("ocr_copy_word needs ocr_copy_read: the word gate reads where the copy is")
        self.word_gate = nn.Linear(hidden, 1) if config.ocr_copy_word else None
        if config.ocr_copy_pair and not config.ocr_copy_read:
            raise ValueError("ocr_copy_pair needs ocr_copy_read: the pair finds where the read reads")
        self.pair = config.ocr_copy_pair

    def memory(
        self,
        features: torch.Tensor,
        ocr_input_ids: torch.Tensor,
        ocr_attention_mask: torch.Tensor,
        bbox: torch.Tensor,
        config: Any,
    ) -> tuple[torch.Tensor, ...]:
        """(keys, ids, mask, following, word_goes_on) of the OCR tokens. Feature i is OCR token i + 1
        (the encoder's first token is dropped); the OCR's own special tokens (<s>, </s>, padding)
        cannot be copied. `following[i]` is the feature of the token after token i (zeros where none
        can be copied), empty without the selective read; `word_goes_on[i]` is 1 where that token is
        a piece of the same OCR word (the tokenizer gives each piece its word's box), empty without
        `ocr_copy_word`."""
        ocr_ids = ocr_input_ids[:, 1:]
        length = ocr_ids.shape[1]
        special = {
            config.vision_config.pad_token_id,
            config.text_config.bos_token_id,
            config.text_config.eos_token_id,
        }
        copyable = ocr_attention_mask[:, 1:].bool()
        for token in special - {None}:
            copyable &= ocr_ids != token
        features = features[:, :length]
        following = torch.zeros_like(features[:, :0])  # read only by the selective read
        if self.read_query is not None:
            following = torch.zeros_like(features)
            following[:, :-1] = features[:, 1:] * copyable[:, 1:, None].to(features.dtype)
        word_goes_on = torch.zeros_like(copyable[:, :0], dtype=features.dtype)
        if self.word_gate is not None:
            boxes = bbox[:, 1 : 1 + length]
            word_goes_on = torch.zeros_like(copyable, dtype=features.dtype)
            same_box = (boxes[:, 1:] == boxes[:, :-1]).all(dim=-1)
            word_goes_on[:, :-1] = (same_box & copyable[:, 1:] & copyable[:, :-1]).to(features.dtype)
        return self.key(features), ocr_ids, copyable, following, word_goes_on

    def log_probs(
        self,
        hidden: torch.Tensor,
        logits: torch.Tensor,
        memory: tuple[torch.Tensor, ...],
        input_ids: torch.Tensor | None = None,
        previous_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log p(next token) = log(g * softmax(logits) + (1 - g) * copy attention on the OCR ids).

        `previous_ids[:, t]` is the token before `input_ids[:, t]` (-1 where none), for the pair read."""
        keys, ids, copyable, following, word_goes_on = memory
        query, gate_logit = self.query(hidden), self.gate(hidden)
        if self.read_query is not None and self.read_gate is not None:
            if input_ids is None or (self.pair and previous_ids is None):
                raise ValueError("the OCR pointer's selective read needs input_ids (and previous_ids)")
            on_sheet = self.on_sheet(input_ids, ids, copyable, previous_ids if self.pair else None)
            read = self.selective_read(on_sheet, following).to(hidden.dtype)
            query, gate_logit = query + self.read_query(read), gate_logit + self.read_gate(read)
            if self.word_gate is not None:
                goes_on = self.selective_read(on_sheet, word_goes_on[..., None]).to(hidden.dtype)
                gate_logit = gate_logit + goes_on * self.word_gate(hidden)
        scores = torch.einsum("btd,bld->btl", query, keys) / keys.shape[-1] ** 0.5
        scores = scores.float().masked_fill(~copyable[:, None, :], float("-inf"))
        has_ocr = copyable.any(dim=1)[:, None, None]
        attention = torch.where(has_ocr, scores.softmax(dim=-1), 0.0)
        gate = torch.where(has_ocr, torch.sigmoid(gate_logit.float()), 1.0)
        copy = torch.zeros_like(logits, dtype=torch.float32)
        copy.scatter_add_(-1, ids[:, None, :].expand(-1, hidden.shape[1], -1), attention)
        probs = gate * logits.float().softmax(dim=-1) + (1 - gate) * copy
        return probs.clamp_min(1e-12).log()

    @staticmethod
    def on_sheet(
        input_ids: torch.Tensor,
        ids: torch.Tensor,
        copyable: torch.Tensor,
        previous_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(batch, positions, OCR tokens): 1 where the input token is that copyable OCR token; with
        `previous_ids`, only where the OCR token before it is the input's previous token too, in
        the rows where the sheet has that pair."""
        single = (input_ids[:, :, None] == ids[:, None, :]) & copyable[:, None, :]
        if previous_ids is None:
            return single
        before = torch.full_like(ids, -1)
        before[:, 1:] = torch.where(copyable[:, :-1], ids[:, :-1], -1)
        pair = single & (previous_ids[:, :, None] == before[:, None, :])
        return torch.where(pair.any(dim=-1, keepdim=True), pair, single)

    @staticmethod
    def selective_read(on_sheet: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
        """Per input position, the mean of `following` (per OCR token: a feature, or a flag) wherever
        the sheet has the input token (zeros where it has not): (batch, positions, size)."""
        on_sheet = on_sheet.to(following.dtype)
        return on_sheet @ following / on_sheet.sum(dim=-1, keepdim=True).clamp_min(1.0)


@dataclass
class PatentLMMOutput(CausalLMOutputWithPast):
    """CausalLMOutputWithPast plus the OCR pointer's memory, carried from prefill to later steps."""

    copy_memory: tuple[torch.Tensor, ...] | None = None


class PatentLMMPreTrainedModel(PreTrainedModel):
    config_class = PatentLMMConfig
    config: PatentLMMConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "LayoutLMv3Layer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True


class PatentLMMForConditionalGeneration(PatentLMMPreTrainedModel, GenerationMixin):
    def __init__(self, config: PatentLMMConfig):
        super().__init__(config)
        self.vision_tower = LayoutLMv3Model(config.vision_config)
        self.multi_modal_projector = PatentLMMProjector(config)
        self.language_model = LlamaForCausalLM(config.text_config)
        self.ocr_pointer = PatentLMMOcrPointer(config) if config.ocr_copy else None
        if config.ocr_copy and config.vision_config.vocab_size > config.text_config.vocab_size:
            raise ValueError(
                f"ocr_copy needs the OCR ids to be LM ids: the OCR vocabulary has {config.vision_config.vocab_size} "
                f"tokens, the LM's {config.text_config.vocab_size}"
            )
        self.post_init()
        if config.lora:  # after post_init, which would re-initialise LoRA's zero B matrices
            _inject_lora(self.language_model, config.lora)

    def train(self, mode: bool = True) -> PatentLMMForConditionalGeneration:
        super().train(mode)
        # A frozen encoder stays in eval mode: its dropout would only add noise to fixed features.
        if not any(p.requires_grad for p in self.vision_tower.parameters()):
            self.vision_tower.eval()
        return self

    # -- embeddings: the language model's, so resize_token_embeddings and generation find them
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def get_image_features(
        self,
        ocr_input_ids: torch.LongTensor,
        ocr_attention_mask: torch.Tensor,
        bbox: torch.LongTensor,
        pixel_values: torch.Tensor,
    ) -> torch.Tensor:
        """Projected image features, (batch, num_image_features, LM hidden size)."""
        # A frozen encoder needs no graph: this saves its activations' memory in training.
        encoder_trains = any(p.requires_grad for p in self.vision_tower.parameters())
        with torch.set_grad_enabled(encoder_trains and torch.is_grad_enabled()):
            outputs = self.vision_tower(
                input_ids=ocr_input_ids,
                attention_mask=ocr_attention_mask,
                bbox=bbox,
                pixel_values=pixel_values.to(self.vision_tower.dtype),
                output_hidden_states=True,
                return_dict=True,
            )
        features = outputs.hidden_states[self.config.vision_feature_layer][:, 1:]
        return self.multi_modal_projector(features.to(self.multi_modal_projector.linear_1.weight.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        ocr_input_ids: torch.LongTensor | None = None,
        ocr_attention_mask: torch.Tensor | None = None,
        bbox: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        copy_memory: tuple[torch.Tensor, ...] | None = None,
        previous_input_ids: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """`previous_input_ids` (batch, 1): the token before `input_ids[:, 0]`, which generation
        with a cache passes for the OCR pointer's pair read (`ocr_copy_pair`)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            inputs_embeds, features = self._splice_image_features(
                input_ids, inputs_embeds, ocr_input_ids, ocr_attention_mask, bbox, pixel_values
            )
            if self.ocr_pointer is not None:
                copy_memory = self.ocr_pointer.memory(
                    features, ocr_input_ids, ocr_attention_mask, bbox, self.config
                )
        elif (
            input_ids is not None
            and past_key_values is None
            and (input_ids == self.config.image_token_id).any()
        ):
            raise ValueError("input_ids hold <image> placeholders but no pixel_values/OCR inputs were given")
        if self.ocr_pointer is None:
            return self.language_model(
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        if copy_memory is None:
            raise ValueError("ocr_copy needs the image inputs (or, after prefill, their copy_memory)")
        # LlamaForCausalLM's forward, with the pointer between the last hidden state and the loss.
        kwargs.pop("num_items_in_batch", None)
        outputs = self.language_model.model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        previous = None
        if input_ids is not None:
            previous = torch.full_like(input_ids, -1)
            previous[:, 1:] = input_ids[:, :-1]
            if previous_input_ids is not None:
                previous[:, :1] = previous_input_ids.to(previous.device)

        def kept(ids: torch.Tensor | None) -> torch.Tensor | None:
            return None if ids is None else slice_logits_to_keep(ids[..., None], logits_to_keep)[..., 0]

        log_probs = self.ocr_pointer.log_probs(
            hidden, self.language_model.lm_head(hidden), copy_memory, kept(input_ids), kept(previous)
        )
        loss = None
        if labels is not None:
            loss = nn.functional.nll_loss(
                log_probs[:, :-1].flatten(0, 1),
                labels[:, 1:].flatten().to(log_probs.device),
                ignore_index=-100,
            )
        return PatentLMMOutput(
            loss=loss, logits=log_probs, past_key_values=outputs.past_key_values, copy_memory=copy_memory
        )

    def _splice_image_features(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor,
        ocr_input_ids: torch.LongTensor | None,
        ocr_attention_mask: torch.Tensor | None,
        bbox: torch.LongTensor | None,
        pixel_values: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The embeddings with the projected image features in the placeholders, and the features."""
        if ocr_input_ids is None or ocr_attention_mask is None or bbox is None:
            raise ValueError(
                "pixel_values need ocr_input_ids, ocr_attention_mask and bbox (OCR goes to the encoder)"
            )
        if input_ids is None:
            raise ValueError("image inputs need input_ids, to find the <image> placeholders")
        features = self.get_image_features(ocr_input_ids, ocr_attention_mask, bbox, pixel_values)
        placeholders = input_ids == self.config.image_token_id
        per_row = placeholders.sum(dim=1)
        if not bool((per_row == features.shape[1]).all()):
            raise ValueError(
                f"each sequence must hold {features.shape[1]} <image> placeholders (one per image feature), "
                f"got {per_row.tolist()}: expand <image> with the collator"
            )
        mask = placeholders.unsqueeze(-1).expand_as(inputs_embeds)
        return inputs_embeds.masked_scatter(mask, features.to(inputs_embeds.dtype)), features

    def prepare_inputs_for_generation(
        self, *args: Any, is_first_iteration: bool | None = False, **kwargs: Any
    ):
        model_inputs = super().prepare_inputs_for_generation(
            *args, is_first_iteration=is_first_iteration, **kwargs
        )
        # The image is in the KV cache after prefill: later steps take only the new token.
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in IMAGE_INPUTS:
                model_inputs.pop(key, None)
        if kwargs.get("copy_memory") is not None:
            model_inputs["copy_memory"] = kwargs["copy_memory"]
        # The pointer's pair read needs the token before the first one this step takes.
        full = args[0] if args else kwargs.get("input_ids")
        step = model_inputs.get("input_ids")
        if full is not None and step is not None and full.shape[1] > step.shape[1]:
            model_inputs["previous_input_ids"] = full[:, -step.shape[1] - 1 : -step.shape[1]]
        return model_inputs

    def _update_model_kwargs_for_generation(
        self, outputs: Any, model_kwargs: dict, *args: Any, **kwargs: Any
    ):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        # The OCR pointer reads the prefill's OCR keys at every later step, as attention reads the cache.
        if getattr(outputs, "copy_memory", None) is not None:
            model_kwargs["copy_memory"] = outputs.copy_memory
        return model_kwargs

    # -- building from parts ------------------------------------------------------------------
    @classmethod
    def from_components(
        cls,
        encoder_dir: Path | str,
        lm_dir: Path | str,
        tokenizer_dir: Path | str,
        lora_adapter_dir: Path | str | None = None,
        *,
        merge_lora: bool = False,
        attn_implementation: str | None = None,
        dtype: torch.dtype | None = None,
        **overrides: Any,
    ) -> PatentLMMForConditionalGeneration:
        """Assemble PatentLMM from local checkpoint directories (nothing is downloaded).

        `encoder_dir`: a LayoutLMv3Model (PatentMME); `lm_dir`: a LlamaForCausalLM (LLaVA-1.5);
        `tokenizer_dir`: `lm/` + `ocr/` (training.describe.tokenizer); `lora_adapter_dir`: a peft LoRA adapter
        for the LM (PatentLLaMA), loaded as the trainable LoRA, or merged into the LM weights with
        `merge_lora=True`. `overrides` set PatentLMMConfig fields (e.g. `vision_feature_layer`).
        """
        from training.describe.tokenizer import IMAGE, load_lm_tokenizer, load_ocr_processor

        attn_implementation = attn_implementation or choose_attention()
        tokenizer = load_lm_tokenizer(Path(tokenizer_dir))
        processor = load_ocr_processor(Path(tokenizer_dir))
        encoder = LayoutLMv3Model.from_pretrained(str(encoder_dir), local_files_only=True, dtype=dtype)
        lm = LlamaForCausalLM.from_pretrained(
            str(lm_dir), local_files_only=True, attn_implementation=attn_implementation, dtype=dtype
        )
        if len(tokenizer) > lm.get_input_embeddings().num_embeddings:  # e.g. <image> added to Llama's vocab
            logger.info("resizing the LM embeddings to the tokenizer's %d tokens", len(tokenizer))
            lm.resize_token_embeddings(len(tokenizer))
        ocr_vocab = len(processor.tokenizer)
        if ocr_vocab > encoder.config.vocab_size:
            raise ValueError(
                f"OCR tokenizer in {tokenizer_dir} has {ocr_vocab} tokens but the encoder {encoder_dir} "
                f"only {encoder.config.vocab_size}: they must come from the same vocabulary"
            )
        image_size = processor.image_processor.size["height"]
        if image_size != encoder.config.input_size:
            logger.info(
                "encoder input size %d -> %d (LayoutLMv3 interpolates its position embeddings)",
                encoder.config.input_size,
                image_size,
            )
            encoder.config.input_size = image_size

        lora_settings = None
        if lora_adapter_dir is not None:
            lm, lora_settings = _load_lora_adapter(lm, Path(lora_adapter_dir), merge=merge_lora)

        config = PatentLMMConfig(
            vision_config=encoder.config,
            text_config=lm.config,
            image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
            ocr_max_tokens=processor.tokenizer.model_max_length,
            **overrides,
        )
        # Build the shell on the meta device (no throw-away random 7B init), then put the parts in.
        with torch.device("meta"):
            model = cls(config)
        model.vision_tower = encoder
        model.language_model = lm
        model.multi_modal_projector = PatentLMMProjector(config).to(dtype=dtype or torch.float32)
        model.multi_modal_projector.apply(model._init_weights)
        if config.ocr_copy:
            model.ocr_pointer = PatentLMMOcrPointer(config).to(dtype=dtype or torch.float32)
            model.ocr_pointer.apply(model._init_weights)
        model.config.lora = lora_settings
        model.config.text_config = lm.config
        model.config.vision_config = encoder.config
        return model


# -- LoRA ------------------------------------------------------------------------------------------
def _lora_config(settings: dict):
    from peft import LoraConfig

    return LoraConfig(
        r=settings["r"],
        lora_alpha=settings["lora_alpha"],
        lora_dropout=settings.get("lora_dropout", 0.0),
        target_modules=list(settings["target_modules"]),
        bias="none",
        task_type="CAUSAL_LM",
    )


def _inject_lora(lm: nn.Module, settings: dict) -> None:
    """LoRA layers put into `lm` in place (no PeftModel wrapper, so state-dict names stay plain)."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(_lora_config(settings), lm)


def _load_lora_adapter(
    lm: LlamaForCausalLM, adapter_dir: Path, *, merge: bool
) -> tuple[LlamaForCausalLM, dict | None]:
    """Load a peft LoRA adapter directory into `lm`: merged into its weights, or kept as LoRA layers."""
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"LoRA adapter {adapter_dir}: no adapter_config.json")
    peft_model = PeftModel.from_pretrained(
        lm, str(adapter_dir), is_trainable=not merge, local_files_only=True
    )
    if merge:
        return peft_model.merge_and_unload(), None
    adapter = peft_model.peft_config["default"]
    if getattr(adapter, "peft_type", None) is None or str(adapter.peft_type) not in ("LORA", "PeftType.LORA"):
        raise ValueError(f"adapter {adapter_dir} is a {adapter.peft_type} adapter, not LoRA")
    settings = {
        "r": adapter.r,
        "lora_alpha": adapter.lora_alpha,
        "lora_dropout": adapter.lora_dropout,
        "target_modules": sorted(adapter.target_modules),
    }
    return peft_model.get_base_model(), settings


def apply_lora(
    model: PatentLMMForConditionalGeneration,
    r: int,
    alpha: int,
    dropout: float = 0.05,
    target_modules: tuple[str, ...] | list[str] = LLAMA_LORA_TARGETS,
) -> PatentLMMForConditionalGeneration:
    """Put fresh LoRA layers into the language model only (the encoder and projector are untouched).

    A model that already has LoRA (e.g. loaded from PatentLLaMA) keeps it when the settings agree:
    stage 2 then starts from those weights, as in PatentLMM.
    """
    settings = {
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(target_modules),
    }
    existing = model.config.lora
    if existing:
        if (existing["r"], existing["lora_alpha"]) != (r, alpha):
            raise ValueError(
                f"the model already has LoRA r={existing['r']} alpha={existing['lora_alpha']}, not r={r} alpha={alpha}"
            )
        logger.info("model already has LoRA r=%d alpha=%d: keeping its weights", r, alpha)
        return model
    _inject_lora(model.language_model, settings)
    model.config.lora = settings
    return model


def save_lora_adapter(model: PatentLMMForConditionalGeneration, out_dir: Path) -> Path:
    """The LM's LoRA as a standalone peft adapter directory (loadable with `lora_adapter_dir`)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    if not model.config.lora:
        raise ValueError("the model has no LoRA to save")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model.language_model)
    # peft's adapter files name weights as seen from a PeftModel wrapper.
    state = {f"base_model.model.{name}": tensor.detach().contiguous().cpu() for name, tensor in state.items()}
    save_file(state, str(out_dir / "adapter_model.safetensors"))
    lora_config = _lora_config(model.config.lora)
    lora_config.base_model_name_or_path = None
    lora_config.save_pretrained(str(out_dir))
    return out_dir


# -- what each stage trains ------------------------------------------------------------------------
def _is_lora(name: str) -> bool:
    return "lora_" in name


def trainable_parameters(
    model: PatentLMMForConditionalGeneration, stage: Literal[1, 2]
) -> dict[str, nn.Parameter]:
    """The parameters stage `stage` trains: 1, the projector (and the OCR pointer, if any); 2, the
    LM's LoRA + those."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    if stage == 2 and not model.config.lora:
        raise ValueError("stage 2 trains LoRA: call apply_lora(model, ...) first")
    selected = {}
    for name, param in model.named_parameters():
        if name.startswith(("multi_modal_projector.", "ocr_pointer.")) or (
            stage == 2 and name.startswith("language_model.") and _is_lora(name)
        ):
            selected[name] = param
    return selected


def freeze_for_stage(model: PatentLMMForConditionalGeneration, stage: Literal[1, 2]) -> dict[str, int]:
    """Set requires_grad for `stage` (the encoder is always frozen); return parameter counts."""
    train = trainable_parameters(model, stage)
    for name, param in model.named_parameters():
        param.requires_grad_(name in train)
    model.train(model.training)  # puts the now frozen encoder in eval mode
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in train.values())
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def param_groups(
    model: PatentLMMForConditionalGeneration,
    stage: Literal[1, 2],
    learning_rate: float,
    projector_lr: float | None = None,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimizer groups for `stage`: the projector at `projector_lr` (PatentLMM stage 2: 2e-5), the rest at `learning_rate`."""
    train = trainable_parameters(model, stage)
    projector = [p for n, p in train.items() if n.startswith("multi_modal_projector.")]
    others = [p for n, p in train.items() if not n.startswith("multi_modal_projector.")]
    groups = [{"params": projector, "lr": projector_lr or learning_rate, "weight_decay": weight_decay}]
    if others:
        groups.append({"params": others, "lr": learning_rate, "weight_decay": weight_decay})
    return groups


# -- building ------------------------------------------------------------------------------------
def encoder_config(preset: ModelPreset, vocab_size: int, pad_token_id: int = 1) -> LayoutLMv3Config:
    """The LayoutLMv3 architecture of a preset, for an OCR tokenizer of `vocab_size` entries."""
    return LayoutLMv3Config(
        vocab_size=vocab_size,
        hidden_size=preset.vision_hidden_size,
        num_hidden_layers=preset.vision_layers,
        num_attention_heads=preset.vision_heads,
        intermediate_size=preset.vision_intermediate_size,
        coordinate_size=preset.vision_coordinate_size,
        shape_size=preset.vision_shape_size,
        input_size=preset.image_size,
        patch_size=preset.patch_size,
        # RoBERTa-style positions run from pad_token_id + 1 (514 for 512 tokens, as LayoutLMv3 has).
        max_position_embeddings=preset.ocr_max_tokens + pad_token_id + 1,
        max_2d_position_embeddings=1024,
        pad_token_id=pad_token_id,
    )


def lm_config(preset: ModelPreset, tokenizer: Any) -> LlamaConfig:
    """The Llama architecture of a preset, for a trained tokenizer's vocabulary and special ids."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.text_hidden_size,
        intermediate_size=preset.text_intermediate_size,
        num_hidden_layers=preset.text_layers,
        num_attention_heads=preset.text_heads,
        num_key_value_heads=preset.text_heads,
        max_position_embeddings=preset.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=preset.text_initializer_range,
        tie_word_embeddings=False,
    )
    config._attn_implementation = choose_attention()
    return config


def tiny_config(preset: ModelPreset, tokenizer: Any, ocr_vocab_size: int) -> PatentLMMConfig:
    """A random-initialisable config from a preset's sizes and a trained tokenizer's ids."""
    from training.describe.tokenizer import IMAGE

    return PatentLMMConfig(
        vision_config=encoder_config(preset, ocr_vocab_size),
        text_config=lm_config(preset, tokenizer),
        projector_type=preset.projector_type,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_layer=preset.vision_feature_layer,
        ocr_max_tokens=preset.ocr_max_tokens,
        ocr_copy=preset.ocr_copy,
        ocr_copy_read=preset.ocr_copy_read,
        ocr_copy_word=preset.ocr_copy_word,
        ocr_copy_pair=preset.ocr_copy_pair,
    )


def build_model(preset: ModelPreset, tokenizer_dir: Path | None = None) -> PatentLMMForConditionalGeneration:
    """The model a preset describes: from checkpoint directories, or random-initialised (TINY)."""
    from training.describe.tokenizer import load_lm_tokenizer, load_ocr_processor

    tokenizer_dir = Path(tokenizer_dir or preset.tokenizer_dir or "")
    if preset.from_checkpoints:
        return PatentLMMForConditionalGeneration.from_components(
            preset.encoder_dir,
            preset.lm_dir,
            tokenizer_dir,
            preset.lora_adapter_dir,
            vision_feature_layer=preset.vision_feature_layer,
            ocr_copy=preset.ocr_copy,
            ocr_copy_read=preset.ocr_copy_read,
            ocr_copy_word=preset.ocr_copy_word,
            ocr_copy_pair=preset.ocr_copy_pair,
        )
    tokenizer = load_lm_tokenizer(tokenizer_dir)
    processor = load_ocr_processor(tokenizer_dir)
    return PatentLMMForConditionalGeneration(tiny_config(preset, tokenizer, len(processor.tokenizer)))


# -- inference -------------------------------------------------------------------------------------
@torch.no_grad()
def describe(
    model: PatentLMMForConditionalGeneration,
    tokenizer: Any,
    processor: Any,
    image: Any,
    ocr: Any,
    kind: Literal["brief", "detailed"] = "brief",
    max_new_tokens: int = 512,
) -> str:
    """Describe one patent figure: greedy generation from the training prompt, the single inference entry point.

    `ocr` is an OcrWords or a dict with "words" and "boxes" (0-1000).
    """
    from training.describe.data import encode_ocr, expand_image_tokens, prompt_ids

    if kind not in ("brief", "detailed"):
        raise ValueError(f"kind must be 'brief' or 'detailed', got {kind!r}")
    device = next(model.parameters()).device
    ocr_inputs = encode_ocr(processor, image, ocr, model.config.ocr_max_tokens)
    ids = expand_image_tokens(
        prompt_ids(tokenizer, kind), model.config.image_token_id, model.config.num_image_features
    )
    input_ids = torch.tensor([ids], device=device)
    was_training = model.training
    model.eval()
    try:
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            ocr_input_ids=ocr_inputs["ocr_input_ids"].unsqueeze(0).to(device),
            ocr_attention_mask=ocr_inputs["ocr_attention_mask"].unsqueeze(0).to(device),
            bbox=ocr_inputs["bbox"].unsqueeze(0).to(device),
            pixel_values=ocr_inputs["pixel_values"].unsqueeze(0).to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    finally:
        model.train(was_training)
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()
