"""A training session: the model on its device, the datasets and loaders, the Stage-1 targets and the Stage-2
anchors and text contexts. `aaclip.train` drives it; `aaclip.diagnostics` and the CLI reuse it."""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from aaclip.architecture import check_config_fits
from aaclip.config import TrainConfig
from aaclip.data.checks import load_checked_records
from aaclip.data.dataset import AnomalyDataset
from aaclip.data.records import Record, class_names
from aaclip.evaluate import evaluate_records
from aaclip.factory import build_model, resolve_device
from aaclip.features import FeatureCache, cache_key, cached_targets
from aaclip.home import aaclip_home
from aaclip.model import AdaptedCLIP
from aaclip.prompt_tokens import PromptTokenizer
from aaclip.schedule import IMAGE, TEXT, Stage, StagePlan
from aaclip.seeds import loader_seed

log = logging.getLogger(__name__)
class Session:
    def __init__(self, config: TrainConfig, model: AdaptedCLIP, tokenize: PromptTokenizer, device: torch.device,
                 splits: dict[str, list[Record]]):
        self.config, self.model, self.tokenize, self.device = config, model, tokenize, device
        self.splits = splits  # train, val and (when configured) test; val and test checked disjoint
        self.train_records, self.val_records = splits["train"], splits["val"]
        self.train_classes = class_names(self.train_records)
        self.class_to_index = {name: index for index, name in enumerate(self.train_classes)}
        prompt_names = config.data.train.prompt_names
        self.train_tokens = tokenize(self.train_classes, prompt_names).to(device)
        size, seed = config.model.image_size, config.data.seed
        augment = config.data.augment
        self.datasets = {TEXT: AnomalyDataset(self.train_records, size, "stage1" if augment else "none", seed),
                         IMAGE: AnomalyDataset(self.train_records, size, "stage2" if augment else "none", seed)}
        self.groups = model.trainable_groups()
        self.cache = self._feature_cache()
        self.stage2_anchors: torch.Tensor | None = None
        self.stage2_text_context: torch.Tensor | None = None
        self._prepared: tuple[int, int] | None = None

    def _feature_cache(self) -> FeatureCache | None:
        if not self.config.cache.features:
            return None
        if self.config.stage1.surgery_axis == "batch":
            # Batch-axis surgery features depend on which images share a batch: nothing per image to cache.
            log.info("feature cache off: stage1.surgery_axis=batch makes features batch-dependent")
            return None
        root = Path(self.config.cache.dir) if self.config.cache.dir else aaclip_home() / "cache" / "features"
        precision = "bf16" if self.uses_bf16 else "fp32"
        return FeatureCache(root, cache_key(self.config, self.model.clip.visual, self.train_records, precision))

    @property
    def uses_bf16(self) -> bool:
        return self.device.type == "cuda" and self.config.model.precision == "bf16"

    def autocast(self):
        if self.uses_bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()  # bf16 on CPU is ~300x slower here (DESIGN §8): fp32

    # -------------------------------------------------------------------------------------------------------------
    # Data

    def batch_size(self, stage: Stage) -> int:
        return self.config.data.text_batch if stage == TEXT else self.config.data.image_batch

    def steps_per_epoch(self, stage: Stage) -> int:
        return math.ceil(len(self.datasets[stage]) / self.batch_size(stage))

    def loader(self, plan: StagePlan, epoch_in_stage: int) -> DataLoader:
        """Shuffled by the model seed and position only; augmentation draws by the data seed and position."""
        dataset = self.datasets[plan.stage]
        dataset.set_epoch(1000 * (plan.loop - 1) + epoch_in_stage)
        generator = torch.Generator().manual_seed(loader_seed(self.config.seed, plan.loop, plan.stage,
                                                              epoch_in_stage))
        return DataLoader(dataset, batch_size=self.batch_size(plan.stage), shuffle=True, generator=generator,
                          num_workers=self.config.data.workers, collate_fn=self.collate)

    def collate(self, items: list[dict]) -> dict:
        batch = torch.utils.data.default_collate(items)
        batch["class_index"] = torch.tensor([self.class_to_index[item["class_name"]] for item in items])
        return batch

    # -------------------------------------------------------------------------------------------------------------
    # Stage inputs

    def stage1_targets(self, batch: dict, loop: int) -> torch.Tensor:
        images = batch["image"].to(self.device)
        if loop > 1:  # feedback: the image adapters trained in the previous loop supply the targets (§7.4)
            self.model.eval()
            targets = self.model.adapted_targets(images)
            self.model.train()
            return targets
        dataset = self.datasets[TEXT]
        draw_keys = [dataset.draw_key(int(index)) for index in batch["index"]]
        with self.autocast():
            targets = cached_targets(self.cache, draw_keys,
                                     lambda rows: self.model.frozen_targets(images[rows]).float())
        return targets.to(self.device)

    @torch.no_grad()
    def prepare_stage(self, plan: StagePlan) -> None:
        """Stage 2 needs fixed anchors (no cross-attention, §7.6) and per-class text contexts, once per loop."""
        if plan.stage != IMAGE or self._prepared == (plan.loop, plan.stage):
            return
        self.model.eval()
        self.stage2_anchors = self.model.class_anchors(self.train_tokens)
        self.stage2_text_context = self.model.text_context(self.train_tokens)
        self._prepared = (plan.loop, plan.stage)

    def evaluate(self, loop: int, gallery: Path | None = None, split: str = "val") -> dict[str, float]:
        spec = self.config.data.val if split == "val" else self.config.data.test
        return evaluate_records(self.model, self.tokenize, self.splits[split], self.config, self.device,
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
    return Session(config, model, tokenize, device, splits)
