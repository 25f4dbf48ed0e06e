"""The two stages' losses (reference §5.3, §7), each a function of (model, batch, stage inputs, settings).

A stage's inputs are what it needs besides the batch and is prepared outside the step: Stage 1 the training
classes' prompt tokens and where its patch targets come from, Stage 2 the fixed anchors and the text context,
computed once per feedback loop. The settings are fixed for a run (device, autocast, image size, loss weights).
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import torch

from aaclip import losses
from aaclip.config import TrainConfig
from aaclip.features import FeatureCache, cached_targets
from aaclip.model import AdaptedCLIP
from aaclip.schedule import IMAGE, TEXT


@dataclass(frozen=True)
class StageSettings:
    """What a stage loss needs besides the model, the batch and the stage inputs: fixed for a run."""
    device: torch.device
    autocast: Callable[[], AbstractContextManager]  # bf16 forwards on a GPU; anchors and losses stay fp32
    image_size: int
    loss_levels: str  # Stage 1: "all" levels or the "last"
    ortho_weight: float  # Stage 1

    @classmethod
    def of(cls, config: TrainConfig, device: torch.device,
           autocast: Callable[[], AbstractContextManager]) -> StageSettings:
        return cls(device, autocast, config.model.image_size, config.stage1.loss_levels, config.stage1.ortho_weight)


def cross_attention_active(config: TrainConfig, loop: int) -> bool:
    return config.cross_attention.enabled and loop >= config.cross_attention.start_loop


def segmentation_over_levels(levels: Iterable[torch.Tensor], anchors: torch.Tensor, masks: torch.Tensor,
                             size: int) -> torch.Tensor:
    """Sum of the segmentation losses of per-level patch features [B, L, E] against anchors [B, E, 2] (§5.2)."""
    return sum(losses.segmentation_loss(
        losses.training_probabilities(losses.similarity_logits(features, anchors), size), masks)
        for features in levels)


# ---------------------------------------------------------------------------------------------------------------
# Stage 1: text


class Stage1Targets(Protocol):
    def __call__(self, model: AdaptedCLIP, batch: dict, settings: StageSettings) -> torch.Tensor:
        """The batch's Stage-1 targets [B, K, L, E]."""


@dataclass(frozen=True)
class FrozenTargets:
    """Loop 1: the frozen surgery tower's targets, read from the feature cache where present (aaclip.features)."""
    draw_key: Callable[[int], str]  # the dataset's key of an item's exact (augmented) image
    cache: FeatureCache | None

    def __call__(self, model: AdaptedCLIP, batch: dict, settings: StageSettings) -> torch.Tensor:
        images = batch["image"].to(settings.device)
        draw_keys = [self.draw_key(int(index)) for index in batch["index"]]
        with settings.autocast():
            targets = cached_targets(self.cache, draw_keys, lambda rows: model.frozen_targets(images[rows]).float())
        return targets.to(settings.device)


def adapted_targets(model: AdaptedCLIP, batch: dict, settings: StageSettings) -> torch.Tensor:
    """Loops >= 2, the feedback: the image adapters trained in the previous loop supply the targets (§7.4)."""
    model.eval()
    targets = model.adapted_targets(batch["image"].to(settings.device))
    model.train()
    return targets


@dataclass(frozen=True)
class TextStageInputs:
    tokens: torch.Tensor  # [C, P, T] prompt tokens of the training classes, on the device
    targets: Stage1Targets
    cross_attention: bool  # text cross-attention on in this loop


def text_stage_loss(model: AdaptedCLIP, batch: dict, inputs: TextStageInputs,
                    settings: StageSettings) -> torch.Tensor:
    """Stage 1: anchors (with grad, per class in the batch) against frozen or adapted patch targets (§5.3)."""
    targets = inputs.targets(model, batch, settings)  # [B, K, L, E]
    class_index = batch["class_index"].to(settings.device)
    present, inverse = torch.unique(class_index, return_inverse=True)
    context = None
    if inputs.cross_attention:
        # Per-class mean of the level-0 features: each class's prompts see images of that class (not the whole
        # mixed batch as in the reference, §13.11).
        level0 = targets[:, 0]
        context = torch.stack([level0[class_index == c].mean(dim=0) for c in present])
    with settings.autocast():  # bf16 forward on a GPU; anchors and losses in fp32, weights stay fp32
        anchors = model.class_anchors(inputs.tokens[present], context)[inverse].float()  # [B, E, 2]
    masks = batch["mask"].to(settings.device)
    levels = range(targets.shape[1]) if settings.loss_levels == "all" else [targets.shape[1] - 1]
    segmentation = segmentation_over_levels((targets[:, k] for k in levels), anchors, masks, settings.image_size)
    return segmentation + settings.ortho_weight * losses.orthogonality_loss(anchors)


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: image


@dataclass(frozen=True)
class ImageStageInputs:
    anchors: torch.Tensor  # [C, E, 2] fixed for the stage: the text tower without cross-attention (§7.6)
    text_context: torch.Tensor | None  # [C, P*T, text width]; None: no image cross-attention


@torch.no_grad()
def image_stage_inputs(model: AdaptedCLIP, tokens: torch.Tensor, with_text_context: bool) -> ImageStageInputs:
    """Anchors and per-class text contexts of the training classes, once per loop (in eval mode)."""
    was_training = model.training
    model.eval()
    inputs = ImageStageInputs(model.class_anchors(tokens), model.text_context(tokens) if with_text_context else None)
    model.train(was_training)
    return inputs


def image_stage_loss(model: AdaptedCLIP, batch: dict, inputs: ImageStageInputs,
                     settings: StageSettings) -> torch.Tensor:
    """Stage 2: fixed anchors, adapted image tower (+ image cross-attention): CE + summed seg losses (§5.3)."""
    class_index = batch["class_index"].to(settings.device)
    anchors = inputs.anchors[class_index]
    context = None if inputs.text_context is None else inputs.text_context[class_index]
    with settings.autocast():
        features = model.encode_image(batch["image"].to(settings.device), context)
    masks = batch["mask"].to(settings.device)
    segmentation = segmentation_over_levels((tokens.float() for tokens in features.seg_tokens), anchors, masks,
                                            settings.image_size)
    labels = batch["label"].to(settings.device)
    return losses.classification_loss(features.det_token.float(), anchors, labels) + segmentation


StageInputs = TextStageInputs | ImageStageInputs
STAGE_LOSSES = {TEXT: text_stage_loss, IMAGE: image_stage_loss}
