"""PatentLLaMA-style LM pretraining: patent text from documents.jsonl, packing, from scratch and LoRA."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from patent_assets.documents import GrantDocument, document_from_dict, document_text, document_to_dict
from patent_assets.records import write_jsonl
from training.describe.configs import TINY, PatentLlamaPretraining
from training.describe.patent_llama import (
    pack_blocks,
    pretrain_patent_llama,
    read_patent_texts,
    split_held_out,
)
from training.describe.tokenizer import load_lm_tokenizer, train_tokenizer

OBJECTS = ["bracket", "wheel", "hinge", "lamp", "connector", "housing", "gear", "nozzle"]
PARTS = ["flange", "shaft", "bore", "rim", "slot", "spring", "cover", "base"]


def grant(rng: random.Random, index: int) -> GrantDocument:
    """Patent prose with a steady structure and varying nouns: learnable, but not memorisable whole."""
    obj, part, other = rng.choice(OBJECTS), rng.choice(PARTS), rng.choice(PARTS)
    n = 10 + 2 * rng.randrange(20)
    return GrantDocument(
        patent_id=f"US{9000000 + index}B2",
        doc_number=str(9000000 + index),
        kind="B2",
        grant_date="2024-01-02",
        title=f"{obj.capitalize()} with a {part}",
        abstract=f"A {obj} includes a {part} and a {other} coupled to the {part}.",
        brief_paragraphs=[
            f"FIG. 1 is a perspective view of the {obj}.",
            f"FIG. 2 is a side view of the {part}.",
        ],
        detailed_paragraphs=[
            f"Referring to FIG. 1, the {obj} {n} has a {part} {n + 2} and a {other} {n + 4}.",
            f"The {part} {n + 2} is coupled to the {other} {n + 4} of the {obj} {n}.",
        ],
        claims=[f"1. A {obj} comprising: a {part}; and a {other} coupled to the {part}."],
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    root = tmp_path_factory.mktemp("llama")
    rng = random.Random(0)
    rows = [{"document": document_to_dict(grant(rng, i)), "sheet_files": {}} for i in range(80)]
    write_jsonl(root / "release" / "documents.jsonl", rows)
    texts = list(read_patent_texts([root / "release"]))
    tokenizer_dir = train_tokenizer(texts, root / "tokenizer", vocab_size=400)
    return texts, tokenizer_dir


@pytest.fixture(scope="module")
def scratch(corpus, tmp_path_factory: pytest.TempPathFactory):
    texts, tokenizer_dir = corpus
    out = tmp_path_factory.mktemp("llama-out")
    return pretrain_patent_llama(
        texts, tokenizer_dir, out, TINY, options=PatentLlamaPretraining(steps=60, lr=3e-3, block_size=64)
    )


def test_patent_text_is_read_from_documents_jsonl(corpus) -> None:
    texts, _ = corpus
    assert len(texts) == 80
    first = texts[0]
    # Title, abstract, brief and detailed description, claims: all present, in reading order.
    order = [first.index(s) for s in ("A ", "FIG. 1 is", "Referring to FIG. 1", "1. A ")]
    assert order == sorted(order)
    with pytest.raises(FileNotFoundError, match=r"documents\.jsonl"):
        list(read_patent_texts([Path("/nonexistent/release")]))


def test_blocks_are_packed_with_eos_and_a_masked_tail(corpus) -> None:
    _, tokenizer_dir = corpus
    tokenizer = load_lm_tokenizer(tokenizer_dir)
    texts = ["a bracket with a flange", "a wheel with a rim and a spring"]
    expected = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
    blocks = pack_blocks(texts, tokenizer, block_size=8)
    assert blocks.input_ids.shape == (-(-expected // 8), 8)
    assert blocks.tokens == expected
    flat = blocks.input_ids.flatten()[:expected]
    assert (flat == tokenizer.eos_token_id).sum() == 2 and flat[expected - 1] == tokenizer.eos_token_id
    assert (blocks.labels.flatten()[expected:] == -100).all()
    with pytest.raises(ValueError, match="empty"):
        pack_blocks([], tokenizer, 8)


def test_held_out_split_is_whole_texts_and_stable() -> None:
    texts = [f"text {i}" for i in range(200)]
    train, held = split_held_out(texts, 0.1)
    assert set(train).isdisjoint(held) and len(train) + len(held) == 200 and 5 < len(held) < 40
    assert split_held_out(list(reversed(texts)), 0.1)[1] == list(reversed(held))


def test_from_scratch_loss_and_held_out_perplexity_fall(scratch) -> None:
    assert scratch.steps == 60 and len(scratch.losses) == 60 and scratch.held_out_tokens > 0
    assert sum(scratch.losses[-5:]) / 5 < 0.5 * sum(scratch.losses[:5]) / 5
    assert scratch.perplexity_after < 0.25 * scratch.perplexity_before, (
        scratch.perplexity_before,
        scratch.perplexity_after,
    )
    model = LlamaForCausalLM.from_pretrained(str(scratch.lm_dir), local_files_only=True)
    assert model.config.hidden_size == TINY.text_hidden_size and scratch.adapter_dir is None


def test_lora_saves_an_adapter_that_peft_loads_and_that_changes_outputs(
    scratch, corpus, tmp_path: Path
) -> None:
    texts, tokenizer_dir = corpus
    # The from-scratch LM plays the local base checkpoint; new text shifts its distribution.
    shifted = [t.replace("coupled to", "welded onto") for t in texts]
    result = pretrain_patent_llama(
        shifted,
        tokenizer_dir,
        tmp_path,
        base_model_dir=scratch.lm_dir,
        lora=True,
        options=PatentLlamaPretraining(merge=True, steps=15, lr=1e-2, block_size=64),
    )
    assert (result.adapter_dir / "adapter_config.json").is_file()
    assert result.perplexity_after < result.perplexity_before
    base = LlamaForCausalLM.from_pretrained(str(scratch.lm_dir), local_files_only=True).eval()
    ids = load_lm_tokenizer(tokenizer_dir)(
        "The flange is welded onto the shaft", return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        before = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, str(result.adapter_dir), local_files_only=True).eval()
        after = adapted(input_ids=ids).logits
        merged = (
            LlamaForCausalLM.from_pretrained(str(result.lm_dir), local_files_only=True)
            .eval()(input_ids=ids)
            .logits
        )
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(merged, after, atol=1e-4, rtol=1e-4)


def test_bad_configurations_fail_clearly(corpus, tmp_path: Path) -> None:
    texts, tokenizer_dir = corpus
    with pytest.raises(ValueError, match="LoRA needs a base model"):
        pretrain_patent_llama(texts, tokenizer_dir, tmp_path, lora=True)
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        pretrain_patent_llama(texts, tokenizer_dir, tmp_path, base_model_dir=tmp_path / "missing")


def test_only_validated_releases_and_training_patents_give_text(tmp_path: Path) -> None:
    """The language model's text: every release that passed validation (a text-only weekly file
    too), without the patents whose figures are held out (their descriptions are test references)."""
    from patent_assets.dataset import held_out_patents, validated_documents

    rng = random.Random(1)
    releases = tmp_path / "releases"
    for name, passed in (("2013-04-16", True), ("2024-01-02", True), ("2024-01-09", False)):
        rows = [{"document": document_to_dict(grant(rng, i)), "sheet_files": {}} for i in range(3)]
        for row in rows:
            row["document"]["patent_id"] = f"{name}-{row['document']['patent_id']}"
        write_jsonl(releases / name / "documents" / "documents.jsonl", rows)
        (releases / name / "validation").mkdir(parents=True)
        (releases / name / "validation" / "validation.json").write_text(json.dumps({"success": passed}))
    sources = validated_documents(releases)
    assert [p.parts[-3] for p in sources] == ["2013-04-16", "2024-01-02"]
    figures = tmp_path / "figures.jsonl"
    held = json.loads((releases / "2024-01-02/documents/documents.jsonl").read_text().splitlines()[0])
    write_jsonl(figures, [{"image_id": "x", "patent_id": held["document"]["patent_id"], "split": "test"}])
    assert held_out_patents(figures) == {held["document"]["patent_id"]}
    texts = list(read_patent_texts(sources, skip_patents=held_out_patents(figures)))
    assert len(texts) == 5 and document_text(document_from_dict(held["document"])) not in texts
