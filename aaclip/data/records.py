"""Dataset records: what every layout reader returns, and the steps all of them share.

The layout readers (mvtec, visa, jsonl) build records with the helpers here; `aaclip.data.loading` picks the
reader and applies the selection steps and the cheap per-file checks below.
"""
from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from aaclip.config import HoldoutConfig
from aaclip.data.decode import header_size
from aaclip.errors import DataError
from aaclip.seeds import stable_seed

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Record:
    image_path: Path  # absolute
    mask_path: Path | None  # None for normal images
    label: int  # 0 normal, 1 anomalous
    class_name: str
    image_id: str  # path relative to the dataset root, POSIX: stable across machines, a cache key


# ---------------------------------------------------------------------------------------------------------------
# Helpers the layout readers share


def make_record(root: Path, image: str, mask: str | None, label: int, class_name: str) -> Record:
    """A record from paths as a layout writes them: relative to the (absolute) root, or absolute (jsonl only)."""
    image_path = _join(root, image)
    mask_path = _join(root, mask) if mask else None
    return Record(image_path, mask_path, label, class_name, image_id(root, image_path))


def _join(root: Path, relative: str) -> Path:
    # normpath, not resolve(): a symlinked class folder must not change the image id.
    return Path(os.path.normpath(root / relative))


def image_id(root: Path, image_path: Path) -> str:
    try:
        return PurePosixPath(image_path.relative_to(root)).as_posix()
    except ValueError:  # a jsonl row may point outside its root; the absolute path is the best stable name
        return image_path.as_posix()


def list_images(folder: Path) -> list[Path]:
    """Image files directly in a folder, sorted by name (file-system listing order is not stable)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_names(records: Iterable[Record]) -> list[str]:
    return sorted({record.class_name for record in records})


# ---------------------------------------------------------------------------------------------------------------
# Selection steps, in the order aaclip.data.loading applies them


def select_categories(records: list[Record], categories: list[str] | None, root: Path) -> list[Record]:
    if categories is None:
        return records
    available = class_names(records)
    unknown = [name for name in categories if name not in available]
    if unknown:
        raise DataError(
            f"{root}: unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
            f"available: {', '.join(available)}"
        )
    wanted = set(categories)
    return [record for record in records if record.class_name in wanted]


def holdout_part(records: list[Record], holdout: HoldoutConfig) -> list[Record]:
    """The held-out part or the remainder of `records`, drawn per (class, label) group.

    Each group is sorted by image id and drawn from its own generator, so the split does not depend on listing
    order or on which other classes were selected, and the same (fraction, seed) on the two parts gives
    complementary sets. A group of n >= 2 images holds out round(fraction * n) of them, at least one and at most
    n - 1, so both parts see every class and label the group has; a single image stays in the remainder.
    """
    groups: dict[tuple[str, int], list[Record]] = defaultdict(list)
    for record in sorted(records, key=lambda record: record.image_id):
        groups[(record.class_name, record.label)].append(record)
    chosen: list[Record] = []
    for (class_name, label), group in sorted(groups.items()):
        held = _held_out_count(len(group), holdout.fraction)
        rng = np.random.default_rng(stable_seed("holdout", holdout.seed, class_name, label))
        held_indices = set(rng.permutation(len(group))[:held].tolist())
        keep_held = holdout.part == "held_out"
        chosen.extend(record for index, record in enumerate(group) if (index in held_indices) == keep_held)
    return chosen


def _held_out_count(size: int, fraction: float) -> int:
    if size < 2:
        return 0
    return min(max(round(fraction * size), 1), size - 1)


def sample_shots(records: list[Record], shots: int, seed: int) -> list[Record]:
    """k normal + k anomalous images per class (all of them where a class has fewer), seeded.

    Each (class, label) group is sorted by image id and drawn from its own generator, so a class's sample does
    not depend on listing order or on which other classes were selected.
    """
    groups: dict[tuple[str, int], list[Record]] = defaultdict(list)
    for record in sorted(records, key=lambda record: record.image_id):
        groups[(record.class_name, record.label)].append(record)
    chosen: list[Record] = []
    for (class_name, label), group in sorted(groups.items()):
        rng = np.random.default_rng(stable_seed("shots", seed, class_name, label))
        picks = rng.choice(len(group), size=min(shots, len(group)), replace=False)
        chosen.extend(group[i] for i in sorted(picks))
    return chosen


# ---------------------------------------------------------------------------------------------------------------
# Cheap eager checks: headers only, no pixel decoding


def check_record(record: Record) -> None:
    image_size = header_size(record.image_path, "image")
    if record.mask_path is None:
        if record.label == 1:
            raise DataError(f"{record.image_path}: anomalous image has no mask; add its mask to the dataset")
        return
    if not record.mask_path.is_file():
        raise DataError(f"{record.mask_path}: mask not found for {record.image_path}; add the mask file")
    mask_size = header_size(record.mask_path, "mask")
    if mask_size != image_size:
        raise DataError(
            f"{record.mask_path}: mask is {mask_size[0]}x{mask_size[1]} but its image {record.image_path} is "
            f"{image_size[0]}x{image_size[1]}; masks must match their image's size"
        )
