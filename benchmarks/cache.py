"""cache: a whole Stage-1 epoch (loop 1, ViT-L-14 at 112 px, batch 2, fp32) with a warm feature cache vs a
cold one, alternating in one process on the same session.

Cold: every batch runs the frozen V-V "surgery" tower for its targets and writes them to a fresh cache folder.
Warm: the same epoch again (same augmentation draws), reading every target from that folder. Each epoch also
trains the text adapters, so the ratio is what a study's later trials gain per epoch. Headline ratio:
cold / warm (goal >= 3).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from aaclip.features import FeatureCache
from aaclip.profile import stage_plan
from aaclip.schedule import TEXT
from aaclip.session import build_session
from aaclip.train import Position, make_optimizer, run_epoch
from benchmarks.common import benchmark_config, emit, median, parser, set_threads

GOAL = 3.0


def timed_epoch(session) -> float:
    plan = stage_plan(TEXT)
    optimizer = make_optimizer(session, plan)
    steps = session.data.steps_per_epoch(TEXT)
    started = time.perf_counter()
    run_epoch(session, plan, optimizer, Position(), 0, steps)
    return time.perf_counter() - started


def main(argv: list[str]) -> None:
    args = parser(__doc__).parse_args(argv)
    set_threads(args.threads)
    rounds = 1 if args.smoke else 2
    with tempfile.TemporaryDirectory() as folder:
        session = build_session(benchmark_config(Path(folder), args.smoke, images=2))
        key = session.cache.folder.name  # the run's content key (weights, dataset files, preprocessing)
        cold, warm = [], []
        for round_index in range(rounds):
            session.cache = FeatureCache(Path(folder) / f"cache-{round_index}", key)
            cold.append(timed_epoch(session))
            warm.append(timed_epoch(session))
        steps = session.data.steps_per_epoch(TEXT)
    ratio = median(cold) / median(warm)
    figures = {"model": session.config.model.name, "threads": args.threads, "steps_per_epoch": steps,
               "cold_epoch_s": median(cold), "warm_epoch_s": median(warm), "ratio": ratio, "goal": GOAL}
    emit("cache", figures, f"Stage-1 epoch of {steps} steps: cold {median(cold):.2f}s, warm {median(warm):.2f}s, "
         f"x{ratio:.2f} (goal x{GOAL})", args.json)
