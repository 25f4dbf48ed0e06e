"""A trial that Ray runs again after an earlier attempt trained and logged every epoch (the driver stopped before
it saw the final report) is told as finished from its run, not trained again (study/trainable.py)."""
from __future__ import annotations

from mlflow.tracking import MlflowClient

from study.record import Tag
from study.trainable import finished_run


def test_only_a_run_with_every_planned_epoch_logged_counts_as_finished(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("rerun", artifact_location=str(tmp_path / "artifacts"))

    def trial_run(trial_id: str, last_epoch: int | None):
        tags = {Tag.ROLE: "confirm", Tag.STUDY: "s", Tag.TRIAL_ID: trial_id}
        if last_epoch is not None:
            tags[Tag.LAST_EPOCH] = str(last_epoch)
        return client.create_run(experiment, tags=tags).info.run_id

    done, partway = trial_run("done", 4), trial_run("partway", 3)
    trial_run("fresh", None)
    assert finished_run(client, experiment, "s", "done", planned=4).info.run_id == done
    assert finished_run(client, experiment, "s", "partway", planned=4) is None, partway
    assert finished_run(client, experiment, "s", "fresh", planned=4) is None
    assert finished_run(client, experiment, "s", "never-opened", planned=4) is None
    assert finished_run(client, experiment, "other-study", "done", planned=4) is None
