"""What a user sees, in a real browser: the MLflow UI that `ntksweep ui` serves on a finished
sweep, and its report.html — Debian's chromium driven by Playwright through its executable
path. Screenshots go to $NTKSWEEP_TEST_ARTIFACTS (default: test-artifacts/ in the checkout).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from servers import free_port

from ntksweep.analysis.report import make_report
from ntksweep.sweep import run_sweep
from ntksweep.sweep_spec import load_sweep_spec

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("NTKSWEEP_TEST_ARTIFACTS",
                                Path(__file__).parent.parent / "test-artifacts"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    # a test dependency and a Debian package, both installed by .ci/run: their absence is a
    # broken set-up, reported as such rather than skipped
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no browser at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished quick-start-sized sweep (circle, three widths, two seeds), tracked."""
    out = tmp_path_factory.mktemp("browser") / "out"
    spec = load_sweep_spec({"name": "browser", "output_dir": str(out),
                            "description": "a sweep for the browser test – widths 16–64",
                            "base": {"dataset": "circle", "n_train": 16, "n_eval": 16,
                                     "depth": 3, "steps": 5, "checkpoints": 3},
                            "grid": {"width": [16, 32, 64], "seed": [0, 1]}})
    summary = run_sweep(spec, quiet=True, num_cpus=2)   # a local Ray of its own
    assert summary.counts.get("completed") == 6, summary
    return out


@pytest.fixture(scope="module")
def ui_link(sweep):
    """`ntksweep ui OUT` running; the deep link it prints once the server answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ntksweep.cli", "ui", str(sweep), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        for line in proc.stdout:
            if "MLflow UI for sweep" in line:
                break
        else:
            raise AssertionError("ntksweep ui printed no link")
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(30)


def test_mlflow_ui_lands_on_the_sweeps_runs_in_the_model_training_view(browser, ui_link):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(ui_link)
    parent = page.get_by_text("browser", exact=True).last
    parent.wait_for(timeout=60_000)
    # the model-training view: its Runs and Model registry pages, none of GenAI's
    assert page.get_by_role("link", name="Model registry").count() == 1
    assert page.get_by_text("Judges").count() == 0
    assert page.get_by_text("No data available").count() == 0
    # the trials are the parent's child runs, named from their axes
    page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
    names = [f"w{w}-s{s}" for w in (16, 32, 64) for s in (0, 1)]
    for name in names:
        page.get_by_text(name, exact=True).wait_for(timeout=10_000)
    page.screenshot(path=ARTIFACTS / "mlflow_runs.png")
    # the chart view: a dist_inf chart (found by the view's own search: charts outside the
    # viewport are not drawn), its legend readable by run name
    page.locator("label:has(input[type=radio][value=CHART])").click()
    page.get_by_placeholder("Search metric charts").fill("dist_inf")
    page.get_by_text("w16-s0 (dist_inf)").wait_for(timeout=30_000)
    page.screenshot(path=ARTIFACTS / "mlflow_charts.png")
    page.close()


def test_report_page_shows_its_figures_and_exponents(browser, sweep):
    report = make_report(sweep)["html"]
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto(report.resolve().as_uri())
    images = page.locator("img")
    assert images.count() >= 3
    widths = images.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert all(w > 100 for w in widths), widths          # every figure decoded
    body = page.inner_text("body")
    assert "Width exponents" in body and "init_dist_inf" in body and "ntksweep" in body
    assert "browser test – widths 16–64" in body         # the spec as UTF-8 YAML text
    page.screenshot(path=ARTIFACTS / "report.png", full_page=True)
    shutil.copy(report, ARTIFACTS / "report.html")
    page.close()
