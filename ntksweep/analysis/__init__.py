"""Analysis over the Parquet store: ``stats`` (fits, CIs, the groups every summary is made
in; no matplotlib or scipy at import), ``figures`` (the standard figures), ``jacot`` (Jacot
et al.'s circle figures), ``regimes`` (test scores against the kernels, the coordinate
check) and ``report`` (the HTML report). Reads Parquet only, never MLflow; never re-runs.

The names of ``stats`` and ``figures`` are here too (``ntksweep.analysis.width_exponents``);
``jacot``, ``regimes`` and ``report`` are imported as modules. The figures' names load
matplotlib on first use only, so that ``stats`` stays light for the command line.
"""

import importlib

from .stats import (
    MIN_DEPTHS,
    MIN_WIDTHS,
    NEAR_EDGE,
    REPLICATES,
    PowerLaw,
    bootstrap_ci,
    depth_trend,
    fit_power_law,
    group_columns,
    group_label,
    groups,
    seed_summary,
    varying_fields,
    width_exponents,
)

__all__ = ["PowerLaw", "bootstrap_ci", "seed_summary", "fit_power_law", "width_exponents",
           "depth_trend", "MIN_WIDTHS", "MIN_DEPTHS", "NEAR_EDGE", "REPLICATES",
           "varying_fields", "group_columns", "groups", "group_label", "fig_dist_vs_width",
           "fig_over_time", "fig_eigenvalues_vs_width", "fig_depth_width_heatmap",
           "save_figure", "panel_grid", "seed_band", "width_ticks"]

_FIGURES = ("fig_dist_vs_width", "fig_over_time", "fig_eigenvalues_vs_width",
            "fig_depth_width_heatmap", "save_figure", "panel_grid", "seed_band", "width_ticks")


def __getattr__(name: str):
    if name in _FIGURES:
        return getattr(importlib.import_module(".figures", __name__), name)
    raise AttributeError(f"module 'ntksweep.analysis' has no attribute {name!r}")
