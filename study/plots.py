"""Figures a trial logs as artifacts: the gradient flow over epochs (DESIGN §4, reference §9)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # workers have no display
import matplotlib.pyplot as plt  # noqa: E402

from aaclip.metric_names import GROUPS, IMAGE_ADAPTER_SHARE, gradient_norm  # noqa: E402


def gradient_flow_plot(history: list[dict[str, Any]], path: Path, share_floor: float | None = None) -> Path:
    """Gradient norms per module (log scale) and the image adapters' share of the Stage-2 gradient.

    The share is the seed's failure mode made visible: when image cross-attention takes most of the gradient,
    the image adapters starve, and the lower panel falls towards 0.
    """
    figure, (norms, share) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[2, 1])
    for group in GROUPS:
        points = _series(history, gradient_norm(group))
        if points:
            norms.plot(*zip(*points), marker="o", markersize=3, label=group)
    norms.set_yscale("log")
    norms.set_ylabel("gradient norm")
    norms.legend(loc="best", fontsize=8)
    norms.grid(alpha=0.3)
    points = _series(history, IMAGE_ADAPTER_SHARE, positive=False)
    if points:
        share.plot(*zip(*points), marker="o", markersize=3, color="tab:purple")
    if share_floor is not None:
        share.axhline(share_floor, color="tab:red", linestyle="--", linewidth=1, label="guard floor")
        share.legend(loc="best", fontsize=8)
    share.set_ylim(0, 1)
    share.set_ylabel("image adapter share")
    share.set_xlabel("epoch")
    share.grid(alpha=0.3)
    figure.suptitle("Gradient flow")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _series(history: list[dict[str, Any]], key: str, positive: bool = True) -> list[tuple[float, float]]:
    """(epoch, value) for epochs that report the key; a log axis cannot show 0, a share axis can."""
    points = []
    for row in history:
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value) and (value > 0 or not positive):
            points.append((row["epoch"], value))
    return points
