"""The tracking server goes away mid-study and comes back: no trial fails and nothing is lost.

The study logs to the embedded server of its AACLIP_HOME. While its two trials train, the server is stopped
with `aaclip-study server --stop` for 60 s (far beyond the MLflow client's own retries, about 3 s here), then
started again with `aaclip-study server`, which must bring it back on the same port. Trials spool their
records to disk meanwhile and replay them in order; the driver spools outcomes and its heartbeat.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.status import study_status
from study.tracking import find_parent_run, trial_runs

NAME = "outage"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def max_last_epoch(client: MlflowClient) -> int:
    try:
        parent = find_parent_run(client, NAME)
        runs = trial_runs(client, parent) if parent else []
    except Exception:  # noqa: BLE001 - the server may be starting
        return 0
    return max((int(run.data.tags.get("aaclip.last_epoch", 0)) for run in runs), default=0)


@pytest.mark.slow
def test_server_stopped_mid_study_and_restarted_loses_nothing(ray_cluster, study_home, write_spec, cli, wait_for,
                                                              tmp_path, monkeypatch):
    home = tmp_path / "home"  # its own embedded server; the data and feature cache of study_home are not needed
    monkeypatch.setenv("AACLIP_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = free_port()
    started = cli.run("server", "--port", str(port))
    assert started.returncode == 0 and f":{port}" in started.stdout, started.stderr
    uri = f"http://127.0.0.1:{port}"
    client = MlflowClient(uri)
    spec = write_spec(NAME, trials={"num_samples": 2, "max_concurrent": 2, "resources": {"cpu": 1, "gpu": 0},
                                    "max_failures": 0},
                      overrides={"feedback.loops": 2, "feedback.text_epochs": 1, "feedback.image_epochs": 4})
    try:
        with open(tmp_path / "driver.log", "w") as log:
            driver = subprocess.Popen(cli.command("run", str(spec), "--address", ray_cluster.address),
                                      stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            wait_for(lambda: max_last_epoch(client) >= 2, 300, "the trials' first epochs", driver)
            stopped = cli.run("server", "--stop")
            assert stopped.returncode == 0 and "stopped" in stopped.stdout
            time.sleep(60)
            restarted = cli.run("server")
            assert restarted.returncode == 0 and f":{port}" in restarted.stdout, restarted.stdout + restarted.stderr
            code = driver.wait(timeout=600)
        log_text = (tmp_path / "driver.log").read_text()
        assert code == 0, log_text[-3000:]
        assert "finished" in log_text

        parent = find_parent_run(client, NAME)
        assert parent.info.status == "FINISHED"
        runs = trial_runs(client, parent)
        assert len(runs) == 2 and len({run.data.tags["aaclip.trial_id"] for run in runs}) == 2
        for run in runs:
            assert run.info.status == "FINISHED" and run.data.tags["aaclip.outcome"] == "completed", run.info
            epochs = [point.step for point in client.get_metric_history(run.info.run_id, "epoch")]
            assert epochs == list(range(1, 11)), epochs  # every epoch once: none lost, none twice
            assert [p.step for p in client.get_metric_history(run.info.run_id, "val/pixel_auroc")] == [5, 10]
            assert run.data.tags["aaclip.last_epoch"] == "10"
            artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
            assert {"config.yaml", "gradient_flow.png", "gallery", "best_adapters"} <= artifacts, artifacts
            galleries = {item.path for item in client.list_artifacts(run.info.run_id, "gallery")}
            assert galleries == {"gallery/epoch-0005.png", "gallery/epoch-0010.png"}
        assert {row.state for row in study_status(client, NAME).trials} == {"completed"}
        spooled = [path for path in (home / "spool").rglob("ops.jsonl")] if (home / "spool").exists() else []
        assert spooled == [], "every spooled record was replayed"
        assert not list((home / "scratch").glob("trial-*")), "scratch folders are cleaned"
    finally:
        cli.run("server", "--stop")
