"""Stage-1 target features: frozen forward (cache cold) vs cache read (warm), side by side in one run.

    python benchmarks/feature_cache.py [--model aaclip-small] [--batches 8]

Prints both timings and their ratio; asserts nothing (DESIGN §7: speed is measured, never asserted in tests).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from aaclip.config import load_config
from aaclip.features import FeatureCache, cached_targets
from aaclip.schedule import TEXT, StagePlan
from aaclip.session import build_session

SIZES = {"aaclip-tiny": (64, [1, 2, 3, 4], 1), "aaclip-small": (112, [2, 4, 6, 8], 3)}


def time_pass(session, cache: FeatureCache, batches: list[dict]) -> float:
    started = time.perf_counter()
    for batch in batches:
        keys = [session.datasets[TEXT].draw_key(int(i)) for i in batch["index"]]
        cached_targets(cache, keys, lambda rows, images=batch["image"]: session.model.frozen_targets(images[rows]))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="aaclip-small", choices=sorted(SIZES))
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    size, levels, surgery = SIZES[args.model]
    config = load_config("tiny", {"model.name": args.model, "model.image_size": size, "adapters.levels": levels,
                                  "stage1.surgery_from_block": surgery, "cross_attention.heads": 4})
    session = build_session(config)
    loader = session.loader(StagePlan(1, TEXT, 1), 0)
    batches = [batch for _, batch in zip(range(args.batches), loader)]
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        key = session.cache.folder.name  # the run's content key (weights, dataset, preprocessing)
        cold = time_pass(session, FeatureCache(Path(folder), key), batches)
        warm = time_pass(session, FeatureCache(Path(folder), key), batches)
    images = sum(len(b["index"]) for b in batches)
    print(f"{args.model} at {size}px, {images} images: frozen forward {cold:.3f}s, cache read {warm:.3f}s, "
          f"speed-up x{cold / warm:.1f}")


if __name__ == "__main__":
    main()
