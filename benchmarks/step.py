"""step: a training step (loss, backward, optimizer step) of each stage on ViT-L-14 at 112 px, batch 2, fp32,
with the frozen blocks run batch-first (ours) vs through open_clip's own block(x) path (stock).

The two paths alternate step by step in one process on the same session, weights and batch, so machine load
affects both alike. Headline ratio: stock / ours of the Stage-2 step (goal >= 1.5).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from aaclip.profile import stage_batch, time_steps
from aaclip.schedule import IMAGE, TEXT, Stage
from aaclip.session import build_session
from benchmarks.common import benchmark_config, emit, median, parser, set_threads

GOAL = 1.5


def alternate_paths(session, stage: Stage, rounds: int) -> dict[str, list[float]]:
    batch = stage_batch(session, stage, session.data.batch_size(stage))
    times = {"ours": [], "stock": []}
    for round_index in range(rounds):
        for path in times:
            session.model.stock_blocks = path == "stock"
            times[path] += time_steps(session, stage, batch, repeats=1, warmup=1 if round_index == 0 else 0)
    session.model.stock_blocks = False
    return times


def main(argv: list[str]) -> None:
    args = parser(__doc__).parse_args(argv)
    set_threads(args.threads)
    rounds = 1 if args.smoke else 4
    with tempfile.TemporaryDirectory() as folder:
        session = build_session(benchmark_config(Path(folder), args.smoke))
        figures = {"model": session.config.model.name, "image_size": session.config.model.image_size,
                   "threads": args.threads, "rounds": rounds, "goal": GOAL}
        for stage in (TEXT, IMAGE):
            times = alternate_paths(session, stage, rounds)
            ours, stock = median(times["ours"]), median(times["stock"])
            figures[stage.label] = {"ours_s": ours, "stock_s": stock, "ratio": stock / ours}
    figures["ratio"] = figures[IMAGE.label]["ratio"]
    summary = "; ".join(f"{s.label} ours {figures[s.label]['ours_s']:.3f}s stock "
                        f"{figures[s.label]['stock_s']:.3f}s x{figures[s.label]['ratio']:.2f}"
                        for s in (TEXT, IMAGE))
    emit("step", figures, f"{summary} (goal x{GOAL} on Stage 2)", args.json)
