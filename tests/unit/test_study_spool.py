"""Tracking writes survive a server that is away: spooled to disk in order, replayed once, nothing twice.

Real MLflow on both sides: "away" is an HTTP tracking URI on a loopback port where nothing listens
(connection refused, as for a stopped server), "back" is a real SQLite tracking store.
"""
from __future__ import annotations

import socket

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from aaclip.config import apply_overrides, flatten, load_config, validate_config
from study.spool import Spool, Tracker, batch_op
from study.tracking import TrialRun


class Switchable:
    """Where the tracking server is: away (nothing listens) until `back()`."""

    def __init__(self, store: str):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.away = f"http://127.0.0.1:{probe.getsockname()[1]}"
        self.store = store
        self.uri = self.away

    def back(self) -> None:
        self.uri = self.store

    def __call__(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One real SQLite store for the module (creating one costs seconds); every test uses runs of its own."""
    folder = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast: the retries are the Tracker's
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri)
        experiment = client.create_experiment("spool", artifact_location=str(folder / "artifacts"))
        yield uri, client, experiment


def test_writes_spool_while_away_and_replay_in_order_once(store, tmp_path):
    uri, client, experiment = store
    run_id = client.create_run(experiment).info.run_id
    target = Switchable(uri)
    tracker = Tracker(target, Spool(tmp_path / "spool"), wait_s=5.0, warn=lambda line: None)
    artifact = tmp_path / "plot.png"
    artifact.write_bytes(b"png")
    for step in (1, 2):
        tracker.write(batch_op(run_id, metrics=[Metric("loss", 1.0 / step, 1000 + step, step)]))
    tracker.write(batch_op(run_id, params={"lr": "0.1"}, tags={"aaclip.last_epoch": "2"}))
    tracker.write({"op": "log_artifact", "run_id": run_id, "file": str(artifact), "folder": None})
    artifact.unlink()  # a scratch folder removed before the server came back: the spool kept a copy
    tracker.write({"op": "terminate", "run_id": run_id, "status": "FINISHED"})
    assert len((tmp_path / "spool" / "ops.jsonl").read_text().splitlines()) == 5
    assert client.get_run(run_id).info.status == "RUNNING"  # nothing reached the store yet

    target.back()
    assert tracker.drain()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    assert run.data.tags["aaclip.last_epoch"] == "2"
    assert [(p.step, p.value) for p in client.get_metric_history(run_id, "loss")] == [(1, 1.0), (2, 0.5)]
    assert [item.path for item in client.list_artifacts(run_id)] == ["plot.png"]
    assert not Spool(tmp_path / "spool").pending()

    # A replay of the same records (a spool left by a worker killed after sending) adds nothing.
    again = Spool(tmp_path / "again")
    again.add(batch_op(run_id, metrics=[Metric("loss", 0.5, 1002, 2)]))
    again.replay(client)
    assert [p.step for p in client.get_metric_history(run_id, "loss")] == [1, 2]


def test_client_errors_are_raised_not_spooled(store, tmp_path):
    uri, client, experiment = store
    tracker = Tracker(lambda: MlflowClient(tracking_uri=uri), Spool(tmp_path / "spool"), wait_s=1.0)
    with pytest.raises(Exception, match="(?i)run"):
        tracker.write(batch_op("no-such-run", params={"lr": "0.1"}))
    assert not Spool(tmp_path / "spool").pending()


def test_reopened_run_logs_missing_params_and_redoes_an_unmarked_epoch(store, tmp_path):
    uri, client, experiment = store
    config = load_config("tiny")
    tracker = Tracker(lambda: MlflowClient(tracking_uri=uri), Spool(tmp_path / "spool"), wait_s=1.0)
    tags = {"aaclip.role": "trial", "aaclip.study": "s", "aaclip.trial_id": "t1", "mlflow.parentRunId": "p"}
    run_id = client.create_run(experiment, tags=tags).info.run_id  # a first attempt died before its params
    client.log_metric(run_id, "epoch", 1.0, step=1)  # ...and after epoch 1's metrics, before its marker

    run = TrialRun.open(tracker, experiment_id=experiment, parent_run_id="p", study="s", trial_id="t1",
                        trial_name="s-001", config=config, baseline=False)
    assert run.run_id == run_id, "the same run is reopened"
    assert set(flatten(config.to_dict())) <= set(client.get_run(run_id).data.params)
    assert (run.last_epoch, run.metrics_through) == (0, 1)
    assert run.log_epoch({"epoch": 1.0, "train/loss": 0.3})  # its evaluation logging is still to do...
    assert [p.step for p in client.get_metric_history(run_id, "epoch")] == [1]  # ...but not its metrics
    run.mark_epoch(1)
    assert not run.log_epoch({"epoch": 1.0})
    assert client.get_run(run_id).data.tags["aaclip.last_epoch"] == "1"


def test_loop_records_logged_once_at_step_loop_and_no_scale_params_without_cross_attention(store, tmp_path):
    uri, client, experiment = store
    off = validate_config(apply_overrides(load_config("tiny").to_dict(), {"cross_attention.enabled": False}))
    tracker = Tracker(lambda: MlflowClient(tracking_uri=uri), Spool(tmp_path / "spool"), wait_s=1.0)

    def attempt() -> TrialRun:
        return TrialRun.open(tracker, experiment_id=experiment, parent_run_id="p", study="s", trial_id="loops",
                             trial_name="s-baseline", config=off, baseline=True)

    run = attempt()
    params = client.get_run(run.run_id).data.params
    assert params["cross_attention.enabled"] == "false" and "seed" in params
    assert not [key for key in params if key.startswith("cross_attention.") and key != "cross_attention.enabled"]
    untrained = {"loop": 0.0, "epoch": 0.0, "val/pixel_auroc": 40.0}
    assert run.log_loop(untrained)
    again = attempt()  # restarted without a checkpoint: fit evaluates loop 0 again, and it is not logged twice
    assert again.run_id == run.run_id and again.loops_through == 0 and not again.log_loop(untrained)
    assert again.log_loop({"loop": 1.0, "epoch": 3.0, "val/pixel_auroc": 55.0, "val/image_auroc": float("nan")})
    assert not again.log_loop({"loop": 1.0, "epoch": 3.0, "val/pixel_auroc": 55.0})  # the loop end's epoch redone
    history = client.get_metric_history(run.run_id, "loop/val/pixel_auroc")
    assert [(point.step, point.value) for point in history] == [(0, 40.0), (1, 55.0)]
    assert [(p.step, p.value) for p in client.get_metric_history(run.run_id, "loop/epoch")] == [(0, 0.0), (1, 3.0)]
    assert {key for key in client.get_run(run.run_id).data.metrics} == {"loop/epoch", "loop/val/pixel_auroc"}


def test_a_line_torn_by_a_killed_writer_is_skipped(store, tmp_path):
    uri, client, experiment = store
    run_id = client.create_run(experiment).info.run_id
    spool = Spool(tmp_path / "spool")
    spool.add(batch_op(run_id, tags={"kept": "yes"}))
    with open(spool.ops_file, "a") as handle:
        handle.write('{"op": "log_batch", "run_id": "')  # SIGKILL in the middle of a write
    spool.replay(client)
    assert client.get_run(run_id).data.tags["kept"] == "yes" and not spool.pending()


def test_resume_replays_what_dead_workers_and_the_driver_left(store, tmp_path):
    """`resume` calls replay_all first: every trial's spool of the study (and only of that study) is sent,
    in order, and emptied; while the server is still away, the folders are kept and named."""
    from study.spool import replay_all, spool_root

    uri, client, experiment = store
    runs = {name: client.create_run(experiment).info.run_id for name in ("trial-a", "trial-b", "other")}
    for name in ("trial-a", "trial-b"):
        spool = Spool(spool_root(tmp_path, "study") / name)
        for step in (1, 2):
            spool.add(batch_op(runs[name], metrics=[Metric("val/pixel_auroc", 50.0 + step, 1000 + step, step)]))
        spool.add({"op": "terminate", "run_id": runs[name], "status": "FINISHED"})
    Spool(spool_root(tmp_path, "another-study") / "other").add(batch_op(runs["other"], params={"lr": "0.1"}))

    away = Switchable(uri)  # still away: nothing is lost, both folders are reported
    assert replay_all(away(), tmp_path, "study") == ["trial-a", "trial-b"]
    assert Spool(spool_root(tmp_path, "study") / "trial-a").pending()

    assert replay_all(client, tmp_path, "study") == []
    for name in ("trial-a", "trial-b"):
        history = client.get_metric_history(runs[name], "val/pixel_auroc")
        assert [(point.step, point.value) for point in history] == [(1, 51.0), (2, 52.0)]
        assert client.get_run(runs[name]).info.status == "FINISHED"
        assert not Spool(spool_root(tmp_path, "study") / name).pending()
    assert Spool(spool_root(tmp_path, "another-study") / "other").pending()  # another study's spool waits
    assert client.get_run(runs["other"]).data.params == {}


def test_recorded_outcomes_end_runs_pruned_finished_with_the_rung_failures_failed(store):
    """A pruned trial did what ASHA asked: FINISHED with outcome pruned and its rung, unlike a failure or a
    guard stop; a spooled outcome from before the rung existed still applies."""
    from study.spool import apply
    from study.record import PRUNED_AT

    uri, client, experiment = store
    ops = {"pruned": {"reason": "ASHA: below the rung's cutoff at loop 1", "rung": "loop 1"},
           "failed": {"reason": "ValueError: boom"}, "stopped": {"reason": "guard: nan"}, "completed": {}}
    for outcome, extra in ops.items():
        client.create_run(experiment, tags={"aaclip.study": "outcomes", "aaclip.trial_id": outcome})
        apply(client, {"op": "outcome", "experiment_id": experiment, "study": "outcomes", "trial_id": outcome,
                       "outcome": outcome, "reason": extra.get("reason", ""), **extra})
    runs = {run.data.tags["aaclip.trial_id"]: run for run in client.search_runs(
        [experiment], "tags.`aaclip.study` = 'outcomes'")}
    assert {key: run.info.status for key, run in runs.items()} == {
        "pruned": "FINISHED", "completed": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}
    assert runs["pruned"].data.tags["aaclip.outcome"] == "pruned" and runs["pruned"].data.tags[PRUNED_AT] == "loop 1"
    assert all(PRUNED_AT not in run.data.tags for key, run in runs.items() if key != "pruned")
