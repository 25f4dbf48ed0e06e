"""The search space as an Optuna define-by-run function: conditions, tied keys, grid enumeration."""
from __future__ import annotations

import optuna
import pytest

from study.space import Parameter, SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


def space(**parameters) -> SearchSpace:
    return SearchSpace({key.replace("__", "."): Parameter.model_validate(value) for key, value in parameters.items()})


CONDITIONAL = dict(
    learnable={"choice": [False, True]},
    init={"loguniform": [0.01, 1.0], "when": {"learnable": False}, "also": ["text_init"]},
    loops={"int": [1, 5]},
)


def test_conditional_parameter_is_sampled_only_when_its_condition_holds():
    search = space(**CONDITIONAL)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {True: 0, False: 0}
    for _ in range(20):
        trial = study.ask()
        point = search(trial)
        seen[point["learnable"]] += 1
        assert ("init" in trial.params) == (not point["learnable"])
        if not point["learnable"]:
            assert 0.01 <= point["init"] <= 1.0 and point["text_init"] == point["init"]
        assert point["loops"] in range(1, 6) and isinstance(point["loops"], int)
        study.tell(trial, 1.0)
    assert seen[True] and seen[False]


def test_tpe_handles_the_conditional_space():
    search = space(**CONDITIONAL)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3, multivariate=True,
                                                                   group=True))
    study.optimize(lambda trial: float(len(search(trial))), n_trials=8)
    assert len(study.trials) == 8


def test_grid_points_follow_conditions():
    search = space(mode={"grid": ["a", "b"]}, value={"grid": [1, 2, 3], "when": {"mode": "a"}}, seed={"grid": [0, 1]})
    points = search.grid_points()
    assert len(points) == (3 + 1) * 2
    assert {"mode": "b", "seed": 0} in points


def test_float_steps_and_extremes():
    parameter = Parameter.model_validate({"uniform": [0.0, 1.0], "step": 0.25})
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    assert parameter.suggest(trial, "x") in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert parameter.extremes() == [0.0, 1.0]


def test_exactly_one_distribution():
    with pytest.raises(ValueError):
        Parameter.model_validate({"when": {"a": 1}})
