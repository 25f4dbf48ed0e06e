"""The study report: self-contained, every trial with a value (pruned ones marked, MLflow names), the confirmed
table with its intervals, and honest about what too few trials cannot tell."""
from __future__ import annotations

import re

from study.report import render_report
from study.space import Parameter, SearchSpace
from study.verdict import compute_verdict
from tests.unit.mlflow_runs import make_run

METRIC = "val/pixel_auroc"


def search_run(name: str, outcome: str, value: float | None, scale: float | None, lr: str,
               baseline: bool = False):
    params = {"cross_attention.image_scale.learnable": "false" if scale is not None else "true",
              "cross_attention.image_scale.init": str(scale if scale is not None else 0.1),
              "optim.image_lr": lr, "feedback.loops": "2", "seed": "111"}
    tags = {"aaclip.role": "trial", "aaclip.outcome": outcome, "aaclip.baseline": str(baseline).lower()}
    metrics = {METRIC: value, "loop": 2.0 if outcome == "completed" else 1.0} if value is not None else {}
    return make_run(name, tags, metrics, params)


def confirm_run(role: str, seed: int, value: float):
    tags = {"aaclip.role": role, "aaclip.confirm_rank": "1" if role != "base" else "0",
            "aaclip.confirm_seed": str(seed), "aaclip.confirm_source": "demo-002", "aaclip.outcome": "completed"}
    return make_run(f"{role}-{seed}", tags, {METRIC: value})


def test_report_is_self_contained_and_shows_every_trial_and_the_verdict(tmp_path):
    space = SearchSpace({"cross_attention.image_scale.learnable": Parameter(choice=[False, True]),
                         "cross_attention.image_scale.init": Parameter(
                             loguniform=(0.01, 1.0), when={"cross_attention.image_scale.learnable": False}),
                         "optim.image_lr": Parameter(loguniform=(1e-4, 1e-2))})
    runs = [search_run("demo-baseline", "completed", 80.0, None, "0.003", baseline=True),
            search_run("demo-001", "completed", 84.0, 0.05, "0.001"),
            search_run("demo-002", "completed", 88.0, None, "0.002"),
            search_run("demo-003", "pruned", 70.5, 0.5, "0.0005"),
            search_run("demo-004", "failed", None, 0.2, "0.004")]
    verdict = compute_verdict([confirm_run("confirm", 112, 87.0), confirm_run("twin", 112, 85.0),
                               confirm_run("confirm", 113, 89.0), confirm_run("twin", 113, 86.5),
                               confirm_run("base", 112, 80.0), confirm_run("base", 113, 81.0)],
                              METRIC, "max", list(space.parameters))
    index = render_report("demo", METRIC, "max", space, runs, verdict, tmp_path)
    page = index.read_text()

    sources = re.findall(r"src='([^']*)'", page)
    assert sources and all(source.startswith("data:image/png;base64,") for source in sources)
    assert {"optimization_history.png", "objective_vs_scale.png", "confirmed.png"} <= {
        path.name for path in tmp_path.glob("*.png")}
    for name in ("demo-baseline", "demo-001", "demo-002", "demo-003"):  # every trial with a value, by run name
        assert f"<td>{name}</td>" in page
    assert "<td>off</td>" in page and "learns from 0.10" in page  # the baseline has no scale; 002 learns its own
    assert "<td class='pruned'>pruned</td>" in page and "demo-004" not in page.split("All trials")[1]
    assert "88.00 [" in page  # the confirmed mean of rank 1 with its interval
    difference = verdict.rows[0].difference
    assert difference.show() in page and "cross-attention" in page
    assert "not shown: they need at least 5 completed" in page  # 2 completed searched trials
