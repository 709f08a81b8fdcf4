"""Figures and tables of how trained networks compare with their kernels — test error of the
nets against kernel regression with Θ_∞, Σ, Θ_0 and Θ_T, and the coordinate check — per
architecture, depth and (where a sweep varies it) parametrization. From the trials table
of ``ntksweep.load_results`` only."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .analysis import group_columns, plt, seed_band, seed_summary, width_ticks
from .parametrizations import ROLES
from .records import KR_KERNELS

__all__ = ["test_score", "test_table", "fig_test_scores", "fig_coord_check"]


def test_score(trials: pd.DataFrame) -> str:
    """'acc' where every trial's data have labels (its accuracy columns are measured),
    else 'loss' (the MSE, defined for every data set)."""
    return "acc" if trials.final_test_acc.notna().all() else "loss"


def _name(by: list[str], key) -> str:
    key = key if isinstance(key, tuple) else (key,)
    return " ".join(f"L={v}" if c == "depth" else str(v) for c, v in zip(by, key))


def test_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per group and width: the trained nets' final test score (seed mean and bootstrap CI)
    beside the Θ_∞ linear model's after the same steps (``gd_inf``) and kernel regression's
    with Θ_∞, Σ, Θ_0 and Θ_T."""
    score = test_score(trials)
    by = group_columns(trials, ("architecture", "depth")) + ["width"]
    net = seed_summary(trials, by, f"final_test_{score}").rename(
        columns={"mean": "net", "lo": "net_lo", "hi": "net_hi", "n": "seeds"})
    cols = [f"final_test_{score}_{k}" for k in ("gd_inf", *[f"kr_{k}" for k in KR_KERNELS])]
    means = trials.groupby(by, sort=True)[cols].mean()
    means = means.rename(columns=lambda c: c.removeprefix(f"final_test_{score}_"))
    return net.merge(means.reset_index(), on=by).assign(score=f"test {score}")


def fig_test_scores(trials: pd.DataFrame):
    """Test accuracy (or MSE) vs width per group: the trained nets (seed mean, band), the
    Θ_∞ linear model after the same steps (dashed: the infinite-width prediction for the
    nets as trained) and kernel regression with Θ_∞ (dotted: its t → ∞ end)."""
    score = test_score(trials)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    by = group_columns(trials, ("architecture", "depth"))
    for key, g in trials.groupby(by, sort=True):
        name = _name(by, key)
        color = seed_band(ax, seed_summary(g, ["width"], f"final_test_{score}"),
                          f"{name}: trained net")
        kr = g.groupby("width", sort=True)[[f"final_test_{score}_gd_inf",
                                            f"final_test_{score}_kr_inf"]].mean()
        ax.plot(kr.index, kr.iloc[:, 0], ls="--", color=color, label=f"{name}: Θ∞, same steps")
        ax.plot(kr.index, kr.iloc[:, 1], ls=":", color=color)
    ax.set_xscale("log")
    if score == "loss":
        ax.set_yscale("log")
    width_ticks(ax, trials.width)
    ax.set_xlabel("width n")
    ax.set_ylabel("test accuracy" if score == "acc" else "test MSE")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("trained nets vs their infinite-width kernel (dotted: Θ∞ regression, t → ∞)")
    fig.tight_layout()
    return fig


def fig_coord_check(trials: pd.DataFrame):
    """The coordinate check: RMS change of each role's pre-activations from step 0 to the
    end, vs width (log-log), one panel per role, a line per group (seed mean, band)."""
    roles = [r for r in ROLES if trials[f"final_coord_{r}_change"].notna().any()]
    fig, axes = plt.subplots(1, len(roles), figsize=(4.2 * len(roles), 4.0), squeeze=False)
    by = group_columns(trials, ("architecture", "depth"))
    for ax, role in zip(axes[0], roles):
        for key, g in trials.groupby(by, sort=True):
            s = seed_summary(g, ["width"], f"final_coord_{role}_change")
            if np.isfinite(s["mean"]).any():
                seed_band(ax, s, _name(by, key))
        ax.set_xscale("log")
        ax.set_yscale("log")
        width_ticks(ax, trials.width)
        ax.set_xlabel("width n")
        ax.set_title(f"{role} layer: RMS(z_T − z_0)")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("RMS change of pre-activations")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
