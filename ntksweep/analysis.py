"""Analysis over the Parquet store: seed aggregates with bootstrap CIs, power-law fits with
95 % CIs, and the standard figures. Reads Parquet only (never MLflow, never re-runs).

Every figure function takes DataFrames from ``ntksweep.load_results`` and returns a
matplotlib Figure; ``save_figure`` writes PNG and SVG.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written, not shown
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from .store import load_array, spec_from_row  # noqa: E402
from .trial import dataset_for, limit_kernels  # noqa: E402
from .trial_spec import TRIAL_FIELDS, TrialSpec  # noqa: E402

__all__ = ["PowerLaw", "bootstrap_ci", "seed_summary", "fit_power_law", "width_exponents",
           "depth_trend", "fig_dist_vs_width", "fig_dist_over_time", "fig_depth_width_heatmap",
           "circle_kernel_rows", "circle_limit", "fig_jacot_fig1", "fig2_bands",
           "fig_jacot_fig2", "save_figure", "MIN_WIDTHS", "MIN_DEPTHS", "NEAR_EDGE", "REPLICATES",
           "varying_fields", "group_columns", "groups", "group_label", "panel_grid",
           "seed_band", "width_ticks"]

MIN_WIDTHS = 3   # fewer widths give no width exponent: two points always fit a line


@dataclass(frozen=True)
class PowerLaw:
    """y ≈ c · x^slope fitted by least squares on log y vs log x; 95 % CI of the slope."""

    slope: float
    slope_lo: float
    slope_hi: float
    intercept: float
    n_points: int

    def __call__(self, x):
        return np.exp(self.intercept) * np.asarray(x, float) ** self.slope


def bootstrap_ci(values, n_boot: int = 2000, level: float = 0.95, seed: int = 0
                 ) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean over seeds and its percentile-bootstrap interval."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return (np.nan, np.nan, np.nan)
    if len(v) == 1:
        return (float(v[0]), np.nan, np.nan)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n_boot, len(v)))].mean(1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def seed_summary(df: pd.DataFrame, by: list[str], metric: str, **kw) -> pd.DataFrame:
    """One row per group of ``by``: mean of ``metric`` over seeds, bootstrap lo/hi, count."""
    rows = []
    for key, g in df.groupby(by, sort=True, dropna=False):
        mean, lo, hi = bootstrap_ci(g[metric], **kw)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "mean": mean, "lo": lo, "hi": hi, "n": len(g)})
    return pd.DataFrame(rows)


def fit_power_law(x, y, level: float = 0.95) -> PowerLaw:
    """OLS of log y on log x over every (seed) point; the slope's CI from its t interval."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    lx, ly = np.log(x[ok]), np.log(y[ok])
    if len(np.unique(lx)) < 2:
        return PowerLaw(np.nan, np.nan, np.nan, np.nan, int(ok.sum()))
    res = stats.linregress(lx, ly)
    half = stats.t.ppf(0.5 + level / 2, len(lx) - 2) * res.stderr if len(lx) > 2 else np.nan
    return PowerLaw(float(res.slope), float(res.slope - half), float(res.slope + half),
                    float(res.intercept), len(lx))


# Draws of one experiment: every summary pools them (and width is the x axis of the fits).
REPLICATES = ("seed", "data_seed")
_NOT_A_GROUP = ("width", *REPLICATES, "device")   # device: the same measurement anywhere


def varying_fields(trials: pd.DataFrame, exclude: tuple[str, ...] = ()) -> list[str]:
    """The spec fields that take more than one value among ``trials`` (in spec order), but
    for width, the seeds, the device and ``exclude``: what tells a sweep's experiments apart.
    Every summary is made per combination of them — pooling a CNN with a ResNet, or μP with
    the NTK parametrization, gives a number that belongs to no network."""
    return [c for c in TRIAL_FIELDS if c in trials.columns and c not in _NOT_A_GROUP
            and c not in exclude and trials[c].nunique(dropna=False) > 1]


def group_columns(trials: pd.DataFrame, base: tuple[str, ...] = (),
                  exclude: tuple[str, ...] = ()) -> list[str]:
    """The ``base`` columns the table has (they name a group in titles even where they do not
    vary), then every other field the sweep varies (``varying_fields``) but ``exclude``."""
    named = [c for c in base if c in trials.columns and c not in exclude]
    return named + [c for c in varying_fields(trials, exclude) if c not in named]


def groups(trials: pd.DataFrame, by: list[str]):
    """(key tuple, rows) per group of ``by`` in sorted order, null values kept as a group of
    their own (``batch_size: null`` beside ``batch_size: 32``); one group when ``by`` is
    empty."""
    if not by:
        yield (), trials
        return
    for key, g in trials.groupby(by, sort=True, dropna=False):
        yield (key if isinstance(key, tuple) else (key,)), g


def group_label(by: list[str], key, sep: str = " ") -> str:
    """A group's values as a legend or title reads them: ``L=4``, ``lr 0.25``, ``relu``,
    ``bias_std 0.1`` (a name's value alone where it is a word)."""
    key = key if isinstance(key, tuple) else (key,)

    def one(c, v):
        if c == "depth":
            return f"L={v}"
        if isinstance(v, str):
            return v
        return f"{c} {v:g}" if isinstance(v, float) else f"{c} {v}"

    return sep.join(one(c, v) for c, v in zip(by, key)) or "all trials"


def width_exponents(trials: pd.DataFrame, metric: str = "init_dist_inf",
                    by: tuple[str, ...] = ("architecture", "depth", "activation")
                    ) -> pd.DataFrame:
    """The log-log slope of ``metric`` against width per group (the ``by`` columns and every
    other field the sweep varies), with its 95 % CI. Fewer than ``MIN_WIDTHS`` widths give no
    fit (NaN and a note): two widths always fit a line."""
    rows = []
    by = group_columns(trials, by)
    for key, g in groups(trials, by):
        few = g.width.nunique() < MIN_WIDTHS
        fit = fit_power_law(g["width"], g[metric])
        rows.append({**dict(zip(by, key)), "metric": metric,
                     **({"slope": np.nan, "slope_lo": np.nan, "slope_hi": np.nan} if few else
                        {"slope": fit.slope, "slope_lo": fit.slope_lo,
                         "slope_hi": fit.slope_hi}),
                     "widths": f"{g.width.min()}–{g.width.max()}", "points": fit.n_points,
                     "note": f"only {g.width.nunique()} widths: no fit" if few else ""})
    return pd.DataFrame(rows)


MIN_DEPTHS = 3   # likewise for a depth trend
# 2ηλ_max(Θ_0)/N from here on is "near" gradient descent's edge of stability at 2: the
# kernel's movement there is driven by the step size (it grows steeply towards the edge)
NEAR_EDGE = 1.0


def depth_trend(trials: pd.DataFrame, metric: str = "init_dist_inf") -> pd.DataFrame:
    """Per group (every varying field but depth) and width: the log-log slope of ``metric``
    against depth L (Hanin & Nica: fluctuations ~ √(L/n), slope ½) with its 95 % CI, from
    at least ``MIN_DEPTHS`` depths (an empty table otherwise)."""
    rows = []
    by = group_columns(trials, ("activation",), exclude=("depth",)) + ["width"]
    for key, g in groups(trials, by):
        if g.depth.nunique() < MIN_DEPTHS:
            continue
        fit = fit_power_law(g["depth"], g[metric])
        rows.append({**dict(zip(by, key)), "depths": f"{g.depth.min()}–{g.depth.max()}",
                     "depth_slope": fit.slope, "depth_slope_lo": fit.slope_lo,
                     "depth_slope_hi": fit.slope_hi})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------- figures
def _loglog(ax, xlabel, ylabel):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def width_ticks(ax, widths) -> None:
    """Ticks at the sweep's own widths (a log axis labels only powers of ten)."""
    widths = sorted({int(w) for w in widths})
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def seed_band(ax, s: pd.DataFrame, label: str, **kw):
    """The seed mean as a line and its bootstrap CI as a band; returns the line's colour."""
    line, = ax.plot(s["width"], s["mean"], marker="o", ms=4, label=label, **kw)
    ax.fill_between(s["width"], s["lo"], s["hi"], color=line.get_color(), alpha=0.2, lw=0)
    return line.get_color()


def panel_grid(n: int, cols: int = 3, size: tuple[float, float] = (4.4, 3.8)):
    """A figure with ``n`` panels, up to ``cols`` a row: (fig, the n axes); spare cells are
    hidden."""
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows),
                             squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)[:n]


def fig_dist_vs_width(trials: pd.DataFrame, metric: str = "init_dist_inf",
                      label: str = "‖Θ₀ − Θ∞‖ / ‖Θ∞‖ at init"):
    """Metric vs width (log-log), one line per group (``width_exponents``' groups): the seed
    mean with its 95 % bootstrap band and, from ``MIN_WIDTHS`` widths on, the fitted slope with
    its CI in the legend and as a dotted line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    by = group_columns(trials, ("architecture", "activation", "depth"))
    for key, g in groups(trials, by):
        name = group_label(by, key, ", ")
        fit = fit_power_law(g["width"], g[metric])
        fitted = g.width.nunique() >= MIN_WIDTHS and np.isfinite(fit.slope)
        text = f"slope {fit.slope:+.2f} [{fit.slope_lo:+.2f}, {fit.slope_hi:+.2f}]" if fitted \
            else f"{g.width.nunique()} widths: no fit"
        color = seed_band(ax, seed_summary(g, ["width"], metric), f"{name}: {text}")
        if fitted:
            xs = np.array([g.width.min(), g.width.max()], float)
            ax.plot(xs, fit(xs), ls=":", color=color)
    _loglog(ax, "width n", label)
    width_ticks(ax, trials.width)
    ax.legend(fontsize=7)
    ax.set_title(f"{metric} vs width (seed mean, 95 % bootstrap band)")
    fig.tight_layout()
    return fig


def fig_dist_over_time(ckpts: pd.DataFrame, metric: str = "dist_init"):
    """Metric against training time t = lr·step, one panel per group (every field the sweep
    varies but width and the seeds), one line per width (seed mean)."""
    by = group_columns(ckpts)
    panels = list(groups(ckpts[ckpts.t > 0], by))
    fig, axes = panel_grid(len(panels))
    for ax, (key, g) in zip(axes, panels):
        for width, w in g.groupby("width", sort=True):
            s = w.groupby("t")[metric].mean()
            ax.plot(s.index, s.values, marker=".", label=f"n={width}")
        _loglog(ax, "training time t = lr × step", metric)
        ax.set_title(group_label(by, key), fontsize=9)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{metric} over training (seed mean per width)")
    fig.tight_layout()
    return fig


def fig_depth_width_heatmap(trials: pd.DataFrame, metric: str = "init_dist_inf"):
    """Seed-mean metric on a depth × width grid, one panel per group (every other field the
    sweep varies)."""
    by = group_columns(trials, exclude=("depth",))
    panels = list(groups(trials, by))
    fig, axes = panel_grid(len(panels), cols=2, size=(6.4, 4.2))
    for ax, (key, g) in zip(axes, panels):
        table = g.pivot_table(index="depth", columns="width", values=metric, aggfunc="mean")
        im = ax.imshow(np.log10(table.values), aspect="auto", origin="lower", cmap="viridis")
        ax.set_xticks(range(len(table.columns)), [str(c) for c in table.columns])
        ax.set_yticks(range(len(table.index)), [str(i) for i in table.index])
        ax.set_xlabel("width n")
        ax.set_ylabel("depth L")
        for i in range(table.shape[0]):
            for j in range(table.shape[1]):
                v = table.values[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7, color="w")
        fig.colorbar(im, ax=ax, label=f"log10 {metric}")
        ax.set_title(f"{metric}: {group_label(by, key)}", fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``name``.png and ``name``.svg; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths


def circle_kernel_rows(ckpts: pd.DataFrame, out_dir: str | Path, step: int | str = "first"
                       ) -> pd.DataFrame:
    """Θ_t(x0, x(γ)) from kept kernels of circle trials: one row per (trial, γ).

    The circle's evaluation points are x(γ) = (cos γ, sin γ) on a uniform γ grid starting
    at γ = 0, so x0 = x(0) is the first point and row 0 of the kept Θ_t is Θ_t(x0, ·).
    ``step``: 'first', 'last' or an integer step.
    """
    kept = ckpts[ckpts.kernel_path.notna() & (ckpts.dataset == "circle")]
    rows = []
    for tid, g in kept.groupby("trial_id"):
        g = g.sort_values("step")
        pick = g.iloc[0] if step == "first" else g.iloc[-1] if step == "last" else \
            g[g.step == step].iloc[0]
        row0 = load_array(out_dir, pick.kernel_path)[0]
        gamma = np.linspace(0, 2 * np.pi, len(row0), endpoint=False)
        gamma = np.where(gamma > np.pi, gamma - 2 * np.pi, gamma)   # Jacot plots γ ∈ (−π, π]
        rows.append(pd.DataFrame({"trial_id": tid, "width": pick.width, "depth": pick.depth,
                                  "seed": pick.seed, "step": pick.step, "t": pick.t,
                                  "gamma": gamma, "theta": row0}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def circle_limit(spec: TrialSpec, gamma: np.ndarray) -> np.ndarray:
    """Θ_∞(x0, x(γ)) (len(γ),) of the trial's own architecture (its parametrization and, for
    the standard one, its width), x0 = (1, 0), x(γ) = (cos γ, sin γ)."""
    x = np.stack([np.cos(gamma), np.sin(gamma)], 1)
    return limit_kernels(spec, np.array([[1.0, 0.0]]), x).ntk[0]


def fig_jacot_fig1(ckpts: pd.DataFrame, out_dir: str | Path):
    """Jacot et al. (2018) Fig. 1: Θ(x0, x(γ)) on the unit circle at t = 0 and after
    training, for each width (seeds as thin lines), against each width's Θ_∞ (dashed; one
    curve in the NTK parametrization, whose limit does not depend on the width)."""
    first, last = circle_kernel_rows(ckpts, out_dir, "first"), \
        circle_kernel_rows(ckpts, out_dir, "last")
    fig, ax = plt.subplots(figsize=(7, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (width, g0) in enumerate(first.groupby("width", sort=True)):
        c = colors[i % len(colors)]
        for (_, a), (_, b) in zip(g0.groupby("trial_id"),
                                    last[last.width == width].groupby("trial_id")):
            a, b = a.sort_values("gamma"), b.sort_values("gamma")
            ax.plot(a.gamma, a.theta, color=c, lw=0.8, alpha=0.6)
            ax.plot(b.gamma, b.theta, color=c, lw=0.8, alpha=0.6, ls="-.")
        ax.plot([], [], color=c, label=f"n={width}: t=0 (solid), t={last.t.max():g} (dash-dot)")
    kept = ckpts[ckpts.kernel_path.notna()]
    gamma = np.linspace(-np.pi, np.pi, 181)
    limits = {}  # one per distinct limit: per width only in the standard parametrization
    for _, row in kept.drop_duplicates("width").iterrows():
        spec = spec_from_row(row)
        key = tuple(spec.kernel_args().values())
        if key not in limits:
            limits[key] = (row.width, circle_limit(spec, gamma))
    for width, limit in limits.values():
        ax.plot(gamma, limit, "k--", lw=1.5,
                label="Θ∞" if len(limits) == 1 else f"Θ∞ (n={width})")
    spec = kept.iloc[0]
    ax.set_xlabel("γ   (x = (cos γ, sin γ), x0 = (1, 0))")
    ax.set_ylabel("Θ(x0, x)")
    ax.set_title(f"NTK on the circle: depth {int(spec.depth)}, {spec.activation}, "
                 f"σ_b = {spec.bias_std:g}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig2_bands(trials: pd.DataFrame, ckpts: pd.DataFrame, out_dir: str | Path) -> pd.DataFrame:
    """Per (width, γ): the seed quantiles (10/50/90 %) of the network outputs f_T(x(γ)) kept
    at the last checkpoint, and the infinite-width Gaussian's mean and 10/90 % quantiles
    (``kernel_flow_gaussian`` with Θ_∞ and Σ on the trial's own training set)."""
    from .kernels.metrics import kernel_flow_gaussian

    last = ckpts[ckpts.outputs_path.notna()].sort_values("step").groupby("trial_id").tail(1)
    rows = []
    for width, g in last.groupby("width", sort=True):
        outs = np.stack([load_array(out_dir, p)[:, 0] for p in g.outputs_path])   # (S, M)
        spec = spec_from_row(trials[trials.trial_id == g.trial_id.iloc[0]].iloc[0])
        data = dataset_for(spec)
        m = data.x_eval.shape[0]
        lim = limit_kernels(spec, np.concatenate([data.x_eval, data.x_train]))
        mean, var = kernel_flow_gaussian(lim.ntk[:m, m:], lim.ntk[m:, m:],
                                         np.diag(lim.nngp)[:m], lim.nngp[:m, m:],
                                         lim.nngp[m:, m:], data.y_train, float(g.t.iloc[0]))
        z = stats.norm.ppf(0.9)
        q10, q50, q90 = np.quantile(outs, [0.1, 0.5, 0.9], axis=0)
        gamma = data.eval_coords
        rows.append(pd.DataFrame({"width": width, "gamma": gamma, "net_q10": q10,
                                  "net_q50": q50, "net_q90": q90, "inf_mean": mean[:, 0],
                                  "inf_q10": mean[:, 0] - z * np.sqrt(var),
                                  "inf_q90": mean[:, 0] + z * np.sqrt(var),
                                  "seeds": len(outs)}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def fig_jacot_fig2(trials: pd.DataFrame, ckpts: pd.DataFrame, out_dir: str | Path):
    """Jacot et al. (2018) Fig. 2: the spread of f_T over seeds (10–90 % band, median) for
    each width against the infinite-width Gaussian (mean, dashed 10/90 % quantiles)."""
    bands = fig2_bands(trials, ckpts, out_dir)
    widths = sorted(bands.width.unique())
    fig, axes = plt.subplots(1, len(widths), figsize=(5 * len(widths), 4), sharey=True,
                             squeeze=False)
    for ax, width in zip(axes[0], widths):
        b = bands[bands.width == width].sort_values("gamma")
        ax.fill_between(b.gamma, b.net_q10, b.net_q90, alpha=0.3, label="network 10–90 %")
        ax.plot(b.gamma, b.net_q50, lw=1, label="network median")
        ax.plot(b.gamma, b.inf_mean, "k-", lw=1.2, label="n→∞ mean")
        ax.plot(b.gamma, b.inf_q10, "k--", lw=1, label="n→∞ 10 / 90 %")
        ax.plot(b.gamma, b.inf_q90, "k--", lw=1)
        ax.set_title(f"n = {width} ({int(b.seeds.iloc[0])} seeds)")
        ax.set_xlabel("γ")
    axes[0][0].set_ylabel("f_T(cos γ, sin γ)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
