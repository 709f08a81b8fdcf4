"""What a sweep tells the person who runs it: progress (a bar on a terminal, a line every
few seconds in a log), the closing summary with the failures and the headline result, and
``ntksweep status``. Reads the store; writes text only."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import store
from .records import Status
from .store.lock import live_holder

__all__ = ["progress", "LogProgress", "failures", "headline", "exponent_lines", "stability_notes",
           "sweep_numbers", "status_lines", "SUMMARY_COLUMNS", "duration_text", "bytes_text"]


def duration_text(seconds: float) -> str:
    """12.3 s, 4.5 min, 2.5 h."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 2 * 3600 else f"{seconds / 3600:.1f} h"


def bytes_text(n: float) -> str:
    """512 B, 3.4 kB, 12.5 MB, 1.2 GB, 3.1 TB (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


class LogProgress:
    """tqdm's interface for output that is not a terminal (cluster logs, files): one line
    every ``every`` seconds and one at the end, no carriage returns. The ETA waits for the
    first ``warmup`` trials (the workers' start-up is in them) and then extrapolates the
    rate since."""

    def __init__(self, total: int, every: float = 10.0, stream=None, warmup: int = 1):
        self.total, self.n, self.every, self.warmup = total, 0, every, warmup
        self.stream = stream or sys.stderr
        self.started = self.last = time.monotonic()
        self.warm: tuple[float, int] | None = None     # (time, trials) when warm-up ended
        self.postfix: dict = {}

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.warm is None and self.n >= self.warmup:
            self.warm = (time.monotonic(), self.n)
        if time.monotonic() - self.last >= self.every:
            self._line()

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = values

    def _eta(self, now: float) -> str:
        if self.warm is None or self.n == self.warm[1]:
            return ", warming up" if self.n < self.total else ""
        rate = (self.n - self.warm[1]) / max(now - self.warm[0], 1e-9)
        return f", ETA {(self.total - self.n) / rate:.0f} s"

    def _line(self) -> None:
        self.last = now = time.monotonic()
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(f"trials: {self.n}/{self.total} done{extra}, {now - self.started:.0f} s"
              f"{self._eta(now)}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.total:
            self._line()


class _WarmBar:
    """A tqdm bar that shows no time estimate until the first ``warmup`` trials are done:
    with the workers' start-up in them, its first estimate would read minutes for a sweep
    of seconds."""

    WARMING = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
               "[{elapsed}, warming up{postfix}]")

    def __init__(self, bar, warmup: int):
        self.bar, self.warmup = bar, warmup
        bar.bar_format = self.WARMING
        bar.refresh()

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        if self.bar.bar_format is not None and self.bar.n >= self.warmup:
            self.bar.bar_format = None
            self.bar.refresh()

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.bar.set_postfix(refresh=refresh, **values)

    def close(self) -> None:
        self.bar.close()


def progress(total: int, quiet: bool, warmup: int = 1):
    """A tqdm bar on a terminal, ``LogProgress`` lines otherwise, nothing when ``quiet``;
    no time estimate before ``warmup`` trials (the first wave, one per worker) are done."""
    from tqdm.auto import tqdm

    if not quiet and not sys.stderr.isatty():
        return LogProgress(total, warmup=warmup)
    bar = tqdm(total=total, desc="trials", unit="trial", disable=quiet, dynamic_ncols=True)
    return bar if quiet else _WarmBar(bar, warmup)


def failures(trials: pd.DataFrame, axes: list[str], limit: int = 10) -> list[str]:
    """One line per failed trial of a trials table: its id, its axes, its error's last line."""
    failed = trials[trials.status == Status.FAILED.value]
    lines = []
    for _, row in failed.head(limit).iterrows():
        where = ", ".join(f"{a}={row[a]}" for a in axes if a in row)
        last = (row["error"] or "").strip().splitlines()[-1:] or ["(no error text)"]
        lines.append(f"  {row['trial_id']} ({where}): {last[0][:200]}")
    if len(failed) > limit:
        lines.append(f"  … and {len(failed) - limit} more")
    return lines


def _done(trials: pd.DataFrame) -> pd.DataFrame:
    if trials.empty:  # e.g. the output dir went away under a stopping sweep
        return trials
    return trials[trials.status.map(lambda s: Status(s).done)]


def _exponents(trials: pd.DataFrame) -> pd.DataFrame:
    """init dist_inf's width exponent per group of the finished trials (``analysis``: every
    field the sweep varies but width and the seeds); empty with fewer than 2 widths."""
    from .analysis.stats import width_exponents

    done = _done(trials)
    if done.empty or done.width.nunique() < 2:
        return pd.DataFrame()
    return width_exponents(done, "init_dist_inf", by=())


def _slope_text(row: pd.Series) -> str:
    """A fitted width exponent with its interval: ``width^-0.52 [-0.55, -0.49]``."""
    return f"width^{row.slope:.2f} [{row.slope_lo:.2f}, {row.slope_hi:.2f}]"


def _group_name(row: pd.Series, by: list[str], sep: str = ", ") -> str:
    from .analysis.stats import group_label

    return group_label(by, tuple(row[c] for c in by), sep)


def _metric_safe(text: str) -> str:
    """MLflow metric names hold letters, digits and ``_ - . / : space`` only."""
    return "".join(c if c.isalnum() or c in "_-./: " else " " for c in text).strip()


SUMMARY_COLUMNS = ("status", "init_dist_inf")   # beside the spec fields: what it reads


def sweep_numbers(trials: pd.DataFrame) -> dict[str, float]:
    """The sweep's MLflow metrics: its trials by status, and init dist_inf's width exponent
    with its 95 % CI per group where it has ``MIN_WIDTHS`` widths
    (``width_exponent_init_dist_inf``; ``…/<group>`` for each group of a sweep of several)."""
    counts = trials.status.value_counts()
    numbers = {f"trials_{s.value}": float(counts.get(s.value, 0))
               for s in (Status.COMPLETED, Status.FAILED, Status.DIVERGED)}
    exps = _exponents(trials)
    by = [c for c in exps.columns if c not in _EXPONENT_COLUMNS]
    for _, row in exps.iterrows():
        group = f"/{_metric_safe(_group_name(row, by, ' '))}" if len(exps) > 1 else ""
        for suffix in ("", "_lo", "_hi"):
            if np.isfinite(v := row[f"slope{suffix}"]):
                numbers[f"width_exponent_init_dist_inf{suffix}{group}"] = float(v)
    return numbers


_EXPONENT_COLUMNS = ("metric", "slope", "slope_lo", "slope_hi", "widths", "points", "note")


def headline(trials: pd.DataFrame, limit: int = 12) -> list[str]:
    """init dist_inf's width exponent with its 95 % CI — one line for a sweep of one group,
    a line per group otherwise (never one fit over different networks); from fewer than
    ``MIN_WIDTHS`` widths, the seed means at the narrowest and widest width instead."""
    exps = _exponents(trials)
    if exps.empty:
        return []
    by = [c for c in exps.columns if c not in _EXPONENT_COLUMNS]
    done = _done(trials)
    lines = []
    for _, row in exps.head(limit).iterrows():
        if np.isfinite(row.slope):
            text = f"init dist_inf ∝ {_slope_text(row)} (95 % CI; theory: −0.5)"
        else:
            rows = done[(done[by] == row[by]).all(axis=1)] if by else done
            means = rows.groupby("width").init_dist_inf.mean()
            if means.isna().all():
                text = "no infinite-width limit to compare with (dist_inf is NaN)"
                lines.append(text if not by else f"  {_group_name(row, by)}: {text}")
                continue
            text = (f"init dist_inf {means.iloc[0]:.3g} at width {means.index[0]} → "
                    f"{means.iloc[-1]:.3g} at width {means.index[-1]} ({row.note}; "
                    f"3 widths or more give the exponent)")
        lines.append(text if not by else f"  {_group_name(row, by)}: {text}")
    if by:
        lines.insert(0, f"per group ({', '.join(by)}):")
    if len(exps) > limit:
        lines.append(f"  … and {len(exps) - limit} more groups (ntksweep report OUT)")
    return lines


def exponent_lines(exps: pd.DataFrame, limit: int = 24) -> list[str]:
    """The report's fitted width exponents (``analysis.report``'s ``exponents``), a line
    each: group, metric, slope with its 95 % CI, and the widths it was fitted over."""
    by = [c for c in exps.columns if c not in _EXPONENT_COLUMNS]
    lines = []
    for _, row in exps.head(limit).iterrows():
        fit = _slope_text(row) if np.isfinite(row.slope) else f"no exponent ({row.note})"
        lines.append(f"  {_group_name(row, by)}: {row.metric} ∝ {fit}, widths {row.widths}, "
                     f"{row.points} trials")
    if len(exps) > limit:
        lines.append(f"  … and {len(exps) - limit} more in the report's tables")
    return ["width exponents (95 % CI):", *lines] if lines else []


def stability_notes(trials: pd.DataFrame) -> list[str]:
    """A line per group (every varying field but width and the seeds) whose trials train
    near or past gradient descent's edge of stability: the median over its trials of
    2ηλ_max(Θ_0)/N ≥ ``NEAR_EDGE`` (the linearised net's GD diverges at 2). Its kernel
    moves because of the step size, not only the width, so its movement does not compare
    with a group's far from the edge."""
    from .analysis.stats import NEAR_EDGE, group_columns, group_label, groups

    done = _done(trials)
    if done.empty or "init_lr_sharpness" not in done or done.init_lr_sharpness.isna().all():
        return []
    by = group_columns(done)
    lines = []
    for key, g in groups(done, by):
        typical, worst = g.init_lr_sharpness.median(), g.init_lr_sharpness.max()
        if typical >= NEAR_EDGE:    # the narrowest nets' own kernels scatter up and down
            where = "past" if typical >= 2 else "near"
            lines.append(f"  {group_label(by, key, ', ')}: 2ηλ_max(Θ₀)/N {typical:.2f} "
                         f"(median; up to {worst:.2f}), {where} gradient descent's edge of "
                         "stability (2); lower its lr to compare its kernel's movement with "
                         "the others'")
    return lines


def status_lines(out: str | Path) -> list[str]:
    """``ntksweep status OUT``: the sweep, its trials by status, and whether a driver runs."""
    meta = store.read_meta(out)
    counts = store.load_trials(out).status.value_counts().to_dict()
    lines = [f"sweep {meta.name!r} (id {meta.sweep_id}) in {out}" if meta else f"{out}"]
    lines.append("trials: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                               or "none finished yet"))
    held = live_holder(out)
    lines.append("driver: none running" if held is None else
                 f"driver: running on host {held.get('host')!r}, pid {held.get('pid')}, for "
                 f"{time.time() - float(held.get('started', time.time())):.0f} s")
    return lines
