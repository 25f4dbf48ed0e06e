"""A resumed study's ASHA, its rungs rebuilt from the recorded results, decides as the uninterrupted one."""
from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from study.asha_state import restore_rungs
from study.tuner import StudyASHA

HISTORY = {"a": [(1.0, 0.9), (2.0, 0.95)], "b": [(1.0, 0.5)], "c": [(1.0, 0.7), (2.0, 0.8)]}


def asha() -> StudyASHA:
    return StudyASHA(time_attr="loop", metric="m", mode="max", max_t=2, grace_period=1, reduction_factor=4,
                     stop_last_trials=False)


def decide(scheduler: StudyASHA, trial_id: str, loop: float, value: float) -> str:
    trial = SimpleNamespace(trial_id=trial_id, config={})
    if trial_id not in scheduler._trial_info:  # noqa: SLF001
        scheduler.on_trial_add(None, trial)
    return scheduler.on_trial_result(None, trial, {"loop": loop, "m": value})


def test_restored_rungs_decide_as_the_uninterrupted_scheduler():
    uninterrupted = asha()
    for trial_id, points in HISTORY.items():
        for loop, value in points:
            decide(uninterrupted, trial_id, loop, value)
    restored = asha()
    assert restore_rungs(restored, HISTORY) == 3  # one loop-1 result per trial (the only rung)
    for value in (0.6, 0.85):  # below and above the cutoff (75th percentile of 0.9, 0.5, 0.7)
        expected = decide(uninterrupted, f"new-{value}", 1.0, value)
        assert decide(restored, f"new-{value}", 1.0, value) == expected
    # Empty rungs (Ray's own resume) would let it through: there is no cutoff yet.
    assert decide(asha(), "new", 1.0, 0.6) == TrialScheduler.CONTINUE != decide(restored, "late", 1.0, 0.6)


def test_a_restarted_trial_past_its_rung_continues_and_an_ended_one_stops():
    restored = asha()
    restore_rungs(restored, HISTORY)
    assert decide(restored, "c", 2.0, 0.8) == TrialScheduler.CONTINUE  # its rung decision was taken: it stands
    restored.ended = frozenset({"b"})
    assert decide(restored, "b", 1.0, 0.99) == TrialScheduler.STOP  # recorded as pruned: not run again
