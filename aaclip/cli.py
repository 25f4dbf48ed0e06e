"""`aaclip`: train, evaluate, diagnose, make data. User mistakes print one line and exit 2."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from aaclip import metric_names as names
from aaclip.command_line import invoke
from aaclip.errors import AaclipError
from aaclip.notices import show_as_one_line
from aaclip.outputs import creatable_folder_problem, write_text_atomically

# The commands import the rest of the project inside their bodies, on purpose: the config schema (pydantic, yaml)
# and the data code (numpy, PIL) take ~1 s to import and torch with open_clip 5-15 s, which neither `aaclip --help`
# nor a mistake on the command line should wait for. Each such import says which of these it defers.

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="AA-CLIP with cross-attention feedback training on open_clip.")
diagnose_app = typer.Typer(no_args_is_help=True, help="Diagnostics of a configuration.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: generate synthetic MVTec/VisA-layout data.")
app.add_typer(diagnose_app, name="diagnose")
app.add_typer(data_app, name="data")

SetOption = typer.Option(None, "--set", help="Override a config key, e.g. --set optim.image_lr=1e-3 (repeatable)")


def _config(config: str, overrides: Optional[list[str]]):
    """The validated config, checked against the backbone's architecture JSON (no torch import yet)."""
    from aaclip.architecture import check_config_fits  # lazy: pydantic and yaml (see the top)
    from aaclip.config import load_config, parse_override, resolve_config_path

    settings = load_config(config, dict(parse_override(item) for item in overrides or []))
    check_config_fits(settings, source=str(resolve_config_path(config)))
    return settings


def _progress(metrics: dict, checkpoint: Path) -> None:
    stage = "text " if metrics["stage"] == 1 else "image"
    loss = next(metrics[key] for key in names.LOSSES if key in metrics)
    line = (f"loop {int(metrics['loop'])} {stage} epoch {int(metrics['stage_epoch'])} "
            f"loss {loss:.4f} {metrics[names.EPOCH_SECONDS]:.1f}s")
    if names.IMAGE_ADAPTER_SHARE in metrics:
        line += f" adapter-grad-share {metrics[names.IMAGE_ADAPTER_SHARE]:.3f}"
    pixel, image = names.evaluation("pixel_auroc"), names.evaluation("image_auroc")
    if pixel in metrics:
        line += f" | val pixel AUROC {metrics[pixel]:.2f} image AUROC {metrics[image]:.2f}"
    typer.echo(line)


def _loop_line(record: dict) -> None:
    """The starting point (loop 0) before the first epoch; each loop's end is on its last epoch's line."""
    if record["loop"] == 0:
        typer.echo(f"start (untrained): val pixel AUROC {record['val/pixel_auroc']:.2f} image AUROC "
                   f"{record['val/image_auroc']:.2f}")


@app.command()
def train(config: str = typer.Argument(..., help="Config file or shipped name (tiny, vit-l-14-336)"),
          overrides: Optional[list[str]] = SetOption,
          out: Path = typer.Option(Path("runs/latest"), "--out", help="Output folder"),
          resume: Optional[Path] = typer.Option(None, "--resume", help="Continue from a checkpoint folder"),
          test: bool = typer.Option(False, "--test", help="Also evaluate data.test at the end"),
          tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="Log the run to this MLflow "
                                                     "server (default $MLFLOW_TRACKING_URI; unset: no logging)"),
          register: Optional[str] = typer.Option(None, "--register", help="Register the trained adapters as a new "
                                                 "version of this MLflow model (needs a tracking server)"),
          experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment (default: the "
                                                   "exported trial's, else aaclip-retrain)")):
    """Train a configuration through the whole feedback schedule."""
    from aaclip.preflight import check_train_start  # lazy: numpy and PIL (see the top)

    settings = _config(config, overrides)
    check_train_start(settings, out, resume, test)  # before torch is imported and before --out is touched
    run = _tracked_run(tracking_uri, register, experiment, settings, config)
    from aaclip.threads import available_cpus, configure_threads  # lazy: torch and open_clip (see the top)
    from aaclip.train import fit

    configure_threads(available_cpus(), settings.data.workers)
    with run or contextlib.nullcontext():
        result = fit(settings, out_dir=out, on_epoch=run.epoch_logger(_progress) if run else _progress,
                     on_loop=run.loop_logger(_loop_line) if run else _loop_line, resume=resume)
        final, tested = dict(result.metrics), {}
        if test:
            tested = _evaluate(settings, out / "checkpoint", "test")
            write_text_atomically(out / "metrics.json", json.dumps(final | tested, indent=2))
        version = run.finish(out, int(final["epoch"]), tested, register) if run else None
    typer.echo(f"done: {out}/metrics.json, per loop {out}/loops.json, checkpoint {out}/checkpoint")
    if version:
        typer.echo(f"registered: models:/{version.name}/{version.version} (load it with "
                   f"aaclip.mlflow_model.load_registered)")


def _tracked_run(tracking_uri: Optional[str], register: Optional[str], experiment: Optional[str], settings,
                 config: str):
    """The MLflow run of this training, or None without a tracking URI. Refusals come before anything is made."""
    from aaclip.preflight import check_model_name  # lazy: numpy and PIL (see the top)

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if register is not None:
        check_model_name(register)
    if not uri:
        if register:
            raise AaclipError(f"--register {register}: needs a tracking server; pass --tracking-uri URI or set "
                              "MLFLOW_TRACKING_URI")
        return None
    from aaclip.config import resolve_config_path
    from aaclip.tracking_run import RetrainRun, check_tracking_server  # lazy: mlflow, only when tracking

    check_tracking_server(uri)
    return RetrainRun(uri, settings, resolve_config_path(config), experiment)


def _evaluate(settings, checkpoint: Path, split: str) -> dict:
    from aaclip.checkpoint import load_trained  # lazy: torch and open_clip (see the top)
    from aaclip.session import build_session

    if split == "test" and settings.data.test is None:
        raise AaclipError("data.test is not set in the config: nothing to evaluate for --split test")
    session = build_session(settings)
    load_trained(session.model, checkpoint)
    return session.evaluate(loop=0, split=split)


@app.command()
def evaluate(config: str = typer.Argument(..., help="Config file or shipped name"),
             checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint folder (adapters.pt inside)"),
             split: str = typer.Option("val", "--split", help="val or test"),
             overrides: Optional[list[str]] = SetOption,
             as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON")):
    """Anomaly maps and metrics of trained adapters on the val or test data."""
    if split not in ("val", "test"):
        raise AaclipError(f"--split: {split!r} is not val or test")
    results = _evaluate(_config(config, overrides), checkpoint, split)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for key in sorted(results):
        typer.echo(f"{key:40s} {results[key]:8.2f}")


@app.command()
def profile(config: str = typer.Argument(..., help="Config file or shipped name"),
            overrides: Optional[list[str]] = SetOption,
            memory: Optional[float] = typer.Option(None, "--memory", help="Memory limit in GB: print the largest "
                                                   "batch per stage that fits (e.g. a GPU's share)"),
            repeats: int = typer.Option(3, "--repeats", min=1, help="Timed steps per stage (after one warm-up)"),
            as_json: bool = typer.Option(False, "--json", help="Print JSON")):
    """Step time and peak memory per stage, and the largest batch within --memory: sizes resources.gpu."""
    from aaclip.factory import resolve_device  # lazy: torch and open_clip (see the top)
    from aaclip.profile import as_dict, gpu_fraction, profile_config

    if memory is not None and memory <= 0:
        raise AaclipError(f"--memory: {memory} is not a positive number of GB")
    settings = _config(config, overrides)
    stages = profile_config(settings, repeats=repeats, memory_gb=memory)
    fraction = gpu_fraction(max(stage.peak_bytes for stage in stages), resolve_device(settings.model.device))
    if as_json:
        typer.echo(json.dumps({"stages": [as_dict(stage) for stage in stages], "gpu_fraction": fraction}, indent=2))
        return
    for stage in stages:
        line = (f"{stage.stage}: batch {stage.batch}  step {stage.step_s * 1000:.1f} ms  peak {stage.memory_kind} "
                f"{stage.peak_bytes / 2**30:.2f} GB  (+{stage.bytes_per_image / 2**20:.1f} MB per image)")
        if stage.largest_batch is not None:
            line += f"  largest batch within {memory:g} GB: {stage.largest_batch}"
        typer.echo(line)
    if fraction is not None:
        typer.echo(f"resources.gpu: {fraction:g} (the smallest 1/k of this GPU that holds the larger peak)")


@diagnose_app.command("gradients")
def diagnose_gradients(config: str = typer.Argument(..., help="Config file or shipped name"),
                       overrides: Optional[list[str]] = SetOption,
                       compare: bool = typer.Option(False, "--compare",
                                                    help="Run the three historical variants side by side"),
                       context_norm: Optional[float] = typer.Option(
                           None, "--context-norm", help="Rescale the raw text context to this per-token norm "
                           "(~17 with OpenAI weights; random-init towers give ~3)"),
                       as_json: bool = typer.Option(False, "--json", help="Print JSON")):
    """Image-adapter gradient norm with vs without image cross-attention (same seed, batch, weights)."""
    if context_norm is not None and not context_norm > 0:
        raise AaclipError(f"--context-norm: {context_norm} must be a positive per-token norm (e.g. 17)")
    from aaclip import diagnostics  # lazy: torch and open_clip (see the top)

    settings = _config(config, overrides)
    reports = diagnostics.compare_variants(settings, context_norm) if compare else \
        [diagnostics.image_adapter_gradients(settings, context_norm=context_norm)]
    if as_json:
        typer.echo(json.dumps(diagnostics.as_dicts(reports), indent=2))
        return
    for report in reports:
        typer.echo(diagnostics.format_report(report))


@data_app.command("synth")
def data_synth(out: Path = typer.Argument(..., help="Folder to write the dataset into"),
               seed: int = typer.Option(0, "--seed"),
               domain: str = typer.Option("texture", "--domain", help="texture or object"),
               layout: str = typer.Option("mvtec", "--layout", help="mvtec or visa"),
               images: int = typer.Option(10, "--images", help="Normal and anomalous images per class")):
    """Write a synthetic dataset in the real MVTec AD (or VisA) on-disk layout."""
    from aaclip.data.synthetic import generate_synthetic  # lazy: numpy and PIL (see the top)

    if layout not in ("mvtec", "visa"):
        raise AaclipError(f"--layout: {layout!r} is not mvtec or visa")
    if images < 1:
        raise AaclipError(f"--images: {images} must be at least 1 (normal and anomalous images per class)")
    problem = creatable_folder_problem(out)
    if problem:
        raise AaclipError(f"{out}: cannot be created: {problem}")
    root = generate_synthetic(out, domain, seed, layout=layout, normal_per_class=images,
                              anomalous_per_class=images)
    typer.echo(f"wrote {root}")


def quiet_libraries() -> None:
    # open_clip warns through the root logger for every random-init model: expected here, noise to a user.
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # with --tracking-uri
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    quiet_libraries()
    warnings.showwarning = show_as_one_line
    try:
        invoke(app, argv)
    except AaclipError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
