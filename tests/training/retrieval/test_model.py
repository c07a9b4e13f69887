"""The retrieval encoder: preprocessing, persistence, embedding with failures and flip TTA."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from training.retrieval.model import (
    PRESETS,
    EncoderConfig,
    EncoderFileError,
    GeM,
    build_encoder,
    embed_images,
    load_encoder,
    preprocess_image,
    preset,
    save_encoder,
)

SMALL = {"image_size": 64, "hidden_sizes": [8, 16, 16, 16], "embedding_dim": 16, "text_dim": 8}


def _sheet(path, boxes, size=(400, 600)) -> str:
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    for box in boxes:
        draw.rectangle(box, outline=0, width=3)
    draw.line((boxes[0][0], boxes[0][1], boxes[0][2], boxes[0][3]), fill=0, width=3)  # not mirror-symmetric
    image.convert("1").save(path)
    return str(path)


@pytest.fixture()
def small_encoder() -> torch.nn.Module:
    return build_encoder(EncoderConfig(**SMALL), seed=0).eval()


def test_preprocess_crops_to_the_ink_and_keeps_the_aspect_ratio():
    config = EncoderConfig(image_size=64)
    page = Image.new("L", (1000, 1400), 255)
    ImageDraw.Draw(page).rectangle((600, 900, 800, 950), fill=0)  # 201 x 51 px, far from the centre
    pixels = preprocess_image(page, config)
    assert pixels.shape == (1, 64, 64) and pixels.dtype == torch.float32
    ink = pixels[0] > 0.5
    rows, cols = np.flatnonzero(ink.any(1).numpy()), np.flatnonzero(ink.any(0).numpy())
    width, height = cols[-1] - cols[0] + 1, rows[-1] + 1 - rows[0]
    assert width >= 0.9 * 64  # the ink fills the frame: the margin and the position are gone
    assert 3.2 < width / height < 4.8  # 201:51 kept, not stretched to a square
    assert abs((rows[0] + rows[-1]) / 2 - 31.5) < 2  # padded evenly above and below
    assert float(pixels.min()) == 0.0 and float(pixels.max()) == pytest.approx(1.0)  # paper 0, ink 1


def test_max_downscale_keeps_a_thin_line_at_full_ink_where_area_fades_it():
    page = Image.new("L", (1400, 1400), 255)
    draw = ImageDraw.Draw(page)
    draw.rectangle((0, 0, 1399, 1399), outline=0, width=2)  # the ink's bounding box: the whole page
    draw.line((700, 100, 700, 1300), fill=0, width=2)  # a 2 px line, 1/11 of an output pixel at 128 px
    area = preprocess_image(page, EncoderConfig(image_size=128))
    strongest = {"area": float(area[0, 20:108, 50:78].max())}
    for mode in ("max", "max_area"):
        pixels = preprocess_image(page, EncoderConfig(image_size=128, downscale=mode))
        assert pixels.shape == (1, 128, 128)
        strongest[mode] = float(pixels[0, 20:108, 50:78].max())
        assert float(pixels[0, 20:108, 50:78].sum()) < 0.1 * 88 * 28  # still a line, not a smear
    assert strongest["area"] < 0.35 and strongest["max"] == 1.0 and strongest["max_area"] >= 0.5
    with pytest.raises(ValueError, match="unknown downscale"):
        EncoderConfig(downscale="bilinear")


def test_preprocess_allows_a_blank_page_and_three_channels(tmp_path):
    blank = preprocess_image(Image.new("1", (300, 500), 1), EncoderConfig(image_size=32))
    assert blank.shape == (1, 32, 32) and float(blank.abs().max()) == 0.0
    path = _sheet(tmp_path / "a.png", [(50, 50, 200, 300)])
    rgb = preprocess_image(path, EncoderConfig(image_size=32, channels=3))
    assert rgb.shape == (3, 32, 32) and torch.equal(rgb[0], rgb[2]) and float(rgb.max()) > 0.5


def test_preprocess_names_an_unreadable_image(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        preprocess_image(broken, EncoderConfig())


def test_gem_interpolates_between_average_and_max_pooling():
    features = torch.rand(2, 3, 4, 4)
    assert torch.allclose(GeM(p=1.0)(features), features.mean(dim=(-2, -1)), atol=1e-6)
    assert torch.allclose(GeM(p=60.0)(features), features.amax(dim=(-2, -1)), atol=0.05)
    assert GeM().p.requires_grad


def test_encoder_shapes_presets_and_config_round_trip(small_encoder):
    assert small_encoder(torch.rand(3, 1, 64, 64)).shape == (3, 16)
    regional = build_encoder(EncoderConfig(**SMALL, regional_pooling=True), seed=0).eval()
    assert regional.fc.in_features == 5 * small_encoder.fc.in_features  # global + 2x2 regions
    assert regional(torch.rand(3, 1, 64, 64)).shape == (3, 16)
    assert small_encoder.project_to_text(torch.rand(3, 16)).shape == (3, 8)
    assert PRESETS["production"].image_size == 512 and PRESETS["production"].embedding_dim == 512
    assert EncoderConfig.from_dict(preset("tiny").to_dict()) == preset("tiny")
    with pytest.raises(ValueError, match="unknown backbone"):
        EncoderConfig(backbone="vgg")
    with pytest.raises(ValueError, match="unknown EncoderConfig keys"):
        EncoderConfig.from_dict({"image_sise": 64})


@pytest.mark.parametrize("backbone", ["efficientnet", "convnext"])
def test_other_transformers_backbones_build_and_reload(tmp_path, backbone):
    model = build_encoder(
        EncoderConfig(backbone=backbone, **{**SMALL, "hidden_sizes": [8, 16, 24, 32]}), seed=0
    )
    model.eval()
    pixels = torch.rand(2, 1, 64, 64)
    reloaded = load_encoder(save_encoder(model, tmp_path / "encoder"))
    with torch.no_grad():
        assert torch.allclose(model(pixels), reloaded(pixels), atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is importable here")
def test_timm_backbone_without_timm_says_so():
    with pytest.raises(ImportError, match="needs timm"):
        build_encoder(EncoderConfig(backbone="timm:resnet18"))


def test_save_load_round_trip_gives_identical_embeddings(tmp_path, small_encoder):
    images = [_sheet(tmp_path / f"{i}.png", [(30 + 20 * i, 40, 250, 300 + 30 * i)]) for i in range(3)]
    directory = save_encoder(small_encoder, tmp_path / "encoder")
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    reloaded = load_encoder(directory)
    assert not reloaded.training
    before, after = embed_images(small_encoder, images), embed_images(reloaded, images)
    np.testing.assert_array_equal(before.retrieval, after.retrieval)
    np.testing.assert_array_equal(before.aligned, after.aligned)
    # Saving again replaces the directory whole; no temporary directory is left behind.
    save_encoder(reloaded, directory)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_load_names_a_missing_or_corrupt_file(tmp_path, small_encoder):
    directory = save_encoder(small_encoder, tmp_path / "encoder")
    (directory / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(EncoderFileError, match=r"model\.safetensors: corrupt"):
        load_encoder(directory)
    (directory / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(EncoderFileError, match=r"config\.json: corrupt"):
        load_encoder(directory)
    with pytest.raises(EncoderFileError, match="missing"):
        load_encoder(tmp_path / "nowhere")


def test_unreadable_image_is_reported_and_the_rest_embedded(tmp_path, small_encoder):
    good = [_sheet(tmp_path / f"{i}.png", [(40, 40 + 10 * i, 300, 400)]) for i in range(2)]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    images = [good[0], str(tmp_path / "broken.png"), good[1], str(tmp_path / "missing.png")]
    result = embed_images(small_encoder, images, batch_size=3)
    assert result.kept == [0, 2]
    assert sorted(result.failed) == [1, 3]
    assert "broken.png" in result.failed[1] and "missing.png" in result.failed[3]
    assert result.retrieval.shape == (2, 16) and result.aligned.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(result.retrieval, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(result.aligned, axis=1), 1.0, rtol=1e-5)


def test_flip_tta_embeds_an_image_and_its_mirror_identically(tmp_path):
    original = _sheet(tmp_path / "a.png", [(30, 60, 200, 500), (220, 80, 380, 200)])
    mirrored = tmp_path / "mirror.png"
    Image.open(original).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    for flip_tta, same, downscale in (
        (True, True, "area"),
        (True, True, "max"),
        (True, True, "max_area"),
        (False, False, "area"),
    ):
        model = build_encoder(EncoderConfig(**SMALL, flip_tta=flip_tta, downscale=downscale), seed=0).eval()
        result = embed_images(model, [original, mirrored])
        assert np.allclose(result.retrieval[0], result.retrieval[1], atol=1e-5) is same
        assert np.allclose(result.aligned[0], result.aligned[1], atol=1e-5) is same
