"""Ctrl-C on the driver stops the study cleanly and says how to continue; `resume` then finishes it."""
from __future__ import annotations

import signal
import subprocess

import optuna
import pytest
from mlflow.tracking import MlflowClient

from study.status import study_status
from study.record import find_parent_run, trial_runs

NAME = "ctrlc"


def last_epochs(client: MlflowClient) -> list[int]:
    parent = find_parent_run(client, NAME)
    runs = trial_runs(client, parent) if parent else []
    return [int(run.data.tags.get("aaclip.last_epoch", 0)) for run in runs]


@pytest.mark.slow
def test_ctrl_c_then_resume(ray_cluster, mlflow_uri, study_home, write_spec, cli, wait_for, tmp_path):
    spec = write_spec(NAME, trials={"num_samples": 2, "max_concurrent": 2, "resources": {"cpu": 1, "gpu": 0},
                                    "max_failures": 0},
                      overrides={"feedback.loops": 2, "feedback.text_epochs": 1, "feedback.image_epochs": 3})
    client = MlflowClient(mlflow_uri)
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(cli.command("run", str(spec), "--address", ray_cluster.address,
                                              "--tracking-uri", mlflow_uri), stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: any(epoch >= 1 for epoch in last_epochs(client)), 300, "a first epoch", driver)
        driver.send_signal(signal.SIGINT)
        code = driver.wait(timeout=180)
    output = (tmp_path / "driver.log").read_text()
    assert code == 130, output[-3000:]
    assert f"aaclip-study resume {NAME}" in output and "finished" not in output and "Tuner.restore" not in output

    parent = find_parent_run(client, NAME)
    assert parent.info.status == "KILLED" and parent.data.tags["aaclip.driver"] == "interrupted"
    status = study_status(client, NAME)
    assert status.state == "interrupted" and {row.state for row in status.trials} == {"interrupted"}
    storage = parent.data.tags["aaclip.optuna_storage"]
    assert not any(trial.state.is_finished() for trial in optuna.load_study(study_name=NAME, storage=storage).trials)

    resumed = cli.run("resume", NAME, "--address", ray_cluster.address, "--tracking-uri", mlflow_uri)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    runs = trial_runs(client, find_parent_run(client, NAME))
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["aaclip.outcome"] == "completed"
        epochs = [point.step for point in client.get_metric_history(run.info.run_id, "epoch")]
        assert epochs == list(range(1, 9)), epochs
    assert study_status(client, NAME).state == "finished"
    trials = optuna.load_study(study_name=NAME, storage=storage).trials
    assert [trial.state for trial in trials] == [optuna.trial.TrialState.COMPLETE] * 2
