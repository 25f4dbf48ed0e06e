"""AdaptedCLIP: shapes, gradients, adapters' and cross-attention's numerics, anchors, config fit checks."""
from __future__ import annotations

import pytest
import torch

from aaclip.adapters import Adapter, norm_matched_residual
from aaclip.backbone import load_clip, registered_architectures
from aaclip.config import load_config
from aaclip.cross_attention import CrossAttention
from aaclip.errors import ConfigError, DataError
from aaclip.factory import adapted_clip
from aaclip.model import AdaptedCLIP
from aaclip.prompt_tokens import PromptTokenizer

SETTINGS = {  # levels and adapter depths per registered backbone (they come from the backbone's depth)
    "aaclip-tiny": {"model.image_size": 64, "adapters.levels": [1, 2, 3, 4], "adapters.image_until": 2},
    "aaclip-small": {"model.image_size": 112, "adapters.levels": [2, 4, 6, 8], "adapters.image_until": 3,
                     "cross_attention.heads": 4},
}
tokenize = PromptTokenizer("aaclip-tiny")  # aaclip-small has the same vocabulary and context length


def build(name: str = "aaclip-tiny", **overrides) -> AdaptedCLIP:
    config = load_config("tiny", {"model.name": name, **SETTINGS[name], **overrides})
    torch.manual_seed(0)
    return adapted_clip(load_clip(config.model), config)


@pytest.mark.parametrize("name", registered_architectures())
def test_forward_backward_shapes_and_gradient_coverage(name: str) -> None:
    model = build(name)
    size = model.info.grid * model.clip.visual.patch_size[0]
    images = torch.randn(2, 3, size, size)
    tokens = tokenize(["weave", "disc"])
    assert tokens.shape == (2, 16, 77)
    targets = model.frozen_targets(images)
    assert targets.shape == (2, 4, model.info.num_patches, model.info.embed_dim)
    anchors = model.class_anchors(tokens, targets[:, 0])
    context = model.text_context(tokens)
    features = model.encode_image(images, context)
    assert [t.shape for t in features.seg_tokens] == [(2, model.info.num_patches, model.info.embed_dim)] * 4
    assert features.det_token.shape == (2, model.info.embed_dim)
    loss = sum(t.sum() for t in features.seg_tokens) + features.det_token.sum() + anchors.sum()
    assert torch.isfinite(loss)
    loss.backward()
    trainable = [p for group in model.trainable_groups().values() for p in group]
    assert trainable and all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert all(p.grad is None for p in model.clip.parameters())


def test_anchors_are_unit_vectors_normal_first() -> None:
    model = build()
    anchors = model.class_anchors(tokenize(["weave", "granite", "ring"]))
    assert anchors.shape == (3, 64, 2)
    torch.testing.assert_close(anchors.norm(dim=1), torch.ones(3, 2))


def test_class_without_prompts_is_a_data_error() -> None:
    with pytest.raises(DataError, match="'gizmo' has no prompt name"):
        tokenize(["gizmo"])
    assert tokenize(["gizmo"], {"gizmo": "small gizmo"}).shape == (1, 16, 77)


def test_adapter_residual_keeps_token_norm_scale() -> None:
    torch.manual_seed(0)
    adapter, x = Adapter(8, 8), torch.randn(4, 5, 8)
    out = norm_matched_residual(x, adapter, 0.3)
    adapted = (out - 0.7 * x) / 0.3
    torch.testing.assert_close(adapted.norm(dim=-1), x.norm(dim=-1))


def cross_attention(**overrides) -> CrossAttention:
    settings = dict(query_dim=16, context_dim=8, inner_dim=8, heads=2, dropout=0.0,
                    scale=0.1, learnable_scale=False, norm_match=True, normalize_context=True) | overrides
    torch.manual_seed(0)
    return CrossAttention(**settings)


def test_norm_matching_makes_the_residual_scale_times_the_token_norm() -> None:
    module = cross_attention()
    x, context = torch.randn(2, 5, 16) * 7, torch.randn(2, 9, 8)
    residual = module(x, context) - x
    torch.testing.assert_close(residual.norm(dim=-1), 0.1 * x.norm(dim=-1), rtol=1e-4, atol=1e-5)
    unmatched = cross_attention(norm_match=False)
    torch.testing.assert_close(unmatched(x, context) - x, 0.1 * unmatched.attend(x, context))


def test_context_normalisation_removes_the_context_scale() -> None:
    x, context = torch.randn(2, 5, 16), torch.randn(2, 9, 8)
    normalised = cross_attention()
    torch.testing.assert_close(normalised(x, context), normalised(x, 17.0 * context))
    raw = cross_attention(normalize_context=False)
    assert not torch.allclose(raw(x, context), raw(x, 17.0 * context))


def test_learnable_scale_receives_gradient_and_moves() -> None:
    model = build(**{"cross_attention.image_scale": {"init": 0.1, "learnable": True}})
    scale = model.image_cross_attn.scale
    assert isinstance(scale, torch.nn.Parameter) and scale in model.trainable_groups()["image_cross_attn"]
    assert "scale" not in dict(model.text_cross_attn.named_parameters())  # fixed: a buffer
    optimizer = torch.optim.Adam([scale], lr=0.01)
    tokens = tokenize(["weave"])
    features = model.encode_image(torch.randn(2, 3, 64, 64), model.text_context(tokens).expand(2, -1, -1))
    features.seg_tokens[0][..., 0].sum().backward()
    assert scale.grad is not None and scale.grad.abs() > 0
    optimizer.step()
    assert scale.item() != pytest.approx(0.1)


def test_dropout_is_active_only_in_training() -> None:
    module = cross_attention(dropout=0.5)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 9, 8)
    module.eval()
    torch.testing.assert_close(module(x, context), module(x, context))
    module.train()
    assert not torch.allclose(module(x, context), module(x, context))


def test_frozen_clip_stays_in_eval_mode() -> None:
    model = build()
    model.train()
    assert model.training and not model.clip.training


@pytest.mark.parametrize("overrides, culprit", [
    ({"adapters.levels": [1, 2, 5]}, "adapters.levels: [1, 2, 5] exceeds the depth of aaclip-tiny"),
    ({"adapters.image_until": 9}, "adapters.image_until"),
    ({"stage1.surgery_from_block": 4}, "stage1.surgery_from_block"),
    ({"cross_attention.heads": 3}, "cross_attention.heads"),
])
def test_config_beyond_the_backbone_is_refused(overrides: dict, culprit: str) -> None:
    with pytest.raises(ConfigError, match=culprit.replace("[", r"\[").replace("]", r"\]")):
        build(**overrides)
