"""The verdict of a confirmation: t-intervals, paired differences, missing pairs, and which configuration wins.

Runs are MLflow's own entity objects (tests/unit/mlflow_runs.py) with the tags and metrics confirmation runs log.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from study.verdict import compute_verdict, reading, t_interval
from tests.unit.mlflow_runs import make_run

METRIC = "val/pixel_auroc"


def run(role: str, rank: int, seed: int, value: float | None, outcome: str = "completed", lr: str = "0.001"):
    tags = {"aaclip.role": role, "aaclip.confirm_rank": str(rank), "aaclip.confirm_seed": str(seed),
            "aaclip.confirm_source": f"s-{rank:03d}", "aaclip.outcome": outcome}
    metrics = {METRIC: value} if value is not None else {}
    return make_run(f"{role}-{rank}-{seed}", tags, metrics, {"optim.image_lr": lr})


def test_t_interval_matches_scipy():
    values = [71.0, 74.5, 69.25, 80.0]
    estimate = t_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert (estimate.mean, estimate.low, estimate.high) == pytest.approx((np.mean(values), low, high))
    single = t_interval([3.0])
    assert (single.n, single.mean, single.low, single.high) == (1, 3.0, None, None)
    assert t_interval([]).mean is None


def test_paired_difference_uses_only_seeds_where_both_sides_finished():
    runs = [run("confirm", 1, 5, 80.0), run("twin", 1, 5, 70.0),
            run("confirm", 1, 6, 82.0), run("twin", 1, 6, 71.0),
            run("confirm", 1, 7, 90.0), run("twin", 1, 7, None, outcome="failed"),
            run("base", 0, 5, 60.0), run("base", 0, 6, 62.0), run("base", 0, 7, 61.0)]
    verdict = compute_verdict(runs, METRIC, "max", ["optim.image_lr"])
    row = verdict.rows[0]
    assert verdict.seeds == [5, 6, 7] and (verdict.planned, verdict.finished) == (9, 8)
    assert (row.on.n, row.twin.n, row.difference.n) == (3, 2, 2)
    assert row.on.mean == pytest.approx(84.0)
    expected = t_interval([10.0, 11.0])
    assert (row.difference.mean, row.difference.low) == pytest.approx((10.5, expected.low))
    assert row.source == "s-001" and row.params == {"optim.image_lr": "0.001"}
    assert verdict.base.mean == pytest.approx(61.0)


def test_best_follows_the_mode_and_the_reading_says_what_an_interval_means():
    runs = [run("confirm", 1, 5, 80.0), run("confirm", 1, 6, 81.0), run("confirm", 2, 5, 70.0),
            run("confirm", 2, 6, 72.0)]
    assert compute_verdict(runs, METRIC, "max").best().rank == 1
    assert compute_verdict(runs, METRIC, "min").best().rank == 2
    assert compute_verdict([], METRIC, "max") is None
    clear = t_interval([1.0, 1.2, 0.9])
    unclear = t_interval([1.0, -1.0, 0.5])
    assert reading(clear, "max") == "cross-attention helps" and reading(clear, "min") == "cross-attention hurts"
    assert "contains 0" in reading(unclear, "max")
    assert "too few" in reading(t_interval([1.0]), "max")
