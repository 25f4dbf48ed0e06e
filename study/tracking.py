"""MLflow layout of a study: one parent run per study, one child run per trial (DESIGN §5).

Runs are found by tags, never remembered in memory, so every process (the driver, a trial on another node, a
restarted trial, `status` or `export` days later) reaches the same runs:

    parent: aaclip.role=study, aaclip.study=<name>
    child:  aaclip.role=trial, aaclip.study=<name>, aaclip.trial_id=<Ray trial id>, mlflow.parentRunId=<parent>

A restarted trial reopens its run and skips the epochs that run already holds (tag aaclip.last_epoch), so a
resumed trial continues its curves without duplicated points.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from aaclip.config import TrainConfig, flatten
from study.errors import StudyError

ROLE, STUDY, TRIAL_ID = "aaclip.role", "aaclip.study", "aaclip.trial_id"
PARENT = "mlflow.parentRunId"
BATCH = 100
HISTORY_KEYS = ("grad/text_adapter", "grad/text_cross_attn", "grad/image_adapter", "grad/image_cross_attn",
                "grad/image_adapter_share")  # MLflow's limit of params or tags per log_batch call


def tracking_client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def runs_link(uri: str, experiment_id: str) -> str:
    """The runs table (parent/child nesting); MLflow 3's experiment link opens a GenAI overview instead."""
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs"


def ensure_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise StudyError(f"tracking.experiment: MLflow experiment {name!r} is deleted; restore it or rename")
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created by another process in the meantime
        return client.get_experiment_by_name(name).experiment_id


def _search(client: MlflowClient, experiment_ids: list[str], tags: dict[str, str]) -> list[Any]:
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    return client.search_runs(experiment_ids, filter_string=query, max_results=5000,
                              order_by=["attributes.start_time ASC"])


def _all_experiment_ids(client: MlflowClient) -> list[str]:
    return [experiment.experiment_id for experiment in client.search_experiments()]


def find_parent_run(client: MlflowClient, study: str, experiment_id: str | None = None):
    """The study's parent run, or None."""
    experiment_ids = [experiment_id] if experiment_id else _all_experiment_ids(client)
    runs = _search(client, experiment_ids, {ROLE: "study", STUDY: study}) if experiment_ids else []
    return runs[0] if runs else None


def require_parent_run(client: MlflowClient, study: str):
    run = find_parent_run(client, study)
    if run is None:
        raise StudyError(f"study {study!r}: not found on the tracking server {client.tracking_uri} "
                         "(check the name, or pass the --tracking-uri the study ran with)")
    return run


def create_parent_run(client: MlflowClient, experiment_id: str, study: str, tags: dict[str, str],
                      params: dict[str, Any]) -> str:
    run = client.create_run(experiment_id, run_name=study, tags={ROLE: "study", STUDY: study, **tags})
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def trial_runs(client: MlflowClient, parent) -> list[Any]:
    """Every child run of a study, oldest first."""
    return _search(client, [parent.info.experiment_id], {ROLE: "trial", STUDY: parent.data.tags[STUDY]})


def runs_with_role(client: MlflowClient, parent, role: str) -> list[Any]:
    """The study's child runs of one role (trial; confirm, twin or base for the confirmation), oldest first."""
    return _search(client, [parent.info.experiment_id], {ROLE: role, STUDY: parent.data.tags[STUDY]})


def find_trial_run(client: MlflowClient, experiment_id: str, study: str, trial_id: str):
    """The child run of a Ray trial, whatever its role (search trials and confirmation runs alike)."""
    runs = _search(client, [experiment_id], {STUDY: study, TRIAL_ID: trial_id})
    return runs[0] if runs else None


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(key, _param_text(value)) for key, value in params.items()]
    for start in range(0, len(items), BATCH):
        client.log_batch(run_id, params=items[start:start + BATCH])


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:6000]


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


class TrialRun:
    """The child run of one trial, opened (or reopened) from the process that runs the trial."""

    def __init__(self, client: MlflowClient, run_id: str, last_epoch: int):
        self.client = client
        self.run_id = run_id
        self.last_epoch = last_epoch  # epochs up to here are already logged (a restarted trial)

    @classmethod
    def open(cls, client: MlflowClient, *, experiment_id: str, parent_run_id: str, study: str,
             trial_id: str, trial_name: str, config: TrainConfig, baseline: bool, role: str = "trial",
             tags: dict[str, str] | None = None) -> TrialRun:
        run = find_trial_run(client, experiment_id, study, trial_id)
        if run is None:
            tags = {ROLE: role, STUDY: study, TRIAL_ID: trial_id, PARENT: parent_run_id,
                    "aaclip.baseline": str(baseline).lower(), **(tags or {})}
            run = client.create_run(experiment_id, run_name=trial_name, tags=tags)
            log_params(client, run.info.run_id, flatten(config.to_dict()))
            client.log_text(run.info.run_id, config.to_yaml(), "config.yaml")
        else:
            client.update_run(run.info.run_id, status="RUNNING")
        trial_run = cls(client, run.info.run_id, int(run.data.tags.get("aaclip.last_epoch", 0)))
        trial_run.set_tags({"aaclip.node": _node(), "aaclip.worker_pid": str(os.getpid()),
                            "aaclip.outcome": "running"})
        return trial_run

    def set_tags(self, tags: dict[str, Any]) -> None:
        items = [RunTag(key, str(value)[:8000]) for key, value in tags.items()]
        self.client.log_batch(self.run_id, tags=items)

    def log_epoch(self, metrics: dict[str, Any]) -> bool:
        """Log one epoch's metrics at step = global epoch; False if this epoch was logged before a restart."""
        epoch = int(metrics["epoch"])
        if epoch <= self.last_epoch:
            return False
        now = int(time.time() * 1000)
        values = [Metric(key, value, now, epoch) for key, value in numeric_metrics(metrics).items()
                  if math.isfinite(value) or key.startswith(("train/", "grad/"))]  # a NaN loss is a finding
        self.client.log_batch(self.run_id, metrics=values, tags=[RunTag("aaclip.last_epoch", str(epoch))])
        self.last_epoch = epoch
        return True

    def metric_history(self, keys: tuple[str, ...] = HISTORY_KEYS) -> list[dict[str, float]]:
        """Rows {epoch, key: value} already logged (empty for a fresh run)."""
        if self.last_epoch == 0:
            return []
        rows: dict[int, dict[str, float]] = {}
        for key in keys:
            for point in self.client.get_metric_history(self.run_id, key):
                rows.setdefault(point.step, {"epoch": float(point.step)})[key] = point.value
        return [rows[step] for step in sorted(rows)]

    def best_value(self) -> float | None:
        text = self.client.get_run(self.run_id).data.tags.get("aaclip.best_value")
        return float(text) if text else None

    def log_file(self, path: Path, folder: str | None = None) -> None:
        if Path(path).is_file():
            self.client.log_artifact(self.run_id, str(path), folder)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def _node() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (tests, a local debug run): the host is the node
        return socket.gethostname()


def mark_trial_outcome(client: MlflowClient, experiment_id: str, study: str, trial_id: str, *,
                       outcome: str, reason: str = "") -> None:
    """Record how a trial ended, from the driver (a stopped worker cannot always close its own run)."""
    run = find_trial_run(client, experiment_id, study, trial_id)
    if run is None:
        return
    tags = [RunTag("aaclip.outcome", outcome)]
    if reason:
        tags.append(RunTag("aaclip.stop_reason", reason[:8000]))
    client.log_batch(run.info.run_id, tags=tags)
    status = {"completed": "FINISHED", "failed": "FAILED"}.get(outcome, "KILLED")
    client.set_terminated(run.info.run_id, status=status)
