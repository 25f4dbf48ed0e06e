"""`aaclip-study export NAME -o FILE`: the winning trial as a complete TrainConfig YAML (DESIGN §5, §9).

The winner is read from MLflow (the source of truth). With a confirmation phase, it is the configuration with
the best confirmed mean over fresh seeds (study/verdict.py), exported as the search trial it came from; without
one, the best search trial that ran its whole schedule (one seed: the provenance says so). `aaclip train FILE`
repeats exactly the exported trial's run. The file carries its provenance; aaclip's config loader ignores it.
"""
from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml
from mlflow.exceptions import MlflowException

from aaclip.config import read_yaml, validate_config
from aaclip.outputs import write_text_atomically
from study.errors import StudyError
from study.record import Tag, best_trial, is_baseline_run, objective_of, require_parent_run, trial_runs
from study.verdict import study_verdict

BEST_ADAPTERS = "best_adapters"  # a trial run's artifact folder (study/trainable.py)
UNCONFIRMED = ("the search's best single-seed trial: this study has no finished confirmation (spec `confirm:`), "
               "so the value is one seed's")


def package_version() -> str:
    try:
        return version("aaclip-study")
    except PackageNotFoundError:
        return "unknown"


def choose_trial(runs: list, metric: str, mode: str, trial: str | None = None):
    """The named trial (id, name or run id), else the best completed trial by its final objective (the baseline
    included: a configuration one may export like any other)."""
    if trial:
        for run in runs:
            if trial in (run.data.tags.get(Tag.TRIAL_ID), run.info.run_name, run.info.run_id):
                return run
        names = ", ".join(run.info.run_name for run in runs) or "none"
        raise StudyError(f"--trial {trial}: no such trial in this study (trials: {names})")
    best = best_trial(runs, metric, mode, with_baseline=True)
    if best is None:
        raise StudyError(f"no trial has completed with a finite {metric} yet; wait, or pick one with --trial")
    return best


def _choose(client, parent, runs: list, metric: str, mode: str, trial: str | None) -> tuple[Any, dict[str, Any]]:
    """The trial to export and how it was selected (for the provenance)."""
    if trial:
        return choose_trial(runs, metric, mode, trial), {"selection": "chosen with --trial"}
    verdict = study_verdict(client, parent)
    best = verdict.best() if verdict is not None else None
    if best is None:
        return choose_trial(runs, metric, mode), {"selection": UNCONFIRMED}
    run = choose_trial(runs, metric, mode, best.source)
    selection = (f"the best confirmed mean over seeds {verdict.seeds} (search rank {best.rank}; "
                 f"{verdict.finished} of {verdict.planned} confirmation runs finished)")
    return run, {"selection": selection,
                 "confirmed": {"mean": best.on.mean, "interval_95": [best.on.low, best.on.high], "n": best.on.n,
                               "matched_off_mean": best.twin.mean,
                               "on_minus_off": best.difference.mean,
                               "on_minus_off_interval_95": [best.difference.low, best.difference.high],
                               "base_mean": verdict.base.mean}}


def export_trial(client, name: str, output: Path, trial: str | None = None) -> dict[str, Any]:
    """Write the chosen trial's config with provenance to `output`; returns the provenance."""
    check_output(output)
    parent = require_parent_run(client, name)
    metric, mode = objective_of(parent)
    runs = trial_runs(client, parent)
    run, selection = _choose(client, parent, runs, metric, mode, trial)
    with tempfile.TemporaryDirectory() as folder:
        config_file = Path(client.download_artifacts(run.info.run_id, "config.yaml", folder))
        data = read_yaml(config_file)
    validate_config(data, source=f"trial {run.info.run_name} config.yaml")  # export only what trains
    provenance = {
        "study": parent.data.tags[Tag.STUDY], "trial": run.info.run_name, "trial_id": run.data.tags.get(Tag.TRIAL_ID),
        "mlflow_run_id": run.info.run_id, "tracking_uri": client.tracking_uri, "metric": metric,
        "value": run.data.metrics.get(metric), "baseline": is_baseline_run(run),
        **selection,
        "package_version": package_version(), "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_text_atomically(output, yaml.safe_dump({**data, "provenance": provenance}, sort_keys=False))
    return provenance


def check_output(path: Path) -> None:
    """-o must name a file in an existing folder: checked before anything is fetched or written."""
    path = Path(path)
    if path.is_dir():
        raise StudyError(f"-o {path}: is a folder; name the YAML file to write, e.g. {path / 'best.yaml'}")
    if not path.parent.is_dir():
        raise StudyError(f"-o {path}: folder {path.parent} does not exist")


def register_trial(client, provenance: dict[str, Any], exported: Path, model: str):
    """`export --register MODEL`: the exported trial's best adapters (logged by the trial at its best evaluation)
    with the exported config, as a new version of MODEL whose run is the trial's run."""
    from aaclip.checkpoint import load_adapters  # lazy: torch, which an export without --register never needs
    from aaclip.mlflow_model import describe_trial, register_adapters, source_tags  # lazy: torch (the same)

    run_id = provenance["mlflow_run_id"]
    with tempfile.TemporaryDirectory() as folder:
        try:
            adapters_file = Path(client.download_artifacts(run_id, f"{BEST_ADAPTERS}/adapters.pt", folder))
        except MlflowException:
            raise StudyError(f"--register: trial {provenance['trial']} has no {BEST_ADAPTERS}/adapters.pt (it never "
                             "finished an evaluation); pick another trial with --trial") from None
        adapters = load_adapters(adapters_file.parent)
    description = (f"The best adapters of {describe_trial(provenance)}, with its exported config; selected as "
                   f"{provenance['selection']}.")
    return register_adapters(client, run_id, model, adapters, exported, description=description,
                             tags=source_tags(provenance))


def export_and_register(client, name: str, output: Path, trial: str | None, model: str):
    """Export, then register; the YAML appears at `output` only once the model version exists."""
    staging = output.with_name(f".{output.name}.registering")
    try:
        provenance = export_trial(client, name, staging, trial)
        version = register_trial(client, provenance, staging, model)
        os.replace(staging, output)
    finally:
        staging.unlink(missing_ok=True)
    return provenance, version
