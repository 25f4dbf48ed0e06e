"""The feedback schedule: which stage runs when, for how many epochs, at which learning rate (reference §8).

Pure functions of the configuration and a position, so a resumed run recomputes exactly what an uninterrupted
run would have used, without storing scheduler objects.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

from aaclip.config import FeedbackConfig, OptimConfig


class Stage(IntEnum):
    """The two stages of a feedback loop. An int, so metrics, JSON and checkpoints keep recording 1 and 2."""
    TEXT = 1
    IMAGE = 2

    @property
    def part(self) -> str:
        """The model part the stage trains, as metric names spell it: "text" or "image"."""
        return self.name.lower()

    @property
    def label(self) -> str:
        """How reports name the stage: "stage1-text", "stage2-image"."""
        return f"stage{self.value}-{self.part}"


TEXT, IMAGE = Stage.TEXT, Stage.IMAGE


@dataclass(frozen=True)
class StagePlan:
    loop: int  # 1-based
    stage: Stage
    epochs: int


def feedback_plan(feedback: FeedbackConfig) -> list[StagePlan]:
    """Loop n runs max(1, round(epochs * decay^(n-1))) epochs per stage; text_epochs 0 skips Stage 1."""
    plan = []
    for loop in range(1, feedback.loops + 1):
        decay = feedback.epoch_decay ** (loop - 1)
        if feedback.text_epochs > 0:
            plan.append(StagePlan(loop, TEXT, max(1, round(feedback.text_epochs * decay))))
        plan.append(StagePlan(loop, IMAGE, max(1, round(feedback.image_epochs * decay))))
    return plan


def describe_epochs(plan: list[StagePlan]) -> str:
    """Which global epochs each stage runs, e.g. "loop 1: text 1, image 2-3 · loop 2: text 4, image 5": the key
    to a per-epoch curve, whose steps are global epochs."""
    stages: dict[int, list[str]] = {}
    first = 1
    for item in plan:
        last = first + item.epochs - 1
        stages.setdefault(item.loop, []).append(f"{item.stage.part} {first}" + (f"-{last}" if last > first else ""))
        first = last + 1
    return " · ".join(f"loop {loop}: {', '.join(parts)}" for loop, parts in stages.items())


def loop_progress(plan: list[StagePlan], epoch: int) -> float:
    """Loops done after global epoch `epoch`, fractional: loop n ends at exactly n. As a chart's x axis (MLflow:
    X-axis > Metric), it shows a per-epoch curve's loop boundaries, which a global-epoch axis hides."""
    done = 0
    for loop in sorted({item.loop for item in plan}):
        epochs = sum(item.epochs for item in plan if item.loop == loop)
        if epoch <= done + epochs:
            return loop - 1 + (epoch - done) / epochs
        done += epochs
    return float(plan[-1].loop)


def loop_lr(base_lr: float, loop: int, feedback: FeedbackConfig) -> float:
    return base_lr * feedback.lr_decay ** (loop - 1)


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, optim: OptimConfig, schedule: str) -> float:
    """Multiplier of the stage's learning rate at a step within the stage (0-based).

    multistep: gamma at each milestone fraction of the stage (feedback V1: 50% and 80%); cosine: down to 10%
    (the extension's unused helper, §8.3); both after an optional linear warmup (V2, §8.4).
    """
    warmup_steps = int(optim.warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "multistep":
        passed = sum(step >= int(fraction * total_steps) for fraction in optim.milestones)
        return optim.gamma ** passed
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.1, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return 1.0
