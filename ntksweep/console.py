"""What a sweep tells the person who runs it: progress (a bar on a terminal, a line every
few seconds in a log), the closing summary with the failures and the headline result, and
``ntksweep status``. Reads the store; writes text only."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from . import store
from .lock import live_holder
from .records import Status

__all__ = ["progress", "LogProgress", "failures", "headline", "sweep_numbers",
           "status_lines"]


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


def _width_exponent(trials: pd.DataFrame):
    """(the power-law fit of init dist_inf against width over the finished trials, the
    number of widths), or None with fewer than 2 widths."""
    from .analysis import fit_power_law

    if trials.empty:  # e.g. the output dir went away under a stopping sweep
        return None
    done = trials[trials.status.map(lambda s: Status(s).done)]
    widths = done.width.nunique()
    return (fit_power_law(done.width, done.init_dist_inf), widths) if widths >= 2 else None


def sweep_numbers(trials: pd.DataFrame) -> dict[str, float]:
    """The sweep's MLflow metrics: its trials by status, and the width exponent of init
    dist_inf with its 95 % CI (where there are the widths for them)."""
    counts = trials.status.value_counts()
    numbers = {f"trials_{s.value}": float(counts.get(s.value, 0))
               for s in (Status.COMPLETED, Status.FAILED, Status.DIVERGED)}
    if (found := _width_exponent(trials)) is not None:
        fit = found[0]
        for suffix, v in (("", fit.slope), ("_lo", fit.slope_lo), ("_hi", fit.slope_hi)):
            if v == v:                                                   # NaN: too few points
                numbers[f"width_exponent_init_dist_inf{suffix}"] = float(v)
    return numbers


def headline(trials: pd.DataFrame) -> str | None:
    """The width exponent of init dist_inf, with its 95 % CI (or a caution)."""
    if (found := _width_exponent(trials)) is None:
        return None
    fit, widths = found
    text = f"init dist_inf ∝ width^{fit.slope:.2f}"
    if widths < 3:
        return text + f" (from {widths} widths only: no confidence interval; Θ_∞ theory: −0.5)"
    return text + f" [{fit.slope_lo:.2f}, {fit.slope_hi:.2f}] (95 % CI; theory: −0.5)"


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
