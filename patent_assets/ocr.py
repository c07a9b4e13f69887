"""Tesseract OCR of drawing sheets: words with 0-1000 boxes (LayoutLMv3's format), cached and parallel.

Whole-sheet tesseract reads patent drawings badly: the strokes of the drawing are taken for text
and swallow the labels beside them (plain `image_to_string` finds ~56% of the FIG labels). We OCR
a *text layer* instead: the connected components of the sheet that have the size of printed
characters (at 300 dpi, 12-120 px on the long side, or a dot), everything else (drawing lines,
long hatching, shading) erased. On the 2021 design sheets this lifts the labels read from 57 to
84-87 of 93, at about half a second a sheet. Reference numerals survive too, which is what the
words are for downstream.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pytesseract
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from patent_assets.images import ImageRejected, image_dpi
from patent_assets.records import OcrWords, atomic_write
from patent_assets.store import sha256_file

# Resolution tesseract reads the text layer at: 200 dpi read 87/93 labels at 0.57 s a sheet,
# 150 dpi 84/93 at 0.41 s, 300 dpi 85/93 at 0.96 s (2021 design sheets).
OCR_DPI = 200
TESSERACT_CONFIG = "--psm 11"  # sparse text: labels and numerals scattered over the sheet
REGION_CONFIG = "--psm 6"  # one block: a label region holds a word and its number, maybe on two lines
# A label's number read again with only the characters a label prints: on the real design sheets
# this reads the "11" the text layer gave as "1 |", "57" as "5/7", "41" as "4]".
LABEL_NUMBER_CONFIG = f"{REGION_CONFIG} -c tessedit_char_whitelist=FIGUREfigure.,0123456789"
# Bump when the text layer or the config changes, so cached results are recomputed.
CACHE_VERSION = f"v1-{OCR_DPI}-psm11"
# The "fine" pass, a second chance for sheets whose labels the first pass left in doubt: a text
# layer at 300 dpi that also keeps larger marks (big labels, bold letters that touch). It read
# "Fig. 6" where the 200 dpi layer gave "Ig" (2021 design sheets).
FINE_DPI = 300
_FINE_CHAR_MAX = 240
FINE_CACHE_VERSION = f"v1-fine{FINE_DPI}-{_FINE_CHAR_MAX}-psm11"


# Component sizes at 300 dpi that count as characters.
_CHAR_LONG_MIN, _CHAR_LONG_MAX, _CHAR_SHORT_MIN = 12, 120, 3
_DOT_MAX = 14


@dataclass
class OcrRun:
    results: dict[Path, OcrWords] = field(default_factory=dict)
    cached: int = 0
    computed: int = 0
    failed: dict[Path, str] = field(default_factory=dict)


def text_layer(
    image: Image.Image, dpi: float | None = None, *, out_dpi: float = OCR_DPI, char_max: int = _CHAR_LONG_MAX
) -> Image.Image:
    """Only the character-sized components of a sheet, black on white, resampled to `out_dpi`.

    `char_max` is the longest component (px at 300 dpi) that still counts as a character.
    """
    dpi = dpi or image_dpi(image)
    ink = np.asarray(image.convert("L")) < 128
    labels, count = ndimage.label(ink, structure=np.ones((3, 3), dtype=bool))
    keep = np.zeros(count + 1, dtype=bool)
    if count:
        k = dpi / 300.0
        slices = ndimage.find_objects(labels)
        heights = np.array([s[0].stop - s[0].start for s in slices])
        widths = np.array([s[1].stop - s[1].start for s in slices])
        long_side, short_side = np.maximum(heights, widths), np.minimum(heights, widths)
        character = (
            (long_side >= _CHAR_LONG_MIN * k)
            & (long_side <= char_max * k)
            & (short_side >= _CHAR_SHORT_MIN * k)
        )
        dot = (
            (short_side >= _CHAR_SHORT_MIN * k) & (long_side <= _DOT_MAX * k) & (long_side <= 2 * short_side)
        )
        keep[1:] = character | dot
    layer = Image.fromarray(np.where(keep[labels], 0, 255).astype(np.uint8), mode="L")
    factor = out_dpi / dpi
    if abs(factor - 1.0) > 0.05:
        size = (max(1, round(layer.width * factor)), max(1, round(layer.height * factor)))
        layer = layer.resize(size, Image.Resampling.BOX)  # grey edges help tesseract's binariser
    return layer


def ocr_layer(layer: Image.Image, config: str = TESSERACT_CONFIG) -> OcrWords:
    """Tesseract words of an already prepared image, boxes in 0-1000 of its size."""
    data = pytesseract.image_to_data(layer, config=config, output_type=pytesseract.Output.DICT)
    width, height = layer.size
    words = OcrWords(width=width, height=height)
    for text, conf, left, top, w, h in zip(
        data["text"], data["conf"], data["left"], data["top"], data["width"], data["height"], strict=True
    ):
        text = str(text).strip()
        if not text:
            continue
        words.words.append(text)
        words.boxes.append(_box_1000(left, top, left + w, top + h, width, height))
        words.confidences.append(max(0.0, float(conf)))
    return words


def ocr_image(png: Path, *, rotation: int = 0, fine: bool = False) -> OcrWords:
    """OCR one sheet image (its text layer), optionally turned by `rotation` degrees counter-clockwise.

    `fine` reads the finer text layer of the second-chance pass. Boxes are 0-1000 of the (turned)
    image; `width`/`height` are its pixel size. An image with no readable text gives empty words.
    Raises ImageRejected if the file cannot be read.
    """
    with _open_sheet(png) as image:
        layer = text_layer(image, out_dpi=FINE_DPI, char_max=_FINE_CHAR_MAX) if fine else text_layer(image)
        width, height = image.size
    if rotation % 360:
        layer = layer.rotate(rotation, expand=True, fillcolor=255)
        if rotation % 180:
            width, height = height, width
    words = ocr_layer(layer)
    words.width, words.height = width, height
    return words


@contextmanager
def _open_sheet(png: Path) -> Iterator[Image.Image]:
    """The sheet image, fully loaded; ImageRejected (naming the file and why) if it cannot be read."""
    png = Path(png)
    try:
        with Image.open(png) as image:
            image.load()
            yield image
    except FileNotFoundError:
        raise ImageRejected(png, "file not found") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageRejected(png, f"cannot read image: {error}") from None


# A label-region re-read: the crop reaches this many word heights right of and below the FIG word
# (the number follows it, or sits under it), and is scaled so that the word is this many pixels high.
_REGION_RIGHT, _REGION_BELOW = 6.0, 1.6
_REGION_HEIGHT = 40


def ocr_region(
    png: Path, box: tuple[int, int, int, int], *, rotation: int = 0, config: str = REGION_CONFIG
) -> OcrWords:
    """Tesseract on the original pixels around one word (a FIG word whose number was not read or is
    read again, with `config` LABEL_NUMBER_CONFIG).

    `box` is 0-1000 of the image turned by `rotation`. The text layer can lose a label's number
    (it touches a stroke, or dashed lines crowd it); the plain pixels, enlarged and read as one
    block, usually give it back: on the 2021 design sheets, "Ig" became "Fig. 6". ~0.1 s a region.
    """
    with _open_sheet(png) as image:
        grey = image.convert("L")
    if rotation % 360:
        grey = grey.rotate(rotation, expand=True, fillcolor=255)
    width, height = grey.size
    x0, y0, x1, y1 = (
        box[0] * width / 1000,
        box[1] * height / 1000,
        box[2] * width / 1000,
        box[3] * height / 1000,
    )
    word_height = max(y1 - y0, 8.0)
    crop = grey.crop(
        (
            max(0, round(x0 - word_height)),
            max(0, round(y0 - 0.6 * word_height)),
            min(width, round(x1 + _REGION_RIGHT * word_height)),
            min(height, round(y1 + _REGION_BELOW * word_height)),
        )
    )
    scale = _REGION_HEIGHT / word_height
    crop = crop.resize(
        (max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.Resampling.LANCZOS
    )
    return ocr_layer(crop, config=config)


def cache_path(cache_dir: Path, sha256: str, rotation: int = 0, fine: bool = False) -> Path:
    version = FINE_CACHE_VERSION if fine else CACHE_VERSION
    return Path(cache_dir) / sha256[:2] / f"{sha256}.{version}.r{rotation % 360}.json"


def read_cached(cache_dir: Path, sha256: str, rotation: int = 0, fine: bool = False) -> OcrWords | None:
    path = cache_path(cache_dir, sha256, rotation, fine)
    try:
        return OcrWords(**json.loads(path.read_text(encoding="utf-8")))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None  # absent or damaged: recompute


def write_cached(
    cache_dir: Path, sha256: str, words: OcrWords, rotation: int = 0, fine: bool = False
) -> None:
    with atomic_write(cache_path(cache_dir, sha256, rotation, fine)) as handle:
        json.dump(asdict(words), handle)


def ocr_cached(png: Path, cache_dir: Path | None, *, rotation: int = 0, fine: bool = False) -> OcrWords:
    """`ocr_image` through the content-hash cache (no cache if `cache_dir` is None)."""
    if cache_dir is None:
        return ocr_image(png, rotation=rotation, fine=fine)
    sha = sha256_file(png)
    words = read_cached(cache_dir, sha, rotation, fine)
    if words is None:
        words = ocr_image(png, rotation=rotation, fine=fine)
        write_cached(cache_dir, sha, words, rotation, fine)
    return words


def _worker_init() -> None:
    # Tesseract's OpenMP threads fight each other when several run at once.
    os.environ["OMP_THREAD_LIMIT"] = "1"


def _ocr_job(png: Path, rotation: int) -> OcrWords:
    return ocr_image(png, rotation=rotation)


def ocr_images(
    paths: Iterable[Path],
    cache_dir: Path,
    workers: int | None = None,
    *,
    rotation: int = 0,
    progress: bool | None = None,
) -> OcrRun:
    """OCR many images in parallel, each distinct content once, reusing results cached by content hash.

    A file that cannot be read or OCRed lands in `failed` with its reason; the others go on.
    """
    workers = max(1, workers or os.cpu_count() or 1)
    run = OcrRun()
    todo: dict[str, list[Path]] = {}  # content hash -> the paths holding it
    for path in dict.fromkeys(Path(p) for p in paths):
        try:
            sha = sha256_file(path)
        except OSError as error:
            run.failed[path] = f"cannot read file: {error}"
            continue
        cached = read_cached(cache_dir, sha, rotation)
        if cached is not None:
            run.results[path] = cached
            run.cached += 1
        else:
            todo.setdefault(sha, []).append(path)

    def record(sha: str, words: OcrWords) -> None:
        write_cached(cache_dir, sha, words, rotation)
        for path in todo[sha]:
            run.results[path] = words
        run.computed += 1
        run.cached += len(todo[sha]) - 1  # repeats of one image in the same run cost nothing

    def fail(sha: str, error: BaseException) -> None:
        reason = error.reason if isinstance(error, ImageRejected) else f"{type(error).__name__}: {error}"
        for path in todo[sha]:
            run.failed[path] = reason

    bar = tqdm(
        total=len(todo), desc="ocr", unit="image", disable=(not progress) if progress is not None else None
    )
    try:
        if workers == 1 or len(todo) <= 1:
            for sha, paths_of in todo.items():
                try:
                    record(sha, ocr_image(paths_of[0], rotation=rotation))
                except (ImageRejected, pytesseract.TesseractError, OSError, RuntimeError) as error:
                    fail(sha, error)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=_worker_init) as pool:
                futures = {
                    pool.submit(_ocr_job, paths_of[0], rotation): sha for sha, paths_of in todo.items()
                }
                for future in as_completed(futures):
                    sha = futures[future]
                    try:
                        record(sha, future.result())
                    except Exception as error:
                        fail(sha, error)
                    bar.update()
    finally:
        bar.close()
    return run


def _box_1000(x0: int, y0: int, x1: int, y1: int, width: int, height: int) -> list[int]:
    def scale(value: int, size: int) -> int:
        return min(1000, max(0, round(1000 * value / max(size, 1))))

    return [scale(x0, width), scale(y0, height), scale(x1, width), scale(y1, height)]
