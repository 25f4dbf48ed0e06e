"""The study's summary on MLflow (real SQLite store): the parent's metrics and markdown description, a line per
trial, written when the study session ends through the driver's spool."""
from __future__ import annotations


import pytest
from mlflow.tracking import MlflowClient

from study.driver import study_session
from study.spec import parse_study
from aaclip.mlflow_env import DESCRIPTION as NOTE
from study.summary import trial_note
from study.record import PRUNED_AT
from study.tracking import PARENT, Connector
from study.trainable import TrialContext

METRIC = "val/pixel_auroc"
SPACE = ("optim.image_lr", "feedback.loops")


# The session sets the driver's environment (MLFLOW_TRACKING_URI and Tune's settings): restored after each test.
pytestmark = pytest.mark.usefixtures("restored_environment")


def add_trial(client, experiment, parent, name, outcome, value=None, baseline=False, **tags):
    run = client.create_run(experiment, run_name=name, tags={
        "aaclip.role": "trial", "aaclip.study": "sums", "aaclip.trial_id": name, PARENT: parent,
        "aaclip.outcome": outcome, "aaclip.baseline": str(baseline).lower(), **tags})
    if value is not None:
        client.log_metric(run.info.run_id, METRIC, value)
    client.log_param(run.info.run_id, "optim.image_lr", "0.000512345")
    client.log_param(run.info.run_id, "feedback.loops", "2")
    return run.info.run_id


def test_study_end_writes_parent_summary_and_trial_lines(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("sums", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, run_name="sums", tags={
        "aaclip.role": "study", "aaclip.study": "sums", "aaclip.objective": METRIC, "aaclip.mode": "max",
        "aaclip.space_keys": ",".join(SPACE)}).info.run_id
    runs = {"base": add_trial(client, experiment, parent, "sums-000", "completed", 61.0, baseline=True),
            "best": add_trial(client, experiment, parent, "sums-001", "completed", 72.5),
            "other": add_trial(client, experiment, parent, "sums-002", "completed", 65.0),
            "pruned": add_trial(client, experiment, parent, "sums-003", "pruned", 80.0,
                                **{PRUNED_AT: "loop 1"}),  # higher, but at a rung: never the best
            "failed": add_trial(client, experiment, parent, "sums-004", "failed",
                                **{"aaclip.stop_reason": "ValueError: boom"})}
    study = parse_study({"name": "sums", "base": "tiny", "objective": {"metric": METRIC, "mode": "max"},
                         "space": {"optim.image_lr": {"loguniform": [1.0e-4, 1.0e-2]}}}, source="unit.yaml")
    context = TrialContext(study, uri, experiment, parent, str(tmp_path), {}, Connector(uri))
    with study_session(study, context):
        pass

    summary = client.get_run(parent)
    assert summary.data.metrics == {"study/best_value": 72.5, "study/baseline_value": 61.0,
                                    "study/trials_completed": 3.0, "study/trials_pruned": 1.0,
                                    "study/trials_stopped": 0.0, "study/trials_failed": 1.0,
                                    "study/trials_interrupted": 0.0}
    note = summary.data.tags[NOTE]
    assert f"[sums-001](#/experiments/{experiment}/runs/{runs['best']}) with {METRIC} = 72.5" in note
    assert "3 completed, 1 pruned, 1 failed" in note and "sums-000" in note and "61" in note

    notes = {key: client.get_run(run_id).data.tags[NOTE] for key, run_id in runs.items()}
    assert notes["pruned"] == f"pruned at loop 1 · {METRIC} 80 · optim.image_lr=0.0005123, feedback.loops=2"
    assert notes["base"] == f"completed · {METRIC} 61 · baseline: cross-attention off"
    assert notes["failed"].startswith("failed: ValueError: boom · optim.image_lr=")


def test_a_running_trial_without_values_has_a_short_line():
    from tests.unit.mlflow_runs import make_run

    run = make_run("t", {"aaclip.outcome": "running"}, {})
    assert trial_note(run, METRIC, list(SPACE)) == "running"
