"""Splits that selection and test can trust (DESIGN §9): a check that val and test share no image file, and
fingerprints that name exactly which images a split holds. (The seeded holdout of one dataset is a selection
step in aaclip.data.records.)

A study selects its winner on `data.val`; the final number is read on `data.test`. If one image is in both, the
test number is no longer an estimate on unseen data. Configs can differ and still name the same files (a shots
sample of a test set, two roots that are links to one folder), so splits are compared by resolved file.
"""
from __future__ import annotations

import hashlib
import os

from aaclip.config import DataConfig
from aaclip.data.loading import load_records
from aaclip.data.records import Record
from aaclip.errors import DataError


def resolved_files(records: list[Record]) -> dict[str, Record]:
    """Resolved image path -> record: links and `..` lead to the file itself."""
    return {os.path.realpath(record.image_path): record for record in records}


def check_disjoint(val: list[Record], test: list[Record], source: str | None = None) -> None:
    """Refuse val and test splits that share an image file (one line, names both splits and an example)."""
    val_files = resolved_files(val)
    shared = sorted(set(val_files) & set(resolved_files(test)))
    if shared:
        prefix = f"{source}: " if source else ""
        raise DataError(
            f"{prefix}data.val and data.test share {len(shared)} of {len(val)} val images (e.g. {shared[0]}); "
            "selection must not see test images: split one dataset with holdout: {part: held_out} for val and "
            "holdout: {part: remainder} for test, or use disjoint categories"
        )


def split_fingerprint(records: list[Record]) -> str:
    """Names the split's images by id, class, label and file size: equal for copies of a dataset wherever their
    root lies, different for another dataset in the same layout (a stat per image, no read)."""
    lines = sorted(f"{record.class_name}\t{record.label}\t{record.image_id}\t{record.image_path.stat().st_size}"
                   for record in records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def split_summary(splits: dict[str, list[Record]]) -> dict[str, int | str]:
    """`split.<name>.images` and `split.<name>.fingerprint` for each split: MLflow params and metrics.json."""
    summary: dict[str, int | str] = {}
    for name, records in splits.items():
        summary[f"split.{name}.images"] = len(records)
        summary[f"split.{name}.fingerprint"] = split_fingerprint(records)
    return summary


def load_splits(data: DataConfig, source: str | None = None) -> dict[str, list[Record]]:
    """Records of train, val and (when set) test, with val and test checked to be disjoint."""
    splits = {"train": load_records(data.train), "val": load_records(data.val)}
    if data.test is not None:
        splits["test"] = load_records(data.test)
        check_disjoint(splits["val"], splits["test"], source)
    return splits
