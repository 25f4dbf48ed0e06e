"""Feedback training: Stage 1 (text) -> Stage 2 (image), repeated `feedback.loops` times (reference §6, §8).

One epoch loop (`run_epoch`) serves both stages; a stage is a loss function (aaclip.stages) plus the parameter
groups it trains. `fit` walks the feedback plan, evaluates, checkpoints after every epoch and calls back with
a flat metrics dict (DESIGN §4 names) and the checkpoint directory. Beside the epochs, it keeps one record per
loop: loop 0 is the starting point, evaluated once before any training, and loop n the state at its end, so a
curve over loops shows what each round of feedback did.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from aaclip import metric_names as names
from aaclip.checkpoint import load_into, load_state, load_trained, read_base_adapters, save_checkpoint
from aaclip.config import TrainConfig
from aaclip.data.records import Record
from aaclip.data.splits import split_summary
from aaclip.notices import in_own_scope, recorded
from aaclip.outputs import write_text_atomically
from aaclip.schedule import IMAGE, TEXT, Stage, StagePlan, feedback_plan, loop_lr, loop_progress, lr_factor
from aaclip.session import Session, build_session
from aaclip.stages import STAGE_LOSSES

EpochCallback = Callable[[dict[str, float], Path], None]
LoopCallback = Callable[[dict[str, float]], None]
SplitsCallback = Callable[[dict[str, list[Record]]], None]
STAGE_GROUPS = {stage: names.groups(stage.part) for stage in (TEXT, IMAGE)}


@dataclass
class FitResult:
    metrics: dict[str, float]
    history: list[dict[str, float]]
    out_dir: Path
    loops: list[dict[str, float]] = field(default_factory=list)  # loop records (see `loop_record`)


@dataclass
class LoopOptimizer:
    """A stage's optimizer and the feedback loop it was made for: a new loop may need a fresh one."""
    loop: int
    optimizer: torch.optim.Optimizer


@dataclass
class Position:
    """Where training stands: the last completed epoch. A fresh run starts at plan item 0, 0 epochs done."""
    plan_index: int = 0
    epochs_done_in_stage: int = 0
    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    loops: list[dict[str, float]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# One epoch, either stage


def group_norms(groups: dict[str, list[nn.Parameter]]) -> dict[str, float]:
    """Gradient norm per group, accumulated in float64: fp32 sums of squares drift by ~1e-5 relative, enough to
    move a logged ratio (grad/image_adapter_share, the diagnostic's) in its fifth digit."""
    norms = {}
    for name, parameters in groups.items():
        grads = [p.grad.detach().double().norm() for p in parameters if p.grad is not None]
        norms[name] = torch.stack(grads).norm().item() if grads else 0.0
    return norms


def run_epoch(session: Session, plan: StagePlan, optimizer: torch.optim.Optimizer, position: Position,
              stage_step: int, total_steps: int) -> dict[str, float]:
    """Train one epoch of `plan.stage`; returns the epoch's metrics (loss, mean gradient norms, lr, speed)."""
    config, model = session.config, session.model
    loader = session.data.loader(plan, position.epochs_done_in_stage)
    inputs, stage_loss = session.stage_inputs(plan), STAGE_LOSSES[plan.stage]
    groups = {name: session.groups[name] for name in STAGE_GROUPS[plan.stage]}
    schedule = config.optim.text_schedule if plan.stage == TEXT else config.optim.schedule
    loss_sum, norm_sums, steps, images, nonfinite = 0.0, dict.fromkeys(groups, 0.0), 0, 0, 0
    started = time.perf_counter()
    if session.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(session.device)
    model.train()
    for batch in loader:
        factor = lr_factor(stage_step, total_steps, len(loader), config.optim, schedule)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        loss = stage_loss(model, batch, inputs, session.stage_settings)
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            nonfinite += 1  # never step on a NaN: report it, and let the caller (or a study's guard) decide
            loss_sum, stage_step, steps = math.nan, stage_step + 1, steps + 1
            continue
        loss.backward()
        for name, value in group_norms(groups).items():
            norm_sums[name] += value
        if config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for ps in groups.values() for p in ps], config.optim.grad_clip)
        optimizer.step()
        loss_sum += loss.item()
        steps, stage_step, images = steps + 1, stage_step + 1, images + len(batch["label"])
    elapsed = time.perf_counter() - started
    metrics = epoch_metrics(plan, loss_sum, norm_sums, steps, images, nonfinite, elapsed, optimizer)
    if session.device.type == "cuda":  # sizes resources.gpu of a study (aaclip profile says more)
        metrics[names.CUDA_PEAK_GB] = torch.cuda.max_memory_allocated(session.device) / 2**30
    return metrics


def epoch_metrics(plan: StagePlan, loss_sum: float, norm_sums: dict[str, float], steps: int, images: int,
                  nonfinite: int, elapsed: float, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    name = plan.stage.part
    mean_norms = {names.gradient_norm(group): total / max(1, steps - nonfinite) for group, total in norm_sums.items()}
    metrics = {names.loss(name): loss_sum / max(1, steps), **mean_norms,
               names.learning_rate(name): optimizer.param_groups[0]["lr"], names.NONFINITE_STEPS: float(nonfinite),
               names.EPOCH_SECONDS: elapsed, names.IMAGES_PER_SECOND: images / max(elapsed, 1e-9)}
    if plan.stage == IMAGE:
        adapter, cross = (mean_norms[names.gradient_norm(group)] for group in names.groups(name))
        total = math.hypot(adapter, cross)
        metrics[names.IMAGE_ADAPTER_SHARE] = adapter / total if total > 0 else 1.0
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# The feedback schedule


def make_optimizer(session: Session, plan: StagePlan) -> torch.optim.Optimizer:
    config = session.config
    stage_lr = config.optim.text_lr if plan.stage == TEXT else config.optim.image_lr
    adapter_group, cross_group = STAGE_GROUPS[plan.stage]
    cross_lr = config.optim.cross_attn_lr or stage_lr
    groups = [{"params": session.groups[adapter_group], "base_lr": loop_lr(stage_lr, plan.loop, config.feedback)},
              {"params": session.groups[cross_group], "base_lr": loop_lr(cross_lr, plan.loop, config.feedback)}]
    groups = [group for group in groups if group["params"]]
    for group in groups:
        group["lr"] = group["base_lr"]
    kind = torch.optim.AdamW if config.optim.kind == "adamw" else torch.optim.Adam
    return kind(groups, betas=tuple(config.optim.betas), weight_decay=config.optim.weight_decay)


@in_own_scope  # warnings.json and a trial's aaclip.warnings tag hold this run's notices only
def fit(config: TrainConfig, *, out_dir: Path, on_epoch: EpochCallback | None = None,
        on_loop: LoopCallback | None = None, resume: Path | None = None,
        on_splits: SplitsCallback | None = None) -> FitResult:
    """Run the whole feedback schedule; resumable after any epoch from the checkpoint passed to `on_epoch`.

    `on_splits` gets the records of each split once they are loaded and checked, before the first epoch.
    `on_loop` gets each loop record: loop 0 (eval.loop0, on a fresh run only: a resumed run had it), then every
    loop's end, just before that epoch's `on_epoch` (a run stopped in between redoes the epoch, and the record).
    """
    out_dir = Path(out_dir)
    session = build_session(config)
    if on_splits is not None:
        on_splits(session.data.splits)
    plan = feedback_plan(config.feedback)
    position, optimizer_states = Position(), {}
    if resume is not None:
        position, optimizer_states = restore(session, Path(resume))
    else:
        apply_init(session)
    write_text_atomically(out_dir / "config.yaml", config.to_yaml())  # the first write: every check has passed
    if resume is None and config.eval.loop0:
        add_loop_record(position, starting_point(session, out_dir), on_loop)
    optimizers: dict[Stage, LoopOptimizer] = {}
    while position.plan_index < len(plan):
        stage_plan = plan[position.plan_index]
        optimizer = stage_optimizer(session, stage_plan, optimizers, optimizer_states)
        steps_per_epoch = session.data.steps_per_epoch(stage_plan.stage)
        metrics = run_epoch(session, stage_plan, optimizer, position,
                            position.epochs_done_in_stage * steps_per_epoch, steps_per_epoch * stage_plan.epochs)
        advance(position, stage_plan, steps_per_epoch)
        metrics |= position_metrics(session, stage_plan, position)
        if evaluation_due(config, stage_plan, position):
            metrics |= session.evaluate(stage_plan.loop, gallery=out_dir / "gallery.png")
        position.history.append(metrics)
        if ends_loop(stage_plan, position):
            add_loop_record(position, loop_record(metrics), on_loop)
        checkpoint = write_checkpoint(session, out_dir / "checkpoint", position, optimizers)
        if on_epoch is not None:
            on_epoch(metrics, checkpoint)
        if position.epochs_done_in_stage == stage_plan.epochs:
            position.plan_index, position.epochs_done_in_stage = position.plan_index + 1, 0
    # Which images each split held (sizes and fingerprints), beside the numbers measured on them.
    final = (position.history[-1] if position.history else {}) | split_summary(session.data.splits)
    write_text_atomically(out_dir / "metrics.json", json.dumps(final, indent=2))
    write_text_atomically(out_dir / "loops.json", json.dumps(position.loops, indent=2))
    if recorded():
        write_text_atomically(out_dir / "warnings.json", json.dumps(recorded(), indent=2))
    return FitResult(final, position.history, out_dir, position.loops)


def stage_optimizer(session: Session, plan: StagePlan, optimizers: dict[Stage, LoopOptimizer],
                    saved: dict) -> torch.optim.Optimizer:
    """The stage's optimizer for this loop: fresh at each loop when feedback.reset_optimizer (the reference),
    else carrying its moments over. A state saved in a checkpoint is restored the same way."""
    current = optimizers.get(plan.stage)
    if current is not None and current.loop == plan.loop:
        return current.optimizer
    optimizer = make_optimizer(session, plan)
    reset = session.config.feedback.reset_optimizer
    saved_loop, carried = saved.pop(plan.stage, (None, None))
    if reset and saved_loop != plan.loop:  # a state saved in an earlier loop is one a fresh run would reset
        carried = None
    if carried is None and current is not None and not reset:
        carried = current.optimizer.state_dict()
    if carried is not None:  # moments and step counts carry over; learning rates are this loop's
        optimizer.load_state_dict({**carried, "param_groups": optimizer.state_dict()["param_groups"]})
    optimizers[plan.stage] = LoopOptimizer(plan.loop, optimizer)
    return optimizer


def advance(position: Position, plan: StagePlan, steps_per_epoch: int) -> None:
    position.epochs_done_in_stage += 1
    position.epoch += 1
    position.step += steps_per_epoch


def position_metrics(session: Session, plan: StagePlan, position: Position) -> dict[str, float]:
    return {"loop": float(plan.loop), "stage": float(plan.stage), "epoch": float(position.epoch),
            "stage_epoch": float(position.epochs_done_in_stage), "step": float(position.step),
            names.LOOP_PROGRESS: loop_progress(feedback_plan(session.config.feedback), position.epoch),
            **scale_metrics(session)}


def scale_metrics(session: Session) -> dict[str, float]:
    """The cross-attention scales; none without cross-attention (a baseline has no scale to show)."""
    if not session.config.cross_attention.enabled:
        return {}
    model = session.model
    return {names.scale("text"): model.text_cross_attn.scale.item(),
            names.scale("image"): model.image_cross_attn.scale.item()}


def ends_loop(plan: StagePlan, position: Position) -> bool:
    """The epoch just done is the last of its loop (Stage 2 closes every loop)."""
    return plan.stage == IMAGE and position.epochs_done_in_stage == plan.epochs


def evaluation_due(config: TrainConfig, plan: StagePlan, position: Position) -> bool:
    return config.eval.every == "epoch" or ends_loop(plan, position)


# ---------------------------------------------------------------------------------------------------------------
# Loop records: the starting point and every loop's end


def starting_point(session: Session, out_dir: Path) -> dict[str, float]:
    """Loop 0: the model before any training (base adapters, if init.* names them), evaluated with the RNG
    states forked, so that the training that follows is the same as without this evaluation."""
    devices = [session.device] if session.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        evaluation = session.evaluate(0, gallery=out_dir / "gallery.png")
    return {"loop": 0.0, "epoch": 0.0, **scale_metrics(session), **evaluation}


def loop_record(metrics: dict[str, float]) -> dict[str, float]:
    """A loop's end, from its last epoch's metrics: where it ended (loop, epoch), the scales, the evaluation."""
    return {key: value for key, value in metrics.items()
            if key in ("loop", "epoch") or key.startswith(("scale/", "val/"))}


def add_loop_record(position: Position, record: dict[str, float], on_loop: LoopCallback | None) -> None:
    position.loops.append(record)
    if on_loop is not None:
        on_loop(record)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and starting points


def write_checkpoint(session: Session, folder: Path, position: Position,
                     optimizers: dict[Stage, LoopOptimizer]) -> Path:
    state = {
        "position": {"plan_index": position.plan_index, "epochs_done_in_stage": position.epochs_done_in_stage,
                     "epoch": position.epoch, "step": position.step},
        "history": position.history,
        "loops": position.loops,
        # int keys: a Stage member would not load back under torch.load(weights_only=True)
        "optimizers": {int(stage): entry.optimizer.state_dict() for stage, entry in optimizers.items()},
        "optimizer_loops": {int(stage): entry.loop for stage, entry in optimizers.items()},
        "rng": torch.get_rng_state(),
    }
    return save_checkpoint(folder, session.model.trainable_state(), state, session.config)


def restore(session: Session, folder: Path) -> tuple[Position, dict]:
    state = load_state(folder, session.config)
    load_trained(session.model, folder)
    torch.set_rng_state(state["rng"])
    saved = state["position"]
    position = Position(saved["plan_index"], saved["epochs_done_in_stage"], saved["epoch"], saved["step"],
                        list(state["history"]), list(state["loops"]))
    plan = feedback_plan(session.config.feedback)
    if position.epochs_done_in_stage == plan[position.plan_index].epochs:  # the checkpoint closed a stage
        position.plan_index, position.epochs_done_in_stage = position.plan_index + 1, 0
    optimizers = {Stage(stage): (state["optimizer_loops"][stage], optimizer)
                  for stage, optimizer in state["optimizers"].items()}
    return position, optimizers


def apply_init(session: Session) -> None:
    """Start from base adapters (init.*): a finished base run seeds a feedback study (reference §8.1)."""
    for part in ("text_adapter", "image_adapter"):
        path = getattr(session.config.init, part)
        if path:
            load_into(getattr(session.model, part), read_base_adapters(path, part), f"init.{part}: {path}")
