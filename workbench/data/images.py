"""Reading and writing images as uint8 RGB arrays, mod-cropping, and listing image folders.

Everything in the workbench handles images as ``numpy.ndarray`` of shape (H, W, 3), dtype uint8,
RGB order. :func:`read_image` is the single door through which files enter: grayscale, palette,
16-bit and alpha images are converted here, so no later stage has to care what the file held.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from workbench.core.errors import WorkbenchError

#: File suffixes (lower case) that :func:`list_images` treats as images.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp",
                                   ".ppm", ".pgm", ".pnm")

#: Largest image (in pixels) the workbench decodes: 64 megapixels (8000x8000) is far beyond any
#: SR benchmark or training image (DIV2K is about 3), and refuses decompression bombs (a few KB
#: of PNG that would decode to gigabytes) before any pixel is allocated.
MAX_PIXELS = 64_000_000
# Pillow refuses images of more than twice this and only warns between: warn at our limit and
# turn the warning into an error below, so nothing between the two gets through.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# 16-bit and 32-bit integer grayscale modes that Pillow does not convert to RGB with full range.
_WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_rgb(img: Image.Image, path: Path) -> np.ndarray:
    """Convert a decoded Pillow image of any common mode to a uint8 (H, W, 3) RGB array."""
    mode = img.mode
    if mode in _WIDE_GRAY_MODES:
        # Pillow keeps 16-bit PNGs as integer images; scale to 8 bits instead of clipping
        # (a plain convert("L") would saturate everything above 255 to white).
        wide = np.asarray(img, dtype=np.int64)
        top = 65535 if mode.startswith("I;16") or wide.max(initial=0) > 255 else 255
        gray = np.floor(wide.clip(0, top) * (255.0 / top) + 0.5).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        raise WorkbenchError(f"{path}: floating-point images are not supported (mode F); "
                             "save it as 8- or 16-bit")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        # Alpha is dropped and the colour kept, as image readers for SR data sets do.
        img = img.convert("RGBA")
    array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(array)


def _open(path: Path) -> Image.Image:
    """Image.open with the pixel limit enforced as a one-line WorkbenchError."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise WorkbenchError(f"{path}: image has more than {MAX_PIXELS // 1_000_000} megapixels, "
                             "the most this workbench decodes (a decompression bomb?)") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a uint8 (H, W, 3) RGB array.

    Grayscale is replicated to three channels, palette images are expanded, 16-bit images are
    scaled to 8 bits and an alpha channel is dropped. A file that is missing, not an image, or
    truncated raises :class:`WorkbenchError` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise WorkbenchError(f"{path}: image file does not exist")
    if not path.is_file():
        raise WorkbenchError(f"{path}: is not a file (expected an image)")
    import warnings

    try:
        with _open(path) as img, warnings.catch_warnings():
            # Pillow's warnings (corrupt EXIF, palette transparency) would print beside the
            # one-line error or the results; what they warn about is handled here.
            warnings.simplefilter("ignore")
            img.load()
            return _to_rgb(img, path)
    except WorkbenchError:
        raise
    except MemoryError:
        raise WorkbenchError(f"{path}: image too large to decode in memory") from None
    except UnidentifiedImageError:
        raise WorkbenchError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise WorkbenchError(f"{path}: cannot decode image ({exc})") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file, read from its header without decoding the pixels."""
    path = Path(path)
    try:
        with _open(path) as img:
            width, height = img.size
    except FileNotFoundError:
        raise WorkbenchError(f"{path}: image file does not exist") from None
    except UnidentifiedImageError:
        raise WorkbenchError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except OSError as exc:
        raise WorkbenchError(f"{path}: cannot read image header ({exc})") from None
    return height, width


def _check_image_array(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise WorkbenchError(f"{what}: image must be uint8, got {array.dtype}")
    if array.ndim == 2:
        return array
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise WorkbenchError(f"{what}: image must be (H, W, 3) or (H, W), got shape {array.shape}")
    return array[:, :, 0] if array.shape[2] == 1 else array


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W, 3) or (H, W) array."""
    array = _check_image_array(array, "encode_png")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 (H, W, 3) array as a PNG, atomically (a temporary file, then a rename).

    The file is always PNG (lossless), whatever the suffix; parent folders are created.
    """
    from workbench.core.files import atomic_write_bytes

    path = Path(path)
    array = _check_image_array(array, str(path))
    atomic_write_bytes(path, encode_png(array))


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom and right edges so height and width are multiples of ``scale``.

    This is MATLAB's ``modcrop``: the HR image of a benchmark pair is cut so that it is exactly
    ``scale`` times the LR image.
    """
    if scale < 1:
        raise WorkbenchError(f"mod_crop: scale must be >= 1, got {scale}")
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


_NUMBER = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value: ``img2`` before ``img10``."""
    parts = [p for p in _NUMBER.split(name) if p != ""]
    key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts)
    return key + ((2, 0, name),)  # the exact name breaks ties (img01 vs img1, IMG vs img)


def require_images(folder: str | os.PathLike, what: str = "images") -> list[Path]:
    """:func:`list_images` of ``folder``, where a missing or empty folder is a WorkbenchError that
    says which ``what`` (e.g. "training images", "LR images") was expected there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WorkbenchError(f"{folder}: the folder of {what} does not exist")
    files = list_images(folder)
    if not files:
        raise WorkbenchError(f"{folder}: no {what} (.png, .bmp, .jpg ...)")
    return files


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside ``folder`` (by :data:`IMAGE_SUFFIXES`), sorted naturally.

    Hidden files are skipped. A folder that does not exist raises :class:`WorkbenchError`; an empty
    one returns an empty list (callers decide whether that is an error).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WorkbenchError(f"{folder}: image folder does not exist")
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.name))
