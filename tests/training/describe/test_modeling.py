from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from patent_assets.figrefs import first_label_key, label_key
from tests.training.describe.test_data import make_toy_llava, make_toy_tokenizer
from training.describe.attention import choose_attention
from training.describe.configs import TINY
from training.describe.data import (
    PatentLMMCollator,
    PatentLMMDataset,
    encode_ocr,
    expand_image_tokens,
    prompt_ids,
)
from training.describe.modeling import (
    PatentLMMForConditionalGeneration,
    PatentLMMOcrPointer,
    apply_lora,
    build_model,
    describe,
    freeze_for_stage,
    param_groups,
    save_lora_adapter,
    trainable_parameters,
)
from training.describe.tokenizer import load_lm_tokenizer, load_ocr_processor


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("toy-model")
    llava_json = make_toy_llava(folder)
    tokenizer_dir = make_toy_tokenizer(folder, llava_json)
    tokenizer, processor = load_lm_tokenizer(tokenizer_dir), load_ocr_processor(tokenizer_dir)
    dataset = PatentLMMDataset(
        llava_json, folder / "images", processor, tokenizer, TINY.max_length, TINY.ocr_max_tokens
    )
    collate = PatentLMMCollator(tokenizer, TINY.num_image_features, TINY.max_length)
    batch = collate([dataset[i] for i in range(len(dataset))])
    return {
        "dir": tokenizer_dir,
        "tokenizer": tokenizer,
        "processor": processor,
        "dataset": dataset,
        "batch": batch,
        "images": folder / "images",
    }


def _model(toy, seed: int = 0) -> PatentLMMForConditionalGeneration:
    torch.manual_seed(seed)
    return build_model(TINY, toy["dir"])


def _perturb_lora(model: PatentLMMForConditionalGeneration) -> None:
    """LoRA's B starts at zero; give it values so that tests can tell whether LoRA is applied."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)


def test_choose_attention_is_sdpa_without_gpu() -> None:
    assert choose_attention() == "sdpa"


def test_forward_loss_and_stage_gradients(toy) -> None:
    model = _model(toy)
    assert model.config.num_image_features == TINY.num_image_features == 48
    assert model.language_model.config._attn_implementation == "sdpa"

    counts = freeze_for_stage(model, 1)
    out = model(**toy["batch"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {n for n in trainable_parameters(model, 1)}
    assert all(n.startswith(("multi_modal_projector.", "ocr_pointer.")) for n in with_grad)
    assert any(n.startswith("ocr_pointer.") for n in with_grad)  # TINY copies from the OCR
    assert counts["trainable"] == sum(
        p.numel() for part in (model.multi_modal_projector, model.ocr_pointer) for p in part.parameters()
    )

    with pytest.raises(ValueError, match="apply_lora"):
        freeze_for_stage(model, 2)
    apply_lora(model, r=4, alpha=8, dropout=0.0)
    _perturb_lora(model)  # with B = 0, A would get no gradient
    model.zero_grad(set_to_none=True)
    freeze_for_stage(model, 2)
    model(**toy["batch"]).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == set(trainable_parameters(model, 2))
    assert any("lora_A" in n for n in with_grad) and any("lora_B" in n for n in with_grad)
    assert not any(n.startswith("vision_tower.") for n in with_grad)
    assert all(n.startswith(("multi_modal_projector.", "ocr_pointer.")) or "lora_" in n for n in with_grad)
    groups = param_groups(model, 2, learning_rate=2e-4, projector_lr=2e-5)
    assert [g["lr"] for g in groups] == [2e-5, 2e-4]


def test_a_few_steps_on_eight_examples_reduce_the_loss(toy) -> None:
    model = _model(toy)
    apply_lora(model, r=4, alpha=8, dropout=0.0)
    freeze_for_stage(model, 2)
    model.gradient_checkpointing_enable()
    assert model.language_model.model.gradient_checkpointing
    optimizer = torch.optim.AdamW(param_groups(model, 2, learning_rate=1e-2), lr=1e-2)
    model.train()
    assert not model.vision_tower.training  # frozen: no dropout noise on its features
    losses = []
    for _ in range(6):
        loss = model(**toy["batch"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses


def test_save_pretrained_round_trip_gives_identical_logits(toy, tmp_path: Path) -> None:
    model = _model(toy)
    apply_lora(model, r=4, alpha=8, dropout=0.0)
    _perturb_lora(model)
    model.save_pretrained(tmp_path / "patentlmm")
    loaded = PatentLMMForConditionalGeneration.from_pretrained(tmp_path / "patentlmm", local_files_only=True)
    assert loaded.config.lora == model.config.lora
    model.eval()
    loaded.eval()
    with torch.no_grad():
        expected = model(**toy["batch"]).logits
        assert torch.equal(loaded(**toy["batch"]).logits, expected)
        # The LoRA weights were loaded, not left at zero: without them the logits differ.
        no_lora = copy.deepcopy(loaded)
        for name, param in no_lora.named_parameters():
            if "lora_B" in name:
                param.zero_()
        assert not torch.allclose(no_lora(**toy["batch"]).logits, expected)


def test_from_components_local_files_match_the_in_memory_model(toy, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model = _model(toy)
    model.vision_tower.save_pretrained(tmp_path / "encoder")
    model.language_model.save_pretrained(tmp_path / "lm")
    # A PatentLLaMA-style adapter, saved the ordinary peft way.
    peft_lm = get_peft_model(
        model.language_model,
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="CAUSAL_LM"
        ),
    )
    _perturb_lora(peft_lm)
    peft_lm.save_pretrained(tmp_path / "adapter")
    model.language_model = peft_lm.get_base_model()

    def built_from(adapter: Path, **options: bool) -> PatentLMMForConditionalGeneration:
        """The model from the saved components (with the pointer TINY has), and the projector and
        OCR pointer of `model`: those are trained, not read from the components."""
        built = PatentLMMForConditionalGeneration.from_components(
            tmp_path / "encoder",
            tmp_path / "lm",
            toy["dir"],
            adapter,
            ocr_copy=True,
            ocr_copy_read=True,
            ocr_copy_word=True,
            **options,
        )
        built.multi_modal_projector.load_state_dict(model.multi_modal_projector.state_dict())
        built.ocr_pointer.load_state_dict(model.ocr_pointer.state_dict())
        return built

    built = built_from(tmp_path / "adapter")
    assert built.config.lora["r"] == 4 and built.config.lora["target_modules"] == ["q_proj", "v_proj"]
    model.eval()
    built.eval()
    with torch.no_grad():
        expected = model(**toy["batch"]).logits
        assert torch.allclose(built(**toy["batch"]).logits, expected, atol=1e-6)
        merged = built_from(tmp_path / "adapter", merge_lora=True)
        assert merged.config.lora is None
        assert torch.allclose(merged.eval()(**toy["batch"]).logits, expected, atol=1e-4)
        # Our own adapter export loads back to the same model.
        save_lora_adapter(built, tmp_path / "exported")
        again = built_from(tmp_path / "exported")
        assert torch.allclose(again.eval()(**toy["batch"]).logits, expected, atol=1e-6)
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        PatentLMMForConditionalGeneration.from_components(
            tmp_path / "encoder", tmp_path / "lm", toy["dir"], tmp_path
        )


def test_generation_uses_the_image_and_splices_it_only_at_prefill(toy) -> None:
    model = _model(toy, seed=1)
    apply_lora(model, r=8, alpha=16, dropout=0.0)
    freeze_for_stage(model, 2)
    dataset = toy["dataset"]
    pair = PatentLMMCollator(toy["tokenizer"], TINY.num_image_features, TINY.max_length)(
        [dataset[0], dataset[1]]
    )
    optimizer = torch.optim.AdamW(param_groups(model, 2, learning_rate=1e-2), lr=1e-2)
    model.train()
    for _ in range(25):  # overfit a chair (box) and a lamp (disc) with different descriptions
        model(**pair).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    encoder_calls = []
    hook = model.vision_tower.register_forward_hook(lambda *_: encoder_calls.append(1))
    outputs = []
    for index in (0, 1):
        entry = dataset.entries[index]
        with Image.open(dataset.image_paths[index]) as image:
            outputs.append(
                describe(
                    model, toy["tokenizer"], toy["processor"], image, entry["ocr"], "brief", max_new_tokens=16
                )
            )
    hook.remove()
    assert encoder_calls == [1, 1]  # one prefill per image; later steps read the KV cache
    assert all(outputs) and outputs[0] != outputs[1], outputs
    assert "chair" in outputs[0] and "lamp" in outputs[1], outputs


def test_missing_image_inputs_are_a_clear_error(toy) -> None:
    model = _model(toy)
    batch = dict(toy["batch"])
    with pytest.raises(ValueError, match="pixel_values"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    cut = (
        int((batch["input_ids"][0] == model.config.image_token_id).nonzero()[0]) + 1
    )  # drops one placeholder
    short = {
        **batch,
        "input_ids": batch["input_ids"][:, cut:],
        "attention_mask": batch["attention_mask"][:, cut:],
        "labels": batch["labels"][:, cut:],
    }
    with pytest.raises(ValueError, match="placeholders"):
        model(**short)


def _train(model, batch, steps: int, lr: float = 1e-2) -> None:
    optimizer = torch.optim.AdamW(param_groups(model, 2, learning_rate=lr), lr=lr)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _first_label(model, toy, index: int) -> str | None:
    dataset = toy["dataset"]
    with Image.open(dataset.image_paths[index]) as image:
        text = describe(
            model,
            toy["tokenizer"],
            toy["processor"],
            image,
            dataset.entries[index]["ocr"],
            "brief",
            max_new_tokens=6,
        )
    return first_label_key(text)


@pytest.mark.parametrize("ocr_copy", [True, False])
def test_the_ocr_pointer_copies_a_fig_label_never_seen_in_training(toy, ocr_copy: bool) -> None:
    """Trained on FIG. 1-6, the model with the pointer names the FIG. 7 and FIG. 8 it reads on the
    held-out sheets; without it, the LM can only say a label it was trained on."""
    torch.manual_seed(0)
    model = PatentLMMForConditionalGeneration(
        replace(build_model(TINY, toy["dir"]).config, ocr_copy=ocr_copy)
    )
    assert (model.ocr_pointer is not None) == ocr_copy
    apply_lora(model, r=8, alpha=16, dropout=0.0)
    freeze_for_stage(model, 2)
    dataset = toy["dataset"]
    _train(
        model,
        PatentLMMCollator(toy["tokenizer"], TINY.num_image_features, TINY.max_length)(
            [dataset[i] for i in range(6)]
        ),
        steps=60,
    )
    named = [_first_label(model, toy, index) for index in (6, 7)]
    if ocr_copy:
        assert named == [label_key("7"), label_key("8")], named
    else:
        assert not {label_key("7"), label_key("8")} & set(named), named


def test_the_selective_read_is_what_follows_the_input_token_on_the_sheet() -> None:
    """The sheet reads "31 FIG." as tokens 3, 1, FIG, . : after the input 3 the pointer reads the
    feature of 1; after a token the sheet has twice, the mean of what follows it; after a token
    not on the sheet, or the sheet's last token, nothing."""
    ids = torch.tensor([[30, 10, 70, 80, 30, 90, 0]])  # 3, 1, FIG, ., 3, x, padding
    copyable = torch.tensor([[True, True, True, True, True, True, False]])
    features = torch.arange(7, dtype=torch.float32)[None, :, None].expand(1, 7, 2) + 1.0
    following = torch.zeros_like(features)
    following[:, :-1] = features[:, 1:] * copyable[:, 1:, None]
    inputs = torch.tensor([[30, 10, 90, 55]])
    on_sheet = PatentLMMOcrPointer.on_sheet(inputs, ids, copyable)
    read = PatentLMMOcrPointer.selective_read(on_sheet, following)
    assert read[0, :, 0].tolist() == [(2.0 + 6.0) / 2, 3.0, 0.0, 0.0]


def test_the_pair_read_finds_the_copied_token_by_the_token_before_it() -> None:
    """The sheet reads "FIG. 27 10. x" as FIG, ., 2, 7, 10, ., x: after the input "." that follows
    "FIG" the read is at the label's "." only; after a "." whose previous token the sheet never
    puts before a ".", at every "."; a token with no previous one (-1) is read alone."""
    ids = torch.tensor([[70, 80, 20, 7, 100, 80, 90]])  # FIG . 2 7 10 . x
    copyable = torch.ones_like(ids, dtype=torch.bool)
    inputs = torch.tensor([[80, 80, 80, 20]])
    previous = torch.tensor([[70, 55, -1, 80]])
    on_sheet = PatentLMMOcrPointer.on_sheet(inputs, ids, copyable, previous)
    assert on_sheet[0].int().tolist() == [
        [0, 1, 0, 0, 0, 0, 0],
        [0, 1, 0, 0, 0, 1, 0],
        [0, 1, 0, 0, 0, 1, 0],
        [0, 0, 1, 0, 0, 0, 0],
    ]


def test_cached_generation_reads_as_the_whole_sequence_does(toy) -> None:
    """Each generated step with the KV cache (one new token, its previous one passed along) gives
    the log-probabilities a forward pass over the whole sequence gives at that position. The sheet
    prints two "." (after "FIG" and after "10"); the answer is forced to " FIG . 7 . ...", so the
    pair read after each "." depends on the token before it."""
    model = _model(toy, seed=2).eval()
    assert model.config.ocr_copy_pair  # TINY reads by pairs
    tokenizer, processor = toy["tokenizer"], toy["processor"]
    ocr = {
        "words": ["FIG.", "7", "10.", "x"],
        "boxes": [[10, 10, 40, 30], [45, 10, 60, 30], [100, 10, 140, 30], [200, 10, 220, 30]],
    }
    with Image.open(toy["dataset"].image_paths[0]) as image:
        image_inputs = {k: v[None] for k, v in encode_ocr(processor, image, ocr, TINY.ocr_max_tokens).items()}
    ids = expand_image_tokens(
        prompt_ids(tokenizer, "brief"), model.config.image_token_id, model.config.num_image_features
    )
    answer = tokenizer(" FIG. 7. FIG. 10.", add_special_tokens=False)["input_ids"]
    prompt = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            **image_inputs,
            max_new_tokens=len(answer),
            prefix_allowed_tokens_fn=lambda _, sequence: [answer[len(sequence) - len(ids)]],
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
        assert out.sequences[0, len(ids) :].tolist() == answer
        whole = model(input_ids=out.sequences, attention_mask=torch.ones_like(out.sequences), **image_inputs)
    steps = torch.stack(out.logits, dim=1)[0]
    assert torch.allclose(steps, whole.logits[0, len(ids) - 1 : -1], atol=1e-4)


def test_the_word_gate_knows_where_the_copied_word_goes_on(toy) -> None:
    """The OCR words "31" (split 3, 1: one box) and "FIG.": after the 3 the word goes on, after
    the 1 it does not, nor after the last piece on the sheet."""
    model = _model(toy)
    pointer = model.ocr_pointer
    assert pointer is not None and pointer.word_gate is not None  # TINY has the word gate
    ocr_ids = torch.tensor([[0, 30, 10, 70, 80, 2, 1]])  # <s> 3 1 FIG . </s> <pad>
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    box_31, box_fig = [10, 10, 40, 30], [50, 10, 90, 30]
    bbox = torch.tensor([[[0, 0, 0, 0], box_31, box_31, box_fig, box_fig, [0, 0, 0, 0], [0, 0, 0, 0]]])
    features = torch.ones(1, 6, model.config.text_config.hidden_size)
    config = model.config
    *_, word_goes_on = pointer.memory(features, ocr_ids, mask, bbox, config)
    assert word_goes_on[0].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def test_without_ocr_words_the_pointer_leaves_the_language_model_alone(toy) -> None:
    """Image-blind and no-OCR inputs give the pointer nothing to copy: the distribution is the LM's."""
    model = _model(toy).eval()
    dataset = PatentLMMDataset(
        toy["dataset"].llava_json,
        toy["images"],
        toy["processor"],
        toy["tokenizer"],
        TINY.max_length,
        TINY.ocr_max_tokens,
        inputs="no_ocr",
    )
    batch = PatentLMMCollator(toy["tokenizer"], TINY.num_image_features, TINY.max_length)(
        [dataset[0], dataset[1]]
    )
    with torch.no_grad():
        with_pointer = model(**batch)
        model.ocr_pointer = None
        language_model_only = model(**batch)
    assert torch.allclose(with_pointer.logits, language_model_only.logits.log_softmax(-1), atol=1e-5)
    assert torch.allclose(with_pointer.loss, language_model_only.loss, atol=1e-5)
