"""The driver's side of a study: every phase's Tuner run the same way, and the parent run ended once.

A study runs one Tuner per phase: the search, then the confirmation (study/confirm.py). Both go through
`run_phase`: fresh driver callbacks (trial outcomes to MLflow, the heartbeat on the parent run, progress lines)
and Ctrl-C / SIGTERM turned into a clean, resumable stop. `study_session` wraps all the phases: the parent run is
RUNNING from the first phase to the end of the last, and is closed once, through the driver's spool (the server
may be away right now): FINISHED when every phase ran through, KILLED with aaclip.driver = interrupted (a signal:
`aaclip-study resume` continues whichever phase was running) or crashed (anything else). Before it closes
(finished or interrupted), the parent gets its summary and each trial its description (study/summary.py).
"""
from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Iterator

from ray import tune

from study.callbacks import Heartbeat, OutcomeRecorder, Progress, driver_tracker
from study.guard import GradientGuard
from study.interrupt import Interruption, StudyInterrupted
from study.spec import Study
from study.spool import Tracker, batch_op, is_transient
from study.summary import write_summary
from study.tracking import DRIVER_STATE
from study.trainable import TrialContext

CRASH_WAIT_S = 30.0  # how long a crashed driver waits for an away server before it leaves its records spooled


def driver_callbacks(study: Study, context: TrialContext, guard: GradientGuard | None, label: str,
                     show_best: bool = True, total: int | None = None) -> list:
    """Outcomes to MLflow, the driver's heartbeat, progress lines (headed `label`, with the best completed run
    if `show_best`, and the time left for the phase's `total` trials); the recorder comes first."""
    spec = study.spec
    recorder = OutcomeRecorder(study.name, context.experiment_id, guard, spec.scheduler.time_attr,
                               context.connect, Path(context.aaclip_home))
    return [recorder, Heartbeat(recorder.tracker, context.parent_run_id),
            Progress(label, spec.objective.metric, spec.objective.mode, interrupted=recorder.interrupted,
                     show_best=show_best, total=total)]


def run_phase(tuner: tune.Tuner, study: Study, context: TrialContext, label: str,
              show_best: bool = True, total: int | None = None) -> tune.ResultGrid:
    """tuner.fit() with fresh driver callbacks (a restored Tuner's pickled ones hold the last session's state);
    raises StudyInterrupted when a signal or an unfinished trial ended it early."""
    run_config = tuner._local_tuner.get_run_config()  # noqa: SLF001 - Ray offers no public handle on it
    run_config.callbacks = driver_callbacks(study, context, run_config.stop, label, show_best, total)
    recorder, heartbeat = run_config.callbacks[:2]
    heartbeat.beat()
    interruption = Interruption()
    with interruption:
        results = tuner.fit()
    if interruption.signal or recorder.interrupted:
        raise interrupted(study, interruption.code)
    return results


def interrupted(study: Study, code: int) -> StudyInterrupted:
    return StudyInterrupted(f"study {study.name}: interrupted; trials are checkpointed. Continue it with "
                            f"`aaclip-study resume {study.name}`", code)


@contextlib.contextmanager
def study_session(study: Study, context: TrialContext) -> Iterator[Tracker]:
    """The parent run RUNNING while the phases run, and closed once when they end, however they end; yields the
    driver's tracker (the spool the phases' callbacks write to as well)."""
    prepare_environment(context)
    tracker = driver_tracker(context.connect, Path(context.aaclip_home), study.name)
    tracker.write({"op": "status", "run_id": context.parent_run_id, "status": "RUNNING"})
    try:
        yield tracker
    except StudyInterrupted:
        summarize(tracker, context)
        close_parent(tracker, context, "KILLED", "interrupted")
        raise
    except KeyboardInterrupt:  # Ctrl-C between two phases' fit() (Tune handles the ones inside)
        close_parent(tracker, context, "KILLED", "interrupted")
        raise interrupted(study, 128 + signal.SIGINT) from None
    except BaseException:
        close_parent(tracker, context, "KILLED", "crashed", wait_s=CRASH_WAIT_S)  # a crash should not hang too
        raise
    summarize(tracker, context)
    close_parent(tracker, context, "FINISHED", "finished")


def summarize(tracker: Tracker, context: TrialContext) -> None:
    """The parent's summary and the trials' descriptions (study/summary.py); a server away for longer than the
    tracker waits costs the summary (`aaclip-study report` writes it again), never the study's ending."""
    try:
        write_summary(tracker, context.parent_run_id)
    except Exception as error:  # noqa: BLE001 - only the server's absence is forgiven
        if not is_transient(error):
            raise
        tracker.warn(f"the study's summary was not written (tracking server away: {error}); "
                     "`aaclip-study report` writes it")


def close_parent(tracker: Tracker, context: TrialContext, status: str, driver_state: str,
                 wait_s: float | None = None) -> None:
    tracker.write(batch_op(context.parent_run_id, tags={DRIVER_STATE: driver_state}))
    tracker.write({"op": "terminate", "run_id": context.parent_run_id, "status": status})
    tracker.drain(wait_s)


def prepare_environment(context: TrialContext) -> None:
    """Settings of the driver process that every phase's Tuner shares."""
    # Our results carry the objective only on evaluation epochs; Tune would otherwise refuse the others.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Every epoch checkpoints; Tune's advice to checkpoint less is noise here. MLflow's run links too.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Ray tables, our Progress lines only
    # Save the experiment state every few seconds (default: >= 10 s): a killed driver then loses less, and
    # `resume` repeats fewer trials whose end the searcher and MLflow have already recorded.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "3")
    os.environ["MLFLOW_TRACKING_URI"] = context.tracking_uri  # for the driver-side callbacks
