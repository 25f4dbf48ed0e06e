"""Where aaclip keeps what it makes for itself: generated datasets, feature caches, local tracking state."""
from __future__ import annotations

import os
from pathlib import Path

HOME_VARIABLE = "AACLIP_HOME"


def aaclip_home() -> Path:
    """$AACLIP_HOME, or ./.aaclip, as an absolute path; created on first use.

    Resolved on every call (not cached) so a test or a Ray worker that sets the variable sees it at once.
    """
    home = Path(os.environ.get(HOME_VARIABLE) or ".aaclip").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home
