"""Driver-side bookkeeping: how a trial's end is named, the progress line, what travels to workers."""
from __future__ import annotations

import os
from types import SimpleNamespace

from study.callbacks import Progress, progress_line, trial_outcome
from study.guard import GradientGuard
from aaclip.mlflow_env import client_settings
from study.spec import GuardSpec
from study.trainable import TrialContext


def trial(trial_id: str, status: str, **result) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status=status, last_result=result, config={})


def test_outcomes_completed_guard_stopped_and_pruned():
    guard = GradientGuard(GuardSpec())
    guard.reasons["g"] = "guard: train/image_loss is nan at epoch 2"
    assert trial_outcome(trial("c", "TERMINATED", **{"trial/completed": 1.0}), guard, "loop") == ("completed", "")
    assert trial_outcome(trial("g", "TERMINATED", loop=1), guard, "loop")[0] == "stopped"
    outcome, reason = trial_outcome(trial("p", "TERMINATED", loop=1.0), guard, "loop")
    assert outcome == "pruned" and "ASHA" in reason and "loop 1" in reason


def test_progress_line_counts_and_best_so_far():
    trials = [trial("a", "TERMINATED", **{"trial/completed": 1.0}), trial("b", "TERMINATED"),
              trial("c", "RUNNING"), trial("d", "PENDING"), trial("e", "ERROR")]
    line = progress_line("s", trials, "val/pixel_auroc", "max", {"a": 61.0, "b": 70.5})
    assert "1 done, 1 pruned/stopped, 1 failed, 1 running, 1 pending" in line
    assert "best completed: val/pixel_auroc 70.5" in line
    assert "val/loss 0.1 " in progress_line("s", trials, "val/loss", "min", {"a": 0.2, "b": 0.1})


def test_tracking_credentials_travel_with_the_trial_context(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ada")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
    context = TrialContext.from_driver(study=None, tracking_uri="http://tracking:5000", experiment_id="1",
                                       parent_run_id="p", aaclip_home=tmp_path)
    # the credentials, and the MLflow client settings of aaclip/mlflow_env.py (no telemetry, bounded requests)
    assert context.env == {"MLFLOW_TRACKING_USERNAME": "ada", "MLFLOW_TRACKING_PASSWORD": "secret",
                           **client_settings()}
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "elsewhere")  # every variable it sets is restored after the test
    monkeypatch.setenv("AACLIP_HOME", "elsewhere")
    context.apply_environment()
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "ada" and os.environ["MLFLOW_TRACKING_URI"] == "http://tracking:5000"
    assert os.environ["AACLIP_HOME"] == str(tmp_path)


def test_progress_line_shows_where_each_running_trial_is():
    class Named(SimpleNamespace):
        def __str__(self) -> str:
            return self.trial_id

    trials = [Named(trial_id="s-001", status="RUNNING", last_result={"loop": 2.0, "epoch": 5.0}, config={}),
              Named(trial_id="s-002", status="RUNNING", last_result={}, config={}),  # no report yet
              Named(trial_id="s-003", status="TERMINATED", last_result={"loop": 1.0, "epoch": 2.0}, config={})]
    line = progress_line("s", trials, "val/pixel_auroc", "max", {})
    assert line.endswith("2 running, 0 pending (s-001 loop 2 epoch 5)")


def test_progress_line_estimates_time_left_per_trial_and_for_the_phase():
    class Named(SimpleNamespace):
        def __str__(self) -> str:
            return self.trial_id

    def report(loop: int, epoch: int, seconds: float) -> dict:  # a trial of 8 planned epochs
        return {"loop": loop, "epoch": epoch, "trial/planned_epochs": 8, "time_total_s": seconds,
                "training_iteration": epoch}

    trials = [Named(trial_id="t001", status="TERMINATED", last_result={**report(2, 8, 96.0), "trial/completed": 1}),
              Named(trial_id="t002", status="RUNNING", last_result=report(2, 6, 60.0)),  # 10 s an epoch, 2 left
              Named(trial_id="t003", status="RUNNING", last_result=report(1, 2, 40.0))]  # 20 s an epoch, 6 left
    line = progress_line("s", trials, "val/pixel_auroc", "max", {}, total=5)
    assert "(t002 loop 2 epoch 6/8, ~20 s left; t003 loop 1 epoch 2/8, ~2 min left)" in line
    # left: 20 s + 120 s for the running two, and 2 trials not started yet at the median whole schedule
    # (96, 80, 160 s -> 96 s each), shared by the 2 running side by side: (140 + 192) / 2 = 166 s
    assert line.endswith("; ~3 min left at full schedules")
    assert "left at full" not in progress_line("s", trials, "val/pixel_auroc", "max", {})  # no total, no guess


def test_progress_line_after_ctrl_c_counts_stopped_trials_as_interrupted():
    trials = [trial("a", "TERMINATED", **{"trial/completed": 1.0}), trial("b", "TERMINATED"), trial("c", "TERMINATED")]
    line = progress_line("s", trials, "val/pixel_auroc", "max", {}, interrupted=["b", "c"])
    assert "1 done, 0 pruned/stopped" in line and "2 interrupted" in line


def test_confirmation_progress_names_no_best_run():
    """The confirmation's best single run may be a twin or the base model: its lines count runs only."""
    lines = []
    done = trial("a", "TERMINATED", **{"trial/completed": 1.0})
    for progress in (Progress("s", "val/pixel_auroc", "max", echo=lambda line, **_: lines.append(line)),
                     Progress("s confirmation", "val/pixel_auroc", "max", echo=lambda line, **_: lines.append(line),
                              show_best=False)):
        progress.on_trial_result(0, [done], done, {"trial/completed": 1.0, "val/pixel_auroc": 61.0})
        progress.show([done], force=True)
    assert "best completed: val/pixel_auroc 61" in lines[0]
    assert lines[1].endswith("s confirmation: 1 done, 0 pruned/stopped, 0 failed, 0 running, 0 pending")
