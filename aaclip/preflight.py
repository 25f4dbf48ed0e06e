"""`aaclip train` checks everything it can before importing torch and before creating or touching --out.

The config (schema, and fit to the backbone's architecture JSON) is checked by the caller; here: the output
folder, the files training starts from, and the datasets (layout, headers, masks, every file decoded). What
needs torch (the checkpoint's content, init weights' shapes, the CUDA device) is checked by `fit` before its
first write.
"""
from __future__ import annotations

from pathlib import Path

from aaclip.config import TrainConfig
from aaclip.data.checks import load_checked_records
from aaclip.errors import AaclipError, CheckpointError
from aaclip.outputs import creatable_folder_problem


def check_train_start(config: TrainConfig, out: Path, resume: Path | None, test: bool) -> None:
    check_run_folder(out, resume)
    check_start_files(config, resume)
    load_checked_records(config, require_test=test)


def check_run_folder(out: Path, resume: Path | None) -> None:
    """A new run gets a new (or empty) folder; an existing run's folder only when resuming it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AaclipError(f"--out {out}: is a file, not a folder; pass a folder for the run")
    if out.is_dir() and any(out.iterdir()) and resume is None:
        raise AaclipError(f"--out {out}: already holds files (an earlier run?); pass a new folder, or continue "
                          f"that run with --resume {out / 'checkpoint'}")
    problem = creatable_folder_problem(out)
    if problem:
        raise AaclipError(f"--out {out}: cannot be created: {problem}")


def check_start_files(config: TrainConfig, resume: Path | None) -> None:
    if resume is not None and not (Path(resume) / "state.pt").is_file():
        raise CheckpointError(f"--resume {resume}: not a checkpoint (no state.pt); pass the checkpoint folder of "
                              "a run, e.g. runs/latest/checkpoint")
    for part in ("text_adapter", "image_adapter"):
        path = getattr(config.init, part)
        if path and not Path(path).expanduser().exists():
            raise CheckpointError(f"init.{part}: {path} does not exist")


def check_model_name(name: str) -> None:
    """--register MODEL (aaclip train, aaclip-study export): a name MLflow's registry can hold."""
    if not name.strip():
        raise AaclipError("--register: give the name of the MLflow model to register, e.g. --register aaclip")
    if any(character in name for character in "/:") or name.strip(".") == "":
        raise AaclipError(f"--register {name}: MLflow model names cannot contain '/' or ':' (or be dots only)")
