"""Datasets: MVTec, VisA and jsonl layouts, generated synthetic data, preprocessing and augmentation.

Reading records needs only numpy and PIL; the torch parts (AnomalyDataset, transforms) load on first use, so a
study's driver can list and check datasets without importing torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aaclip.data.jsonl import write_jsonl
from aaclip.data.loading import load_records
from aaclip.data.records import Record, class_names
from aaclip.data.synthetic import generate_synthetic, synthetic_root

if TYPE_CHECKING:
    from aaclip.data.dataset import AnomalyDataset

__all__ = ["AnomalyDataset", "Record", "class_names", "generate_synthetic", "load_records", "synthetic_root",
           "write_jsonl"]


def __getattr__(name: str) -> Any:
    if name == "AnomalyDataset":
        from aaclip.data.dataset import AnomalyDataset

        return AnomalyDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
