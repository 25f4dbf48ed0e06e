"""The confirmation phase on a real two-node Ray cluster and a real MLflow server, its driver killed mid-way.

A smoke-sized study (2 searched trials, 1 loop) confirms its best configuration on 2 fresh seeds: 2 runs with
cross-attention on, their 2 matched twins (off) and the base model on both seeds. The confirmation runs in the
same driver session as the search (the parent run stays RUNNING, not yet closed); Ctrl-C once a confirmation run
has finished stops it like a Ctrl-C in the search (exit 130, the resume command, the parent KILLED as
interrupted), and `resume` must continue without rerunning that run. (A driver killed without a word is
test_study_lifecycle's case; `resume` restores either the same way.) Then every confirmed run has its twin (the
same config apart from cross-attention, same seed), and the verdict equals a recomputation from the child runs'
own metrics.
"""
from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from study.export import export_trial
from study.status import format_status, study_status
from study.record import find_parent_run, trial_runs
from study.tracking import DRIVER_STATE
from study.verdict import confirmation_runs, study_verdict

NAME = "confirmed"
METRIC = "val/pixel_auroc"


def finished_confirmations(client: MlflowClient) -> list:
    parent = find_parent_run(client, NAME)
    runs = confirmation_runs(client, parent) if parent else []
    return [run for run in runs if run.data.tags.get("aaclip.outcome") == "completed"]


def attempts(run) -> tuple[str, int]:
    """Which worker last opened the run, and how many epochs it logged: a rerun changes both. (Not end_time:
    the worker and then the driver each close a finished run, so it may move after the trial completed.)"""
    return run.data.tags["aaclip.worker_pid"], int(run.data.metrics.get("epoch", 0))


@pytest.mark.slow
def test_confirmation_pairs_every_config_with_its_twin_and_resumes(ray_cluster, mlflow_uri, study_home, write_spec,
                                                                    cli, wait_for, tmp_path):
    spec = write_spec(NAME, overrides={"feedback.loops": 1, "feedback.text_epochs": 1, "feedback.image_epochs": 1},
                      trials={"num_samples": 2, "max_concurrent": 2, "resources": {"cpu": 1, "gpu": 0},
                              "max_failures": 0},
                      confirm={"top_k": 1, "seeds": 2})
    client = MlflowClient(mlflow_uri)
    address = ray_cluster.address
    with open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(cli.command("run", str(spec), "--address", address, "--tracking-uri", mlflow_uri),
                                  stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: finished_confirmations(client), 480, "a confirmation run finishes", driver)
        running = find_parent_run(client, NAME)  # one session: the search did not close the parent run
        assert running.info.status == "RUNNING" and DRIVER_STATE not in running.data.tags
        before = {run.info.run_id: attempts(run) for run in finished_confirmations(client)}
        driver.send_signal(signal.SIGINT)
        code = driver.wait(timeout=180)
    output = (tmp_path / "driver.log").read_text()
    assert code == 130, output[-3000:]
    assert f"aaclip-study resume {NAME}" in output and "finished" not in output, output[-3000:]
    interrupted = find_parent_run(client, NAME)
    assert interrupted.info.status == "KILLED" and interrupted.data.tags[DRIVER_STATE] == "interrupted"
    assert study_status(client, NAME).state == "interrupted"

    resumed = cli.run("resume", NAME, "--address", address, "--tracking-uri", mlflow_uri)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "continuing the confirmation" in resumed.stdout
    verdict_at, finished_at = (resumed.stdout.index("confirmed val/pixel_auroc on fresh seeds"),
                               resumed.stdout.index(f"study {NAME}: finished"))
    assert verdict_at < finished_at and resumed.stdout.count("finished;") == 1  # the closing lines once, last
    ended = find_parent_run(client, NAME)
    assert ended.info.status == "FINISHED" and ended.data.tags[DRIVER_STATE] == "finished"

    parent = find_parent_run(client, NAME)
    runs = confirmation_runs(client, parent)
    search = trial_runs(client, parent)
    assert sorted(run.data.tags["aaclip.role"] for run in runs) == ["base", "base", "confirm", "confirm", "twin",
                                                                    "twin"]
    assert all(run.data.tags["aaclip.outcome"] == "completed" for run in runs)
    for run in runs:  # short names that start with the role (the study's name is the parent's)
        tags = run.data.tags
        rank = "" if tags["aaclip.role"] == "base" else f"-r{tags['aaclip.confirm_rank']}"
        assert run.info.run_name == f"{tags['aaclip.role']}{rank}-s{tags['aaclip.confirm_seed']}", run.info.run_name
    finished_before = {run.info.run_id: attempts(run) for run in runs if run.info.run_id in before}
    assert finished_before == before, "a confirmation run finished before the kill was run again"
    check_fresh_seeds_and_twins(runs, search)
    check_verdict(client, parent, runs, tmp_path)

    status = format_status(study_status(client, NAME))
    assert "confirmed val/pixel_auroc on fresh seeds" in status and "on - off (paired)" in status
    provenance = export_trial(client, NAME, tmp_path / "best.yaml")
    assert provenance["selection"].startswith("the best confirmed mean")
    assert provenance["trial"] == runs[0].data.tags["aaclip.confirm_source"]


def without(params: dict[str, str], *keys: str) -> dict[str, str]:
    return {key: value for key, value in params.items() if key not in keys}


def check_fresh_seeds_and_twins(runs: list, search: list) -> None:
    search_seeds = {run.data.params["seed"] for run in search}
    confirmed = [run for run in runs if run.data.tags["aaclip.role"] == "confirm"]
    assert {run.data.params["seed"] for run in runs}.isdisjoint(search_seeds)
    assert len({run.data.tags["aaclip.confirm_seed"] for run in confirmed}) == 2
    source = next(run for run in search if run.info.run_name == confirmed[0].data.tags["aaclip.confirm_source"])
    for run in confirmed:
        seed, rank = run.data.tags["aaclip.confirm_seed"], run.data.tags["aaclip.confirm_rank"]
        assert run.data.params["seed"] == seed
        assert run.data.params["cross_attention.enabled"] == "true"
        assert without(run.data.params, "seed") == without(source.data.params, "seed")  # the searched config
        twins = [twin for twin in runs if twin.data.tags["aaclip.role"] == "twin"
                 and twin.data.tags["aaclip.confirm_seed"] == seed and twin.data.tags["aaclip.confirm_rank"] == rank]
        assert len(twins) == 1
        assert twins[0].data.params["cross_attention.enabled"] == "false"
        # Everything else the same; with cross-attention off, no setting of it is logged but that it is off.
        kept = {key: value for key, value in run.data.params.items() if not key.startswith("cross_attention.")}
        assert without(twins[0].data.params, "cross_attention.enabled") == kept
        bases = [base for base in runs if base.data.tags["aaclip.role"] == "base"
                 and base.data.params["seed"] == seed]
        assert len(bases) == 1 and bases[0].data.params["cross_attention.enabled"] == "false"


def interval(values: list[float]) -> tuple[float, float, float]:
    mean = float(np.mean(values))
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    return mean, low, high


def check_verdict(client: MlflowClient, parent, runs: list, folder: Path) -> None:
    by = {(run.data.tags["aaclip.role"], run.data.params["seed"]): run.data.metrics[METRIC] for run in runs}
    seeds = sorted({seed for _, seed in by})
    on = [by["confirm", seed] for seed in seeds]
    off = [by["twin", seed] for seed in seeds]
    base = [by["base", seed] for seed in seeds]
    verdict = study_verdict(client, parent)
    row = verdict.rows[0]
    expected = {"on": interval(on), "twin": interval(off), "difference": interval([a - b for a, b in zip(on, off)]),
                "base": interval(base)}
    computed = {"on": row.on, "twin": row.twin, "difference": row.difference, "base": verdict.base}
    for name, estimate in computed.items():
        assert (estimate.mean, estimate.low, estimate.high) == pytest.approx(expected[name], rel=1e-9, abs=1e-9), name
    logged = json.loads(Path(client.download_artifacts(parent.info.run_id, "confirm/verdict.json",
                                                       str(folder))).read_text())
    assert logged["rows"][0]["difference"]["mean"] == pytest.approx(expected["difference"][0])
    assert logged["base"]["high"] == pytest.approx(expected["base"][2])
    summary = client.get_run(parent.info.run_id).data.metrics
    assert summary["confirm/r1_on_minus_off"] == pytest.approx(expected["difference"][0])
    assert summary["confirm/base_mean"] == pytest.approx(expected["base"][0])
