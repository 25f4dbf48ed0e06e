"""A backbone's shape read from its architecture JSON, without importing torch or open_clip.

open_clip keeps architectures as data (one JSON file per model); so does this project (aaclip/model_configs).
Reading those files answers "do these adapter levels, heads and image size fit the backbone?" in milliseconds,
so `aaclip train` and a study's launch refuse a config that cannot fit before the 10-20 s import of the stack
and before anything is written. The built model checks the same rules again from its real modules
(`aaclip.factory.check_fits_backbone`), which also covers architectures not found here (hub models).
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from aaclip.config import TrainConfig
from aaclip.errors import ConfigError

PROJECT_CONFIG_DIR = Path(__file__).parent / "model_configs"
DEFAULT_HEAD_WIDTH = 64  # open_clip's CLIPVisionCfg.head_width


@dataclass(frozen=True)
class ArchitectureShape:
    vision_layers: int
    vision_width: int
    text_layers: int
    text_width: int
    patch_size: int | None  # None: unknown, the image-size check is skipped


def _config_dirs() -> list[Path]:
    dirs = [PROJECT_CONFIG_DIR]
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(next(iter(spec.submodule_search_locations))) / "model_configs")
    return dirs


@lru_cache(maxsize=None)
def architecture_shape(name: str) -> ArchitectureShape | None:
    """The shape of a ViT CLIP architecture by name, or None when no JSON describes it as one."""
    for folder in _config_dirs():
        path = folder / f"{name}.json"
        if path.is_file():
            return _shape(json.loads(path.read_text()))
    return None


def _shape(data: dict) -> ArchitectureShape | None:
    vision, text = data.get("vision_cfg", {}), data.get("text_cfg", {})
    layers, text_layers = vision.get("layers"), text.get("layers")
    if not isinstance(layers, int) or not isinstance(text_layers, int) or "width" not in text:
        return None  # a ResNet tower or a hub text model: the built model checks itself
    return ArchitectureShape(vision_layers=layers, vision_width=int(vision.get("width", 768)), text_layers=text_layers,
                             text_width=int(text["width"]), patch_size=vision.get("patch_size"))


def check_fits(config: TrainConfig, shape: ArchitectureShape) -> None:
    """Config values that only make sense against the backbone's depth, widths and patch size."""
    adapters, depth = config.adapters, shape.vision_layers
    problems = [
        (max(adapters.levels) > depth, "adapters.levels", adapters.levels, depth),
        (adapters.image_until > depth, "adapters.image_until", adapters.image_until, depth),
        (adapters.text_until > shape.text_layers, "adapters.text_until", adapters.text_until, shape.text_layers),
        (config.stage1.surgery_from_block >= depth, "stage1.surgery_from_block", config.stage1.surgery_from_block,
         depth - 1),
    ]
    for failed, key, value, limit in problems:
        if failed:
            raise ConfigError(f"{key}: {value} exceeds the depth of {config.model.name} (at most {limit})")
    heads = config.cross_attention.heads
    if shape.text_width % heads:
        raise ConfigError(f"cross_attention.heads: {heads} does not divide the text width {shape.text_width} of "
                          f"{config.model.name}")
    size, patch = config.model.image_size, shape.patch_size
    if patch and size % patch:
        raise ConfigError(f"model.image_size: {size} is not a multiple of the patch size {patch} of "
                          f"{config.model.name} (e.g. {max(patch, size - size % patch)})")


def check_config_fits(config: TrainConfig, source: str | None = None) -> None:
    """check_fits against the architecture's JSON, when one describes it (no torch, no open_clip import)."""
    shape = architecture_shape(config.model.name)
    if shape is None:
        return
    try:
        check_fits(config, shape)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}" if source else str(error)) from None
