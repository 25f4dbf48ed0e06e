"""A trial whose worker is killed again and again resumes from its checkpoint each time and ends as an
uninterrupted run would (metrics, evaluation artifacts, best tags); the exported configuration retrains to
the same objective."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.export import export_trial
from study.record import find_parent_run, trial_runs


NAME = "phoenix"
KILLS = 5


def the_run(client: MlflowClient):
    parent = find_parent_run(client, NAME)
    runs = trial_runs(client, parent) if parent else []
    return runs[0] if runs else None


def last_epoch(client: MlflowClient) -> int:
    run = the_run(client)
    return int(run.data.tags.get("aaclip.last_epoch", 0)) if run else 0


def kill_repeatedly(client: MlflowClient, driver, wait_for) -> list[int]:
    """SIGKILL the trial's worker KILLS times, each after the restarted worker made progress, at a varying
    moment (mid-epoch, at a loop boundary, during a checkpoint write): the outcome may not depend on when."""
    delays = random.Random(0)
    killed: list[int] = []
    for _ in range(KILLS):
        run = the_run(client)
        pid, epoch = int(run.data.tags["aaclip.worker_pid"]), last_epoch(client)
        # Progress, not a clock, picks the moment (a sub-second offset varies where in the epoch it lands): the
        # worker is mid-trial whatever the machine's speed, with the trial's remaining epochs as headroom.
        time.sleep(delays.uniform(0.0, 1.0))
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        wait_for(lambda: int(the_run(client).data.tags["aaclip.worker_pid"]) not in killed
                 and last_epoch(client) > epoch, 300, "the restarted worker's next epoch", driver)
    return killed


def check_evaluation_logged(client: MlflowClient, run) -> None:
    """What each evaluation epoch writes besides metrics arrived, whatever the kills interrupted."""
    objective = client.get_metric_history(run.info.run_id, "val/pixel_auroc")
    assert [point.step for point in objective] == [11, 22]
    best = max(objective, key=lambda point: point.value)
    assert float(run.data.tags["aaclip.best_value"]) == pytest.approx(best.value)
    assert run.data.tags["aaclip.best_epoch"] == str(best.step)
    galleries = {item.path for item in client.list_artifacts(run.info.run_id, "gallery")}
    assert galleries == {"gallery/epoch-0000.png", "gallery/epoch-0011.png", "gallery/epoch-0022.png"}
    loops = client.get_metric_history(run.info.run_id, "loop/val/pixel_auroc")  # from the untrained start, once each
    assert [(p.step, p.value) for p in loops][1:] == [(1, objective[0].value), (2, objective[1].value)]
    assert [p.step for p in loops] == [0, 1, 2]
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"gradient_flow.png", "best_adapters", "config.yaml"} <= artifacts


@pytest.mark.slow
def test_killed_worker_resumes_and_export_retrains(ray_cluster, mlflow_uri, study_home, write_spec, cli, wait_for,
                                                   tmp_path):
    # 2 loops of 1 + 10 epochs: after epoch 2 the trial has 20 epochs left, headroom for 5 kills that each wait
    # for one epoch of progress (with 1 + 6 epochs a fast machine finished the trial before the fifth kill).
    spec = write_spec(NAME, trials={"num_samples": 1, "max_concurrent": 1, "resources": {"cpu": 1, "gpu": 0},
                                    "max_failures": KILLS},
                      overrides={"feedback.loops": 2, "feedback.text_epochs": 1, "feedback.image_epochs": 10})
    client = MlflowClient(mlflow_uri)
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(cli.command("run", str(spec), "--address", ray_cluster.address,
                                                "--tracking-uri", mlflow_uri), stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: last_epoch(client) >= 2, 300, "the trial's first epochs", driver)
        killed_pids = kill_repeatedly(client, driver, wait_for)
        assert driver.wait(timeout=300) == 0, (tmp_path / "driver.log").read_text()[-3000:]
    killed_pid = killed_pids[-1]

    run = the_run(client)
    assert run.data.tags["aaclip.outcome"] == "completed"
    assert int(run.data.tags["aaclip.worker_pid"]) != killed_pid, "the trial restarted in a new worker"
    epochs = [point.step for point in client.get_metric_history(run.info.run_id, "epoch")]
    assert epochs == list(range(1, 23))
    assert len(trial_runs(client, find_parent_run(client, NAME))) == 1
    check_evaluation_logged(client, run)

    best = tmp_path / "best.yaml"
    exported = cli.run("export", NAME, "-o", str(best), "--tracking-uri", mlflow_uri)
    assert exported.returncode == 0, exported.stderr
    provenance = yaml.safe_load(best.read_text())["provenance"]
    assert provenance["mlflow_run_id"] == run.info.run_id and provenance["study"] == NAME
    assert export_trial(client, NAME, tmp_path / "chosen.yaml", trial=run.info.run_name)["trial"] == run.info.run_name

    # An uninterrupted run of the exported config, in the same single-thread setting as a 1-CPU trial.
    retrain = subprocess.run([str(Path(sys.executable).parent / "aaclip"), "train", str(best)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    final = json.loads((tmp_path / "runs" / "latest" / "metrics.json").read_text())
    assert abs(final["val/pixel_auroc"] - provenance["value"]) <= 0.5
    for key in ("val/pixel_auroc", "val/image_auroc", "train/image_loss"):
        assert final[key] == pytest.approx(run.data.metrics[key], rel=1e-4, abs=1e-4), key
