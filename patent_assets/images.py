"""Drawing sheets (TIFF, usually 1-bit CCITT G4 at 300 dpi) to upright PNGs, with limits on bad input."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from patent_assets.records import atomic_write

DEFAULT_DPI = 300  # USPTO sheets; used when a file does not say


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 60_000_000  # a 300 dpi letter sheet is ~8.7 M; 60 M leaves room for odd scans
    max_file_bytes: int = 50 * 1024 * 1024
    min_side: int = 32  # smaller than this is a placeholder or an icon, not a drawing
    max_side: int | None = None  # downscale so that the longer side is at most this (None: keep)


@dataclass(frozen=True)
class SheetImage:
    path: Path
    width: int
    height: int
    sha256: str


class ImageRejected(ValueError):
    """A sheet that cannot be turned into an image; `reason` says why, the message names the file."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageRejected], tuple[Path, str]]:
        # Raised in OCR worker processes: it must survive pickling back to the parent.
        return (type(self), (self.path, self.reason))


def load_sheet(tif: Path, *, landscape: bool = False, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Open and fully decode a sheet, upright; raise ImageRejected on anything unreadable or out of limits."""
    tif = Path(tif)
    try:
        size = tif.stat().st_size
    except FileNotFoundError:
        raise ImageRejected(tif, "file not found") from None
    except OSError as error:
        raise ImageRejected(tif, f"cannot read file: {error}") from None
    if size == 0:
        raise ImageRejected(tif, "empty file")
    if size > limits.max_file_bytes:
        raise ImageRejected(tif, f"file is {size} bytes, over the limit of {limits.max_file_bytes}")
    data = tif.read_bytes()
    # Pillow's own bomb check is process-global (Image.MAX_IMAGE_PIXELS); check our limit per call
    # from the header, before decoding, and turn Pillow's warning/error into a rejection too.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ImageRejected(tif, f"{width}x{height} pixels, over the limit of {limits.max_pixels}")
            if min(width, height) < limits.min_side:
                raise ImageRejected(
                    tif, f"{width}x{height} pixels, under the minimum side of {limits.min_side}"
                )
            image.load()  # decode now: a truncated or corrupt strip fails here, not later
        except ImageRejected:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            raise ImageRejected(tif, f"decompression bomb: {error}") from None
        except Image.UnidentifiedImageError:
            raise ImageRejected(tif, "not an image Pillow can identify") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageRejected(tif, f"corrupt or truncated image: {error}") from None
    if landscape:
        # USPTO stores landscape sheets as portrait pixels whose text reads bottom-to-top:
        # a quarter turn clockwise makes them read left-to-right (checked on the 2021 design sheets).
        image = image.transpose(Image.Transpose.ROTATE_270)
    return image


def sheet_to_png(
    tif: Path, out: Path, *, landscape: bool = False, limits: ImageLimits = ImageLimits()
) -> SheetImage:
    """Convert one sheet to an upright PNG at `out` (written atomically) and describe it."""
    tif = Path(tif)
    image = load_sheet(tif, landscape=landscape, limits=limits)
    dpi = _dpi_of(image)
    if image.mode not in ("1", "L"):
        image = image.convert("L")
    if limits.max_side and max(image.size) > limits.max_side:
        factor = limits.max_side / max(image.size)
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        # Grey-level area averaging keeps thin 1-bit strokes visible after shrinking.
        image = image.convert("L").resize(size, Image.Resampling.BOX)
        dpi = dpi * factor
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, dpi=(dpi, dpi))
    payload = buffer.getvalue()
    with atomic_write(Path(out), "wb") as handle:
        handle.write(payload)
    return SheetImage(Path(out), image.width, image.height, hashlib.sha256(payload).hexdigest())


def _dpi_of(image: Image.Image) -> float:
    dpi = image.info.get("dpi")
    try:
        value = float(dpi[0]) if dpi else 0.0
    except (TypeError, ValueError, IndexError):
        value = 0.0
    return value if value >= 50 else float(DEFAULT_DPI)


def image_dpi(image: Image.Image) -> float:
    """The resolution an image declares (PNG pHYs / TIFF tags), or 300 if it declares none."""
    return _dpi_of(image)
