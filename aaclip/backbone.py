"""Frozen CLIP backbones from open_clip: architectures, weights, positional-embedding resize, V-V attention.

Everything about the backbone that the adapted model needs comes from here as data (`BackboneInfo`): widths,
depths, grid size. Nothing downstream hard-codes ViT-L numbers.
"""
from __future__ import annotations

import logging
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from huggingface_hub import try_to_load_from_cache  # open_clip's own dependency, already imported by it
from open_clip.factory import load_state_dict
from open_clip.model import CLIP
from open_clip.model import resize_pos_embed

from aaclip.attention import block_forward as run_block  # noqa: F401  (the block path, re-exported)
from aaclip.attention import value_value_attention  # noqa: F401
from aaclip.config import ModelConfig
from aaclip.errors import BackboneError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
HUB_HOST = ("huggingface.co", 443)
log = logging.getLogger(__name__)
open_clip.add_model_config(MODEL_CONFIG_DIR)  # registers aaclip-tiny, aaclip-small (configs are data)


def registered_architectures() -> list[str]:
    """The architectures this project ships (tiny, CPU-sized); every test is parametrised over them."""
    return sorted(path.stem for path in MODEL_CONFIG_DIR.glob("*.json"))


@dataclass(frozen=True)
class BackboneInfo:
    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    embed_dim: int
    grid: int  # patch tokens per side at the configured image size
    context_length: int

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid


def describe(clip: CLIP) -> BackboneInfo:
    visual = clip.visual
    grid = visual.grid_size[0] if isinstance(visual.grid_size, tuple) else visual.grid_size
    return BackboneInfo(
        vision_width=visual.conv1.out_channels,
        vision_layers=len(visual.transformer.resblocks),
        vision_heads=visual.transformer.resblocks[0].attn.num_heads,
        text_width=clip.token_embedding.embedding_dim,
        text_layers=len(clip.transformer.resblocks),
        embed_dim=visual.proj.shape[1],
        grid=grid,
        context_length=clip.context_length,
    )


def load_clip(config: ModelConfig) -> CLIP:
    """Build the architecture at the configured image size, load weights, freeze everything."""
    if config.name not in open_clip.list_models():
        raise BackboneError(f"model.name: unknown architecture {config.name!r} "
                            f"(registered here: {', '.join(registered_architectures())}; or any open_clip model)")
    weights = resolve_weights(config.name, config.pretrained)
    quick_gelu = config.quick_gelu if config.quick_gelu is not None else _weights_use_quick_gelu(config, weights)
    clip = open_clip.create_model(config.name, pretrained=None, force_image_size=config.image_size,
                                  force_quick_gelu=quick_gelu, pretrained_text=False)
    if not isinstance(clip, CLIP):
        raise BackboneError(f"model.name: {config.name} has a custom text tower; only CLIP-style models are supported")
    if weights is not None:
        load_weights(clip, weights, config.name)
    clip.eval()  # frozen CLIP stays in eval mode: no dropout, no patch dropout (reference §2.3)
    clip.requires_grad_(False)
    return clip


def _weights_use_quick_gelu(config: ModelConfig, weights: Path | None) -> bool:
    """Activation follows the weights: OpenAI checkpoints were trained with QuickGELU (reference Q1)."""
    if config.pretrained is None or weights is None:
        return False
    tag_config = open_clip.get_pretrained_cfg(config.name, config.pretrained) or {}
    return bool(tag_config.get("quick_gelu")) or _is_torchscript(weights)


# ---------------------------------------------------------------------------------------------------------------
# Weights


def resolve_weights(name: str, pretrained: str | None) -> Path | None:
    """A local file, or a pretrained tag resolved from the local cache, else downloaded if the hub answers."""
    if pretrained is None:
        return None
    path = Path(pretrained).expanduser()
    if path.suffix or path.is_absolute() or "/" in pretrained:
        if not path.is_file():
            raise BackboneError(f"model.pretrained: weights file {path} does not exist")
        return path
    tag_config = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_config:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise BackboneError(f"model.pretrained: {pretrained!r} is not a tag of {name} (tags: {tags}) "
                            f"and not a file path")
    cached = _cached_tag_weights(tag_config)
    if cached is not None:
        return cached
    if not _hub_reachable():
        raise BackboneError(
            f"model.pretrained: weights for {name}/{pretrained} are not cached and the model hub cannot be reached; "
            f"download them on a connected machine and set model.pretrained to the local file path")
    return Path(open_clip.download_pretrained(tag_config))


def _cached_tag_weights(tag_config: dict) -> Path | None:
    hub = tag_config.get("hf_hub", "")
    if not hub:
        return None
    repo_id, filename = hub.rstrip("/").rsplit("/", 1) if not hub.endswith("/") else (hub.rstrip("/"), "")
    candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for candidate in candidates:
        found = try_to_load_from_cache(repo_id, candidate)
        if isinstance(found, str):
            return Path(found)
    return None


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    # The hub client retries for ~45 s when offline (DESIGN §8); one short TCP probe answers the question first.
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout_s):
            return True
    except OSError:
        return False


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """OpenAI TorchScript archives (ViT-L-14-336px.pt), plain state dicts, safetensors, {'state_dict': ...}."""
    try:
        if _is_torchscript(path):
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
            # Attributes of the OpenAI/traced module that are not weights of an open_clip CLIP.
            extras = ("input_resolution", "context_length", "vocab_size", "attn_mask")
            return {k: v for k, v in state.items() if k not in extras}
        state = load_state_dict(str(path), weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure of a loader on a user's file means "unreadable"
        # (torch, safetensors and open_clip's post-processing raise RuntimeError, SafetensorError, AttributeError
        # on a list, StopIteration on an empty dict, ...: none of them is a bug of ours)
        raise BackboneError(f"model.pretrained: {path} is not a readable CLIP checkpoint "
                            f"({error.__class__.__name__})") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"model.pretrained: {path} does not contain a state dict of tensors")
    return state


def load_weights(clip: CLIP, path: Path, name: str) -> None:
    state = read_state_dict(path)
    # Grid of positional embeddings resized to the configured image size: CLS kept, bicubic, antialias (§2.2).
    resize_pos_embed(state, clip)
    try:
        clip.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)[:200]
        raise BackboneError(f"model.pretrained: {path} does not match architecture {name} ({first})") from None


# ---------------------------------------------------------------------------------------------------------------
# Embeddings (the blocks themselves run through aaclip.attention)


def vision_embed(clip: CLIP, images: torch.Tensor) -> torch.Tensor:
    """conv1 -> tokens -> CLS -> positional -> ln_pre, batch-first [B, 1 + grid^2, width].

    On a GPU the patch convolution runs channels-last (cuDNN's fast layout; the weight is converted once in
    aaclip.factory); on a CPU the default layout is as fast and the conversion would be a copy.
    """
    if images.is_cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    return clip.visual._embeds(images)


def text_embed(clip: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """Token + positional embedding of the first tokens.shape[1] positions (a trimmed batch uses fewer)."""
    return clip.token_embedding(tokens) + clip.positional_embedding[: tokens.shape[1]]


def check_batch_first(clip: CLIP) -> None:
    # open_clip >= 2.23 runs blocks batch-first; the adapted forwards rely on it (DESIGN §8).
    for transformer in (clip.visual.transformer, clip.transformer):
        if not getattr(transformer, "batch_first", True):
            raise BackboneError("this open_clip version runs transformers sequence-first; install open_clip >= 3.0")
