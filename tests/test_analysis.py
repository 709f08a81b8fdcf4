"""Analysis and experiments: the physics a correct sweep must show (fitted exponents, depth
trend, Jacot Fig. 1 at CPU scale), fits against known power laws, every experiment spec in
smoke mode, and a browser-free check of the HTML report."""

import base64
import html
import html.parser
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ntksweep
from ntksweep import analysis, store
from ntksweep.analysis import jacot
from ntksweep.sweep import run_sweep
from ntksweep.sweep_spec import load_sweep_spec
from ntksweep.trial import TrialCache, run_trial
from ntksweep.trial_spec import TrialSpec

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
QUICKSTART = Path(ntksweep.__file__).parent / "specs" / "quickstart.yaml"  # the embedded default


def spec_path(name: str) -> Path:
    return QUICKSTART if name == "quickstart" else EXPERIMENTS / f"{name}.yaml"
SLOPE_TOL = 0.1


def init_trials(tmp_path, widths, depths, seeds, **kw):
    cache = TrialCache()
    base = dict(dataset="sphere", dim=4, n_train=8, n_eval=24, steps=1, checkpoints=2,
                bias_std=0.1, device="cpu", **kw)
    for w in widths:
        for d in depths:
            for s in seeds:
                spec = TrialSpec(width=w, depth=d, seed=s, **base)
                store.write_trial(tmp_path, "t", spec, run_trial(spec, cache=cache))
    return ntksweep.load_results(tmp_path)[0]


def test_power_law_fit_recovers_a_known_exponent():
    rng = np.random.default_rng(0)
    x = np.repeat([64, 128, 256, 512, 1024], 8)
    y = 3.0 * x ** -0.5 * np.exp(0.05 * rng.standard_normal(len(x)))
    fit = analysis.fit_power_law(x, y)
    assert fit.slope_lo < -0.5 < fit.slope_hi and fit.slope_hi - fit.slope_lo < 0.1
    mean, lo, hi = analysis.bootstrap_ci(rng.normal(2.0, 1.0, 400))
    assert lo < 2.0 < hi and lo < mean < hi


def test_init_distance_slope_is_minus_one_half(tmp_path):
    trials = init_trials(tmp_path, [64, 128, 256, 512, 1024], [3], range(8), activation="relu")
    exps = analysis.width_exponents(trials, "init_dist_inf")
    slope = exps.slope.item()
    assert abs(slope + 0.5) < SLOPE_TOL, exps


def test_init_distance_grows_with_depth(tmp_path):
    # at the critical (He) initialisation σ_w² = 2, where Hanin & Nica's √(L/n) applies;
    # at σ_w = 1 ReLU nets are in the ordered phase and the growth saturates by L ≈ 6
    trials = init_trials(tmp_path, [256], [2, 4, 8], range(8), activation="relu",
                         weight_std=2**0.5)
    means = trials.groupby("depth").init_dist_inf.mean()
    assert means[2] < means[4] < means[8], means
    trend = analysis.depth_trend(trials)
    assert trend.depth_slope.item() > 0


def _run_smoke(name, tmp_path):
    spec = load_sweep_spec(spec_path(name), {"output_dir": str(tmp_path / name)},
                           smoke=True)
    summary = run_sweep(spec, quiet=True)
    assert summary.counts.get("failed", 0) == 0, summary
    return summary.out_dir


def _analyze():
    mod = importlib.util.spec_from_file_location("analyze", EXPERIMENTS / "analyze.py")
    analyze = importlib.util.module_from_spec(mod)
    mod.loader.exec_module(analyze)
    return analyze.run


class _Checker(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.images = [], []

    def handle_starttag(self, tag, attrs):
        if tag not in ("img", "meta", "br"):
            self.stack.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
        self.stack.pop()


def check_report(page: Path, expected_figures: int):
    checker = _Checker()
    checker.feed(page.read_text())
    assert checker.stack == []                 # every element closed, properly nested
    assert len(checker.images) >= expected_figures
    for src in checker.images:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64"
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"


def _checked(name, tmp_path):
    """Run the spec's smoke version and check it against its Expected: lines: all pass."""
    out = _run_smoke(name, tmp_path)
    result = _analyze()(str(spec_path(name)), out=out, report=True)
    assert result["expected"], "the spec has machine-checkable Expected: lines"
    verdicts = {c["text"]: (c["verdict"], c["value"]) for c in result["expected"]}
    assert all(v == "PASS" for v, _ in verdicts.values()), verdicts
    return result


def test_jacot_fig1_at_cpu_scale(ray_local, tmp_path):
    result = _checked("jacot2018_fig1", tmp_path)   # Θ_0 on Θ_∞; dist_init(T) ≈ O(1/n)
    checks = result["figures"]
    narrow, wide = min(checks), max(checks)
    assert checks[wide]["dist_init_T"] < checks[narrow]["dist_init_T"], checks
    names = {p.stem for p in result["report"]["figures"]}
    assert {"jacot_fig1", "dist_inf_vs_width", "dist_init_over_time", "gaps_vs_width",
            "eigenvalues_vs_width", "dist_inf_over_time", "loss_over_time"} <= names
    check_report(result["report"]["html"], len(names))
    # every figure says what it plots and what to look for, on the page under it
    page = html.unescape(result["report"]["html"].read_text())
    for name, caption in result["report"]["captions"].items():
        assert len(caption) > 80 and name not in caption, (name, caption)
        assert caption in page, name


def test_jacot_fig2_at_cpu_scale(ray_local, tmp_path):
    # the wide network's seed spread matches the infinite-width Gaussian's, and its median
    # stays inside that Gaussian's 10–90 % band (the spec's Expected: lines)
    result = _checked("jacot2018_fig2", tmp_path)
    assert "jacot_fig2" in {p.stem for p in result["report"]["figures"]}
    check_report(result["report"]["html"], len(result["report"]["figures"]))


@pytest.mark.parametrize("name", ["quickstart", "width_depth_scaling", "digits",
                                  "architectures", "lazy_vs_rich"])
def test_every_experiment_runs_in_smoke_mode(ray_local, tmp_path, name):
    out = _run_smoke(name, tmp_path)
    result = _analyze()(out, report=True)
    figures = result["report"]["figures"]
    assert figures and all(p.exists() and p.with_suffix(".svg").exists() for p in figures)
    check_report(result["report"]["html"], len(figures))
    trials, ckpts = ntksweep.load_results(out)
    assert len(trials) == len(load_sweep_spec(spec_path(name), smoke=True).trials())
    if name == "width_depth_scaling":
        assert {"depth_width_heatmap"} <= {p.stem for p in figures}
    if name == "lazy_vs_rich":    # the coordinate check and test loss per parametrization
        assert {"test_loss", "coord_check"} <= {p.stem for p in figures}
        assert set(trials.parametrization) == {"ntk", "mup"}
        # from a real sweep: under ntk the kernel's movement falls with width (slope
        # ≤ −0.5), under μP it does not vanish (slope ≥ −0.15); so do the coordinates'
        checks = _analyze()(str(spec_path(name)), out=out)["expected"]
        moved = {c["text"]: c["verdict"] for c in checks if "dist_init" in c["text"]
                 or "coord_hidden" in c["text"]}
        assert len(moved) == 4 and set(moved.values()) == {"PASS"}, checks
        # and under ntk the nets' test loss comes closer to the Θ_∞ linear model's with width
        ntk = trials[trials.parametrization == "ntk"].assign(
            gap=lambda t: (t.final_test_loss - t.final_test_loss_gd_inf).abs()
            / t.final_test_loss_gd_inf)
        gaps = ntk.groupby(["dataset", "width"]).gap.mean().unstack()
        assert (gaps[gaps.columns.max()] < gaps[gaps.columns.min()]).all(), gaps
    if name == "architectures":   # the trained nets against kernel regression with Θ_∞
        assert {"test_acc", "coord_check"} <= {p.stem for p in figures}
        page = result["report"]["html"].read_text()
        assert "Test acc: trained nets" in page and "kr_inf" in page and "gd_inf" in page


def _analyze_module():
    mod = importlib.util.spec_from_file_location("analyze", EXPERIMENTS / "analyze.py")
    analyze = importlib.util.module_from_spec(mod)
    mod.loader.exec_module(analyze)
    return analyze


def test_expected_lines_are_parsed_and_checked():
    analyze = _analyze_module()
    text = """# Question: x
# Expected: slope(init_dist_inf) in [-0.6, -0.4] where architecture=cnn
# Expected: mean(final_test_acc) in [0.9, 1.0]
# Expected: max(no_such_column) in [0, 1]
# Expected: the prose kind, which is not a check
name: x
"""
    checks = analyze.expected_lines(text)
    assert [c["stat"] for c in checks] == ["slope", "mean", "max"]
    assert checks[0]["where"] == {"architecture": "cnn"} and checks[0]["lo"] == -0.6
    widths = np.repeat([16, 64, 256], 2)
    trials = pd.DataFrame({"architecture": ["cnn", "mlp"] * 3, "width": widths,
                           "init_dist_inf": 3.0 * widths ** np.where(
                               np.arange(6) % 2, -1.0, -0.5),
                           "final_test_acc": [0.8, 0.85] * 3})
    values = [analyze.evaluate(c, trials, {}) for c in checks]
    assert values[0] == pytest.approx(-0.5)        # only the cnn rows: the mlp's slope is −1
    # per architecture, never pooled (0.825 belongs to no network); the worst one decides
    assert analyze.evaluate_groups(checks[1], trials, {}) == [("cnn", pytest.approx(0.8)),
                                                              ("mlp", pytest.approx(0.85))]
    assert values[1] == pytest.approx(0.8)         # outside [0.9, 1]: a FAIL
    assert np.isnan(values[2])                     # SKIP
    two = trials[trials.width < 256]               # two widths: no fit, and the slope SKIPs
    assert np.isnan(analyze.evaluate(checks[0], two, {}))
    two_point = {**checks[0], "stat": "two_point_slope"}
    assert analyze.evaluate(two_point, two, {}) == pytest.approx(-0.5)


def test_the_seed_spread_checks_read_the_coefficient_of_variation():
    """Seeds drawn at CV = 0.4·n^(−½) (±, so the spread is exact): the spread's width slope is
    −½ and its mean the mean of the three CVs; two seeds are not a spread."""
    analyze = _analyze_module()
    widths = np.array([16, 64, 256])
    cv = 0.4 * widths ** -0.5
    rows = [{"width": int(n), "seed": s, "init_lr_sharpness": 2.0 * (1 + sign * c)}
            for n, c in zip(widths, cv) for s, sign in enumerate((-1, 0, 1))]
    trials = pd.DataFrame(rows)
    check = {"stat": "spread_slope", "col": "init_lr_sharpness", "where": {}, "lo": -1,
             "hi": 0}
    assert analyze.evaluate(check, trials, {}) == pytest.approx(-0.5)
    assert analyze.evaluate({**check, "stat": "spread"}, trials, {}) == pytest.approx(cv.mean())
    assert np.isnan(analyze.evaluate(check, trials[trials.seed < 2], {}))


def test_analyze_explains_itself():
    script = str(EXPERIMENTS / "analyze.py")
    shown = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "Expected:" in shown.stdout
    bare = subprocess.run([sys.executable, script], capture_output=True, text=True)
    assert bare.returncode == 2 and "usage" in bare.stderr and "Traceback" not in bare.stderr


def test_every_experiment_spec_is_documented_and_valid():
    for path in [*sorted(EXPERIMENTS.glob("*.yaml")), QUICKSTART]:
        lines = path.read_text().split("\n")
        head = lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))]
        comments = "\n".join(head)
        for needle in ("Question", "ntksweep run", "Runtime", "Expected"):
            assert needle in comments, (path.name, needle)
        assert load_sweep_spec(path).trials() and load_sweep_spec(path, smoke=True).trials()


def test_seed_summary_shapes():
    df = pd.DataFrame({"width": [1, 1, 2, 2], "v": [1.0, 3.0, 2.0, 2.0]})
    s = analysis.seed_summary(df, ["width"], "v")
    assert list(s["mean"]) == [2.0, 2.0] and list(s["n"]) == [2, 2]


def test_fig1_overlay_uses_each_standard_parametrization_width_limit(tmp_path):
    """A standard-parametrization sweep's NTK grows with width, and so does its limit: the
    overlay must draw the limit of each width's own architecture, not the NTK
    parametrization's."""
    for width in (16, 64):
        spec = TrialSpec(dataset="circle", n_train=4, n_eval=12, width=width, depth=3,
                         parametrization="standard", bias_std=0.1, steps=1, checkpoints=2,
                         keep_kernels="first_last", device="cpu")
        store.write_trial(tmp_path, "sp", spec, run_trial(spec))
    _, ckpts = ntksweep.load_results(tmp_path)
    fig = jacot.fig_jacot_fig1(ckpts, tmp_path)
    drawn = {line.get_label(): line for line in fig.axes[0].get_lines()
             if line.get_label().startswith("Θ∞")}
    assert set(drawn) == {"Θ∞ (n=16)", "Θ∞ (n=64)"}
    for width in (16, 64):
        gamma = drawn[f"Θ∞ (n={width})"].get_xdata()
        x = np.stack([np.cos(gamma), np.sin(gamma)], 1)
        want = ntksweep.analytic_kernels(np.array([[1.0, 0.0]]), x, depth=3, bias_std=0.1,
                                         parametrization="standard", width=width).ntk[0]
        np.testing.assert_allclose(drawn[f"Θ∞ (n={width})"].get_ydata(), want, rtol=1e-12)
