"""Opening and decoding image files honestly (no torch): every failure is one DataError naming the file.

- 16-bit and 32-bit integer images (medical, industrial cameras) are scaled to 8 bits, not clipped: PIL's
  convert("RGB") clips an "I;16" pixel of 1000 to 255, turning a 16-bit PNG into a white image.
- Decompression bombs (a few bytes declaring billions of pixels) are refused from the header, one line.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from aaclip.errors import DataError

HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


@contextmanager
def opened(path: Path, what: str):
    """Image.open with every failure (missing, garbage, bomb) turned into a DataError naming the file. The
    header is all that is read here: "cannot read"; a failure while decoding pixels is "cannot decode"."""
    try:
        with warnings.catch_warnings():
            # Between 1x and 2x the pixel limit PIL only warns; past it every decode would exhaust memory.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found; check the dataset root and metadata") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path}: {what} declares more pixels than the decompression-bomb limit "
                        f"({Image.MAX_IMAGE_PIXELS} pixels); replace the file or downscale it") from None
    except UNREADABLE as error:
        raise DataError(f"{path}: cannot read {what} ({error.__class__.__name__}); replace or remove it") from None


def header_size(path: Path, what: str) -> tuple[int, int]:
    """(width, height) from the header only: cheap enough to run on every file before training."""
    if not Path(path).is_file():
        raise DataError(f"{path}: {what} file not found; check the dataset root and metadata")
    with opened(path, what) as image:
        return image.size


def decode(path: Path, what: str) -> Image.Image:
    """The fully decoded image: a truncated file fails here, not somewhere inside the model."""
    with opened(path, what) as image:
        try:
            image.load()
        except UNREADABLE as error:
            raise DataError(f"{path}: cannot decode {what} ({error}); replace or remove the file") from None
        return image.copy()


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with 8 bits per channel; high-bit-depth grey levels are rescaled over their full range."""
    if image.mode in HIGH_BIT_MODES or image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" and pixels.max(initial=0.0) <= 1.0 else 65535.0
        if image.mode == "I" and pixels.max(initial=0.0) > 65535:
            top = float(2**32 - 1)
        grey = np.clip(np.rint(pixels / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return image.convert("RGB")  # palette, grey, CMYK, alpha: PIL maps these correctly
