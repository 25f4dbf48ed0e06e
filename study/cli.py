"""`aaclip-study`: run, resume, inspect, export and report hyperparameter studies (DESIGN §1, §5).

    aaclip-study run search_spaces/smoke.yaml
    aaclip-study status smoke
    aaclip-study export smoke -o best.yaml && aaclip train best.yaml

Errors a user can cause print one line, `error: <message>`, on stderr and exit with code 2. Each command imports
what it needs inside it (lazily: MLflow, Optuna, Ray and torch take seconds to import), so `--help` and a refused
spec answer at once, and `status`, `export` and `report` never import Ray.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from aaclip.command_line import invoke
from aaclip.errors import AaclipError
from study.interrupt import StudyInterrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Ray Tune studies over AA-CLIP feedback training, tracked in MLflow.")

TrackingOption = typer.Option(None, "--tracking-uri", help="MLflow server; default $MLFLOW_TRACKING_URI, else the "
                                                           "local embedded server under $AACLIP_HOME/mlflow.")
AddressOption = typer.Option(None, "--address", help="Ray cluster address; default $RAY_ADDRESS, else a local Ray.")


def echo(*parts: object, flush: bool = True) -> None:
    print(*parts, flush=flush)


def note(*parts: object, flush: bool = True) -> None:
    print(*parts, file=sys.stderr, flush=flush)


def _client(tracking_uri: Optional[str]):
    from study.server import resolve_tracking_uri
    from study.tracking import tracking_client

    return tracking_client(resolve_tracking_uri(tracking_uri, echo=note))


@app.command()
def run(spec: str = typer.Argument(..., help="A study spec file, or a shipped spec name (smoke)."),
        name: Optional[str] = typer.Option(None, "--name", help="Study name (default: the spec's name)."),
        address: Optional[str] = AddressOption,
        tracking_uri: Optional[str] = TrackingOption,
        storage: Optional[str] = typer.Option(None, "--storage", help="Ray results: path or s3:// URI."),
        num_samples: Optional[int] = typer.Option(None, "--num-samples", min=1, help="Searched trials."),
        smoke_test: bool = typer.Option(False, "--smoke-test", help="2 trials, 1 loop: check the wiring."),
        confirm_top_k: Optional[int] = typer.Option(None, "--confirm-top-k", min=0,
                                                    help="Configurations to confirm on fresh seeds after the "
                                                         "search (default: the spec's confirm.top_k; 0: none).")
        ) -> None:
    """Launch a study; prints where to watch it in MLflow."""
    from study.spec import load_study

    study = load_study(spec, name=name, num_samples=num_samples, smoke_test=smoke_test,  # before anything starts
                       confirm_top_k=confirm_top_k)
    from study.launch import run_study

    result = run_study(study, address=address, tracking_uri=tracking_uri, storage=storage, echo=echo)
    report_failures(result)


def report_failures(result) -> None:
    """A note when some trials failed; exit code 1 when all did (nothing to export)."""
    if result.errors:
        note(f"{result.errors} of {result.trials} trials failed; see `aaclip-study status {result.name}`")
    if result.trials and result.errors == result.trials:
        raise typer.Exit(1)


@app.command()
def resume(name: str = typer.Argument(..., help="The study to continue."),
           address: Optional[str] = AddressOption, tracking_uri: Optional[str] = TrackingOption) -> None:
    """Continue a study whose driver stopped: unfinished trials resume from their checkpoints."""
    from study.launch import resume_study

    report_failures(resume_study(name, address=address, tracking_uri=tracking_uri, echo=echo))


@app.command()
def status(name: str = typer.Argument(...), tracking_uri: Optional[str] = TrackingOption,
           as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """One row per trial: state, key params, loop reached, objective, and why it stopped."""
    from study.status import format_status, study_status

    result = study_status(_client(tracking_uri), name)
    echo(result.to_json() if as_json else format_status(result))


@app.command()
def export(name: str = typer.Argument(...),
           output: Path = typer.Option(..., "-o", "--output", help="The TrainConfig YAML to write."),
           trial: Optional[str] = typer.Option(None, "--trial", help="A trial id or name (default: the best)."),
           tracking_uri: Optional[str] = TrackingOption,
           register: Optional[str] = typer.Option(None, "--register", help="Also register the trial's best "
                                                  "adapters and this config as a new version of this MLflow model.")
           ) -> None:
    """Write the best (or a chosen) trial's complete TrainConfig, with provenance, for `aaclip train`."""
    from aaclip.preflight import check_model_name  # lazy, like every command's imports: a fast --help
    from study.export import check_output, export_and_register, export_trial

    check_output(output)  # before a server is started or asked
    if register is None:
        provenance = export_trial(_client(tracking_uri), name, output, trial)
    else:
        check_model_name(register)
        provenance, version = export_and_register(_client(tracking_uri), name, output, trial, register)
        echo(f"registered: models:/{version.name}/{version.version} (run: trial {provenance['trial']})")
    confirmed = provenance.get("confirmed")
    value = (f"confirmed mean {confirmed['mean']:.4g} over {confirmed['n']} fresh seeds" if confirmed
             else f"{provenance['metric']} = {_rounded(provenance['value'])}")
    echo(f"wrote {output}: trial {provenance['trial']} ({value}); selected as {provenance['selection']}; "
         f"retrain with `aaclip train {output}`")


def _rounded(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command()
def report(name: str = typer.Argument(...),
           output: Optional[Path] = typer.Option(None, "-o", "--output", help="Folder (default ./<name>-report)."),
           tracking_uri: Optional[str] = TrackingOption) -> None:
    """The objective against scale, loops and learning rates (every trial), the confirmed table, importances."""
    from study.report import check_report_folder, write_report

    folder = output or Path(f"{name}-report")
    check_report_folder(folder)  # before a server is started or asked
    index = write_report(_client(tracking_uri), name, folder)
    echo(f"wrote {index} (self-contained; its figures also as PNG files); also logged to the study's parent run "
         "under report/")


@app.command()
def server(stop: bool = typer.Option(False, "--stop", help="Stop the local server instead."),
           port: Optional[int] = typer.Option(None, "--port", min=1, max=65535,
                                              help="Listen here (default: its previous port, else 5000).")) -> None:
    """Start (or find) the local embedded MLflow server and print its address."""
    from study.server import ensure_server, stop_server

    if stop:
        echo("stopped" if stop_server() else "no local server was running")
        return
    info = ensure_server(port=port)
    echo(f"MLflow UI: {info.uri} (pid {info.pid})")


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        invoke(app, argv)  # usage mistakes too: one line, exit 2
    except AaclipError as error:
        note(f"error: {error}")
        sys.exit(2)
    except StudyInterrupted as interrupted:  # Ctrl-C / SIGTERM: stopped cleanly, resumable
        note(str(interrupted))
        sys.exit(interrupted.code)


if __name__ == "__main__":
    main()
