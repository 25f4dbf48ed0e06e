"""A study end to end on a real two-node Ray cluster and a real MLflow server, with its driver killed mid-way.

The objective is `lr/image` (reported on every Stage-2 epoch and proportional to the sampled image_lr): its
ordering is known, so ASHA's decisions are too. The baseline keeps the base's larger image_lr, so every
searched trial that reaches the loop-1 rung after the baseline is below the cutoff (reduction factor 4) and
is stopped: the study is sure to prune, and the searcher must hear of it.
"""
from __future__ import annotations

import re
import subprocess
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from aaclip.config import flatten, load_config
from study.report import write_report
from study.asha_state import reported_history
from study.status import study_state, study_status
from study.record import find_parent_run, trial_runs
from study.tracking import HEARTBEAT_STALE_S

NAME = "lifecycle"


def outcomes(client: MlflowClient) -> list[str]:
    parent = find_parent_run(client, NAME)
    return [run.data.tags.get("aaclip.outcome", "") for run in trial_runs(client, parent)] if parent else []


@pytest.mark.slow
def test_killed_driver_resumes_and_everything_is_tracked_once(ray_cluster, mlflow_uri, study_home, write_spec,
                                                              cli, wait_for, tmp_path):
    spec = write_spec(
        NAME,
        objective={"metric": "lr/image", "mode": "max"},
        space={"optim.image_lr": {"loguniform": [1.0e-5, 1.0e-4]},
               "cross_attention.image_scale.learnable": {"choice": [False, True]}},
        scheduler={"kind": "asha", "time_attr": "loop", "grace_period": 1, "reduction_factor": 4},
        baseline=True,
        # 5 searched trials: when the first one is pruned (at the latest the 2nd, which reaches the rung after the
        # baseline), the 4th and 5th are still to come, so the driver is killed with work left to resume.
        trials={"num_samples": 5, "max_concurrent": 2, "resources": {"cpu": 1, "gpu": 0}, "max_failures": 1},
    )
    client = MlflowClient(mlflow_uri)
    address = ray_cluster.address
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(cli.command("run", str(spec), "--address", address, "--tracking-uri", mlflow_uri),
                                  stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: "pruned" in outcomes(client), 420, "a trial is pruned", driver)
        time.sleep(5)  # past the next experiment-state save (every 3 s), so Tune's state knows of the pruning
        assert "running" in outcomes(client) or len(outcomes(client)) < 6, "nothing left to resume"
        driver.kill()
        driver.wait(timeout=30)

    # A driver killed without a word: its parent run still says RUNNING, but its heartbeat goes stale.
    killed = find_parent_run(client, NAME)
    assert killed.info.status == "RUNNING" and study_state(killed) == "running"
    assert study_state(killed, now=time.time() + HEARTBEAT_STALE_S + 30) == "interrupted"

    # What ASHA had recorded at the loop-1 rung before the kill: each trial's first result at loop >= 1 (a
    # worker of the dead driver may still log one more before Ray stops it: the resume can only see more).
    reached = [trial for trial, points in reported_history(client, killed, "lr/image", "loop").items()
               if any(loop >= 1 for loop, _ in points)]
    assert reached, "a trial was pruned, so the rung holds results"

    resumed = cli.run("resume", NAME, "--address", address, "--tracking-uri", mlflow_uri)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "finished" in resumed.stdout
    restored = re.search(r"ASHA: (\d+) rung result\(s\)", resumed.stdout)
    assert restored and int(restored.group(1)) >= len(reached), resumed.stdout

    parent = find_parent_run(client, NAME)
    assert parent.info.status == "FINISHED"
    runs = trial_runs(client, parent)
    check_one_run_per_trial(runs, parent)
    check_run_contents(client, runs)
    check_baseline(runs)
    check_searcher_heard_of_pruning(client, parent, runs)
    assert len({run.data.tags["aaclip.node"] for run in runs}) == 2, "trials ran on both Ray nodes"
    assert any((study_home / "cache").rglob("*")), "trials share one feature cache under $AACLIP_HOME"

    status = study_status(client, NAME)
    assert len(status.trials) == 6 and {row.state for row in status.trials} <= {"completed", "pruned"}
    assert all("ASHA" in row.reason for row in status.trials if row.state == "pruned")
    assert all(not row.reason for row in status.trials if row.state == "completed"), "outcome and reason agree"

    index = write_report(client, NAME, tmp_path / "report")
    assert (tmp_path / "report" / "optimization_history.png").is_file() and index.is_file()
    page = index.read_text()
    pruned = [run.info.run_name for run in runs if run.data.tags["aaclip.outcome"] == "pruned"]
    assert pruned and all(f"<td>{name}</td><td class='pruned'>pruned</td>" in page for name in pruned)
    assert "src='data:image/png;base64," in page and ".png'" not in page  # renders inside MLflow's viewer
    assert "report/index.html" in {item.path for item in client.list_artifacts(parent.info.run_id, "report")}


def check_one_run_per_trial(runs: list, parent) -> None:
    trial_ids = [run.data.tags["aaclip.trial_id"] for run in runs]
    assert len(runs) == 6 and len(set(trial_ids)) == 6, trial_ids
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in runs)
    assert all(run.info.status in ("FINISHED", "KILLED") for run in runs)


def check_run_contents(client: MlflowClient, runs: list) -> None:
    for run in runs:
        epochs = [point.step for point in client.get_metric_history(run.info.run_id, "epoch")]
        assert epochs == list(range(1, len(epochs) + 1)), f"{run.info.run_name}: epochs {epochs} (duplicated?)"
        settings = set(flatten(load_config("tiny").to_dict()))  # the whole flat config (the baseline: see below)
        assert {key for key in settings if not key.startswith("cross_attention.")} <= set(run.data.params)
        assert run.data.params["model.name"] == "aaclip-tiny"
        for split in ("train", "val", "test"):  # which images the trial saw, for auditing selection vs test
            assert int(run.data.params[f"split.{split}.images"]) > 0
            assert len(run.data.params[f"split.{split}.fingerprint"]) == 16
        assert run.data.params["split.val.fingerprint"] != run.data.params["split.test.fingerprint"]
        check_watched(client, run)
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "gradient_flow.png", "gallery", "best_adapters"} <= artifacts, artifacts
        gallery = {item.path for item in client.list_artifacts(run.info.run_id, "gallery")}
        assert "gallery/epoch-0000.png" in gallery, "the untrained model's maps"
        check_loop_curves(client, run)
        assert client.list_artifacts(run.info.run_id, "best_adapters")[0].path == "best_adapters/adapters.pt"
        if run.data.tags["aaclip.outcome"] == "completed":
            assert [p.step for p in client.get_metric_history(run.info.run_id, "val/pixel_auroc")] == [2, 4]
            assert run.data.metrics["loop"] == 2


def check_loop_curves(client: MlflowClient, run) -> None:
    """loop/* curves: one point per loop from 0 (untrained), none twice although the driver was killed."""
    def history(key: str) -> dict[int, float]:
        points = client.get_metric_history(run.info.run_id, key)
        assert len({point.step for point in points}) == len(points), f"{run.info.run_name}: {key} twice"
        return {point.step: point.value for point in points}

    loops, per_epoch = history("loop/val/pixel_auroc"), history("val/pixel_auroc")
    assert sorted(loops) == list(range(len(loops))) and 0 in loops, f"{run.info.run_name}: loops {sorted(loops)}"
    for loop, epoch in history("loop/epoch").items():  # a loop's end is the evaluation of its last epoch
        assert loop == 0 and epoch == 0 or loops[loop] == per_epoch[int(epoch)]
    assert run.data.tags["aaclip.schedule"] == "loop 1: text 1, image 2 · loop 2: text 3, image 4"
    if run.data.tags["aaclip.outcome"] == "completed":
        assert sorted(loops) == [0, 1, 2]


def check_watched(client: MlflowClient, run) -> None:
    """The splits as dataset inputs (one per context, digest = fingerprint) and MLflow's system metrics: at least
    the sample a trial logs as it ends (a pruned trial's worker is killed first, so only completed ones)."""
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    by_context = {tag.value: item.dataset for item in inputs for tag in item.tags if tag.key == "mlflow.data.context"}
    assert sorted(by_context) == ["test", "train", "val"], run.info.run_name
    assert all(by_context[split].digest == run.data.params[f"split.{split}.fingerprint"] for split in by_context)
    if run.data.tags["aaclip.outcome"] == "completed":
        for key in ("system/cpu_utilization_percentage", "system/process_memory_rss_megabytes"):
            assert client.get_metric_history(run.info.run_id, key), f"{run.info.run_name}: no {key}"


def check_baseline(runs: list) -> None:
    baselines = [run for run in runs if run.data.tags["aaclip.baseline"] == "true"]
    assert len(baselines) == 1
    baseline = baselines[0]
    assert baseline.info.run_name == "baseline"
    assert baseline.data.params["cross_attention.enabled"] == "false"
    # Nothing of cross-attention but that it is off: no scale, heads or start loop as params, no scale curve.
    assert [key for key in baseline.data.params if key.startswith("cross_attention.")] == ["cross_attention.enabled"]
    assert not [key for key in baseline.data.metrics if key.startswith(("scale/", "loop/scale/"))]
    searched = [run for run in runs if run is not baseline]
    settings = set(flatten(load_config("tiny").to_dict()))
    assert all(settings <= set(run.data.params) and "scale/image" in run.data.metrics for run in searched)
    assert baseline.data.tags["aaclip.outcome"] == "completed"  # ASHA never stops the reference


def check_searcher_heard_of_pruning(client: MlflowClient, parent, runs: list) -> None:
    storage = parent.data.tags["aaclip.optuna_storage"]
    trials = {trial.number: trial for trial in optuna.load_study(study_name=NAME, storage=storage).trials}
    searched = [run for run in runs if run.data.tags["aaclip.baseline"] == "false"]
    assert all(trial.state.is_finished() for trial in trials.values())  # none left RUNNING by the killed driver
    for run in searched:
        trial = trials[int(run.data.tags["aaclip.optuna_trial"])]
        if run.data.tags["aaclip.outcome"] == "pruned":
            assert trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values
        else:  # a trial recorded as pruned before the kill is never re-run to completion by `resume`
            assert trial.state == optuna.trial.TrialState.COMPLETE, run.info.run_name
    assert any(run.data.tags["aaclip.outcome"] == "pruned" for run in searched)
    assert sum(trial.state == optuna.trial.TrialState.PRUNED for trial in trials.values()) >= 1
