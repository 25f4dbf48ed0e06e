"""On-disk cache of frozen Stage-1 features (DESIGN §4).

Loop-1 Stage-1 targets depend only on the frozen backbone, the surgery settings and the exact (augmented) image.
Every augmentation draw is a pure function of (data seed, epoch, image id), so trials that share a data seed
read the same entries: the first trial on a machine pays for the frozen forward, the others read fp16 tensors.
Entries are written atomically (temp file + rename), so concurrent trials on one node can share a folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from aaclip.config import TrainConfig


def backbone_key(config: TrainConfig) -> str:
    """Everything besides the image that the frozen targets depend on."""
    weights = config.model.pretrained
    if weights is not None and Path(weights).expanduser().is_file():
        stat = Path(weights).expanduser().stat()
        weights = f"{Path(weights).name}:{stat.st_size}:{int(stat.st_mtime)}"
    identity = {
        "model": config.model.name, "weights": weights or "random-init", "size": config.model.image_size,
        "quick_gelu": config.model.quick_gelu, "levels": config.adapters.levels,
        "surgery_from_block": config.stage1.surgery_from_block, "surgery_axis": config.stage1.surgery_axis,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class FeatureCache:
    def __init__(self, root: Path, key: str):
        self.folder = Path(root) / key
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def _path(self, draw_key: str) -> Path:
        digest = hashlib.sha256(draw_key.encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.pt"

    def get(self, draw_key: str) -> torch.Tensor | None:
        path = self._path(draw_key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            value = torch.load(path, weights_only=True)
        except Exception:  # a truncated entry from a killed writer cannot exist (atomic rename); be safe anyway
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, draw_key: str, value: torch.Tensor) -> None:
        path = self._path(draw_key)
        path.parent.mkdir(exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(handle)
        torch.save(value.to(torch.float16).cpu().clone(), temporary)
        os.replace(temporary, path)


def cached_targets(cache: FeatureCache | None, draw_keys: list[str], compute) -> torch.Tensor:
    """Targets for a batch: cached entries where present, `compute(indices)` for the rest.

    With a cache the values always pass through fp16, hit or miss, so a resumed run that reads what an
    interrupted run wrote sees exactly the numbers a fresh run computes.
    """
    if cache is None:
        return compute(list(range(len(draw_keys))))
    found = [cache.get(key) for key in draw_keys]
    missing = [index for index, value in enumerate(found) if value is None]
    if missing:
        fresh = compute(missing).to(torch.float16).cpu()
        for position, index in enumerate(missing):
            cache.put(draw_keys[index], fresh[position])
            found[index] = fresh[position]
    return torch.stack(found).float()
