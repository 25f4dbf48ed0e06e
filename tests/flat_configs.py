"""The inverse of aaclip.config.flatten, for the tests' round-trip checks (the package itself never needs it)."""
from __future__ import annotations

from typing import Any

from aaclip.config import apply_overrides


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{"optim.image_lr": 0.0005, ...} -> the nested dict it was flattened from."""
    return apply_overrides({}, flat)
