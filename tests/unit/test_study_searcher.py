"""The searcher tells Optuna the truth: pruned is PRUNED, failed is FAIL, finished is COMPLETE."""
from __future__ import annotations

import optuna
import yaml

from study.record import COMPLETED_KEY
from study.searcher import INDEX_KEY, BaselineFirst, StudyOptunaSearch, is_baseline, run_identity
from study.spec import parse_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
METRIC = "val/pixel_auroc"


def make_study(**changes):
    data = {"name": "unit", "base": "tiny", "objective": {"metric": METRIC, "mode": "max"},
            "space": {"optim.image_lr": {"loguniform": [1.0e-4, 1.0e-2]},
                      "cross_attention.image_scale.learnable": {"choice": [False, True]}},
            "trials": {"num_samples": 4}}
    data.update(changes)
    return parse_study(yaml.safe_load(yaml.safe_dump(data)), source="unit.yaml")


def states(search: StudyOptunaSearch) -> list:
    return [trial.state for trial in search.optuna_study.trials]


def test_completed_pruned_and_failed_trials_reach_optuna():
    search = StudyOptunaSearch(make_study(), storage=None, time_attr="loop")
    for trial_id in ("a", "b", "c"):
        point = search.suggest(trial_id)
        assert set(point) >= {"optim.image_lr", "cross_attention.image_scale.learnable"}
        search.on_trial_result(trial_id, {"loop": 1, "epoch": 1})  # no objective on this epoch: ignored
        search.on_trial_result(trial_id, {"loop": 1, "epoch": 2, METRIC: 50.0})
    search.on_trial_complete("a", {"loop": 2, METRIC: 60.0, COMPLETED_KEY: 1.0})
    search.on_trial_complete("b", {"loop": 2, METRIC: 40.0})  # stopped by ASHA on its loop-2 result
    search.on_trial_complete("c", None, error=True)
    assert states(search) == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                              optuna.trial.TrialState.FAIL]
    completed, pruned, _ = search.optuna_study.trials
    assert completed.value == 60.0
    assert pruned.intermediate_values == {1: 50.0, 2: 40.0}  # the result that got it stopped is heard too


def test_baseline_comes_first_and_never_reaches_optuna():
    inner = StudyOptunaSearch(make_study(), storage=None, time_attr="loop")
    searcher = BaselineFirst(inner)
    first, second = searcher.suggest("base"), searcher.suggest("x")
    assert is_baseline(first) and first[INDEX_KEY] == 0
    assert not is_baseline(second) and second[INDEX_KEY] == 1
    searcher.on_trial_result("base", {"loop": 1, METRIC: 10.0})
    searcher.on_trial_complete("base", {"loop": 1, METRIC: 10.0, COMPLETED_KEY: 1.0})
    assert len(inner.optuna_study.trials) == 1
    state = searcher.get_state()
    assert "searcher" not in state and state["suggested"] == 1
    restored = BaselineFirst(StudyOptunaSearch(make_study(), storage=None, time_attr="loop"))
    restored.set_state(state)
    assert not restored.baseline_pending and restored.baseline_trial_id == "base"


def test_grid_searcher_visits_every_point_once():
    study = make_study(space={"seed": {"grid": [1, 2]},
                              "cross_attention.image_scale.learnable": {"grid": [False, True]}},
                       searcher={"kind": "grid"}, trials={"num_samples": None})
    search = StudyOptunaSearch(study, storage=None, time_attr="loop")
    points = [search.suggest(str(index)) for index in range(study.num_samples())]
    assert study.num_samples() == 4
    assert sorted((p["seed"], p["cross_attention.image_scale.learnable"]) for p in points) == \
        [(1, False), (1, True), (2, False), (2, True)]


def test_seeded_searcher_repeats_its_draws():
    draws = [StudyOptunaSearch(make_study(), storage=None, time_attr="loop").suggest("a") for _ in range(2)]
    assert draws[0] == draws[1]


def test_restore_fails_optuna_trials_the_saved_state_never_knew(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    search = StudyOptunaSearch(make_study(), storage=storage, time_attr="loop")
    search.suggest("kept")
    search.suggest("told")
    search.save(str(tmp_path / "searcher.pkl"))
    search.suggest("lost")  # asked after the last save, then the driver died
    search.on_trial_complete("told", {"loop": 1, METRIC: 1.0})  # told after the last save
    restored = StudyOptunaSearch(make_study(), storage=storage, time_attr="loop")
    restored.restore(str(tmp_path / "searcher.pkl"))
    states = [trial.state for trial in restored.optuna_study.trials]
    assert states == [optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.PRUNED,
                      optuna.trial.TrialState.FAIL]
    restored.on_trial_result("told", {"loop": 2, METRIC: 2.0})  # Tune runs it again: Optuna keeps its verdict
    restored.on_trial_complete("told", {"loop": 2, METRIC: 2.0, COMPLETED_KEY: 1.0})
    restored.on_trial_complete("kept", {"loop": 2, METRIC: 3.0, COMPLETED_KEY: 1.0})
    assert [trial.state for trial in restored.optuna_study.trials][:2] == [optuna.trial.TrialState.COMPLETE,
                                                                           optuna.trial.TrialState.PRUNED]


def test_optuna_trials_point_at_their_mlflow_runs_and_hear_every_rung():
    """The objective is named after the metric; each Optuna trial carries its MLflow run id and trial name; a
    completed trial's last rung reaches Optuna even when Tune hands that result to on_trial_complete only."""
    search = StudyOptunaSearch(make_study(), storage=None, time_attr="loop")
    assert search.optuna_study.metric_names == [METRIC]
    search.suggest("a")
    identity = run_identity("run-a", "unit-001")
    search.on_trial_result("a", {"loop": 1, "epoch": 2, METRIC: 50.0, **identity})
    search.on_trial_complete("a", {"loop": 2, "epoch": 4, METRIC: 60.0, COMPLETED_KEY: 1.0, **identity})
    trial = search.optuna_study.trials[0]
    assert trial.user_attrs == {"mlflow_run_id": "run-a", "mlflow_trial_name": "unit-001"}
    assert trial.intermediate_values == {1: 50.0, 2: 60.0} and trial.value == 60.0
