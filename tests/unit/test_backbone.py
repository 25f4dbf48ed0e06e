"""Backbones: every registered architecture builds, runs forward/backward, loads its own weights from a file,
resizes positional embeddings like the reference, and fails fast without a hub."""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aaclip import backbone
from aaclip.backbone import describe, load_clip, registered_architectures, run_block, vision_embed
from aaclip.config import ModelConfig
from aaclip.errors import BackboneError

SIZES = {"aaclip-tiny": 64, "aaclip-small": 112}


def test_registered_architectures_are_the_shipped_configs() -> None:
    assert registered_architectures() == sorted(SIZES)


@pytest.mark.parametrize("name", registered_architectures())
def test_build_is_frozen_and_described(name: str) -> None:
    clip = load_clip(ModelConfig(name=name, pretrained=None, image_size=SIZES[name]))
    info = describe(clip)
    assert not any(p.requires_grad for p in clip.parameters())
    assert not clip.training
    assert info.grid * clip.visual.patch_size[0] == SIZES[name]
    assert info.num_patches + 1 == clip.visual.positional_embedding.shape[0]


@pytest.mark.parametrize("name", registered_architectures())
def test_hand_loop_over_blocks_matches_open_clip(name: str) -> None:
    clip = load_clip(ModelConfig(name=name, pretrained=None, image_size=SIZES[name]))
    images = torch.randn(2, 3, SIZES[name], SIZES[name])
    tokens = vision_embed(clip, images)
    for block in clip.visual.transformer.resblocks:
        tokens = run_block(block, tokens)
    pooled = clip.visual.ln_post(tokens[:, 0]) @ clip.visual.proj
    torch.testing.assert_close(pooled, clip.encode_image(images), rtol=1e-5, atol=1e-5)


def test_local_weights_file_loads_with_positional_resize(tmp_path: Path) -> None:
    source = load_clip(ModelConfig(name="aaclip-tiny", pretrained=None, image_size=64))
    torch.nn.init.normal_(source.visual.positional_embedding)
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    loaded = load_clip(ModelConfig(name="aaclip-tiny", pretrained=str(path), image_size=128))
    old = source.visual.positional_embedding
    grid = old[1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    expected = torch.cat([old[:1], expected.permute(0, 2, 3, 1).reshape(256, -1)])
    torch.testing.assert_close(loaded.visual.positional_embedding, expected)
    torch.testing.assert_close(loaded.visual.conv1.weight, source.visual.conv1.weight)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "small.pt"
    torch.save(load_clip(ModelConfig(name="aaclip-small", pretrained=None, image_size=112)).state_dict(), path)
    with pytest.raises(BackboneError, match="does not match architecture aaclip-tiny"):
        load_clip(ModelConfig(name="aaclip-tiny", pretrained=str(path), image_size=64))


def test_garbage_weights_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(BackboneError, match="garbage.pt is not a readable CLIP checkpoint"):
        load_clip(ModelConfig(name="aaclip-tiny", pretrained=str(path), image_size=64))


def test_missing_weights_file_and_unknown_names() -> None:
    with pytest.raises(BackboneError, match="does not exist"):
        load_clip(ModelConfig(name="aaclip-tiny", pretrained="/nonexistent/weights.pt", image_size=64))
    with pytest.raises(BackboneError, match="unknown architecture"):
        load_clip(ModelConfig(name="ViT-Q-99", pretrained=None))
    with pytest.raises(BackboneError, match="not a tag of ViT-B-16"):
        backbone.resolve_weights("ViT-B-16", "no-such-tag")


def test_pretrained_tag_fails_fast_without_a_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 9 on loopback: nothing listens, as on a machine with no route to the hub.
    monkeypatch.setattr(backbone, "HUB_HOST", ("127.0.0.1", 9))
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-cache")
    started = time.monotonic()
    with pytest.raises(BackboneError, match="set model.pretrained to the local file path"):
        load_clip(ModelConfig(name="ViT-B-16", pretrained="openai", image_size=224))
    assert time.monotonic() - started < 15


def test_value_value_attention_axes() -> None:
    clip = load_clip(ModelConfig(name="aaclip-tiny", pretrained=None, image_size=64))
    attn = clip.visual.transformer.resblocks[0].attn
    tokens = torch.randn(3, 65, 64)
    tokens_axis = backbone.value_value_attention(attn, tokens, "tokens")
    # Over tokens, an image's output does not depend on the other images of the batch ...
    torch.testing.assert_close(tokens_axis[:1], backbone.value_value_attention(attn, tokens[:1], "tokens"))
    # ... over the batch (the reference's layout bug) it does, and a batch of one reduces to out_proj(v).
    batch_axis = backbone.value_value_attention(attn, tokens, "batch")
    assert not torch.allclose(batch_axis[:1], backbone.value_value_attention(attn, tokens[:1], "batch"))
    value = F.linear(tokens[:1], attn.in_proj_weight, attn.in_proj_bias)[..., 128:]
    torch.testing.assert_close(backbone.value_value_attention(attn, tokens[:1], "batch"), attn.out_proj(value))


@pytest.mark.slow
def test_reference_architecture_builds_at_518() -> None:
    clip = load_clip(ModelConfig(name="ViT-L-14-336", pretrained=None, image_size=518))
    info = describe(clip)
    assert (info.grid, info.vision_width, info.vision_layers, info.text_width, info.embed_dim) == (37, 1024, 24,
                                                                                                    768, 768)


def test_torchscript_archive_loads_with_quick_gelu(tmp_path: Path) -> None:
    """OpenAI ships TorchScript archives (ViT-L-14-336px.pt); activation then follows the weights (QuickGELU)."""
    source = load_clip(ModelConfig(name="aaclip-tiny", pretrained=None, image_size=64))
    example = (torch.randn(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long))
    with warnings.catch_warnings():  # tracing warns about python values; the archive is what matters here
        warnings.simplefilter("ignore")
        torch.jit.trace(source, example, strict=False).save(str(tmp_path / "openai-style.pt"))
    loaded = load_clip(ModelConfig(name="aaclip-tiny", pretrained=str(tmp_path / "openai-style.pt"),
                                   image_size=64))
    assert type(loaded.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
