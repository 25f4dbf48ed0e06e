"""The study session closes the parent run once, with how the whole study ended (real SQLite MLflow store).

The phases inside a session (search, confirmation) never close it themselves; a Ctrl-C that lands between two
phases' fit() (where Tune does not catch it) is an interruption like one inside, not a crash.
"""
from __future__ import annotations


import pytest
from mlflow.tracking import MlflowClient

from study.driver import study_session
from study.interrupt import StudyInterrupted
from study.spec import parse_study
from study.tracking import DRIVER_STATE, Connector
from study.trainable import TrialContext


# The session sets the driver's environment (MLFLOW_TRACKING_URI and Tune's settings): restored after each test.
pytestmark = pytest.mark.usefixtures("restored_environment")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    return uri, client, client.create_experiment("driver", artifact_location=str(folder / "artifacts"))


def session_context(store, tmp_path) -> tuple[MlflowClient, TrialContext]:
    uri, client, experiment = store
    study = parse_study({"name": "session", "base": "tiny", "objective": {"metric": "val/pixel_auroc", "mode": "max"},
                         "space": {"optim.image_lr": {"loguniform": [1.0e-4, 1.0e-2]}}}, source="unit.yaml")
    parent = client.create_run(experiment, tags={  # what every study's parent run carries (launch.py)
        "aaclip.role": "study", "aaclip.study": "session", "aaclip.objective": "val/pixel_auroc",
        "aaclip.mode": "max"}).info.run_id
    client.set_terminated(parent, status="KILLED")  # as a resumed study's parent starts
    context = TrialContext(study, uri, experiment, parent, str(tmp_path), {}, Connector(uri))
    return client, context


def ended(client: MlflowClient, context: TrialContext) -> tuple[str, str]:
    run = client.get_run(context.parent_run_id)
    return run.info.status, run.data.tags.get(DRIVER_STATE, "")


def test_parent_runs_through_the_phases_and_finishes_once_at_the_end(store, tmp_path):
    client, context = session_context(store, tmp_path)
    with study_session(context.study, context):
        assert ended(client, context) == ("RUNNING", "")  # between and during the phases
    assert ended(client, context) == ("FINISHED", "finished")


def test_ctrl_c_between_phases_is_an_interruption(store, tmp_path):
    client, context = session_context(store, tmp_path)
    with pytest.raises(StudyInterrupted, match="aaclip-study resume session") as raised:
        with study_session(context.study, context):
            raise KeyboardInterrupt
    assert raised.value.code == 130
    assert ended(client, context) == ("KILLED", "interrupted")


def test_a_crash_in_any_phase_marks_the_parent_crashed(store, tmp_path):
    client, context = session_context(store, tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with study_session(context.study, context):
            raise RuntimeError("boom")
    assert ended(client, context) == ("KILLED", "crashed")
