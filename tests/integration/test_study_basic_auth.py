"""A study against an MLflow server with basic auth: the credentials from the environment reach every trial,
a wrong password is refused in one line, and the password shows up nowhere it could be read back."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.server import is_healthy
from study.record import find_parent_run, trial_runs

NAME = "guarded"
PASSWORD = "s3cret-Pa55word-for-the-test"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("auth-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts"]
    env = {**os.environ, "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key", "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(folder / "server.log", "wb") as log:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while not is_healthy(uri) and time.monotonic() < deadline:
        assert process.poll() is None, (folder / "server.log").read_text()[-2000:]
        time.sleep(0.5)
    yield uri
    os.killpg(process.pid, 15)
    process.wait(timeout=30)


@pytest.mark.slow
def test_credentials_reach_trials_and_leak_nowhere(auth_server, ray_cluster, study_home, write_spec, cli, tmp_path,
                                                   monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-password")
    refused = cli.run("status", NAME, "--tracking-uri", auth_server)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "refused the credentials" in refused.stderr and "wrong-password" not in refused.stderr

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    spec = write_spec(NAME, overrides={"feedback.loops": 1, "feedback.text_epochs": 1, "feedback.image_epochs": 1})
    ran = cli.run("run", str(spec), "--address", ray_cluster.address, "--tracking-uri", auth_server)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert PASSWORD not in ran.stdout + ran.stderr

    client = MlflowClient(auth_server)  # this process has the credentials in its environment
    parent = find_parent_run(client, NAME)
    runs = [parent, *trial_runs(client, parent)]
    assert len(runs) == 2 and runs[1].data.tags["aaclip.outcome"] == "completed"  # the trial could log
    for run in runs:
        texts = [*run.data.params.values(), *run.data.tags.values()]
        assert not any(PASSWORD in text for text in texts), run.info.run_name
        downloaded = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id)))
        for path in downloaded.rglob("*"):
            assert not path.is_file() or PASSWORD.encode() not in path.read_bytes(), path
    logs = Path(ray_cluster.head_node.get_logs_dir_path())  # the trial workers' and Ray's own logs
    for path in [*logs.rglob("*"), *Path(spec.parent / "ray_results").rglob("*")]:
        assert not path.is_file() or PASSWORD.encode() not in path.read_bytes(), path
