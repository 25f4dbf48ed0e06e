"""Which points of a space are checked before launch, and list-valued choices (e.g. adapters.levels)."""
from __future__ import annotations

import optuna
import pytest

from study.errors import StudyError
from study.spec import parse_study
from study.space import Parameter, SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


def spec(**space) -> dict:
    return {"name": "points", "base": "tiny", "baseline": False,
            "space": {key.replace("__", "."): value for key, value in space.items()}}


def test_every_value_of_a_small_int_range_is_checked():
    points = SearchSpace({"heads": Parameter.model_validate({"int": [1, 8]}),
                          "lr": Parameter.model_validate({"uniform": [0.1, 0.2]})}).extreme_points()
    assert sorted({point["heads"] for point in points}) == list(range(1, 9))
    assert {point["lr"] for point in points} == {0.1, 0.2}
    assert {(1, 0.2), (8, 0.2), (8, 0.1)} <= {(point["heads"], point["lr"]) for point in points}  # the corners


def test_a_large_int_range_contributes_its_bounds_only():
    points = SearchSpace({"steps": Parameter.model_validate({"int": [1, 10_000]})}).extreme_points()
    assert sorted(point["steps"] for point in points) == [1, 10_000]


def test_a_choice_over_lists_is_sampled_and_validated():
    study = parse_study(spec(adapters__levels={"choice": [[1, 2], [1, 2, 3, 4]]}))
    sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = {tuple(study.space(sampler.ask())["adapters.levels"]) for _ in range(20)}
    assert drawn == {(1, 2), (1, 2, 3, 4)}
    assert study.trial_config({"adapters.levels": [1, 2]}).adapters.levels == [1, 2]


def test_a_head_count_that_fails_only_inside_the_range_is_refused():
    with pytest.raises(StudyError, match="cross_attention.heads=3: cross_attention.heads: 3 does not divide"):
        parse_study(spec(cross_attention__heads={"int": [1, 4]}))


def test_an_objective_one_trial_cannot_report_is_refused():
    data = {**spec(eval__aupro={"choice": [True, False]}), "objective": {"metric": "val/pixel_aupro"}}
    with pytest.raises(StudyError, match="trial eval.aupro=False: objective.metric: val/pixel_aupro"):
        parse_study(data)
