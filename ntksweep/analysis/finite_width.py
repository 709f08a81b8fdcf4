"""Finite-width corrections of the initial NTK, separated: the seed-to-seed fluctuation
s(n) ∝ n^−½ (Hanin & Nica 2019) and the mean shift m(n) ∝ 1/n (Dyer & Gur-Ari 2019; Roberts,
Yaida & Hanin's 1/n expansion), per width from S seeds' Θ_0, with bootstrap CIs and
power-law fits — and Θ_∞ extrapolated from the seed means over widths where no closed form
exists.

Per width n, from the S seeds' Θ_0 (M × M) and a reference Θ_∞, on a set of entries (all,
the diagonal, the off-diagonal): the fluctuation s(n) = √V/‖Θ_∞‖ and the squared mean shift
m²(n) = (‖K̄ − Θ_∞‖² − V/S)/‖Θ_∞‖², unbiased (``kernels.metrics.shift_and_fluctuation``:
the seed mean's own noise V/S removed, so a zero mean shift reads as m² ≈ 0, not as s/√S).

The 1/n coefficient: per entry, K̄_n = Θ_∞ + Θ_1/n (+ Θ_2/n²) by weighted least squares over
the widths (weights S_n / the entry's seed variance at n); with Θ_∞ unknown its intercept is
the extrapolated limit Θ̂_∞, with its standard error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from ..kernels.metrics import shift_and_fluctuation
from .stats import PowerLaw, fit_power_law

__all__ = ["PARTS", "entries", "corrections", "width_corrections", "correction_exponents",
           "Extrapolation", "extrapolate"]

PARTS = ("all", "diagonal", "off_diagonal")


def entries(kernels: np.ndarray, part: str = "all") -> np.ndarray:
    """The chosen entries of (…, M, M) kernels, flattened to (…, E)."""
    m = kernels.shape[-1]
    if part == "all":
        mask = np.ones((m, m), bool)
    elif part == "diagonal":
        mask = np.eye(m, dtype=bool)
    elif part == "off_diagonal":
        mask = ~np.eye(m, dtype=bool)
    else:
        raise ValueError(f"part must be one of {', '.join(PARTS)}; got {part!r}")
    return kernels[..., mask]


def corrections(kernels: np.ndarray, limit: np.ndarray, *, part: str = "all",
                n_boot: int = 400, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """The mean shift and the fluctuation of S seeds' kernels (S, M, M) around ``limit``
    (M, M): m² with its bootstrap CI over seeds (m = √max(m², 0)), s with its CI, and the
    seeds' mean distance ‖K − Θ_∞‖/‖Θ_∞‖ (dist_inf, on these entries)."""
    k, ref = entries(np.asarray(kernels, float), part), entries(np.asarray(limit, float), part)
    if len(k) < 2:
        raise ValueError("corrections need at least two seeds per width")
    m2, s2 = shift_and_fluctuation(k, ref)
    distance = float(np.mean(np.linalg.norm(k - ref, axis=1)) / np.linalg.norm(ref))
    rng = np.random.default_rng(seed)
    boot = np.array([shift_and_fluctuation(k[rng.integers(0, len(k), len(k))], ref)
                     for _ in range(n_boot)])
    a = (1 - level) / 2
    # m²: the normal interval around the estimate with the bootstrap's spread — the
    # resamples themselves centre near m² + V/S (a resample's mean carries V/S of extra
    # spread) and their distribution is skewed, so neither percentile interval covers an
    # exact zero mean shift as it should; s: the percentile interval
    half = float(norm.ppf(1 - a)) * float(boot[:, 0].std(ddof=1))
    lo, hi = np.quantile(boot[:, 1], a), np.quantile(boot[:, 1], 1 - a)
    return {"seeds": len(k), "dist_inf": distance, "mean_shift_sq": m2,
            "mean_shift_sq_lo": m2 - half, "mean_shift_sq_hi": m2 + half,
            "mean_shift": float(np.sqrt(max(m2, 0.0))),
            "fluctuation": float(np.sqrt(s2)), "fluctuation_lo": float(np.sqrt(lo)),
            "fluctuation_hi": float(np.sqrt(hi))}


def width_corrections(by_width: dict[int, np.ndarray], limit: np.ndarray, *,
                      parts: tuple[str, ...] = PARTS, **options) -> pd.DataFrame:
    """``corrections`` per width and part: one row each (width, part, seeds, mean_shift_sq
    and its CI, mean_shift, fluctuation and its CI, n·fluctuation², the depth law's
    quantity)."""
    rows = [{"width": int(n), "part": part, **corrections(k, limit, part=part, **options)}
            for n, k in sorted(by_width.items()) for part in parts]
    table = pd.DataFrame(rows)
    table["n_fluctuation_sq"] = table.width * table.fluctuation ** 2
    return table


def correction_exponents(table: pd.DataFrame) -> pd.DataFrame:
    """Per part: the fitted exponents a (m ∝ n^a, over the widths whose mean shift is
    resolved — m²'s CI above zero; NaN from fewer than two) and b (s ∝ n^b), with their
    95 % CIs (``stats.fit_power_law``)."""
    rows = []
    for part, t in table.groupby("part", sort=False):
        shift = t[t.mean_shift_sq_lo > 0]
        a: PowerLaw = fit_power_law(shift.width, shift.mean_shift)
        b: PowerLaw = fit_power_law(t.width, t.fluctuation)
        rows.append({"part": part, "a": a.slope, "a_lo": a.slope_lo, "a_hi": a.slope_hi,
                     "b": b.slope, "b_lo": b.slope_lo, "b_hi": b.slope_hi})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Extrapolation:
    """K̄_n = Θ_∞ + Θ_1/n (+ Θ_2/n²) per entry: the fitted terms (M, M) and Θ_∞'s standard
    error (M, M) (zero where Θ_∞ was given)."""

    limit: np.ndarray
    limit_se: np.ndarray
    first: np.ndarray
    second: np.ndarray | None


def extrapolate(by_width: dict[int, np.ndarray], limit: np.ndarray | None = None, *,
                order: int = 1) -> Extrapolation:
    """The per-entry weighted least-squares fit of the seed means over widths (module doc):
    Θ_1 (and Θ_2 with ``order=2``) given ``limit``, or with Θ̂_∞ and its standard error
    when ``limit`` is None. Needs more widths than fitted terms."""
    widths = np.array(sorted(by_width), float)
    stacks = [np.asarray(by_width[int(n)], float) for n in widths]
    means = np.stack([k.mean(0) for k in stacks])                         # (W, M, M)
    # the seed mean's variance per entry; a floor keeps exact (zero-variance) entries finite
    var = np.stack([k.var(0, ddof=1) / len(k) for k in stacks])
    var = np.maximum(var, 1e-12 * max(float(np.abs(means).max()) ** 2, 1e-300))
    powers = [-p for p in range(0 if limit is None else 1, order + 1)]
    design = widths[:, None] ** np.array(powers, float)[None, :]          # (W, P)
    if len(widths) <= design.shape[1]:
        raise ValueError(f"{len(widths)} widths cannot fit {design.shape[1]} terms per entry; "
                         "add widths or lower the order")
    target = means - (0.0 if limit is None else np.asarray(limit, float)[None])
    w = 1.0 / var                                                         # (W, M, M)
    cov = np.linalg.inv(np.einsum("wp,wq,wij->ijpq", design, design, w))  # every entry's
    coef = np.einsum("ijpq,wq,wij->pij", cov, design, w * target)
    se = np.sqrt(np.moveaxis(np.diagonal(cov, axis1=-2, axis2=-1), -1, 0))
    if limit is None:
        return Extrapolation(coef[0], se[0], coef[1], coef[2] if order == 2 else None)
    given = np.asarray(limit, float)
    return Extrapolation(given, np.zeros_like(given), coef[0],
                         coef[1] if order == 2 else None)
