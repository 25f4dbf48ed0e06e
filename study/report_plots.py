"""The figures of a study report: the objective against each knob of the question, and the confirmed verdict.

Every trial with a value at any rung is drawn, marked by how it ended (a pruned trial's value is from the rung
where it stopped), and labelled with its MLflow run name. Colours are fixed, saturated and on white, so they
read the same in MLflow's artifact viewer, in a browser and on paper.
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from study.verdict import Verdict  # noqa: E402

STYLE = {  # outcome -> marker, colour, filled
    "completed": ("o", "#1f77b4", True),
    "pruned": ("s", "#ff7f0e", False),
    "stopped": ("^", "#d62728", False),
    "running": ("D", "#7f7f7f", False),
    "failed": ("x", "#d62728", True),
    "interrupted": ("D", "#7f7f7f", False),
}
BASELINE_COLOUR = "#2ca02c"
TWIN_COLOUR = "#9467bd"


@dataclass
class TrialPoint:
    """One trial as the report draws it."""

    name: str  # the MLflow run name
    label: str  # the run name without the study's prefix, for crowded plots
    outcome: str
    value: float  # the objective's last value (final for completed trials, the stopping rung's for others)
    loop: int | None  # the loop it reached
    baseline: bool
    params: dict[str, Any]


def encoded(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, facecolor="white")
    plt.close(figure)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _scatter(axes, points: list[TrialPoint], xs: list[float]) -> None:
    for point, x in zip(points, xs):
        marker, colour, filled = STYLE.get(point.outcome, STYLE["running"])
        axes.scatter([x], [point.value], marker=marker, s=45, linewidths=1.5, edgecolors=colour,
                     facecolors=colour if filled else "white", zorder=3)
        axes.annotate(point.label, (x, point.value), textcoords="offset points", xytext=(4, 3), fontsize=7,
                      color="#333333")


def _legend(axes, outcomes: set[str], baseline: float | None) -> None:
    handles = [plt.Line2D([], [], linestyle="", marker=STYLE[o][0], markeredgecolor=STYLE[o][1],
                          markerfacecolor=STYLE[o][1] if STYLE[o][2] else "white", label=o)
               for o in STYLE if o in outcomes]
    if baseline is not None:
        handles.append(plt.Line2D([], [], color=BASELINE_COLOUR, linestyle="--", label="baseline (cross-attn off)"))
    axes.legend(handles=handles, fontsize=7, loc="best", framealpha=0.9)


def _baseline_line(axes, baseline: float | None) -> None:
    if baseline is not None:
        axes.axhline(baseline, color=BASELINE_COLOUR, linestyle="--", linewidth=1.2)


def _log_axis(axes) -> None:
    """A log x axis with labels at the decades only (minor labels overlap on a narrow panel)."""
    axes.set_xscale("log")
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def scale_figure(points: list[TrialPoint], metric: str, baseline: float | None) -> bytes:
    """Objective against the cross-attention scale, per direction: fixed scales by value, learnable apart."""
    searched = [point for point in points if not point.baseline]
    figure, grid = plt.subplots(2, 2, figsize=(10, 7), sharey=True, width_ratios=[3, 1])
    for row, direction in enumerate(("image", "text")):
        prefix = f"cross_attention.{direction}_scale"
        fixed = [p for p in searched if p.params.get(f"{prefix}.learnable") is False
                 and _number(p.params.get(f"{prefix}.init")) is not None]
        learnable = [p for p in searched if p.params.get(f"{prefix}.learnable") is True]
        axes = grid[row][0]
        _scatter(axes, fixed, [p.params[f"{prefix}.init"] for p in fixed])
        if fixed and min(p.params[f"{prefix}.init"] for p in fixed) > 0:
            _log_axis(axes)
        axes.set_xlabel(f"{direction} scale (fixed): value")
        settings = {(p.params.get(f"{prefix}.learnable"), p.params.get(f"{prefix}.init")) for p in searched}
        if len(settings) == 1:
            learns, init = settings.pop()
            axes.set_title(f"not searched: every trial has {direction} scale "
                           f"{'learnable from' if learns else 'fixed at'} {init}", fontsize=9)
        axes.set_ylabel(metric)
        _baseline_line(axes, baseline)
        axes = grid[row][1]
        _scatter(axes, learnable, [i % 5 * 0.2 for i in range(len(learnable))])  # spread apart, no meaning
        axes.set_xlim(-0.3, 1.2)
        axes.set_xticks([])
        axes.set_xlabel(f"{direction} scale learnable")
        _baseline_line(axes, baseline)
    for axes in grid.flat:
        axes.grid(alpha=0.3)
    _legend(grid[0][0], {p.outcome for p in searched}, baseline)
    figure.suptitle(f"{metric} against the cross-attention scale (mode and value)")
    figure.tight_layout()
    return encoded(figure)


KNOBS = (("feedback.loops", "feedback loops", False), ("optim.text_lr", "text learning rate", True),
         ("optim.image_lr", "image learning rate", True))


def knobs_figure(points: list[TrialPoint], metric: str, baseline: float | None) -> bytes:
    """Objective against the loops and both learning rates (every trial, the baseline as a line)."""
    searched = [point for point in points if not point.baseline]
    figure, panels = plt.subplots(1, len(KNOBS), figsize=(13, 4.5), sharey=True)
    for axes, (key, title, log) in zip(panels, KNOBS):
        drawn = [p for p in searched if _number(p.params.get(key)) is not None]
        _scatter(axes, drawn, [p.params[key] for p in drawn])
        if log and drawn and min(p.params[key] for p in drawn) > 0:
            _log_axis(axes)
        if key == "feedback.loops":
            axes.set_xticks(sorted({p.params[key] for p in drawn}) or [1])
        axes.set_xlabel(title)
        axes.grid(alpha=0.3)
        _baseline_line(axes, baseline)
    panels[0].set_ylabel(metric)
    _legend(panels[0], {p.outcome for p in searched}, baseline)
    figure.suptitle(f"{metric} against loops and learning rates")
    figure.tight_layout()
    return encoded(figure)


def history_figure(points: list[TrialPoint], metric: str, mode: str) -> bytes:
    """Every trial in start order, named as in MLflow, with the best completed value so far."""
    figure, axes = plt.subplots(figsize=(max(7, 0.45 * len(points)), 4.5))
    positions = list(range(len(points)))
    _scatter(axes, [p for p in points if not p.baseline], [i for i, p in zip(positions, points) if not p.baseline])
    for i, point in zip(positions, points):
        if point.baseline:
            axes.scatter([i], [point.value], marker="*", s=120, color=BASELINE_COLOUR, zorder=3)
    best, running_best = [], None
    for point in points:
        if point.outcome == "completed" and not point.baseline:
            better = running_best is None or (point.value > running_best if mode == "max" else point.value < running_best)
            running_best = point.value if better else running_best
        best.append(running_best)
    axes.step(positions, [math.nan if b is None else b for b in best], where="post", color="#1f77b4", alpha=0.6,
              label="best completed so far")
    axes.set_xticks(positions, [p.name for p in points], rotation=60, ha="right", fontsize=7)
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    _legend(axes, {p.outcome for p in points if not p.baseline}, None)
    axes.set_title("Every trial with a value, in start order (green star: baseline)")
    figure.tight_layout()
    return encoded(figure)


def confirmed_figure(verdict: Verdict) -> bytes:
    """Left: each configuration's mean with its 95% interval, beside its matched twin and the base model.
    Right: the paired difference on - off with its interval; 0 is no effect."""
    figure, (means, differences) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, row in enumerate(verdict.rows):
        for offset, estimate, colour, label in ((-0.12, row.on, "#1f77b4", "cross-attention on"),
                                                (0.12, row.twin, TWIN_COLOUR, "matched twin (off)")):
            _interval_bar(means, i + offset, estimate, colour, label if i == 0 else None)
        _interval_bar(differences, i, row.difference, "#1f77b4", None)
    if verdict.base.mean is not None:
        means.axhline(verdict.base.mean, color=BASELINE_COLOUR, linestyle="--", label="base model (mean)")
    labels = [f"rank {row.rank}\n{row.source}" for row in verdict.rows]
    for axes in (means, differences):
        axes.set_xticks(range(len(verdict.rows)), labels, fontsize=8)
        axes.grid(alpha=0.3)
    means.set_ylabel(f"{verdict.metric} (mean, 95% CI over seeds)")
    means.legend(fontsize=7, loc="best")
    differences.axhline(0.0, color="#333333", linewidth=1)
    differences.set_ylabel("on - off, paired by seed (95% CI)")
    figure.suptitle(f"Confirmation on fresh seeds {', '.join(map(str, verdict.seeds))}")
    figure.tight_layout()
    return encoded(figure)


def _interval_bar(axes, x: float, estimate, colour: str, label: str | None) -> None:
    if estimate.mean is None:
        return
    if estimate.low is None:
        axes.scatter([x], [estimate.mean], color=colour, label=label, zorder=3)
        return
    axes.errorbar([x], [estimate.mean], yerr=[[estimate.mean - estimate.low], [estimate.high - estimate.mean]],
                  fmt="o", color=colour, capsize=4, label=label, zorder=3)


def save(png: bytes, path: Path) -> Path:
    path.write_bytes(png)
    return path
