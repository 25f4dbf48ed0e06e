"""Tracking that never costs a trial or a datum: retried calls, and a disk spool while the server is away.

A `Tracker` sends every write (params, metrics with their steps, tags, artifacts, run status) to MLflow. When
the server does not answer (connection refused, timeout, HTTP 5xx), the write goes to a spool on local disk
(`$AACLIP_HOME/spool/<study>/<trial id>/`) instead, and so does every later write until the spool has been
replayed, in order, which is tried again with a growing pause (bounded backoff). A client error (HTTP 4xx:
bad credentials, a bad value) is not retried: it is a bug or a refusal, and raises.

Replays are idempotent: metrics keep the timestamp they were spooled with (MLflow stores a repeated identical
point once), params repeat their value, artifacts overwrite themselves. So a spool left by a killed worker can
be replayed by its restarted attempt, by the driver, or by `aaclip-study resume`, whichever comes first.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import requests
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from study.locks import file_lock
from study.record import mark_trial_outcome

T = TypeVar("T")
WAIT_VARIABLE = "AACLIP_TRACKING_WAIT_S"  # how long a trial waits for the server where it must (open, end)
DEFAULT_WAIT_S = 600.0
FIRST_PAUSE_S, MAX_PAUSE_S = 2.0, 30.0


def tracking_wait_s() -> float:
    return float(os.environ.get(WAIT_VARIABLE, DEFAULT_WAIT_S))


def is_transient(error: BaseException) -> bool:
    """The server is away or overloaded (worth a retry), as opposed to refusing the request."""
    if isinstance(error, MlflowException):
        return error.get_http_status_code() >= 500  # MLflow wraps transport failures as INTERNAL_ERROR
    return isinstance(error, (OSError, requests.RequestException))


# ---------------------------------------------------------------------------------------------------------------
# The operations: plain JSON, so a spool outlives the process that wrote it


def batch_op(run_id: str, *, metrics: list[Metric] = (), params: dict[str, str] | None = None,
             tags: dict[str, str] | None = None) -> dict[str, Any]:
    return {"op": "log_batch", "run_id": run_id,
            "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
            "params": sorted((params or {}).items()), "tags": sorted((tags or {}).items())}


def dataset_input(item: dict[str, Any]) -> DatasetInput:
    """A spooled dataset record (study/datasets.py dataset_record) as MLflow's entity."""
    dataset = Dataset(name=item["name"], digest=item["digest"], source_type=item["source_type"],
                      source=item["source"], profile=item["profile"])
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, item["context"])])


def apply(client: MlflowClient, op: dict[str, Any]) -> None:
    kind, run_id = op["op"], op.get("run_id")
    if kind == "log_batch":
        client.log_batch(run_id, metrics=[Metric(*item) for item in op["metrics"]],
                         params=[Param(*item) for item in op["params"]], tags=[RunTag(*item) for item in op["tags"]])
    elif kind == "log_artifact":
        client.log_artifact(run_id, op["file"], op.get("folder"))
    elif kind == "log_text":
        client.log_text(run_id, op["text"], op["artifact_file"])
    elif kind == "log_inputs":
        client.log_inputs(run_id, datasets=[dataset_input(item) for item in op["datasets"]])
    elif kind == "status":
        client.update_run(run_id, status=op["status"])
    elif kind == "terminate":
        client.set_terminated(run_id, status=op["status"])
    elif kind == "outcome":
        mark_trial_outcome(client, op["experiment_id"], op["study"], op["trial_id"], outcome=op["outcome"],
                           reason=op["reason"], rung=op.get("rung", ""))  # spools older than the rung lack it
    else:
        raise ValueError(f"unknown spooled operation {kind!r}")


class Spool:
    """Operations waiting for the server, in order, in one folder (one writer at a time, by file lock)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.ops_file = self.folder / "ops.jsonl"

    def pending(self) -> bool:
        return self.ops_file.is_file() and self.ops_file.stat().st_size > 0

    def add(self, op: dict[str, Any]) -> None:
        with file_lock(self.folder / "lock"):
            if op["op"] == "log_artifact":  # the original may be gone (a scratch folder) by the replay
                copy = self.folder / "files" / f"{time.time_ns()}" / Path(op["file"]).name
                copy.parent.mkdir(parents=True)
                shutil.copyfile(op["file"], copy)
                op = {**op, "file": str(copy)}
            with open(self.ops_file, "a") as handle:
                handle.write(json.dumps(op) + "\n")

    def replay(self, client: MlflowClient) -> None:
        """Send every spooled operation in order; on a failure keep it and the rest, and raise."""
        with file_lock(self.folder / "lock"):
            if not self.ops_file.is_file():
                return
            ops = self._read()
            for index, op in enumerate(ops):
                try:
                    apply(client, op)
                except BaseException:
                    self._rewrite(ops[index:])
                    raise
            self.ops_file.unlink()
            shutil.rmtree(self.folder / "files", ignore_errors=True)

    def _read(self) -> list[dict[str, Any]]:
        ops = []
        for line in self.ops_file.read_text().splitlines():
            try:
                ops.append(json.loads(line))
            except ValueError:  # the last line of a writer killed mid-write: never sent, nothing to replay
                continue
        return ops

    def _rewrite(self, ops: list[dict[str, Any]]) -> None:
        partial = self.ops_file.with_suffix(".tmp")
        partial.write_text("".join(json.dumps(op) + "\n" for op in ops))
        partial.replace(self.ops_file)


def spool_root(home: Path, study: str) -> Path:
    return Path(home) / "spool" / study


def replay_all(client: MlflowClient, home: Path, study: str) -> list[str]:
    """Replay every spool a study left (dead workers, a dead driver); the folders that still failed."""
    root = spool_root(home, study)
    left = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        try:
            Spool(folder).replay(client)
        except Exception as error:  # noqa: BLE001 - reported, kept on disk for the next replay
            if not is_transient(error):
                raise
            left.append(folder.name)
    return left


class Tracker:
    """Writes that never fail on a transient error (spooled instead), and reads retried for a bounded time.

    `connect` makes a client for wherever the server is now: the embedded server may come back on another
    port, and its record (server.json) says where.
    """

    def __init__(self, connect: Callable[[], MlflowClient], spool: Spool, wait_s: float | None = None,
                 warn: Callable[[str], None] = print):
        self.connect = connect
        self.client = connect()
        self.spool = spool
        self.wait_s = tracking_wait_s() if wait_s is None else wait_s
        self.warn = warn
        self.next_try = 0.0  # monotonic time before which the server is not tried again
        self.pause = FIRST_PAUSE_S

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles the driver's callbacks: no live client inside
        return {**self.__dict__, "client": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.client = self.connect()

    def write(self, op: dict[str, Any]) -> None:
        if self.spool.pending() or time.monotonic() < self.next_try:
            if not self._flush():
                self.spool.add(op)
                return
        try:
            apply(self.client, op)
            self.pause = FIRST_PAUSE_S
        except Exception as error:
            if not is_transient(error):
                raise
            self._server_away(error)
            self.spool.add(op)

    def read(self, call: Callable[[MlflowClient], T], what: str) -> T:
        """call(client), retried with growing pauses for up to wait_s (then the last error is raised)."""
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                return call(self.client)
            except Exception as error:
                if not is_transient(error) or time.monotonic() >= deadline:
                    raise
                self._server_away(error, what)
                time.sleep(min(self.pause, max(0.0, deadline - time.monotonic())))

    def drain(self, wait_s: float | None = None) -> bool:
        """Replay the spool, waiting for the server for up to wait_s; False if some of it is still on disk."""
        deadline = time.monotonic() + (self.wait_s if wait_s is None else wait_s)
        while self.spool.pending():
            self.next_try = 0.0
            if self._flush():
                return True
            if time.monotonic() >= deadline:
                self.warn(f"tracking server still away after {self.wait_s:.0f} s; unsent records kept in "
                          f"{self.spool.folder} (`aaclip-study resume` replays them)")
                return False
            time.sleep(min(self.pause, max(0.0, deadline - time.monotonic())))
        return True

    def _flush(self) -> bool:
        if time.monotonic() < self.next_try:
            return False
        try:
            self.spool.replay(self.client)
        except Exception as error:
            if not is_transient(error):
                raise
            self._server_away(error)
            return False
        self.pause = FIRST_PAUSE_S
        return True

    def _server_away(self, error: BaseException, what: str = "tracking") -> None:
        if self.pause == FIRST_PAUSE_S:
            self.warn(f"{what}: tracking server unreachable ({str(error).splitlines()[0][:200]}); "
                      "retrying, records spooled to disk meanwhile")
        self.next_try = time.monotonic() + self.pause
        self.pause = min(self.pause * 2, MAX_PAUSE_S)
        self.client = self.connect()
