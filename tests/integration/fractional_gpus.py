"""Run in its own process by test_fractional_gpus.py: a local Ray with 2 logical GPUs and no CUDA (this
machine), separate from the session's two-node test cluster. Prints one JSON object with what it saw."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import ray
from ray import tune

TRIALS = 4
CPUS_PER_TRIAL = 3  # neither torch's default here (the machine's 2 cores) nor a fallback of 1
BARRIER_TIMEOUT_S = 300.0
NAMESPACE = "fractional-gpus"


@ray.remote(num_cpus=0)
class Barrier:
    """Trials wait here until all have started: then the GPU ids they hold were held at the same time."""

    def __init__(self):
        self.arrived = 0

    def arrive(self) -> int:
        self.arrived += 1
        return self.arrived

    def count(self) -> int:
        return self.arrived


def trial(config: dict) -> None:
    import torch

    from aaclip.threads import configure_threads
    from study.trainable import assigned_cpus

    threads = configure_threads(assigned_cpus())
    barrier = ray.get_actor("barrier", namespace=NAMESPACE)
    ray.get(barrier.arrive.remote())
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while ray.get(barrier.count.remote()) < TRIALS and time.monotonic() < deadline:
        time.sleep(0.2)
    tune.report({"gpu_ids": ",".join(str(i) for i in ray.get_gpu_ids()),
                 "visible": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "threads": threads,
                 "torch_threads": torch.get_num_threads(), "together": ray.get(barrier.count.remote())})


def packing(storage: str) -> list[dict]:
    barrier = Barrier.options(name="barrier", namespace=NAMESPACE).remote()  # kept alive by this handle
    tuner = tune.Tuner(tune.with_resources(trial, {"cpu": CPUS_PER_TRIAL, "gpu": 0.5}),
                       tune_config=tune.TuneConfig(num_samples=TRIALS),
                       run_config=tune.RunConfig(storage_path=storage, verbose=0))
    results = tuner.fit()
    assert not results.errors, results.errors
    del barrier
    keys = ("gpu_ids", "visible", "threads", "torch_threads", "together")
    return [{key: result.metrics[key] for key in keys} for result in results]


def launch_refusal(storage: str) -> str:
    from study.errors import StudyError
    from study.launch import run_study
    from study.spec import parse_study

    study = parse_study({"name": "wants-cuda", "base": "tiny", "overrides": {"model.device": "auto"},
                         "space": {"optim.image_lr": {"loguniform": [1.0e-4, 1.0e-2]}},
                         "searcher": {"kind": "random"}, "scheduler": {"kind": "none"}, "baseline": False,
                         "trials": {"num_samples": 2, "resources": {"cpu": 1, "gpu": 0.5}, "max_failures": 3},
                         "storage": storage}, source="wants-cuda.yaml")
    try:
        # A live server: the tracking check passes, so the refusal seen is the cluster's (before any write).
        run_study(study, tracking_uri=os.environ["AACLIP_TEST_TRACKING_URI"])
    except StudyError as error:
        return str(error)
    return ""


def main() -> None:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", num_cpus=TRIALS * CPUS_PER_TRIAL, num_gpus=2, include_dashboard=False,
             logging_level="ERROR", log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as storage:
            report = {"trials": packing(storage), "refusal": launch_refusal(storage)}
    finally:
        ray.shutdown()
    print("RESULT " + json.dumps(report))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
