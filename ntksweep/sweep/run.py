"""``run_sweep``: one run of a sweep — the checks before anything runs (``plan.preflight``),
the files it cannot trust set aside, the trials left to do ordered longest first — handed
to the driver (``driver.SweepRun``), and its summary."""

from __future__ import annotations

import time
import warnings
from collections import deque
from dataclasses import dataclass, field

from .. import phases, store
from ..plan import preflight
from ..sweep_spec import SweepSpec
from ..tracking.sqlite import set_aside
from ..tracking.uri import redact
from .driver import SweepRun
from .shape import work_estimate

__all__ = ["SweepSummary", "run_sweep"]


@dataclass(frozen=True)
class SweepSummary:
    sweep_id: str
    out_dir: str
    total: int
    skipped: int
    counts: dict[str, int]
    retried: int
    wall_seconds: float
    interrupted: bool = False
    tracking_uri: str = ""                # "" when the sweep was not tracked in MLflow
    tracking_degraded: str | None = None
    workers: list[dict] = field(default_factory=list)
    disk_full: str | None = None          # the sweep stopped because its disk filled up


def run_sweep(spec: SweepSpec, *, address: str | None = None, tracking_uri: str | None = None,
              force: bool = False, quiet: bool = False, num_cpus: int | None = None,
              tracking: bool = True, on_event=None) -> SweepSummary:
    """Run every trial of ``spec`` not already done in its output dir; see the module doc.
    ``tracking=False``: Parquet only, no MLflow runs (``ntksweep sync`` pushes them later);
    the output dir still names the tracking URI that sync would use."""
    started = time.perf_counter()
    pre = preflight(spec, tracking_uri=tracking_uri, tracking=tracking, force=force,
                    address=address)
    out, sid, uri, trials = pre.out, pre.sweep_id, pre.uri, pre.trials
    if pre.damaged_store is not None:       # nothing in it to lose: aside, and start afresh
        moved = set_aside(pre.damaged_store)
        warnings.warn(f"the MLflow store was {pre.damaged_store.problem}; moved it to {moved} "
                      "and tracking starts a new one (Parquet's trials are pushed to it)",
                      stacklevel=2)
    # files that do not read back, or disagree with each other, go aside; their trials rerun
    moved = store.repair(out)
    done, attempts = store.trial_states(out) if moved else (pre.done, pre.attempts)
    pending = [t for t in trials if not (s := done.get(t.trial_id)) or not s.done]
    # longest first; the sort is stable (also reversed), so ties stay in grid order
    todo = deque((t, 1) for t in sorted(pending, key=work_estimate, reverse=True))
    skipped = len(trials) - len(todo)
    phases.say(f"sweep {spec.name!r} → {out}: {len(todo)} trials to run, {skipped} already "
               "done; starting Ray, MLflow and the workers …", quiet)
    run = SweepRun(spec, out, sid, todo, attempts, quiet=quiet, on_event=on_event,
                   quarantined=store.quarantined_trials(moved))
    run.start(address, num_cpus, uri, pre.explicit, tracking)
    run.loop()
    return SweepSummary(sid, out, len(trials), skipped + run.written_late, dict(run.counts),
                        run.retried, time.perf_counter() - started, run.interrupted,
                        redact(uri) if tracking else "", run.tracker.degraded, run.workers,
                        run.disk_full)
