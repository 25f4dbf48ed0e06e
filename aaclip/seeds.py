"""Seeds derived from names and positions, the same on every machine and in every process.

Datasets (synthetic trees, few-shot draws, holdouts) and augmentation draw from `stable_seed`; the training
loader's shuffle order from `loader_seed`, whose derivation is older and kept so that runs and checkpoints made
before stay reproducible batch for batch (the README's measured numbers and the e2e test depend on that order).
"""
from __future__ import annotations

import hashlib


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' text. hashlib, not hash(): Python salts str hashes per process."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def loader_seed(seed: int, loop: int, stage: int, epoch_in_stage: int) -> int:
    """The shuffle order of one epoch's loader: a 63-bit seed from the repr of the position."""
    parts = (int(seed), int(loop), int(stage), int(epoch_in_stage))
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") % (2**63)
