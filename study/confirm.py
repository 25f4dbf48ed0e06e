"""The confirmation phase of a study (spec `confirm: {top_k, seeds}`), run by the driver after the search, in the
same session (study/driver.py: one parent run, heartbeat, Ctrl-C handling and closing for both phases).

A search ranks configurations on one seed each, and seeds move the objective by more than most differences a
study finds. So the top_k distinct configurations of the search rerun on fresh seeds (never used by the search),
each beside its matched twin (the same configuration with cross-attention off: same learning rates, loops,
epochs, data and seeds) and the base model on the same seeds. These are ordinary Ray Tune trials of a second
Tuner (`<storage>/<study>-confirm`, no early stopping), logged as child runs of the study's parent with
`aaclip.role = confirm | twin | base`, the configuration's search rank and the seed. study/verdict.py turns
their final objectives into the verdict.

The plan (which configuration on which seed in which role) is logged to the parent run (confirm/plan.yaml)
before the first trial starts, and `resume` restores the Tuner with it: finished trials are not rerun.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml
from mlflow.entities import Metric
from ray import tune

from aaclip.config import apply_overrides, read_yaml, validate_config
from study.driver import run_phase
from study.guard import GradientGuard
from study.record import Tag, ranked_trials, trial_runs
from study.spec import Study
from study.spool import Tracker, batch_op
from study.trainable import TrialContext, train_and_report
from study.verdict import Verdict, format_verdict, study_verdict

Echo = Callable[..., None]
JOB_KEY = "study/confirm_job"  # the Tune config of a confirmation trial: its index in the plan
PLAN_ARTIFACT = "confirm/plan.yaml"


# ---------------------------------------------------------------------------------------------------------------
# The plan


def fresh_seeds(used: set[int], count: int) -> list[int]:
    """`count` seeds above every seed the search used (consecutive: easy to read in run names)."""
    start = max(used, default=0) + 1
    return list(range(start, start + count))


def top_configurations(client, runs: list, study: Study) -> list[tuple[Any, dict[str, Any]]]:
    """(search run, its config data) for the top_k distinct configurations; configs differing only in their seed
    are one configuration (a spec may search seeds)."""
    objective = study.spec.objective
    chosen: list[tuple[Any, dict[str, Any]]] = []
    seen: set[str] = set()
    for run in ranked_trials(runs, objective.metric, objective.mode):
        data = _run_config(client, run)
        if not data["cross_attention"]["enabled"]:
            continue  # a space that switches cross-attention off: such a configuration is its own twin
        key = json.dumps({**data, "seed": None}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            chosen.append((run, data))
        if len(chosen) == study.spec.confirm.top_k:
            break
    return chosen


def _run_config(client, run) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        return read_yaml(Path(client.download_artifacts(run.info.run_id, "config.yaml", folder)))


def plan_confirmation(client, parent, study: Study) -> list[dict[str, Any]]:
    """Every confirmation run: {role, rank, seed, source, config}; empty when no searched trial completed."""
    runs = trial_runs(client, parent)
    configurations = top_configurations(client, runs, study)
    if not configurations:
        return []
    used = {int(study.base_config.seed)} | {int(run.data.params["seed"]) for run in runs if "seed" in run.data.params}
    seeds = fresh_seeds(used, study.spec.confirm.seeds)
    base = study.baseline_config().to_dict()
    jobs = []
    for seed in seeds:
        for rank, (run, data) in enumerate(configurations, start=1):
            on = {**data, "seed": seed}
            twin = apply_overrides(on, {"cross_attention.enabled": False})
            jobs.append(_job("confirm", rank, seed, run.info.run_name, on))
            jobs.append(_job("twin", rank, seed, run.info.run_name, twin))
        jobs.append(_job("base", 0, seed, "base model", {**base, "seed": seed}))
    return jobs


def _job(role: str, rank: int, seed: int, source: str, config: dict[str, Any]) -> dict[str, Any]:
    validate_config(config, source=f"confirmation {role} of rank {rank}, seed {seed}")  # refuse before starting
    return {"role": role, "rank": rank, "seed": seed, "source": source, "config": config}


def job_name(job: dict[str, Any]) -> str:
    """Short run names that start with the role: confirm-r1-s112, twin-r1-s112 (cross-attention off), base-s112.
    The study's name is in the parent run and the aaclip.study tag (study/tuner.py TrialNamer)."""
    if job["role"] == "base":
        return f"base-s{job['seed']}"
    return f"{job['role']}-r{job['rank']}-s{job['seed']}"


# ---------------------------------------------------------------------------------------------------------------
# The trials


def run_confirm_trial(config: dict[str, Any], context: TrialContext, jobs: list[dict[str, Any]]) -> None:
    """The Tune function trainable of a confirmation trial (wrapped with tune.with_parameters)."""
    context.apply_environment()
    job = jobs[config[JOB_KEY]]
    train_config = validate_config(job["config"], source=f"confirmation job {config[JOB_KEY]}")
    tags = {Tag.CONFIRM_RANK: str(job["rank"]), Tag.CONFIRM_SEED: str(job["seed"]),
            Tag.CONFIRM_SOURCE: job["source"]}
    train_and_report(context, train_config, baseline=job["role"] == "base", role=job["role"], tags=tags)


class JobNamer:
    def __init__(self, jobs: list[dict[str, Any]]):
        self.jobs = jobs

    def __call__(self, trial) -> str:
        return job_name(self.jobs[trial.config[JOB_KEY]])


def make_confirm_tuner(study: Study, context: TrialContext, jobs: list[dict[str, Any]], storage: str,
                       restore_path: str | None = None) -> tune.Tuner:
    """The confirmation's Tuner, new or restored; its driver callbacks come with study/driver.py's run_phase."""
    resources = study.spec.trials.resources
    trainable = tune.with_resources(tune.with_parameters(run_confirm_trial, context=context, jobs=jobs),
                                    {"cpu": resources.cpu, "gpu": resources.gpu})
    if restore_path:
        return tune.Tuner.restore(restore_path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    spec = study.spec
    namer = JobNamer(jobs)
    # No scheduler: a confirmation compares full runs. Jobs run in plan order, seed by seed.
    tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=spec.trials.max_concurrent,
                                  trial_name_creator=namer, trial_dirname_creator=namer)
    run_config = tune.RunConfig(
        name=confirm_name(study.name), storage_path=storage, stop=GradientGuard(spec.guard), verbose=0,
        failure_config=tune.FailureConfig(max_failures=spec.trials.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2))
    return tune.Tuner(trainable, param_space={JOB_KEY: tune.grid_search(list(range(len(jobs))))},
                      tune_config=tune_config, run_config=run_config)


def confirm_name(study_name: str) -> str:
    return f"{study_name}-confirm"


# ---------------------------------------------------------------------------------------------------------------
# The phase


def confirm_study(study: Study, context: TrialContext, storage: str, tracker: Tracker,
                  echo: Echo = print) -> tuple[int, int]:
    """Run (or, when its Tuner state exists, continue) the confirmation: the second phase of the study's session
    (study/driver.py), its MLflow writes through the driver's `tracker`; returns (trials, failed trials)."""
    if study.spec.confirm.top_k == 0:
        return 0, 0
    run_id = context.parent_run_id
    path = f"{storage}/{confirm_name(study.name)}"
    restoring = tune.Tuner.can_restore(path)
    if restoring:
        jobs = tracker.read(lambda client: _logged_plan(client, run_id), "the confirmation plan")
    else:
        tracker.drain()  # the search's outcomes, which the plan ranks, all on the server first
        jobs = tracker.read(lambda client: plan_confirmation(client, client.get_run(run_id), study),
                            "the search's results")
    if not jobs:
        echo(f"study {study.name}: no searched trial completed; nothing to confirm (export falls back to the "
             "search's best)")
        return 0, 0
    if not restoring:
        tracker.write({"op": "log_text", "run_id": run_id, "text": yaml.safe_dump(jobs, sort_keys=False),
                       "artifact_file": PLAN_ARTIFACT})
        tracker.write(batch_op(run_id, tags={Tag.CONFIRM_PATH: path}))
    ranks, seeds = max(job["rank"] for job in jobs), sorted({job["seed"] for job in jobs})
    echo(f"study {study.name}: {'continuing' if restoring else 'starting'} the confirmation of the top {ranks} "
         f"configurations on fresh seeds {', '.join(map(str, seeds))} ({len(jobs)} runs: each configuration "
         "and its cross-attention-off twin on every seed, and the base model)")
    tuner = make_confirm_tuner(study, context, jobs, storage, restore_path=path if restoring else None)
    # No "best completed" in its progress: the best single run may be a twin or the base; the verdict says more.
    results = run_phase(tuner, study, context, f"{study.name} confirmation", show_best=False,
                        total=len(jobs))
    tracker.drain()  # the confirmation runs' outcomes, which the verdict reads
    verdict = tracker.read(lambda client: study_verdict(client, client.get_run(run_id)), "the confirmed runs")
    if verdict is not None:
        log_verdict(tracker, run_id, verdict)
        echo(format_verdict(verdict))
    return len(results), len(results.errors)


def log_verdict(tracker: Tracker, run_id: str, verdict: Verdict) -> None:
    """The verdict on the parent run: whole as confirm/verdict.json, the headline numbers as metrics."""
    tracker.write({"op": "log_text", "run_id": run_id, "text": json.dumps(verdict.to_dict(), indent=2),
                   "artifact_file": "confirm/verdict.json"})
    values = {"confirm/base_mean": verdict.base.mean}
    for row in verdict.rows:
        values |= {f"confirm/r{row.rank}_mean": row.on.mean, f"confirm/r{row.rank}_matched_off_mean": row.twin.mean,
                   f"confirm/r{row.rank}_on_minus_off": row.difference.mean}
    best = verdict.best()
    if best is not None:
        values["confirm/best_mean"] = best.on.mean
    metrics = [Metric(key, value, int(time.time() * 1000), 0) for key, value in values.items() if value is not None]
    tracker.write(batch_op(run_id, metrics=metrics))


def _logged_plan(client, run_id: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        return yaml.safe_load(Path(client.download_artifacts(run_id, PLAN_ARTIFACT, folder)).read_text())
