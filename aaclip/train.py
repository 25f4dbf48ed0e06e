"""Feedback training: Stage 1 (text) -> Stage 2 (image), repeated `feedback.loops` times (reference §6, §8).

One epoch loop (`run_epoch`) serves both stages; a stage is a loss function over a batch plus the parameter
groups it trains. `fit` walks the feedback plan, evaluates, checkpoints after every epoch and calls back with
a flat metrics dict (DESIGN §4 names) and the checkpoint directory.
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

from aaclip import losses
from aaclip.checkpoint import load_into, load_state, load_trained, read_base_adapters, save_checkpoint
from aaclip.config import TrainConfig
from aaclip.data.records import Record
from aaclip.data.splits import split_summary
from aaclip.notices import in_own_scope, recorded
from aaclip.outputs import write_text_atomically
from aaclip.schedule import IMAGE, TEXT, Stage, StagePlan, feedback_plan, loop_lr, lr_factor
from aaclip.session import Session, build_session

EpochCallback = Callable[[dict[str, float], Path], None]
SplitsCallback = Callable[[dict[str, list[Record]]], None]
STAGE_GROUPS = {TEXT: ("text_adapter", "text_cross_attn"), IMAGE: ("image_adapter", "image_cross_attn")}


@dataclass
class FitResult:
    metrics: dict[str, float]
    history: list[dict[str, float]]
    out_dir: Path


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


# ---------------------------------------------------------------------------------------------------------------
# Stage losses


def cross_attention_active(config: TrainConfig, loop: int) -> bool:
    return config.cross_attention.enabled and loop >= config.cross_attention.start_loop


def text_stage_loss(session: Session, batch: dict, loop: int) -> torch.Tensor:
    """Stage 1: anchors (with grad, per class in the batch) against frozen or adapted patch targets (§5.3)."""
    model, config = session.model, session.config
    targets = session.stage1_targets(batch, loop)  # [B, K, L, E]
    class_index = batch["class_index"].to(session.device)
    present, inverse = torch.unique(class_index, return_inverse=True)
    context = None
    if cross_attention_active(config, loop):
        # Per-class mean of the level-0 features: each class's prompts see images of that class (not the whole
        # mixed batch as in the reference, §13.11).
        level0 = targets[:, 0]
        context = torch.stack([level0[class_index == c].mean(dim=0) for c in present])
    with session.autocast():  # bf16 forward on a GPU; anchors and losses in fp32, weights stay fp32
        anchors = model.class_anchors(session.train_tokens[present], context)[inverse].float()  # [B, E, 2]
    masks = batch["mask"].to(session.device)
    levels = range(targets.shape[1]) if config.stage1.loss_levels == "all" else [targets.shape[1] - 1]
    size = config.model.image_size
    segmentation = sum(losses.segmentation_loss(
        losses.training_probabilities(losses.similarity_logits(targets[:, k], anchors), size), masks)
        for k in levels)
    return segmentation + config.stage1.ortho_weight * losses.orthogonality_loss(anchors)


def image_stage_loss(session: Session, batch: dict, loop: int) -> torch.Tensor:
    return image_loss(session, batch, cross_attention_active(session.config, loop))


def image_loss(session: Session, batch: dict, use_cross_attention: bool) -> torch.Tensor:
    """Stage 2: fixed anchors, adapted image tower (+ image cross-attention): CE + summed seg losses (§5.3)."""
    class_index = batch["class_index"].to(session.device)
    anchors = session.stage2_anchors[class_index]
    context = session.stage2_text_context[class_index] if use_cross_attention else None
    with session.autocast():
        features = session.model.encode_image(batch["image"].to(session.device), context)
    masks = batch["mask"].to(session.device)
    size = session.config.model.image_size
    segmentation = sum(losses.segmentation_loss(
        losses.training_probabilities(losses.similarity_logits(tokens.float(), anchors), size), masks)
        for tokens in features.seg_tokens)
    labels = batch["label"].to(session.device)
    return losses.classification_loss(features.det_token.float(), anchors, labels) + segmentation


STAGE_LOSSES = {TEXT: text_stage_loss, IMAGE: image_stage_loss}


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
    loader = session.loader(plan, position.epochs_done_in_stage)
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
        loss = STAGE_LOSSES[plan.stage](session, batch, plan.loop)
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
        metrics["memory/cuda_peak_gb"] = torch.cuda.max_memory_allocated(session.device) / 2**30
    return metrics


def epoch_metrics(plan: StagePlan, loss_sum: float, norm_sums: dict[str, float], steps: int, images: int,
                  nonfinite: int, elapsed: float, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    name = plan.stage.part
    mean_norms = {f"grad/{group}": total / max(1, steps - nonfinite) for group, total in norm_sums.items()}
    metrics = {f"train/{name}_loss": loss_sum / max(1, steps), **mean_norms,
               f"lr/{name}": optimizer.param_groups[0]["lr"], "train/nonfinite_steps": float(nonfinite),
               "time/epoch_s": elapsed, "time/images_per_s": images / max(elapsed, 1e-9)}
    if plan.stage == IMAGE:
        adapter, cross = mean_norms["grad/image_adapter"], mean_norms["grad/image_cross_attn"]
        total = math.hypot(adapter, cross)
        metrics["grad/image_adapter_share"] = adapter / total if total > 0 else 1.0
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
        resume: Path | None = None, on_splits: SplitsCallback | None = None) -> FitResult:
    """Run the whole feedback schedule; resumable after any epoch from the checkpoint passed to `on_epoch`.
    `on_splits` gets the records of each split once they are loaded and checked, before the first epoch."""
    out_dir = Path(out_dir)
    session = build_session(config)
    if on_splits is not None:
        on_splits(session.splits)
    plan = feedback_plan(config.feedback)
    position, optimizer_states = Position(), {}
    if resume is not None:
        position, optimizer_states = restore(session, Path(resume))
    else:
        apply_init(session)
    write_text_atomically(out_dir / "config.yaml", config.to_yaml())  # the first write: every check has passed
    optimizers: dict[Stage, LoopOptimizer] = {}
    while position.plan_index < len(plan):
        stage_plan = plan[position.plan_index]
        optimizer = stage_optimizer(session, stage_plan, optimizers, optimizer_states)
        session.prepare_stage(stage_plan)
        steps_per_epoch = session.steps_per_epoch(stage_plan.stage)
        metrics = run_epoch(session, stage_plan, optimizer, position,
                            position.epochs_done_in_stage * steps_per_epoch, steps_per_epoch * stage_plan.epochs)
        advance(position, stage_plan, steps_per_epoch)
        metrics |= position_metrics(session, stage_plan, position)
        if evaluation_due(config, stage_plan, position):
            metrics |= session.evaluate(stage_plan.loop, gallery=out_dir / "gallery.png")
        position.history.append(metrics)
        checkpoint = write_checkpoint(session, out_dir / "checkpoint", position, optimizers)
        if on_epoch is not None:
            on_epoch(metrics, checkpoint)
        if position.epochs_done_in_stage == stage_plan.epochs:
            position.plan_index, position.epochs_done_in_stage = position.plan_index + 1, 0
    # Which images each split held (sizes and fingerprints), beside the numbers measured on them.
    final = (position.history[-1] if position.history else {}) | split_summary(session.splits)
    write_text_atomically(out_dir / "metrics.json", json.dumps(final, indent=2))
    if recorded():
        write_text_atomically(out_dir / "warnings.json", json.dumps(recorded(), indent=2))
    return FitResult(final, position.history, out_dir)


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
    model = session.model
    return {"loop": float(plan.loop), "stage": float(plan.stage), "epoch": float(position.epoch),
            "stage_epoch": float(position.epochs_done_in_stage), "step": float(position.step),
            "scale/text": model.text_cross_attn.scale.item(), "scale/image": model.image_cross_attn.scale.item()}


def evaluation_due(config: TrainConfig, plan: StagePlan, position: Position) -> bool:
    if config.eval.every == "epoch":
        return True
    return plan.stage == IMAGE and position.epochs_done_in_stage == plan.epochs


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints and starting points


def write_checkpoint(session: Session, folder: Path, position: Position,
                     optimizers: dict[Stage, LoopOptimizer]) -> Path:
    state = {
        "position": {"plan_index": position.plan_index, "epochs_done_in_stage": position.epochs_done_in_stage,
                     "epoch": position.epoch, "step": position.step},
        "history": position.history,
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
                        list(state["history"]))
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
