"""AA-CLIP metadata files (reference §11.1): one JSON object per line,

    {"image_path": "bottle/test/broken_large/000.png", "label": 1, "class_name": "bottle",
     "mask_path": "bottle/ground_truth/broken_large/000_mask.png"}

paths relative to the dataset root, mask_path only on anomalous rows. The root is either a folder holding
<split>.jsonl, or a .jsonl file whose paths are relative to the folder it lies in.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aaclip.data.records import Record, make_record
from aaclip.errors import DataError
from aaclip.outputs import write_text_atomically

ROW_HINT = "each line must be a JSON object with image_path, label (0 or 1), class_name, and mask_path if anomalous"


def read_jsonl(root: Path, split: str) -> list[Record]:
    metadata, dataset_root = find_metadata(root, split)
    records: list[Record] = []
    with metadata.open() as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                records.append(_record(dataset_root, _parse(line, metadata, number), metadata, number))
    return records


def find_metadata(root: Path, split: str) -> tuple[Path, Path]:
    """(metadata file, folder its paths are relative to)."""
    if root.is_dir():
        metadata = root / f"{split}.jsonl"
        if not metadata.is_file():
            raise DataError(f"{metadata}: metadata file not found; write it, or point root at a .jsonl file")
        return metadata, root
    if root.suffix != ".jsonl":
        raise DataError(f"{root}: a jsonl dataset root is a folder holding {split}.jsonl or a .jsonl file")
    return root, root.parent


def _parse(line: str, metadata: Path, number: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{metadata}:{number}: not valid JSON ({error.msg}); {ROW_HINT}") from None
    if not isinstance(row, dict):
        raise DataError(f"{metadata}:{number}: not a JSON object; {ROW_HINT}")
    return row


def _record(root: Path, row: dict[str, Any], metadata: Path, number: int) -> Record:
    image, class_name, mask = row.get("image_path"), row.get("class_name"), row.get("mask_path")
    label = _label(row.get("label"))
    if not isinstance(image, str) or not image or not isinstance(class_name, str) or not class_name \
            or label is None or not (mask is None or isinstance(mask, str)):
        raise DataError(f"{metadata}:{number}: missing or malformed field; {ROW_HINT}")
    return make_record(root, image, mask or None, label, class_name)


def _label(value: Any) -> int | None:
    """0 or 1; the reference's README allows float labels (0.0 / 1.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in (0, 1):
        return None
    return int(value)


def write_jsonl(root: Path, records: Iterable[Record], out: Path) -> Path:
    """Metadata for records under root, paths written relative to root (so put `out` in root, e.g.
    <root>/test.jsonl, for `kind: jsonl` to read it back). Written atomically."""
    root = Path(root).resolve()
    lines = [json.dumps(_row(root, record)) + "\n" for record in records]
    return write_text_atomically(Path(out), "".join(lines))


def _row(root: Path, record: Record) -> dict[str, Any]:
    row: dict[str, Any] = {"image_path": _relative(root, record.image_path), "label": record.label,
                           "class_name": record.class_name}
    if record.label == 1 and record.mask_path is not None:
        row["mask_path"] = _relative(root, record.mask_path)
    return row


def _relative(root: Path, path: Path) -> str:
    try:
        return Path(os.path.normpath(path)).relative_to(root).as_posix()
    except ValueError:
        raise DataError(f"{path}: not under {root}; jsonl metadata stores paths relative to the root") from None
