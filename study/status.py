"""`aaclip-study status NAME`: one row per trial, read from MLflow (the source of truth, DESIGN §5).

MLflow is read rather than Ray's experiment state so that status works from any machine that can reach the
tracking server, while the study runs, after it ends, and after its driver died.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from study.record import (
    Outcome, Tag, is_baseline_run, objective_of, outcome_of, require_parent_run, space_keys_of, trial_runs,
)
from study.tracking import HEARTBEAT_STALE_S, study_link
from study.verdict import Verdict, format_verdict, study_verdict


@dataclass
class TrialRow:
    trial: str
    trial_id: str
    state: str  # running | completed | pruned | stopped | failed | interrupted
    params: dict[str, Any]
    loop: int | None
    objective: float | None  # the last evaluated value
    best: float | None  # the best evaluated value along the way
    baseline: bool
    reason: str
    run_id: str


@dataclass
class StudyStatus:
    study: str
    objective: str
    mode: str
    state: str
    link: str
    trials: list[TrialRow] = field(default_factory=list)
    verdict: Verdict | None = None  # the confirmation phase's table, once it has runs

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.trials:
            counts[row.state] = counts.get(row.state, 0) + 1
        return counts

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "counts": self.counts()}, indent=2, default=str)


def param_value(text: str | None) -> Any:
    """MLflow params are strings; ours were written as JSON for non-strings."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def shown_params(params: dict[str, str], keys: list[str]) -> dict[str, Any]:
    """The searched params of a run; in a run without cross-attention, its settings are "off" (the run logs
    none: aaclip.config.effective_settings), never a scale it did not use."""
    off = param_value(params.get("cross_attention.enabled")) is False
    return {key: "off" if off and key.startswith("cross_attention.") and key != "cross_attention.enabled"
            else param_value(params.get(key)) for key in keys}


def study_status(client, name: str) -> StudyStatus:
    parent = require_parent_run(client, name)
    tags = parent.data.tags
    metric, mode = objective_of(parent)
    keys = space_keys_of(parent)
    state = study_state(parent)
    driver_alive = state == "running"
    status = StudyStatus(study=tags[Tag.STUDY], objective=metric, mode=mode, state=state,
                         link=study_link(client, client.tracking_uri, parent.info.experiment_id, tags[Tag.STUDY],
                                         metric, mode))
    for run in trial_runs(client, parent):
        run_tags, metrics = run.data.tags, run.data.metrics
        state = outcome_of(run)
        if state == Outcome.RUNNING and not driver_alive:
            state = Outcome.INTERRUPTED  # the driver died; `aaclip-study resume` continues it
        best = run_tags.get(Tag.BEST_VALUE)
        status.trials.append(TrialRow(
            trial=run.info.run_name, trial_id=run_tags.get(Tag.TRIAL_ID, ""), state=state,
            params=shown_params(run.data.params, keys),
            loop=int(metrics["loop"]) if "loop" in metrics else None,
            objective=_finite(metrics.get(metric)), best=_finite(float(best)) if best else None,
            baseline=is_baseline_run(run), reason=run_tags.get(Tag.STOP_REASON, ""),
            run_id=run.info.run_id))
    status.verdict = study_verdict(client, parent)
    return status


def study_state(parent, now: float | None = None) -> str:
    """running | finished | interrupted | crashed | failed. A RUNNING parent whose driver's heartbeat is older
    than HEARTBEAT_STALE_S had its driver die without a word (SIGKILL, a lost machine): interrupted."""
    status = parent.info.status
    tags = parent.data.tags
    if status == "RUNNING":
        beat = tags.get(Tag.HEARTBEAT)
        if beat and (now or time.time()) - float(beat) > HEARTBEAT_STALE_S:
            return "interrupted"
        return "running"
    if status == "KILLED":
        return tags.get(Tag.DRIVER, "interrupted")
    return status.lower()


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def format_status(status: StudyStatus) -> str:
    keys = list(status.trials[0].params) if status.trials else []
    header = ["trial", "state", *(short_key(key) for key in keys), "loop", status.objective, "best", "reason"]
    rows = [[row.trial, row.state, *(show_value(row.params[key]) for key in keys), show_value(row.loop),
             show_value(row.objective), show_value(row.best), row.reason] for row in status.trials]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in [header, *rows]]
    counts = ", ".join(f"{count} {state}" for state, count in sorted(status.counts().items())) or "no trials yet"
    confirmed = [format_verdict(status.verdict)] if status.verdict is not None else []
    return "\n".join([f"study {status.study} ({status.state}): {counts}; objective {status.objective} "
                      f"({status.mode})", *lines, *confirmed, f"runs: {status.link}"])


def short_key(key: str) -> str:
    return ".".join(key.split(".")[-2:])


def show_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
