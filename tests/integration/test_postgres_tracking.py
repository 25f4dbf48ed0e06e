"""MLflow on a real PostgreSQL, as on a cluster: the study logs to it exactly as to the embedded SQLite server.

A throwaway PostgreSQL cluster (Debian's binaries, see postgres.py) backs a real `mlflow server` with proxied
artifacts (`--serve-artifacts`, as docker/compose.yaml runs it). The smoke study then runs through the installed
CLI as a subprocess, with the server's URI, and the result is read back with MlflowClient and straight from the
database: one parent run, one child run per trial (the baseline included) with parameters, per-epoch metrics and
artifacts. The same study is then run through the CLI's embedded SQLite server, and the two must leave the same
runs, tags, parameters, metrics and artifacts behind.

Without PostgreSQL binaries the module skips locally, and fails under CI (CI=1), where
docker/ci-install-postgres.sh must have installed them.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from study.record import run_status

try:  # tests/integration is imported as a rootdir-relative package or as a plain folder, depending on layout
    from tests.integration.postgres import INSTALL_HINT, PostgresServer, find_postgres_bin, free_port, wait_for_http
except ImportError:
    from postgres import INSTALL_HINT, PostgresServer, find_postgres_bin, free_port, wait_for_http

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STUDY = "pg-smoke"
SAMPLES = 2  # searched trials; the smoke spec's confirmation is skipped (--confirm-top-k 0): a backend test
TRIAL, ROLE, STUDY_TAG, PARENT = "aaclip.trial_id", "aaclip.role", "aaclip.study", "mlflow.parentRunId"


@pytest.fixture(scope="module")
def postgres():
    if find_postgres_bin() is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_server(postgres):
    """`mlflow server` on PostgreSQL with proxied artifacts; yields (tracking URI, backend URL, artifact dir)."""
    backend = postgres.create_database("mlflow")
    artifacts = Path(tempfile.mkdtemp(prefix="aaclip-pg-artifacts-"))
    port = free_port()
    log = artifacts.parent / f"{artifacts.name}.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # The backend URL (with its password) goes in the environment, as in compose, not on the command line.
    env["MLFLOW_BACKEND_STORE_URI"] = backend
    with open(log, "w") as output:
        process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--serve-artifacts", "--artifacts-destination", str(artifacts),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            wait_for_http(f"http://127.0.0.1:{port}/health", timeout_s=180, process=process)
        except (RuntimeError, TimeoutError) as error:
            pytest.fail(f"{error}\n{log.read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}", backend, artifacts
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.unlink(missing_ok=True)
        shutil.rmtree(artifacts, ignore_errors=True)


def test_mlflow_server_on_postgres_logs_nested_runs(mlflow_server, postgres):
    from mlflow import MlflowClient

    uri, _, artifacts = mlflow_server
    client = MlflowClient(uri)
    experiment = client.create_experiment("pg-wiring")
    parent = client.create_run(experiment, run_name="parent")
    child = client.create_run(experiment, run_name="child", tags={PARENT: parent.info.run_id})
    client.log_param(child.info.run_id, "optim.image_lr", "0.001")
    for step in range(3):
        client.log_metric(child.info.run_id, "val/pixel_auroc", 50.0 + step, step=step)
    client.log_text(child.info.run_id, "seed: 1\n", "config.yaml")

    history = client.get_metric_history(child.info.run_id, "val/pixel_auroc")
    assert [(m.step, m.value) for m in history] == [(0, 50.0), (1, 51.0), (2, 52.0)]
    assert [f.path for f in client.list_artifacts(child.info.run_id)] == ["config.yaml"]
    assert child.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts must go through the server"
    assert list(artifacts.rglob("config.yaml")), "the server must write artifacts to its destination"
    # The rows are in PostgreSQL, not in some SQLite file next to the server.
    assert postgres.psql(f"SELECT count(*) FROM runs WHERE experiment_id = {experiment}", "mlflow") == "2"
    assert postgres.psql("SELECT count(*) FROM metrics WHERE key = 'val/pixel_auroc'", "mlflow") == "3"


def study_env(home: Path) -> dict[str, str]:
    """The CLI's environment: its own AACLIP_HOME and its own local Ray.

    RAY_ADDRESS=local: without it, ray.init() joins the cluster recorded in /tmp/ray/ray_current_cluster (the
    latest `ray start` or ray.cluster_utils.Cluster on this machine, e.g. another test's), not a fresh one.
    """
    return {**os.environ, "AACLIP_HOME": str(home), "RAY_ADDRESS": "local", "RAY_AUTH_MODE": "disabled",
            "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def smoke_study(mlflow_server):
    """The smoke study through the real CLI, against the PostgreSQL-backed server; yields (uri, stdout)."""
    uri, _, _ = mlflow_server
    home = Path(tempfile.mkdtemp(prefix="aaclip-pg-home-"))
    env = study_env(home)
    env.pop("MLFLOW_TRACKING_URI", None)  # the flag, and nothing else, names the server
    command = [str(BIN / "aaclip-study"), "run", "search_spaces/smoke.yaml", "--tracking-uri", uri,
               "--num-samples", str(SAMPLES), "--confirm-top-k", "0", "--name", STUDY]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"aaclip-study run failed ({result.returncode}):\n{output[-6000:]}"
    try:
        yield uri, output, env
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_study_logs_to_postgres_like_to_sqlite(smoke_study, postgres):
    from mlflow import MlflowClient

    uri, output, _ = smoke_study
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(STUDY)
    assert experiment is not None, f"no experiment named {STUDY} on {uri}"
    assert f"#/experiments/{experiment.experiment_id}/runs" in output, "the run must print the runs link"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)

    parents = [run for run in runs if run.data.tags.get(ROLE) == "study"]
    assert len(parents) == 1, f"expected one parent run, found {len(parents)}"
    parent = parents[0]
    assert parent.data.tags.get(STUDY_TAG) == STUDY
    assert parent.info.status == "FINISHED"
    assert {"study/spec.yaml", "study/base.yaml"} <= artifact_paths(client, parent.info.run_id)

    children = [run for run in runs if run.data.tags.get(PARENT) == parent.info.run_id]
    assert len(children) >= SAMPLES + 1, f"expected {SAMPLES} trials + the baseline, found {len(children)}"
    assert len({run.data.tags.get(TRIAL) for run in children}) == len(children), "one run per trial id"
    baselines = [run for run in children if run.data.params.get("cross_attention.enabled") in ("False", "false")]
    assert baselines, "the baseline (cross-attention off) must be one of the child runs"
    for run in children:
        name = run.info.run_name
        assert run.data.tags.get(STUDY_TAG) == STUDY and run.data.tags.get(ROLE) == "trial", name
        # Params: the whole flattened TrainConfig.
        assert {"seed", "optim.image_lr", "feedback.loops", "cross_attention.enabled"} <= set(run.data.params), name
        # Metrics: one value per epoch, with the step.
        history = client.get_metric_history(run.info.run_id, "train/image_loss")
        assert history, f"{name}: no train/image_loss history"
        assert len({m.step for m in history}) == len(history), f"{name}: repeated steps (duplicated logging)"
        assert "val/pixel_auroc" in run.data.metrics, f"{name}: no validation metric"
        # Artifacts: at least the trial's configuration, uploaded through the server.
        assert any(path.endswith((".yaml", ".yml")) for path in artifact_paths(client, run.info.run_id)), name

    # The same rows, read from PostgreSQL itself: the server did not fall back to a local store.
    count = postgres.psql(f"SELECT count(*) FROM runs WHERE experiment_id = {experiment.experiment_id}", "mlflow")
    assert int(count) == len(runs)


@pytest.mark.slow
def test_status_and_export_read_the_study_back_from_postgres(smoke_study, tmp_path):
    from aaclip.config import load_config

    uri, _, env = smoke_study
    status = subprocess.run([str(BIN / "aaclip-study"), "status", STUDY, "--tracking-uri", uri, "--json"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stdout + status.stderr
    assert STUDY in status.stdout
    best = tmp_path / "best.yaml"
    export = subprocess.run([str(BIN / "aaclip-study"), "export", STUDY, "-o", str(best), "--tracking-uri", uri],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stdout + export.stderr
    load_config(best)  # a complete, valid TrainConfig


@pytest.fixture(scope="module")
def sqlite_study():
    """The same study through the embedded server (SQLite under $AACLIP_HOME/mlflow), started by the CLI."""
    from study.server import running_server, stop_server

    home = Path(tempfile.mkdtemp(prefix="aaclip-sqlite-home-"))
    env = study_env(home)
    env.pop("MLFLOW_TRACKING_URI", None)  # no URI anywhere: the CLI starts its embedded server
    command = [str(BIN / "aaclip-study"), "run", "search_spaces/smoke.yaml", "--num-samples", str(SAMPLES),
               "--confirm-top-k", "0", "--name", STUDY]
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"aaclip-study run (embedded server) failed:\n{output[-6000:]}"
        server = running_server(home)
        assert server is not None, "the embedded server should still be running after the study"
        yield server.uri
    finally:
        stop_server(home)
        shutil.rmtree(home, ignore_errors=True)


def study_shape(uri: str) -> dict[str, Any]:
    """What a study leaves in MLflow, without the values that differ from run to run (ids, times, results)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = next(run for run in runs if run.data.tags.get(ROLE) == "study")
    children = [run for run in runs if run.data.tags.get(PARENT) == parent.info.run_id]
    # Trials that ASHA stops early have fewer epochs and a stop reason: compare what every trial has in common
    # and what any trial has, not epoch counts.
    optional_tags = {"aaclip.stop_reason"}
    return {
        "runs": len(runs),
        "parent tags": set(parent.data.tags) - optional_tags,
        "parent params": set(parent.data.params),
        "parent artifacts": artifact_paths(client, parent.info.run_id),
        "trial names": sorted(run.info.run_name for run in children),
        # Which trials ASHA stops depends on timing, so the statuses themselves differ between two runs; what
        # must hold on both servers is that each run's status agrees with its recorded outcome.
        "trial statuses match outcomes": all(
            run.info.status == run_status(run.data.tags.get("aaclip.outcome", "")) for run in children),
        "trial tags": set().union(*(set(run.data.tags) for run in children)) - optional_tags,
        "trial params": set().union(*(set(run.data.params) for run in children)),
        "trial metrics": set().union(*(set(run.data.metrics) for run in children)),
        "trial artifacts": set().union(*({path.split("/")[0] for path in artifact_paths(client, run.info.run_id)}
                                         for run in children)),
    }


@pytest.mark.slow
def test_postgres_and_embedded_sqlite_servers_hold_the_same_study(smoke_study, sqlite_study):
    on_postgres, on_sqlite = study_shape(smoke_study[0]), study_shape(sqlite_study)
    differences = {key: (on_postgres[key], on_sqlite[key])
                   for key in on_postgres if on_postgres[key] != on_sqlite[key]}
    assert not differences, f"PostgreSQL vs SQLite: {differences}"


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found
