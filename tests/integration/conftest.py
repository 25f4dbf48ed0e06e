"""Shared real services for the integration tests: one MLflow server process and one two-node Ray cluster.

Both are session-scoped (starting them costs ~10-25 s each); every study test uses its own study name. The
Ray cluster is made with ray.cluster_utils.Cluster (a head and a worker node on this machine, 1 CPU each), so
every study in these tests runs across two nodes, and is torn down by stopping exactly its own processes
(never `ray stop`, which would kill any other Ray on the machine).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

STUDY_CLI = [sys.executable, "-m", "study.cli"]


@pytest.fixture(scope="session")
def study_home(tmp_path_factory) -> Path:
    """$AACLIP_HOME for the session: synthetic data and the feature cache are made once and shared."""
    home = tmp_path_factory.mktemp("aaclip-home")
    previous = os.environ.get("AACLIP_HOME")
    os.environ["AACLIP_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("AACLIP_HOME", None)
    else:
        os.environ["AACLIP_HOME"] = previous


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """A real `mlflow server` on a free loopback port, SQLite store and artifacts in a temp folder."""
    from study.server import ensure_server, stop_server

    home = tmp_path_factory.mktemp("mlflow-home")
    info = ensure_server(home, preferred_port=None)
    yield info.uri
    stop_server(home)


@pytest.fixture(scope="session")
def ray_cluster():
    """A two-node Ray cluster on this machine (head + worker, 1 CPU each), this process connected to it."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ["RAY_AUTH_MODE"] = "disabled"  # no token: later clients and `--address` drivers connect plainly
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture()
def write_spec(tmp_path: Path):
    """A tiny study spec file: 2 loops of 1+1 epochs, 1 CPU per trial, 2 at a time."""

    def write(name: str, **changes) -> Path:
        spec = {
            "name": name, "base": "tiny",
            "overrides": {"feedback.loops": 2, "feedback.text_epochs": 1, "feedback.image_epochs": 1},
            "objective": {"metric": "val/pixel_auroc", "mode": "max"},
            "space": {"optim.image_lr": {"loguniform": [1.0e-4, 1.0e-2]}},
            "searcher": {"kind": "optuna", "seed": 0},
            "scheduler": {"kind": "none"},
            "baseline": False,
            "trials": {"num_samples": 1, "max_concurrent": 2, "resources": {"cpu": 1, "gpu": 0}, "max_failures": 0},
            "storage": str(tmp_path / "ray_results"),
            **changes,
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return write


class StudyCli:
    """`aaclip-study` in a subprocess (a driver that a test can kill, like a user's terminal would)."""

    @staticmethod
    def command(*args: str) -> list[str]:
        return [*STUDY_CLI, *args]

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture()
def cli() -> StudyCli:
    return StudyCli()


@pytest.fixture()
def wait_for():
    """wait_for(condition, timeout, what, process=None): poll until condition() is truthy; fail if the
    process (a driver) exits first or time runs out."""

    def wait(condition, timeout: float, what: str, process: subprocess.Popen | None = None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if process is not None and process.poll() is not None:
                pytest.fail(f"the driver exited (code {process.returncode}) before {what}")
            time.sleep(1.0)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")

    return wait
