"""`aaclip-study report NAME`: does cross-attention help, at which scale, with which learning rates and loops?

Built from MLflow (the source of truth: every trial's params and metrics are there, wherever the study ran):
every trial with a value at any rung (pruned ones marked) against the scale mode and value, the loops and the
learning rates; the confirmed table with intervals and paired differences; Optuna's parameter importances (the
trials rebuilt into an in-memory Optuna study) when there are enough trials; and what the data cannot tell.
One self-contained index.html (figures embedded, so it renders inside MLflow's artifact viewer) and the figures
as PNG files are written to a folder and logged to the parent run under report/; the parent's summary and the
trials' descriptions (study/summary.py) are written again.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from aaclip.metric_names import EVALUATION_METRICS
from aaclip.outputs import creatable_folder_problem, write_text_atomically
from study.errors import StudyError
from study.record import (
    OPTUNA_STATE, best_and_baseline, is_baseline_run, objective_of, outcome_of, require_parent_run,
    study_from_parent, trial_runs,
)
from study.report_html import ReportPage
from study.report_plots import (
    TrialPoint, confirmed_figure, encoded, history_figure, knobs_figure, save, scale_figure,
)
from study.space import Parameter, SearchSpace
from study.spool import apply
from study.status import param_value
from study.summary import summary_ops
from study.verdict import Verdict, study_verdict

STATES = {outcome: optuna.trial.TrialState[state] for outcome, state in OPTUNA_STATE.items()}


def distribution(parameter: Parameter):
    if parameter.kind in ("choice", "grid"):
        return CategoricalDistribution(parameter.values)
    low, high = parameter.bounds
    if parameter.kind == "int":
        return IntDistribution(int(low), int(high), step=int(parameter.step or 1))
    return FloatDistribution(low, high, log=parameter.kind == "loguniform", step=parameter.step)


def active_params(space: SearchSpace, params: dict[str, str]) -> dict[str, Any]:
    """The values a trial actually sampled (a conditional key that was off is left out)."""
    sampled: dict[str, Any] = {}
    for key, parameter in space.parameters.items():
        if parameter.active(sampled) and key in params:
            sampled[key] = param_value(params[key])
    return sampled


def rebuild_optuna_study(space: SearchSpace, runs: list, metric: str, mode: str) -> optuna.Study:
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    distributions = {key: distribution(parameter) for key, parameter in space.parameters.items()}
    for run in runs:
        state = STATES.get(outcome_of(run))
        if state is None or is_baseline_run(run):
            continue
        params = active_params(space, run.data.params)
        value = run.data.metrics.get(metric)
        if state == optuna.trial.TrialState.COMPLETE and (value is None or not math.isfinite(value)):
            state = optuna.trial.TrialState.FAIL
        study.add_trial(optuna.trial.create_trial(
            state=state, params=params, distributions={key: distributions[key] for key in params},
            value=value if state == optuna.trial.TrialState.COMPLETE else None,
            intermediate_values={0: value} if state == optuna.trial.TrialState.PRUNED and value is not None
            and math.isfinite(value) else None))
    return study


MIN_TRIALS_FOR_IMPORTANCES = 5  # fANOVA on fewer completed trials ranks noise


def importance_figure(study: optuna.Study) -> tuple[bytes | None, str]:
    """Optuna's parameter importances, or None and why they are not shown."""
    # Lazy: this imports pyplot, which must come after study.report_plots chose the Agg backend (no display).
    from optuna.visualization import matplotlib as optuna_plots

    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(completed) < MIN_TRIALS_FOR_IMPORTANCES:
        return None, (f"Parameter importances are not shown: they need at least {MIN_TRIALS_FOR_IMPORTANCES} "
                      f"completed searched trials and this study has {len(completed)}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = optuna_plots.plot_param_importances(study)
    except Exception as error:  # noqa: BLE001 - e.g. no parameter varies; the report says so
        return None, f"Parameter importances could not be computed: {error}"
    figure = axes.figure
    figure.set_size_inches(9, 4)
    figure.tight_layout()
    note = (f"Importances (fANOVA) from {len(completed)} completed trials: they rank how much of the objective's "
            "variation each parameter explains across the search, not whether a parameter helps; single-seed "
            "values carry the seed's noise.")
    return encoded(figure), note


def class_table(best, baseline) -> list[tuple[str, str, float | None, float | None]]:
    """(class, metric, best value, baseline value) for every per-class validation metric."""
    rows = []
    for key in sorted(best.data.metrics):
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "val" and parts[2] in EVALUATION_METRICS:
            base = baseline.data.metrics.get(key) if baseline is not None else None
            rows.append((parts[1], parts[2], best.data.metrics[key], base))
    return rows


def trial_points(runs: list, metric: str, study_name: str) -> list[TrialPoint]:
    """Every trial with a finite objective at any rung, in start order."""
    points = []
    for run in runs:
        value = run.data.metrics.get(metric)
        if value is None or not math.isfinite(value):
            continue
        name = run.info.run_name or run.info.run_id
        params = {key: param_value(text) for key, text in run.data.params.items()}
        loop = run.data.metrics.get("loop")
        points.append(TrialPoint(name=name, label=name.removeprefix(f"{study_name}-"),
                                 outcome=outcome_of(run), value=value,
                                 loop=int(loop) if loop is not None else None,
                                 baseline=is_baseline_run(run), params=params))
    return points


def check_report_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise StudyError(f"-o {folder}: is a file; name a folder for the report")
    problem = creatable_folder_problem(folder)
    if problem:
        raise StudyError(f"-o {folder}: cannot be created: {problem}")


def write_report(client, name: str, folder: Path) -> Path:
    """Write the report into `folder` from the study's MLflow runs, log it to the parent run under report/;
    returns index.html."""
    parent = require_parent_run(client, name)
    metric, mode = objective_of(parent)
    study = study_from_parent(client, parent)
    index = render_report(name, metric, mode, study.space, trial_runs(client, parent),
                          study_verdict(client, parent), folder)
    client.log_artifacts(parent.info.run_id, str(folder), "report")
    for op in summary_ops(client, parent):  # the parent's summary and the trials' descriptions, brought up to date
        apply(client, op)
    return index


def render_report(name: str, metric: str, mode: str, space: SearchSpace, runs: list, verdict: Verdict | None,
                  folder: Path) -> Path:
    """index.html (self-contained: figures embedded) and the figures as PNG files, written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    points = trial_points(runs, metric, name)
    best, baseline = best_and_baseline(runs, metric, mode)
    baseline_value = baseline.data.metrics[metric] if baseline is not None else None
    figures: dict[str, bytes] = {}
    if points:
        figures["optimization_history"] = history_figure(points, metric, mode)
        figures["objective_vs_scale"] = scale_figure(points, metric, baseline_value)
        figures["objective_vs_loops_and_lrs"] = knobs_figure(points, metric, baseline_value)
    if verdict is not None and verdict.rows:
        figures["confirmed"] = confirmed_figure(verdict)
    importances, importance_note = importance_figure(rebuild_optuna_study(space, runs, metric, mode))
    if importances is not None:
        figures["param_importances"] = importances
    for figure_name, png in figures.items():
        save(png, folder / f"{figure_name}.png")
    rows = class_table(best, baseline) if best is not None else []
    page = ReportPage(name, metric, mode, runs, points, best, baseline, verdict, rows, figures, importance_note)
    index = folder / "index.html"
    write_text_atomically(index, page.render())
    return index
