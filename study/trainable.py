"""The Ray Tune trainable: one trial = one `aaclip.train.fit`, reported epoch by epoch (DESIGN §5).

The trial builds its TrainConfig from the sampled point, opens (or reopens) its MLflow child run, resumes from
`ray.tune.get_checkpoint()` when Tune restarts it, and reports every epoch's metrics with the checkpoint that
`fit` just wrote. The report of the schedule's last epoch carries `trial/completed`, which is how the searcher
and the driver tell a trial that ran its whole budget from one that ASHA or the guard stopped early.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import ray.tune

from aaclip.config import TrainConfig
from aaclip.mlflow_env import CLIENT_SETTINGS
from aaclip.notices import recorded
from aaclip.schedule import describe_epochs, feedback_plan
from study.callbacks import remove_scratch
from study.datasets import SplitRecorder
from study.devices import require_cuda_for_assigned_gpus
from study.eta import PLANNED_KEY
from study.plots import gradient_flow_plot
from study.record import COMPLETED_KEY, Outcome, Tag, find_trial_run
from study.searcher import OPTUNA_KEY, is_baseline, run_identity
from study.spec import Study, planned_epochs
from study.spool import spool_root
from study.system_metrics import system_metrics
from study.tracking import Connector, TrialRun, numeric_metrics

MAX_TAG_CHARS = 5000  # keeps a long list of warnings within MLflow's tag limits
# Variables a trial process needs wherever it runs: tracking credentials, artifact store access, offline hubs.
FORWARDED_ENV = (
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE", "HF_HOME", *CLIENT_SETTINGS,
)
# Tracking secrets reach a trial only inside its TrialContext (Ray's object store). Ray's runtime_env agent
# logs a job's env_vars in plain text (runtime_env_agent.log), so these never go there; the artifact store's
# keys must, since Ray's storage sync in the worker needs them before any trial code runs.
TRACKING_SECRETS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def forwarded_environment(*, secrets: bool) -> dict[str, str]:
    """The driver's FORWARDED_ENV variables that are set: with `secrets` for the TrialContext, without them for
    Ray's runtime_env (study/cluster.py connect_ray)."""
    return {name: os.environ[name] for name in FORWARDED_ENV
            if name in os.environ and (secrets or name not in TRACKING_SECRETS)}


@dataclass
class TrialContext:
    """What every trial needs besides its sampled point; passed with tune.with_parameters (re-sent on resume)."""

    study: Study
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    aaclip_home: str
    env: dict[str, str] = field(default_factory=dict)
    connect: Connector | None = None

    @classmethod
    def from_driver(cls, study: Study, tracking_uri: str, experiment_id: str, parent_run_id: str,
                    aaclip_home: Path) -> TrialContext:
        return cls(study, tracking_uri, experiment_id, parent_run_id, str(aaclip_home),
                   forwarded_environment(secrets=True),
                   Connector.for_uri(tracking_uri, aaclip_home))

    def apply_environment(self) -> None:
        os.environ.update(self.env)
        os.environ["AACLIP_HOME"] = self.aaclip_home  # one feature cache per node, shared by its trials
        os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri


def trial_config(study: Study, config: dict[str, Any]) -> TrainConfig:
    if is_baseline(config):
        return study.baseline_config()
    return study.trial_config({key: value for key, value in config.items() if not key.startswith("study/")})


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """The Tune function trainable (wrapped with tune.with_parameters(run_trial, context=...))."""
    context.apply_environment()
    tags = {Tag.OPTUNA_TRIAL: str(config[OPTUNA_KEY])} if OPTUNA_KEY in config else {}
    train_and_report(context, trial_config(context.study, config), baseline=is_baseline(config), tags=tags)


def train_and_report(context: TrialContext, train_config: TrainConfig, *, baseline: bool, role: str = "trial",
                     tags: dict[str, str] | None = None) -> None:
    """Train one configuration inside a Tune trial, logged to its (re)opened MLflow child run of `role`."""
    # Lazy: torch (about 10 s with open_clip) is imported in the trial process only, never in the driver.
    from aaclip.threads import configure_threads
    from aaclip.train import fit

    require_cuda_for_assigned_gpus()
    configure_threads(assigned_cpus(), train_config.data.workers)
    tune_context = ray.tune.get_context()
    trial_id = tune_context.get_trial_id()
    tracker = context.connect.tracker(spool_root(Path(context.aaclip_home), context.study.name) / trial_id)
    planned = planned_epochs(train_config)
    finished = tracker.read(lambda client: finished_run(client, context.experiment_id, context.study.name, trial_id,
                                                        planned), "reading the run")
    if finished is not None:  # trained and logged whole by an earlier attempt: told again, not trained again
        report_finished(finished, planned, run_identity(finished.info.run_id, tune_context.get_trial_name()))
        return
    # The stage of every epoch, on the run: a metric step carries no tag, and the charts' x axis is the epoch.
    tags = {Tag.SCHEDULE: describe_epochs(feedback_plan(train_config.feedback)), **(tags or {})}
    run = TrialRun.open(tracker, experiment_id=context.experiment_id,
                        parent_run_id=context.parent_run_id, study=context.study.name,
                        trial_id=trial_id, trial_name=tune_context.get_trial_name(),
                        config=train_config, baseline=baseline, role=role, tags=tags)
    # Under AACLIP_HOME, not /tmp: a worker killed mid-trial leaves its scratch where the project's state lives.
    # Ray runs one attempt of a trial at a time: folders of this trial's earlier attempts are dead ones'.
    remove_scratch(Path(context.aaclip_home), trial_id)
    scratch = Path(context.aaclip_home) / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    out_dir = Path(tempfile.mkdtemp(prefix=f"trial-{trial_id}-", dir=scratch))
    reporter = EpochReporter(context.study, run, out_dir, planned,
                             run_identity(run.run_id, tune_context.get_trial_name()))
    watched = system_metrics(run.run_id, context.connect().tracking_uri, context.study.spec.tracking.system_metrics_s)
    try:
        with restored_checkpoint() as resume, watched:
            fit(train_config, out_dir=out_dir, on_epoch=reporter, on_loop=reporter.log_loop, resume=resume,
                on_splits=SplitRecorder(run, train_config.data))  # which images the trial saw
        reporter.finish()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def finished_run(client, experiment_id: str, study: str, trial_id: str, planned: int):
    """The trial's run when an earlier attempt logged every planned epoch (the worker marks an epoch last), else
    None. Ray reruns such a trial when the driver stopped before it saw the final report (Ctrl-C just then)."""
    run = find_trial_run(client, experiment_id, study, trial_id)
    finished = run is not None and int(run.data.tags.get(Tag.LAST_EPOCH, 0)) >= planned
    return run if finished else None


def report_finished(run, planned: int, identity: dict[str, str]) -> None:
    """The finished run's last values as the trial's final result: the driver then records it completed."""
    ray.tune.report({**numeric_metrics(run.data.metrics), **identity, PLANNED_KEY: planned, COMPLETED_KEY: 1.0})


def assigned_cpus() -> float:
    """The CPUs Ray reserved for this trial (its resources.cpu), not the machine's core count."""
    return ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)


@contextmanager
def restored_checkpoint() -> Iterator[Path | None]:
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        yield Path(folder)


class EpochReporter:
    """fit's on_epoch callback: MLflow first (from this worker), then Tune (which may stop the trial)."""

    def __init__(self, study: Study, run: TrialRun, out_dir: Path, planned: int,
                 identity: dict[str, str] | None = None):
        self.planned = planned
        self.identity = identity or {}  # the MLflow run and name, for the searcher to tell Optuna
        self.objective = study.spec.objective
        self.share_floor = study.spec.guard.image_adapter_share_floor
        self.run = run
        self.out_dir = out_dir
        self.history = run.metric_history()  # a restarted trial's gradient plot still covers every epoch
        self.best = run.best_value()
        self.warned = 0  # notices (aaclip.notices) already written to the run's aaclip.warnings tag

    def __call__(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        self.history = [row for row in self.history if row["epoch"] < metrics["epoch"]] + [dict(metrics)]
        self.record_warnings()
        completed = int(metrics["epoch"]) >= self.planned
        if self.run.log_epoch(metrics):
            if self.objective.metric in metrics:
                self.log_evaluation(metrics, checkpoint_dir)
            if completed:
                self.run.set_tags({Tag.OUTCOME: Outcome.COMPLETED})
            self.run.mark_epoch(int(metrics["epoch"]))  # last: a restart redoes whatever came before it
        report = {**numeric_metrics(metrics), **self.identity, PLANNED_KEY: self.planned}  # for the time left
        if completed:
            report[COMPLETED_KEY] = 1.0
        ray.tune.report(report, checkpoint=ray.tune.Checkpoint.from_directory(checkpoint_dir))

    def log_loop(self, record: dict[str, float]) -> None:
        """fit's on_loop: the record on the run's `loop/` curves, never a Tune report (ASHA's rungs are loop ends
        reported with their epochs; loop 0 trained nothing). Loop 0 brings the untrained model's gallery."""
        if self.run.log_loop(record) and record["loop"] == 0:
            self.log_gallery(0)

    def log_gallery(self, epoch: int) -> None:
        """The gallery fit just drew, as gallery/epoch-NNNN.png (epoch 0: before training)."""
        gallery = self.out_dir / "gallery.png"
        if gallery.is_file():
            named = self.out_dir / "gallery" / f"epoch-{epoch:04d}.png"
            named.parent.mkdir(exist_ok=True)
            shutil.copyfile(gallery, named)
            self.run.log_file(named, "gallery")

    def log_evaluation(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        epoch = int(metrics["epoch"])
        self.log_gallery(epoch)
        plot = gradient_flow_plot(self.history, self.out_dir / "gradient_flow.png", self.share_floor)
        self.run.log_file(plot)
        value = metrics[self.objective.metric]
        if math.isfinite(value) and (self.best is None or self.improves(value)):
            self.best = value
            self.run.log_file(Path(checkpoint_dir) / "adapters.pt", "best_adapters")
            self.run.set_tags({Tag.BEST_VALUE: repr(value), Tag.BEST_EPOCH: epoch})

    def record_warnings(self) -> None:
        """What the trial found suspicious (a class without anomalies, NaN metrics), on its run, by name."""
        notes = recorded()
        if len(notes) > self.warned:
            self.run.set_tags({Tag.WARNINGS: "\n".join(notes)[:MAX_TAG_CHARS]})
            self.warned = len(notes)

    def improves(self, value: float) -> bool:
        return value > self.best if self.objective.mode == "max" else value < self.best

    def finish(self) -> None:
        """Close the run; the driver closes it too (with the outcome) when Tune stops the trial first."""
        self.run.finish("FINISHED")
