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
from study.devices import require_cuda_for_assigned_gpus
from study.plots import gradient_flow_plot
from study.searcher import COMPLETED_KEY, OPTUNA_KEY, is_baseline
from study.spec import Study, planned_epochs
from study.tracking import TrialRun, numeric_metrics, tracking_client

# Variables a trial process needs wherever it runs: tracking credentials, artifact store access, offline hubs.
FORWARDED_ENV = (
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE", "HF_HOME",
)


@dataclass
class TrialContext:
    """What every trial needs besides its sampled point; passed with tune.with_parameters (re-sent on resume)."""

    study: Study
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    aaclip_home: str
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_driver(cls, study: Study, tracking_uri: str, experiment_id: str, parent_run_id: str,
                    aaclip_home: Path) -> TrialContext:
        env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
        return cls(study, tracking_uri, experiment_id, parent_run_id, str(aaclip_home), env)

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
    from aaclip.threads import configure_threads  # imported in the trial process only: torch is slow to import
    from aaclip.train import fit

    context.apply_environment()
    require_cuda_for_assigned_gpus()
    train_config = trial_config(context.study, config)
    configure_threads(assigned_cpus(), train_config.data.workers)
    tune_context = ray.tune.get_context()
    run = TrialRun.open(tracking_client(context.tracking_uri), experiment_id=context.experiment_id,
                        parent_run_id=context.parent_run_id, study=context.study.name,
                        trial_id=tune_context.get_trial_id(), trial_name=tune_context.get_trial_name(),
                        config=train_config, baseline=is_baseline(config))
    if OPTUNA_KEY in config:
        run.set_tags({"aaclip.optuna_trial": config[OPTUNA_KEY]})
    # Under AACLIP_HOME, not /tmp: a worker killed mid-trial leaves its scratch where the project's state lives.
    scratch = Path(context.aaclip_home) / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    out_dir = Path(tempfile.mkdtemp(prefix=f"trial-{tune_context.get_trial_id()}-", dir=scratch))
    reporter = EpochReporter(context.study, run, out_dir, planned_epochs(train_config))
    try:
        with restored_checkpoint() as resume:
            fit(train_config, out_dir=out_dir, on_epoch=reporter, resume=resume)
        reporter.finish()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


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

    def __init__(self, study: Study, run: TrialRun, out_dir: Path, planned: int):
        self.planned = planned
        self.objective = study.spec.objective
        self.share_floor = study.spec.guard.image_adapter_share_floor
        self.run = run
        self.out_dir = out_dir
        self.history = run.metric_history()  # a restarted trial's gradient plot still covers every epoch
        self.best = run.best_value()

    def __call__(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        self.history = [row for row in self.history if row["epoch"] < metrics["epoch"]] + [dict(metrics)]
        if self.run.log_epoch(metrics) and self.objective.metric in metrics:
            self.log_evaluation(metrics, checkpoint_dir)
        report = numeric_metrics(metrics)
        if int(metrics["epoch"]) >= self.planned:
            report[COMPLETED_KEY] = 1.0
            self.run.set_tags({"aaclip.outcome": "completed"})
        ray.tune.report(report, checkpoint=ray.tune.Checkpoint.from_directory(checkpoint_dir))

    def log_evaluation(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        epoch = int(metrics["epoch"])
        gallery = self.out_dir / "gallery.png"
        if gallery.is_file():
            named = self.out_dir / "gallery" / f"epoch-{epoch:04d}.png"
            named.parent.mkdir(exist_ok=True)
            shutil.copyfile(gallery, named)
            self.run.log_file(named, "gallery")
        plot = gradient_flow_plot(self.history, self.out_dir / "gradient_flow.png", self.share_floor)
        self.run.log_file(plot)
        value = metrics[self.objective.metric]
        if math.isfinite(value) and (self.best is None or self.improves(value)):
            self.best = value
            self.run.log_file(Path(checkpoint_dir) / "adapters.pt", "best_adapters")
            self.run.set_tags({"aaclip.best_value": repr(value), "aaclip.best_epoch": epoch})

    def improves(self, value: float) -> bool:
        return value > self.best if self.objective.mode == "max" else value < self.best

    def finish(self) -> None:
        """Close the run; the driver closes it too (with the outcome) when Tune stops the trial first."""
        self.run.finish("FINISHED")
