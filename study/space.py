"""The search space of a study: dotted TrainConfig keys -> distributions, sampled through Optuna define-by-run.

One parameter per key, written in YAML as one of

    optim.image_lr: {loguniform: [1.0e-4, 5.0e-3]}
    feedback.loops: {int: [1, 5]}
    cross_attention.image_scale.learnable: {choice: [false, true]}
    seed: {grid: [1, 2, 3]}                                   # grid searcher only

with two optional modifiers:

    when: {cross_attention.image_scale.learnable: false}      # sampled only under this condition (define-by-run)
    also: [cross_attention.text_scale.init]                   # the same value is written to these keys too

Conditions refer to keys sampled earlier in the space, so a fixed scale's value is searched only where the scale
is fixed, and Optuna's TPE sees a conditional space instead of a parameter that silently does nothing.
"""
from __future__ import annotations

import itertools
import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from study.errors import StudyError

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int", "grid")
FIELDS = {"choice": "choice", "uniform": "uniform", "loguniform": "loguniform", "int": "integer", "grid": "grid"}
MAX_INT_VALUES = 64  # an int range this small is checked value by value
MAX_CORNERS = 256  # combinations of extremes checked together (a cross-key rule fails only in combination)
BUDGET_KEYS = ("feedback.loops", "feedback.text_epochs", "feedback.image_epochs")
Scalar = bool | int | float | str | None
Value = Scalar | list[Scalar]  # a choice may pick a whole list, e.g. adapters.levels: {choice: [[6, 12], [6, 12, 18]]}


class Parameter(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    choice: list[Value] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    integer: tuple[int, int] | None = Field(None, alias="int")  # `int` in YAML; renamed so it cannot shadow int
    grid: list[Value] | None = Field(None, min_length=1)
    step: float | None = Field(None, gt=0)  # uniform/int: quantisation step
    when: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    also: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_distribution(self) -> Parameter:
        given = [name for name in DISTRIBUTIONS if getattr(self, FIELDS[name]) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DISTRIBUTIONS)} (got {given or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in DISTRIBUTIONS if getattr(self, FIELDS[name]) is not None)

    @property
    def bounds(self) -> tuple[float, float]:
        """[low, high] of a range parameter."""
        return getattr(self, FIELDS[self.kind])

    @property
    def values(self) -> list[Any]:
        """The finite values of a choice or grid parameter."""
        return list(self.choice if self.choice is not None else self.grid or [])

    def check_range(self, where: str) -> None:
        kind = self.kind
        if kind == "grid" and any(isinstance(value, list) for value in self.values):
            raise StudyError(f"{where}: grid values must be single values; search list-valued keys with choice")
        if kind == "choice" and len({json.dumps(value) for value in self.values}) < len(self.values):
            raise StudyError(f"{where}: choice lists the same value twice (got {self.values})")
        if kind not in ("uniform", "loguniform", "int"):
            return
        low, high = self.bounds
        if not (math.isfinite(low) and math.isfinite(high)):
            raise StudyError(f"{where}: {kind} bounds must be finite (got [{low}, {high}])")
        if low > high:
            raise StudyError(f"{where}: {kind} range is inverted (got [{low}, {high}]; write [low, high])")
        if low == high:
            raise StudyError(f"{where}: {kind} range is empty (got [{low}, {high}]; fix the key in overrides instead)")
        if kind == "loguniform" and low <= 0:
            raise StudyError(f"{where}: loguniform range must be above 0 (got [{low}, {high}]); use uniform")
        if kind == "int" and self.step is not None and self.step != int(self.step):
            raise StudyError(f"{where}: step of an int range must be a whole number (got {self.step})")

    def suggest(self, trial: Any, name: str) -> Any:
        """Draw from an Optuna trial (define-by-run)."""
        kind = self.kind
        if kind in ("choice", "grid") and any(isinstance(value, list) for value in self.values):
            # Optuna's categories are scalars: lists travel as their JSON text and are read back here.
            return json.loads(trial.suggest_categorical(name, [json.dumps(value) for value in self.values]))
        if kind in ("choice", "grid"):
            return trial.suggest_categorical(name, self.values)
        if kind == "int":
            return trial.suggest_int(name, *self.bounds, step=int(self.step or 1))
        return trial.suggest_float(name, *self.bounds, log=kind == "loguniform", step=self.step)

    def extremes(self) -> list[Any]:
        if self.kind in ("choice", "grid"):
            return self.values
        return list(self.bounds)

    def candidates(self) -> list[Any]:
        """The extremes, and every value of an int range of at most MAX_INT_VALUES values."""
        if self.kind == "int":
            low, high = self.bounds
            values = list(range(int(low), int(high) + 1, int(self.step or 1)))
            if len(values) <= MAX_INT_VALUES:
                return values if values[-1] == high else [*values, high]
        return self.extremes()

    def active(self, sampled: dict[str, Any]) -> bool:
        for key, wanted in self.when.items():
            if key not in sampled:
                return False
            allowed = wanted if isinstance(wanted, list) else [wanted]
            if sampled[key] not in allowed:
                return False
        return True


class SearchSpace:
    """An ordered set of parameters; callable as an Optuna define-by-run function."""

    def __init__(self, parameters: dict[str, Parameter]):
        self.parameters = dict(parameters)

    def __call__(self, trial: Any) -> dict[str, Any]:
        """Define-by-run: sample each active parameter in order; return the point as dotted keys."""
        sampled: dict[str, Any] = {}
        for key, parameter in self.parameters.items():
            if parameter.active(sampled):
                sampled[key] = parameter.suggest(trial, key)
        return self.expand(sampled)

    def expand(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """Sampled values -> config overrides (tied `also` keys filled in)."""
        point = dict(sampled)
        for key, value in sampled.items():
            for tied in self.parameters[key].also:
                point[tied] = value
        return point

    def check(self, source: str) -> None:
        seen: list[str] = []
        for key, parameter in self.parameters.items():
            where = f"{source}: space.{key}"
            parameter.check_range(where)
            for condition, wanted in parameter.when.items():
                if condition not in seen:
                    raise StudyError(f"{where}.when: {condition} must be a space key listed before {key}")
                values = self.parameters[condition].values
                for value in wanted if isinstance(wanted, list) else [wanted]:
                    if values and value not in values:
                        raise StudyError(f"{where}.when: {condition} never takes the value {value!r} "
                                         f"(its values: {values})")
            for tied in parameter.also:
                if tied in self.parameters or tied == key:
                    raise StudyError(f"{where}.also: {tied} is searched on its own; tie it or search it")
            seen.append(key)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of grid values, following conditions (inactive keys are left out)."""
        points: list[dict[str, Any]] = [{}]
        for key, parameter in self.parameters.items():
            grown: list[dict[str, Any]] = []
            for point in points:
                if parameter.active(point):
                    grown.extend({**point, key: value} for value in parameter.values)
                else:
                    grown.append(point)
            points = grown
        return points

    def extreme_points(self) -> list[dict[str, Any]]:
        """Points a sampler can reach that a config check must see: each parameter at each of its candidates
        (others at their first extreme), and every combination of extremes while there are few of them.

        Candidates of an int range are all its values while there are few (a head count of 3 between 1 and 8
        fails where 1 and 8 pass); a float range contributes its bounds.
        """
        first = {key: parameter.extremes()[0] for key, parameter in self.parameters.items()}
        if not first:
            return []
        points = [first] + [{**first, key: value} for key, parameter in self.parameters.items()
                            for value in parameter.candidates() if value != first[key]]
        corners = math.prod(len(parameter.extremes()) for parameter in self.parameters.values())
        if corners <= MAX_CORNERS:
            keys = list(self.parameters)
            points += [dict(zip(keys, values))
                       for values in itertools.product(*(self.parameters[key].extremes() for key in keys))]
        unique = {json.dumps(point, sort_keys=True): point for point in points}
        return [self.expand(point) for point in unique.values()]

    def budget_upper_bounds(self) -> dict[str, Any]:
        """The largest budget (loops, epochs) any trial of this space can get."""
        bounds: dict[str, Any] = {}
        for key, parameter in self.parameters.items():
            keys = [key, *parameter.also]
            for budget_key in BUDGET_KEYS:
                if budget_key in keys:
                    bounds[budget_key] = max(parameter.extremes())
        return bounds

    def describe(self) -> list[str]:
        lines = []
        for key, parameter in self.parameters.items():
            condition = f" when {parameter.when}" if parameter.when else ""
            lines.append(f"{key}: {parameter.kind} {parameter.extremes()}{condition}")
        return lines
