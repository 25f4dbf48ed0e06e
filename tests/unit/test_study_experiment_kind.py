"""The study's MLflow experiment opens on the model-training runs table, not MLflow 3's GenAI pages."""
from __future__ import annotations

from pathlib import Path

import study  # noqa: F401  (telemetry off before mlflow is imported)
from mlflow import MlflowClient

from study.tracking import EXPERIMENT_KIND, ensure_experiment

KIND = "mlflow.experimentKind"


def client_at(folder: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


def test_new_and_existing_experiments_get_the_training_kind(tmp_path: Path) -> None:
    client = client_at(tmp_path)
    created = ensure_experiment(client, "fresh")
    assert client.get_experiment(created).tags[KIND] == EXPERIMENT_KIND[KIND] == "custom_model_development"
    older = client.create_experiment("older", artifact_location=str(tmp_path / "artifacts"))
    assert KIND not in client.get_experiment(older).tags
    assert ensure_experiment(client, "older") == older
    assert client.get_experiment(older).tags[KIND] == "custom_model_development"


def test_a_kind_the_user_chose_is_kept(tmp_path: Path) -> None:
    client = client_at(tmp_path)
    chosen = client.create_experiment("mine", artifact_location=str(tmp_path / "artifacts"),
                                      tags={KIND: "genai_development"})
    ensure_experiment(client, "mine")
    assert client.get_experiment(chosen).tags[KIND] == "genai_development"


def test_the_printed_link_shows_the_study_best_first():
    """The query MLflow 3.17's UI reads (server/js: searchFilter, orderByKey, orderByAsc); the browser test
    (tests/integration/test_mlflow_ui.py) checks the UI honours it."""
    from urllib.parse import parse_qs

    from study.tracking import runs_link

    link = runs_link("http://127.0.0.1:5000/", "7", "smoke-1", "val/pixel_auroc", "max")
    base, query = link.split("?")
    assert base == "http://127.0.0.1:5000/#/experiments/7/runs"
    assert parse_qs(query) == {"searchFilter": ["tags.`aaclip.study` = 'smoke-1'"],
                               "orderByKey": ["metrics.`val/pixel_auroc`"], "orderByAsc": ["false"],
                               "workflowType": ["machine_learning"]}  # the sidebar on model training, not GenAI
    assert "orderByAsc=true" in runs_link("http://h", "7", "s", "val/loss", "min")
    assert runs_link("http://h", "7") == "http://h/#/experiments/7/runs?workflowType=machine_learning"


def test_a_saved_study_view_is_what_the_link_opens(tmp_path: Path) -> None:
    """Columns cannot be chosen through the URL: the study's view (search, sort, columns) is an experiment tag
    that MLflow 3.17's UI restores from ?viewStateShareKey=<study>."""
    import json

    from study.tracking import SHARED_VIEW, save_study_view, study_link

    client = client_at(tmp_path)
    experiment = ensure_experiment(client, "views")
    uri = "http://127.0.0.1:5000"
    assert "orderByKey=" in study_link(client, uri, experiment, "s1", "val/loss", "min")  # no view saved yet
    save_study_view(client, experiment, "s1", "val/loss", "min", ["optim.image_lr"])
    assert study_link(client, uri, experiment, "s1", "val/loss", "min") == \
        f"{uri}/#/experiments/{experiment}/runs?viewStateShareKey=s1&workflowType=machine_learning"
    state = json.loads(client.get_experiment(experiment).tags[SHARED_VIEW + "s1"])
    assert state["orderByKey"] == "metrics.`val/loss`" and state["orderByAsc"] is True
    assert state["selectedColumns"][:2] == ["metrics.`val/loss`", "tags.`aaclip.outcome`"]
    assert "params.`optim.image_lr`" in state["selectedColumns"]
    # whole keys in the headers: the UI sizes the columns that columnOrder lists
    assert state["columnOrder"] == state["selectedColumns"] and set(state["columnWidths"]) == set(state["columnOrder"])
    assert state["columnWidths"]["params.`optim.image_lr`"] == 7 * len("optim.image_lr") + 40
