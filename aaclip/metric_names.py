"""Names of the metrics `fit` reports (DESIGN §4), spelled here only: the training loop builds them with these
functions and constants, and the CLI's progress line, a study's guard, plots, tracking and report read them.
A light module: checking a study's objective must not import torch."""
from __future__ import annotations

LOOP_PREFIX = "loop/"  # loop records (fit's on_loop): `loop/val/pixel_auroc` at step = loop, 0 = untrained
PARTS = ("text", "image")  # the model parts the two stages train (aaclip.schedule.Stage.part)
GROUP_KINDS = ("adapter", "cross_attn")  # each part's trained groups: <part>_adapter, <part>_cross_attn
EVALUATION_METRICS = ("pixel_auroc", "pixel_ap", "image_auroc", "image_ap", "pixel_aupro")
POSITION = ("loop", "stage", "epoch", "stage_epoch", "step")
LOOP_PROGRESS = "loop_progress"  # loops done, fractional: an x-axis that shows loop boundaries on epoch charts


def loss(part: str) -> str:
    return f"train/{part}_loss"


def gradient_norm(group: str) -> str:
    """The mean gradient norm of a trained group (e.g. "image_adapter") over an epoch's finite steps."""
    return f"grad/{group}"


def learning_rate(part: str) -> str:
    return f"lr/{part}"


def scale(part: str) -> str:
    """The cross-attention scale of a part's direction."""
    return f"scale/{part}"


def evaluation(metric: str, class_name: str | None = None, split: str = "val") -> str:
    """A split's metric: the mean over classes, or one class's value."""
    return f"{split}/{metric}" if class_name is None else f"{split}/{class_name}/{metric}"


def groups(part: str) -> tuple[str, ...]:
    return tuple(f"{part}_{kind}" for kind in GROUP_KINDS)


GROUPS = tuple(group for part in PARTS for group in groups(part))
LOSSES = tuple(loss(part) for part in PARTS)
GRADIENT_NORMS = tuple(gradient_norm(group) for group in GROUPS)
IMAGE_ADAPTER_SHARE = "grad/image_adapter_share"  # image adapter norm / total Stage-2 norm (starving adapters)
NONFINITE_STEPS = "train/nonfinite_steps"
EPOCH_SECONDS, IMAGES_PER_SECOND = "time/epoch_s", "time/images_per_s"
CUDA_PEAK_GB = "memory/cuda_peak_gb"

REPORTED_METRICS = frozenset({
    *POSITION, LOOP_PROGRESS, *LOSSES, NONFINITE_STEPS, *GRADIENT_NORMS, IMAGE_ADAPTER_SHARE,
    *(scale(part) for part in PARTS), *(learning_rate(part) for part in PARTS), EPOCH_SECONDS, IMAGES_PER_SECOND,
    CUDA_PEAK_GB, *(evaluation(metric) for metric in EVALUATION_METRICS),
})
