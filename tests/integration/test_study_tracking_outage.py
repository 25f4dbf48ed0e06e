"""Two studies started at once on one AACLIP_HOME, and their tracking server goes away mid-study and comes
back: the studies do not collide, no trial fails, and nothing is lost.

Both studies log to the embedded server of their home (one server, shared), generate the same synthetic data
and fill one feature cache at the same time. While their trials train, the server is stopped with
`aaclip-study server --stop` for 60 s (far beyond the MLflow client's own retries, about 3 s here), then started
again with `aaclip-study server`, which must bring it back on the same port. Trials spool their records to disk
meanwhile and replay them in order; the drivers spool outcomes and heartbeats.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from study.status import study_status
from study.record import find_parent_run, trial_runs

NAMES = ("outage-a", "outage-b")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def last_epochs(client: MlflowClient) -> list[int]:
    epochs = []
    for name in NAMES:
        try:
            parent = find_parent_run(client, name)
            runs = trial_runs(client, parent) if parent else []
        except Exception:  # noqa: BLE001 - the server may be starting
            return []
        epochs += [int(run.data.tags.get("aaclip.last_epoch", 0)) for run in runs]
    return epochs


def start_driver(cli, spec, address: str, log_path):
    with open(log_path, "w") as log:
        return subprocess.Popen(cli.command("run", str(spec), "--address", address), stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
def test_two_studies_survive_their_server_stopped_mid_study(ray_cluster, write_spec, cli, wait_for, tmp_path,
                                                            monkeypatch):
    home = tmp_path / "home"  # fresh and shared by both studies: server, data generation, feature cache
    monkeypatch.setenv("AACLIP_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = free_port()
    started = cli.run("server", "--port", str(port))
    assert started.returncode == 0 and f":{port}" in started.stdout, started.stderr
    server = json.loads((home / "mlflow" / "server.json").read_text())
    client = MlflowClient(f"http://127.0.0.1:{port}")
    trials = {"num_samples": 1, "max_concurrent": 1, "resources": {"cpu": 1, "gpu": 0}, "max_failures": 0}
    overrides = {"feedback.loops": 2, "feedback.text_epochs": 1, "feedback.image_epochs": 4}
    drivers = [start_driver(cli, write_spec(name, trials=trials, overrides=overrides), ray_cluster.address,
                            tmp_path / f"{name}.log") for name in NAMES]
    try:
        wait_for(lambda: len(last_epochs(client)) == 2 and min(last_epochs(client)) >= 2, 300,
                 "both trials' first epochs", drivers[0])
        stopped = cli.run("server", "--stop")
        assert stopped.returncode == 0 and "stopped" in stopped.stdout
        time.sleep(60)
        restarted = cli.run("server")
        assert restarted.returncode == 0 and f":{port}" in restarted.stdout, restarted.stdout + restarted.stderr
        codes = [driver.wait(timeout=600) for driver in drivers]
    finally:
        for driver in drivers:
            if driver.poll() is None:
                driver.kill()
    for name, code in zip(NAMES, codes):
        output = (tmp_path / f"{name}.log").read_text()
        assert code == 0 and "finished" in output, output[-3000:]
    try:
        assert json.loads((home / "mlflow" / "server.json").read_text())["port"] == server["port"]
        for name in NAMES:
            check_study(client, name)
        assert not list((home / "spool").rglob("ops.jsonl")), "every spooled record was replayed"
        assert not list((home / "scratch").glob("trial-*")), "scratch folders are cleaned"
    finally:
        cli.run("server", "--stop")


def check_study(client: MlflowClient, name: str) -> None:
    parent = find_parent_run(client, name)
    assert parent.info.status == "FINISHED"
    runs = trial_runs(client, parent)
    assert len(runs) == 1 and runs[0].info.run_name == "t001"  # exactly one run per trial
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["aaclip.outcome"] == "completed", run.info
    epochs = [point.step for point in client.get_metric_history(run.info.run_id, "epoch")]
    assert epochs == list(range(1, 11)), epochs  # every epoch once: none lost, none twice
    assert [p.step for p in client.get_metric_history(run.info.run_id, "val/pixel_auroc")] == [5, 10]
    assert run.data.tags["aaclip.last_epoch"] == "10"
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "gradient_flow.png", "gallery", "best_adapters"} <= artifacts, artifacts
    galleries = {item.path for item in client.list_artifacts(run.info.run_id, "gallery")}
    assert galleries == {"gallery/epoch-0000.png", "gallery/epoch-0005.png", "gallery/epoch-0010.png"}
    assert [p.step for p in client.get_metric_history(run.info.run_id, "loop/val/pixel_auroc")] == [0, 1, 2]
    assert {row.state for row in study_status(client, name).trials} == {"completed"}
