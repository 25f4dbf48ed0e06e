"""A training session: the model on its device with its tokenizer, the training data, the feature cache and each
stage's inputs. `aaclip.train` drives it; `aaclip.diagnostics`, the profile and the CLI reuse it."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from aaclip.architecture import check_config_fits
from aaclip.config import TrainConfig
from aaclip.data.checks import load_checked_records
from aaclip.data.records import class_names
from aaclip.evaluate import evaluate_records
from aaclip.factory import build_model, resolve_device
from aaclip.features import feature_cache
from aaclip.model import AdaptedCLIP
from aaclip.prompt_tokens import PromptTokenizer
from aaclip.schedule import TEXT, StagePlan
from aaclip.stages import (FrozenTargets, ImageStageInputs, StageInputs, StageSettings, TextStageInputs,
                           adapted_targets, cross_attention_active, image_stage_inputs)
from aaclip.training_data import TrainingData


class Session:
    def __init__(self, config: TrainConfig, model: AdaptedCLIP, tokenize: PromptTokenizer, device: torch.device,
                 data: TrainingData):
        self.config, self.model, self.tokenize, self.device, self.data = config, model, tokenize, device, data
        self.train_tokens = tokenize(data.classes, config.data.train.prompt_names).to(device)
        self.groups = model.trainable_groups()
        self.cache = feature_cache(config, model.clip.visual, data.train_records, self.precision)
        self.stage_settings = StageSettings.of(config, device, self.autocast)
        self._image_inputs: tuple[int, ImageStageInputs] | None = None  # (loop, inputs) of the last Stage 2

    @property
    def precision(self) -> str:
        return "bf16" if self.device.type == "cuda" and self.config.model.precision == "bf16" else "fp32"

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()  # bf16 on CPU is ~300x slower here (DESIGN §8): fp32

    def stage_inputs(self, plan: StagePlan) -> StageInputs:
        """Stage 1's tokens and target source; Stage 2's anchors and text contexts, computed once per loop."""
        active = cross_attention_active(self.config, plan.loop)
        if plan.stage == TEXT:
            targets = adapted_targets if plan.loop > 1 else FrozenTargets(self.data.datasets[TEXT].draw_key,
                                                                          self.cache)
            return TextStageInputs(self.train_tokens, targets, active)
        if self._image_inputs is None or self._image_inputs[0] != plan.loop:
            self._image_inputs = (plan.loop, image_stage_inputs(self.model, self.train_tokens, active))
        return self._image_inputs[1]

    def evaluate(self, loop: int, gallery: Path | None = None, split: str = "val") -> dict[str, float]:
        spec = self.config.data.val if split == "val" else self.config.data.test
        return evaluate_records(self.model, self.tokenize, self.data.splits[split], self.config, self.device,
                                prefix=split, prompt_names=spec.prompt_names, gallery=gallery,
                                autocast=self.autocast)


def build_session(config: TrainConfig) -> Session:
    """Everything fails here, before training starts and before anything is written: data roots, masks, val and
    test disjoint, every image's decode, class prompts, device, backbone fit."""
    check_config_fits(config)
    splits = load_checked_records(config)
    device = resolve_device(config.model.device)
    model = build_model(config, device)
    tokenize = PromptTokenizer(config.model.name)
    tokenize(class_names(splits["val"]), config.data.val.prompt_names)  # every val class has prompts
    data = TrainingData(splits, config.data, config.model.image_size, shuffle_seed=config.seed)
    return Session(config, model, tokenize, device, data)
