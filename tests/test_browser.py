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


WIDTHS = (16, 32, 64, 128, 256, 512)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished quick-start-sized sweep (circle, six widths, two seeds: more runs than the
    ten MLflow shows by default), tracked."""
    out = tmp_path_factory.mktemp("browser") / "out"
    spec = load_sweep_spec({"name": "browser", "output_dir": str(out),
                            "description": "a sweep for the browser test – widths 16–512",
                            "base": {"dataset": "circle", "n_train": 16, "n_eval": 16,
                                     "depth": 3, "steps": 5, "checkpoints": 3},
                            "grid": {"width": list(WIDTHS), "seed": [0, 1]}})
    summary = run_sweep(spec, quiet=True, num_cpus=2)   # a local Ray of its own
    assert summary.counts.get("completed") == 12, summary
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


def _model_training_layout(page) -> None:
    """MLflow 3's model-training navigation (Runs, Model registry), none of GenAI's."""
    assert page.get_by_role("link", name="Model registry").count() == 1
    assert page.get_by_text("Judges").count() == 0
    assert page.get_by_text("Evaluation runs").count() == 0


def test_mlflow_ui_lands_on_the_sweeps_runs_in_the_model_training_view(browser, ui_link):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(ui_link)
    page.get_by_text("w16-s0", exact=True).wait_for(timeout=60_000)
    _model_training_layout(page)
    assert page.get_by_text("No data available").count() == 0
    # the sweep's view: its trials grouped by width, every run listed, named from its axes,
    # each trial's summary as metric columns
    for w in WIDTHS:
        assert page.get_by_text(f"Group: {w}", exact=True).count() == 1, w
        for s in (0, 1):
            assert page.get_by_text(f"w{w}-s{s}", exact=True).count() == 1, (w, s)
    for column in ("init_dist_inf", "final_dist_inf", "final_dist_init"):
        assert page.locator(f".ag-header-cell:has-text('{column}')").count() >= 1, column
    page.screenshot(path=ARTIFACTS / "mlflow_runs.png")
    # the chart view: all twelve trials drawn (MLflow hides all but the first ten unless
    # told), the dist_inf chart found by the view's own search, its lines the widths'
    page.locator("label:has(input[type=radio][value=CHART])").click()
    toggles = page.locator("[role=row]:has-text('-s') input.is-visibility-toggle-checkbox")
    toggles.first.wait_for(state="attached", timeout=30_000)
    assert toggles.count() == 12
    assert toggles.evaluate_all("boxes => boxes.filter(b => !b.checked).length") == 0
    page.get_by_placeholder("Search metric charts").fill("dist_inf")
    page.get_by_text("16 (dist_inf)").first.wait_for(timeout=30_000)
    page.screenshot(path=ARTIFACTS / "mlflow_charts.png")
    # a run's own page keeps the model-training layout (MLflow's default is GenAI's)
    page.locator("label:has(input[type=radio][value=TABLE])").click()
    page.get_by_text("w512-s1", exact=True).click()
    page.get_by_text("About this run").wait_for(timeout=30_000)
    _model_training_layout(page)
    page.screenshot(path=ARTIFACTS / "mlflow_run.png")
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
    assert "look for slopes near −0.5" in body           # captions say what to look for
    assert "browser test – widths 16–512" in body        # the spec as UTF-8 YAML text
    page.screenshot(path=ARTIFACTS / "report.png", full_page=True)
    shutil.copy(report, ARTIFACTS / "report.html")
    page.close()
