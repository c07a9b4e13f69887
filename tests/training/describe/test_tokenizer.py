from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from training.describe.tokenizer import (
    BOS,
    EOS,
    IMAGE,
    PAD,
    UNK,
    corpus_from_llava,
    load_lm_tokenizer,
    load_ocr_processor,
    train_tokenizer,
)

TEXTS = [
    "FIG. 1 is a perspective view of a chair according to the present invention.",
    "FIG. 2 is a side elevational view of the chair of FIG. 1, showing the seat 12 and legs 14.",
    "FIG. 3 is a flow chart of a method for [[image]] processing in a network node.",
    "10 12 14 16 seat back leg armrest",
] * 20


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(
        TEXTS, tmp_path_factory.mktemp("tok") / "tokenizer", vocab_size=400, image_size=64, ocr_max_tokens=32
    )


def test_both_forms_are_saved_from_one_vocabulary(tokenizer_dir: Path) -> None:
    assert (tokenizer_dir / "lm" / "tokenizer.json").is_file()
    assert (tokenizer_dir / "ocr" / "processor_config.json").is_file()
    lm = load_lm_tokenizer(tokenizer_dir)
    ocr = load_ocr_processor(tokenizer_dir).tokenizer
    assert lm.get_vocab() == ocr.get_vocab()
    # The same word has the same id for the language model and for the encoder.
    word_lm = lm(" chair", add_special_tokens=False)["input_ids"]
    word_ocr = ocr(["chair"], boxes=[[0, 0, 1, 1]], add_special_tokens=False)["input_ids"]
    assert word_lm == word_ocr and len(word_lm) == 1


def test_special_tokens_and_round_trip(tokenizer_dir: Path) -> None:
    lm = load_lm_tokenizer(tokenizer_dir)
    assert (lm.bos_token, lm.eos_token, lm.pad_token, lm.unk_token) == (BOS, EOS, PAD, UNK)
    assert [lm.convert_tokens_to_ids(t) for t in (BOS, PAD, EOS, UNK)] == [0, 1, 2, 3]
    image_id = lm.convert_tokens_to_ids(IMAGE)
    text = "<image>\nWrite a brief description for this patent image."
    ids = lm(text)["input_ids"]
    assert ids[0] == lm.bos_token_id  # bos prepended, like Llama's tokenizer
    assert ids.count(image_id) == 1 and ids[1] == image_id  # <image> is never split
    assert lm.decode(ids, skip_special_tokens=True) == "\nWrite a brief description for this patent image."
    for sample in ["FIG. 2 shows seat 12 — naïve ünïcode ∑ text", "unseen wörds ßtill round-trip 😀"]:
        assert lm.decode(lm(sample, add_special_tokens=False)["input_ids"]) == sample
    # An escaped description can never produce the image token.
    assert image_id not in lm("[[image]]", add_special_tokens=False)["input_ids"]


def test_ocr_processor_shapes_from_our_words_and_boxes(tokenizer_dir: Path) -> None:
    processor = load_ocr_processor(tokenizer_dir)
    assert processor.image_processor.apply_ocr is False
    image = Image.new("RGB", (300, 420), "white")
    words = ["FIG.", "1", "chair"] * 20  # more than 32 tokens: truncated
    boxes = [[10 * i % 1000, 20, 10 * i % 1000 + 5, 40] for i in range(len(words))]
    out = processor(
        image,
        text=words,
        boxes=boxes,
        truncation=True,
        padding="max_length",
        max_length=32,
        return_tensors="pt",
    )
    assert out["input_ids"].shape == (1, 32)
    assert out["attention_mask"].shape == (1, 32)
    assert out["bbox"].shape == (1, 32, 4)
    assert out["pixel_values"].shape == (1, 3, 64, 64)
    assert out["input_ids"][0, 0].item() == 0 and out["bbox"][0, 1].tolist() == boxes[0]
    short = processor(
        image,
        text=["FIG."],
        boxes=[[1, 2, 3, 4]],
        truncation=True,
        padding="max_length",
        max_length=32,
        return_tensors="pt",
    )
    assert short["attention_mask"].sum().item() < 32 and short["input_ids"][0, -1].item() == 1  # padded


def test_corpus_from_llava_reads_descriptions_prompts_and_ocr(tmp_path: Path) -> None:
    entry = {
        "id": "US1__1",
        "image": "US1__1.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWrite a brief description for this patent image."},
            {"from": "gpt", "value": "FIG. 1 is a chair."},
        ],
        "ocr": {"words": ["FIG.", "1"], "boxes": [[0, 0, 1, 1], [2, 2, 3, 3]]},
    }
    path = tmp_path / "brief_train.json"
    path.write_text(json.dumps([entry]))
    texts = list(corpus_from_llava([path]))
    assert "FIG. 1 is a chair." in texts and "FIG. 1" in texts
    assert any("USER: <image>" in t for t in texts)


def test_loading_errors_name_the_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        load_lm_tokenizer(tmp_path / "missing")
