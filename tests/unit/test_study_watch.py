"""What cluster users watch on a trial's run (real SQLite MLflow store, real generated data): the splits as
dataset inputs and `split.*` params, MLflow's system metrics with the trial process's own share (GPUs on a CUDA
machine: pytest -m gpu), the short run names."""
from __future__ import annotations

import json
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from aaclip.config import DataConfig
from aaclip.data.splits import load_splits, split_fingerprint
from study.datasets import SplitRecorder
from study.system_metrics import system_metrics
from study.tracking import Connector, TrialRun


def new_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("watch", artifact_location=str(tmp_path / "artifacts"))
    return uri, client, client.create_run(experiment, run_name="t01").info.run_id


def test_splits_become_dataset_inputs_with_context_fingerprint_and_counts(tmp_path, make_synthetic):
    texture, obj = make_synthetic(domain="texture"), make_synthetic(domain="object")
    data = DataConfig(train={"kind": "mvtec", "root": str(texture)},
                      val={"kind": "mvtec", "root": str(obj), "holdout": {"part": "held_out", "fraction": 0.5}},
                      test={"kind": "mvtec", "root": str(obj), "holdout": {"part": "remainder", "fraction": 0.5}})
    splits = load_splits(data)
    uri, client, run_id = new_run(tmp_path)
    run = TrialRun(Connector(uri).tracker(tmp_path / "spool"), run_id, 0, 0)
    recorder = SplitRecorder(run, data)
    recorder(splits)
    recorder(splits)  # a restarted attempt records the same splits again: nothing is added

    logged = client.get_run(run_id)
    inputs = {item.tags[0].value: item.dataset for item in logged.inputs.dataset_inputs}
    assert sorted(inputs) == ["test", "train", "val"] and len(logged.inputs.dataset_inputs) == 3
    for context, records in splits.items():
        dataset = inputs[context]
        assert dataset.digest == split_fingerprint(records)
        assert logged.data.params[f"split.{context}.fingerprint"] == dataset.digest
        assert logged.data.params[f"split.{context}.images"] == str(len(records))
        profile = json.loads(dataset.profile)
        assert profile["images"] == len(records) and sum(profile["classes"].values()) == len(records)
        assert profile["anomalous"] == sum(record.label for record in records)
    assert inputs["train"].source == str(texture.resolve()) and inputs["val"].source == str(obj.resolve())
    assert inputs["val"].name == f"val: mvtec {obj.name}/test held_out"
    assert inputs["val"].digest != inputs["test"].digest  # two parts of one root are two datasets


def test_system_metrics_logs_node_and_process_use_even_for_a_short_block(tmp_path):
    uri, client, run_id = new_run(tmp_path)
    with system_metrics(run_id, uri, interval_s=60.0):  # ends long before the first interval: the last sample
        started = time.process_time()
        while time.process_time() - started < 0.3:  # busy for 0.3 s of CPU time
            pass
    with system_metrics(run_id, uri, interval_s=60.0):  # a restarted attempt continues the steps
        pass

    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                "system/process_memory_rss_megabytes", "system/process_cpu_utilization_percentage"):
        history = client.get_metric_history(run_id, key)
        assert [point.step for point in history] == [0, 1], key
    first = {key: client.get_metric_history(run_id, f"system/{key}")[0].value
             for key in ("process_memory_rss_megabytes", "cpu_utilization_percentage",
                         "process_cpu_utilization_percentage")}
    assert 10 < first["process_memory_rss_megabytes"] < 100_000  # this test process's resident memory, in MB
    assert first["cpu_utilization_percentage"] > 0 and first["process_cpu_utilization_percentage"] > 0  # busy


def test_system_metrics_off_logs_nothing(tmp_path):
    uri, client, run_id = new_run(tmp_path)
    with system_metrics(run_id, uri, interval_s=None):
        pass
    assert not client.get_run(run_id).data.metrics


def test_run_names_are_short_and_start_with_what_differs():
    from types import SimpleNamespace

    from study.confirm import job_name
    from study.tuner import TrialNamer
    from study.searcher import BASELINE_KEY, INDEX_KEY

    namer = TrialNamer()
    assert namer(SimpleNamespace(config={INDEX_KEY: 3, "optim.image_lr": 0.001}, trial_id="x")) == "t003"
    assert namer(SimpleNamespace(config={BASELINE_KEY: True, INDEX_KEY: 0}, trial_id="x")) == "baseline"
    jobs = [{"role": "confirm", "rank": 1, "seed": 112}, {"role": "twin", "rank": 1, "seed": 112},
            {"role": "base", "rank": 0, "seed": 112}]
    assert [job_name(job) for job in jobs] == ["confirm-r1-s112", "twin-r1-s112", "base-s112"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_node_each_gpu_and_the_process_gpu_memory_are_logged(tmp_path):
    uri, client, run_id = new_run(tmp_path)
    with system_metrics(run_id, uri, interval_s=60.0):
        square = torch.ones(1024, 1024, device="cuda")  # 4 MB held by PyTorch's caching allocator
        (square @ square).sum().item()
    metrics = client.get_run(run_id).data.metrics
    assert "system/gpu_0_utilization_percentage" in metrics and "system/gpu_0_memory_usage_megabytes" in metrics
    assert metrics["system/process_gpu_memory_reserved_megabytes"] >= 4.0
