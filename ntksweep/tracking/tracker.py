"""The asynchronous MLflow tracker of a sweep: one parent run per sweep (a resumed sweep
continues the same parent, found by its ``ntksweep.sweep_id`` tag), one child run per trial
attempt. Metrics are buffered and sent with ``log_batch`` (one point per request costs a
round trip each; benchmarks/RESULTS.md).

If the tracking store fails mid-sweep the tracker turns itself off (``degraded``) and the
sweep goes on — Parquet stays complete — and ``ntksweep sync`` pushes what MLflow is
missing later.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from .. import __version__
from ..records import Status
from .batches import RunBuffer, flat_params, record_metrics
from .mlflow_api import (
    RunKey,
    bound_http_requests,
    child_run_keys,
    log_text_artifact,
    rest_log_batch,
)
from .naming import VIEW_PREFIX, axis_tags, run_name, sweep_view, view_key
from .protocol import TrialTracker, Untracked
from .runs import RUN_STATUS, close_stale_runs, find_or_create_parent, open_experiment
from .sqlite import relocate_artifacts, tune_sqlite
from .uri import scrub

__all__ = ["TrialTracker", "Tracker", "Untracked", "open_tracker"]

log = logging.getLogger(__name__)
_BATCH = 1000
_LIVE_SECONDS = 2.0  # what a run has buffered reaches the UI at most this late
_TICK = 0.5          # the writer's idle wait, and how often it looks for stale buffers
_IDLE = object()     # "the queue stayed empty for a tick" (None means: stop)
# Batches in flight at once: a tracking server handles requests in parallel (run it with
# --workers N), while a SQLite file has one writer, so there one sender is enough.
_SENDERS = {"http": 4, "https": 4}
# Requests queued for the writer at most (a few KiB each: a trial's params and metrics).
# Trials that end faster than MLflow can record them would otherwise queue without bound —
# ~8 KiB per trivial trial, gigabytes over 10⁵ of them; past this the driver's calls wait
# for the writer, and the sweep goes at MLflow's pace, as it must at its end anyway.
_MAX_QUEUED = 10_000


class Tracker:
    """Parent/child MLflow runs for one sweep, written from the driver process only.

    Threading contract: the driver's calls (``start_trial``, ``log_record``, ``end_trial``,
    ``log_sweep_artifact``, ``close``) only put requests on a queue and return at once; one
    writer thread owns every run's state (``_runs``, ``_unborn``, ``_buffers``,
    ``_inflight``) and performs the requests in order. The one thing both threads touch is
    ``_ended``, the trials whose end has been called, under ``_lock``: a lagging writer reads
    it so that it does not send an ended trial's buffer in two halves.

    Every call returns at once: a single background thread performs the MLflow requests in
    order (so the driver's scheduling loop never waits on SQLite fsyncs or HTTP round
    trips). A child run's params, metrics and tags wait in one buffer that goes out as one
    ``log_batch`` — when 1000 points are waiting, when the trial ends, or when its oldest
    item has waited ``_LIVE_SECONDS`` (so the UI stays live). A run is created with its
    first batch, carrying every tag known by then: a long trial shows in the UI within
    seconds of its start, and a short one costs four requests — create (with its start and
    end tags), the spec artifact, one batch of params and metrics, terminate — where
    creating it at its start would add a batch of end tags (a measurable share of MLflow's
    CPU per run on SQLite: benchmarks/RESULTS.md). Start and end times are the driver's, not
    the writer's. To a tracking server up to four batches are in flight at once (a run is
    terminated only after its own batches landed). ``close()`` drains the queue.
    """

    ROLES = ("driver", "sync", "artifacts")

    def __init__(self, uri: str, experiment: str, sweep_id: str, sweep_yaml: str = "",
                 *, required: bool = False, axes: tuple[str, ...] = (), description: str = "",
                 role: str = "driver", guard: Callable[[], None] | None = None):
        """``role``: ``driver`` (the sweep's one writer: the parent run goes RUNNING, runs no
        driver is left to end are ended KILLED), ``sync`` (likewise, from ``ntksweep
        sync``, which holds the output dir's lock as a driver does), or ``artifacts`` (only
        adds files to the parent run — a report — and touches no run's status, so it may
        run beside a live sweep). ``guard``: called before each request is sent (the
        driver lock's ``ensure_held``); when it raises, nothing more is sent."""
        if role not in self.ROLES:
            raise ValueError(f"role must be one of {self.ROLES}; got {role!r}")
        self.uri, self.sweep_id, self.role = uri, sweep_id, role
        self._guard = guard or (lambda: None)
        self.axes, self.description = tuple(axes), description
        # MLflow prints a "View run" line per finished run on a server: 10^4 lines per sweep
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.degraded: str | None = None
        bound_http_requests()
        tune_sqlite(uri)
        relocate_artifacts(uri)
        self.client = MlflowClient(tracking_uri=uri)
        # (run_id, metrics, params, tags): the REST path for servers, else the client's
        self._log_batch = rest_log_batch(uri) or self.client.log_batch
        self._lock = threading.Lock()
        self._ended: set[int] = set()
        self.parent_id = None
        self.attempts: dict[str, int] = {}        # trial_id → the highest attempt it has
        self._runs: dict[int, str] = {}           # handle → MLflow run id
        self._unborn: dict[int, tuple] = {}       # handle → what creating its run needs
        self._buffers: dict[int, RunBuffer] = {}
        self._handles = itertools.count()
        self._queue: queue.Queue = queue.Queue(maxsize=_MAX_QUEUED)
        self._senders = ThreadPoolExecutor(_SENDERS.get(urlparse(uri).scheme, 1), "mlflow-send")
        self._inflight: dict[int, list[Future]] = {}
        try:
            self._open(experiment, sweep_yaml)
        except Exception as e:  # noqa: BLE001  (server down, network, auth…)
            if required:
                raise
            self._disable("connect", e)
        self._thread = threading.Thread(target=self._serve, name="mlflow-writer", daemon=True)
        self._thread.start()

    def _open(self, experiment: str, sweep_yaml: str) -> None:
        self.experiment_id = open_experiment(self.client, self.uri, experiment)
        self.parent_id, existed = find_or_create_parent(
            self.client, self.experiment_id, self.sweep_id, name=experiment,
            create=self.role != "artifacts", axes=self.axes, description=self.description,
            sweep_yaml=sweep_yaml)
        if self.role != "artifacts":
            self.client.set_experiment_tag(self.experiment_id,
                                           VIEW_PREFIX + view_key(self.sweep_id),
                                           sweep_view(self.axes))
        if existed and self.role != "artifacts":
            self.client.update_run(self.parent_id, status="RUNNING")
            self.attempts = close_stale_runs(self.client, self.child_runs())

    def child_runs(self) -> list[RunKey]:
        """Every child run of this sweep (id, status, trial, attempt, execution)."""
        return child_run_keys(self.client, self.uri, self.experiment_id, self.sweep_id)

    # -- failure policy: a tracking outage never stops the sweep -------------------------
    def _disable(self, what: str, e: Exception) -> None:
        self.degraded = scrub(f"{what}: {type(e).__name__}: {e}", self.uri)
        log.warning("MLflow tracking disabled for the rest of this sweep (%s); results "
                    "still go to Parquet; run `ntksweep sync` later", self.degraded)

    def _serve(self) -> None:
        next_sweep = 0.0
        while True:
            try:
                op = self._queue.get(timeout=_TICK)
            except queue.Empty:
                op = _IDLE
            if op is None:
                self._flush_all(block=True)
                return
            if op is not _IDLE and not self.degraded:
                try:
                    self._guard()
                    op()
                except Exception as e:  # noqa: BLE001  (any client/server/network error)
                    self._disable(getattr(op, "__name__", "request"), e)
            # what has waited _LIVE_SECONDS goes out; looked for once per tick, not per op
            # (a busy queue carries one op per checkpoint record of every running trial)
            if (now := time.monotonic()) >= next_sweep:
                self._flush_all(stale_only=True)
                next_sweep = now + _TICK

    def _submit(self, fn) -> None:
        """Queue a request, waiting while ``_MAX_QUEUED`` are queued (never forever: a writer
        that has stopped turns tracking off instead)."""
        while True:
            try:
                self._queue.put(fn, timeout=1.0)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    self.degraded = self.degraded or "the MLflow writer thread stopped"
                    return

    def _flush(self, handle: int) -> None:
        buf = self._buffers.get(handle)
        if not buf or self.degraded:
            return
        params, metrics, tags = buf.take()
        if handle in self._unborn:  # the run's first batch: its tags go in with its creation
            self._create(handle, tags)
            tags = []
        if params or metrics or tags:
            self._inflight.setdefault(handle, []).append(self._senders.submit(
                self._log_batch, self._runs[handle], metrics, params, tags))

    def _create(self, handle: int, tags: list[RunTag]) -> None:
        name, start_ms, start_tags, spec_json = self._unborn.pop(handle)
        run = self.client.create_run(self.experiment_id, start_time=start_ms, run_name=name,
                                     tags={**start_tags, **{t.key: t.value for t in tags}})
        self._runs[handle] = run.info.run_id
        log_text_artifact(run.info.artifact_uri, self.uri, spec_json, "trial_spec.json")

    def _settle(self, handle: int, *, block: bool = True) -> None:
        """Wait for this run's batches in flight (``block=False``: only collect the finished
        ones); a failed one raises here, on the writer thread (→ degraded)."""
        futures = self._inflight.pop(handle, [])
        if not block:
            if pending := [f for f in futures if not f.done()]:
                self._inflight[handle] = pending
            futures = [f for f in futures if f.done()]
        for f in futures:
            f.result()

    def _flush_all(self, block: bool = False, stale_only: bool = False) -> None:
        """Send what is buffered (``stale_only``: what has waited ``_LIVE_SECONDS``, so a
        short trial goes out as one batch at its end and a long one stays live in the UI);
        collect (``block``: wait for) what is in flight."""
        now = time.monotonic()
        try:
            for handle, buf in list(self._buffers.items()):
                # a lagging writer would find every trial stale; an ended one goes out whole
                if not stale_only or (buf and now - buf.since >= _LIVE_SECONDS
                                      and not self._has_ended(handle)):
                    self._flush(handle)
            for handle in list(self._inflight):
                self._settle(handle, block=block)
        except Exception as e:  # noqa: BLE001
            self._disable("log_batch", e)

    def _has_ended(self, handle: int) -> bool:
        with self._lock:
            return handle in self._ended

    # -- the driver's API (non-blocking) -------------------------------------------------
    def start_trial(self, trial_id: str, attempt: int, spec: dict[str, Any],
                    worker: dict[str, Any] | None = None,
                    tags: dict[str, str] | None = None) -> int:
        """A new child run for this attempt (created with its first batch); ``tags``: more
        of them (the execution's id, which quarantined file it replaces)."""
        handle = next(self._handles)
        if self.degraded:
            return handle
        tags = {"mlflow.parentRunId": self.parent_id, "ntksweep.sweep_id": self.sweep_id,
                **axis_tags(spec, self.axes),
                "ntksweep.role": "trial", "trial_id": trial_id, "attempt": str(attempt),
                "status": Status.RUNNING.value, "ntksweep.version": __version__,
                **{k: str(v) for k, v in (worker or {}).items()}, **(tags or {})}
        unborn = (run_name(trial_id, attempt, spec, self.axes), int(time.time() * 1000), tags,
                  json.dumps(spec, indent=1))
        params = flat_params(spec)

        def start_trial():
            # nothing to send yet: the writer creates the run with its first batch (_flush)
            self._unborn[handle] = unborn
            self._buffers[handle] = RunBuffer(params=params)

        self._submit(start_trial)
        return handle

    def reopen_trial(self, run_id: str, spec: dict[str, Any]) -> int:
        """A handle on an existing child run: an attempt that a killed driver left
        unfinished in MLflow although Parquet holds its result. The run gets the params it
        lacks; what is logged through the handle skips the (metric, step) points the run
        already has; ``end_trial`` gives it its final status: the attempt keeps one run."""
        handle = next(self._handles)
        if self.degraded:
            return handle
        params = flat_params(spec)

        def reopen_trial():
            data = self.client.get_run(run_id).data
            self._runs[handle] = run_id
            self._buffers[handle] = RunBuffer(
                params=[p for p in params if p.key not in data.params],
                logged={key: {m.step for m in self.client.get_metric_history(run_id, key)}
                        for key in data.metrics})

        self._submit(reopen_trial)
        return handle

    def log_record(self, handle: int | None, record: dict[str, Any]) -> None:
        if handle is None or self.degraded:
            return
        metrics = record_metrics(record, int(time.time() * 1000))

        def log_record():
            buf = self._buffers.get(handle)
            if buf is not None:
                buf.add_metrics(metrics)
                if len(buf.metrics) >= _BATCH:
                    self._flush(handle)

        self._submit(log_record)

    def end_trial(self, handle: int | None, status: str, tags: dict[str, Any] | None = None,
                  summary: dict[str, Any] | None = None) -> None:
        """End the trial's run with ``status`` and ``tags``; ``summary`` (the trials row's
        init_<c> and final_<c> values, ``TrialOutcome.summary``) becomes run-level metrics,
        one point each at step 0, so the runs table and the compare view show them."""
        if handle is None:
            return
        run_tags = [RunTag("status", str(status)),
                    *[RunTag(k, str(v)) for k, v in (tags or {}).items() if v is not None]]
        end_ms = int(time.time() * 1000)
        values = record_metrics({"step": 0, **(summary or {})}, end_ms)
        with self._lock:
            self._ended.add(handle)

        def end_trial():
            buf = self._buffers.get(handle)
            if buf is not None:
                buf.tags.extend(run_tags)
                buf.add_metrics(values)
            self._flush(handle)  # params, the last metrics and these tags: one batch
            self._settle(handle)
            run_id = self._runs.pop(handle, None)
            self._buffers.pop(handle, None)
            self._unborn.pop(handle, None)
            with self._lock:
                self._ended.discard(handle)
            if run_id:
                self.client.set_terminated(run_id, RUN_STATUS[Status(status)], end_ms)

        self._submit(end_trial)

    def log_sweep_artifact(self, local_path: str | Path) -> None:
        path = str(local_path)

        def log_artifact():
            self.client.log_artifact(self.parent_id, path)

        self._submit(log_artifact)

    def pending(self) -> int:
        """Requests queued for the writer and not yet taken (at most ``_MAX_QUEUED``)."""
        return self._queue.qsize()

    def wait_idle(self) -> None:
        """Return once every request queued before this call has been done (or the writer
        has stopped, or turned tracking off)."""
        done = threading.Event()
        self._submit(done.set)
        while not done.wait(1.0):
            if self.degraded or not self._thread.is_alive():
                return

    def abandon(self, reason: str) -> None:
        """Stop without sending anything more (what is queued or buffered is dropped): the
        driver lost its output dir to another one, whose runs these are now."""
        self.degraded = reason
        self._submit(None)
        self._thread.join(30)
        self._senders.shutdown(wait=False, cancel_futures=True)

    def close(self, status: str = "FINISHED", summary: dict[str, Any] | None = None,
              timeout: float = 120.0) -> None:
        """Finish the parent run — ``summary``'s numbers become its metrics, each at the step
        after the ones earlier drivers logged, and its tags; an ``artifacts`` tracker leaves its
        status alone — and
        wait until every queued request has been sent, for at most ``timeout`` seconds: a store
        that stops answering must not hold the sweep's exit (what is left unsent is marked
        ``degraded``; ``ntksweep sync`` pushes it later)."""
        tags = [RunTag(f"ntksweep.{k}", str(v)) for k, v in (summary or {}).items()]
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in (summary or {}).items()
                   if isinstance(v, (int, float)) and math.isfinite(v)]

        def close():
            if tags or metrics:  # each driver's (or sync's) numbers at the next step
                steps = {m.key: len(self.client.get_metric_history(self.parent_id, m.key))
                         for m in metrics}
                self.client.log_batch(self.parent_id, tags=tags, metrics=[
                    Metric(m.key, m.value, m.timestamp, steps[m.key]) for m in metrics])
            if self.role != "artifacts":
                self.client.set_terminated(self.parent_id, status)

        if self.parent_id:
            self._submit(close)
        self._submit(None)  # the stop request
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.degraded = self.degraded or f"close: MLflow did not finish within {timeout:g} s"
            log.warning("MLflow tracking did not finish within %g s; results are complete in "
                        "Parquet; run `ntksweep sync` later", timeout)
            self._senders.shutdown(wait=False, cancel_futures=True)
            return
        self._senders.shutdown(wait=True)


def open_tracker(uri: str, experiment: str, sweep_id: str, *, tracked: bool = True,
                 **options) -> TrialTracker:
    """The one way a sweep's tracker is made: a ``Tracker`` on ``uri`` (``options`` as its
    constructor's: the role — driver, sync or artifacts —, the spec's YAML, the axes, …), or
    ``Untracked`` for a sweep run without MLflow."""
    return Tracker(uri, experiment, sweep_id, **options) if tracked else Untracked()
