"""What is legal but suspicious: warned once, by name, and kept so that the run can record it.

What cannot be right is refused (aaclip.errors); what might be intended but usually is not (a validation class
without anomalous images, a NaN metric) is a notice: printed once as `warning: ...` by the CLIs and written to
the run (warnings.json beside metrics.json; a study trial also tags its MLflow run).
"""
from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class AaclipWarning(Warning):
    """Not a UserWarning: the CLIs silence library UserWarnings, never these."""


_scopes: list[list[str]] = [[]]  # the process-wide scope at the bottom; `collecting()` pushes one per run
_shown: set[str] = set()


def notice(message: str) -> None:
    """Record a notice in the current scope (a run) and warn about it once per process."""
    scope = _scopes[-1]
    if message not in scope:
        scope.append(message)
    if message not in _shown:  # e.g. `aaclip train` checks the data before its run's scope and again inside
        _shown.add(message)
        warnings.warn(message, AaclipWarning, stacklevel=2)


@contextmanager
def collecting() -> Iterator[list[str]]:
    """A scope for one run: its notices are recorded apart from earlier runs in the same process (a Ray
    worker may run several trials)."""
    found: list[str] = []
    _scopes.append(found)
    try:
        yield found
    finally:
        _scopes.remove(found)


def in_own_scope(function: Callable) -> Callable:
    """Decorator: every call runs in its own `collecting()` scope (one training run = one scope)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with collecting():
            return function(*args, **kwargs)
    return wrapper


def recorded() -> list[str]:
    """The notices of the innermost scope so far."""
    return list(_scopes[-1])


def show_as_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """warnings.showwarning for the CLIs: `warning: <message>` for ours, the usual format for the rest."""
    if issubclass(category, AaclipWarning):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _default_show(message, category, filename, lineno, file, line)


_default_show = warnings.showwarning
