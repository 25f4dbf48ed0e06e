"""The study's record (study/record.py): tag names on disk, how a trial's end is named, which trial is best.

Literal tag names here on purpose: they are the on-disk contract with every MLflow server a study wrote to.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from study.record import (
    FINAL_OUTCOMES, Outcome, Tag, best_and_baseline, best_trial, objective_of, parent_tags, ranked_trials,
    recorded_outcome, run_status, space_keys_of, trial_outcome,
)
from study.spec import parse_study
from tests.unit.mlflow_runs import make_run

METRIC = "val/pixel_auroc"
STUDY_DIR = Path(__file__).resolve().parents[2] / "study"


def trial(name: str, outcome: str, value: float | None, baseline: bool = False):
    tags = {"aaclip.role": "trial", "aaclip.outcome": outcome, "aaclip.baseline": str(baseline).lower()}
    return make_run(name, tags, {METRIC: value} if value is not None else {})


def test_tags_keep_their_names_on_disk():
    assert Tag.OUTCOME == "aaclip.outcome" and f"tags.`{Tag.STUDY}`" == "tags.`aaclip.study`"
    assert {"aaclip.outcome": 1}[Tag.OUTCOME] == 1  # a tag reads a run's tag dict by its plain name
    assert all(tag.value.startswith("aaclip.") for tag in Tag)
    assert len({tag.value for tag in Tag}) == len(Tag)
    assert [str(outcome) for outcome in FINAL_OUTCOMES] == ["completed", "pruned", "stopped", "failed"]


def test_no_other_study_module_spells_a_tag():
    """Every `aaclip.*` tag name is written once, in study/record.py."""
    spelled = {path.name: re.findall(r"[\"']aaclip\.[a-z_]+[\"']", path.read_text())
               for path in sorted(STUDY_DIR.glob("*.py")) if path.name != "record.py"}
    assert {name: found for name, found in spelled.items() if found} == {}


def test_a_trials_outcome_from_its_last_result():
    assert trial_outcome({"trial/completed": 1.0, "loop": 3}) == ("completed", "")
    assert trial_outcome({"loop": 1}, stop_reason="guard: nan") == ("stopped", "guard: nan")
    assert trial_outcome({"loop": 2.0}, time_attr="loop") == ("pruned", "ASHA: below the rung's cutoff at loop 2")
    assert trial_outcome(None) == ("pruned", "ASHA: below the rung's cutoff")
    assert trial_outcome({"trial/completed": 1.0}, error="boom") == ("failed", "boom")
    assert [run_status(outcome) for outcome in (*FINAL_OUTCOMES, Outcome.INTERRUPTED)] == [
        "FINISHED", "FINISHED", "KILLED", "FAILED", "KILLED"]


def test_only_the_drivers_final_outcome_is_on_record():
    assert recorded_outcome({"aaclip.outcome": "pruned", "aaclip.outcome_by": "driver"}) == "pruned"
    assert recorded_outcome({"aaclip.outcome": "completed"}) is None  # the worker's tag is provisional
    assert recorded_outcome({"aaclip.outcome": "interrupted", "aaclip.outcome_by": "driver"}) is None


def test_best_trial_ranks_completed_finite_values_and_the_baseline_only_when_asked():
    runs = [trial("base", "completed", 90.0, baseline=True), trial("a", "completed", 70.0),
            trial("b", "pruned", 95.0), trial("c", "completed", math.nan), trial("d", "completed", 80.0),
            trial("e", "running", 99.0)]
    assert [run.info.run_name for run in ranked_trials(runs, METRIC, "max")] == ["d", "a"]
    assert best_trial(runs, METRIC, "min").info.run_name == "a"
    assert best_trial(runs, METRIC, "max", with_baseline=True).info.run_name == "base"
    best, baseline = best_and_baseline(runs, METRIC, "max")
    assert (best.info.run_name, baseline.info.run_name) == ("d", "base")
    assert best_trial([trial("b", "pruned", 95.0)], METRIC, "max") is None


def test_the_parent_run_reads_back_what_the_launch_wrote():
    study = parse_study({"name": "s", "base": "tiny", "objective": {"metric": METRIC, "mode": "min"},
                         "space": {"optim.image_lr": {"loguniform": [1e-4, 1e-2]},
                                   "feedback.loops": {"int": [1, 2]}}}, source="spec.yaml")
    tags = parent_tags(study, "/results/s", "sqlite:///optuna.db")
    parent = make_run("s", {str(key): value for key, value in tags.items()}, {})
    assert objective_of(parent) == (METRIC, "min")
    assert space_keys_of(parent) == ["optim.image_lr", "feedback.loops"]
    assert parent.data.tags["aaclip.storage_path"] == "/results/s"
