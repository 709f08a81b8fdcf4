"""Every summary is per group — every field the sweep varies but width and the seeds — never
one fit over different networks: the CLI's headline, the MLflow parent run's exponents, the
report's tables and figures, and the experiments' checks; and no fit from fewer than three
widths (or depths). Checked on tables whose groups follow known, different power laws, and
on a real two-architecture store."""

import re

import numpy as np
import pandas as pd
import pytest

import ntksweep
from ntksweep import analysis, console, store
from ntksweep.analysis.report import make_report
from ntksweep.trial import TrialCache, run_trial
from ntksweep.trial_spec import TRIAL_FIELDS, TrialSpec

WIDTHS = (16, 64, 256, 1024)


def _table(groups: dict[tuple, float], field: str | tuple[str, ...], widths=WIDTHS,
           seeds: int = 4, **extra) -> pd.DataFrame:
    """A completed-trials table: per group (values of ``field``) init dist_inf = c · n^slope
    with 5 % seed noise, every other spec column at its default."""
    fields = (field,) if isinstance(field, str) else field
    rng = np.random.default_rng(0)
    rows = []
    for values, slope in groups.items():
        values = values if isinstance(values, tuple) else (values,)
        for w in widths:
            for seed in range(seeds):
                spec = {name: f.default for name, f in TRIAL_FIELDS.items()}
                spec.update(zip(fields, values), width=w, seed=seed, **extra)
                value = 2.0 * w ** slope * np.exp(0.05 * rng.standard_normal())
                rows.append({**spec, "status": "completed", "init_dist_inf": value,
                             "final_dist_init": value / 3, "init_lr_sharpness": 0.4})
    return pd.DataFrame(rows)


def test_every_summary_of_a_two_architecture_sweep_is_per_architecture():
    trials = _table({"cnn": -0.5, "resnet": -1.0}, "architecture")
    pooled = analysis.fit_power_law(trials.width, trials.init_dist_inf).slope
    assert -0.9 < pooled < -0.6                          # a number of no network
    exps = analysis.width_exponents(trials).set_index("architecture")
    assert exps.slope["cnn"] == pytest.approx(-0.5, abs=0.05)
    assert exps.slope["resnet"] == pytest.approx(-1.0, abs=0.05)
    numbers = console.sweep_numbers(trials)
    assert "width_exponent_init_dist_inf" not in numbers           # nothing pooled
    assert numbers["width_exponent_init_dist_inf/cnn"] == pytest.approx(exps.slope["cnn"])
    assert numbers["width_exponent_init_dist_inf/resnet"] == pytest.approx(
        exps.slope["resnet"])
    lines = console.headline(trials)
    assert lines[0] == "per group (architecture):" and len(lines) == 3
    assert lines[1].startswith("  cnn: init dist_inf ∝ width^-0.5")
    assert lines[2].startswith("  resnet: init dist_inf ∝ width^-1.0")


def test_a_two_parametrization_sweep_is_split_by_parametrization_and_data():
    trials = _table({("ntk", "digits"): -0.5, ("ntk", "sphere"): -0.6,
                     ("mup", "digits"): -0.1, ("mup", "sphere"): 0.0},
                    ("parametrization", "dataset"))
    exps = analysis.width_exponents(trials)
    assert len(exps) == 4 and set(exps.parametrization) == {"ntk", "mup"}
    lines = console.headline(trials)
    assert lines[0] == "per group (dataset, parametrization):" and len(lines) == 5
    numbers = console.sweep_numbers(trials)
    assert {k for k in numbers if k.startswith("width_exponent")} == {
        f"width_exponent_init_dist_inf{s}/{d} {p}"
        for s in ("", "_lo", "_hi") for d in ("digits", "sphere") for p in ("ntk", "mup")}
    ckpts = trials.assign(t=1.0, dist_init=trials.final_dist_init)
    fig = analysis.fig_over_time(ckpts)
    titles = {ax.get_title() for ax in fig.axes if ax.get_visible()}
    assert titles == {"digits ntk", "digits mup", "sphere ntk", "sphere mup"}


def test_a_single_group_keeps_one_headline_line_and_its_plain_metric():
    trials = _table({"relu": -0.5}, "activation")
    lines = console.headline(trials)
    assert len(lines) == 1 and lines[0].startswith("init dist_inf ∝ width^-0.5")
    assert "95 % CI" in lines[0]
    assert "width_exponent_init_dist_inf" in console.sweep_numbers(trials)


def test_two_widths_give_no_fit_anywhere():
    trials = _table({"cnn": -0.5, "resnet": -1.0}, "architecture", widths=(16, 64))
    exps = analysis.width_exponents(trials)
    assert exps.slope.isna().all() and (exps.note == "only 2 widths: no fit").all()
    assert not any(k.startswith("width_exponent") for k in console.sweep_numbers(trials))
    lines = console.headline(trials)
    assert "no fit" in lines[1] and "∝" not in "".join(lines)
    fig = analysis.fig_dist_vs_width(trials)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert all("2 widths: no fit" in label and "slope" not in label for label in labels)
    assert not [line for line in fig.axes[0].get_lines() if line.get_linestyle() == ":"]


def test_the_report_command_prints_each_groups_exponents():
    """`ntksweep report` prints a line per group and metric: the known slopes (−0.5 and
    −1.0 here, under 5 % seed noise) with their 95 % intervals; from two widths, none."""
    trials = _table({"cnn": -0.5, "resnet": -1.0}, "architecture")
    exps = pd.concat([analysis.width_exponents(trials, metric)
                      for metric in ("init_dist_inf", "final_dist_init")])
    lines = console.exponent_lines(exps)
    assert lines[0] == "width exponents (95 % CI):" and len(lines) == 5
    for line in lines[1:]:
        fit = re.fullmatch(r"  (\w+), .*: \w+ ∝ width\^(\S+) \[(\S+), (\S+)\], "
                           r"widths 16–1024, 16 trials", line)
        assert fit, line
        truth = {"cnn": -0.5, "resnet": -1.0}[fit[1]]
        slope, lo, hi = map(float, fit.groups()[1:])
        assert abs(slope - truth) < 0.05 and lo < slope < hi, line
    two = analysis.width_exponents(_table({"cnn": -0.5}, "architecture", widths=(16, 64)))
    assert "no exponent (only 2 widths: no fit)" in console.exponent_lines(two)[1]
    assert console.exponent_lines(exps, limit=1)[-1] == "  … and 3 more in the report's tables"


def test_a_depth_trend_needs_three_depths_and_is_per_group():
    two = pd.concat([_table({"cnn": -0.5, "resnet": -0.5}, "architecture", depth=d)
                     for d in (3, 4)])
    assert analysis.depth_trend(two).empty
    three = pd.concat([_table({"cnn": -0.5, "resnet": -0.5}, "architecture", depth=d)
                       .assign(init_dist_inf=lambda t, d=d: t.init_dist_inf * d ** 0.5)
                       for d in (2, 4, 8)])
    trend = analysis.depth_trend(three)
    assert len(trend) == 2 * len(WIDTHS) and set(trend.architecture) == {"cnn", "resnet"}
    assert np.allclose(trend.depth_slope, 0.5, atol=0.1)
    fig = analysis.fig_depth_width_heatmap(three)
    assert sum(ax.get_visible() and bool(ax.images) for ax in fig.axes) == 2


def test_groups_near_the_edge_of_stability_are_named():
    trials = _table({"cnn": -0.5, "resnet": -0.5}, "architecture")
    trials.loc[trials.architecture == "resnet", "init_lr_sharpness"] = 1.24
    notes = console.stability_notes(trials)
    assert len(notes) == 1 and notes[0].startswith("  resnet: 2ηλ_max(Θ₀)/N 1.24 (median; "
                                                   "up to 1.24), near")
    narrow = trials.assign(init_lr_sharpness=0.4)           # one narrow net's draw: not
    narrow.loc[0, "init_lr_sharpness"] = 2.5                 # the group's step size
    assert console.stability_notes(narrow) == []
    trials.loc[trials.architecture == "resnet", "init_lr_sharpness"] = 2.5
    assert "past" in console.stability_notes(trials)[0]


def test_a_batch_size_left_null_is_a_group_of_its_own():
    trials = pd.concat([_table({"sgd": -0.5}, "optimizer", batch_size=8),
                        _table({"sgd": -0.5}, "optimizer", batch_size=None)])
    assert len(analysis.width_exponents(trials)) == 2


@pytest.fixture(scope="module")
def two_architecture_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_archs")
    cache = TrialCache()
    for arch in ("cnn", "resnet"):
        for width in (4, 8, 16):
            for seed in (0, 1):
                spec = TrialSpec(dataset="images", dim=4, n_train=8, n_eval=6, depth=3,
                                 width=width, seed=seed, architecture=arch, steps=2,
                                 checkpoints=2, device="cpu")
                store.write_trial(out, "s", spec, run_trial(spec, cache=cache))
    return out


def test_the_report_of_a_real_two_architecture_store_is_per_architecture(two_architecture_store):
    out = two_architecture_store
    trials, _ = ntksweep.load_results(out)
    result = make_report(out)
    exps = result["exponents"]
    for metric in ("init_dist_inf", "final_dist_init"):
        rows = exps[exps.metric == metric].set_index("architecture")
        assert sorted(rows.index) == ["cnn", "resnet"]
        for arch in ("cnn", "resnet"):
            mine = trials[trials.architecture == arch]
            assert rows.slope[arch] == pytest.approx(
                analysis.fit_power_law(mine.width, mine[metric]).slope)
    assert "Depth trend" not in result["html"].read_text()      # one depth: no trend


def test_a_group_without_a_limit_says_so_in_the_headline():
    """Attention with 1/√d scaling has no Θ_∞: its group's line says there is none instead
    of a NaN exponent or NaN seed means."""
    trials = _table({"linear": -0.5, "sqrt": -0.5}, "attention_scaling")
    trials.loc[trials.attention_scaling == "sqrt", "init_dist_inf"] = np.nan
    lines = console.headline(trials)
    assert lines[1].startswith("  linear: init dist_inf ∝ width^-0.5")
    assert lines[2] == "  sqrt: no infinite-width limit to compare with (dist_inf is NaN)"


def test_a_figures_series_split_its_groups_lines_without_merging_them():
    """The report's gap figure draws gap_inf and gap_lin as a series of each group's lines:
    a sweep over two activations gets four lines, never an activation's two pooled."""
    trials = _table({"relu": -0.5, "erf": -1.0}, "activation")
    gaps = pd.concat([trials.assign(gap="gap_inf", final_gap=trials.init_dist_inf),
                      trials.assign(gap="gap_lin", final_gap=trials.init_dist_inf / 10)])
    fig = analysis.fig_dist_vs_width(gaps, "final_gap", series=("gap",))
    labels = sorted(t.get_text().split(":")[0] for t in fig.axes[0].get_legend().get_texts())
    assert len(labels) == 4 and {lab.split(", ")[-1] for lab in labels} == {"gap_inf",
                                                                           "gap_lin"}
    assert sum("relu" in lab for lab in labels) == 2 and sum("erf" in lab for lab in labels) == 2
