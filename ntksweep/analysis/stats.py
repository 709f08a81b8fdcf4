"""Statistics over a sweep's trials: seed means with bootstrap CIs, power-law fits with
95 % CIs, and the groups every summary is made in — every field the sweep varies but width
and the seeds. It imports neither matplotlib nor scipy (the t quantile is read when a fit
needs it): the command line's summaries use this module alone."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..trial_spec import TRIAL_FIELDS

__all__ = ["MIN_WIDTHS", "MIN_DEPTHS", "NEAR_EDGE", "REPLICATES", "PowerLaw", "bootstrap_ci",
           "seed_summary", "fit_power_law", "varying_fields", "group_columns", "groups",
           "group_label", "width_exponents", "depth_trend"]


MIN_WIDTHS = 3   # fewer widths give no width exponent: two points always fit a line


MIN_DEPTHS = 3   # likewise for a depth trend


# 2ηλ_max(Θ_0)/N from here on is "near" gradient descent's edge of stability at 2: the
# kernel's movement there is driven by the step size (it grows steeply towards the edge)
NEAR_EDGE = 1.0


# Draws of one experiment: every summary pools them (and width is the x axis of the fits).
REPLICATES = ("seed", "data_seed")


_NOT_A_GROUP = ("width", *REPLICATES, "device")   # device: the same measurement anywhere


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
    dx = lx - lx.mean()
    slope = float(dx @ (ly - ly.mean()) / (dx @ dx))
    intercept = float(ly.mean() - slope * lx.mean())
    half = np.nan
    if len(lx) > 2:
        from scipy import stats

        residual = ly - (intercept + slope * lx)
        stderr = np.sqrt(residual @ residual / (len(lx) - 2) / (dx @ dx))
        half = float(stats.t.ppf(0.5 + level / 2, len(lx) - 2) * stderr)
    return PowerLaw(slope, slope - half, slope + half, intercept, len(lx))


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
