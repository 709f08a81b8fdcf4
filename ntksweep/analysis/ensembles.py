"""The finite-width corrections of a sweep's ensembles (``TrialSpec.ensemble``), from its
members table: per group — every field the sweep varies but width, the seeds and the
ensemble size; the data's seed is a group of its own here, since Θ_0's entries belong to
the eval points — and width, the mean shift m and the fluctuation s of the members' Θ_0
around the reference (``finite_width.width_corrections``), their exponents, and the 1/n
fit over the widths.

The reference is the closed-form Θ_∞ where the network has one; elsewhere (1/√d attention,
a user's plain module) it is Θ̂_∞ extrapolated from the seed means over the widths, marked
``reference = "extrapolated"`` in every row measured against it. Where the closed form
exists the extrapolation is checked against it: ``checks`` holds ‖Θ̂_∞ − Θ_∞‖/‖Θ_∞‖ beside
the widest width's ‖K̄ − Θ_∞‖/‖Θ_∞‖."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..store import load_members, load_trials, member_kernels, spec_from_row
from ..trial.builders import dataset_for, has_limit, inputs, limit_kernels
from .finite_width import Extrapolation, correction_exponents, extrapolate, width_corrections
from .stats import group_label, groups, varying_fields

__all__ = ["SweepCorrections", "kernel_groups", "sweep_corrections", "save_limits"]


@dataclass(frozen=True)
class SweepCorrections:
    """``table``: one row per group, width and part (the group's columns, ``reference``,
    ``width_corrections``' columns); ``exponents``: per group and part, a and b with their
    CIs; ``fits``: group label → (reference, the 1/n fit: Θ̂_∞ with its SE where the
    reference is extrapolated, else Θ_1 given Θ_∞); ``checks``: per group with a closed form, the
    extrapolation against it."""

    by: list[str]
    table: pd.DataFrame
    exponents: pd.DataFrame
    fits: dict[str, tuple[str, Extrapolation]]
    checks: pd.DataFrame


def kernel_groups(trials: pd.DataFrame) -> list[str]:
    """The columns an ensemble analysis groups by (module doc)."""
    by = varying_fields(trials, exclude=("ensemble",))
    return by + (["data_seed"] if trials.data_seed.nunique() > 1 else [])


def _limit(row: pd.Series) -> np.ndarray | None:
    """The closed-form Θ_∞ on a trial's eval points, per logit (M, M), or None."""
    spec = spec_from_row(row)
    data = dataset_for(spec)
    out_dim = data.out_dim
    if not has_limit(spec, out_dim):
        return None
    return limit_kernels(spec, inputs(spec, data, data.x_eval), out_dim=out_dim).ntk


def sweep_corrections(out: str | Path, *, n_boot: int = 400) -> SweepCorrections:
    """The corrections of every group of ``out``'s completed ensemble trials (module doc).
    A group without a closed form needs three widths (Θ̂_∞ and Θ_1 are fitted)."""
    trials = load_trials(out)
    trials = trials[(trials.status == "completed") & (trials.ensemble > 1)]
    members = load_members(out)
    by = kernel_groups(trials)
    tables, exponents, fits, checks = [], [], {}, []
    for key, group in groups(trials, by):
        label = group_label(by, key)
        by_width = {int(n): member_kernels(_networks(members, g)) for n, g in
                    group.groupby("width")}
        limits = [_limit(g.iloc[0]) for _, g in group.groupby("width")]
        named = dict(zip(by, key))
        if all(lim is not None for lim in limits) and not _same(limits):
            continue        # the standard parametrization's Θ grows with n: no common limit
        if all(lim is not None for lim in limits):
            reference, limit = "analytic", limits[0]
            if len(by_width) >= 2:
                fits[label] = (reference, extrapolate(by_width, limit))
            if len(by_width) >= 3:
                checks.append({**named, **_check(by_width, limit)})
        elif len(by_width) >= 3:
            reference, fit = "extrapolated", extrapolate(by_width)
            fits[label], limit = (reference, fit), fit.limit
        else:
            continue        # no limit to measure against, and too few widths to fit one
        table = width_corrections(by_width, limit, n_boot=n_boot)
        tables.append(table.assign(**named, reference=reference))
        exponents.append(correction_exponents(table).assign(**named, reference=reference))
    return SweepCorrections(by, _frame(tables, by), _frame(exponents, by), fits,
                            pd.DataFrame(checks))


def _networks(members: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """The trials' members, each network once: a seed is one network, and two ensembles of
    a cell can hold it both (seed 0 of ensemble 256 and seed 0 of ensemble 8192)."""
    return members[members.trial_id.isin(trials.trial_id)].drop_duplicates("seed")


def _same(limits: list[np.ndarray]) -> bool:
    """One limit for every width (the standard parametrization's depends on the width)."""
    return all(np.allclose(lim, limits[0], rtol=1e-12, atol=0) for lim in limits[1:])


def _check(by_width: dict[int, np.ndarray], limit: np.ndarray) -> dict[str, float]:
    """The extrapolated Θ̂_∞ against the closed form, beside the widest width's seed mean."""
    norm = np.linalg.norm(limit)
    widest = by_width[max(by_width)].mean(0)
    guess = extrapolate(by_width).limit
    extrapolated, seed_mean = (float(np.linalg.norm(a - limit) / norm) for a in (guess, widest))
    return {"widths": len(by_width), "extrapolated_error": extrapolated,
            "widest_mean_error": seed_mean, "ratio": seed_mean / extrapolated}


def _frame(parts: list[pd.DataFrame], by: list[str]) -> pd.DataFrame:
    """The groups' rows as one table, the group's columns and ``reference`` first."""
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    first = [*by, "reference"]
    return table[first + [c for c in table.columns if c not in first]]


def save_limits(result: SweepCorrections, dest: str | Path) -> list[Path]:
    """Each group's fit as ``DEST/finite_width/<group>.npz`` (limit, limit_se, first, and
    ``reference``: analytic or extrapolated) — Θ̂_∞ kept with the sweep where there is no
    closed form; returns the paths."""
    folder = Path(dest) / "finite_width"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for label, (reference, fit) in result.fits.items():
        path = folder / f"{re.sub(r'[^A-Za-z0-9_.=-]+', '_', label)}.npz"
        np.savez(path, limit=fit.limit, limit_se=fit.limit_se, first=fit.first,
                 reference=np.array(reference))
        paths.append(path)
    return paths
