"""What `aaclip-study status` shows of a run's searched params: a run without cross-attention shows it off."""
from __future__ import annotations

from study.status import shown_params

KEYS = ["cross_attention.image_scale.learnable", "cross_attention.image_scale.init", "optim.image_lr"]


def test_a_run_without_cross_attention_shows_its_settings_off() -> None:
    baseline = {"cross_attention.enabled": "false", "optim.image_lr": "0.001"}  # as effective_settings logs it
    assert shown_params(baseline, KEYS) == {"cross_attention.image_scale.learnable": "off",
                                            "cross_attention.image_scale.init": "off", "optim.image_lr": 0.001}
    searched = {"cross_attention.enabled": "true", "cross_attention.image_scale.learnable": "false",
                "cross_attention.image_scale.init": "0.1", "optim.image_lr": "0.0005"}
    assert shown_params(searched, KEYS) == {"cross_attention.image_scale.learnable": False,
                                            "cross_attention.image_scale.init": 0.1, "optim.image_lr": 0.0005}
