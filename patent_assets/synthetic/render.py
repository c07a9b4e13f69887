"""Rendering a sheet: each figure's object projected, with leader lines, numerals and its label."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from patent_assets.synthetic.config import DPI, SyntheticConfig
from patent_assets.synthetic.geometry import Part
from patent_assets.synthetic.plans import VIEWS, FigurePlan, PatentPlan, SheetPlan


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow >= 10.1 ships a scalable TrueType default font: no system font needed.
    return ImageFont.load_default(size=size)


def _project(parts: list[Part], view: str) -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
    """Per part: its projected 2-D polylines (image y grows downwards) and its vertices."""
    rotation = VIEWS[view][0]
    view_dir = rotation.T @ np.array([0.0, 1.0, 0.0])  # the camera looks along +y after rotating
    lines, vertices = [], []
    for part in parts:
        part_lines = []
        for solid in part.solids:
            for line in solid.polylines(view_dir):
                rotated = line @ rotation.T
                part_lines.append(np.column_stack([rotated[:, 0], -rotated[:, 2]]))
        rotated = np.vstack([solid.vertices for solid in part.solids]) @ rotation.T
        lines.append(part_lines)
        vertices.append(np.column_stack([rotated[:, 0], -rotated[:, 2]]))
    return lines, vertices


def _draw_figure(
    draw: ImageDraw.ImageDraw,
    region: tuple[int, int, int, int],
    parts: list[Part],
    figure: FigurePlan,
    part_numerals: dict[str, int],
    rng: np.random.Generator,
    unit: int,
) -> None:
    x0, y0, x1, y1 = region
    label_font, numeral_font = _font(int(unit * 1.5)), _font(unit)
    line_width = max(2, unit // 10)
    label_space = int(unit * 2.6) if figure.label else 0
    margin = int(unit * 2.8) if figure.numerals else int(unit * 0.8)
    art = (x0 + margin, y0 + margin, x1 - margin, y1 - margin - label_space)
    lines, vertices = _project(parts, figure.view)
    every = np.vstack(vertices)
    low, high = every.min(axis=0), every.max(axis=0)
    span = np.maximum(high - low, 1e-6)
    scale = min((art[2] - art[0]) / span[0], (art[3] - art[1]) / span[1]) * rng.uniform(0.8, 1.0)
    center = np.array([(art[0] + art[2]) / 2, (art[1] + art[3]) / 2])
    mid = (low + high) / 2

    def to_pixels(points: np.ndarray) -> np.ndarray:
        return (points - mid) * scale + center

    for part_lines in lines:
        for line in part_lines:
            draw.line([tuple(p) for p in to_pixels(line).round(1)], fill=0, width=line_width, joint="curve")

    # Reference numerals with leader lines, pointing outwards from the object's centre.
    placed: list[np.ndarray] = []
    for numeral in figure.numerals:
        index = list(part_numerals.values()).index(numeral)
        points = to_pixels(vertices[index])
        anchor = points[np.argmax(np.linalg.norm(points - center, axis=1) + rng.uniform(0, 5, len(points)))]
        anchor = anchor + (to_pixels(vertices[index].mean(axis=0, keepdims=True))[0] - anchor) * 0.1
        direction = anchor - center
        direction = direction / (np.linalg.norm(direction) or 1.0)
        text = str(numeral)
        box_w, box_h = draw.textbbox((0, 0), text, font=numeral_font)[2:]
        for turn in (0.0, 0.5, -0.5, 1.0, -1.0, 1.6, -1.6, 2.4):
            c, s = np.cos(turn), np.sin(turn)
            d = np.array([c * direction[0] - s * direction[1], s * direction[0] + c * direction[1]])
            spot = anchor + d * unit * 2.2
            spot = np.clip(
                spot,
                [x0 + box_w / 2 + 2, y0 + box_h / 2 + 2],
                [x1 - box_w / 2 - 2, y1 - label_space - box_h / 2 - 2],
            )
            if all(np.linalg.norm(spot - other) > unit * 1.6 for other in placed):
                break
        placed.append(spot)
        draw.text(tuple(spot), text, fill=0, font=numeral_font, anchor="mm")
        start = spot + (anchor - spot) * min(1.0, (unit * 0.8) / (np.linalg.norm(anchor - spot) or 1.0))
        draw.line([tuple(start), tuple(anchor)], fill=0, width=max(1, line_width - 1))
    if figure.label:
        draw.text(((x0 + x1) / 2, y1 - label_space / 2), figure.label, fill=0, font=label_font, anchor="mm")


def render_sheet(patent: PatentPlan, sheet: SheetPlan, config: SyntheticConfig) -> Image.Image:
    """A 1-bit drawing sheet; a landscape sheet is drawn wide, then stored as portrait pixels."""
    width, height = config.sheet_width, config.sheet_height
    canvas_size = (height, width) if sheet.landscape else (width, height)
    canvas = Image.new("L", canvas_size, 255)
    draw = ImageDraw.Draw(canvas)
    rng = np.random.default_rng([patent.object_seed, sheet.num])
    parts = patent.object_class.build(np.random.default_rng(patent.object_seed))
    unit = max(12, round(min(width, height) / 32))  # numeral height; the FIG label is 1.5x
    edge = int(unit * 1.5)
    w, h = canvas_size
    count = len(sheet.figures)
    for i, figure in enumerate(sheet.figures):
        if w > h:  # side by side on a wide canvas, stacked on a tall one
            region = (
                edge + i * (w - 2 * edge) // count,
                edge,
                edge + (i + 1) * (w - 2 * edge) // count,
                h - edge,
            )
        else:
            region = (
                edge,
                edge + i * (h - 2 * edge) // count,
                w - edge,
                edge + (i + 1) * (h - 2 * edge) // count,
            )
        _draw_figure(draw, region, parts, figure, patent.part_numerals, rng, unit)
    bilevel = canvas.point(lambda value: 255 if value >= 128 else 0).convert("1", dither=Image.Dither.NONE)
    if sheet.landscape:
        # 37 CFR 1.84(i): a landscape view sits with its top at the right-hand side of the sheet.
        bilevel = bilevel.transpose(Image.Transpose.ROTATE_270)
    return bilevel


def tiff_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF", compression="group4", dpi=(DPI, DPI))
    return buffer.getvalue()
