"""The Tuner of a study's search: the trainable with its resources, the searcher, ASHA and readable trial names.

`make_tuner` builds it for a launch; `restore_scheduler` gives a Tuner restored by `resume` what Ray's saved
state lacks. The confirmation phase builds its own Tuner (study/confirm.py).
"""
from __future__ import annotations

from typing import Callable

from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter

from study.asha_state import reported_history, restore_rungs
from study.guard import GradientGuard
from study.record import recorded_outcomes
from study.searcher import INDEX_KEY, BaselineFirst, StudyOptunaSearch, is_baseline
from study.spec import Study
from study.storage import optuna_storage, optuna_storage_url
from study.trainable import TrialContext, run_trial

Echo = Callable[..., None]


class StudyASHA(AsyncHyperBandScheduler):
    """ASHA that records the baseline's results (a fair reference for the rungs) but never stops it.

    `ended`: trials whose end is on record already (a resumed study, whose Ray state was saved before it);
    Ray runs them again, and they are stopped at their first result so the recorded decision stands.
    """

    ended: frozenset[str] = frozenset()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.trial_id in self.ended:
            return TrialScheduler.STOP
        decision = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if is_baseline(trial.config) else decision


def make_scheduler(study: Study) -> TrialScheduler:
    spec = study.spec.scheduler
    if spec.kind == "none":
        return FIFOScheduler()
    max_t = max(study.max_time(), spec.grace_period)
    # stop_last_trials=False: a trial that reaches max_t has finished its own schedule; stopping it there would
    # only race its last report.
    return StudyASHA(time_attr=spec.time_attr, metric=study.spec.objective.metric,
                     mode=study.spec.objective.mode, max_t=max_t, grace_period=spec.grace_period,
                     reduction_factor=spec.reduction_factor, stop_last_trials=False)


class TrialNamer:
    """Short trial names, distinct at the front where MLflow's runs table cuts them: t001, t002, ... in sampling
    order, and baseline. The study's name is the parent run's and every run's aaclip.study tag, not repeated."""

    def __call__(self, trial) -> str:
        if is_baseline(trial.config):
            return "baseline"
        index = trial.config.get(INDEX_KEY)
        return f"t{index:03d}" if isinstance(index, int) else f"trial-{trial.trial_id}"


def make_trainable(study: Study, context: TrialContext):
    resources = study.spec.trials.resources
    return tune.with_resources(tune.with_parameters(run_trial, context=context),
                               {"cpu": resources.cpu, "gpu": resources.gpu})


def make_tuner(study: Study, context: TrialContext, storage: str) -> tune.Tuner:
    spec = study.spec
    search = StudyOptunaSearch(study, storage=optuna_storage(optuna_storage_url(study)),
                               time_attr=spec.scheduler.time_attr)
    searcher = ConcurrencyLimiter(BaselineFirst(search, enabled=spec.baseline),
                                  max_concurrent=spec.trials.max_concurrent)
    guard = GradientGuard(spec.guard)
    namer = TrialNamer()
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=make_scheduler(study),
                                  num_samples=study.num_samples() + int(spec.baseline),
                                  trial_name_creator=namer, trial_dirname_creator=namer)
    run_config = tune.RunConfig(
        name=study.name, storage_path=storage, stop=guard, verbose=0,
        failure_config=tune.FailureConfig(max_failures=spec.trials.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),  # driver callbacks: study/driver.py
    )
    return tune.Tuner(make_trainable(study, context), tune_config=tune_config, run_config=run_config)


def restore_scheduler(tuner: tune.Tuner, study: Study, client, parent, echo: Echo) -> None:
    """What Ray's saved state lacks (fresh driver callbacks aside: study/driver.py): ASHA's rungs as MLflow
    recorded them, and the trials whose end is on record already (their decisions stand)."""
    internal = tuner._local_tuner  # noqa: SLF001 - Ray offers no public handle on a restored Tuner's parts
    scheduler = internal._tune_config.scheduler  # noqa: SLF001
    if isinstance(scheduler, StudyASHA):
        history = reported_history(client, parent, study.spec.objective.metric, study.spec.scheduler.time_attr)
        points = restore_rungs(scheduler, history)
        scheduler.ended = frozenset(recorded_outcomes(client, parent))
        echo(f"  ASHA: {points} rung result(s) of {len(history)} trial(s) restored; "
             f"{len(scheduler.ended)} trial(s) already ended")
