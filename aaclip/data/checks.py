"""Checks of a configuration's datasets as a whole, before the first training step (no torch).

Refused: training data without a single anomalous image (MVTec's `train` split: every mask empty, nothing for
the segmentation losses to learn). Warned: an evaluated class without anomalous or without normal images (its
AUROC and AP are undefined: NaN, left out of the class mean). Then every file is decoded once (cached).
"""
from __future__ import annotations

from aaclip.config import DatasetSpec, TrainConfig
from aaclip.data.records import Record, class_names
from aaclip.data.splits import load_splits
from aaclip.data.verify import verify_decodes
from aaclip.errors import DataError
from aaclip.notices import notice


def load_checked_records(config: TrainConfig, require_test: bool = False,
                         source: str | None = None) -> dict[str, list[Record]]:
    """{split: records} for data.train, data.val and data.test (when set): val and test disjoint, checked and
    every file decoded."""
    if require_test and config.data.test is None:
        raise DataError("data.test is not set in the config: set it to evaluate on test data")
    records = load_splits(config.data, source)
    refuse_normal_only_training(config.data.train, records["train"])
    for split in records:
        if split != "train":
            warn_one_sided_classes(split, records[split])
    verify_decodes([record for split_records in records.values() for record in split_records])
    return records


def refuse_normal_only_training(spec: DatasetSpec, records: list[Record]) -> None:
    if not any(record.label == 1 for record in records):
        where = spec.root or f"synthetic {spec.domain}"
        raise DataError(f"data.train: {where} split {spec.split!r} has no anomalous images (every mask empty): "
                        "AA-CLIP learns from defects and their masks; train on a split with anomalies "
                        "(for MVTec AD or VisA: split: test)")


def warn_one_sided_classes(split: str, records: list[Record]) -> None:
    for name in class_names(records):
        labels = {record.label for record in records if record.class_name == name}
        if labels == {0}:
            notice(f"data.{split}: class {name!r} has no anomalous images: its AUROC and AP are undefined (NaN) "
                   "and left out of the means")
        elif labels == {1}:
            notice(f"data.{split}: class {name!r} has no normal images: its image AUROC and AP are undefined "
                   "(NaN) and left out of the means")
