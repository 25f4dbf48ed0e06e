"""Peak memory of one evaluation against the dataset's size: 100 and 1,000 generated images, side by side.

    python -m benchmarks.eval_memory [--model aaclip-small] [--images 100 1000]

Each size is evaluated in a fresh process, so the peaks (the process's maximum resident set size) do not carry
over. Images are generated at the model's input size. The headline `ratio` is the peak at the largest size over
the peak at the smallest: about 1.0 when evaluation memory does not grow with the dataset. The peak of a
process is mostly torch and open_clip (~1 GB); the rise above the peak before evaluating is printed as well. Asserts nothing
(DESIGN §7: memory is measured, never asserted in tests).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# image size, levels, surgery_from_block and cross-attention heads that fit each architecture
MODELS = {"aaclip-tiny": (64, [1, 2, 3, 4], 1, 2), "aaclip-small": (112, [2, 4, 6, 8], 3, 4)}
DOMAIN_CLASSES = 3  # every synthetic domain has three classes


def config_for(model: str, root: Path):
    from aaclip.config import load_config

    size, levels, surgery, heads = MODELS[model]
    dataset = {"kind": "mvtec", "root": str(root)}
    return load_config("tiny", {"model.name": model, "model.image_size": size, "adapters.levels": levels,
                                "stage1.surgery_from_block": surgery, "cross_attention.heads": heads,
                                "data.train": dataset, "data.val": dataset, "data.test": None,
                                "eval.aupro": True})


def generate(root: Path, images: int, model: str) -> Path:
    """A test split of about `images` images (half anomalous) over the domain's classes, at the model's size."""
    from aaclip.data.synthetic import generate_synthetic

    per_label = max(1, round(images / DOMAIN_CLASSES / 2))
    return generate_synthetic(root, "object", 0, normal_per_class=per_label, anomalous_per_class=per_label,
                              image_size=MODELS[model][0])


def evaluate_once(root: Path, model: str) -> dict:
    """In the child process: one evaluation of the whole split; its peak RSS and time."""
    import torch

    from aaclip.data.loading import load_records
    from aaclip.evaluate import evaluate_records
    from aaclip.factory import build_model
    from aaclip.prompt_tokens import PromptTokenizer

    torch.set_num_threads(1)
    config = config_for(model, root)
    records = load_records(config.data.val)
    network = build_model(config, torch.device("cpu"))
    before, started = peak_rss_mb(), time.perf_counter()
    results = evaluate_records(network, PromptTokenizer(config.model.name), records, config, torch.device("cpu"))
    return {"images": len(records), "peak_rss_mb": peak_rss_mb(), "evaluation_peak_mb": peak_rss_mb() - before,
            "seconds": time.perf_counter() - started, "pixel_auroc": results["val/pixel_auroc"]}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(root: Path, model: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.eval_memory", "--child", str(root), "--model", model]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=Path(__file__).parents[1])
    if result.returncode != 0:
        raise RuntimeError(f"evaluation of {root} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="aaclip-small", choices=sorted(MODELS))
    parser.add_argument("--images", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--json", action="store_true", help="print one JSON object with the figures")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: evaluate this root, print JSON
    args = parser.parse_args(argv)
    if args.child is not None:
        result = evaluate_once(args.child, args.model)
        print(json.dumps(result))
        return result
    with tempfile.TemporaryDirectory(prefix="eval-memory-") as folder:
        runs = [measure(generate(Path(folder) / f"images-{count}", count, args.model), args.model)
                for count in args.images]
    size = MODELS[args.model][0]
    ratio = runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"]
    figures = {"model": args.model, "image_size": size, "runs": runs, "ratio": ratio}
    if args.json:
        print(json.dumps({"benchmark": "eval-memory", **figures}, sort_keys=True))
        return figures
    for run in runs:
        print(f"{args.model} at {size}px, {run['images']:5d} images: peak RSS {run['peak_rss_mb']:7.1f} MB "
              f"(+{run['evaluation_peak_mb']:.1f} MB above the model's), evaluation {run['seconds']:.1f}s")
    print(f"ratio (peak at {runs[-1]['images']} / peak at {runs[0]['images']} images): {ratio:.3f}")
    return figures


if __name__ == "__main__":
    main()
