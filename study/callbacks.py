"""Driver-side Tune callbacks: record how each trial ended in MLflow, and print the study's progress.

A trial that ASHA or the guard stops is killed with its worker, so it cannot close its own MLflow run; the
driver does, with the reason (tag aaclip.stop_reason) that `status` shows. A pruned trial's run ends FINISHED
with outcome `pruned` and its rung (tag aaclip.pruned_at): not the red cross of a crash (study/record.py RUN_STATUS).
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any, Collection

from ray.tune import Callback

from study.eta import PLANNED_KEY, duration_text, phase_seconds_left, trial_seconds_left
from study.guard import GradientGuard
from study.record import COMPLETED_KEY, Outcome, reached_rung
from study.record import trial_outcome as outcome_of_result
from study.spool import Spool, Tracker, batch_op, is_transient, spool_root
from study.tracking import HEARTBEAT, HEARTBEAT_EVERY_S, Connector


def trial_outcome(trial: Any, guard: GradientGuard | None, time_attr: str) -> tuple[str, str]:
    """(completed | stopped | pruned, reason) of a Ray trial that ended without an error (study/record.py)."""
    stop_reason = guard.reasons.get(trial.trial_id) if guard is not None else None
    return outcome_of_result(trial.last_result, stop_reason=stop_reason, time_attr=time_attr)


class OutcomeRecorder(Callback):
    """Closes each trial's MLflow run with its outcome, after replaying what its worker left spooled.

    Through a Tracker: with the server away, the outcome waits in the driver's spool instead of crashing the
    driver. At the experiment's end, trials still unfinished (Ctrl-C, SIGTERM) are recorded as interrupted.
    """

    def __init__(self, study_name: str, experiment_id: str, guard: GradientGuard | None, time_attr: str,
                 connect: Connector, home: Path):
        self.study_name = study_name
        self.experiment_id = experiment_id
        self.guard = guard
        self.time_attr = time_attr
        self.home = Path(home)
        self.tracker = driver_tracker(connect, self.home, study_name)
        self.interrupted: list[str] = []  # trial ids left unfinished when the experiment ended
        self.started: set[str] = set()  # trials that ran in this driver's session...
        self.ended: set[str] = set()  # ...and those whose end it saw

    def _record(self, trial: Any, outcome: str, reason: str) -> None:
        rung = reached_rung(trial.last_result, self.time_attr) if outcome == Outcome.PRUNED else ""
        worker_spool = Spool(spool_root(self.home, self.study_name) / trial.trial_id)
        if worker_spool.pending():
            try:
                worker_spool.replay(self.tracker.client)
            except Exception as error:  # noqa: BLE001 - kept on disk: resume or the end of the study replays it
                if not is_transient(error):
                    raise
        self.tracker.write({"op": "outcome", "experiment_id": self.experiment_id, "study": self.study_name,
                            "trial_id": trial.trial_id, "outcome": outcome, "reason": reason, "rung": rung})
        remove_scratch(self.home, trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self.started.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self.ended.add(trial.trial_id)
        self._record(trial, *trial_outcome(trial, self.guard, self.time_attr))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self.ended.add(trial.trial_id)
        error = str(trial.get_error() or "").strip().splitlines() or ["the trial raised an error"]
        self._record(trial, *outcome_of_result(trial.last_result, error=error[-1][:1000]))

    def on_experiment_end(self, trials: list, **info) -> None:
        """Trials the experiment ended without (Ctrl-C, SIGTERM): recorded as interrupted."""
        for trial in trials:
            if trial.trial_id in self.ended:
                continue
            if trial.trial_id in self.started or trial.status not in ("TERMINATED", "ERROR"):
                self.interrupted.append(trial.trial_id)
                self._record(trial, Outcome.INTERRUPTED, "the driver stopped; `aaclip-study resume` continues it")


def driver_tracker(connect: Connector, home: Path, study_name: str) -> Tracker:
    """The driver's writes: outcomes, heartbeat, the parent run's status; spooled under spool/<study>/driver."""
    return connect.tracker(spool_root(home, study_name) / "driver")


def remove_scratch(home: Path, trial_id: str) -> None:
    """A trial's scratch folders (its attempts' out_dir); a killed worker cannot remove its own."""
    for folder in (Path(home) / "scratch").glob(f"trial-{trial_id}-*"):
        shutil.rmtree(folder, ignore_errors=True)


class Heartbeat(Callback):
    """The driver's pulse on the parent run (tag aaclip.heartbeat, unix seconds): `status` tells a driver that
    died without a word (SIGKILL, a lost machine) from one that runs, whatever the parent run's status says."""

    def __init__(self, tracker: Tracker, parent_run_id: str, every_s: float = HEARTBEAT_EVERY_S):
        self.tracker = tracker  # the driver's (shared with OutcomeRecorder: one spool, one order)
        self.parent_run_id = parent_run_id
        self.every_s = every_s
        self.last = 0.0

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self.last >= self.every_s:
            self.beat()

    def beat(self) -> None:
        self.last = time.monotonic()
        self.tracker.write(batch_op(self.parent_run_id, tags={HEARTBEAT: str(int(time.time()))}))


class Progress(Callback):
    """One line when a trial ends, and at most every `every_s` seconds while trials run."""

    def __init__(self, study_name: str, metric: str, mode: str, every_s: float = 30.0, echo=print,
                 interrupted: list[str] | None = None, show_best: bool = True, total: int | None = None):
        self.study_name, self.metric, self.mode = study_name, metric, mode
        self.total = total  # the phase's trial count, for the estimate of time left (None: no estimate)
        self.show_best = show_best  # off where the best single run means nothing (the confirmation's twins, base)
        self.interrupted = interrupted if interrupted is not None else []  # OutcomeRecorder's list, shared
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
        scores = self.scores if self.show_best else {}
        line = progress_line(self.study_name, trials, self.metric, self.mode, scores, self.interrupted, self.total)
        if force or line != self.last_line:
            self.echo(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
        self.last_line, self.last_time = line, time.monotonic()


def running_at(trial: Any) -> str:
    """Where a running trial is, from its last report: "t003 loop 2 epoch 5/8, ~40 s left" ("" before its
    first)."""
    result = trial.last_result or {}
    steps = [f"{key} {int(result[key])}" for key in ("loop", "epoch") if isinstance(result.get(key), (int, float))]
    if not steps:
        return ""
    planned, left = result.get(PLANNED_KEY), trial_seconds_left(result)
    of = f"/{int(planned)}" if isinstance(planned, (int, float)) and "epoch" in result else ""
    return f"{trial} {' '.join(steps)}{of}" + (f", ~{duration_text(left)} left" if left else "")  # 0: ending


def progress_line(study_name: str, trials: list, metric: str, mode: str, scores: dict[str, float],
                  interrupted: Collection[str] = (), total: int | None = None) -> str:
    """Counts by state, where each running trial is, the best completed value and, given the phase's `total`
    trials, an estimate of the time left (study/eta.py)."""
    # Tune marks the trials it stops at a Ctrl-C TERMINATED too: they are neither done nor pruned.
    done = [t for t in trials if t.status == "TERMINATED" and t.trial_id not in interrupted]
    completed = [t for t in done if (t.last_result or {}).get(COMPLETED_KEY)]
    running = sum(t.status == "RUNNING" for t in trials)
    pending = sum(t.status in ("PENDING", "PAUSED") for t in trials)
    failed = sum(t.status == "ERROR" for t in trials)
    line = (f"{study_name}: {len(completed)} done, {len(done) - len(completed)} pruned/stopped, {failed} failed, "
            f"{running} running, {pending} pending")
    if interrupted:
        line += f", {len(interrupted)} interrupted"
    where = [running_at(trial) for trial in trials if trial.status == "RUNNING"]
    if any(where):
        line += f" ({'; '.join(text for text in where if text)})"
    scored = [trial for trial in trials if trial.trial_id in scores]
    if scored:
        sign = 1 if mode == "max" else -1
        best = max(scored, key=lambda trial: sign * scores[trial.trial_id])
        line += f"; best completed: {metric} {scores[best.trial_id]:.4g} ({best})"
    left = phase_seconds_left(trials, total)
    if left:
        line += f"; ~{duration_text(left)} left at full schedules"
    return line
