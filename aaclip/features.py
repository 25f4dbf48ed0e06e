"""On-disk cache of frozen Stage-1 features (DESIGN §4, §9: keys name content, not paths).

Loop-1 Stage-1 targets depend only on the frozen backbone, the surgery settings and the exact (augmented) image.
Every augmentation draw is a pure function of (data seed, epoch, image id), so trials that share a data seed
read the same entries: the first trial on a machine pays for the frozen forward, the others read fp16 tensors.
Entries are written atomically (temp file + rename), so concurrent trials on one node can share a folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from aaclip.config import TrainConfig
from aaclip.data.records import Record
from aaclip.data.transforms import CLIP_MEAN, CLIP_STD
from aaclip.errors import DataError
from aaclip.home import aaclip_home

log = logging.getLogger(__name__)

PREPROCESSING_VERSION = 1  # bump when aaclip.data.transforms changes what an image file becomes as a tensor


def feature_cache(config: TrainConfig, vision_tower: nn.Module, records: list[Record],
                  precision: str) -> FeatureCache | None:
    """The run's cache of loop-1 Stage-1 targets, or None when the config turns it off or nothing can be cached."""
    if not config.cache.features:
        return None
    if config.stage1.surgery_axis == "batch":
        # Batch-axis surgery features depend on which images share a batch: nothing per image to cache.
        log.info("feature cache off: stage1.surgery_axis=batch makes features batch-dependent")
        return None
    root = Path(config.cache.dir) if config.cache.dir else aaclip_home() / "cache" / "features"
    return FeatureCache(root, cache_key(config, vision_tower, records, precision))


def cache_key(config: TrainConfig, vision_tower: nn.Module, records: list[Record], precision: str) -> str:
    """The folder of a run's entries: everything besides the draw key that the frozen targets depend on.

    Content, not names: the vision tower's weights as loaded (not the weights' name or file), the dataset's
    files (not its relative paths), the preprocessing and the numeric precision. Each entry's own key (the
    draw key) adds the image id, the image size, the augmentation kind and draw.
    """
    identity = {
        "model": config.model.name, "quick_gelu": config.model.quick_gelu, "size": config.model.image_size,
        "levels": config.adapters.levels,
        "surgery_from_block": config.stage1.surgery_from_block, "surgery_axis": config.stage1.surgery_axis,
        "weights": weights_digest(vision_tower), "dataset": dataset_digest(records), "precision": precision,
        "preprocessing": {"mean": CLIP_MEAN, "std": CLIP_STD, "version": PREPROCESSING_VERSION},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def weights_digest(module: nn.Module) -> str:
    """A hash of every parameter and buffer as loaded: two weights files (or inits) never share a key.

    Reads the tensors once per run (about a second for ViT-L/14's vision tower), which is what names the
    weights themselves rather than the file they came from.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def dataset_digest(records: list[Record]) -> str:
    """The dataset's files, cheaply: absolute path, size, modification and change time and inode of each image.

    A stat per image, no read. A dataset regenerated or replaced in place gets new times (and usually sizes and
    inodes), a copy elsewhere other paths, so the digest changes. ctime is in it because tools that copy files
    keep their mtimes (cp -a, rsync -t) but cannot set ctime back.
    """
    digest = hashlib.sha256()
    for path in sorted({str(record.image_path) for record in records}):
        try:
            stat = os.stat(path)
        except OSError as error:
            raise DataError(f"{path}: cannot stat image ({error.strerror}); was the dataset removed?") from None
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\t{stat.st_ctime_ns}\t{stat.st_ino}\n".encode())
    return digest.hexdigest()[:16]


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
