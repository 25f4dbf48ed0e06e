"""VisA layout (reference §11.2), read through its 1-class split file:

    <class>/Data/Images/Normal/0000.JPG
    <class>/Data/Images/Anomaly/0000.JPG
    <class>/Data/Masks/Anomaly/0000.png
    split_csv/1cls.csv      object,split,label,image,mask   (label normal|anomaly, paths relative to the root)
"""
from __future__ import annotations

import csv
from pathlib import Path

from aaclip.data.records import Record, make_record
from aaclip.errors import DataError

SPLIT_FILE = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}


def read_visa(root: Path, split: str) -> list[Record]:
    rows = read_split_file(root / SPLIT_FILE)
    splits = sorted({row["split"] for _, row in rows})
    if split not in splits:
        raise DataError(f"{root / SPLIT_FILE}: no rows with split {split!r}; the file has: {', '.join(splits)}")
    return [_record(root, line, row) for line, row in rows if row["split"] == split]


def read_split_file(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs; the line numbers make error messages point at the row."""
    if not path.is_file():
        raise DataError(f"{path}: VisA split file not found; a VisA root holds split_csv/1cls.csv")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: header lacks {', '.join(missing)}; expected {','.join(COLUMNS)}")
        return [(reader.line_num, row) for row in reader]


def _record(root: Path, line: int, row: dict[str, str]) -> Record:
    label = LABELS.get((row["label"] or "").strip())
    if label is None or not row["image"] or not row["object"]:
        raise DataError(
            f"{root / SPLIT_FILE}:{line}: expected an object, an image and a label of normal or anomaly, "
            f"got {row['object']!r}, {row['image']!r}, {row['label']!r}"
        )
    return make_record(root, row["image"].strip(), (row["mask"] or "").strip() or None, label, row["object"])
