"""The printed link, opened in a real browser (Debian's headless Chromium driven by Playwright), shows what a
practitioner asks first: the study's runs in MLflow's model-training table, best objective first, with the
objective, the searched param and each trial's outcome as columns.

Skipped only where /usr/bin/chromium is absent outside CI (.ci/run installs it: docker/ci-install-chromium.sh);
under CI=true its absence fails the test.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.launch import run_study
from study.spec import load_study
from study.record import find_parent_run, trial_runs

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
METRIC = "val/pixel_auroc"


def require_chromium() -> None:
    if CHROMIUM.is_file():
        return
    message = f"{CHROMIUM} is absent: install Debian's chromium (bash docker/ci-install-chromium.sh)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def open_page(link: str, screenshot: Path, shown: list[str]) -> tuple[str, list[str]]:
    """The page's text and the runs table's rows (top to bottom, each the text of all its cells) once the table
    shows every text of `shown` (rows and column headers); a screenshot is kept for a person to look at."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="chromium-"), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1600, "height": 900})
        try:
            page = browser.new_page()
            page.goto(link)
            for text in shown:  # the grid fills in after the footer and the view's columns appear
                page.get_by_text(text, exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=str(screenshot))
            cells: dict[int, list[str]] = {}  # the grid renders a row's pinned and scrolling parts apart
            for row in page.locator("[role=row][row-index]").all():
                cells.setdefault(int(row.get_attribute("row-index")), []).append(row.inner_text())
            return page.inner_text("body"), [" ".join(cells[index]).replace("\n", " ") for index in sorted(cells)]
        finally:
            browser.close()


@pytest.mark.slow
def test_printed_link_shows_the_study_best_first_with_outcomes(ray_cluster, mlflow_uri, study_home, write_spec,
                                                               tmp_path):
    require_chromium()
    spec = write_spec("ui-smoke", space={"optim.image_lr": {"grid": [1.0e-3, 3.0e-3]}},
                      searcher={"kind": "grid"}, baseline=True,
                      trials={"num_samples": None, "max_concurrent": 1, "resources": {"cpu": 1, "gpu": 0},
                              "max_failures": 0})
    printed: list[str] = []
    run_study(load_study(spec), tracking_uri=mlflow_uri, echo=lambda *args, **kwargs: printed.append(str(args[0])))
    links = [line.split("runs:", 1)[1].strip() for line in printed if line.strip().startswith("runs:")]
    assert links and "viewStateShareKey=ui-smoke" in links[0], printed

    client = MlflowClient(mlflow_uri)
    runs = trial_runs(client, find_parent_run(client, "ui-smoke"))
    assert len(runs) == 3
    screenshot = Path(os.environ.get("AACLIP_UI_SCREENSHOT", tmp_path / "runs.png"))
    text, rows = open_page(links[0], screenshot, [METRIC, "aaclip.outcome", *(run.info.run_name for run in runs)])

    assert "Training runs" in text  # the model-training table, not the GenAI overview
    assert METRIC in text and "optim.image_lr" in text and "aaclip.outcome" in text  # the chosen columns
    shown = [next(run for run in runs if f"{run.info.run_name} " in f"{row} ") for row in rows
             if any(f"{run.info.run_name} " in f"{row} " for run in runs)]
    ranked = sorted(runs, key=lambda run: -run.data.metrics.get(METRIC, float("-inf")))
    assert [run.info.run_name for run in shown] == [run.info.run_name for run in ranked], rows  # best first
    for run, row in zip(shown, (row for row in rows if any(f"{r.info.run_name} " in f"{row} " for r in runs))):
        # each row shows its recorded outcome (completed, pruned) and objective (the UI shows ~9 digits)
        assert f" {run.data.tags['aaclip.outcome']}" in row, row
        assert f"{run.data.metrics[METRIC]:.6f}"[:8] in row, row
