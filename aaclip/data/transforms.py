"""Preprocessing (reference §2.2) and the training augmentations (reference §6.4).

Preprocessing: RGB, resize to SxS bicubic (no crop, aspect not kept), CLIP mean/std. Masks: nearest resize,
binarised with != 0.

Augmentations: stage2 = colour jitter on the full-size image (brightness, contrast, saturation, each a factor in
[0.5, 1.5] applied independently with p 0.7) + the geometric part; stage1 = the geometric part only: rotation
(+-30 degrees, p 0.5), translation (up to 15% of the side, p 0.5), horizontal and vertical flips (p 0.5 each),
applied to image and mask stacked as one 4-channel tensor (so they move together), nearest interpolation, fill 0
(the CLIP mean colour once normalised).

Every random number is drawn explicitly from a generator seeded by (data seed, epoch, image id): an augmented
image is a pure function of those, which lets trials share the same augmented views and their cached features.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from aaclip.data.decode import decode, to_rgb
from aaclip.seeds import stable_seed

# open_clip.constants.OPENAI_DATASET_MEAN/STD, retyped: importing open_clip loads its whole model zoo, which
# data loader workers do not need. tests/unit/test_data_augment.py checks the two stay equal.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Augment = Literal["none", "stage1", "stage2"]
AUGMENTS = ("none", "stage1", "stage2")
COLOUR_PROBABILITY, COLOUR_STRENGTH = 0.7, 0.5
ROTATE_PROBABILITY, MAX_DEGREES = 0.5, 30.0
TRANSLATE_PROBABILITY, MAX_TRANSLATE = 0.5, 0.15
FLIP_PROBABILITY = 0.5


# ---------------------------------------------------------------------------------------------------------------
# Reading and preprocessing


def open_rgb(path: Path) -> Image.Image:
    """The fully decoded RGB image (16-bit scaled to 8); a missing, truncated or garbage file is a DataError."""
    return to_rgb(decode(path, "image"))


def open_mask(path: Path) -> Image.Image:
    """A 0/255 mask: nonzero pixels are anomalous. Palette masks keep their indices (0 = background)."""
    image = decode(path, "mask")
    if image.mode == "P":
        bits = np.asarray(image) != 0
    elif len(image.getbands()) > 1:
        bits = np.asarray(image.convert("RGB")).max(axis=-1) != 0
    else:
        bits = np.asarray(image) != 0
    return Image.fromarray(bits.astype(np.uint8) * 255)


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """float32 [3, S, S], CLIP-normalised."""
    resized = F.resize(image, [size, size], interpolation=InterpolationMode.BICUBIC)
    pixels = F.to_dtype(F.pil_to_tensor(resized), torch.float32, scale=True)
    return F.normalize(pixels, mean=list(CLIP_MEAN), std=list(CLIP_STD))


def mask_to_tensor(mask: Image.Image, size: int) -> torch.Tensor:
    """float32 [1, S, S] in {0, 1}."""
    resized = F.resize(mask, [size, size], interpolation=InterpolationMode.NEAREST)
    return (F.pil_to_tensor(resized) != 0).to(torch.float32)


def load_mask(path: Path, size: int) -> torch.Tensor:
    return mask_to_tensor(open_mask(path), size)


# ---------------------------------------------------------------------------------------------------------------
# Drawing augmentation parameters


@dataclass(frozen=True)
class AugmentDraw:
    """Every random choice for one image; None / False means "not applied"."""

    brightness: float | None = None  # colour factors, 1 = unchanged
    contrast: float | None = None
    saturation: float | None = None
    angle: float | None = None  # degrees
    translate: tuple[float, float] | None = None  # fractions of the width and height
    hflip: bool = False
    vflip: bool = False


IDENTITY = AugmentDraw()


def draw_augmentation(augment: Augment, data_seed: int, epoch: int, image_id: str) -> AugmentDraw:
    """The draw for one image in one epoch. All 13 numbers are drawn every time in a fixed order, so stage1 and
    stage2 share their geometric part for the same (seed, epoch, image)."""
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    if augment == "none":
        return IDENTITY
    generator = torch.Generator().manual_seed(stable_seed("augment", data_seed, epoch, image_id))
    u = torch.rand(13, generator=generator, dtype=torch.float64).tolist()

    def factor(apply: float, value: float) -> float | None:
        return 1 - COLOUR_STRENGTH + 2 * COLOUR_STRENGTH * value if apply < COLOUR_PROBABILITY else None

    def symmetric(value: float, limit: float) -> float:
        return (2 * value - 1) * limit

    draw = AugmentDraw(
        brightness=factor(u[0], u[1]), contrast=factor(u[2], u[3]), saturation=factor(u[4], u[5]),
        angle=symmetric(u[7], MAX_DEGREES) if u[6] < ROTATE_PROBABILITY else None,
        translate=(symmetric(u[9], MAX_TRANSLATE), symmetric(u[10], MAX_TRANSLATE))
        if u[8] < TRANSLATE_PROBABILITY else None,
        hflip=u[11] < FLIP_PROBABILITY, vflip=u[12] < FLIP_PROBABILITY,
    )
    if augment == "stage1":
        draw = replace(draw, brightness=None, contrast=None, saturation=None)
    return draw


# ---------------------------------------------------------------------------------------------------------------
# Applying a draw


def apply_colour(image: Image.Image, draw: AugmentDraw) -> Image.Image:
    """Brightness, then contrast, then saturation, as the reference's three separate jitters are chained."""
    if draw.brightness is not None:
        image = F.adjust_brightness(image, draw.brightness)
    if draw.contrast is not None:
        image = F.adjust_contrast(image, draw.contrast)
    if draw.saturation is not None:
        image = F.adjust_saturation(image, draw.saturation)
    return image


def apply_geometry(image: torch.Tensor, mask: torch.Tensor, draw: AugmentDraw) -> tuple[torch.Tensor, torch.Tensor]:
    """Image [3, S, S] and mask [1, S, S] transformed as one stack, so every pixel keeps its mask value."""
    stack = torch.cat([image, mask])
    height, width = stack.shape[-2:]
    if draw.angle is not None:
        stack = F.rotate(stack, draw.angle, interpolation=InterpolationMode.NEAREST, fill=0.0)
    if draw.translate is not None:
        shift = [round(draw.translate[0] * width), round(draw.translate[1] * height)]
        stack = F.affine(stack, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0],
                         interpolation=InterpolationMode.NEAREST, fill=0.0)
    if draw.hflip:
        stack = F.horizontal_flip(stack)
    if draw.vflip:
        stack = F.vertical_flip(stack)
    return stack[:3], stack[3:]
