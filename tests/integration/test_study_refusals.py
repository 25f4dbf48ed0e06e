"""Requests a cluster cannot serve are refused before anything is written; the local server is reused."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from study.errors import StudyError
from study.launch import run_study
from study.server import ensure_server, running_server
from study.spec import load_study
from study.tracking import find_parent_run


def test_gpu_requested_on_a_cluster_without_gpus(ray_cluster, mlflow_uri, study_home, write_spec):
    spec = write_spec("wants-gpu", trials={"num_samples": 1, "resources": {"cpu": 1, "gpu": 1}},
                      overrides={"model.device": "auto"})
    with pytest.raises(StudyError, match="trials.resources.gpu: .* the Ray cluster has no GPU"):
        run_study(load_study(spec), tracking_uri=mlflow_uri)
    assert find_parent_run(MlflowClient(mlflow_uri), "wants-gpu") is None


def test_embedded_server_is_reused(mlflow_uri, tmp_path_factory):
    homes = [path for path in tmp_path_factory.getbasetemp().iterdir() if path.name.startswith("mlflow-home")]
    info = running_server(homes[0])
    assert info is not None and info.uri == mlflow_uri
    assert ensure_server(homes[0]).pid == info.pid
