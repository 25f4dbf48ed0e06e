"""Gradient guard: stop a trial that cannot recover, and say why (the seed's failure mode, reference §9).

Two conditions end a trial: a loss that is NaN or infinite, and image adapters that starve, i.e.
`grad/image_adapter_share` below a floor for `patience` consecutive Stage-2 epochs. The reason is kept so the
driver can record it in the trial's MLflow run (tag aaclip.stop_reason), where `status` shows it.
"""
from __future__ import annotations

import math
from typing import Any

from ray.tune.stopper import Stopper

from aaclip.metric_names import IMAGE_ADAPTER_SHARE, LOSSES
from study.spec import GuardSpec


def guard_reason(spec: GuardSpec, result: dict[str, Any], epochs_below: int) -> tuple[str | None, int]:
    """(why to stop or None, updated count of consecutive epochs below the floor) after one epoch's result."""
    if not spec.enabled:
        return None, 0
    epoch = result.get("epoch", "?")
    if spec.nonfinite_loss:
        for key in LOSSES:
            value = result.get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                return f"guard: {key} is {value} at epoch {epoch}", epochs_below
    share = result.get(IMAGE_ADAPTER_SHARE)
    floor = spec.image_adapter_share_floor
    if floor is None or not isinstance(share, (int, float)):
        return None, epochs_below  # Stage-1 epochs carry no image gradient: they neither count nor reset
    epochs_below = epochs_below + 1 if not share >= floor else 0  # NaN counts as below
    if epochs_below >= spec.patience:
        return (f"guard: {IMAGE_ADAPTER_SHARE} below {floor} for {epochs_below} epochs (last {share:.3g} at epoch "
                f"{epoch}); the image adapters starve"), epochs_below
    return None, epochs_below


class GradientGuard(Stopper):
    """A Ray Tune stopper over guard_reason; `reasons` maps trial id -> why it was stopped."""

    def __init__(self, spec: GuardSpec):
        self.spec = spec
        self.epochs_below: dict[str, int] = {}
        self.reasons: dict[str, str] = {}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        reason, below = guard_reason(self.spec, result, self.epochs_below.get(trial_id, 0))
        self.epochs_below[trial_id] = below
        if reason:
            self.reasons[trial_id] = reason
        return reason is not None

    def stop_all(self) -> bool:
        return False
