"""Jacot et al. (2018)'s figures on the unit circle, from a sweep's kept kernels and outputs:
Fig. 1 (Θ(x0, x(γ)) at t = 0 and T against Θ_∞) and Fig. 2 (the seeds' spread of f_T
against the infinite-width Gaussian). Their limits come from the trial's own builders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..store import load_array, spec_from_row
from ..trial.builders import dataset_for, limit_kernels
from ..trial_spec import TrialSpec
from .figures import plt

__all__ = ["circle_kernel_rows", "circle_limit", "fig_jacot_fig1", "fig2_bands", "fig_jacot_fig2"]


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
    from ..kernels.metrics import kernel_flow_gaussian

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
