"""``ntksweep sync``: push to MLflow what a sweep's Parquet store holds and MLflow lacks.

A use case over both adapters (``store`` and ``tracking``); neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

from . import store
from .errors import TrackingError, UserError
from .records import RECORD_COLUMNS, SUMMARY_COLUMNS, Status
from .store.lock import DriverLock
from .tracking.uri import redact

__all__ = ["sync_from_store", "push_missing"]


def sync_from_store(out_dir: str | Path, uri: str, experiment: str, sweep_id: str,
                    sweep_yaml: str = "") -> dict[str, int]:
    """Push every trial of the Parquet store that MLflow lacks (``push_missing``) to the
    store at ``uri``, holding the output dir's lock as a driver does (a live sweep's runs are
    its driver's: refused while one runs). Idempotent: a second call pushes nothing."""
    from .tracking.tracker import open_tracker

    axes, description = _axes_of(sweep_yaml)
    with DriverLock(out_dir):
        tracker = open_tracker(uri, experiment, sweep_id, sweep_yaml=sweep_yaml, required=True,
                               axes=axes, description=description, role="sync")
        counts = push_missing(tracker, out_dir, sweep_id)
        tracker.close("FINISHED", {"synced_trials": counts["pushed"]})
    if tracker.degraded:
        raise TrackingError(f"MLflow at {redact(uri)} failed during sync: {tracker.degraded}")
    return counts


def _axes_of(sweep_yaml: str) -> tuple[tuple[str, ...], str]:
    """The sweep's grid axes and description, from the ``sweep.yaml`` it ran with (so synced
    runs are named and tagged as live ones); none if it cannot be read."""
    from .sweep_spec import load_sweep_spec
    from .yaml_input import load_yaml

    try:
        spec = load_sweep_spec(load_yaml(sweep_yaml, "sweep.yaml")[0] or {})
    except UserError:
        return (), ""
    return tuple(spec.axes()), spec.description


def push_missing(tracker, out_dir: str | Path, sweep_id: str) -> dict[str, int]:
    """Through an open ``Tracker``: for each trial of the Parquet store that has no run whose
    status (its tag) is its Parquet status, its params, metric histories (the checkpoint
    records, as a live run logs them) and status. They go to the run of the same execution
    where a killed driver left it unfinished (it had written Parquet, not yet ended the run:
    the run's ``ntksweep.execution`` tag is the Parquet row's ``execution``), else to a new
    child run numbered after every run the trial has: an execution never has two runs, and
    two executions never share one (a killed attempt's run stays KILLED)."""
    trials = store.load_trials(out_dir)
    if trials.empty:
        return {"pushed": 0, "already_there": 0}
    runs = tracker.child_runs()
    present = {(r.trial_id, r.status) for r in runs}
    missing = trials[[(tid, s) not in present
                      for tid, s in zip(trials["trial_id"], trials["status"])]]
    if missing.empty:        # the common resume: the checkpoints need not be read at all
        return {"pushed": 0, "already_there": len(trials)}
    unfinished = {r.execution: r.run_id for r in runs
                  if r.status in _UNFINISHED and r.execution}
    highest: dict[str, int] = {}
    for r in runs:
        if (r.attempt or "").isdigit():
            highest[r.trial_id] = max(highest.get(r.trial_id, 0), int(r.attempt))
    _, ckpts = store.load_results(out_dir, {"trial_id": list(missing["trial_id"])})
    for _, row in missing.iterrows():
        tid, execution = row["trial_id"], store.plain_value(row["execution"])
        spec = store.spec_from_row(row).to_dict()
        if execution and (run_id := unfinished.get(execution)):
            handle = tracker.reopen_trial(run_id, spec)     # the same execution's own run
        else:   # another execution: its own run, numbered after every run the trial has
            attempt = max(int(row["attempts"]), highest.get(tid, 0) + 1)
            handle = tracker.start_trial(tid, attempt, spec, tags={
                "ntksweep.execution": execution or ""})
        for _, rec in ckpts[ckpts["trial_id"] == tid].iterrows():
            values = {c: store.plain_value(rec[c]) for c in RECORD_COLUMNS}
            tracker.log_record(handle, {k: v for k, v in values.items() if v is not None})
        summary = {k: store.plain_value(row[k]) for k in SUMMARY_COLUMNS if k in row}
        tracker.end_trial(handle, Status(row["status"]),
                          {"error": row["error"] or None, "synced": "true"}, summary=summary)
    return {"pushed": len(missing), "already_there": len(trials) - len(missing)}


_UNFINISHED = {Status.RUNNING.value, Status.KILLED.value}   # what a killed driver leaves
