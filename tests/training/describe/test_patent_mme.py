"""PatentMME pretraining on a handful of drawn sheets: objectives, masking, labels, saving, loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import LayoutLMv3Model

from patent_assets.records import OcrWords, write_jsonl
from training.describe.configs import TINY, PatentMMEPretraining
from training.describe.patent_mme import (
    PATCH_CLASSES,
    PatentMMEConfig,
    PatentMMEForPretraining,
    encoder_config,
    fit_codebook,
    load_or_pretrain,
    mask_ink_patches,
    pretrain_patent_mme,
    sheet_example,
    word_classes,
)
from training.describe.tokenizer import load_ocr_processor, train_tokenizer

SHEET = 256  # pixels; TINY's encoder sees 64 x 64, a 4 x 4 grid of 16-px patches


def _box(bbox: tuple[int, int, int, int]) -> list[int]:
    return [round(v * 1000 / SHEET) for v in bbox]


def draw_sheet(path: Path, index: int) -> dict:
    """A drawing in the top half (a shape and a reference numeral), a FIG label bottom-left, the
    bottom-right quarter blank: each patch class sits in known patches."""
    image = Image.new("L", (SHEET, SHEET), 255)
    draw = ImageDraw.Draw(image)
    shift = 8 * (index % 4)
    if index % 2:
        draw.ellipse((20 + shift, 20, 120 + shift, 110), outline=0, width=4)
    else:
        draw.rectangle((20 + shift, 20, 120 + shift, 110), outline=0, width=4)
    draw.line((130, 30, 230, 100 - shift), fill=0, width=4)
    words, boxes = [], []
    for word, xy in (
        (f"{10 + 2 * index}", (150, 40 + shift)),
        ("FIG.", (16, 200)),
        (f"{index + 1}", (60, 200)),
    ):
        draw.text(xy, word, fill=0, font_size=22)
        words.append(word)
        boxes.append(_box(draw.textbbox(xy, word, font_size=22)))
    image.save(path)
    return {
        "image_id": f"US{1000 + index}B2__D00001",
        "image_path": str(path),
        "ocr": {"words": words, "boxes": boxes, "width": SHEET, "height": SHEET, "confidences": [90.0] * 3},
    }


@pytest.fixture(scope="module")
def sheets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mme")
    records = [draw_sheet(root / f"sheet{i}.png", i) for i in range(6)]
    # A record whose image is missing: rejected with its reason, the others still train.
    records.append({"image_id": "US9999B2__D00001", "image_path": str(root / "gone.png"), "ocr": {}})
    write_jsonl(root / "figures.jsonl", records)
    texts = [" ".join(r["ocr"].get("words", [])) for r in records] * 5 + [
        "a bracket with a hinge and a wheel"
    ] * 5
    tokenizer_dir = train_tokenizer(
        texts, root / "tokenizer", vocab_size=300, image_size=64, ocr_max_tokens=32
    )
    return root / "figures.jsonl", tokenizer_dir


@pytest.fixture(scope="module")
def pretrained(sheets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    records, tokenizer_dir = sheets
    return pretrain_patent_mme(
        records,
        tokenizer_dir,
        tmp_path_factory.mktemp("mme-out"),
        TINY,
        PatentMMEPretraining(steps=40, lr=2e-3, batch_size=3, seed=0),
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_all_three_objectives_are_finite_and_decrease(pretrained) -> None:
    assert pretrained.steps == 40 and pretrained.sheets == 6
    for name in ("mlm", "mim", "patch", "total"):
        curve = pretrained.losses[name]
        assert len(curve) == 40 and all(math.isfinite(v) for v in curve), name
        assert _mean(curve[-8:]) < 0.85 * _mean(curve[:8]), (name, curve[:8], curve[-8:])


def test_bad_record_is_rejected_with_its_reason(pretrained) -> None:
    assert [r.item for r in pretrained.rejected] == ["US9999B2__D00001"]
    assert "gone.png" in pretrained.rejected[0].reason
    saved = (pretrained.encoder_dir.parent / "rejected.jsonl").read_text().splitlines()
    assert json.loads(saved[0])["item"] == "US9999B2__D00001"


def test_saved_encoder_loads_as_layoutlmv3_with_the_same_outputs(pretrained, sheets) -> None:
    records, tokenizer_dir = sheets
    encoder = LayoutLMv3Model.from_pretrained(str(pretrained.encoder_dir), local_files_only=True).eval()
    full = PatentMMEForPretraining.from_pretrained(
        str(pretrained.pretraining_dir), local_files_only=True
    ).eval()
    # The MLM head stays tied to the word embeddings, and the codebook was saved with the heads.
    assert (
        full.mlm_head.decoder.weight.data_ptr()
        == full.layoutlmv3.embeddings.word_embeddings.weight.data_ptr()
    )
    assert full.codebook.abs().sum() > 0
    record = json.loads(records.read_text().splitlines()[0])
    example = sheet_example(record, load_ocr_processor(tokenizer_dir), full.config, records.parent)
    inputs = {
        "input_ids": example.input_ids[None],
        "attention_mask": example.attention_mask[None],
        "bbox": example.bbox[None],
        "pixel_values": example.pixel_values[None],
    }
    with torch.no_grad():
        loaded = encoder(**inputs).last_hidden_state
        reference = full.layoutlmv3(**inputs).last_hidden_state
        fresh = LayoutLMv3Model(encoder.config).eval()(**inputs).last_hidden_state
    assert loaded.shape == (1, 32 + 1 + 16, TINY.vision_hidden_size)
    torch.testing.assert_close(loaded, reference)
    assert not torch.allclose(loaded, fresh, atol=1e-3)  # trained, not a fresh initialisation


def test_patch_labels_and_ink(sheets) -> None:
    records, tokenizer_dir = sheets
    config = PatentMMEConfig(encoder_config=encoder_config(TINY, 300), codebook_size=8)
    record = json.loads(records.read_text().splitlines()[0])
    assert word_classes(OcrWords(**record["ocr"])) == ["node_label", "figure_label", "figure_label"]
    example = sheet_example(record, load_ocr_processor(tokenizer_dir), config, records.parent)
    labels = example.patch_labels.reshape(4, 4, len(PATCH_CLASSES))
    cls = {name: i for i, name in enumerate(PATCH_CLASSES)}
    assert labels[3, 0, cls["figure_label"]] == 1  # "FIG. 1" at the bottom left
    assert labels[:2, :, cls["figure_label"]].sum() == 0
    assert labels[0:2, 2, cls["node_label"]].sum() >= 1  # the numeral beside the line
    assert labels[0, 0, cls["drawing"]] == 1 and labels[1, 3, cls["drawing"]] == 1  # shape, line strokes
    assert labels[3, 3].sum() == 0 and not example.ink.reshape(4, 4)[3, 3]  # blank paper: no class, no ink
    assert example.ink.reshape(4, 4)[0, 0]


def test_masked_patches_are_only_ink_patches() -> None:
    generator = torch.Generator().manual_seed(0)
    ink = torch.rand(64, 16, generator=generator) < 0.5
    ink[0] = False  # a blank sheet: nothing to mask
    masked = mask_ink_patches(ink, 0.4, generator)
    assert not (masked & ~ink).any()
    assert not masked[0].any()
    for row in range(1, 64):
        assert masked[row].sum() == max(1, round(0.4 * ink[row].sum().item()))


def test_codebook_separates_distinct_patches() -> None:
    patches = torch.cat([torch.zeros(20, 16), torch.ones(20, 16), torch.full((20, 16), 0.5)])
    codebook = fit_codebook(patches, 3, seed=1)
    assert sorted(round(v) for v in (codebook.mean(1) * 2).tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="no ink patches"):
        fit_codebook(torch.zeros(0, 16), 3)


def test_production_path_loads_the_checkpoint_and_skips_training(pretrained, tmp_path: Path) -> None:
    result = load_or_pretrain(pretrained.encoder_dir)
    assert result.pretrained is False and result.steps == 0 and result.encoder_dir == pretrained.encoder_dir
    assert result.pretraining_dir is None and result.losses == {}
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_or_pretrain(tmp_path / "missing")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text(json.dumps({"model_type": "layoutlmv3", "hidden_size": 64}))
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_or_pretrain(corrupt)
