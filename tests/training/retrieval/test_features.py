"""The content-addressed cache of a frozen backbone's features (training/retrieval/features.py) and
the evaluation that reads it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from patent_assets.store import sha256_file
from training.retrieval.evaluate import embed_figures, evaluate_encoder
from training.retrieval.features import (
    FeatureCache,
    compute_prefix_features,
    embed_prefix_features,
    prefix_key,
)
from training.retrieval.model import FigureEncoder, build_encoder, embed_images, preprocess_image, preset

SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def drawings(tmp_path_factory) -> list[str]:
    """Five different line drawings, none mirror-symmetric."""
    folder = tmp_path_factory.mktemp("drawings")
    paths = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        image = Image.new("L", (300, 400), 255)
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = int(rng.integers(10, 150)), int(rng.integers(10, 200))
            x1, y1 = int(rng.integers(x0 + 20, 295)), int(rng.integers(y0 + 20, 395))
            draw.rectangle((x0, y0, x1, y1), outline=0, width=3)
            draw.line((x0, y0, x1, (y0 + y1) // 2), fill=0, width=2)
        path = folder / f"drawing{seed}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def _model(**overrides) -> FigureEncoder:
    return build_encoder(preset("pretrained", **({"image_size": SIZE} | overrides)), seed=0).eval()


@pytest.fixture(scope="module")
def model() -> FigureEncoder:
    return _model()


class CountingPrefix:
    """Wraps `model.prefix` (an instance attribute shadows the method) and counts the images run."""

    def __init__(self, model: FigureEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
        self.images = 0
        original = model.prefix

        def prefix(pixels: torch.Tensor, trainable_blocks: int) -> torch.Tensor:
            self.images += len(pixels)
            return original(pixels, trainable_blocks)

        monkeypatch.setattr(model, "prefix", prefix, raising=False)


def _entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.npy"))


def test_entries_are_content_addressed_and_hold_the_plain_and_mirrored_features(tmp_path, model, drawings):
    twin = tmp_path / "elsewhere" / "same_bytes.png"
    twin.parent.mkdir()
    shutil.copyfile(drawings[0], twin)
    images = [drawings[0], str(twin), drawings[1]]
    features = compute_prefix_features(model, images, 0, tmp_path / "cache")
    assert features.kept == [0, 1, 2] and not features.failed
    assert features.shas[0] == features.shas[1] == sha256_file(drawings[0]) != features.shas[2]
    key = prefix_key(model, 0)
    assert features.cache == FeatureCache(tmp_path / "cache", key)
    entries = _entries(tmp_path / "cache")
    assert len(entries) == 2  # one entry for the two copies
    sha = features.shas[2]
    assert features.cache.path(sha) == tmp_path / "cache" / key / sha[:2] / f"{sha}.npy"
    entry = np.load(features.cache.path(sha))
    assert entry.dtype == np.float16 and entry.shape == (2, 192)
    pixels = preprocess_image(drawings[1], model.config)[None]
    with torch.no_grad():
        plain = model.prefix(pixels, 0)[0].numpy()
        mirrored = model.prefix(torch.flip(pixels, dims=[-1]), 0)[0].numpy()
    np.testing.assert_allclose(entry[0], plain, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(entry[1], mirrored, rtol=2e-3, atol=2e-3)
    assert not np.allclose(plain, mirrored, rtol=2e-3, atol=2e-3)  # the drawing is not symmetric
    loaded = features.load([0, 2])
    assert loaded.dtype == torch.float32 and loaded.shape == (2, 2, 192)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]


def test_a_second_compute_reads_the_cache(tmp_path, model, drawings, monkeypatch):
    counter = CountingPrefix(model, monkeypatch)
    first = compute_prefix_features(model, drawings[:3], 0, tmp_path, batch_size=2)
    assert counter.images == 2 * 3  # each image as is and mirrored
    second = compute_prefix_features(model, drawings[:3], 0, tmp_path)
    assert counter.images == 6  # nothing run again
    assert second.shas == first.shas and second.kept == first.kept
    torch.testing.assert_close(second.load(range(3)), first.load(range(3)))
    compute_prefix_features(model, drawings[:4], 0, tmp_path)
    assert counter.images == 6 + 2  # only the new image
    # A corrupt entry is recomputed and rewritten
    broken = first.cache.path(first.shas[1])
    broken.write_bytes(b"not a numpy file")
    assert first.cache.get(first.shas[1]) is None
    compute_prefix_features(model, drawings[:4], 0, tmp_path)
    assert counter.images == 8 + 2
    assert np.load(broken).shape == (2, 192)
    # An entry removed after compute: loading it says so
    broken.unlink()
    with pytest.raises(FileNotFoundError, match="cache entry vanished"):
        first.load([1])


def test_the_key_follows_what_the_prefix_depends_on(tmp_path, model, drawings, monkeypatch):
    key = prefix_key(model, 0)
    assert key == prefix_key(_model(), 0)  # the same weights and settings
    assert len({key, prefix_key(model, 1), prefix_key(model, 3)}) == 3  # the split point
    assert prefix_key(_model(image_size=SIZE + 32), 0) != key
    assert prefix_key(_model(downscale="max"), 0) != key
    assert prefix_key(_model(ink_margin=0.05), 0) != key
    assert prefix_key(_model(feature_block=13, embedding_dim=64), 0) != key  # another map is read
    with pytest.raises(ValueError, match="trainable_blocks"):
        prefix_key(model, 17)

    other = _model()
    with torch.no_grad():  # what follows the prefix does not matter
        other.fc.weight.mul_(2.0)
        other.text_projection.weight.mul_(2.0)
    assert prefix_key(other, 0) == key
    with torch.no_grad():  # GeM is in the prefix of a frozen backbone, not of one with trainable blocks
        other.pool.p.fill_(4.0)
    assert prefix_key(other, 0) != key and prefix_key(other, 1) == prefix_key(model, 1)
    with torch.no_grad():  # the last block in use (14): in the prefix at k=0 only; the first: in both
        last = _model()
        last.backbone._blocks[14]._project_conv.weight.mul_(0.5)
        first = _model()
        first.backbone._blocks[0]._project_conv.weight.mul_(0.5)
    assert prefix_key(last, 0) != key and prefix_key(last, 1) == prefix_key(model, 1)
    assert prefix_key(first, 1) != prefix_key(model, 1)

    # Another image size: another key, so the features are computed afresh, not read stale
    larger = _model(image_size=SIZE + 32)
    counter = CountingPrefix(larger, monkeypatch)
    compute_prefix_features(model, drawings[:2], 0, tmp_path)
    compute_prefix_features(larger, drawings[:2], 0, tmp_path)
    assert counter.images == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([key, prefix_key(larger, 0)])


def test_an_unreadable_image_is_reported_and_the_rest_cached(tmp_path, model, drawings):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG broken")
    images = [drawings[0], str(broken), drawings[1], str(tmp_path / "missing.png"), drawings[2]]
    features = compute_prefix_features(model, images, 0, tmp_path / "cache", batch_size=2)
    assert features.kept == [0, 2, 4]
    assert sorted(features.failed) == [1, 3]
    assert "broken.png" in features.failed[1] and "missing.png" in features.failed[3]
    assert len(_entries(tmp_path / "cache")) == 3
    retrieval, aligned = embed_prefix_features(model, features, 0)
    assert retrieval.shape == (3, 192) and aligned.shape == (3, model.config.text_dim)
    vectors, kept, failed = embed_figures(model, [Path(p) for p in images], feature_cache=tmp_path / "cache")
    assert kept == [0, 2, 4] and sorted(failed) == [1, 3]
    np.testing.assert_array_equal(vectors, retrieval)


@pytest.mark.parametrize(
    ("blocks", "overrides"),
    [(0, {}), (1, {}), (3, {}), (0, {"flip_tta": False}), (0, {"head": "none"}), (1, {"head": "bn_neck"})],
)
def test_embeddings_from_the_cache_equal_those_from_pixels(tmp_path, drawings, blocks, overrides):
    model = _model(**overrides)
    features = compute_prefix_features(model, drawings, blocks, tmp_path)
    if blocks:
        assert np.load(_entries(tmp_path)[0]).ndim == 4  # (2, C, H, W): the block input map
    retrieval, aligned = embed_prefix_features(model, features, blocks, batch_size=2)
    direct = embed_images(model, drawings)
    assert retrieval.shape == direct.retrieval.shape and aligned.shape == direct.aligned.shape
    # the cache keeps float16: equal to its precision
    np.testing.assert_allclose(retrieval, direct.retrieval, atol=5e-3)
    np.testing.assert_allclose(aligned, direct.aligned, atol=5e-3)
    np.testing.assert_allclose(np.linalg.norm(retrieval, axis=1), 1.0, atol=1e-5)
    # nearest neighbours do not change
    assert ((retrieval @ retrieval.T).argsort(1) == (direct.retrieval @ direct.retrieval.T).argsort(1)).all()
    assert not model.training  # left in the mode it was in


def test_evaluate_encoder_with_the_cache_scores_as_without(tmp_path, model, drawings):
    figures = [
        {
            "image_id": f"f{i}",
            "patent_id": f"P{i // 2}",
            "grant_date": f"2024-01-0{1 + i // 2}",
            "classifications": ["LOCARNO:0808"],
            "image_path": path,
            "split": "test" if i % 2 else "train",
        }
        for i, path in enumerate(drawings[:4])
    ]
    figures.append({**figures[0], "image_id": "gone", "image_path": str(tmp_path / "missing.png")})
    plain = evaluate_encoder(model, figures, ["test"])
    cached = evaluate_encoder(model, figures, ["test"], feature_cache=tmp_path / "cache")
    assert cached["same_patent"]["unreadable"] == plain["same_patent"]["unreadable"] == 1.0
    for task in ("same_patent", "prior_art"):
        assert cached[task].keys() == plain[task].keys()
        for name, value in plain[task].items():
            assert cached[task][name] == pytest.approx(value, abs=1e-3), (task, name)
    assert len(_entries(tmp_path / "cache")) == 4
    # with trainable blocks, the cache holds the block inputs and the scores stay the same
    blocks = evaluate_encoder(model, figures, ["test"], feature_cache=tmp_path / "cache", trainable_blocks=2)
    assert blocks["same_patent"]["mAP"] == pytest.approx(plain["same_patent"]["mAP"], abs=1e-3)
    assert len(_entries(tmp_path / "cache")) == 8
