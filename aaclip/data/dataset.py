"""The torch Dataset over records: preprocessed, optionally augmented image + mask + label."""
from __future__ import annotations

import hashlib
import json

import torch
from torch.utils.data import Dataset

from aaclip.data.records import Record
from aaclip.data.transforms import (
    AUGMENTS, Augment, apply_colour, apply_geometry, draw_augmentation, image_to_tensor, load_mask, open_rgb,
)


class AnomalyDataset(Dataset):
    """Items are dicts: image float32 [3,S,S], mask float32 [1,S,S] in {0,1}, label int64, class_name, image_id,
    index. Augmentation draws depend on (data_seed, epoch, image_id) only; call set_epoch before each epoch
    (before the DataLoader's iterator is made: worker processes copy the dataset then)."""

    def __init__(self, records: list[Record], image_size: int, augment: Augment, data_seed: int = 0):
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
        self.records = list(records)
        self.image_size = image_size
        self.augment = augment
        self.data_seed = data_seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw_key(self, index: int) -> str:
        """Names exactly what __getitem__(index) returns, for caching features of it. Without augmentation the
        item depends on neither epoch nor data seed, so the key leaves both out and is shared across them."""
        record = self.records[index]
        varying = [self.data_seed, self.epoch] if self.augment != "none" else []
        payload = json.dumps([record.image_id, self.image_size, self.augment, *varying])
        return hashlib.sha256(payload.encode()).hexdigest()

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        draw = draw_augmentation(self.augment, self.data_seed, self.epoch, record.image_id)
        image = image_to_tensor(apply_colour(open_rgb(record.image_path), draw), self.image_size)
        if record.label == 1 and record.mask_path is not None:
            mask = load_mask(record.mask_path, self.image_size)
        else:
            mask = torch.zeros(1, self.image_size, self.image_size, dtype=torch.float32)
        image, mask = apply_geometry(image, mask, draw)
        return {
            "image": image.contiguous(), "mask": mask.contiguous(),
            "label": torch.tensor(record.label, dtype=torch.int64),
            "class_name": record.class_name, "image_id": record.image_id, "index": index,
        }
