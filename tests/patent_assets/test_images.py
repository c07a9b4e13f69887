from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from patent_assets.images import ImageLimits, ImageRejected, sheet_to_png

DESIGNS = "design_patents_with_drawings_2021"
# A landscape sheet (its XML says orientation="landscape"): 330 x 1941 portrait pixels, "FIG. 4" across.
LANDSCAPE = f"{DESIGNS}/USD0928145-20210817/USD0928145-20210817-D00004.TIF"
PORTRAIT = f"{DESIGNS}/USD0928323-20210817/USD0928323-20210817-D00002.TIF"


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares `width` x `height` (no pixel data follows: a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_real_sheet_to_png(realdata: Path, tmp_path: Path) -> None:
    sheet = sheet_to_png(realdata / PORTRAIT, tmp_path / "out" / "sheet.png", landscape=False)
    assert (sheet.width, sheet.height) == (766, 1763)
    with Image.open(sheet.path) as image:
        assert image.format == "PNG" and image.size == (766, 1763)
        assert round(image.info["dpi"][0]) == 300
    assert (
        len(sheet.sha256) == 64
        and sheet.sha256 == __import__("hashlib").sha256(sheet.path.read_bytes()).hexdigest()
    )
    assert [p.name for p in sheet.path.parent.iterdir()] == ["sheet.png"]  # no temp file left


def test_landscape_sheet_is_turned_to_read_upright(realdata: Path, tmp_path: Path) -> None:
    sheet = sheet_to_png(realdata / LANDSCAPE, tmp_path / "l.png", landscape=True)
    assert (sheet.width, sheet.height) == (1941, 330)
    # Upright means the label reads left to right without turning: tesseract finds it at 0 degrees.
    from patent_assets.alignment import scan_words
    from patent_assets.ocr import ocr_image

    assert [hit.key for hit in scan_words(ocr_image(sheet.path)).hits] == ["4"]
    assert scan_words(ocr_image(sheet.path, rotation=180)).hits == []


def test_downscale_to_max_side(realdata: Path, tmp_path: Path) -> None:
    sheet = sheet_to_png(realdata / PORTRAIT, tmp_path / "small.png", limits=ImageLimits(max_side=800))
    assert max(sheet.width, sheet.height) == 800
    with Image.open(sheet.path) as image:
        assert round(image.info["dpi"][0]) == round(300 * 800 / 1763)


def test_any_pillow_image_is_accepted(tmp_path: Path) -> None:
    source = tmp_path / "drawing.jpg"
    Image.new("RGB", (200, 100), "white").save(source)
    sheet = sheet_to_png(source, tmp_path / "drawing.png")
    assert (sheet.width, sheet.height) == (200, 100)


@pytest.mark.parametrize(
    "case", ["truncated", "random", "missing", "empty", "huge", "bomb", "tiny", "big_file"]
)
def test_bad_input_is_rejected_naming_the_file(case: str, realdata: Path, tmp_path: Path) -> None:
    limits = ImageLimits()
    bad = tmp_path / f"{case}.tif"
    if case == "truncated":
        data = (realdata / PORTRAIT).read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif case == "random":
        bad.write_bytes(bytes(range(256)) * 40)
    elif case == "empty":
        bad.write_bytes(b"")
    elif case == "huge":
        bad = _png_declaring(tmp_path / "huge.png", 9_000, 9_000)
    elif case == "bomb":
        # Beyond twice Pillow's own limit Pillow itself refuses; that becomes our rejection too.
        bad = _png_declaring(tmp_path / "bomb.png", 30_000, 30_000)
        limits = ImageLimits(max_pixels=10**10)
    elif case == "tiny":
        Image.new("1", (10, 10), 1).save(bad)
    elif case == "big_file":
        bad.write_bytes((realdata / PORTRAIT).read_bytes())
        limits = ImageLimits(max_file_bytes=1000)
    out = tmp_path / "out" / "x.png"
    with pytest.raises(ImageRejected) as caught:
        sheet_to_png(bad, out, limits=limits)
    assert str(bad) in str(caught.value)
    expected = {
        "truncated": "corrupt or truncated",
        "random": "not an image",
        "missing": "not found",
        "empty": "empty",
        "huge": "over the limit",
        "bomb": "bomb",
        "tiny": "under the minimum",
        "big_file": "bytes, over the limit",
    }[case]
    assert expected in caught.value.reason
    assert not out.exists()
