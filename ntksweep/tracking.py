"""MLflow tracking: the only MLflow code (DESIGN.md). Only the sweep driver calls it.

One experiment per sweep name, one parent run per sweep (a resumed sweep continues the same
parent, found by its ``ntksweep.sweep_id`` tag), one child run per trial attempt. Metrics
are buffered and sent with ``log_batch`` (shared/NOTES.md: ~3.6 ms per point one by one to
SQLite, ~50 ms through a server; ~10k points/s batched).

If the tracking server fails mid-sweep the tracker turns itself off (``degraded``) and the
sweep goes on — Parquet stays complete — and ``sync_from_store`` pushes what MLflow is
missing later, idempotently.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import queue
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request, verify_rest_response
from mlflow.utils.validation import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
)
from sqlalchemy import event
from sqlalchemy.engine import Engine

from . import __version__

__all__ = ["Tracker", "Untracked", "default_tracking_uri", "check_tracking_uri", "sync_from_store",
           "TERMINAL"]

log = logging.getLogger(__name__)
TERMINAL = {"completed": "FINISHED", "diverged": "FINISHED", "failed": "FAILED",
            "killed": "KILLED"}
_BATCH = 1000
_LIVE_SECONDS = 2.0  # what a run has buffered reaches the UI at most this late
_TICK = 0.5          # the writer's idle wait, and how often it looks for stale buffers
_IDLE = object()     # "the queue stayed empty for a tick" (None means: stop)
# Batches in flight at once: a tracking server handles requests in parallel (run it with
# --workers N), while a SQLite file has one writer, so there one sender is enough.
_SENDERS = {"http": 4, "https": 4}
_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "databricks")
_LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"
# For an `mlflow server` serving sweeps: MLflow 3 also starts a job runner for its GenAI
# scorers (unused by tracking) that keeps a core busy importing for ~20 s after start-up
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def default_tracking_uri(out_dir: str | Path) -> str:
    """The embedded default: SQLite inside a local output dir. An object store cannot hold a
    SQLite database, so for an ``s3://…`` output dir a tracking server must be named."""
    out = str(out_dir).removeprefix("file://")
    if "://" in out:
        raise ValueError(f"output dir {out!r} is in an object store, where the default SQLite "
                         "MLflow store cannot live: start `mlflow server` and pass "
                         "--tracking-uri http://HOST:5000 (or tracking_uri: in the spec, or "
                         "MLFLOW_TRACKING_URI)")
    return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def check_tracking_uri(uri: str) -> None:
    """Reject malformed URIs before anything runs (the server may still be down later)."""
    parsed = urlparse(uri)
    if parsed.scheme not in _SCHEMES:
        raise ValueError(f"tracking URI {uri!r}: scheme must be one of {', '.join(_SCHEMES)} "
                         "(e.g. http://host:5000 or sqlite:////abs/path/mlflow.db)")
    if parsed.scheme in ("http", "https") and not parsed.netloc:
        raise ValueError(f"tracking URI {uri!r} has no host; write http://HOST:PORT")
    if parsed.scheme == "sqlite" and not uri.startswith("sqlite:///"):
        raise ValueError(f"tracking URI {uri!r}: SQLite URIs look like sqlite:////abs/path.db")


# -- the embedded SQLite store: write-ahead log, no fsync per commit ----------------------
_RELAXED_DBS: set[str] = set()


def _sqlite_path(uri: str) -> str | None:
    if not uri.startswith("sqlite:///") or uri.endswith(":memory:"):
        return None
    return os.path.realpath(uri.removeprefix("sqlite:///").split("?")[0])


def tune_sqlite(uri: str) -> None:
    """Put a SQLite tracking store in WAL mode and commit with ``synchronous=NORMAL``.

    MLflow commits once per call (a run costs five or more), and in SQLite's default
    rollback-journal mode each commit fsyncs the journal and the database: most of the
    writer's time on a local disk. In WAL mode with NORMAL a commit appends to the log and
    syncs only at checkpoints. The database stays consistent; what an OS crash or power cut
    can lose is the last commits, which ``ntksweep sync`` restores from Parquet (the store of
    record). WAL mode is a property of the file (readers such as ``ntksweep ui`` use it too);
    NORMAL is per connection, hence the engine hook. Not for a database on a network
    filesystem (WAL needs shared memory), which the single-machine default never is.
    """
    path = _sqlite_path(uri)
    if path is None or path in _RELAXED_DBS:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as e:  # locked by another writer: keep its journal mode
        log.info("SQLite store %s stays in its journal mode (%s)", path, e)
    _RELAXED_DBS.add(path)
    if not event.contains(Engine, "connect", _relax_sqlite_sync):
        event.listen(Engine, "connect", _relax_sqlite_sync)


def _artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite store's file. MLflow's own
    default there is ``./mlruns`` under whatever directory the driver runs in, which would
    leave an output dir without its artifacts and litter the user's working directory. A
    server or another database keeps its own default (None)."""
    path = _sqlite_path(uri)
    return str(Path(path).parent / "mlartifacts") if path else None


def _relax_sqlite_sync(dbapi_conn, _record) -> None:
    if isinstance(dbapi_conn, sqlite3.Connection):
        main = dbapi_conn.execute("PRAGMA database_list").fetchone()
        if main and main[2] and os.path.realpath(main[2]) in _RELAXED_DBS:
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _flat_params(spec: dict[str, Any]) -> list[Param]:
    return [Param(k, json.dumps(v) if isinstance(v, (list, tuple)) else str(v))
            for k, v in sorted(spec.items())]


def _metrics(record: dict[str, Any], now_ms: int) -> list[Metric]:
    step = int(record["step"])
    return [Metric(k, float(v), now_ms, step) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)]


def _chunks(metrics: list[Metric], params: list[Param], tags: list[RunTag]):
    """(metrics, params, tags) slices within one log-batch request's limits (1000 metrics,
    100 params, 100 tags, 1000 in all), as ``MlflowClient.log_batch`` cuts them."""
    while metrics or params or tags:
        p, params = params[:MAX_PARAMS_TAGS_PER_BATCH], params[MAX_PARAMS_TAGS_PER_BATCH:]
        t, tags = tags[:MAX_PARAMS_TAGS_PER_BATCH], tags[MAX_PARAMS_TAGS_PER_BATCH:]
        room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(p) - len(t))
        m, metrics = metrics[:room], metrics[room:]
        yield m, p, t


def rest_log_batch(uri: str):
    """``log_batch(run_id, metrics, params, tags)`` for an http(s) tracking server, posting
    the REST API's documented ``runs/log-batch`` JSON itself; None for other stores.

    Why: MlflowClient turns every point into a protobuf and prints it to JSON with protobuf's
    pure-Python printer — half of the client's CPU per point (measured against a local
    server: 27–55 → 15 µs per point, 4,100–6,000 → 5,600–7,200 points/s on 2 cores). Auth,
    TLS and retries stay MLflow's: ``http_request`` with the host credentials its RestStore
    reads for the same URI (token, basic auth, certificates).
    """
    if urlparse(uri).scheme not in ("http", "https"):
        return None

    def log_batch(run_id: str, metrics: list[Metric], params: list[Param],
                  tags: list[RunTag]) -> None:
        for m, p, t in _chunks(metrics, params, tags):
            body = {"run_id": run_id,
                    "metrics": [{"key": x.key, "value": x.value, "timestamp": x.timestamp,
                                 "step": x.step} for x in m],
                    "params": [{"key": x.key, "value": x.value} for x in p],
                    "tags": [{"key": x.key, "value": x.value} for x in t]}
            response = http_request(get_default_host_creds(uri), _LOG_BATCH, "POST", json=body)
            verify_rest_response(response, _LOG_BATCH)

    return log_batch


@dataclass
class _Pending:
    """What a child run has not sent yet."""

    params: list[Param] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    tags: list[RunTag] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)  # when the oldest item came in
    ended: bool = False  # the trial has ended: its end request will send all of it at once

    def __bool__(self) -> bool:
        return bool(self.params or self.metrics or self.tags)

    def take(self) -> tuple[list[Param], list[Metric], list[RunTag]]:
        out = self.params, self.metrics, self.tags
        self.params, self.metrics, self.tags = [], [], []
        return out

    def add_metrics(self, metrics: list[Metric]) -> None:
        if not self:
            self.since = time.monotonic()
        self.metrics.extend(metrics)


class Tracker:
    """Parent/child MLflow runs for one sweep, written from the driver process only.

    Every call returns at once: a single background thread performs the MLflow requests in
    order (so the driver's scheduling loop never waits on SQLite fsyncs or HTTP round
    trips). A child run's params, metrics and tags wait in one buffer that goes out as one
    ``log_batch`` — when 1000 points are waiting, when the trial ends, or when its oldest
    item has waited ``_LIVE_SECONDS`` (so the UI stays live). A run is created with its
    first batch, carrying every tag known by then: a long trial shows in the UI within
    seconds of its start, and a short one costs four requests — create (with its start and
    end tags), the spec artifact, one batch of params and metrics, terminate — where
    creating it at its start would add a batch of end tags (~10 % of MLflow's CPU per run on
    SQLite). Start and end times are the driver's, not the writer's. To a tracking server up
    to four batches are in flight at once (a run is terminated only after its own batches
    landed). ``close()`` drains the queue.
    """

    def __init__(self, uri: str, experiment: str, sweep_id: str, sweep_yaml: str = "",
                 *, required: bool = False):
        self.uri, self.sweep_id = uri, sweep_id
        # MLflow prints a "View run" line per finished run on a server: 10^4 lines per sweep
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.degraded: str | None = None
        tune_sqlite(uri)
        self.client = MlflowClient(tracking_uri=uri)
        # (run_id, metrics, params, tags): the REST path for servers, else the client's
        self._log_batch = rest_log_batch(uri) or self.client.log_batch
        self.parent_id = None
        self._runs: dict[int, str] = {}           # handle → MLflow run id
        self._unborn: dict[int, tuple] = {}       # handle → what creating its run needs
        self._buffers: dict[int, _Pending] = {}
        self._handles = itertools.count()
        self._queue: queue.Queue = queue.Queue()
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
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment, artifact_location=_artifact_root(self.uri))
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.`ntksweep.sweep_id` = '{self.sweep_id}' and tags.`ntksweep.role` = 'sweep'",
            max_results=1)
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            return
        run = self.client.create_run(self.experiment_id, run_name=experiment, tags={
            "ntksweep.sweep_id": self.sweep_id, "ntksweep.role": "sweep",
            "ntksweep.version": __version__, "ntksweep.git_commit": _git_commit() or "",
            "host": socket.gethostname()})
        self.parent_id = run.info.run_id
        if sweep_yaml:
            self.client.log_text(self.parent_id, sweep_yaml, "sweep.yaml")

    # -- failure policy: a tracking outage never stops the sweep -------------------------
    def _disable(self, what: str, e: Exception) -> None:
        self.degraded = f"{what}: {type(e).__name__}: {e}"
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
                    op()
                except Exception as e:  # noqa: BLE001  (any client/server/network error)
                    self._disable(getattr(op, "__name__", "request"), e)
            # what has waited _LIVE_SECONDS goes out; looked for once per tick, not per op
            # (a busy queue carries one op per checkpoint record of every running trial)
            if (now := time.monotonic()) >= next_sweep:
                self._flush_all(stale_only=True)
                next_sweep = now + _TICK

    def _submit(self, fn) -> None:
        self._queue.put(fn)

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
        self._log_text(run.info.artifact_uri, spec_json, "trial_spec.json")

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
                if not stale_only or (buf and not buf.ended
                                      and now - buf.since >= _LIVE_SECONDS):
                    self._flush(handle)
            for handle in list(self._inflight):
                self._settle(handle, block=block)
        except Exception as e:  # noqa: BLE001
            self._disable("log_batch", e)

    # -- the driver's API (non-blocking) -------------------------------------------------
    def start_trial(self, trial_id: str, attempt: int, spec: dict[str, Any],
                    worker: dict[str, Any] | None = None) -> int:
        handle = next(self._handles)
        if self.degraded:
            return handle
        tags = {"mlflow.parentRunId": self.parent_id, "ntksweep.sweep_id": self.sweep_id,
                "ntksweep.role": "trial", "trial_id": trial_id, "attempt": str(attempt),
                "status": "running", "ntksweep.version": __version__,
                **{k: str(v) for k, v in (worker or {}).items()}}
        # nothing to send yet: the writer creates the run with its first batch (_flush)
        self._unborn[handle] = (f"{trial_id}-a{attempt}", int(time.time() * 1000), tags,
                                json.dumps(spec, indent=1))
        self._buffers[handle] = _Pending(params=_flat_params(spec))
        return handle

    def _log_text(self, artifact_uri: str, text: str, name: str) -> None:
        # straight to the run's artifact repository: MlflowClient.log_text would first look
        # the run up again (one more request per trial) to learn this same artifact URI
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            get_artifact_repository(artifact_uri, tracking_uri=self.uri).log_artifact(str(path))

    def log_record(self, handle: int | None, record: dict[str, Any]) -> None:
        if handle is None or self.degraded:
            return
        metrics = _metrics(record, int(time.time() * 1000))

        def log_record():
            buf = self._buffers.get(handle)
            if buf is not None:
                buf.add_metrics(metrics)
                if len(buf.metrics) >= _BATCH:
                    self._flush(handle)

        self._submit(log_record)

    def end_trial(self, handle: int | None, status: str, tags: dict[str, Any] | None = None
                  ) -> None:
        if handle is None:
            return
        run_tags = [RunTag("status", status), *[RunTag(k, str(v)) for k, v in (tags or {}).items()
                                                if v is not None]]
        end_ms = int(time.time() * 1000)
        if (pending := self._buffers.get(handle)) is not None:
            pending.ended = True

        def end_trial():
            buf = self._buffers.get(handle)
            if buf is not None:
                buf.tags.extend(run_tags)
            self._flush(handle)  # params, the last metrics and these tags: one batch
            self._settle(handle)
            run_id = self._runs.pop(handle, None)
            self._buffers.pop(handle, None)
            if run_id:
                self.client.set_terminated(run_id, TERMINAL.get(status, "FAILED"), end_ms)

        self._submit(end_trial)

    def log_sweep_artifact(self, local_path: str | Path) -> None:
        path = str(local_path)

        def log_artifact():
            self.client.log_artifact(self.parent_id, path)

        self._submit(log_artifact)

    def close(self, status: str = "FINISHED", summary: dict[str, Any] | None = None) -> None:
        """Finish the parent run and wait until every queued request has been sent."""
        tags = [RunTag(f"ntksweep.{k}", str(v)) for k, v in (summary or {}).items()]

        def close():
            if tags:
                self.client.log_batch(self.parent_id, tags=tags)
            self.client.set_terminated(self.parent_id, status)

        if self.parent_id:
            self._submit(close)
        self._queue.put(None)
        self._thread.join()
        self._senders.shutdown(wait=True)


class Untracked:
    """A Tracker that tracks nothing: a sweep run with ``--no-tracking`` (Parquet only;
    ``ntksweep sync`` pushes it to MLflow later)."""

    degraded = None

    def start_trial(self, *args, **kwargs) -> None:
        return None

    def log_record(self, *args) -> None:
        pass

    def end_trial(self, *args) -> None:
        pass

    def close(self, *args) -> None:
        pass


def sync_from_store(out_dir: str | Path, uri: str, experiment: str, sweep_id: str,
                    sweep_yaml: str = "") -> dict[str, int]:
    """Push every trial in the Parquet store that MLflow lacks (no finished child run with
    its trial_id): one child per missing trial with its params, metric histories and status.
    Idempotent: a second call pushes nothing."""
    from .store import load_results, plain_value

    trials, ckpts = load_results(out_dir)
    tracker = Tracker(uri, experiment, sweep_id, sweep_yaml, required=True)
    existing = {r.data.tags.get("trial_id") for r in tracker.client.search_runs(
        [tracker.experiment_id],
        f"tags.`ntksweep.sweep_id` = '{sweep_id}' and tags.`ntksweep.role` = 'trial' "
        "and attributes.status != 'RUNNING'", max_results=50000)}
    pushed = 0
    spec_cols = [c for c in trials.columns if c in _spec_names()]
    for _, row in trials.iterrows():
        if row["trial_id"] in existing:
            continue
        spec = {c: plain_value(row[c]) for c in spec_cols}
        run_id = tracker.start_trial(row["trial_id"], int(row["attempts"]), spec,
                                     {"synced": "true"})
        for _, rec in ckpts[ckpts["trial_id"] == row["trial_id"]].iterrows():
            values = {k: plain_value(v) for k, v in rec.items()}
            tracker.log_record(run_id, {k: v for k, v in values.items()
                                        if isinstance(v, (int, float))})
        tracker.end_trial(run_id, row["status"], {"error": row["error"] or None})
        pushed += 1
    tracker.close("FINISHED", {"synced_trials": pushed})
    if tracker.degraded:
        raise RuntimeError(f"MLflow at {uri} failed during sync: {tracker.degraded}")
    return {"pushed": pushed, "already_there": len(trials) - pushed}


def _spec_names() -> set[str]:
    from .config import TRIAL_FIELDS

    return set(TRIAL_FIELDS)


def ui_command(uri: str, port: int = 5000) -> list[str]:
    """The command that serves the MLflow UI on this store."""
    import sys

    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(port)]

