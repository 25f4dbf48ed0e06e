"""The GPU check's parts, one per call (benchmarks/gpu_check.sh runs each under its own time budget).

    python benchmarks/gpu_check.py peak        # bf16 matmul peak of this GPU (FLOP/s)
    python benchmarks/gpu_check.py step        # bf16 Stage-2 step, ViT-L-14-336 at 518 px: time, MFU, memory
    python benchmarks/gpu_check.py compile     # the same step (batch 16) with model.compile: true
    python benchmarks/gpu_check.py throughput  # 1, 2, 4 concurrent trials sharing the GPU (gpu: 1, 0.5, 0.25)

Every part writes `<part>.json` into --out. `--dry-run` runs the same code on the CPU with the tiny model
(fp32, small sizes): that is how the parts are tested on machines without a GPU. Needs only torch, open_clip
and this package: no Ray, MLflow or Optuna (the GPU machine may not have them). Throughput is therefore
measured as k `fit` processes running at once on the one GPU, which is what k fractional-GPU trials are.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the package and benchmarks/ import from the checkout
    sys.path.insert(0, str(ROOT))

from aaclip.profile import peak_memory, stage_batch, time_steps  # noqa: E402
from aaclip.schedule import IMAGE  # noqa: E402
from aaclip.session import build_session  # noqa: E402
from benchmarks.common import benchmark_config, median  # noqa: E402
from benchmarks.flops import step_flops_and_shapes  # noqa: E402

VIT_L_336 = {"model.name": "ViT-L-14-336", "model.image_size": 518, "adapters.levels": [6, 12, 18, 24],
             "adapters.image_until": 6, "adapters.text_until": 3, "stage1.surgery_from_block": 5,
             "cross_attention.heads": 8, "model.precision": "bf16", "model.device": "cuda"}
SMALL = {"model.name": "aaclip-small", "model.image_size": 112, "adapters.levels": [2, 4, 6, 8],
         "adapters.image_until": 3, "cross_attention.heads": 4, "feedback.loops": 1, "feedback.text_epochs": 2,
         "feedback.image_epochs": 4, "eval.every": "loop"}
TRIALS_PER_GPU = (1, 2, 4)


def device_name(dry_run: bool) -> str:
    return "cpu (dry run)" if dry_run else torch.cuda.get_device_name()


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak(dry_run: bool) -> dict:
    """bf16 peak: the best of a few square products big enough to saturate the tensor cores."""
    device, dtype = ("cpu", torch.float32) if dry_run else ("cuda", torch.bfloat16)
    sizes, repeats = ((256, 512), 3) if dry_run else ((4096, 8192, 16384), 20)
    best = 0.0
    for size in sizes:
        a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
        a @ b
        synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize()
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - started))
    return {"device": device_name(dry_run), "dtype": str(dtype), "peak_tflops": best / 1e12}


def step_config(folder: Path, dry_run: bool, batch: int, **overrides):
    model = {"model.device": "cpu", "model.precision": "fp32"} if dry_run else VIT_L_336
    return benchmark_config(folder, dry_run, batch=batch, images=2, **{**model, **overrides})


def stage2_step(dry_run: bool, batches: tuple[int, ...], peak_tflops: float | None, **overrides) -> dict:
    """Time, FLOPs, MFU and peak memory of the Stage-2 step at each batch size."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for batch in batches:
            session = build_session(step_config(Path(folder), dry_run, batch, **overrides))
            data = stage_batch(session, IMAGE, batch)
            time_steps(session, IMAGE, data, repeats=0, warmup=2)  # kernels chosen, compiled, allocated
            with peak_memory(session.device) as peak:
                seconds = median(time_steps(session, IMAGE, data, repeats=3 if dry_run else 10, warmup=0))
            flops, _ = step_flops_and_shapes(session, data) if not overrides.get("model.compile") else (None, None)
            row = {"batch": batch, "step_s": seconds, "images_per_s": batch / seconds,
                   "peak_memory_gb": peak["bytes"] / 2**30, "memory_kind": peak["kind"]}
            if flops:
                row |= {"step_tflop": flops / 1e12, "achieved_tflops": flops / seconds / 1e12}
                if peak_tflops:
                    row["mfu"] = flops / seconds / 1e12 / peak_tflops
            rows.append(row)
            del session
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    name = "aaclip-tiny" if dry_run else VIT_L_336["model.name"]
    return {"device": device_name(dry_run), "model": name, "precision": "fp32" if dry_run else "bf16",
            "rows": rows, **({"compile": True} if overrides.get("model.compile") else {})}


# ---------------------------------------------------------------------------------------------------------------
# Trials per GPU


def fit_one(folder: Path, dry_run: bool) -> None:
    """One trial's worth of training (the child process of `throughput`)."""
    from aaclip.train import fit

    if dry_run:  # the tiny model, one epoch per stage: checks the code path in seconds
        settings = {"model.device": "cpu", "feedback.loops": 1, "feedback.text_epochs": 1,
                    "feedback.image_epochs": 1}
    else:
        settings = {**SMALL, "model.device": "cuda", "model.precision": "bf16"}
    config = benchmark_config(folder / "data", True, batch=8, images=4,
                              **{**settings, "cache.dir": str(folder / "cache")})
    fit(config, out_dir=folder / f"run-{os.getpid()}")


def concurrent_fits(k: int, folder: Path, dry_run: bool) -> float:
    """Wall seconds for k trials started together on the one device."""
    command = [sys.executable, __file__, "fit-one", "--out", str(folder)] + (["--dry-run"] if dry_run else [])
    started = time.perf_counter()
    children = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                for _ in range(k)]
    for child in children:
        _, errors = child.communicate()
        if child.returncode:
            raise RuntimeError(f"a fit process failed: {errors.strip().splitlines()[-1] if errors else '?'}")
    return time.perf_counter() - started


def throughput(dry_run: bool, counts: tuple[int, ...]) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        fit_one(Path(folder), dry_run)  # data generated and feature cache filled once, like a study's first trial
        for k in counts:
            seconds = concurrent_fits(k, Path(folder), dry_run)
            rows.append({"trials_per_gpu": k, "gpu_share": 1 / k, "wall_s": seconds,
                         "trials_per_hour": 3600 * k / seconds})
    base = rows[0]["trials_per_hour"]
    for row in rows:
        row["speedup_vs_1"] = row["trials_per_hour"] / base
    return {"device": device_name(dry_run), "model": "aaclip-tiny" if dry_run else "aaclip-small", "rows": rows,
            "how": "k concurrent fit processes on one GPU (no Ray on the GPU machine): what k trials with "
                   "resources.gpu 1/k do; each wall time includes process start and imports"}


def run_part(part: str, out: Path, dry_run: bool) -> dict:
    if part == "peak":
        return matmul_peak(dry_run)
    if part == "step":
        peak_file = out / "peak.json"
        peak = json.loads(peak_file.read_text())["peak_tflops"] if peak_file.is_file() else None
        return stage2_step(dry_run, (1,) if dry_run else (2, 16), peak)
    if part == "compile":
        # One batch size: each new shape is a new compilation (dynamic=False), minutes of the part's budget.
        return stage2_step(dry_run, (1,) if dry_run else (16,), None, **{"model.compile": True})
    if part == "throughput":
        return throughput(dry_run, (1,) if dry_run else TRIALS_PER_GPU)
    raise SystemExit(f"error: unknown part {part!r}")


def main(argv: list[str]) -> None:
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("part", choices=["peak", "step", "compile", "throughput", "fit-one"])
    arguments.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    arguments.add_argument("--dry-run", action="store_true", help="CPU, tiny model: checks the code, not a GPU")
    args = arguments.parse_args(argv)
    if args.part == "fit-one":
        return fit_one(args.out, args.dry_run)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; use --dry-run to check the code on a CPU")
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_part(args.part, args.out, args.dry_run)
    (args.out / f"{args.part}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
