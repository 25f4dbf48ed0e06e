"""Requests a cluster cannot serve are refused before anything is written; the local server is reused."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from study.errors import StudyError
from study.launch import run_study
from study.server import ensure_server, running_server
from study.spec import load_study
from study.record import find_parent_run


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


def test_val_that_shares_images_with_test_is_refused(mlflow_uri, study_home, write_spec, cli, tiny_data):
    """`aaclip-study run` refuses in its preflight, before a parent run or a trial exists."""
    val = {"kind": "mvtec", "root": str(tiny_data["object"]), "categories": ["disc"]}
    spec = write_spec("leaky-val", overrides={"data.val": val, "data.test": {**val, "categories": None}})
    result = cli.run("run", str(spec), "--tracking-uri", mlflow_uri)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{spec}: data.val and data.test share" in lines[0], result.stderr
    assert f"(e.g. {tiny_data['object'].resolve()}/disc/" in lines[0]
    assert find_parent_run(MlflowClient(mlflow_uri), "leaky-val") is None
