"""Lineage into MLflow's Model Registry: study -> export --register -> retrain --register -> load (issue 11.6).

A real study (two-node Ray cluster, real MLflow server), its best trial exported and registered, the export
retrained with tracking and registered again; both versions load back into aaclip with one call, with adapter
weights equal to the trained ones and the same predictions. And the refusals: --register without a tracking
server, an unreachable server, an empty model name: one line, exit 2, nothing written.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from aaclip import cli as aaclip_cli
from study import cli as study_cli
from tests.bad_inputs import changes, run_main, snapshot

NAME = "lineage"
MODEL = "aaclip-lineage"


def assert_same_adapters(loaded: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> None:
    assert set(loaded) == set(trained)
    for key, value in trained.items():
        assert torch.equal(loaded[key], value), key


def registered_model_matches(uri: str, version: str, adapters: dict[str, torch.Tensor], config_file: Path) -> None:
    """One call loads an AdaptedCLIP with exactly these adapters, predicting as a model built from them does,
    and MLflow's own pyfunc predicts the same."""
    from aaclip.config import load_config
    from aaclip.mlflow_model import build_adapted, load_pyfunc, load_registered, predict_anomalies

    model = load_registered(f"models:/{MODEL}/{version}", tracking_uri=uri)
    assert not model.training
    assert_same_adapters(model.trainable_state(), adapters)
    config = load_config(config_file)
    reference = build_adapted(config, adapters, "trained adapters")
    images = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    expected = predict_anomalies(reference, config, images, "disc")
    for predicted in (predict_anomalies(model, config, images, "disc"),
                      load_pyfunc(f"models:/{MODEL}/{version}", uri).predict(images, params={"class_name": "disc"})):
        for key in ("anomaly_map", "image_score"):
            np.testing.assert_array_equal(predicted[key], expected[key])


@pytest.mark.slow
def test_export_register_then_retrain_register(ray_cluster, mlflow_uri, study_home, write_spec, cli, tmp_path,
                                               capsys, monkeypatch):
    from aaclip.checkpoint import load_adapters
    from aaclip.config import load_config, mlflow_params
    from study.record import find_parent_run, trial_runs

    spec = write_spec(NAME, overrides={"feedback.loops": 1, "feedback.text_epochs": 1, "feedback.image_epochs": 1})
    ran = cli.run("run", str(spec), "--address", ray_cluster.address, "--tracking-uri", mlflow_uri)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    client = MlflowClient(mlflow_uri)
    trial = trial_runs(client, find_parent_run(client, NAME))[0]

    # export --register: the trial's best adapters, registered under the trial's run
    best = tmp_path / "best.yaml"
    exported = run_main(study_cli.main, ["aaclip-study", "export", NAME, "-o", str(best), "--tracking-uri",
                                         mlflow_uri, "--register", MODEL], capsys, monkeypatch)
    assert exported.code == 0, exported.stderr[-3000:]
    assert f"registered: models:/{MODEL}/1" in exported.stdout
    first = client.get_model_version(MODEL, "1")
    assert first.run_id == trial.info.run_id
    assert first.tags["aaclip.source_study"] == NAME and first.tags["aaclip.source_trial"] == trial.info.run_name
    assert trial.info.run_name in first.description
    trial_adapters = load_adapters(Path(client.download_artifacts(trial.info.run_id, "best_adapters/adapters.pt",
                                                                  str(tmp_path))).parent)
    registered_model_matches(mlflow_uri, "1", trial_adapters, best)

    # the retrain: a tracked run linked to the trial, with its test metrics, registered as version 2
    out = tmp_path / "retrain"
    monkeypatch.chdir(tmp_path)
    trained = run_main(aaclip_cli.main, ["aaclip", "train", str(best), "--out", str(out), "--test",
                                         "--tracking-uri", mlflow_uri, "--register", MODEL], capsys, monkeypatch)
    assert trained.code == 0, trained.stderr[-3000:]
    assert f"registered: models:/{MODEL}/2" in trained.stdout
    second = client.get_model_version(MODEL, "2")
    retrain = client.get_run(second.run_id)
    assert retrain.info.status == "FINISHED" and retrain.info.experiment_id == trial.info.experiment_id
    tags = retrain.data.tags
    assert tags["aaclip.role"] == "retrain" and tags["aaclip.source_run_id"] == trial.info.run_id
    assert tags["aaclip.source_trial"] == trial.info.run_name and tags["aaclip.source_study"] == NAME
    assert tags["aaclip.export_file"] == str(best.resolve())
    assert trial.info.run_id in tags["mlflow.note.content"]
    assert second.tags["aaclip.source_run_id"] == trial.info.run_id
    config_params = mlflow_params(load_config(best))
    assert {key: retrain.data.params[key] for key in config_params} == \
        {key: trial.data.params[key] for key in config_params}, "the retrain's params are the trial's config"
    final = yaml.safe_load((out / "metrics.json").read_text())
    assert retrain.data.metrics["test/pixel_auroc"] == pytest.approx(final["test/pixel_auroc"])
    assert [point.step for point in client.get_metric_history(retrain.info.run_id, "epoch")] == [1, 2]
    loops = json.loads((out / "loops.json").read_text())  # the untrained start and the loop's end, as a trial's
    curve = client.get_metric_history(retrain.info.run_id, "loop/val/pixel_auroc")
    assert [(point.step, point.value) for point in curve] == \
        [(record["loop"], pytest.approx(record["val/pixel_auroc"])) for record in loops]
    registered_model_matches(mlflow_uri, "2", load_adapters(out / "checkpoint"), best)


@pytest.fixture
def train_folder(tmp_path: Path, tiny_config, monkeypatch) -> Path:
    folder = tmp_path / "case"
    folder.mkdir()
    (folder / "config.yaml").write_text(tiny_config.to_yaml())
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return folder


@pytest.mark.parametrize("extra, culprit", [
    (["--register", "m"], "--register m: needs a tracking server"),
    (["--tracking-uri", "http://127.0.0.1:9", "--register", "m"], "tracking server http://127.0.0.1:9 does not"),
    (["--tracking-uri", "http://127.0.0.1:9"], "http://127.0.0.1:9/health"),
    (["--tracking-uri", "http://127.0.0.1:9", "--register", " "], "--register: give the name"),
    (["--tracking-uri", "http://127.0.0.1:9", "--register", "team/model"], "--register team/model: MLflow model"),
], ids=["register-without-server", "register-unreachable", "tracking-unreachable", "register-empty-name",
        "register-slash"])
def test_train_refuses_tracking_mistakes(extra, culprit, train_folder: Path, tiny_data, capsys, monkeypatch):
    before = snapshot(train_folder, *tiny_data.values())
    outcome = run_main(aaclip_cli.main, ["aaclip", "train", "config.yaml", "--out", "run", *extra], capsys,
                       monkeypatch)
    outcome.assert_refused(culprit)
    assert changes(before, snapshot(train_folder, *tiny_data.values())) == []


def test_export_refuses_an_empty_model_name(tmp_path: Path, aaclip_home, capsys, monkeypatch) -> None:
    before = snapshot(tmp_path)
    outcome = run_main(study_cli.main, ["aaclip-study", "export", "any", "-o", str(tmp_path / "best.yaml"),
                                        "--register", ""], capsys, monkeypatch)
    outcome.assert_refused("--register: give the name")
    assert changes(before, snapshot(tmp_path)) == []


def test_training_without_tracking_never_imports_mlflow() -> None:
    """MLflow is imported only by the modules that log and register, and only with --tracking-uri."""
    probe = ("import sys, aaclip.cli, aaclip.train, aaclip.checkpoint, aaclip.evaluate, aaclip.preflight; "
             "print(sorted(name for name in sys.modules if name.split('.')[0] == 'mlflow'))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_export_register_of_a_trial_without_adapters_writes_nothing(mlflow_uri, tiny_config, tmp_path: Path,
                                                                    capsys, monkeypatch) -> None:
    """A trial that never finished an evaluation has no best adapters: refused, and no YAML, no model version."""
    from study.tracking import PARENT, ROLE, STUDY, TRIAL_ID, create_parent_run, ensure_experiment

    client = MlflowClient(mlflow_uri)
    study = "adapterless"
    experiment_id = ensure_experiment(client, study)
    parent = create_parent_run(client, experiment_id, study,
                               {"aaclip.objective": "val/pixel_auroc", "aaclip.mode": "max"}, {})
    trial = client.create_run(experiment_id, run_name="trial-0", tags={
        ROLE: "trial", STUDY: study, TRIAL_ID: "t0", PARENT: parent, "aaclip.outcome": "completed"})
    client.log_metric(trial.info.run_id, "val/pixel_auroc", 50.0)
    client.log_text(trial.info.run_id, tiny_config.to_yaml(), "config.yaml")
    folder = tmp_path / "out"
    folder.mkdir()
    outcome = run_main(study_cli.main, ["aaclip-study", "export", study, "-o", str(folder / "best.yaml"),
                                        "--tracking-uri", mlflow_uri, "--register", "never-made"], capsys, monkeypatch)
    outcome.assert_refused("trial trial-0 has no best_adapters/adapters.pt")
    assert list(folder.iterdir()) == []
    assert client.search_registered_models("name = 'never-made'") == []


def test_a_config_without_provenance_trains_into_its_own_experiment(mlflow_uri, train_folder: Path, capsys,
                                                                     monkeypatch) -> None:
    """Not exported from a study: no lineage tags, the aaclip-retrain experiment (opening on the runs table)."""
    outcome = run_main(aaclip_cli.main, ["aaclip", "train", "config.yaml", "--out", "run", "--tracking-uri",
                                         mlflow_uri, "--set", "feedback.loops=1", "--set", "feedback.image_epochs=1"],
                       capsys, monkeypatch)
    assert outcome.code == 0, outcome.stderr[-3000:]
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("aaclip-retrain")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    run = client.search_runs([experiment.experiment_id], "attributes.run_name = 'train-config'",
                             order_by=["attributes.start_time DESC"])[0]
    assert run.info.status == "FINISHED" and run.data.tags["aaclip.role"] == "retrain"
    assert not any(key.startswith(("aaclip.source_", "aaclip.export")) for key in run.data.tags)
    assert run.data.params["feedback.loops"] == "1" and "val/pixel_auroc" in run.data.metrics
