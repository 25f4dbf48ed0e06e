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
