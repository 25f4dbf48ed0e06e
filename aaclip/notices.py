"""What is legal but suspicious: warned once, by name, and kept so that the run can record it.

What cannot be right is refused (aaclip.errors); what might be intended but usually is not (a validation class
without anomalous images, a NaN metric) is a notice: printed once as `warning: ...` by the CLIs and written to
the run (warnings.json beside metrics.json; a study trial also tags its MLflow run).
"""
from __future__ import annotations

import warnings


class AaclipWarning(Warning):
    """Not a UserWarning: the CLIs silence library UserWarnings, never these."""


_recorded: list[str] = []


def notice(message: str) -> None:
    """Warn once per process for each distinct message and record it."""
    if message in _recorded:
        return
    _recorded.append(message)
    warnings.warn(message, AaclipWarning, stacklevel=2)


def recorded() -> list[str]:
    return list(_recorded)


def show_as_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """warnings.showwarning for the CLIs: `warning: <message>` for ours, the usual format for the rest."""
    import sys

    if issubclass(category, AaclipWarning):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _default_show(message, category, filename, lineno, file, line)


_default_show = warnings.showwarning
