"""The study report as one self-contained HTML page (figures embedded as data: URIs, inline style).

MLflow's artifact viewer shows an HTML artifact on its own, without the files next to it: a page that links
its figures by relative path shows blank images there. Everything the page needs is therefore inside it.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from study.record import outcome_of
from study.report_plots import TrialPoint, data_uri
from study.verdict import Verdict, reading

STYLE = """body{font-family:sans-serif;background:#fff;color:#111;max-width:1200px;margin:1em auto;padding:0 1em}
table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #bbb;padding:3px 8px;text-align:left}
th{background:#eef}td.num{text-align:right;font-variant-numeric:tabular-nums}.note{color:#444}
img{max-width:100%;border:1px solid #ddd}.pruned,.stopped{color:#b35900}.failed{color:#b00}"""
PARAM_COLUMNS = (("cross_attention.image_scale.learnable", "image scale learnable"),
                 ("cross_attention.image_scale.init", "image scale"),
                 ("cross_attention.text_scale.learnable", "text scale learnable"),
                 ("cross_attention.text_scale.init", "text scale"),
                 ("feedback.loops", "loops"), ("optim.text_lr", "text lr"), ("optim.image_lr", "image lr"))
escape = html.escape


def _number(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2e}"
    return escape(str(value))


def _param_cell(params: dict[str, Any], key: str, baseline: bool = False) -> str:
    """A param as the table shows it: scales of a run without cross-attention are 'off', a learnable scale's
    value is where it starts."""
    if baseline and key.startswith("cross_attention."):
        return _cell("off")
    if key.endswith("_scale.init") and params.get(key.replace(".init", ".learnable")) is True:
        return _cell(f"learns from {_number(params.get(key))}")
    return _cell(_number(params.get(key)))


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(rows_cell for rows_cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(text: str, css: str = "") -> str:
    return f"<td class='{css}'>{text}</td>" if css else f"<td>{text}</td>"


@dataclass
class ReportPage:
    name: str
    metric: str
    mode: str
    runs: list
    points: list[TrialPoint]
    best: Any  # the best completed searched run, or None
    baseline: Any  # the baseline run, or None
    verdict: Verdict | None
    class_rows: list
    figures: dict[str, bytes]
    importance_note: str
    parts: list[str] = field(default_factory=list)

    def render(self) -> str:
        self.parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(self.name)}</title>"
                      f"<style>{STYLE}</style></head><body><h1>Study {escape(self.name)}</h1>"]
        self.summary()
        self.confirmed()
        self.section("Objective against the cross-attention scale", "objective_vs_scale",
                     "Filled circles ran their whole schedule; hollow squares were pruned by ASHA and hollow "
                     "triangles stopped by the gradient guard, at the rung given in the table below (their value "
                     "is from that earlier point, so it is not comparable with a final value). Labels are MLflow "
                     "run names.")
        self.section("Objective against loops and learning rates", "objective_vs_loops_and_lrs", "")
        self.section("Every trial, in start order", "optimization_history", "")
        self.trials_table()
        self.section("Parameter importances", "param_importances", self.importance_note)
        self.class_table()
        self.limits()
        self.parts.append("</body></html>")
        return "\n".join(self.parts)

    def summary(self) -> None:
        counts: dict[str, int] = {}
        for run in self.runs:
            outcome = outcome_of(run)
            counts[outcome] = counts.get(outcome, 0) + 1
        counted = ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))
        lines = [f"Objective: <b>{escape(self.metric)}</b> ({self.mode}). Search: {len(self.runs)} trials "
                 f"({counted}); {len(self.points)} produced a value at some rung."]
        for label, run in (("Best completed search trial (one seed)", self.best), ("Baseline", self.baseline)):
            if run is not None:
                lines.append(f"{label}: {escape(run.info.run_name)}, {escape(self.metric)} = "
                             f"{run.data.metrics[self.metric]:.2f}.")
        self.parts.append("".join(f"<p>{line}</p>" for line in lines))

    def confirmed(self) -> None:
        self.parts.append("<h2>Confirmed on fresh seeds</h2>")
        verdict = self.verdict
        if verdict is None or not verdict.rows:
            self.parts.append("<p class='note'>No confirmation ran (spec key <code>confirm</code>), so every value "
                              "in this report is one seed's: read differences smaller than the spread between "
                              "seeds as noise.</p>")
            return
        self.parts.append(
            f"<p>The top {len(verdict.rows)} configurations of the search ran again on seeds "
            f"{', '.join(map(str, verdict.seeds))} (never used by the search), each beside its matched twin "
            "(the same configuration with cross-attention off) and the base model on the same seeds "
            f"({verdict.finished} of {verdict.planned} runs finished). Means with 95% t-intervals over seeds; "
            "the paired difference is, per seed, on minus off, then averaged: an interval that excludes 0 is an "
            "effect of cross-attention for that configuration.</p>")
        header = ["rank", "from trial", *[title for _, title in PARAM_COLUMNS], "seeds",
                  "on: mean [95% CI]", "matched off", "on - off (paired)", "reading"]
        rows = [[_cell(str(row.rank)), _cell(escape(row.source)),
                 *[_param_cell(self.source_params(row.source), key) for key, _ in PARAM_COLUMNS],
                 _cell(str(row.on.n), "num"), _cell(row.on.show(), "num"), _cell(row.twin.show(), "num"),
                 _cell(row.difference.show(), "num"), _cell(escape(reading(row.difference, verdict.mode)))]
                for row in verdict.rows]
        rows.append([_cell("base"), _cell("base model"), *[_cell("") for _ in PARAM_COLUMNS],
                     _cell(str(verdict.base.n), "num"), _cell(verdict.base.show(), "num"), _cell(""), _cell(""),
                     _cell("cross-attention off, the spec's base config")])
        self.parts.append(_table(header, rows))
        self.image("confirmed")
        self.parts.append(self.per_seed_table(verdict))

    def source_params(self, source: str) -> dict[str, Any]:
        point = next((p for p in self.points if p.name == source), None)
        return point.params if point is not None else {}

    def per_seed_table(self, verdict: Verdict) -> str:
        header = ["rank", "seed", "on", "matched off", "on - off"]
        rows = []
        for row in verdict.rows:
            for seed, values in row.values.items():
                on, off = values.get("confirm"), values.get("twin")
                difference = on - off if on is not None and off is not None else None
                rows.append([_cell(str(row.rank)), _cell(str(seed)), _cell(_number(on), "num"),
                             _cell(_number(off), "num"), _cell(_number(difference), "num")])
        return "<p>Per seed (the pairs behind the differences):</p>" + _table(header, rows)

    def section(self, title: str, figure: str, note: str) -> None:
        self.parts.append(f"<h2>{escape(title)}</h2>")
        if note:
            self.parts.append(f"<p class='note'>{escape(note)}</p>")
        self.image(figure)

    def image(self, figure: str) -> None:
        if figure in self.figures:
            self.parts.append(f"<img alt='{figure}' src='{data_uri(self.figures[figure])}'>")

    def trials_table(self) -> None:
        header = ["trial (MLflow run)", "outcome", "loop reached", self.metric,
                  *[title for _, title in PARAM_COLUMNS]]
        rows = []
        for point in self.points:
            outcome = "baseline" if point.baseline else point.outcome
            rows.append([_cell(escape(point.name)), _cell(escape(outcome), point.outcome),
                         _cell(_number(point.loop), "num"), _cell(_number(point.value), "num"),
                         *[_param_cell(point.params, key, point.baseline) for key, _ in PARAM_COLUMNS]])
        self.parts.append("<h2>All trials with a value</h2>" + _table(header, rows))

    def class_table(self) -> None:
        if not self.class_rows:
            return
        header = ["class", "metric", "best search trial", "baseline", "difference"]
        rows = [[_cell(escape(cls)), _cell(name), _cell(_number(value), "num"), _cell(_number(base), "num"),
                 _cell(f"{value - base:+.2f}" if base is not None else "-", "num")]
                for cls, name, value, base in self.class_rows]
        self.parts.append("<h2>Best search trial vs baseline per class (one seed each)</h2>" + _table(header, rows))

    def limits(self) -> None:
        notes = ["Search values are single-seed; only the confirmed table averages over seeds.",
                 "A pruned or stopped trial's value is from the rung where it stopped, not a final value.",
                 self.importance_note]
        verdict = self.verdict
        if verdict is not None:
            unclear = [row.rank for row in verdict.rows if not row.difference.excludes_zero()]
            if unclear:
                notes.append(f"For rank(s) {', '.join(map(str, unclear))} the paired interval contains 0 (or has "
                             "too few pairs): with these seeds the report cannot tell whether cross-attention "
                             "helps there.")
            if verdict.seeds and len(verdict.seeds) < 5:
                notes.append(f"{len(verdict.seeds)} seeds give wide t-intervals; more seeds (confirm.seeds) narrow "
                             "them.")
        items = "".join(f"<li>{escape(note)}</li>" for note in notes if note)
        self.parts.append(f"<h2>What this report cannot tell</h2><ul>{items}</ul>")
