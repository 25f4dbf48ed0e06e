"""What a study's MLflow runs say at a glance: the parent's summary metrics and description, a line per trial.

The parent run gets metrics (best value, trials by outcome, the baseline's value) that the runs table shows,
and a markdown description (tag mlflow.note.content, the run page's "Description") naming the best trial with
a link to its run, the counts, the baseline and the confirmed verdict. Each trial's run gets a one-line
description of its searched params and outcome. Written when the study ends (study/driver.py, through the
driver's spool) and again by `aaclip-study report`.
"""
from __future__ import annotations

import math
import time
from typing import Any

from mlflow.entities import Metric

from aaclip.mlflow_env import DESCRIPTION
from study.record import (
    Outcome, Tag, best_and_baseline, is_baseline_run, objective_of, outcome_of, space_keys_of, trial_runs,
)
from study.spool import Tracker, batch_op
from study.status import param_value, short_key, show_value
from study.verdict import Verdict, format_verdict, study_verdict

# Always logged, zero included: columns stay comparable, and a resumed study's summary replaces the interrupted one's.
COUNTED = (Outcome.COMPLETED, Outcome.PRUNED, Outcome.STOPPED, Outcome.FAILED, Outcome.INTERRUPTED)
PREFIX = "study/"
MAX_TAG = 8000  # MLflow's limit on a tag's value


def run_link(experiment_id: str, run_id: str) -> str:
    """A link inside MLflow's UI (relative: it works whichever address the UI was opened at)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def outcome_counts(runs: list) -> dict[str, int]:
    counts = dict.fromkeys(COUNTED, 0)
    for run in runs:
        outcome = outcome_of(run)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def summary_metrics(runs: list, metric: str, mode: str) -> dict[str, float]:
    """The parent run's metrics: best completed value, the baseline's, and trials by outcome."""
    best, baseline = best_and_baseline(runs, metric, mode)
    values = {f"{PREFIX}trials_{outcome}": float(count) for outcome, count in outcome_counts(runs).items()}
    if best is not None:
        values[f"{PREFIX}best_value"] = best.data.metrics[metric]
    if baseline is not None:
        values[f"{PREFIX}baseline_value"] = baseline.data.metrics[metric]
    return values


def parent_note(name: str, runs: list, metric: str, mode: str, experiment_id: str,
                verdict: Verdict | None) -> str:
    """The parent run's markdown description."""
    best, baseline = best_and_baseline(runs, metric, mode)
    lines = [f"**Study {name}**: objective `{metric}` ({mode}).", ""]
    if best is not None:
        lines.append(f"- Best completed trial: [{best.info.run_name}]({run_link(experiment_id, best.info.run_id)}) "
                     f"with {metric} = {show_value(best.data.metrics[metric])}")
    else:
        lines.append("- No searched trial completed its schedule.")
    counts = ", ".join(f"{count} {outcome}" for outcome, count in outcome_counts(runs).items() if count)
    lines.append(f"- Trials: {counts or 'none'}")
    if baseline is not None:
        lines.append(f"- Baseline (cross-attention off): [{baseline.info.run_name}]"
                     f"({run_link(experiment_id, baseline.info.run_id)}) with {metric} = "
                     f"{show_value(baseline.data.metrics[metric])}")
    if verdict is not None:
        lines += ["", "```", format_verdict(verdict), "```"]
    return "\n".join(lines)


def trial_note(run, metric: str, space_keys: list[str]) -> str:
    """One line: the outcome (with the rung or the reason), the objective, the searched params."""
    tags = run.data.tags
    outcome = str(outcome_of(run))
    if outcome == Outcome.PRUNED and tags.get(Tag.PRUNED_AT):
        outcome += f" at {tags[Tag.PRUNED_AT]}"
    elif outcome in (Outcome.FAILED, Outcome.STOPPED) and tags.get(Tag.STOP_REASON):
        outcome += f": {tags[Tag.STOP_REASON].splitlines()[0][:120]}"
    value = run.data.metrics.get(metric)
    parts = [outcome, f"{metric} {show_value(value)}" if value is not None and math.isfinite(value) else ""]
    if is_baseline_run(run):
        parts.append("baseline: cross-attention off")
    else:
        params = [(key, run.data.params.get(key)) for key in space_keys]
        parts.append(", ".join(f"{short_key(key)}={show_value(param_value(text))}" for key, text in params
                               if text is not None))
    return " · ".join(part for part in parts if part)


def summary_ops(client, parent) -> list[dict[str, Any]]:
    """The writes that put the summary on the parent run and a description on every trial's run."""
    tags = parent.data.tags
    metric, mode = objective_of(parent)
    keys = space_keys_of(parent)
    runs = trial_runs(client, parent)
    note = parent_note(tags[Tag.STUDY], runs, metric, mode, parent.info.experiment_id,
                       study_verdict(client, parent))
    now = int(time.time() * 1000)  # a later summary (resume, report) is the latest value of each metric
    metrics = [Metric(key, value, now, 0) for key, value in summary_metrics(runs, metric, mode).items()]
    ops = [batch_op(parent.info.run_id, metrics=metrics, tags={DESCRIPTION: note[:MAX_TAG]})]
    ops += [batch_op(run.info.run_id, tags={DESCRIPTION: trial_note(run, metric, keys)}) for run in runs]
    return ops


def write_summary(tracker: Tracker, parent_run_id: str) -> None:
    """Through the driver's spool: the outcomes it holds reach the server first, then the summary is read
    from the server and written (spooled too, if the server went away in between)."""
    tracker.drain()
    ops = tracker.read(lambda client: summary_ops(client, client.get_run(parent_run_id)), "the study's runs")
    for op in ops:
        tracker.write(op)
