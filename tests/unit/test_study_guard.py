"""The gradient guard: non-finite losses and starving image adapters stop a trial, with a reason."""
from __future__ import annotations

import math

from study.guard import GradientGuard, guard_reason
from study.spec import GuardSpec


def test_nonfinite_loss_stops_at_once():
    reason, _ = guard_reason(GuardSpec(), {"epoch": 3, "train/image_loss": math.nan}, 0)
    assert reason and "train/image_loss" in reason and "epoch 3" in reason


def test_starvation_needs_patience_consecutive_stage2_epochs():
    guard = GradientGuard(GuardSpec(image_adapter_share_floor=0.1, patience=2))
    assert not guard("t", {"epoch": 1, "grad/image_adapter_share": 0.05})
    assert not guard("t", {"epoch": 2, "train/text_loss": 1.0})  # a Stage-1 epoch neither counts nor resets
    assert guard("t", {"epoch": 3, "grad/image_adapter_share": 0.02})
    assert "starve" in guard.reasons["t"]
    assert not guard("other", {"epoch": 1, "grad/image_adapter_share": 0.02})


def test_recovery_resets_the_count():
    spec = GuardSpec(image_adapter_share_floor=0.1, patience=2)
    _, below = guard_reason(spec, {"grad/image_adapter_share": 0.01}, 0)
    _, below = guard_reason(spec, {"grad/image_adapter_share": 0.5}, below)
    reason, below = guard_reason(spec, {"grad/image_adapter_share": 0.01}, below)
    assert reason is None and below == 1


def test_disabled_guard_never_stops():
    assert guard_reason(GuardSpec(enabled=False), {"train/text_loss": math.inf}, 0) == (None, 0)
