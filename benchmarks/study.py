"""study: k trials of the smoke study through Ray Tune (searcher, trial processes, MLflow logging, checkpoints
reported to Tune) vs the same k `fit` calls back to back in this process, with the same threads per trial.

Same configurations on both sides: a grid over k learning rates, no early stopping, no guard, no baseline, the
feature cache off (a warm cache would favour whichever side runs second). One trial at a time, one CPU each,
torch on 1 thread on both sides. The embedded MLflow server is started before the clock (a machine starts it
once); Ray's start, trial processes and their imports, tracking and checkpoints are all on the clock.
Headline ratio: study wall time / fits wall time (goal <= 1.15).
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import emit, parser

GOAL = 1.15
LEARNING_RATES = [1e-3, 3e-3, 1e-2, 3e-4]


def study_data(k: int, smoke: bool) -> dict:
    from study.spec import read_yaml, resolve_spec_path

    data = read_yaml(resolve_spec_path("smoke"))
    budget = {"feedback.loops": 1, "feedback.text_epochs": 1, "feedback.image_epochs": 1} if smoke else {}
    data.update(name=f"bench-{os.getpid()}", baseline=False, scheduler={"kind": "none"},
                guard={"enabled": False}, searcher={"kind": "grid", "seed": 0},
                space={"optim.image_lr": {"grid": LEARNING_RATES[:k]}},
                trials={"num_samples": k, "max_concurrent": 1, "resources": {"cpu": 1, "gpu": 0},
                        "max_failures": 0})
    data["overrides"] = {**data.get("overrides", {}), "cache.features": False, **budget}
    return data


def time_fits(study, k: int, folder: Path) -> float:
    from aaclip.train import fit

    torch.set_num_threads(1)
    started = time.perf_counter()
    for index, lr in enumerate(LEARNING_RATES[:k]):
        fit(study.trial_config({"optim.image_lr": lr}), out_dir=folder / f"fit-{index}")
    return time.perf_counter() - started


def time_study(study) -> float:
    from study.launch import run_study

    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Tune's progress lines; stdout carries the result only
        result = run_study(study, echo=lambda *_: None)
    if result.errors:
        raise RuntimeError(f"{result.errors} trial(s) of the benchmark study failed")
    return time.perf_counter() - started


def main(argv: list[str]) -> None:
    args = parser(__doc__).parse_args(argv)
    k = 1 if args.smoke else 2
    with tempfile.TemporaryDirectory() as folder:
        os.environ["AACLIP_HOME"] = str(Path(folder) / "home")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        from study.preflight import preflight_data
        from study.server import ensure_server, stop_server
        from study.spec import parse_study

        study = parse_study(study_data(k, args.smoke), source="benchmarks/study.py")
        preflight_data(study)  # generated data exists before either clock starts
        ensure_server(preferred_port=None)
        try:
            fits = time_fits(study, k, Path(folder))
            tuned = time_study(study)
        finally:
            stop_server()
    figures = {"trials": k, "threads_per_trial": 1, "fits_s": fits, "study_s": tuned, "ratio": tuned / fits,
               "overhead_per_trial_s": (tuned - fits) / k, "goal": GOAL}
    emit("study", figures, f"{k} trials: fit x{k} {fits:.1f}s, Ray Tune study {tuned:.1f}s, ratio {tuned / fits:.2f} "
         f"(+{(tuned - fits) / k:.1f}s per trial; goal {GOAL})", args.json)
