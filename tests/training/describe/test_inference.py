"""training.describe.inference on a tiny PatentLMM trained here to memorise a few figures (seconds on CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from patent_assets.llava import escape_description, prompt
from tests.training.describe.test_data import make_toy_llava
from training.describe.configs import TINY
from training.describe.data import PatentLMMCollator, PatentLMMDataset
from training.describe.inference import (
    Figure,
    ModelLoadError,
    describe_figures,
    describe_images,
    describe_split,
    generate_batch,
    load_for_inference,
)
from training.describe.modeling import build_model, describe
from training.describe.tokenizer import (
    corpus_from_llava,
    load_lm_tokenizer,
    load_ocr_processor,
    train_tokenizer,
)

DETAILED = {
    "chair": "The chair of FIG. {n} has a seat 12 resting on four straight legs.",
    "lamp": "The lamp of FIG. {n} has a round shade 20 over a base.",
}


def make_trained_model(folder: Path, steps: int = 30) -> dict[str, Path]:
    """A tiny PatentLMM that has memorised 4 figures (brief and detailed), saved as train.py saves it.

    Returns paths: model (HF dir with tokenizer/), brief/detailed LLaVA JSONs, figures.jsonl, images.
    """
    brief_json = make_toy_llava(folder, count=4)
    entries = json.loads(brief_json.read_text())
    detailed = []
    for number, entry in enumerate(entries, start=1):
        thing = "chair" if number % 2 else "lamp"
        detailed.append(
            {
                **entry,
                "conversations": [
                    {"from": "human", "value": prompt("detailed")},
                    {"from": "gpt", "value": DETAILED[thing].format(n=number)},
                ],
            }
        )
    detailed_json = brief_json.with_name("detailed_test.json")
    detailed_json.write_text(json.dumps(detailed))
    brief_test = brief_json.with_name("brief_test.json")
    shutil.copy(brief_json, brief_test)
    figures_jsonl = folder / "figures.jsonl"
    figures_jsonl.write_text(
        "".join(
            json.dumps({"image_id": e["id"], "image_path": f"images/{e['image']}", "ocr": e["ocr"]}) + "\n"
            for e in entries
        )
    )

    tokenizer_dir = train_tokenizer(
        list(corpus_from_llava([brief_json, detailed_json])) * 4,
        folder / "tokenizer",
        vocab_size=600,
        image_size=TINY.image_size,
        ocr_max_tokens=TINY.ocr_max_tokens,
    )
    tokenizer, processor = load_lm_tokenizer(tokenizer_dir), load_ocr_processor(tokenizer_dir)
    items = []
    for path in (brief_json, detailed_json):
        data = PatentLMMDataset(
            path, folder / "images", processor, tokenizer, TINY.max_length, TINY.ocr_max_tokens
        )
        items += [data[i] for i in range(len(data))]
    batch = PatentLMMCollator(tokenizer, TINY.num_image_features, TINY.max_length)(items)

    torch.manual_seed(0)
    model = build_model(TINY, tokenizer_dir)
    trained = [p for name, p in model.named_parameters() if not name.startswith("vision_tower.")]
    optimizer = torch.optim.AdamW(trained, lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    # training.describe.train's final save: the HF model, and the tokenizer copied into model/tokenizer.
    model_dir = folder / "run" / "model"
    model.save_pretrained(model_dir)
    shutil.copytree(tokenizer_dir, model_dir / "tokenizer")
    return {
        "model": model_dir,
        "brief": brief_test,
        "detailed": detailed_json,
        "figures": figures_jsonl,
        "images": folder / "images",
        "final_loss": loss.item(),
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_trained_model(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def inference(trained):
    return load_for_inference(trained["model"])


def _g4_tiff(realdata: Path) -> Path:
    tiff = next((realdata / "drawings" / "design_patents_2020-01-07_lampslab").rglob("*.TIF"))
    with Image.open(tiff) as image:
        assert image.mode == "1" and image.info.get("compression") == "group4"
    return tiff


def test_loads_the_model_and_the_tokenizer_saved_next_to_it(trained, inference) -> None:
    assert trained["final_loss"] < 0.5  # it did memorise: the later tests read its outputs
    assert inference.tokenizer_dir == trained["model"] / "tokenizer"
    assert inference.prompts == {"brief": prompt("brief"), "detailed": prompt("detailed")}
    assert not inference.model.training


def test_describe_images_on_png_g4_tiff_blank_and_missing(inference, realdata: Path, tmp_path: Path) -> None:
    png = sorted(inference.model_dir.parent.parent.glob("images/*.png"))[0]
    blank = tmp_path / "blank.png"
    Image.new("L", (300, 420), 255).save(blank)
    missing = tmp_path / "missing.png"
    results = describe_images(
        [png, _g4_tiff(realdata), blank, missing], inference, "brief", max_new_tokens=24
    )

    assert [r["image"] for r in results] == [str(p) for p in (png, _g4_tiff(realdata), blank, missing)]
    for result in results[:3]:  # a blank page has no OCR words: still described, not an error
        assert result["error"] is None
        assert isinstance(result["description"], str) and result["description"]
    # The model memorised the toy descriptions. Tesseract reads no words on the toy drawing, so
    # the OCR pointer has nothing to copy and the LM speaks alone: it still names the toy objects.
    assert {"chair", "lamp"} & set(results[0]["description"].replace(".", " ").split())
    assert results[3]["description"] is None and "missing.png" in results[3]["error"]
    assert "not found" in results[3]["error"]


def test_batched_generation_equals_modeling_describe(trained, inference) -> None:
    """The batch path and the single-figure entry point give the same text from the same prompt."""
    entries = json.loads(trained["brief"].read_text())
    images = [Image.open(trained["images"] / e["image"]) for e in entries]
    ocrs = [e["ocr"] for e in entries]
    batched = generate_batch(inference, images, ocrs, prompt("detailed"), max_new_tokens=30)
    single = [
        describe(inference.model, inference.tokenizer, inference.processor, image, ocr, "detailed", 30)
        for image, ocr in zip(images, ocrs, strict=True)
    ]
    assert batched == single
    assert all(text.startswith("The ") for text in batched)  # detailed style, not brief


def test_describe_split_reproduces_the_memorised_descriptions(trained, inference, tmp_path: Path) -> None:
    out = tmp_path / "out" / "brief_test_predictions.json"
    run = describe_split(trained["brief"], trained["figures"], inference, "brief", out, max_new_tokens=30)
    written = json.loads(out.read_text())
    entries = json.loads(trained["brief"].read_text())
    assert list(written) == [e["id"] for e in entries]  # every test figure, in file order
    assert written == run.descriptions and run.rejected == []
    references = {e["id"]: escape_description(e["conversations"][1]["value"]) for e in entries}
    # The two lamps (and the two chairs) are drawn alike and differ only in the OCR'd FIG number,
    # which a model this small does not always get: the object, read from the figure, it does.
    for image_id, reference in references.items():
        thing = "chair" if "chair" in reference else "lamp [[shade]]"  # escaped like the training targets
        assert written[image_id].endswith(f"view of the {thing}."), (written, references)
    assert sum(written[i] == references[i] for i in references) >= 2
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary files left


def test_resume_keeps_existing_descriptions_and_the_journal(trained, inference, tmp_path: Path) -> None:
    entries = json.loads(trained["brief"].read_text())
    figures = [Figure(e["id"], trained["images"] / e["image"], e["ocr"]) for e in entries]
    out = tmp_path / "generated.json"
    out.write_text(json.dumps({figures[0].image_id: "kept from before", "US9999B2__1": "another figure"}))
    # An interrupted run journaled one figure, then a torn line.
    journal = tmp_path / ".generated.json.partial.jsonl"
    journal.write_text(
        json.dumps({"image_id": figures[1].image_id, "text": "journaled"}) + '\n{"image_id": "US'
    )

    run = describe_figures(
        figures, inference, "brief", out=out, batch_size=2, max_new_tokens=12, progress=False
    )
    assert (run.kept, run.generated) == (2, 2)
    written = json.loads(out.read_text())
    assert written[figures[0].image_id] == "kept from before"
    assert written[figures[1].image_id] == "journaled"
    assert list(written) == [f.image_id for f in figures] + ["US9999B2__1"]
    assert not journal.exists()

    fresh = describe_figures(
        figures, inference, "brief", out=out, resume=False, max_new_tokens=12, progress=False
    )
    assert (fresh.kept, fresh.generated) == (0, 4) and "kept from before" not in fresh.descriptions.values()


def test_missing_and_corrupt_models_fail_clearly_before_any_work(trained, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model directory .*nowhere does not exist"):
        load_for_inference(tmp_path / "nowhere")

    truncated = tmp_path / "truncated"
    shutil.copytree(trained["model"], truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"truncated.*cannot be loaded: SafetensorError"):
        load_for_inference(truncated)

    no_weights = tmp_path / "no_weights"
    shutil.copytree(trained["model"], no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no_weights: no weights"):
        load_for_inference(no_weights)

    partial = tmp_path / "partial"
    shutil.copytree(trained["model"], partial)
    state = load_file(partial / "model.safetensors")
    dropped = next(name for name in state if name.startswith("multi_modal_projector."))
    del state[dropped]
    save_file(state, partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"partial: 1 weights missing"):
        load_for_inference(partial)

    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(trained["model"], no_tokenizer)
    shutil.rmtree(no_tokenizer / "tokenizer")
    with pytest.raises(FileNotFoundError, match=r"no_tokenizer/tokenizer does not exist"):
        load_for_inference(no_tokenizer)


def test_a_bad_figure_is_left_out_with_its_reason_and_the_rest_go_on(
    trained, inference, tmp_path: Path
) -> None:
    entries = json.loads(trained["brief"].read_text())
    figures = [Figure(e["id"], trained["images"] / e["image"], e["ocr"]) for e in entries[:2]]
    figures.insert(
        1, Figure("bad-ocr", figures[0].image_path, {"words": ["FIG.", "1"], "boxes": [[0, 0, 9, 9]]})
    )
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    figures.append(Figure("broken", broken, {"words": [], "boxes": []}))

    run = describe_figures(figures, inference, "brief", batch_size=4, max_new_tokens=12, progress=False)
    assert list(run.descriptions) == [entries[0]["id"], entries[1]["id"]]
    reasons = {r.item: r.reason for r in run.rejected}
    assert set(reasons) == {"bad-ocr", "broken"}
    assert "2 words but 1 boxes" in reasons["bad-ocr"]
    assert "broken.png" in reasons["broken"] and "not an image" in reasons["broken"]
