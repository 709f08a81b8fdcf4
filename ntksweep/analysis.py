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
from .trial_spec import TrialSpec  # noqa: E402

__all__ = ["PowerLaw", "bootstrap_ci", "seed_summary", "fit_power_law", "width_exponents",
           "depth_trend", "fig_dist_vs_width", "fig_dist_over_time", "fig_depth_width_heatmap",
           "circle_kernel_rows", "circle_limit", "fig_jacot_fig1", "fig2_bands",
           "fig_jacot_fig2", "save_figure", "MIN_WIDTHS", "group_columns", "group_label",
           "seed_band", "width_ticks"]

MIN_WIDTHS = 3   # a width exponent's CI needs at least this many widths


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
    for key, g in df.groupby(by, sort=True):
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


def group_columns(trials: pd.DataFrame, base: tuple[str, ...]) -> list[str]:
    """``base`` columns the table has, then the dataset, parametrization, optimizer and
    learning rate where the sweep varies them (a lazy-vs-rich sweep compares them line by
    line; nets trained at different rates are different experiments, never averaged)."""
    extra = [c for c in ("dataset", "parametrization", "optimizer", "lr")
             if c in trials.columns and trials[c].nunique() > 1 and c not in base]
    return [c for c in base if c in trials.columns] + extra


def group_label(by: list[str], key, sep: str = " ") -> str:
    """A group's values as a legend or title reads them: ``L=4``, ``lr 0.25``, ``relu``."""
    key = key if isinstance(key, tuple) else (key,)
    named = {"depth": "L={}", "lr": "lr {:g}"}
    return sep.join(named.get(c, "{}").format(v) for c, v in zip(by, key))


def width_exponents(trials: pd.DataFrame, metric: str = "init_dist_inf",
                    by: tuple[str, ...] = ("architecture", "depth", "activation")
                    ) -> pd.DataFrame:
    """The log-log slope of ``metric`` against width per group, with 95 % CI (groups by the
    ``by`` columns the table has). A slope from fewer than ``MIN_WIDTHS`` widths gets no CI
    and a caution: two widths always fit a line."""
    rows = []
    by = tuple(group_columns(trials, by))
    for key, g in trials.groupby(list(by), sort=True):
        fit = fit_power_law(g["width"], g[metric])
        few = g.width.nunique() < MIN_WIDTHS
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "metric": metric, "slope": fit.slope,
                     "slope_lo": np.nan if few else fit.slope_lo,
                     "slope_hi": np.nan if few else fit.slope_hi,
                     "widths": f"{g.width.min()}–{g.width.max()}", "points": fit.n_points,
                     "note": f"only {g.width.nunique()} widths: no CI" if few else ""})
    return pd.DataFrame(rows)


def depth_trend(trials: pd.DataFrame, metric: str = "init_dist_inf") -> pd.DataFrame:
    """At each width: the depth slope of log metric (Hanin & Nica: fluctuations ~ √(L/n),
    i.e. slope ½ in log L) and the seed means per depth."""
    rows = []
    for (width, act), g in trials.groupby(["width", "activation"], sort=True):
        fit = fit_power_law(g["depth"], g[metric])
        rows.append({"width": width, "activation": act, "depth_slope": fit.slope,
                     "depth_slope_lo": fit.slope_lo, "depth_slope_hi": fit.slope_hi})
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


def fig_dist_vs_width(trials: pd.DataFrame, metric: str = "init_dist_inf",
                      label: str = "‖Θ₀ − Θ∞‖ / ‖Θ∞‖ at init"):
    """Metric vs width (log-log), one line per (architecture, activation, depth): the seed
    mean with its 95 % bootstrap band, the fitted slope (with CI from ≥ 3 widths) in the
    legend and as a dotted line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    by = group_columns(trials, ("architecture", "activation", "depth"))
    for key, g in trials.groupby(by, sort=True):
        name = group_label(by, key, ", ")
        fit = fit_power_law(g["width"], g[metric])
        ci = f"[{fit.slope_lo:+.2f}, {fit.slope_hi:+.2f}]" \
            if g.width.nunique() >= MIN_WIDTHS else f"({g.width.nunique()} widths: no CI)"
        color = seed_band(ax, seed_summary(g, ["width"], metric),
                           f"{name}: slope {fit.slope:+.2f} {ci}")
        if np.isfinite(fit.slope):
            xs = np.array([g.width.min(), g.width.max()], float)
            ax.plot(xs, fit(xs), ls=":", color=color)
    _loglog(ax, "width n", label)
    width_ticks(ax, trials.width)
    ax.legend(fontsize=7)
    ax.set_title(f"{metric} vs width (seed mean, 95 % bootstrap band)")
    fig.tight_layout()
    return fig


def fig_dist_over_time(ckpts: pd.DataFrame, metric: str = "dist_init", depth: int | None = None):
    """Metric against training time t = lr·step, one line per width (seed mean)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    data = ckpts if depth is None else ckpts[ckpts.depth == depth]
    for width, g in data[data.t > 0].groupby("width", sort=True):
        s = g.groupby("t")[metric].mean()
        ax.plot(s.index, s.values, marker=".", label=f"n={width}")
    _loglog(ax, "training time t = lr × step", metric)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{metric} over training" + (f" (L={depth})" if depth else ""))
    fig.tight_layout()
    return fig


def fig_depth_width_heatmap(trials: pd.DataFrame, metric: str = "init_dist_inf",
                            activation: str | None = None):
    """Seed-mean metric on a depth × width grid."""
    data = trials if activation is None else trials[trials.activation == activation]
    table = data.pivot_table(index="depth", columns="width", values=metric, aggfunc="mean")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
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
    ax.set_title(f"{metric}" + (f" ({activation})" if activation else ""))
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
