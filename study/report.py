"""`aaclip-study report NAME`: a study summary a person can open (DESIGN §5).

Built from MLflow (every trial's params and curves are there, wherever the study ran): the trials are turned
back into an in-memory Optuna study so Optuna's own plots do the drawing, then the files (PNG per figure, one
index.html that shows them with the tables) are written to a folder and logged to the parent run.
"""
from __future__ import annotations

import html
import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402

from aaclip.outputs import creatable_folder_problem, write_text_atomically  # noqa: E402
from study.errors import StudyError  # noqa: E402
from study.launch import study_from_parent  # noqa: E402
from study.space import Parameter, SearchSpace  # noqa: E402
from study.status import param_value  # noqa: E402
from study.tracking import require_parent_run, trial_runs  # noqa: E402

STATES = {"completed": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
          "stopped": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL}
CLASS_METRICS = ("pixel_auroc", "pixel_ap", "image_auroc", "image_ap", "pixel_aupro")


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
        state = STATES.get(run.data.tags.get("aaclip.outcome", ""))
        if state is None or run.data.tags.get("aaclip.baseline") == "true":
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


def optuna_figures(study: optuna.Study, folder: Path) -> dict[str, str]:
    """name -> PNG file name, or -> why the figure could not be drawn (too few trials, no variation)."""
    from optuna.visualization import matplotlib as optuna_plots

    figures: dict[str, str] = {}
    plots = {"optimization_history": optuna_plots.plot_optimization_history,
             "param_importances": optuna_plots.plot_param_importances,
             "parallel_coordinates": optuna_plots.plot_parallel_coordinate}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = plot(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(9, 5)
            figure.tight_layout()
            figure.savefig(folder / f"{name}.png", dpi=100)
            plt.close(figure)
            figures[name] = f"{name}.png"
        except Exception as error:  # noqa: BLE001 - a study too small for a figure still gets the others
            figures[name] = f"not drawn: {error}"
    return figures


def class_table(best, baseline) -> list[tuple[str, str, float | None, float | None]]:
    """(class, metric, best value, baseline value) for every per-class validation metric."""
    rows = []
    for key in sorted(best.data.metrics):
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "val" and parts[2] in CLASS_METRICS:
            base = baseline.data.metrics.get(key) if baseline is not None else None
            rows.append((parts[1], parts[2], best.data.metrics[key], base))
    return rows


def class_figure(rows: list, metric_name: str, path: Path) -> bool:
    chosen = [row for row in rows if row[1] == metric_name]
    if not chosen:
        return False
    figure, axes = plt.subplots(figsize=(max(6, len(chosen) * 0.8), 4))
    positions = range(len(chosen))
    axes.bar([p - 0.2 for p in positions], [row[2] for row in chosen], width=0.4, label="best trial")
    axes.bar([p + 0.2 for p in positions], [row[3] or 0.0 for row in chosen], width=0.4, label="baseline")
    axes.set_xticks(list(positions), [row[0] for row in chosen], rotation=30, ha="right")
    axes.set_ylabel(metric_name)
    axes.set_title(f"Best trial vs baseline per class: {metric_name}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def best_and_baseline(runs: list, metric: str, mode: str):
    sign = 1.0 if mode == "max" else -1.0
    completed = [run for run in runs if run.data.tags.get("aaclip.outcome") == "completed"
                 and math.isfinite(run.data.metrics.get(metric, math.nan))]
    searched = [run for run in completed if run.data.tags.get("aaclip.baseline") != "true"]
    best = max(searched, key=lambda run: sign * run.data.metrics[metric]) if searched else None
    baseline = next((run for run in completed if run.data.tags.get("aaclip.baseline") == "true"), None)
    return best, baseline


def check_report_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise StudyError(f"-o {folder}: is a file; name a folder for the report")
    problem = creatable_folder_problem(folder)
    if problem:
        raise StudyError(f"-o {folder}: cannot be created: {problem}")


def write_report(client, name: str, folder: Path) -> Path:
    """Write index.html and the PNG figures into `folder`, log them to the parent run; returns index.html."""
    parent = require_parent_run(client, name)
    metric, mode = parent.data.tags["aaclip.objective"], parent.data.tags["aaclip.mode"]
    study = study_from_parent(client, parent)
    runs = trial_runs(client, parent)
    folder.mkdir(parents=True, exist_ok=True)
    figures = optuna_figures(rebuild_optuna_study(study.space, runs, metric, mode), folder)
    best, baseline = best_and_baseline(runs, metric, mode)
    rows = class_table(best, baseline) if best is not None else []
    metric_name = metric.split("/")[-1] if metric.split("/")[-1] in CLASS_METRICS else "pixel_auroc"
    if class_figure(rows, metric_name, folder / "best_vs_baseline.png"):
        figures["best_vs_baseline"] = "best_vs_baseline.png"
    index = folder / "index.html"
    write_text_atomically(index, render_html(name, metric, mode, runs, best, baseline, rows, figures))
    client.log_artifacts(parent.info.run_id, str(folder), "report")
    return index


def render_html(name: str, metric: str, mode: str, runs: list, best, baseline, rows: list,
                figures: dict[str, str]) -> str:
    escape = html.escape
    parts = [f"<html><head><meta charset='utf-8'><title>{escape(name)}</title></head><body>",
             f"<h1>Study {escape(name)}</h1>",
             f"<p>Objective: {escape(metric)} ({mode}); {len(runs)} trials.</p>"]
    for label, run in (("Best trial", best), ("Baseline", baseline)):
        if run is not None:
            parts.append(f"<p>{label}: {escape(run.info.run_name)} (run {run.info.run_id}), "
                         f"{escape(metric)} = {run.data.metrics[metric]:.4f}</p>")
    for figure_name, target in figures.items():
        title = figure_name.replace("_", " ").capitalize()
        body = f"<img src='{target}'>" if target.endswith(".png") else f"<p>{escape(target)}</p>"
        parts.append(f"<h2>{title}</h2>{body}")
    if rows:
        parts.append("<h2>Best vs baseline per class</h2><table border='1' cellpadding='4'>"
                     "<tr><th>class</th><th>metric</th><th>best</th><th>baseline</th><th>difference</th></tr>")
        for cls, metric_name, value, base in rows:
            difference = f"{value - base:+.2f}" if base is not None else "-"
            base_text = f"{base:.2f}" if base is not None else "-"
            parts.append(f"<tr><td>{escape(cls)}</td><td>{metric_name}</td><td>{value:.2f}</td>"
                         f"<td>{base_text}</td><td>{difference}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
