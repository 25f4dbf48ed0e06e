"""Fractional GPUs, scheduling side (no CUDA here): Ray's logical GPUs on a local cluster with num_gpus=2.

`gpu: 0.5` trials pack two to a device and each sees only its own device id; each trial runs torch on exactly
the CPUs Ray gave it; a GPU study on a node whose torch has no CUDA is refused in one line before any trial
starts (rather than every trial failing and being retried)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def observed(tmp_path_factory, mlflow_uri: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "AACLIP_TEST_TRACKING_URI": mlflow_uri,
           "AACLIP_HOME": str(tmp_path_factory.mktemp("fractional-home")), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, str(ROOT / "tests/integration/fractional_gpus.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_half_gpu_trials_pack_two_to_a_device_and_see_only_it(observed: dict) -> None:
    trials = observed["trials"]
    assert len(trials) == 4 and all(trial["together"] == 4 for trial in trials)  # all four held GPUs at once
    assert Counter(trial["gpu_ids"] for trial in trials) == {"0": 2, "1": 2}
    assert all(trial["visible"] == trial["gpu_ids"] for trial in trials)


def test_a_trial_uses_exactly_the_cpus_ray_gave_it(observed: dict) -> None:
    assert all(trial["threads"] == trial["torch_threads"] == 3 for trial in observed["trials"])  # cpu: 3 each


def test_gpu_study_without_cuda_is_refused_in_one_line(observed: dict) -> None:
    refusal = observed["refusal"]
    assert "trials.resources.gpu: 0.5" in refusal and "torch.cuda.is_available() is False" in refusal
    assert "\n" not in refusal
