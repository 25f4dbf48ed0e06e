"""Estimates of time left for the progress line: per running trial, and for the phase.

A trial reports its planned epoch count with every result (PLANNED_KEY); Tune adds `time_total_s` and
`training_iteration` (the results of this trial so far). The pace is the mean time per reported epoch, start-up
included, so early estimates run long and settle as the trial goes. The phase's estimate assumes every trial
runs its whole schedule (ASHA may prune some: then it ends sooner) and the trials running now keep running side
by side.
"""
from __future__ import annotations

import statistics
from typing import Any

PLANNED_KEY = "trial/planned_epochs"


def epoch_seconds(result: dict[str, Any]) -> float | None:
    seconds, reports = result.get("time_total_s"), result.get("training_iteration")
    if not isinstance(seconds, (int, float)) or not isinstance(reports, (int, float)) or reports < 1:
        return None
    return seconds / reports


def trial_seconds_left(result: dict[str, Any]) -> float | None:
    """Time until the trial's last planned epoch at its pace so far (None before its first report)."""
    pace, planned, epoch = epoch_seconds(result), result.get(PLANNED_KEY), result.get("epoch")
    if pace is None or not isinstance(planned, (int, float)) or not isinstance(epoch, (int, float)):
        return None
    return pace * max(planned - epoch, 0)


def phase_seconds_left(trials: list, total: int | None) -> float | None:
    """Time until the phase's `total` trials are through, if each runs its whole schedule (None if unknown).
    A trial without a report yet counts as a whole schedule, at the median of those measured so far."""
    running = [trial for trial in trials if trial.status == "RUNNING"]
    full = [epoch_seconds(result) * result[PLANNED_KEY] for result in (trial.last_result or {} for trial in trials)
            if epoch_seconds(result) is not None and isinstance(result.get(PLANNED_KEY), (int, float))]
    if total is None or not running or not full:
        return None
    whole = statistics.median(full)
    lefts = [trial_seconds_left(trial.last_result or {}) for trial in running]
    waiting = max(total - sum(trial.status != "PENDING" for trial in trials), 0)  # not started, or not created yet
    return (sum(whole if left is None else left for left in lefts) + waiting * whole) / len(running)


def duration_text(seconds: float) -> str:
    """45 s, 12 min, 1.5 h: as precise as an estimate deserves."""
    if seconds < 90:
        return f"{max(round(seconds), 1)} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
