"""Cost of the default figure encoder on the CPU: prints a markdown table.

    python benchmarks/retrieval_encoder_speed.py [--threads 2] [--images 32]

Embedding images/s from the sheet files (decode, ink crop, resize, backbone, flip average) for
the previous default (the last map at 512 px) and the current one (block 14 at 640 px), the same from the feature cache (what reruns, gating and the index pay once an
image's backbone features are cached), and training steps/s (batches of 16: 8 patents x 2
views) with the backbone frozen and with its last 3 blocks fine-tuned, both on cached features.
Sheets: the real design grants of ../shared/realdata (any folder of images with --images-dir).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.retrieval.features import compute_prefix_features, embed_prefix_features  # noqa: E402
from training.retrieval.model import build_encoder, embed_images, preset  # noqa: E402
from training.retrieval.train import RetrievalLosses  # noqa: E402


def images_of(folder: Path, count: int) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".tif", ".tiff", ".png"))
    found = [p for p in found if "D00000" not in p.name][:count]
    if not found:
        raise SystemExit(f"no images under {folder}")
    return found


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:.2f}"


# column -> overrides of the "pretrained" preset
SETTINGS: dict[str, dict[str, Any]] = {
    "last map, 512 px (before)": {"feature_block": None, "embedding_dim": 256, "image_size": 512},
    "block 14, 640 px (default)": {},
}


def train_steps(
    overrides: dict[str, Any], trainable_blocks: int, cache: Path, images: list[Path], steps: int
) -> float:
    """Steps/s of one optimisation step of the training loop's shape on cached features."""
    model = build_encoder(preset("pretrained", **overrides))
    features = compute_prefix_features(model, images, trainable_blocks, cache)
    losses = RetrievalLosses(["arcface"], num_patents=8, embedding_dim=model.config.embedding_dim)
    trainable = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    if trainable_blocks:
        first = model.num_blocks - trainable_blocks
        trainable += [p for n, p in model.backbone._blocks[first : model.num_blocks].named_parameters()]
    optimizer = torch.optim.AdamW(trainable + list(losses.parameters()), lr=1e-4)
    labels = torch.arange(8).repeat_interleave(2)
    model.train()
    model.backbone.eval()
    rows = [i % len(features.kept) for i in range(16)]
    started = time.perf_counter()
    for _ in range(steps):
        batch = features.load(rows)[:, 0]
        loss = losses.arcface(model.suffix(batch, trainable_blocks), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default = ROOT.parent / "shared" / "realdata" / "design_patents_with_drawings_2021"
    parser.add_argument("--images-dir", type=Path, default=default)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = images_of(args.images_dir, args.images)
    print(
        f"| EfficientNet-Lite0, {args.threads} threads, {len(images)} real sheets | {' | '.join(SETTINGS)} |"
    )
    print("|---|" + "---|" * len(SETTINGS))
    rows: dict[str, list[str]] = {
        "embedding from sheet files, flip TTA (images/s)": [],
        "embedding from the feature cache (images/s)": [],
        "training steps/s, backbone frozen (batch 16)": [],
        "training steps/s, last 3 blocks fine-tuned (batch 16)": [],
    }
    for overrides in SETTINGS.values():
        model = build_encoder(preset("pretrained", **overrides)).eval()
        started = time.perf_counter()
        embed_images(model, images, batch_size=16)
        rows["embedding from sheet files, flip TTA (images/s)"].append(
            rate(len(images), time.perf_counter() - started)
        )
        with tempfile.TemporaryDirectory() as cache:
            features = compute_prefix_features(model, images, 0, Path(cache))
            started = time.perf_counter()
            embed_prefix_features(model, features, 0)
            cached = rate(len(images), time.perf_counter() - started)
            rows["embedding from the feature cache (images/s)"].append(cached)
            frozen = train_steps(overrides, 0, Path(cache), images, args.steps)
            rows["training steps/s, backbone frozen (batch 16)"].append(f"{frozen:.1f}")
            tail = train_steps(overrides, 3, Path(cache), images, max(3, args.steps // 4))
            rows["training steps/s, last 3 blocks fine-tuned (batch 16)"].append(f"{tail:.2f}")
    for name, values in rows.items():
        print(f"| {name} | {' | '.join(values)} |")


if __name__ == "__main__":
    main()
