"""The study's verdict, read from the confirmation runs in MLflow (DESIGN §9: a verdict is confirmed).

Each confirmed configuration (its search rank r) ran on the same fresh seeds three ways, tagged on its child
run: `aaclip.role = confirm` (the configuration), `twin` (the same configuration with cross-attention off) and
`base` (the spec's base model, shared by every rank). Per configuration the verdict is

- the mean of the objective over seeds with a 95% t-interval (Student's t, n - 1 degrees of freedom), and
- the paired difference "cross-attention on - matched off": per seed, confirm minus twin; its mean and
  t-interval. Pairing removes the seed's own effect, so the difference is sharper than the two means side by
  side. An interval that excludes 0 says cross-attention changed the objective for this configuration.

Only a run that finished its whole schedule with a finite objective counts; a pair needs both of its runs.
Nothing here imports Ray: status, export and report read the verdict from any machine.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from scipy import stats

from study.record import Tag, final_value, objective_of, runs_with_role, space_keys_of

CONFIRM_ROLES = ("confirm", "twin", "base")
CONFIDENCE = 0.95


@dataclass
class Estimate:
    """Mean of n values with its 95% t-interval (None bounds below 2 values)."""

    n: int
    mean: float | None
    low: float | None
    high: float | None

    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)

    def show(self, digits: int = 2) -> str:
        if self.mean is None:
            return "-"
        if self.low is None:
            return f"{self.mean:.{digits}f} (n={self.n})"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def t_interval(values: list[float], confidence: float = CONFIDENCE) -> Estimate:
    n = len(values)
    if n == 0:
        return Estimate(0, None, None, None)
    mean = sum(values) / n
    if n < 2:
        return Estimate(n, mean, None, None)
    deviation = math.sqrt(sum((value - mean) ** 2 for value in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * deviation / math.sqrt(n)
    return Estimate(n, mean, mean - half, mean + half)


@dataclass
class ConfirmedRow:
    rank: int  # the configuration's rank in the search
    source: str  # the search trial it came from (MLflow run name)
    params: dict[str, Any]  # the searched keys' values
    on: Estimate  # cross-attention on, over seeds
    twin: Estimate  # the matched twin (cross-attention off), over the same seeds
    difference: Estimate  # paired: on - twin, per seed
    values: dict[int, dict[str, float]] = field(default_factory=dict)  # seed -> role -> objective


@dataclass
class Verdict:
    metric: str
    mode: str
    seeds: list[int]
    rows: list[ConfirmedRow]
    base: Estimate  # the base model over the same seeds
    planned: int  # confirmation runs planned (rows x seeds x 2 + seeds)
    finished: int  # of which finished with a value

    def best(self) -> ConfirmedRow | None:
        """The configuration with the best confirmed mean."""
        rated = [row for row in self.rows if row.on.mean is not None]
        if not rated:
            return None
        sign = 1.0 if self.mode == "max" else -1.0
        return max(rated, key=lambda row: sign * row.on.mean)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confirmation_runs(client, parent) -> list:
    """The study's confirmation child runs (every role), oldest first."""
    return [run for role in CONFIRM_ROLES for run in runs_with_role(client, parent, role)]


def compute_verdict(runs: list, metric: str, mode: str, space_keys: list[str] | None = None) -> Verdict | None:
    """The verdict from the confirmation runs' own metrics; None when the study has no confirmation runs."""
    if not runs:
        return None
    seeds = sorted({int(run.data.tags[Tag.CONFIRM_SEED]) for run in runs})
    base = [final_value(run, metric) for run in runs if run.data.tags[Tag.ROLE] == "base"]
    ranks = sorted({int(run.data.tags[Tag.CONFIRM_RANK]) for run in runs if run.data.tags[Tag.ROLE] != "base"})
    by_rank = {rank: [run for run in runs if run.data.tags.get(Tag.CONFIRM_RANK) == str(rank)] for rank in ranks}
    rows = [_row(rank, by_rank[rank], metric, space_keys or []) for rank in ranks]
    finished = sum(final_value(run, metric) is not None for run in runs)
    return Verdict(metric, mode, seeds, rows, t_interval([value for value in base if value is not None]),
                   planned=len(runs), finished=finished)


def _row(rank: int, runs: list, metric: str, space_keys: list[str]) -> ConfirmedRow:
    values: dict[int, dict[str, float]] = {}
    for run in runs:
        value = final_value(run, metric)
        if value is not None:
            values.setdefault(int(run.data.tags[Tag.CONFIRM_SEED]), {})[run.data.tags[Tag.ROLE]] = value
    on = [by_role["confirm"] for by_role in values.values() if "confirm" in by_role]
    twin = [by_role["twin"] for by_role in values.values() if "twin" in by_role]
    paired = [by_role["confirm"] - by_role["twin"] for by_role in values.values()
              if "confirm" in by_role and "twin" in by_role]
    first = next((run for run in runs if run.data.tags[Tag.ROLE] == "confirm"), runs[0])
    params = {key: first.data.params.get(key) for key in space_keys}
    return ConfirmedRow(rank, first.data.tags.get(Tag.CONFIRM_SOURCE, ""), params, t_interval(on),
                        t_interval(twin), t_interval(paired), dict(sorted(values.items())))


def study_verdict(client, parent) -> Verdict | None:
    return compute_verdict(confirmation_runs(client, parent), *objective_of(parent), space_keys_of(parent))


def format_verdict(verdict: Verdict) -> str:
    """The confirmed table as text: one row per configuration, then the base model."""
    header = ["rank", "from trial", "n", "on: mean [95% CI]", "matched off", "on - off (paired)", ""]
    rows = [[str(row.rank), row.source, str(row.on.n), row.on.show(), row.twin.show(), row.difference.show(),
             reading(row.difference, verdict.mode)] for row in verdict.rows]
    rows.append(["base", "base model", str(verdict.base.n), verdict.base.show(), "", "", ""])
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *rows]]
    seeds = ", ".join(str(seed) for seed in verdict.seeds)
    title = (f"confirmed {verdict.metric} on fresh seeds {seeds} ({verdict.finished} of {verdict.planned} runs "
             "finished):")
    return "\n".join([title, *lines])


def reading(difference: Estimate, mode: str) -> str:
    """What a paired difference says, in words (the README explains the table)."""
    if difference.low is None:
        return "too few pairs for an interval"
    if not difference.excludes_zero():
        return "no clear effect (interval contains 0)"
    higher_is_better = mode == "max"
    return "cross-attention helps" if (difference.low > 0) == higher_is_better else "cross-attention hurts"
