from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from patent_assets.llava import prompt
from training.describe.data import (
    IGNORE_INDEX,
    PatentLMMCollator,
    PatentLMMDataset,
    WeightedDistributedSampler,
    answer_ids,
    image_paths_from_figures,
    patent_balanced_weights,
    prompt_ids,
)
from training.describe.tokenizer import (
    IMAGE,
    corpus_from_llava,
    load_lm_tokenizer,
    load_ocr_processor,
    train_tokenizer,
)

OCR_MAX = 32
NUM_FEATURES = OCR_MAX + (64 // 16) ** 2  # the TINY preset's encoder: OCR tokens + patches


def make_toy_llava(folder: Path, count: int = 8) -> Path:
    """`count` figures in PatentLMM's LLaVA format: chairs (boxes) and lamps (circles), with OCR."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(count):
        image_id = f"US{1000 + i}B2__1"
        image = Image.new("RGB", (200, 280), "white")
        draw = ImageDraw.Draw(image)
        if i % 2 == 0:
            draw.rectangle([30, 40, 170, 240], outline="black", width=6)
            words, description = (
                ["FIG.", str(i + 1), "seat", "12"],
                f"FIG. {i + 1} is a front view of the chair.",
            )
        else:
            draw.ellipse([30, 40, 170, 240], fill="black")
            words, description = (
                ["FIG.", str(i + 1), "lamp", "20"],
                f"FIG. {i + 1} is a top view of the lamp <shade>.",
            )
        image.save(images / f"{image_id}.png")
        boxes = [[100 * k, 900, 100 * k + 80, 950] for k in range(len(words))]
        entries.append(
            {
                "id": image_id,
                "image": f"{image_id}.png",
                "conversations": [
                    {"from": "human", "value": prompt("brief")},
                    {"from": "gpt", "value": description},
                ],
                "ocr": {"words": words, "boxes": boxes, "width": 200, "height": 280},
            }
        )
    path = folder / "llava_json" / "brief_train.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path


def make_toy_tokenizer(folder: Path, llava_json: Path) -> Path:
    return train_tokenizer(
        list(corpus_from_llava([llava_json])) * 4,
        folder / "tokenizer",
        vocab_size=600,
        image_size=64,
        ocr_max_tokens=OCR_MAX,
    )


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("toy")
    llava_json = make_toy_llava(folder)
    return llava_json, make_toy_tokenizer(folder, llava_json)


def _dataset(toy: tuple[Path, Path], **options: int) -> PatentLMMDataset:
    llava_json, tokenizer_dir = toy
    return PatentLMMDataset(
        llava_json,
        llava_json.parent.parent / "images",
        load_ocr_processor(tokenizer_dir),
        load_lm_tokenizer(tokenizer_dir),
        max_length=512,
        ocr_max_tokens=OCR_MAX,
        **options,
    )


def test_item_masks_the_prompt_and_keeps_the_description(toy) -> None:
    dataset = _dataset(toy)
    tokenizer = dataset.tokenizer
    assert len(dataset) == 8 and dataset.rejected == []
    item = dataset[1]
    n_prompt = item["prompt_length"]
    assert item["input_ids"][:n_prompt] == prompt_ids(tokenizer, "brief")
    assert item["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert item["labels"][n_prompt:] == item["input_ids"][n_prompt:]
    assert item["input_ids"][-1] == tokenizer.eos_token_id
    # PatentLMM's escape: "<shade>" in the description reaches the model as "[[shade]]".
    answer = tokenizer.decode(item["input_ids"][n_prompt:], skip_special_tokens=True)
    assert answer.strip() == "FIG. 2 is a top view of the lamp [[shade]]."
    assert item["ocr_input_ids"].shape == (OCR_MAX,) and item["bbox"].shape == (OCR_MAX, 4)
    assert item["pixel_values"].shape == (3, 64, 64)
    assert item["bbox"][1].tolist() == [0, 900, 80, 950]  # the label's "FIG." first, after <s>


def test_items_are_built_once_within_the_cache_budget(toy, monkeypatch) -> None:
    import training.describe.data as data

    opened: list[str] = []
    real_open = data.Image.open
    monkeypatch.setattr(data.Image, "open", lambda path, *a: opened.append(str(path)) or real_open(path, *a))
    cached, uncached = _dataset(toy), _dataset(toy, cache_bytes=0)
    for dataset in (cached, uncached):
        first, second = dataset[3], dataset[3]
        assert torch.equal(first["pixel_values"], second["pixel_values"])
        assert first["input_ids"] == second["input_ids"]
    # the cached dataset read the sheet once, the one with no budget on every access
    assert len(opened) == 1 + 2


def test_collator_expands_image_to_the_number_of_features(toy) -> None:
    dataset = _dataset(toy)
    image_id = dataset.tokenizer.convert_tokens_to_ids(IMAGE)
    batch = PatentLMMCollator(dataset.tokenizer, NUM_FEATURES, 512)([dataset[0], dataset[1]])
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "labels",
        "ocr_input_ids",
        "ocr_attention_mask",
        "bbox",
        "pixel_values",
    }
    assert ((batch["input_ids"] == image_id).sum(dim=1) == NUM_FEATURES).all()
    assert (batch["labels"][batch["input_ids"] == image_id] == IGNORE_INDEX).all()
    # Supervised tokens are exactly each description + eos.
    for row, item in enumerate([dataset[0], dataset[1]]):
        supervised = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        assert supervised == item["input_ids"][item["prompt_length"] :]
    # Right padding: the shorter row ends in pad tokens that are masked and unsupervised.
    lengths = batch["attention_mask"].sum(dim=1)
    short = int(lengths.argmin())
    assert lengths[short] < batch["input_ids"].shape[1]
    assert batch["input_ids"][short, -1] == dataset.tokenizer.pad_token_id
    assert batch["labels"][short, -1] == IGNORE_INDEX
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and batch["bbox"].shape == (2, OCR_MAX, 4)


def test_collator_truncates_descriptions_and_rejects_too_short_limits(toy) -> None:
    dataset = _dataset(toy)
    item = dataset[0]
    limit = item["prompt_length"] - 1 + NUM_FEATURES + 3
    batch = PatentLMMCollator(dataset.tokenizer, NUM_FEATURES, limit)([item])
    assert batch["input_ids"].shape[1] == limit
    assert (batch["labels"] != IGNORE_INDEX).sum() == 3
    with pytest.raises(ValueError, match="max_length"):
        PatentLMMCollator(dataset.tokenizer, NUM_FEATURES, NUM_FEATURES)([item])


def test_generation_batches_are_left_padded_prompts(toy) -> None:
    dataset = _dataset(toy)
    batch = PatentLMMCollator(dataset.tokenizer, NUM_FEATURES, 512, for_generation=True)(
        [dataset[0], dataset[1]]
    )
    assert "labels" not in batch
    expected_length = len(prompt_ids(dataset.tokenizer, "brief")) - 1 + NUM_FEATURES
    assert batch["input_ids"].shape == (2, expected_length)
    assert batch["attention_mask"].all()
    assert batch["input_ids"][0, -1].item() == batch["input_ids"][1, -1].item()  # both end with the prompt


def test_bad_entries_are_left_out_with_a_reason(tmp_path: Path, toy) -> None:
    llava_json, tokenizer_dir = toy
    entries = json.loads(llava_json.read_text())
    entries[0]["image"] = "missing.png"
    entries[1]["conversations"][1]["value"] = "  "
    entries[2]["conversations"][0]["value"] = "Write a brief description."  # no <image>
    entries[3] = {"id": "broken"}
    path = tmp_path / "brief_train.json"
    path.write_text(json.dumps(entries))
    dataset = PatentLMMDataset(
        path,
        llava_json.parent.parent / "images",
        load_ocr_processor(tokenizer_dir),
        load_lm_tokenizer(tokenizer_dir),
        512,
        OCR_MAX,
    )
    assert len(dataset) == 4
    reasons = dict(dataset.rejected)
    assert "not found" in reasons["US1000B2__1"]
    assert "empty description" in reasons["US1001B2__1"]
    assert "<image>" in reasons["US1002B2__1"]
    assert "not a LLaVA entry" in reasons["broken"]
    with pytest.raises(ValueError, match="cannot read"):
        PatentLMMDataset(tmp_path / "nope.json", None, None, None, 512, OCR_MAX)


def test_images_from_figures_jsonl(tmp_path: Path, toy) -> None:
    llava_json, tokenizer_dir = toy
    images = llava_json.parent.parent / "images"
    figures = tmp_path / "figures.jsonl"
    lines = [json.dumps({"image_id": p.stem, "image_path": str(p)}) for p in sorted(images.glob("*.png"))]
    figures.write_text("\n".join([*lines, "{not json"]) + "\n")
    paths = image_paths_from_figures(figures)
    assert len(paths) == 8
    dataset = PatentLMMDataset(
        llava_json, paths, load_ocr_processor(tokenizer_dir), load_lm_tokenizer(tokenizer_dir), 512, OCR_MAX
    )
    assert len(dataset) == 8
    assert torch.equal(dataset[0]["pixel_values"], _dataset(toy)[0]["pixel_values"])


def test_answer_ids_end_with_eos(toy) -> None:
    tokenizer = load_lm_tokenizer(toy[1])
    ids = answer_ids(tokenizer, "FIG. 1 is a chair.")
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.decode(ids[:-1]) == " FIG. 1 is a chair."


def test_the_printed_fig_label_reaches_the_encoder_within_the_token_budget(toy) -> None:
    """Forty reference numerals before the label in tesseract's reading order would fill the
    32-token budget; the label's words go first, each with its own box."""
    from training.describe.data import encode_ocr

    _, tokenizer_dir = toy
    processor = load_ocr_processor(tokenizer_dir)
    words = [str(10 + 2 * k) for k in range(40)] + ["FIG.", "3"]
    boxes = [[10 * k, 100, 10 * k + 8, 120] for k in range(40)] + [[400, 900, 480, 950], [490, 900, 520, 950]]
    encoded = encode_ocr(
        processor, Image.new("RGB", (64, 64), "white"), {"words": words, "boxes": boxes}, OCR_MAX
    )
    expected = processor.tokenizer(["FIG.", "3"], boxes=boxes[-2:], add_special_tokens=False)["input_ids"]
    ids = encoded["ocr_input_ids"].tolist()
    assert ids[1 : 1 + len(expected)] == expected  # right after <s>, the FIG word, then the number
    assert encoded["bbox"][1].tolist() == [400, 900, 480, 950]


def test_renumbered_reads_raise_the_label_in_the_ocr_and_the_description_alike(toy, monkeypatch) -> None:
    """A renumbered read names FIG. 1 + offset where the sheet's OCR and its description said FIG. 1;
    the image is the cached one, and the cached item itself is left as it was."""
    import training.describe.data as data

    opened: list[str] = []
    real_open = data.Image.open
    monkeypatch.setattr(data.Image, "open", lambda path, *a: opened.append(str(path)) or real_open(path, *a))
    plain, renumbered = _dataset(toy), _dataset(toy, renumber_share=1.0, seed=3)
    tokenizer = plain.tokenizer
    before, after = plain[0], renumbered[0]

    def answer(item: dict) -> str:
        return tokenizer.decode(item["input_ids"][item["prompt_length"] :], skip_special_tokens=True).strip()

    def ocr(item: dict) -> str:
        return tokenizer.decode(
            item["ocr_input_ids"][item["ocr_attention_mask"].bool()], skip_special_tokens=True
        )

    assert answer(before) == "FIG. 1 is a front view of the chair." and ocr(before).split()[:2] == [
        "FIG.",
        "1",
    ]
    label = int(answer(after).split()[1])
    assert 2 <= label <= 1 + data.RENUMBER_MAX_OFFSET
    assert answer(after) == f"FIG. {label} is a front view of the chair."
    assert ocr(after).split()[:2] == ["FIG.", str(label)] and "12" in ocr(after).split()  # a numeral stays
    assert after["labels"][after["prompt_length"] :] == after["input_ids"][after["prompt_length"] :]
    assert torch.equal(after["pixel_values"], before["pixel_values"]) and len(opened) == 2
    assert answer(renumbered._cache[0]) == answer(before)  # the cache keeps the sheet as printed
    assert len({answer(renumbered[0]) for _ in range(10)}) > 1  # a fresh offset on every read


def test_renumber_share_is_a_share() -> None:
    with pytest.raises(ValueError, match="renumber_share"):
        PatentLMMDataset(Path("unused.json"), None, None, None, 512, OCR_MAX, renumber_share=1.5)


def test_dataloader_workers_draw_their_own_renumbering(toy) -> None:
    """Each worker holds a copy of the dataset: with the copy's seed, two workers would raise the
    same figures by the same offsets, and every epoch would repeat the last."""
    from torch.utils.data import DataLoader

    dataset = _dataset(toy, renumber_share=1.0, seed=3)
    tokenizer = dataset.tokenizer

    def labels(epoch_seed: int) -> list[str]:
        torch.manual_seed(epoch_seed)
        loader = DataLoader(dataset, batch_size=None, num_workers=2, sampler=[0, 0, 0, 0, 0, 0, 0, 0])
        return [tokenizer.decode(item["input_ids"][item["prompt_length"] :]).split()[1] for item in loader]

    first, second = labels(0), labels(1)
    assert first[0::2] != first[1::2]  # worker 0's items (0, 2, ...) against worker 1's
    assert first != second  # a fresh draw each epoch


def test_patent_balance_weighs_each_figure_by_its_patents_size() -> None:
    ids = ["USD0911448S1__1", "USD0911448S1__2", "USD0911448S1__3", "USD0911448S1__4", "US1000B2__1", "odd"]
    assert patent_balanced_weights(ids, 0.0) == [1.0] * 6
    assert patent_balanced_weights(ids, 0.5) == [0.5] * 4 + [1.0, 1.0]  # 4 ** -0.5
    assert patent_balanced_weights(ids, 1.0) == [0.25] * 4 + [1.0, 1.0]
    # A cap of 2: the patent of 4 is drawn as one of 2, smaller ones as they are.
    assert patent_balanced_weights(ids, 0.0, cap=2) == [0.5] * 4 + [1.0, 1.0]
    assert patent_balanced_weights(ids, 0.0, cap=8) == [1.0] * 6
    with pytest.raises(ValueError, match="patent_balance"):
        patent_balanced_weights(ids, -1.0)
    with pytest.raises(ValueError, match="patent_cap"):
        patent_balanced_weights(ids, 0.0, cap=-1)


def test_weighted_sampler_draws_patents_alike_and_shards_one_order_per_epoch() -> None:
    """A patent of 40 figures and four of one: with balance 1 each patent is drawn about as often;
    two ranks split one draw of the epoch, the same for the same (seed, epoch), new each epoch."""
    ids = [f"US1000B2__{i}" for i in range(1, 41)] + [f"US200{i}B2__1" for i in range(4)]
    weights = patent_balanced_weights(ids, 1.0)
    ranks = [
        WeightedDistributedSampler(ids, weights, num_replicas=2, rank=rank, seed=3, drop_last=True)
        for rank in (0, 1)
    ]
    drawn: list[int] = []
    for epoch in range(50):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        first, second = list(ranks[0]), list(ranks[1])
        assert len(first) == len(second) == len(ranks[0]) == 22
        assert first == list(ranks[0])  # a resumed run sees the same epoch
        drawn += first + second
    big = sum(index < 40 for index in drawn) / len(drawn)
    assert 0.15 < big < 0.25  # one patent of five; unweighted it would be 40 of 44 draws
    ranks[0].set_epoch(0)
    again = list(ranks[0])
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != again
    with pytest.raises(ValueError, match="3 weights for 44 items"):
        WeightedDistributedSampler(ids, [1.0, 1.0, 1.0], num_replicas=1, rank=0)
