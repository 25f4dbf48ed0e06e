"""The searcher: Ray's OptunaSearch, fixed where it is weak for this study, plus the baseline trial.

Ray 2.60's OptunaSearch tells Optuna that a trial ASHA stopped is COMPLETE with its last value, and it reads
the objective from every result (ours carry it only on evaluation epochs). StudyOptunaSearch instead

- names Optuna's objective after the metric, and reports intermediate values only when a result has the
  objective, at step = the ASHA time (loop or epoch), the final result's included (Tune may hand that one to
  on_trial_complete only);
- gives each Optuna trial the MLflow run id and trial name its results carry (user attributes mlflow_run_id,
  mlflow_trial_name), so each side of a trial finds the other;
- tells COMPLETE only for a trial that ran its whole schedule (its final result has `trial/completed`),
  PRUNED for one stopped early (ASHA or the gradient guard), FAIL for one that errored;
- validates every sampled point into a TrainConfig before its trial starts, and tells Optuna FAIL (then
  samples again) for a point that does not validate;
- on restore after a killed driver, tells FAIL to Optuna trials that were asked but never became Tune trials.

BaselineFirst hands out one extra trial before any searched one: the base model with cross-attention off. Its
result is not a point of the search space, so Optuna never hears of it.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from aaclip.errors import AaclipError
from study.record import OPTUNA_STATE, Outcome, trial_outcome
from study.spec import Study

logger = logging.getLogger(__name__)
BASELINE_KEY = "study/baseline"
INDEX_KEY = "study/index"  # 0 for the baseline, 1, 2, ... for searched trials: readable trial names
OPTUNA_KEY = "study/optuna_trial"  # the Optuna trial number, to find a run's trial in optuna-dashboard
RUN_ID_KEY, TRIAL_NAME_KEY = "mlflow/run_id", "mlflow/trial_name"  # reported by the trial with every result
USER_ATTRS = {RUN_ID_KEY: "mlflow_run_id", TRIAL_NAME_KEY: "mlflow_trial_name"}  # what Optuna calls them
MAX_INVALID_DRAWS = 20


def is_baseline(config: dict[str, Any]) -> bool:
    return bool(config.get(BASELINE_KEY))


def run_identity(run_id: str, trial_name: str) -> dict[str, str]:
    """What a trial's results carry so that the searcher can point its Optuna trial at the MLflow run."""
    return {RUN_ID_KEY: run_id, TRIAL_NAME_KEY: trial_name}


def make_sampler(study: Study) -> optuna.samplers.BaseSampler:
    searcher = study.spec.searcher
    if searcher.kind == "grid" or searcher.kind == "random" or searcher.sampler == "random":
        return optuna.samplers.RandomSampler(seed=searcher.seed)  # grid points are enqueued, see make_searcher
    startup = min(10, max(2, study.num_samples() // 3))  # a short study still gets some model-based draws
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # group=True: TPE models each branch of a conditional (define-by-run) space on its own
        return optuna.samplers.TPESampler(seed=searcher.seed, n_startup_trials=startup, multivariate=True,
                                          group=True)


class StudyOptunaSearch(OptunaSearch):
    def __init__(self, study: Study, *, storage: optuna.storages.BaseStorage | None, time_attr: str):
        points = study.space.grid_points() if study.spec.searcher.kind == "grid" else None
        self.study = study
        self.time_attr = time_attr
        super().__init__(space=study.space, metric=study.spec.objective.metric, mode=study.spec.objective.mode,
                         sampler=make_sampler(study), study_name=study.name, storage=storage,
                         points_to_evaluate=points)

    def _setup_study(self, mode) -> None:
        super()._setup_study(mode)
        with warnings.catch_warnings():  # experimental in optuna 5, and the dashboard's way to name the objective
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names([self.study.spec.objective.metric])  # not "Objective 0"

    @property
    def optuna_study(self) -> optuna.Study:
        return self._ot_study

    def suggest(self, trial_id: str) -> dict | None:
        for _ in range(MAX_INVALID_DRAWS):
            point = super().suggest(trial_id)
            try:
                self.study.trial_config(point)
                return {**point, OPTUNA_KEY: self._ot_trials[trial_id].number}
            except AaclipError as error:
                logger.warning("sampled point does not validate, told to Optuna as FAIL: %s", error)
                self._ot_study.tell(self._ot_trials.pop(trial_id), state=optuna.trial.TrialState.FAIL)
        raise RuntimeError(f"{MAX_INVALID_DRAWS} sampled points in a row do not validate; check the space")

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self.forget_orphans()

    def forget_orphans(self) -> None:
        """Reconcile with the Optuna storage after a driver restart (the saved state is older than the storage).

        Optuna trials asked after the last saved state never became Tune trials: left RUNNING, they would sit
        in the dashboard and in TPE's view forever, so they are told FAIL. Trials told after the last saved
        state are finished in Optuna already: Tune may run them again, but Optuna keeps its first verdict.
        """
        states = {trial.number: trial.state for trial in self._ot_study.get_trials()}
        known = {trial.number for trial in self._ot_trials.values()}
        for number, state in states.items():
            if state == optuna.trial.TrialState.RUNNING and number not in known:
                self._ot_study.tell(number, state=optuna.trial.TrialState.FAIL)
        for trial_id, trial in self._ot_trials.items():
            if states.get(trial.number, optuna.trial.TrialState.RUNNING).is_finished():
                self._completed_trials.add(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        trial = self._ot_trials[trial_id]
        for key, attribute in USER_ATTRS.items():
            if isinstance(result.get(key), str) and attribute not in trial.user_attrs:
                trial.set_user_attr(attribute, result[key])
        if self.metric in result and self.time_attr in result:
            with warnings.catch_warnings():  # the final result may come twice (result, then complete): once counts
                warnings.filterwarnings("ignore", message=".*is already reported")
                trial.report(result[self.metric], int(result[self.time_attr]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        trial = self._ot_trials[trial_id]
        state, value = outcome_state(result, error, self.metric)
        if result and not error:
            # Tune withholds the result that made ASHA stop the trial from on_trial_result (Optuna should see it,
            # as the value the trial was pruned at), and may hand a completed trial's last one here only.
            self.on_trial_result(trial_id, result)
        try:
            self._ot_study.tell(trial, value, state=state)
        except Exception as exc:  # noqa: BLE001 - e.g. a NaN objective; Optuna's message says what
            logger.warning("could not tell Optuna about trial %s: %s", trial_id, exc)
            self._ot_study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        self._completed_trials.add(trial_id)


def outcome_state(result: dict | None, error: bool, metric: str) -> tuple[optuna.trial.TrialState, float | None]:
    """How a finished Ray trial reads to Optuna (study/record.py): FAIL on error, COMPLETE only when it ran its
    whole schedule and its final result has the objective, else PRUNED (ASHA or the guard stopped it)."""
    outcome, _ = trial_outcome(result, error="" if error else None)
    if outcome == Outcome.COMPLETED and result.get(metric) is None:
        outcome = Outcome.PRUNED
    value = float(result[metric]) if outcome == Outcome.COMPLETED else None
    return optuna.trial.TrialState[OPTUNA_STATE[outcome]], value


class BaselineFirst(Searcher):
    """Suggests the baseline trial first, then defers to the wrapped searcher (which never sees the baseline)."""

    def __init__(self, searcher: Searcher, enabled: bool = True):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self.baseline_pending = enabled
        self.baseline_trial_id: str | None = None
        self.suggested = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        if self.baseline_pending:
            self.baseline_pending = False
            self.baseline_trial_id = trial_id
            return {BASELINE_KEY: True, INDEX_KEY: 0}
        point = self.searcher.suggest(trial_id)
        if not isinstance(point, dict):
            return point  # None (wait) or FINISHED
        self.suggested += 1
        return {**point, INDEX_KEY: self.suggested}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id != self.baseline_trial_id:
            self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id != self.baseline_trial_id:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "searcher"}

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
