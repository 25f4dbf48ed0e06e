"""Loading a dataset: pick the layout's reader, then apply the selection steps all layouts share.

`load_records(spec)` finds the root (generating a synthetic dataset if needed), reads the layout, keeps the
requested categories, takes the holdout part, draws the few-shot sample, sorts, and checks every file cheaply
(image headers only), so that a bad dataset fails before training starts, with a message that names the file.

This module sits above the readers and records (they never import it), so the package has no import cycle.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aaclip.config import DatasetSpec
from aaclip.data.jsonl import read_jsonl
from aaclip.data.mvtec import read_mvtec
from aaclip.data.records import Record, check_record, holdout_part, sample_shots, select_categories
from aaclip.data.synthetic import ensure_synthetic, synthetic_root
from aaclip.data.visa import read_visa
from aaclip.errors import DataError

READERS: dict[str, Callable[[Path, str], list[Record]]] = {"mvtec": read_mvtec, "visa": read_visa,
                                                           "jsonl": read_jsonl}


def load_records(spec: DatasetSpec) -> list[Record]:
    root, layout = _resolve_root(spec)
    records = _reader(layout)(root, spec.split)
    if not records:
        raise DataError(f"{root}: no {spec.split} images found in the {layout} layout; check root and split")
    records = select_categories(records, spec.categories, root)
    if spec.holdout is not None:
        records = holdout_part(records, spec.holdout)
    if spec.shots is not None:
        records = sample_shots(records, spec.shots, spec.seed)
    records = sorted(records, key=lambda record: (record.class_name, record.image_id))
    for record in records:
        check_record(record)
    return records


def _resolve_root(spec: DatasetSpec) -> tuple[Path, str]:
    """(root, layout to read it with). A synthetic dataset is generated here if it is missing."""
    root = dataset_root(spec)
    if spec.kind == "synthetic":
        return root, ensure_synthetic(root, spec.domain, spec.seed)
    if not root.exists():
        raise DataError(f"{root}: dataset root not found; check the dataset's root in the config")
    if spec.kind != "jsonl" and not root.is_dir():  # only a jsonl root may be a file
        raise DataError(f"{root}: a {spec.kind} dataset root must be a folder")
    return root, spec.kind


def dataset_root(spec: DatasetSpec) -> Path:
    """Where the dataset lies (absolute); a synthetic one without a root lies in its default folder."""
    if spec.kind == "synthetic" and not spec.root:
        return synthetic_root(spec.domain, spec.seed)
    return Path(spec.root).expanduser().resolve()


def _reader(layout: str) -> Callable[[Path, str], list[Record]]:
    if layout not in READERS:
        raise DataError(f"unknown dataset layout {layout!r}; expected mvtec, visa or jsonl")
    return READERS[layout]
