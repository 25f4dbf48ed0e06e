"""The gradient guard ends a starving trial; its reason reaches the trial's MLflow run, `status` and Optuna."""
from __future__ import annotations

import optuna
from mlflow.tracking import MlflowClient

from study.launch import run_study
from study.spec import load_study
from study.status import study_status
from study.record import find_parent_run, trial_runs


def test_guard_stops_a_trial_and_says_why(ray_cluster, mlflow_uri, study_home, write_spec):
    # No share is ever above 0.999: the guard must stop the trial after its first Stage-2 epoch.
    spec = write_spec("starving", guard={"enabled": True, "image_adapter_share_floor": 0.999, "patience": 1},
                      overrides={"feedback.loops": 1, "feedback.text_epochs": 1, "feedback.image_epochs": 2})
    result = run_study(load_study(spec), tracking_uri=mlflow_uri, echo=lambda *args, **kwargs: None)
    assert result.trials == 1 and result.errors == 0

    client = MlflowClient(mlflow_uri)
    parent = find_parent_run(client, "starving")
    (run,) = trial_runs(client, parent)
    assert run.data.tags["aaclip.outcome"] == "stopped" and run.info.status == "KILLED"
    assert "grad/image_adapter_share below 0.999" in run.data.tags["aaclip.stop_reason"]
    assert int(run.data.tags["aaclip.last_epoch"]) == 2  # stopped before its last epoch (3)

    (row,) = study_status(client, "starving").trials
    assert row.state == "stopped" and "starve" in row.reason
    optuna_study = optuna.load_study(study_name="starving", storage=parent.data.tags["aaclip.optuna_storage"])
    assert [trial.state for trial in optuna_study.trials] == [optuna.trial.TrialState.PRUNED]
    # Optuna and MLflow point at each other: the objective's name, the run id and the trial name.
    assert optuna_study.metric_names == [parent.data.tags["aaclip.objective"]]
    assert optuna_study.trials[0].user_attrs == {"mlflow_run_id": run.info.run_id,
                                                 "mlflow_trial_name": run.info.run_name}
    assert run.data.tags["mlflow.note.content"].startswith("stopped: ")  # its one-line description
