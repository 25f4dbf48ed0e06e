"""Rendering one synthetic image and its exact defect mask (the trees are written by aaclip.data.synthetic).

Two domains (aaclip.prompts.SYNTHETIC_DOMAINS): "texture" (weave, granite, planks: periodic or noisy patterns
filling the frame) and "object" (disc, tablet, ring: one shape on a plain, light inspection table). Both share
the same five defect types, each drawn with an exact pixel mask, so a model trained on one domain can be judged
on the other, as in the zero-shot protocol (train on VisA, evaluate on MVTec).

Sizes and colours are chosen so that the tiny CPU setup (64 px, 8 px patches) can learn something that carries
across domains: line defects are at least ~1 px wide at 64 px, stains are oil, rust or ink rather than the brown
of the textures themselves, and no object sits on a dark or blue backdrop (a model trained on warm textures
otherwise learns "dark or blue = defect" and scores the whole backdrop as anomalous).

Every image comes from its own generator seeded by (domain, seed, class, split, defect, index): the same
arguments give the same pixels, whatever else is rendered.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from aaclip.seeds import stable_seed

DEFECT_TYPES = ("scratch", "spot", "crack", "stain", "missing")
# Three defect types per class; each domain covers all five, so both domains share the same defect vocabulary.
CLASS_DEFECTS = {
    "weave": ("scratch", "stain", "missing"), "granite": ("crack", "spot", "stain"),
    "planks": ("scratch", "crack", "missing"), "disc": ("scratch", "spot", "missing"),
    "tablet": ("crack", "stain", "spot"), "ring": ("missing", "crack", "scratch"),
}


@dataclass(frozen=True)
class Item:
    class_name: str
    split: str  # train | test
    defect: str | None  # None for a normal image
    index: int  # within (class, split, defect): part of the image's seed


# ---------------------------------------------------------------------------------------------------------------
# Rendering one image: a scene (what is there and what lies behind it), then at most one defect, then noise


@dataclass
class Scene:
    image: np.ndarray  # float32 [S, S, 3], 0..255
    support: np.ndarray  # bool [S, S]: where defects may appear (the object, or the whole texture)
    backdrop: np.ndarray  # float32 [S, S, 3]: what a missing piece reveals


def render(domain: str, seed: int, item: Item, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB uint8 [S, S, 3], mask uint8 [S, S] of 0/255 or None for a normal image)."""
    rng = np.random.default_rng(
        stable_seed("synthetic", domain, seed, item.class_name, item.split, item.defect, item.index))
    scene = PAINTERS[item.class_name](rng, size)
    image, mask = scene.image, None
    if item.defect is not None:
        image, region = add_defect(scene, item.defect, rng, size)
        mask = region.astype(np.uint8) * 255
    image = image + rng.normal(0.0, 2.5, size=image.shape)  # sensor noise, so no two images are identical
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return y, x


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [0, 1]: a coarse random grid, bicubically enlarged."""
    coarse = Image.fromarray(rng.random((cells, cells)).astype(np.float32), mode="F")
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def _colour(rng: np.random.Generator, base: tuple[float, float, float], spread: float = 0.06) -> np.ndarray:
    return np.asarray(base, dtype=np.float32) * rng.uniform(1 - spread, 1 + spread, size=3).astype(np.float32)


def _texture(image: np.ndarray, backdrop_colour: tuple[float, float, float]) -> Scene:
    size = image.shape[0]
    backdrop = np.broadcast_to(np.asarray(backdrop_colour, dtype=np.float32), image.shape).copy()
    return Scene(image.astype(np.float32), np.ones((size, size), dtype=bool), backdrop)


def paint_weave(rng: np.random.Generator, size: int) -> Scene:
    y, x = _grid(size)
    period = size / rng.uniform(9, 12)
    u, v = x / period + rng.uniform(0, 1), y / period + rng.uniform(0, 1)
    warp_on_top = ((np.floor(u) + np.floor(v)) % 2).astype(bool)  # plain weave: threads alternate per cell
    warp_shade = 0.55 + 0.45 * np.sin(np.pi * (u % 1))  # a thread is brightest along its middle
    weft_shade = 0.55 + 0.45 * np.sin(np.pi * (v % 1))
    warp, weft = _colour(rng, (200, 180, 140)), _colour(rng, (170, 150, 115))
    image = np.where(warp_on_top[..., None], warp * warp_shade[..., None], weft * weft_shade[..., None])
    return _texture(image, (28, 24, 20))


def paint_granite(rng: np.random.Generator, size: int) -> Scene:
    shade = 0.85 + 0.3 * _smooth_noise(rng, size, 6)
    image = _colour(rng, (150, 145, 140)) * shade[..., None]
    half = (size + 1) // 2
    grains = np.repeat(np.repeat(rng.random((half, half)), 2, axis=0), 2, axis=1)[:size, :size]
    image[grains < 0.10] *= 0.45  # dark mica
    image[(grains > 0.50) & (grains < 0.56)] = _colour(rng, (185, 135, 125))  # pink feldspar
    image[grains > 0.96] = np.minimum(image[grains > 0.96] * 1.35, 255)  # bright quartz
    return _texture(image, (22, 22, 24))


def paint_planks(rng: np.random.Generator, size: int) -> Scene:
    y, _ = _grid(size)
    count = int(rng.integers(4, 7))
    height = size / count
    position = (y + rng.uniform(0, height)) / height
    plank = np.floor(position).astype(int)
    tint = rng.uniform(0.85, 1.1, size=count + 2)[plank]
    warp = _smooth_noise(rng, size, 4)
    # Grain lines run along the plank, wavy where the noise bends them.
    grain = 0.8 + 0.2 * np.sin(2 * np.pi * (y / (size / rng.uniform(18, 26)) + 2.5 * warp + 0.37 * plank))
    seam = np.minimum(position % 1, 1 - position % 1) * height < 1.0  # dark gap between planks
    shade = np.where(seam, 0.45, tint * grain)
    return _texture(_colour(rng, (165, 112, 66)) * shade[..., None], (20, 16, 12))


def _object(rng: np.random.Generator, size: int, shape: np.ndarray, shading: np.ndarray,
            colour: tuple[float, float, float], background: tuple[float, float, float]) -> Scene:
    y, _ = _grid(size)
    backdrop = _colour(rng, background) * (0.95 + 0.1 * y / size)[..., None]
    image = np.where(shape[..., None], _colour(rng, colour) * shading[..., None], backdrop)
    return Scene(image.astype(np.float32), shape, backdrop.astype(np.float32))


def _centred(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets from a slightly jittered centre, in units of the image size."""
    y, x = _grid(size)
    cy, cx = size * (0.5 + rng.uniform(-0.05, 0.05, size=2))
    return (y - cy) / size, (x - cx) / size


def paint_disc(rng: np.random.Generator, size: int) -> Scene:
    dy, dx = _centred(rng, size)
    radius = rng.uniform(0.28, 0.33)
    distance = np.hypot(dy, dx) / radius
    brushed = 0.05 * np.sin(12 * np.arctan2(dy, dx) + rng.uniform(0, 2 * np.pi))  # machining marks
    return _object(rng, size, distance <= 1, 1.15 - 0.35 * distance + brushed, (170, 172, 178), (215, 205, 185))


def paint_tablet(rng: np.random.Generator, size: int) -> Scene:
    dy, dx = _centred(rng, size)
    angle = rng.uniform(-0.3, 0.3)
    along, across = dx * math.cos(angle) + dy * math.sin(angle), dy * math.cos(angle) - dx * math.sin(angle)
    distance = np.hypot(along / rng.uniform(0.36, 0.40), across / rng.uniform(0.20, 0.24))
    scene = _object(rng, size, distance <= 1, 1.0 - 0.15 * distance**2, (232, 230, 225), (215, 205, 185))
    half = (size + 1) // 2  # small red speckles pressed into the tablet, as on MVTec's pill
    speckles = np.repeat(np.repeat(rng.random((half, half)) < 0.05, 2, axis=0), 2, axis=1)[:size, :size]
    speckles &= scene.support
    scene.image[speckles] = 0.5 * scene.image[speckles] + 0.5 * _colour(rng, (200, 90, 80))
    return scene


def paint_ring(rng: np.random.Generator, size: int) -> Scene:
    dy, dx = _centred(rng, size)
    outer = rng.uniform(0.30, 0.34)
    inner = outer * rng.uniform(0.55, 0.62)
    distance = np.hypot(dy, dx)
    middle = (distance - inner) / (outer - inner)  # 0 at the hole, 1 at the rim
    shading = 0.8 + 0.5 * np.sin(np.pi * np.clip(middle, 0, 1))  # a rounded profile catches the light
    return _object(rng, size, (distance <= outer) & (distance >= inner), shading, (55, 52, 50), (200, 200, 195))


PAINTERS: dict[str, Callable[[np.random.Generator, int], Scene]] = {
    "weave": paint_weave, "granite": paint_granite, "planks": paint_planks,
    "disc": paint_disc, "tablet": paint_tablet, "ring": paint_ring,
}


# ---------------------------------------------------------------------------------------------------------------
# Defects: a shape drawn with PIL, clipped to the scene's support (that is the exact mask), then recoloured


def add_defect(scene: Scene, defect: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(image with the defect, bool region it covers). Retries until the region is big enough to be seen."""
    region = np.zeros_like(scene.support)
    candidates = np.flatnonzero(_centre_candidates(scene.support, on_edge=defect == "missing"))
    for _ in range(20):
        y, x = np.divmod(rng.choice(candidates), size)
        region = _draw_shape(defect, (float(x) + 0.5, float(y) + 0.5), rng, size) & scene.support
        if region.sum() >= 0.002 * size * size:
            break
    if not region.any():
        raise RuntimeError(f"could not place a {defect} defect")  # a bug in a painter, not a user error
    return RECOLOUR[defect](scene, region, rng), region


def _centre_candidates(support: np.ndarray, on_edge: bool) -> np.ndarray:
    """Where a defect may be centred: inside the support, away from the frame; on an object's rim for a
    missing piece."""
    size = support.shape[0]
    mask = Image.fromarray(support.astype(np.uint8) * 255)
    if on_edge and not support.all():
        return support & ~np.asarray(mask.filter(ImageFilter.MinFilter(3)), dtype=bool)
    margin = 2 * max(1, round(0.04 * size)) + 1
    candidates = np.asarray(mask.filter(ImageFilter.MinFilter(margin)), dtype=bool)
    frame = np.zeros_like(candidates)
    frame[size // 8: size - size // 8, size // 8: size - size // 8] = True
    candidates &= frame
    return candidates if candidates.any() else support  # a thin object at a tiny size: anywhere on it


def _draw_shape(defect: str, centre: tuple[float, float], rng: np.random.Generator, size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    SHAPES[defect](ImageDraw.Draw(canvas), centre, rng, size)
    return np.asarray(canvas) > 0


def _scratch(draw: ImageDraw.ImageDraw, centre: tuple[float, float], rng: np.random.Generator, size: int) -> None:
    angle, half = rng.uniform(0, np.pi), rng.uniform(0.12, 0.22) * size
    ux, uy = math.cos(angle), math.sin(angle)
    bend = rng.uniform(-0.05, 0.05) * size  # a slightly curved stroke, bent at its middle
    points = [(centre[0] - half * ux, centre[1] - half * uy), (centre[0] - bend * uy, centre[1] + bend * ux),
              (centre[0] + half * ux, centre[1] + half * uy)]
    draw.line(points, fill=255, width=max(1, round(size * rng.uniform(0.012, 0.024))), joint="curve")


def _spot(draw: ImageDraw.ImageDraw, centre: tuple[float, float], rng: np.random.Generator, size: int) -> None:
    rx, ry = rng.uniform(0.025, 0.05, size=2) * size
    draw.ellipse([centre[0] - rx, centre[1] - ry, centre[0] + rx, centre[1] + ry], fill=255)


def _crack(draw: ImageDraw.ImageDraw, centre: tuple[float, float], rng: np.random.Generator, size: int) -> None:
    points, heading = [centre], rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(6, 10))):  # a random walk with a drifting heading: jagged, not straight
        heading += rng.uniform(-0.6, 0.6)
        step = rng.uniform(0.04, 0.07) * size
        points.append((points[-1][0] + step * math.cos(heading), points[-1][1] + step * math.sin(heading)))
    width = max(1, round(size / 64))
    draw.line(points, fill=255, width=width)
    start = points[len(points) // 2]  # one branch from the middle
    branch = rng.uniform(0.05, 0.09) * size
    turn = heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)
    draw.line([start, (start[0] + branch * math.cos(turn), start[1] + branch * math.sin(turn))], fill=255,
              width=width)


def _stain(draw: ImageDraw.ImageDraw, centre: tuple[float, float], rng: np.random.Generator, size: int) -> None:
    for _ in range(int(rng.integers(3, 6))):  # overlapping blobs make an irregular outline
        cx, cy = np.asarray(centre) + rng.uniform(-0.06, 0.06, size=2) * size
        rx, ry = rng.uniform(0.04, 0.09, size=2) * size
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)


def _missing(draw: ImageDraw.ImageDraw, centre: tuple[float, float], rng: np.random.Generator, size: int) -> None:
    corners = int(rng.integers(6, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=corners))
    radii = rng.uniform(0.06, 0.12, size=corners) * size
    draw.polygon([(centre[0] + r * math.cos(a), centre[1] + r * math.sin(a)) for a, r in zip(angles, radii)],
                 fill=255)


SHAPES = {"scratch": _scratch, "spot": _spot, "crack": _crack, "stain": _stain, "missing": _missing}


def _blend(scene: Scene, region: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    image = scene.image.copy()
    image[region] = (1 - alpha) * image[region] + alpha * colour
    return image


def _recolour_scratch(scene: Scene, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = scene.image.copy()
    local = image[region].mean()
    brighter = local < 90 or (local <= 160 and rng.random() < 0.5)  # a light scratch on dark, dark on light
    image[region] += (1 if brighter else -1) * rng.uniform(55, 85)
    return image


def _recolour_spot(scene: Scene, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    palette = np.asarray([(40, 38, 36), (125, 65, 30), (70, 95, 45)], dtype=np.float32)
    return _blend(scene, region, palette[rng.integers(len(palette))], rng.uniform(0.6, 0.8))


def _recolour_crack(scene: Scene, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = scene.image.copy()
    image[region] *= rng.uniform(0.25, 0.4)
    return image


def _recolour_stain(scene: Scene, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    palette = np.asarray([(60, 45, 30), (130, 60, 25), (45, 50, 95)], dtype=np.float32)  # oil, rust, ink
    colour = _colour(rng, tuple(palette[rng.integers(len(palette))]), 0.15)
    return _blend(scene, region, colour, rng.uniform(0.5, 0.7))


def _recolour_missing(scene: Scene, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = scene.image.copy()
    image[region] = scene.backdrop[region]
    return image


RECOLOUR = {"scratch": _recolour_scratch, "spot": _recolour_spot, "crack": _recolour_crack,
            "stain": _recolour_stain, "missing": _recolour_missing}
