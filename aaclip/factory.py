"""A TrainConfig to an adapted model on its device, as open_clip's factory turns a name into a CLIP.

The model takes only its architecture's settings; here the config's sections are picked apart, checked against
the built backbone (with the config keys named) and the device is resolved.
"""
from __future__ import annotations

import torch
from open_clip.model import CLIP

from aaclip.architecture import ArchitectureShape, check_fits
from aaclip.backbone import BackboneInfo, describe, load_clip
from aaclip.config import TrainConfig
from aaclip.errors import ConfigError
from aaclip.model import AdaptedCLIP, Surgery

BACKBONE_INIT_SEED = 0  # a random-init backbone is the same "frozen CLIP" in every trial, whatever config.seed


def resolve_device(name: str) -> torch.device:
    """model.device as a torch device; a CUDA device this machine does not have is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"model.device: {name} requested, but torch sees no CUDA device on this machine; "
                              "set model.device: auto or cpu")
        if (device.index or 0) >= count:
            raise ConfigError(f"model.device: {name} requested, but this machine has {count} CUDA device(s) "
                              f"(cuda:0 to cuda:{count - 1})")
    return device


def check_fits_backbone(config: TrainConfig, info: BackboneInfo) -> None:
    """The config against the built backbone (covers hub architectures that have no local JSON too)."""
    check_fits(config, ArchitectureShape(vision_layers=info.vision_layers, vision_width=info.vision_width,
                                         text_layers=info.text_layers, text_width=info.text_width, patch_size=None))


def adapted_clip(clip: CLIP, config: TrainConfig) -> AdaptedCLIP:
    """AdaptedCLIP over `clip` with the config's architecture settings, once they fit the backbone."""
    check_fits_backbone(config, describe(clip))
    surgery = Surgery(from_block=config.stage1.surgery_from_block, axis=config.stage1.surgery_axis)
    return AdaptedCLIP(clip, config.adapters, config.cross_attention, surgery, compile_blocks=config.model.compile)


def build_model(config: TrainConfig, device: torch.device) -> AdaptedCLIP:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BACKBONE_INIT_SEED)
        clip = load_clip(config.model)
    torch.manual_seed(config.seed)  # adapter and cross-attention init follow the trial's seed
    model = adapted_clip(clip, config).to(device)
    if device.type == "cuda":
        model.clip.visual.conv1.to(memory_format=torch.channels_last)  # see aaclip.backbone.vision_embed
    return model
