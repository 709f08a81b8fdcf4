"""The standard figures of a sweep, from the DataFrames of ``ntksweep.load_results``: each
function returns a matplotlib Figure (a panel or a line per group, ``stats.groups``);
``save_figure`` writes PNG and SVG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written, not shown
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .stats import (  # noqa: E402
    MIN_WIDTHS,
    fit_power_law,
    group_columns,
    group_label,
    groups,
    seed_summary,
)

__all__ = ["width_ticks", "seed_band", "panel_grid", "fig_dist_vs_width", "fig_over_time",
           "fig_eigenvalues_vs_width", "fig_corrections", "fig_depth_width_heatmap",
           "save_figure"]


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
                      label: str = "‖Θ₀ − Θ∞‖ / ‖Θ∞‖ at init", series: tuple[str, ...] = ()):
    """Metric vs width (log-log), one line per group (``width_exponents``' groups, and per
    value of the ``series`` columns): the seed mean with its 95 % bootstrap band and, from
    ``MIN_WIDTHS`` widths on, the fitted slope with its CI in the legend and as a dotted
    line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    by = group_columns(trials, ("architecture", "activation", "depth", *series))
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


def fig_over_time(ckpts: pd.DataFrame, metric: str = "dist_init", label: str | None = None):
    """Metric against training time t = lr·step, one panel per group (every field the sweep
    varies but width and the seeds), one line per width (seed mean)."""
    by = group_columns(ckpts)
    panels = list(groups(ckpts[ckpts.t > 0], by))
    fig, axes = panel_grid(len(panels))
    for ax, (key, g) in zip(axes, panels):
        for width, w in g.groupby("width", sort=True):
            s = w.groupby("t")[metric].mean()
            ax.plot(s.index, s.values, marker=".", label=f"n={width}")
        _loglog(ax, "training time t = lr × step", label or metric)
        ax.set_title(group_label(by, key), fontsize=9)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{label or metric} over training (seed mean per width)")
    fig.tight_layout()
    return fig


def fig_eigenvalues_vs_width(ckpts: pd.DataFrame, step: int = 0):
    """The top eigenvalues of Θ at ``step`` (init by default) against width, one panel per
    group: each eigenvalue's seed mean with its 95 % band, and the limit Θ∞'s as a dashed
    line of the same colour (the finite nets' should close in on it as n grows)."""
    at = ckpts[ckpts.step == step]
    by = group_columns(at)
    panels = list(groups(at, by))
    fig, axes = panel_grid(len(panels))
    eigs = [c for c in ("eig1", "eig2", "eig3") if c in at and at[c].notna().any()]
    for ax, (key, g) in zip(axes, panels):
        for name in eigs:
            color = seed_band(ax, seed_summary(g, ["width"], name), f"λ{name[3:]}(Θ)")
            limit = g[f"{name}_inf"].dropna()
            if len(limit):
                ax.axhline(float(limit.mean()), ls="--", color=color, lw=1,
                           label=f"λ{name[3:]}(Θ∞)")
        _loglog(ax, "width n", f"eigenvalue of Θ at step {step}")
        width_ticks(ax, g.width)
        ax.set_title(group_label(by, key), fontsize=9)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"top eigenvalues of Θ at step {step} (dashed: Θ∞'s)")
    fig.tight_layout()
    return fig


def fig_corrections(table: pd.DataFrame, exponents: pd.DataFrame, by: list[str],
                    part: str = "all"):
    """The finite-width corrections of ensembles (``analysis.ensembles``) against width
    (log-log), one line per group: the mean shift m(n) and the fluctuation s(n) with their
    95 % CIs as error bars and the fitted power laws (dotted; exponents a and b with CIs in
    the legend). m ∝ 1/n and s ∝ n^−½ where the 1/n expansion holds; a width whose m² is
    not above zero has no point."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.6))
    rows, fits = table[table.part == part], exponents[exponents.part == part]
    for (key, g), (_, e) in zip(groups(rows, by), groups(fits, by)):
        name, fit = group_label(by, key, ", "), e.iloc[0]
        for ax, slope, (y, lo, hi) in ((left, "a", _shift(g)), (right, "b", _fluctuation(g))):
            shown = np.isfinite(y) & (y > 0)
            x, y, lo, hi = g.width.to_numpy(float)[shown], y[shown], lo[shown], hi[shown]
            bar = ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", ms=4, capsize=2, ls="",
                              label=f"{name}: {slope} {fit[slope]:+.2f} "
                              f"[{fit[slope + '_lo']:+.2f}, {fit[slope + '_hi']:+.2f}]")
            if len(x) >= 2 and np.isfinite(fit[slope]):
                c = np.exp(np.mean(np.log(y) - fit[slope] * np.log(x)))
                ax.plot(x, c * x ** fit[slope], ls=":", color=bar[0].get_color())
    for ax, what in ((left, "mean shift m = ‖E Θ₀ − Θ∞‖ / ‖Θ∞‖"),
                     (right, "fluctuation s = √(E‖Θ₀ − E Θ₀‖²) / ‖Θ∞‖")):
        _loglog(ax, "width n", what)
        width_ticks(ax, rows.width)
        ax.legend(fontsize=7)
    left.set_title("the mean shift, ∝ $n^{-1}$ (finite-seed bias removed)")
    right.set_title("the fluctuation, ∝ $n^{-1/2}$")
    fig.tight_layout()
    return fig


def _shift(g: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """m with its CI, from m²'s: NaN where m² ≤ 0; a bound at or below zero is the axis'
    bottom."""
    m2, lo, hi = (g[c].to_numpy(float) for c in ("mean_shift_sq", "mean_shift_sq_lo",
                                                  "mean_shift_sq_hi"))
    root = lambda v: np.sqrt(np.clip(v, 1e-300, None))  # noqa: E731
    return np.where(m2 > 0, root(m2), np.nan), root(lo), root(hi)


def _fluctuation(g: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(g[c].to_numpy(float) for c in ("fluctuation", "fluctuation_lo",
                                                "fluctuation_hi"))


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
