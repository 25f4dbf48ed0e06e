"""Decode every image and mask of the datasets once before training, so a corrupt file in the val split is one
line at start-up, not a traceback after the whole training run.

Fast: files decode in parallel threads (PIL releases the GIL while decoding), and a file that decoded before is
skipped while its size and modification time are unchanged. The record of what decoded lives under
$AACLIP_HOME/cache/decoded.json, shared by every run and trial on the machine.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aaclip.outputs import write_text_atomically
from aaclip.data.decode import decode
from aaclip.data.records import Record
from aaclip.errors import DataError
from aaclip.home import aaclip_home

CACHE_NAME = "decoded.json"


def verify_decodes(records: Iterable[Record], workers: int | None = None) -> None:
    """Raise the DataError of the first file (in sorted order) that does not decode fully."""
    files = sorted({(record.image_path, "image") for record in records}
                   | {(record.mask_path, "mask") for record in records if record.mask_path is not None})
    cache_file = aaclip_home() / "cache" / CACHE_NAME
    known = _read_cache(cache_file)
    todo = [(path, what) for path, what in files if known.get(str(path)) != _stamp(path)]
    if not todo:
        return
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        outcomes = list(pool.map(_try_decode, todo))
    failures = [error for error in outcomes if error is not None]
    good = {str(path): _stamp(path) for (path, _), error in zip(todo, outcomes) if error is None}
    _write_cache(cache_file, {**known, **good})
    if failures:
        raise failures[0]


def _try_decode(item: tuple[Path, str]) -> DataError | None:
    path, what = item
    try:
        decode(path, what)
    except DataError as error:
        return error
    return None


def _stamp(path: Path) -> list[int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return [status.st_size, status.st_mtime_ns]


def _read_cache(path: Path) -> dict[str, list[int]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or damaged: decode everything again, the cache is only an accelerator
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, entries: dict[str, list[int]]) -> None:
    try:
        write_text_atomically(path, json.dumps(entries))
    except OSError:
        pass  # a read-only home only costs speed next time
