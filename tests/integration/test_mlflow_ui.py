"""The printed link, opened in a real browser (Debian's headless Chromium driven by Playwright), shows what a
practitioner asks first: the study's runs in MLflow's model-training pages (not GenAI), best objective first,
with the objective, the searched param and each trial's outcome as columns whose labels are whole, and pruned
trials as pruned (FINISHED, not killed).

The objective is `lr/image` (proportional to the sampled image_lr), so ASHA's decisions are known: the baseline
runs first with the base's image_lr (3e-3), and both searched trials, with lower ones, fall below the loop-1
rung's cutoff (reduction factor 4: the top quarter goes on) and are pruned.

Skipped only where /usr/bin/chromium is absent outside CI (.ci/run installs it: docker/ci-install-chromium.sh);
under CI=true its absence fails the test.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from study.launch import run_study
from study.spec import load_study
from study.record import find_parent_run, trial_runs
from study.tracking import header_width

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
METRIC = "lr/image"
STATUS_COLUMN = "runDateAndNestInfo"  # the "Created" column, where the UI draws the run's status icon


def require_chromium() -> None:
    if CHROMIUM.is_file():
        return
    message = f"{CHROMIUM} is absent: install Debian's chromium (bash docker/ci-install-chromium.sh)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# Each column header the grid rendered: {column id: [its width in px, whether its label is cut]}
HEADERS_JS = """() => Object.fromEntries([...document.querySelectorAll('.ag-header-cell[col-id]')].map(cell => {
    const label = cell.querySelector('[data-testid^=sort-header-]');
    const box = label ? label.parentElement : cell;
    return [cell.getAttribute('col-id'), [cell.getBoundingClientRect().width, box.scrollWidth > box.clientWidth]];
}))"""


def open_page(link: str, screenshot: Path, shown: list[str]) -> tuple[str, list[tuple[str, str]], dict]:
    """The page's text, the runs table's rows (top to bottom: the text of all its cells, and the markup of its
    run status icon) and its column headers (HEADERS_JS), once the table shows every text of `shown` (rows and
    column headers); a screenshot is kept for a person to look at."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="chromium-"), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1920, "height": 900})
        try:
            page = browser.new_page()
            page.goto(link)
            for text in shown:  # the grid fills in after the footer and the view's columns appear
                page.get_by_text(text, exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=str(screenshot))
            texts: dict[int, list[str]] = {}  # the grid renders a row's pinned and scrolling parts apart
            icons: dict[int, str] = {}
            for row in page.locator("[role=row][row-index]").all():
                index = int(row.get_attribute("row-index"))
                texts.setdefault(index, []).append(row.inner_text())
                status = row.locator(f"[col-id={STATUS_COLUMN}] svg")
                if status.count():
                    icons[index] = status.first.inner_html()
            rows = [(" ".join(texts[index]).replace("\n", " ") + " ", icons.get(index, "")) for index in sorted(texts)]
            return page.inner_text("body"), rows, page.evaluate(HEADERS_JS)
        finally:
            browser.close()


@pytest.mark.slow
def test_printed_link_shows_the_study_best_first_with_outcomes(ray_cluster, mlflow_uri, study_home, write_spec,
                                                               tmp_path):
    require_chromium()
    spec = write_spec("ui-smoke", space={"optim.image_lr": {"grid": [3.0e-4, 1.0e-3]}},
                      searcher={"kind": "grid"}, baseline=True, objective={"metric": METRIC, "mode": "max"},
                      scheduler={"kind": "asha", "time_attr": "loop", "grace_period": 1, "reduction_factor": 4},
                      trials={"num_samples": None, "max_concurrent": 1, "resources": {"cpu": 1, "gpu": 0},
                              "max_failures": 0})
    printed: list[str] = []
    run_study(load_study(spec), tracking_uri=mlflow_uri, echo=lambda *args, **kwargs: printed.append(str(args[0])))
    links = [line.split("runs:", 1)[1].strip() for line in printed if line.strip().startswith("runs:")]
    assert links and "viewStateShareKey=ui-smoke" in links[0], printed

    client = MlflowClient(mlflow_uri)
    runs = trial_runs(client, find_parent_run(client, "ui-smoke"))
    assert sorted(run.data.tags["aaclip.outcome"] for run in runs) == ["completed", "pruned", "pruned"]
    assert all(run.info.status == "FINISHED" for run in runs)  # a pruned trial did what ASHA asked of it
    screenshot = Path(os.environ.get("AACLIP_UI_SCREENSHOT", tmp_path / "runs.png"))
    text, rows, headers = open_page(links[0], screenshot, [METRIC, "aaclip.outcome", "optim.image_lr",
                                                          *(run.info.run_name for run in runs)])

    assert "Runs" in text and "Model registry" in text and "Judges" not in text  # the model-training pages
    for column in (f"metrics.`{METRIC}`", "tags.`aaclip.outcome`", "tags.`aaclip.pruned_at`",
                   "params.`optim.image_lr`"):
        width, cut = headers[column]  # the chosen columns, sized by the view so that no label is cut
        assert width == header_width(column) and not cut, (column, headers[column])
    shown = [(run, row, icon) for row, icon in rows for run in runs if f" {run.info.run_name} " in f" {row}"]
    ranked = sorted(runs, key=lambda run: -run.data.metrics.get(METRIC, float("-inf")))
    assert [run.info.run_name for run, _, _ in shown] == [run.info.run_name for run in ranked], rows  # best first
    for run, row, _ in shown:
        # each row shows its recorded outcome (completed, pruned) and objective (as JavaScript prints numbers)
        assert f" {run.data.tags['aaclip.outcome']} " in row, row
        assert np.format_float_positional(run.data.metrics[METRIC], trim="-")[:7] in row, row
    icons = {run.data.tags["aaclip.outcome"]: icon for run, _, icon in shown}
    assert icons["pruned"] and icons["pruned"] == icons["completed"], icons  # FINISHED: no red Killed cross
