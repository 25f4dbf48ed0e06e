"""MLflow layout of a study: one parent run per study, one child run per trial (DESIGN §5).

Runs are found by tags (study/record.py, which names every tag), never remembered in memory, so every process
(the driver, a trial on another node, a restarted trial, `status` or `export` days later) reaches the same runs:

    parent: aaclip.role=study, aaclip.study=<name>
    child:  aaclip.role=trial, aaclip.study=<name>, aaclip.trial_id=<Ray trial id>, mlflow.parentRunId=<parent>

A restarted trial reopens its run and skips the epochs that run already holds (tag aaclip.last_epoch, moved
only once an epoch's metrics, artifacts and best tags are all written), so a resumed trial continues its curves
without duplicated points and completes whatever its previous attempt left unlogged. Beside the per-epoch
metrics (step = global epoch), each loop record of `fit` is logged as `loop/<metric>` at step = loop: 0 is the
untrained starting point, so those curves show one point per round of feedback. Writes from trials and the
driver go through study/spool.py: retried, and spooled to disk while the server is away.
"""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from aaclip.config import TrainConfig, mlflow_params, param_text
from aaclip.metric_names import GRADIENT_NORMS, IMAGE_ADAPTER_SHARE, LOOP_PREFIX
from aaclip.mlflow_env import EXPERIMENT_KIND
from study.errors import StudyError
from study.record import Outcome, Tag, find_trial_run, recorded_outcome
from study.server import current_uri
from study.spool import Spool, Tracker, batch_op

# The layout's tags under the names the project imports from here (study/record.py owns every tag).
ROLE, STUDY, TRIAL_ID, OUTCOME_BY = Tag.ROLE, Tag.STUDY, Tag.TRIAL_ID, Tag.OUTCOME_BY
HEARTBEAT, DRIVER_STATE = Tag.HEARTBEAT, Tag.DRIVER
PARENT = "mlflow.parentRunId"
HEARTBEAT_EVERY_S, HEARTBEAT_STALE_S = 20.0, 120.0  # status calls a driver silent for longer dead
BATCH = 100  # MLflow's limit of params or tags per log_batch call
METRIC_BATCH = 1000  # MLflow's limit of metrics per log_batch call
LOOP_MARKER = LOOP_PREFIX + "epoch"  # written last of a loop record: the loops already on the server
HISTORY_KEYS = (*GRADIENT_NORMS, IMAGE_ADAPTER_SHARE)  # what a restarted trial's gradient-flow plot reads back


def tracking_client(uri: str) -> MlflowClient:
    try:
        return MlflowClient(tracking_uri=uri)
    except MlflowException as error:  # an unsupported scheme, a refused file store: the user's URI
        reason = str(error).strip().split(". ")[0].split(";")[-1].strip()
        raise StudyError(f"tracking URI {uri!r}: not usable ({reason}); use http(s)://HOST:PORT of an MLflow "
                         "server, or leave it unset for the local server") from None


@dataclass(frozen=True)
class Connector:
    """Makes a client for the tracking server where it is now (picklable: trials and Tune's state carry it).

    With `home` set, the URI is the embedded server of that home, whose record (server.json) is read again at
    every reconnection: a server restarted on another port is found again.
    """

    uri: str
    home: str | None = None

    def __call__(self) -> MlflowClient:
        return tracking_client(current_uri(Path(self.home), self.uri) if self.home else self.uri)

    def tracker(self, spool_folder: Path, warn=print) -> Tracker:
        return Tracker(self, Spool(spool_folder), warn=warn)

    @classmethod
    def for_uri(cls, uri: str, home: Path) -> Connector:
        return cls(uri, str(home) if current_uri(home, None) == uri else None)


# MLflow 3.17's sidebar shows its GenAI or its model-training pages by the link's `workflowType` when it has one,
# else by the browser's localStorage "mlflow.workflowType" (default genai) (server/js: WorkflowTypeProvider). The
# assistant panel that opens on a browser's first visit follows localStorage alone
# ("mlflow.assistant.fab.autoOpenedOnFirstLoad"): no link can keep it closed.
MODEL_TRAINING = {"workflowType": "machine_learning"}


def runs_link(uri: str, experiment_id: str, study: str | None = None, metric: str | None = None,
              mode: str = "max") -> str:
    """The runs table (parent/child nesting); MLflow 3's experiment link opens a GenAI overview instead.

    With `study`, only that study's runs; with `metric`, best first. MLflow 3.17's UI reads these from the
    link's query (server/js: searchFilter, orderByKey as metrics.`KEY`, orderByAsc "true"/"false").
    """
    link = f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs"
    query = {**view_search(study, metric, mode), **MODEL_TRAINING}
    return f"{link}?{urlencode(query, quote_via=quote)}"


def view_search(study: str | None, metric: str | None, mode: str) -> dict[str, str]:
    query = {}
    if study:
        query["searchFilter"] = f"tags.`{STUDY}` = '{study}'"
    if metric:
        query |= {"orderByKey": f"metrics.`{metric}`", "orderByAsc": str(mode == "min").lower()}
    return query


# MLflow 3.17's UI restores a "shared view" (search, sort and columns) from the experiment tag
# mlflow.sharedViewState.<key> when a link carries ?viewStateShareKey=<key> (server/js; plain JSON is read).
# The columns (metrics.`K`, params.`K`, tags.`K`) are what the URL's query alone cannot choose.
SHARED_VIEW = "mlflow.sharedViewState."


def save_study_view(client: MlflowClient, experiment_id: str, study: str, metric: str, mode: str,
                    space_keys: list[str]) -> None:
    """The study's view of the runs table: its runs, best objective first, with the objective, the outcome,
    the rung a pruned trial stopped at and the searched params as columns."""
    columns = [f"metrics.`{metric}`", f"tags.`{Tag.OUTCOME}`", f"tags.`{Tag.PRUNED_AT}`",
               *(f"params.`{key}`" for key in space_keys)]
    # The UI applies widths only to the columns of columnOrder (server/js: applyColumnState over columnOrder).
    state = {**view_search(study, metric, mode), "orderByAsc": mode == "min", "selectedColumns": columns,
             "columnOrder": columns, "columnWidths": {column: header_width(column) for column in columns}}
    client.set_experiment_tag(experiment_id, SHARED_VIEW + study, json.dumps(state))


def header_width(column: str) -> int:
    """Pixels for a column whose header shows its whole key (`cross_attention.image_scale.learnable`), within
    bounds: MLflow's default of 100 px cuts every such key to the same `cross_attention…`."""
    key = column.split("`")[1]
    return min(max(100, 7 * len(key) + 40), 320)  # about 7 px a character, and the sort icon


def study_link(client: MlflowClient, uri: str, experiment_id: str, study: str, metric: str, mode: str) -> str:
    """The link to the study's runs: its saved view where there is one, else the search and sort alone."""
    try:
        saved = SHARED_VIEW + study in client.get_experiment(experiment_id).tags
    except Exception:  # noqa: BLE001 - the server is away: the link without the view still works later
        saved = False
    if saved:
        query = urlencode({"viewStateShareKey": study, **MODEL_TRAINING}, quote_via=quote)
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"
    return runs_link(uri, experiment_id, study, metric, mode)



def ensure_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise StudyError(f"tracking.experiment: MLflow experiment {name!r} is deleted; restore it or rename")
        if not any(experiment.tags.get(key) for key in EXPERIMENT_KIND):  # a user's own choice stays
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, tags=EXPERIMENT_KIND)
    except MlflowException:  # created by another process in the meantime
        return client.get_experiment_by_name(name).experiment_id


def create_parent_run(client: MlflowClient, experiment_id: str, study: str, tags: dict[str, str],
                      params: dict[str, Any]) -> str:
    run = client.create_run(experiment_id, run_name=study, tags={ROLE: "study", STUDY: study, **tags})
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(key, param_text(value)) for key, value in params.items()]
    for start in range(0, len(items), BATCH):
        client.log_batch(run_id, params=items[start:start + BATCH])


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


class TrialRun:
    """The child run of one trial, opened (or reopened) from the process that runs the trial.

    Writes go through a Tracker (study/spool.py): retried, and spooled to disk while the server is away.
    Two markers make a restarted attempt finish what the previous one left: `metrics_through` (the last epoch
    whose metrics are on the server, read from the `epoch` metric) and the tag `aaclip.last_epoch`, which moves
    only after that epoch's artifacts and best tags are written. An epoch between the two gets its evaluation
    logged again, but not its metrics (no step is written twice).
    """

    def __init__(self, tracker: Tracker, run_id: str, last_epoch: int, metrics_through: int,
                 loops_through: int = -1):
        self.tracker = tracker
        self.run_id = run_id
        self.last_epoch = last_epoch  # epochs up to here are completely logged
        self.metrics_through = max(metrics_through, last_epoch)
        self.loops_through = loops_through  # the last loop record on the server; -1: none

    @classmethod
    def open(cls, tracker: Tracker, *, experiment_id: str, parent_run_id: str, study: str,
             trial_id: str, trial_name: str, config: TrainConfig, baseline: bool, role: str = "trial",
             tags: dict[str, str] | None = None) -> TrialRun:
        tracker.drain()  # what a killed attempt spooled counts before the markers are read
        tags = {ROLE: role, STUDY: study, TRIAL_ID: trial_id, PARENT: parent_run_id,
                Tag.BASELINE: str(baseline).lower(), **(tags or {})}

        def find_or_create(client: MlflowClient):  # searched again on every retry: one run per trial
            run = find_trial_run(client, experiment_id, study, trial_id)
            return run or client.create_run(experiment_id, run_name=trial_name, tags=tags)

        run = tracker.read(find_or_create, "opening the trial's run")
        run_id = run.info.run_id
        params = mlflow_params(config)
        missing = {key: value for key, value in params.items() if key not in run.data.params}
        for keys in _chunks(list(missing), BATCH):  # a retried attempt logs whatever an earlier one did not
            tracker.write(batch_op(run_id, params={key: missing[key] for key in keys}))
        if missing:
            tracker.write({"op": "log_text", "run_id": run_id, "text": config.to_yaml(),
                           "artifact_file": "config.yaml"})
        run_tags = run.data.tags
        epochs, loops = tracker.read(lambda client: (client.get_metric_history(run_id, "epoch"),
                                                     client.get_metric_history(run_id, LOOP_MARKER)),
                                     "reading the run")
        trial_run = cls(tracker, run_id, int(run_tags.get(Tag.LAST_EPOCH, 0)),
                        max((point.step for point in epochs), default=0), max((p.step for p in loops), default=-1))
        # The driver recorded this trial's end already (a resumed study runs it again): a re-run does not undo it.
        ended = recorded_outcome(run_tags) is not None
        if not ended:
            tracker.write({"op": "status", "run_id": run_id, "status": "RUNNING"})
        trial_run.set_tags({Tag.NODE: _node(), Tag.WORKER_PID: str(os.getpid()),
                            **({} if ended else {Tag.OUTCOME: Outcome.RUNNING})})
        return trial_run

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.tracker.write(batch_op(self.run_id, tags={key: str(value)[:8000] for key, value in tags.items()}))

    def log_epoch(self, metrics: dict[str, Any]) -> bool:
        """Log one epoch's metrics at step = global epoch (once); False if the epoch was completely logged
        before a restart, True if its evaluation logging and `mark_epoch` are still to do."""
        epoch = int(metrics["epoch"])
        if epoch <= self.last_epoch:
            return False
        if epoch > self.metrics_through:
            now = int(time.time() * 1000)  # a NaN loss is a finding: logged
            self.log_metrics([Metric(key, value, now, epoch) for key, value in numeric_metrics(metrics).items()
                              if math.isfinite(value) or key.startswith(("train/", "grad/"))])
            self.metrics_through = epoch
        return True

    def log_loop(self, record: dict[str, Any]) -> bool:
        """Log a loop record (fit's on_loop) as `loop/<key>` at step = loop, once: False if an earlier attempt
        of the trial logged it (loop 0 again after a restart without checkpoint, a loop end whose epoch is redone)."""
        loop = int(record["loop"])
        if loop <= self.loops_through:
            return False
        now = int(time.time() * 1000)
        values = [Metric(LOOP_PREFIX + key, value, now, loop) for key, value in numeric_metrics(record).items()
                  if key != "loop" and math.isfinite(value)]
        self.log_metrics(sorted(values, key=lambda metric: metric.key == LOOP_MARKER))  # the marker last
        self.loops_through = loop
        return True

    def log_metrics(self, values: list[Metric]) -> None:
        for start in range(0, len(values), METRIC_BATCH):
            self.tracker.write(batch_op(self.run_id, metrics=values[start:start + METRIC_BATCH]))

    def mark_epoch(self, epoch: int) -> None:
        """Everything of this epoch is written (or spooled, which keeps the order): move the marker last."""
        self.set_tags({Tag.LAST_EPOCH: epoch})
        self.last_epoch = epoch

    def metric_history(self, keys: tuple[str, ...] = HISTORY_KEYS) -> list[dict[str, float]]:
        """Rows {epoch, key: value} already logged (empty for a fresh run)."""
        if self.metrics_through == 0:
            return []
        rows: dict[int, dict[str, float]] = {}
        for key in keys:
            history = self.tracker.read(lambda client: client.get_metric_history(self.run_id, key), "history")
            for point in history:
                rows.setdefault(point.step, {"epoch": float(point.step)})[key] = point.value
        return [rows[step] for step in sorted(rows)]

    def best_value(self) -> float | None:
        run = self.tracker.read(lambda client: client.get_run(self.run_id), "reading the run")
        text = run.data.tags.get(Tag.BEST_VALUE)
        return float(text) if text else None

    def log_file(self, path: Path, folder: str | None = None) -> None:
        if Path(path).is_file():
            self.tracker.write({"op": "log_artifact", "run_id": self.run_id, "file": str(path), "folder": folder})

    def finish(self, status: str = "FINISHED") -> None:
        """Close the run, and wait (bounded) for anything spooled to reach the server."""
        self.tracker.write({"op": "terminate", "run_id": self.run_id, "status": status})
        self.tracker.drain()


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def _node() -> str:
    # Ray as the process has it: every trial's worker has imported it; status, export and report never do.
    # Only a connected Ray is asked: get_runtime_context() would otherwise start one (or join whatever cluster
    # this machine last started, and hang if it is gone).
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()  # outside a Ray worker (tests, a local debug run): the host is the node
