"""The batch-first block path equals open_clip's own blocks: outputs and gradients to fp32 rounding, on every
registered architecture, both towers, both stages, with and without cross-attention."""
from __future__ import annotations

import pytest
import torch
from open_clip.transformer import LayerScale

from aaclip.attention import block_forward, supports_fast_path, value_value_attention
from aaclip.backbone import load_clip, registered_architectures, text_embed, vision_embed
from aaclip.config import load_config
from aaclip.factory import adapted_clip
from aaclip.model import AdaptedCLIP
from aaclip.prompt_tokens import PromptTokenizer

SETTINGS = {  # levels and adapter depths per registered backbone (they come from the backbone's depth)
    "aaclip-tiny": {"model.image_size": 64, "adapters.levels": [1, 2, 3, 4], "adapters.image_until": 2},
    "aaclip-small": {"model.image_size": 112, "adapters.levels": [2, 4, 6, 8], "adapters.image_until": 3,
                     "cross_attention.heads": 4},
}
tokenize = PromptTokenizer("aaclip-tiny")  # aaclip-small has the same vocabulary and context length


def assert_fp32_close(actual: list[torch.Tensor] | tuple, expected: list[torch.Tensor] | tuple) -> None:
    """Equal to fp32 rounding: both paths sum the same products in another order, so the absolute tolerance
    follows each tensor's scale (the text tower's first-block input gradient reaches ~100 with random weights;
    both paths are then ~1e-4 away from a float64 computation)."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(1.0, want.abs().max().item()))


def build(name: str, **overrides) -> AdaptedCLIP:
    config = load_config("tiny", {"model.name": name, **SETTINGS[name], **overrides})
    torch.manual_seed(0)
    return adapted_clip(load_clip(config.model), config)


def tower_inputs(model: AdaptedCLIP, tower: str) -> tuple[torch.nn.ModuleList, torch.Tensor, torch.Tensor | None]:
    clip = model.clip
    if tower == "vision":
        size = model.info.grid * clip.visual.patch_size[0]
        return clip.visual.transformer.resblocks, vision_embed(clip, torch.randn(2, 3, size, size)), None
    tokens = tokenize(["weave"])[0, :3]
    return clip.transformer.resblocks, text_embed(clip, tokens), clip.attn_mask


def output_and_input_gradient(run, x: torch.Tensor, upstream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)  # an input that requires grad is what turns open_clip's fast path off
    out = run(x)
    (grad,) = torch.autograd.grad(out, x, upstream)
    return out.detach(), grad


@pytest.mark.parametrize("tower", ["vision", "text"])
@pytest.mark.parametrize("name", registered_architectures())
def test_every_block_equals_open_clip_output_and_input_gradient(name: str, tower: str) -> None:
    model = build(name)
    assert model.text_causal
    blocks, x, mask = tower_inputs(model, tower)
    for block in blocks:
        assert supports_fast_path(block)
        upstream = torch.randn_like(x)
        expected = output_and_input_gradient(lambda t: block(t, attn_mask=mask), x, upstream)
        actual = output_and_input_gradient(lambda t: block_forward(block, t, attn_mask=mask), x, upstream)
        assert_fp32_close(actual, expected)
        if mask is not None:  # the text mask is causal: SDPA's is_causal (flash-capable) gives the same result
            causal = output_and_input_gradient(lambda t: block_forward(block, t, mask, causal=True), x, upstream)
            assert_fp32_close(causal, expected)
        x = expected[0]


def test_layer_scale_is_applied_like_open_clip() -> None:
    model = build("aaclip-tiny")
    blocks, x, _ = tower_inputs(model, "vision")
    block = blocks[0]
    width = x.shape[-1]
    block.ls_1, block.ls_2 = LayerScale(width, 0.5), LayerScale(width, 2.0)
    torch.nn.init.normal_(block.ls_1.gamma)
    upstream = torch.randn_like(x)
    assert_fp32_close(output_and_input_gradient(lambda t: block_forward(block, t), x, upstream),
                      output_and_input_gradient(block, x, upstream))


def stage_outputs(model: AdaptedCLIP, stage: int, cross_attention: bool) -> list[torch.Tensor]:
    """A stage's forward outputs and the gradients of its trainable groups for a fixed random loss."""
    torch.manual_seed(1)
    size = model.info.grid * model.clip.visual.patch_size[0]
    images = torch.randn(2, 3, size, size)
    tokens = tokenize(["weave", "disc"])
    model.train()
    model.zero_grad(set_to_none=True)
    if stage == 1:
        context = model.frozen_targets(images)[:, 0] if cross_attention else None
        outputs = [model.class_anchors(tokens, context)]
        groups = ("text_adapter", "text_cross_attn")
    else:
        context = model.text_context(tokens) if cross_attention else None
        features = model.encode_image(images, context)
        outputs = [*features.seg_tokens, features.det_token]
        groups = ("image_adapter", "image_cross_attn")
    sum((out * torch.randn_like(out)).sum() for out in outputs).backward()
    parameters = [p for group in groups for p in model.trainable_groups()[group]]
    grads = [p.grad.clone() for p in parameters if p.grad is not None]
    assert grads
    return [out.detach() for out in outputs] + grads


@pytest.mark.parametrize("cross_attention", [False, True])
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("name", registered_architectures())
def test_adapted_forwards_equal_the_stock_block_path(name: str, stage: int, cross_attention: bool) -> None:
    model = build(name, **{"cross_attention.image_scale.init": 1.0})
    batch_first = stage_outputs(model, stage, cross_attention)
    model.stock_blocks = True
    stock = stage_outputs(model, stage, cross_attention)
    assert_fp32_close(batch_first, stock)


@pytest.mark.parametrize("axis", ["tokens", "batch"])
def test_value_value_attention_projects_only_the_values(axis: str) -> None:
    model = build("aaclip-tiny")
    attn = model.clip.visual.transformer.resblocks[1].attn
    x = torch.randn(3, 5, attn.embed_dim)
    full = torch.nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    value = full[..., 2 * attn.embed_dim:].reshape(3, 5, attn.num_heads, -1).transpose(1, 2)
    if axis == "batch":
        value = value.permute(2, 1, 0, 3)
    mixed = torch.nn.functional.scaled_dot_product_attention(value, value, value)
    if axis == "batch":
        mixed = mixed.permute(2, 1, 0, 3)
    expected = attn.out_proj(mixed.transpose(1, 2).reshape(3, 5, -1))
    assert_fp32_close([value_value_attention(attn, x, axis)], [expected])


@pytest.mark.parametrize("cross_attention", [False, True])
def test_text_tower_trimmed_after_the_last_eot_equals_the_full_length(cross_attention: bool) -> None:
    model = build("aaclip-small", **{"cross_attention.text_scale.init": 1.0})
    tokens = tokenize(["weave", "disc"])
    assert model.text_length(tokens.flatten(0, 1)) < tokens.shape[-1]
    context = torch.randn(2, 5, model.info.embed_dim) if cross_attention else None
    trimmed = model.encode_text(tokens, context)
    model.text_causal = False  # no reliance on causality: the whole 77-token sequence with the explicit mask
    assert_fp32_close([trimmed], [model.encode_text(tokens, context)])
