"""Two studies started at once on one AACLIP_HOME share its embedded server, data and cache without colliding."""
from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from study.tracking import find_parent_run, trial_runs


@pytest.mark.slow
def test_two_studies_at_once_on_one_home(ray_cluster, write_spec, cli, tmp_path, monkeypatch):
    home = tmp_path / "home"  # fresh: both drivers generate the synthetic data and fill the cache together
    monkeypatch.setenv("AACLIP_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert cli.run("server", "--port", str(port)).returncode == 0
    server = json.loads((home / "mlflow" / "server.json").read_text())
    overrides = {"feedback.loops": 1, "feedback.text_epochs": 1, "feedback.image_epochs": 1}
    names = ("twin-a", "twin-b")
    drivers = []
    try:
        for name in names:
            spec = write_spec(name, overrides=overrides, trials={"num_samples": 1, "max_concurrent": 1,
                                                                 "resources": {"cpu": 1, "gpu": 0}, "max_failures": 0})
            log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed below
            drivers.append((subprocess.Popen(cli.command("run", str(spec), "--address", ray_cluster.address),
                                             stdout=log, stderr=subprocess.STDOUT,
                                             env={**os.environ, "PYTHONUNBUFFERED": "1"}), log))
        for (driver, log), name in zip(drivers, names):
            code = driver.wait(timeout=600)
            log.close()
            assert code == 0, (tmp_path / f"{name}.log").read_text()[-3000:]

        assert json.loads((home / "mlflow" / "server.json").read_text()) == server, "one server, reused"
        client = MlflowClient(f"http://127.0.0.1:{port}")
        parents = [find_parent_run(client, name) for name in names]
        assert parents[0].info.run_id != parents[1].info.run_id
        for parent, name in zip(parents, names):
            assert parent.info.status == "FINISHED"
            runs = trial_runs(client, parent)
            assert len(runs) == 1 and runs[0].info.run_name.startswith(name)
            assert runs[0].data.tags["aaclip.outcome"] == "completed"
    finally:
        for driver, log in drivers:
            if driver.poll() is None:
                driver.kill()
            log.close()
        cli.run("server", "--stop")
