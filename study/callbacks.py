"""Driver-side Tune callbacks: record how each trial ended in MLflow, and print the study's progress.

A trial that ASHA or the guard stops is killed with its worker, so it cannot close its own MLflow run; the
driver does, with the reason (tag aaclip.stop_reason) that `status` shows.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

from ray.tune import Callback

from study.guard import GradientGuard
from study.searcher import COMPLETED_KEY
from study.tracking import mark_trial_outcome, tracking_client


def trial_outcome(trial: Any, guard: GradientGuard | None, time_attr: str) -> tuple[str, str]:
    """(completed | stopped | pruned, reason) of a trial that ended without an error."""
    result = trial.last_result or {}
    if result.get(COMPLETED_KEY):
        return "completed", ""
    if guard is not None and trial.trial_id in guard.reasons:
        return "stopped", guard.reasons[trial.trial_id]
    reached = result.get(time_attr)
    reached_text = f" at {time_attr} {int(reached)}" if isinstance(reached, (int, float)) else ""
    return "pruned", f"ASHA: below the rung's cutoff{reached_text}"


class OutcomeRecorder(Callback):
    """Closes each trial's MLflow run with its outcome (the server is $MLFLOW_TRACKING_URI of the driver)."""

    def __init__(self, study_name: str, experiment_id: str, guard: GradientGuard | None, time_attr: str):
        self.study_name = study_name
        self.experiment_id = experiment_id
        self.guard = guard
        self.time_attr = time_attr

    def _record(self, trial: Any, outcome: str, reason: str) -> None:
        client = tracking_client(os.environ["MLFLOW_TRACKING_URI"])
        mark_trial_outcome(client, self.experiment_id, self.study_name, trial.trial_id, outcome=outcome,
                           reason=reason)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._record(trial, *trial_outcome(trial, self.guard, self.time_attr))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        error = str(trial.get_error() or "").strip().splitlines() or ["the trial raised an error"]
        self._record(trial, "failed", error[-1][:1000])


class Progress(Callback):
    """One line when a trial ends, and at most every `every_s` seconds while trials run."""

    def __init__(self, study_name: str, metric: str, mode: str, every_s: float = 30.0, echo=print):
        self.study_name, self.metric, self.mode = study_name, metric, mode
        self.every_s = every_s
        self.echo = echo
        self.last_line, self.last_time = "", 0.0
        self.scores: dict[str, float] = {}  # trial id -> final objective of a completed trial

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info) -> None:
        # The final value of a trial that ran its whole schedule: what `export` ranks by.
        value = result.get(self.metric)
        if result.get(COMPLETED_KEY) and isinstance(value, (int, float)) and math.isfinite(value):
            self.scores[trial.trial_id] = value

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self.last_time >= self.every_s:
            self.show(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self.show(trials, force=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self.show(trials, force=True)

    def on_experiment_end(self, trials: list, **info) -> None:
        self.show(trials)  # on_trial_complete runs before Tune marks the trial TERMINATED: recount at the end

    def show(self, trials: list, force: bool = False) -> None:
        line = progress_line(self.study_name, trials, self.metric, self.mode, self.scores)
        if force or line != self.last_line:
            self.echo(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
        self.last_line, self.last_time = line, time.monotonic()


def progress_line(study_name: str, trials: list, metric: str, mode: str, scores: dict[str, float]) -> str:
    done = [t for t in trials if t.status == "TERMINATED"]
    completed = [t for t in done if (t.last_result or {}).get(COMPLETED_KEY)]
    running = sum(t.status == "RUNNING" for t in trials)
    pending = sum(t.status in ("PENDING", "PAUSED") for t in trials)
    failed = sum(t.status == "ERROR" for t in trials)
    line = (f"{study_name}: {len(completed)} done, {len(done) - len(completed)} pruned/stopped, {failed} failed, "
            f"{running} running, {pending} pending")
    scored = [trial for trial in trials if trial.trial_id in scores]
    if scored:
        sign = 1 if mode == "max" else -1
        best = max(scored, key=lambda trial: sign * scores[trial.trial_id])
        line += f"; best completed: {metric} {scores[best.trial_id]:.4g} ({best})"
    return line
