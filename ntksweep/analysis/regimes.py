"""How trained networks compare with their kernels — test error of the nets against kernel
regression with Θ_∞, Σ, Θ_0 and Θ_T, and the coordinate check — per group. From the
trials table of ``ntksweep.load_results`` only."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..parametrizations import ROLES
from ..records import KR_KERNELS
from .figures import panel_grid, plt, seed_band, width_ticks
from .stats import group_columns, group_label, groups, seed_summary

__all__ = ["test_score", "test_table", "fig_test_scores", "fig_coord_check"]


def test_score(trials: pd.DataFrame) -> str:
    """'acc' where every trial's data have labels (its accuracy columns are measured),
    else 'loss' (the MSE, defined for every data set)."""
    return "acc" if trials.final_test_acc.notna().all() else "loss"


def test_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per group and width: the trained nets' final test score (seed mean and bootstrap CI)
    beside the Θ_∞ linear model's after the same steps (``gd_inf``) and kernel regression's
    with Θ_∞, Σ, Θ_0 and Θ_T."""
    score = test_score(trials)
    by = group_columns(trials, ("architecture", "depth")) + ["width"]
    net = seed_summary(trials, by, f"final_test_{score}").rename(
        columns={"mean": "net", "lo": "net_lo", "hi": "net_hi", "n": "seeds"})
    cols = [f"final_test_{score}_{k}" for k in ("gd_inf", *[f"kr_{k}" for k in KR_KERNELS])]
    means = trials.groupby(by, sort=True, dropna=False)[cols].mean()
    means = means.rename(columns=lambda c: c.removeprefix(f"final_test_{score}_"))
    return net.merge(means.reset_index(), on=by).assign(score=f"test {score}")


_BASELINES = (("gd_inf", "Θ∞ linear model, same steps", "--", "C0"),   # one style each,
              ("kr_inf", "Θ∞ regression (t → ∞)", ":", "C1"),              # in every panel
              ("kr_nngp", "Σ (NNGP) regression", (0, (1, 3)), "C2"),
              ("kr_init", "Θ₀ regression", "-.", "C3"),
              ("kr_t", "Θ_T regression", (0, (5, 1, 1, 1)), "C4"))


def fig_test_scores(trials: pd.DataFrame):
    """Test accuracy (or MSE) vs width, one panel per group: the trained nets (seed mean,
    band) against every kernel baseline — the Θ_∞ linear model after the same steps (the
    infinite-width prediction for the nets as trained) and kernel regression with Θ_∞, Σ,
    Θ_0 and Θ_T."""
    score = test_score(trials)
    by = group_columns(trials, ("architecture", "depth"))
    panels = list(groups(trials, by))
    fig, axes = panel_grid(len(panels))
    for ax, (key, g) in zip(axes, panels):
        seed_band(ax, seed_summary(g, ["width"], f"final_test_{score}"), "trained net",
                  color="black")
        means = g.groupby("width", sort=True).mean(numeric_only=True)
        for name, label, style, color in _BASELINES:
            column = f"final_test_{score}_{name}"
            if means[column].notna().any():
                ax.plot(means.index, means[column], ls=style, color=color, label=label)
        ax.set_xscale("log")
        if score == "loss":
            ax.set_yscale("log")
        width_ticks(ax, g.width)
        ax.set_xlabel("width n")
        ax.set_ylabel("test accuracy" if score == "acc" else "test MSE")
        ax.set_title(group_label(by, key), fontsize=9)
        ax.grid(True, alpha=0.3)
    handles = {h.get_label(): h for ax in axes for h in ax.get_lines()
               if not h.get_label().startswith("_")}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=3, fontsize=8)
    fig.suptitle("trained nets vs the kernels of their infinite-width limit (seed means)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def fig_coord_check(trials: pd.DataFrame):
    """The coordinate check: RMS change of each role's pre-activations from step 0 to the
    end, vs width (log-log), one panel per role, a line per group (seed mean, band)."""
    roles = [r for r in ROLES if trials[f"final_coord_{r}_change"].notna().any()]
    fig, axes = plt.subplots(1, len(roles), figsize=(4.2 * len(roles), 4.0), squeeze=False)
    by = group_columns(trials, ("architecture", "depth"))
    for ax, role in zip(axes[0], roles):
        for key, g in groups(trials, by):
            s = seed_summary(g, ["width"], f"final_coord_{role}_change")
            if np.isfinite(s["mean"]).any():
                seed_band(ax, s, group_label(by, key))
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
