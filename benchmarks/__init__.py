"""Benchmarks that print ratios measured side by side in one process (DESIGN §7: never asserted in tests).

    python -m benchmarks                 # list them
    python -m benchmarks NAME [--json]   # run one; --json prints one object with its figures and `ratio`

Each entry names a module with `main(argv: list[str]) -> None`. Adding a benchmark is one line here.
"""
from __future__ import annotations

BENCHMARKS = {
    "step": ("benchmarks.step", "Stage-1/Stage-2 step, ViT-L-14 at 112 px: batch-first blocks vs open_clip's"),
    "flops": ("benchmarks.flops", "achieved FLOP/s of the Stage-2 step over a plain matmul of the same shapes"),
    "study": ("benchmarks.study", "k smoke trials through the Ray Tune study vs k fit calls back to back"),
    "search": ("benchmarks.search", "TPE + ASHA vs random search without stopping: trial-epochs to the target"),
    "cache": ("benchmarks.cache", "a whole Stage-1 epoch with a warm vs a cold feature cache"),
    "eval-memory": ("benchmarks.eval_memory", "peak memory of an evaluation of 100 vs 1,000 images"),
}
