from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from patent_assets.images import ImageRejected
from patent_assets.ocr import cache_path, ocr_cached, ocr_image, ocr_images, ocr_region


def _text_sheet(path: Path, text: str, *, size: int = 60, angle: int = 0) -> Path:
    """A white 300 dpi sheet with `text` printed once, turned `angle` degrees counter-clockwise."""
    font = ImageFont.load_default(size=size)
    patch = Image.new("L", (size * (len(text) + 1), size * 2), 255)
    ImageDraw.Draw(patch).text((size // 2, size // 2), text, fill=0, font=font)
    patch = patch.rotate(angle, expand=True, fillcolor=255)
    sheet = Image.new("L", (1200, 1600), 255)
    sheet.paste(patch, (300, 600))
    sheet.convert("1").save(path, dpi=(300, 300))
    return path


def test_words_and_boxes_in_layoutlm_format(tmp_path: Path) -> None:
    words = ocr_image(_text_sheet(tmp_path / "a.png", "FIG. 3"))
    assert "FIG." in words.words and "3" in words.words
    assert len(words.words) == len(words.boxes) == len(words.confidences)
    assert (words.width, words.height) == (1200, 1600)
    fig = words.boxes[words.words.index("FIG.")]
    # The text sits at x 300-700 of 1200 and y 600-720 of 1600: boxes are 0-1000 of the page.
    assert 200 <= fig[0] < fig[2] <= 600 and 350 <= fig[1] < fig[3] <= 480


def test_blank_image_gives_empty_words(tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    Image.new("1", (800, 800), 1).save(blank)
    words = ocr_image(blank)
    assert words.words == [] and words.boxes == [] and (words.width, words.height) == (800, 800)


def test_rotated_text_is_read_on_the_turned_pass(tmp_path: Path) -> None:
    sheet = _text_sheet(tmp_path / "r.png", "FIG. 12", angle=90)  # reads bottom to top
    assert "12" not in ocr_image(sheet).words
    turned = ocr_image(sheet, rotation=270)
    assert "12" in turned.words and (turned.width, turned.height) == (1600, 1200)


def test_parallel_run_caches_by_content(tmp_path: Path) -> None:
    first = _text_sheet(tmp_path / "one.png", "FIG. 1")
    copy = tmp_path / "copy.png"
    shutil.copy(first, copy)
    second = _text_sheet(tmp_path / "two.png", "FIG. 2")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    cache = tmp_path / "cache"

    run = ocr_images([first, copy, second, broken, tmp_path / "missing.png"], cache, workers=2)
    assert run.computed == 2 and run.cached == 1  # the copy is the same content: read once
    assert run.results[first] == run.results[copy] and "2" in run.results[second].words
    assert set(run.failed) == {broken, tmp_path / "missing.png"}
    assert (
        "cannot read image" in run.failed[broken]
        and "cannot read file" in run.failed[tmp_path / "missing.png"]
    )
    cached_files = list(cache.rglob("*.json"))
    assert len(cached_files) == 2 and all(json.loads(p.read_text())["words"] for p in cached_files)
    assert not list(cache.rglob("*.tmp"))

    again = ocr_images([first, copy, second], cache, workers=2)
    assert (again.computed, again.cached, again.failed) == (0, 3, {})
    assert again.results[second] == run.results[second]


def test_label_region_is_read_again_from_the_pixels(tmp_path: Path) -> None:
    sheet = _text_sheet(tmp_path / "r.png", "FIG. 7", size=40)
    words = ocr_image(sheet)
    fig = words.boxes[words.words.index("FIG.")]
    again = ocr_region(sheet, tuple(fig))
    assert again.words[:2] == ["FIG.", "7"]
    with pytest.raises(ImageRejected, match=r"missing\.png: file not found"):
        ocr_region(tmp_path / "missing.png", (0, 0, 10, 10))


def test_fine_pass_is_cached_apart_from_the_first(tmp_path: Path) -> None:
    sheet = _text_sheet(tmp_path / "f.png", "FIG. 4")
    cache = tmp_path / "cache"
    first, fine = ocr_cached(sheet, cache), ocr_cached(sheet, cache, fine=True)
    assert "4" in first.words and "4" in fine.words
    assert cache_path(cache, "ab", fine=True) != cache_path(cache, "ab")
    assert len(list(cache.rglob("*.json"))) == 2
