"""CUDA-only checks (pytest -m gpu; skipped without CUDA). benchmarks/gpu_check.sh runs them on a GPU machine.

Imports only torch, open_clip and aaclip: the GPU machine may have no Ray, MLflow or Optuna."""
from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from aaclip.attention import block_forward
from aaclip.backbone import load_clip, vision_embed
from aaclip.config import apply_overrides, load_config, validate_config
from aaclip.schedule import IMAGE, TEXT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def cuda_config(config, **overrides):
    return validate_config(apply_overrides(config.to_dict(), {"model.device": "cuda", "model.precision": "bf16",
                                                              **overrides}))


def tiny_clip():
    config = load_config("tiny")
    torch.manual_seed(0)
    return load_clip(config.model).cuda()


def test_batch_first_blocks_equal_open_clip_on_cuda() -> None:
    clip = tiny_clip()
    x = vision_embed(clip, torch.randn(2, 3, 64, 64, device="cuda")).detach().requires_grad_(True)
    for block in clip.visual.transformer.resblocks:
        upstream = torch.randn_like(x)
        expected = torch.autograd.grad(block(x), x, upstream)[0]
        actual = torch.autograd.grad(block_forward(block, x), x, upstream)[0]
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_bf16_blocks_run_on_flash_or_efficient_kernels() -> None:
    clip = tiny_clip()
    x = vision_embed(clip, torch.randn(2, 3, 64, 64, device="cuda"))
    tokens = clip.token_embedding(torch.randint(0, 1000, (2, 77), device="cuda")) + clip.positional_embedding
    # Restricted to the fast kernels: a layout they cannot serve would raise instead of falling back to math.
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]), \
            torch.autocast("cuda", dtype=torch.bfloat16):
        vision = block_forward(clip.visual.transformer.resblocks[0], x)
        text = block_forward(clip.transformer.resblocks[0], tokens, clip.attn_mask, causal=True)
        stock = clip.visual.transformer.resblocks[0](x)
    # The residual stream keeps its dtype (fp32 in, fp32 out, as open_clip's own block under autocast); the
    # products inside ran in bf16 on the fast kernels, or the sdpa_kernel restriction would have raised.
    assert vision.dtype == text.dtype == stock.dtype
    assert torch.isfinite(vision).all() and torch.isfinite(text).all()


def test_bf16_steps_keep_fp32_weights_losses_and_gradients(tiny_config) -> None:
    from aaclip.profile import stage_batch, stage_plan
    from aaclip.session import build_session
    from aaclip.stages import STAGE_LOSSES
    from aaclip.train import make_optimizer

    session = build_session(cuda_config(tiny_config))
    for stage in (TEXT, IMAGE):
        optimizer = make_optimizer(session, stage_plan(stage))
        inputs = session.stage_inputs(stage_plan(stage))
        loss = STAGE_LOSSES[stage](session.model, stage_batch(session, stage, 4), inputs, session.stage_settings)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trained = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        assert trained and all(p.dtype == p.grad.dtype == torch.float32 for p in trained)


def test_cuda_peak_memory_is_reported_per_epoch(tiny_config, tmp_path) -> None:
    from aaclip.train import fit

    result = fit(cuda_config(tiny_config), out_dir=tmp_path / "run")
    peaks = [row["memory/cuda_peak_gb"] for row in result.history]
    assert peaks and all(peak > 0 for peak in peaks)


def test_compiled_blocks_match_eager(tiny_config) -> None:
    from aaclip.session import build_session

    images = torch.randn(2, 3, 64, 64, device="cuda")
    features = []
    for compiled in (False, True):
        session = build_session(cuda_config(tiny_config, **{"model.compile": compiled, "model.precision": "fp32"}))
        with torch.no_grad():
            features.append(session.model.encode_image(images).seg_tokens[-1])
    torch.testing.assert_close(features[1], features[0], rtol=1e-3, atol=1e-3)


def test_profile_suggests_a_gpu_share(tiny_config) -> None:
    from aaclip.profile import gpu_fraction, profile_config

    stages = profile_config(cuda_config(tiny_config), repeats=1, memory_gb=1.0)
    assert all(stage.memory_kind == "cuda-max-allocated" and stage.peak_bytes > 0 for stage in stages)
    fraction = gpu_fraction(max(stage.peak_bytes for stage in stages), torch.device("cuda"))
    assert fraction is not None and 0 < fraction <= 1
