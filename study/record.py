"""The study's record in MLflow: what its runs carry, how a trial's end is named, which trial is best (DESIGN §9).

One owner for the vocabulary that every part of a study reads and writes: the tags (`Tag`), the trial outcomes
(`Outcome`) and the MLflow run status each ends with, how an ended Ray trial's outcome is decided and recorded,
which trial is best, how a study's runs are found, and how a study is rebuilt from its parent run. The launch
writes the parent's tags, the trials and the driver write outcomes, and status, export, report, the confirmation
and resume read them, all through here.

Nothing here imports Ray or Optuna: `status`, `export` and `report` work from any machine that reaches the
tracking server. Tags are strings on the wire: `Tag` and `Outcome` are StrEnums, equal to their values.
"""
from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from study.errors import StudyError
from study.spec import Study, parse_study

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10: the same behaviour, spelled out
    from enum import Enum

    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return self.value

        def __format__(self, spec: str) -> str:
            return self.value.__format__(spec)


class Tag(StrEnum):
    """Every `aaclip.*` tag a study writes. Where a tag lives: [p] the parent run, [t] a trial's child run."""

    ROLE = "aaclip.role"  # [p] study; [t] trial, or confirm | twin | base for the confirmation (study/confirm.py)
    STUDY = "aaclip.study"  # [p, t] the study's name
    TRIAL_ID = "aaclip.trial_id"  # [t] the Ray trial id
    BASELINE = "aaclip.baseline"  # [t] "true" for the base model with cross-attention off
    OPTUNA_TRIAL = "aaclip.optuna_trial"  # [t] the Optuna trial number (optuna-dashboard)
    OUTCOME = "aaclip.outcome"  # [t] an Outcome
    OUTCOME_BY = "aaclip.outcome_by"  # [t] "driver": the recorded end of the trial (the worker's is provisional)
    STOP_REASON = "aaclip.stop_reason"  # [t] why a trial stopped early or failed
    PRUNED_AT = "aaclip.pruned_at"  # [t] the rung a pruned trial stopped at, e.g. "loop 1"
    LAST_EPOCH = "aaclip.last_epoch"  # [t] epochs up to here are completely logged (study/tracking.py TrialRun)
    BEST_VALUE = "aaclip.best_value"  # [t] the best evaluated objective so far (repr of a float)
    BEST_EPOCH = "aaclip.best_epoch"  # [t] the epoch of that value
    SCHEDULE = "aaclip.schedule"  # [t] the epochs of each loop's stages (aaclip.schedule.describe_epochs)
    WARNINGS = "aaclip.warnings"  # [t] what the trial found suspicious (aaclip.notices)
    NODE = "aaclip.node"  # [t] the Ray node (or host) of the trial's latest attempt
    WORKER_PID = "aaclip.worker_pid"  # [t] its process
    CONFIRM_RANK = "aaclip.confirm_rank"  # [t] confirmation: the configuration's rank in the search
    CONFIRM_SEED = "aaclip.confirm_seed"  # [t] confirmation: the fresh seed
    CONFIRM_SOURCE = "aaclip.confirm_source"  # [t] confirmation: the search trial it came from (run name)
    HEARTBEAT = "aaclip.heartbeat"  # [p] unix seconds of the driver's last pulse
    DRIVER = "aaclip.driver"  # [p] finished | interrupted | crashed, once the driver ends
    LAUNCH = "aaclip.launch"  # [p] "failed": a launch abandoned before its first trial
    STORAGE_PATH = "aaclip.storage_path"  # [p] the Ray experiment folder (what resume restores)
    OPTUNA_STORAGE = "aaclip.optuna_storage"  # [p] the Optuna storage URL, password hidden
    OBJECTIVE = "aaclip.objective"  # [p] the objective's metric
    MODE = "aaclip.mode"  # [p] max | min
    TIME_ATTR = "aaclip.time_attr"  # [p] ASHA's time attribute (loop or epoch)
    SPEC_SOURCE = "aaclip.spec_source"  # [p] the spec file the study was launched from
    SPACE_KEYS = "aaclip.space_keys"  # [p] the searched keys, comma-separated
    CONFIRM_PATH = "aaclip.confirm_path"  # [p] the confirmation Tuner's Ray folder


class Outcome(StrEnum):
    """How a trial's run reads (tag aaclip.outcome)."""

    RUNNING = "running"  # the worker's provisional tag, and what an untagged run reads as
    COMPLETED = "completed"  # ran its whole schedule
    PRUNED = "pruned"  # stopped by ASHA at a rung
    STOPPED = "stopped"  # stopped by the gradient guard
    FAILED = "failed"  # raised an error
    INTERRUPTED = "interrupted"  # the driver stopped (Ctrl-C, SIGTERM); `aaclip-study resume` continues it


FINAL_OUTCOMES = (Outcome.COMPLETED, Outcome.PRUNED, Outcome.STOPPED, Outcome.FAILED)
PRUNED_AT = Tag.PRUNED_AT
# A pruned trial did what ASHA asked of it: FINISHED, told from a completed one by its outcome tag, never shown
# with the red cross of a crash. A guard-stopped or interrupted trial did not run as planned: KILLED.
RUN_STATUS = {Outcome.COMPLETED: "FINISHED", Outcome.PRUNED: "FINISHED", Outcome.FAILED: "FAILED"}
# How each ended outcome reads to Optuna (the searcher tells it; the report rebuilds a study from it): names of
# optuna.trial.TrialState, so that this module does not import Optuna.
OPTUNA_STATE = {Outcome.COMPLETED: "COMPLETE", Outcome.PRUNED: "PRUNED", Outcome.STOPPED: "PRUNED",
                Outcome.FAILED: "FAIL"}
# Tune's result key that the last epoch of a trial's schedule carries (study/trainable.py): the trial ran it all.
COMPLETED_KEY = "trial/completed"


def run_status(outcome: str) -> str:
    """The MLflow run status that a trial's recorded outcome ends its run with."""
    return RUN_STATUS.get(outcome, "KILLED")


# ---------------------------------------------------------------------------------------------------------------
# A trial's outcome


def trial_outcome(result: dict[str, Any] | None, *, error: str | None = None, stop_reason: str | None = None,
                  time_attr: str = "") -> tuple[Outcome, str]:
    """(outcome, reason) of a trial that Ray ended, from its last result: failed (with the error), completed
    (the result says it ran its whole schedule), stopped (the guard's reason), else pruned by ASHA at its rung."""
    if error is not None:
        return Outcome.FAILED, error
    if (result or {}).get(COMPLETED_KEY):
        return Outcome.COMPLETED, ""
    if stop_reason:
        return Outcome.STOPPED, stop_reason
    rung = reached_rung(result, time_attr)
    return Outcome.PRUNED, f"ASHA: below the rung's cutoff{' at ' + rung if rung else ''}"


def reached_rung(result: dict[str, Any] | None, time_attr: str) -> str:
    """Where a trial stopped, e.g. "loop 1" ("" when it reported no result)."""
    reached = (result or {}).get(time_attr)
    return f"{time_attr} {int(reached)}" if isinstance(reached, (int, float)) else ""


def outcome_of(run) -> str:
    """A trial run's outcome as tagged (running until the worker or the driver says otherwise)."""
    return run.data.tags.get(Tag.OUTCOME, Outcome.RUNNING)


def recorded_outcome(tags: dict[str, str]) -> str | None:
    """The end the driver recorded on a trial's run, or None: the worker's own tag is provisional."""
    outcome = tags.get(Tag.OUTCOME)
    return outcome if tags.get(Tag.OUTCOME_BY) == "driver" and outcome in FINAL_OUTCOMES else None


def is_baseline_run(run) -> bool:
    return run.data.tags.get(Tag.BASELINE) == "true"


def mark_trial_outcome(client: MlflowClient, experiment_id: str, study: str, trial_id: str, *,
                       outcome: str, reason: str = "", rung: str = "") -> None:
    """Record how a trial ended, from the driver (a stopped worker cannot always close its own run).

    The first outcome the driver records stands (Optuna, too, keeps its first verdict): a trial that a resumed
    study runs again after its end was recorded keeps that end, so MLflow, Optuna and `status` agree.
    """
    run = find_trial_run(client, experiment_id, study, trial_id)
    if run is None:
        return
    recorded = recorded_outcome(run.data.tags)
    if recorded is not None:
        outcome = recorded
    else:
        items = [RunTag(Tag.OUTCOME, outcome), RunTag(Tag.OUTCOME_BY, "driver")]
        if reason:
            items.append(RunTag(Tag.STOP_REASON, reason[:8000]))
        if outcome == Outcome.PRUNED and rung:
            items.append(RunTag(Tag.PRUNED_AT, rung))
        client.log_batch(run.info.run_id, tags=items)
    client.set_terminated(run.info.run_id, status=run_status(outcome))


def recorded_outcomes(client: MlflowClient, parent) -> dict[str, str]:
    """trial id -> the outcome the driver recorded, for every trial whose end is on record."""
    recorded = {run.data.tags[Tag.TRIAL_ID]: recorded_outcome(run.data.tags) for run in trial_runs(client, parent)}
    return {trial_id: outcome for trial_id, outcome in recorded.items() if outcome is not None}


# ---------------------------------------------------------------------------------------------------------------
# The best trial


def final_value(run, metric: str) -> float | None:
    """The objective at the end of a run that finished its schedule, else None."""
    value = run.data.metrics.get(metric)
    if outcome_of(run) != Outcome.COMPLETED or value is None or not math.isfinite(value):
        return None
    return value


def ranked_trials(runs: list, metric: str, mode: str, *, with_baseline: bool = False) -> list:
    """Trials that ran their whole schedule with a finite objective, best final objective first; the baseline
    only `with_baseline` (it is a configuration one may export, but not a point of the search)."""
    completed = [run for run in runs if (with_baseline or not is_baseline_run(run))
                 and final_value(run, metric) is not None]
    sign = 1.0 if mode == "max" else -1.0
    return sorted(completed, key=lambda run: -sign * run.data.metrics[metric])


def best_trial(runs: list, metric: str, mode: str, *, with_baseline: bool = False):
    """The completed trial with the best final objective, or None (see ranked_trials)."""
    ranked = ranked_trials(runs, metric, mode, with_baseline=with_baseline)
    return ranked[0] if ranked else None


def best_and_baseline(runs: list, metric: str, mode: str):
    """The best completed searched run and the completed baseline run (each None if there is none)."""
    baseline = next((run for run in runs if is_baseline_run(run) and final_value(run, metric) is not None), None)
    return best_trial(runs, metric, mode), baseline


# ---------------------------------------------------------------------------------------------------------------
# Finding a study's runs: by tags, never remembered in memory (study/tracking.py says why)


def _search(client: MlflowClient, experiment_ids: list[str], tags: dict[str, str]) -> list[Any]:
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    return client.search_runs(experiment_ids, filter_string=query, max_results=5000,
                              order_by=["attributes.start_time ASC"])


def _all_experiment_ids(client: MlflowClient) -> list[str]:
    return [experiment.experiment_id for experiment in client.search_experiments()]


def find_parent_run(client: MlflowClient, study: str, experiment_id: str | None = None):
    """The study's parent run, or None."""
    experiment_ids = [experiment_id] if experiment_id else _all_experiment_ids(client)
    runs = _search(client, experiment_ids, {Tag.ROLE: "study", Tag.STUDY: study}) if experiment_ids else []
    return runs[0] if runs else None


def require_parent_run(client: MlflowClient, study: str):
    run = find_parent_run(client, study)
    if run is None:
        raise StudyError(f"study {study!r}: not found on the tracking server {client.tracking_uri} "
                         "(check the name, or pass the --tracking-uri the study ran with)")
    return run


def trial_runs(client: MlflowClient, parent) -> list[Any]:
    """Every child run of a study, oldest first."""
    return _search(client, [parent.info.experiment_id], {Tag.ROLE: "trial", Tag.STUDY: parent.data.tags[Tag.STUDY]})


def runs_with_role(client: MlflowClient, parent, role: str) -> list[Any]:
    """The study's child runs of one role (trial; confirm, twin or base for the confirmation), oldest first."""
    return _search(client, [parent.info.experiment_id], {Tag.ROLE: role, Tag.STUDY: parent.data.tags[Tag.STUDY]})


def find_trial_run(client: MlflowClient, experiment_id: str, study: str, trial_id: str):
    """The child run of a Ray trial, whatever its role (search trials and confirmation runs alike)."""
    runs = _search(client, [experiment_id], {Tag.STUDY: study, Tag.TRIAL_ID: trial_id})
    return runs[0] if runs else None


# ---------------------------------------------------------------------------------------------------------------
# The parent run


def parent_tags(study: Study, storage_path: str, optuna_storage: str) -> dict[str, str]:
    """What the parent run carries for status, export, report and resume to read back (see the readers below)."""
    spec = study.spec
    return {Tag.STORAGE_PATH: storage_path, Tag.OPTUNA_STORAGE: optuna_storage,
            Tag.OBJECTIVE: spec.objective.metric, Tag.MODE: spec.objective.mode,
            Tag.TIME_ATTR: spec.scheduler.time_attr, Tag.SPEC_SOURCE: study.source,
            Tag.SPACE_KEYS: ",".join(spec.space)}


def objective_of(parent) -> tuple[str, str]:
    """(metric, mode) of the study's objective."""
    return parent.data.tags[Tag.OBJECTIVE], parent.data.tags[Tag.MODE]


def space_keys_of(parent) -> list[str]:
    """The searched keys, in the spec's order."""
    return [key for key in parent.data.tags.get(Tag.SPACE_KEYS, "").split(",") if key]


SPEC_ARTIFACT, BASE_ARTIFACT = "study/spec.yaml", "study/base.yaml"


def study_from_parent(client, parent) -> Study:
    """The study exactly as launched: its spec and resolved base, as logged to the parent run."""
    with tempfile.TemporaryDirectory() as folder:
        spec_file = client.download_artifacts(parent.info.run_id, SPEC_ARTIFACT, folder)
        base_file = client.download_artifacts(parent.info.run_id, BASE_ARTIFACT, folder)
        data = yaml.safe_load(Path(spec_file).read_text())
        data["base"], data["overrides"] = str(base_file), {}
        study = parse_study(data, source=parent.data.tags.get(Tag.SPEC_SOURCE, "spec"))
        study.base_config  # noqa: B018 - resolved while the files exist
    return study
