"""A run's training data: the splits, the training classes and their index, one dataset per stage (each with its
own augmentation) and the seeded loaders. The session holds it; the profile and benchmarks read batches from it.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

from aaclip.config import DataConfig
from aaclip.data.dataset import AnomalyDataset
from aaclip.data.records import Record, class_names
from aaclip.schedule import IMAGE, TEXT, Stage, StagePlan
from aaclip.seeds import loader_seed


class TrainingData:
    def __init__(self, splits: dict[str, list[Record]], data: DataConfig, image_size: int, shuffle_seed: int):
        """`shuffle_seed` orders the batches (the model seed); `data.seed` draws the augmentations."""
        self.splits = splits  # train, val and (when configured) test; val and test checked disjoint
        self.train_records, self.val_records = splits["train"], splits["val"]
        self.classes = class_names(self.train_records)
        self.class_to_index = {name: index for index, name in enumerate(self.classes)}
        self.config, self.shuffle_seed = data, shuffle_seed
        augment = data.augment
        self.datasets = {
            TEXT: AnomalyDataset(self.train_records, image_size, "stage1" if augment else "none", data.seed),
            IMAGE: AnomalyDataset(self.train_records, image_size, "stage2" if augment else "none", data.seed)}

    def batch_size(self, stage: Stage) -> int:
        return self.config.text_batch if stage == TEXT else self.config.image_batch

    def steps_per_epoch(self, stage: Stage) -> int:
        return math.ceil(len(self.datasets[stage]) / self.batch_size(stage))

    def loader(self, plan: StagePlan, epoch_in_stage: int) -> DataLoader:
        """Shuffled by the model seed and position only; augmentation draws by the data seed and position."""
        dataset = self.datasets[plan.stage]
        dataset.set_epoch(1000 * (plan.loop - 1) + epoch_in_stage)
        generator = torch.Generator().manual_seed(loader_seed(self.shuffle_seed, plan.loop, plan.stage,
                                                              epoch_in_stage))
        return DataLoader(dataset, batch_size=self.batch_size(plan.stage), shuffle=True, generator=generator,
                          num_workers=self.config.workers, collate_fn=self.collate)

    def collate(self, items: list[dict]) -> dict:
        batch = torch.utils.data.default_collate(items)
        batch["class_index"] = torch.tensor([self.class_to_index[item["class_name"]] for item in items])
        return batch
