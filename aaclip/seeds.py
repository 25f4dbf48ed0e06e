"""Seeds derived from names and positions, the same on every machine and in every process.

One formula for the whole project: datasets (synthetic trees, few-shot draws, holdouts), augmentation and loader
order all draw from it, so a run is reproducible from its config alone.
"""
from __future__ import annotations

import hashlib


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' text. hashlib, not hash(): Python salts str hashes per process."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
