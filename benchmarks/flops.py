"""flops: achieved FLOP/s of the Stage-2 step (ViT-L-14 at 112 px, batch 2, fp32) over the peak this machine
reaches on plain matrix products of the same shapes.

FLOPs are counted with torch.utils.flop_counter over one step (forward + backward). The peak is measured here,
in the same process: every matrix product the step dispatches (mm/addmm/bmm/baddbmm, recorded with their
shapes and counts) is timed alone on random tensors, and peak = their FLOPs / their time. Attention's own
kernels (scaled_dot_product_attention) count in the achieved FLOPs but have no plain-matmul twin in the peak:
at 65 tokens they are a few percent of the step. Headline ratio: achieved / peak (goal >= 0.6).
"""
from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from aaclip.profile import stage_batch, stage_plan, time_steps, train_step
from aaclip.schedule import IMAGE
from aaclip.session import build_session
from aaclip.train import make_optimizer
from benchmarks.common import benchmark_config, emit, median, parser, set_threads

GOAL = 0.6
aten = torch.ops.aten
WITH_BIAS = {aten.addmm, aten.baddbmm}  # (bias, a, b): the product's operands come second and third
MATMULS = {aten.mm, aten.bmm} | WITH_BIAS


class MatmulShapes(TorchDispatchMode):
    """Counts the matrix products dispatched inside the block by operand shapes."""

    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func._overloadpacket
        if packet in MATMULS:
            a, b = args[1:3] if packet in WITH_BIAS else args[:2]
            self.calls[(tuple(a.shape), tuple(b.shape))] += 1
        return func(*args, **(kwargs or {}))


def product_flops(a_shape: tuple, b_shape: tuple) -> int:
    batch = a_shape[0] if len(a_shape) == 3 else 1
    return 2 * batch * a_shape[-2] * a_shape[-1] * b_shape[-1]


def time_product(a_shape: tuple, b_shape: tuple, repeats: int) -> float:
    a, b = torch.randn(a_shape), torch.randn(b_shape)
    product = torch.bmm if len(a_shape) == 3 else torch.mm
    product(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        product(a, b)
    return (time.perf_counter() - started) / repeats


def matmul_peak(calls: Counter, repeats: int) -> float:
    flops = sum(count * product_flops(*shapes) for shapes, count in calls.items())
    seconds = sum(count * time_product(*shapes, repeats) for shapes, count in calls.items())
    return flops / seconds


def step_flops_and_shapes(session, batch) -> tuple[int, Counter]:
    optimizer = make_optimizer(session, stage_plan(IMAGE))
    counter, shapes = FlopCounterMode(display=False), MatmulShapes()
    with counter, shapes:
        train_step(session, IMAGE, batch, optimizer)
    return counter.get_total_flops(), shapes.calls


def main(argv: list[str]) -> None:
    args = parser(__doc__).parse_args(argv)
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        session = build_session(benchmark_config(Path(folder), args.smoke))
        batch = stage_batch(session, IMAGE, session.data.batch_size(IMAGE))
        step_s = median(time_steps(session, IMAGE, batch, repeats=1 if args.smoke else 3))
        flops, calls = step_flops_and_shapes(session, batch)
    peak = matmul_peak(calls, repeats=1 if args.smoke else 3)
    achieved = flops / step_s
    figures = {"model": session.config.model.name, "threads": args.threads, "step_s": step_s,
               "step_gflop": flops / 1e9, "achieved_gflops": achieved / 1e9, "matmul_peak_gflops": peak / 1e9,
               "matmul_shapes": len(calls), "ratio": achieved / peak, "goal": GOAL}
    emit("flops", figures, f"Stage-2 step {flops / 1e9:.1f} GFLOP in {step_s:.3f}s = {achieved / 1e9:.1f} GFLOP/s; "
         f"plain matmul of the same shapes {peak / 1e9:.1f} GFLOP/s; ratio {achieved / peak:.2f} (goal {GOAL})",
         args.json)
