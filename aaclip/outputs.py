"""Outputs: files written so a reader sees the old content or the new, never half (temp file + rename), and
folders checked for being creatable before anything is written."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomically(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temp file in the same folder; the temp file never outlives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def nearest_existing(path: Path) -> Path:
    """The path itself or its closest ancestor that exists (where a mkdir -p would start)."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def creatable_folder_problem(folder: Path) -> str | None:
    """Why `folder` cannot be made (or written into) by this user, or None when it can; creates nothing."""
    folder = Path(folder).expanduser().absolute()
    if folder.parts[1:2] in (("proc",), ("sys",), ("dev",)):
        return f"{folder} lies in the kernel's virtual file system /{folder.parts[1]}"
    start = nearest_existing(folder)
    if not start.is_dir():
        return f"{start} is a file, not a folder"
    if not os.access(start, os.W_OK | os.X_OK):
        return f"{start} is not writable"
    return None
