"""SIGTERM takes Tune's graceful Ctrl-C path, and Tune's Python-API hint gives way to the CLI's resume line."""
from __future__ import annotations

import logging
import os
import signal

from study.interrupt import TUNE_LOGGER, Interruption


def test_sigterm_becomes_tunes_sigint_and_its_hint_is_dropped(caplog):
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))  # as Tune installs
    try:
        with Interruption() as interruption:
            os.kill(os.getpid(), signal.SIGTERM)
            with caplog.at_level(logging.WARNING, logger=TUNE_LOGGER):
                logging.getLogger(TUNE_LOGGER).warning("Experiment has been interrupted, but the most recent "
                                                       "state was saved.\nResume experiment with: Tuner.restore(...)")
                logging.getLogger(TUNE_LOGGER).warning("something else")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert received == [signal.SIGINT]
    assert interruption.signal == signal.SIGTERM and interruption.code == 143
    assert [record.getMessage() for record in caplog.records] == ["something else"]
    assert signal.getsignal(signal.SIGTERM) != interruption._on_sigterm  # restored on exit


def test_ctrl_c_is_recognised_from_tunes_own_message():
    with Interruption() as interruption:
        logging.getLogger(TUNE_LOGGER).warning("Experiment has been interrupted, but the most recent state was saved.")
    assert interruption.signal == signal.SIGINT and interruption.code == 130
