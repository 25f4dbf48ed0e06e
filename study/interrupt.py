"""Ctrl-C and SIGTERM stop a study cleanly and say how to continue it.

Tune already stops gracefully on SIGINT: it stops the trials, saves the experiment state, and returns from
`fit()` as if the study had ended, with a hint to call `Tuner.restore(...)` (a Python API) in its log. Here
SIGTERM (a scheduler, `kill`, `docker stop`) is turned into that same SIGINT, Tune's hint is swapped for
ours, and the caller learns that the study was interrupted, so it can mark the runs and exit non-zero.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

TUNE_LOGGER = "ray.tune.tune"


class StudyInterrupted(Exception):
    """The driver was stopped by a signal; `code` is the shell's convention (128 + the signal number)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class Interruption:
    """Context manager around `tuner.fit()`: `signal` is set when the study was interrupted."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: Any = None

    def __enter__(self) -> Interruption:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        logging.getLogger(TUNE_LOGGER).addFilter(self._filter)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger(TUNE_LOGGER).removeFilter(self._filter)
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.signal = signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # Tune's own graceful stop

    def _filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "has been interrupted" in message:  # Tune's Tuner.restore(...) hint: we print the CLI's instead
            self.signal = self.signal or signal.SIGINT
            return False
        return not (self.signal and "Trials did not complete" in message)

    @property
    def code(self) -> int:
        return 128 + int(self.signal or signal.SIGINT)
