"""What the benchmarks share: arguments, the output format, the benchmark model and its generated data."""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from aaclip.config import TrainConfig, load_config
from aaclip.data.synthetic import generate_synthetic

# ViT-L-14 at 112 px, random init: the real depth and widths at a size a 2-core CPU steps in seconds.
VIT_L = {"model.name": "ViT-L-14", "model.image_size": 112, "adapters.levels": [6, 12, 18, 24],
         "adapters.image_until": 6, "adapters.text_until": 3, "stage1.surgery_from_block": 5,
         "cross_attention.heads": 8}
TINY = {"model.name": "aaclip-tiny", "model.image_size": 64}


def parser(description: str) -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(prog=f"python -m benchmarks {description.split(':')[0]}",
                                        description=description)
    arguments.add_argument("--json", action="store_true", help="print one JSON object with the figures")
    arguments.add_argument("--smoke", action="store_true", help="a tiny run that only checks the benchmark works")
    arguments.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    return arguments


def emit(name: str, figures: dict, summary: str, as_json: bool) -> None:
    """One JSON object (with the headline `ratio` and the `goal`) or a readable line."""
    if as_json:
        print(json.dumps({"benchmark": name, **figures}, sort_keys=True))
    else:
        print(f"{name}: {summary}")


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def generated_data(folder: Path, size: int, images: int = 2) -> dict[str, dict]:
    """Train (texture) and val (object) trees in the MVTec layout with `images` normal+anomalous per class."""
    roots = {domain: generate_synthetic(folder / domain, domain, 0, normal_per_class=images,
                                        anomalous_per_class=images, image_size=size)
             for domain in ("texture", "object")}
    return {"data.train": {"kind": "mvtec", "root": str(roots["texture"])},
            "data.val": {"kind": "mvtec", "root": str(roots["object"])}, "data.test": None}


def benchmark_config(folder: Path, smoke: bool, batch: int = 2, images: int = 2, **overrides) -> TrainConfig:
    """The benchmark model (ViT-L-14 at 112 px, or the tiny one for --smoke) on generated data, fp32 on CPU."""
    model = TINY if smoke else VIT_L
    settings = {**model, **generated_data(folder, model["model.image_size"], images),
                "data.text_batch": batch, "data.image_batch": batch, "cache.dir": str(folder / "cache"),
                "model.device": "cpu", **overrides}
    return load_config("tiny", settings)
