"""ASHA's rung history, rebuilt from MLflow when a study resumes (Ray does not save the scheduler).

Without it a resumed ASHA starts with empty rungs: no cutoff exists until new trials fill them, so a
configuration that the uninterrupted study prunes at its first rung runs to the end. Every trial's run holds
the objective and the time attribute (loop or epoch) at step = epoch, which is exactly what ASHA was fed, so
each trial's results are replayed into the rungs in the order the trial reported them: the first result at or
beyond a milestone is the one ASHA recorded there (async_hyperband._Bracket.on_result).
"""
from __future__ import annotations

from typing import Any

from study.record import Tag, trial_runs

History = dict[str, list[tuple[float, float]]]  # trial id -> [(time attribute, objective)] in report order


def reported_history(client, parent, metric: str, time_attr: str) -> History:
    history: History = {}
    for run in trial_runs(client, parent):
        objective = {point.step: point.value for point in client.get_metric_history(run.info.run_id, metric)}
        times = {point.step: point.value for point in client.get_metric_history(run.info.run_id, time_attr)}
        points = [(times[step], objective[step]) for step in sorted(objective) if step in times]
        if points:
            history[run.data.tags[Tag.TRIAL_ID]] = points
    return history


def restore_rungs(scheduler: Any, history: History) -> int:
    """Record the history in the scheduler's brackets as its own results would have; the points recorded."""
    recorded_points = 0
    for bracket in scheduler._brackets:  # noqa: SLF001 - the state Ray keeps no public handle on
        for trial_id, points in history.items():
            for milestone, recorded in bracket._rungs:  # noqa: SLF001
                if trial_id in recorded:
                    continue
                reached = [value for time_value, value in points if time_value >= milestone]
                if reached:
                    recorded[trial_id] = scheduler._metric_op * reached[0]  # noqa: SLF001 - max or min
                    recorded_points += 1
    return recorded_points
