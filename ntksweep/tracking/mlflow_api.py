"""Every use of MLflow's internals, in one place: an MLflow upgrade that moves them breaks
here and nowhere else. The rest of ``tracking`` uses MLflow's public client."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request, verify_rest_response
from mlflow.utils.validation import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

__all__ = ["chunks", "rest_log_batch", "log_text_artifact", "bound_http_requests",
           "forget_sqlite_engine", "RunKey", "child_run_keys", "runs_of"]

_LOG_BATCH = "/api/2.0/mlflow/runs/log-batch"


def chunks(metrics: list[Metric], params: list[Param], tags: list[RunTag]):
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
    pure-Python printer — half of the client's CPU per point (benchmarks/RESULTS.md). Auth,
    TLS and retries stay MLflow's: ``http_request`` with the host credentials its RestStore
    reads for the same URI (token, basic auth, certificates).
    """
    if urlparse(uri).scheme not in ("http", "https"):
        return None

    def log_batch(run_id: str, metrics: list[Metric], params: list[Param],
                  tags: list[RunTag]) -> None:
        for m, p, t in chunks(metrics, params, tags):
            body = {"run_id": run_id,
                    "metrics": [{"key": x.key, "value": x.value, "timestamp": x.timestamp,
                                 "step": x.step} for x in m],
                    "params": [{"key": x.key, "value": x.value} for x in p],
                    "tags": [{"key": x.key, "value": x.value} for x in t]}
            response = http_request(get_default_host_creds(uri), _LOG_BATCH, "POST", json=body)
            verify_rest_response(response, _LOG_BATCH)

    return log_batch




def log_text_artifact(artifact_uri: str, tracking_uri: str, text: str, name: str) -> None:
    """Write ``text`` as artifact ``name`` straight to a run's artifact repository
    (``MlflowClient.log_text`` would first look the run up again: one more request per run,
    to learn this same artifact URI)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text)
        get_artifact_repository(artifact_uri, tracking_uri=tracking_uri).log_artifact(str(path))


def bound_http_requests(max_retries: int = 2, timeout_s: int = 20) -> None:
    """Bound MLflow's HTTP retries and timeouts for this process unless the user set them:
    its defaults retry a dead server for minutes, and the sweep would wait that long at exit
    for runs that ``ntksweep sync`` can push later."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))


def forget_sqlite_engine(path: str) -> None:
    """Drop MLflow's cached engine of a SQLite store at ``path`` (MLflow keeps one per URI for
    the process): after the file was set aside, a new store at that path must not be read
    through connections to the old one."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    with SqlAlchemyStore._engine_map_lock:
        for uri in [u for u in SqlAlchemyStore._engine_map if u.startswith("sqlite:///")
                    and os.path.realpath(u.removeprefix("sqlite:///").split("?")[0]) == path]:
            SqlAlchemyStore._engine_map.pop(uri).dispose()
    # the stores built on those engines (created their tables once, at construction)
    type(_tracking_store_registry)._get_store_with_resolved_uri.cache_clear()


def runs_of(sweep_id: str, role: str, extra: str = "") -> str:
    """The search filter of a sweep's runs of one role (``sweep``: its parent, ``trial``:
    its children), and ``extra`` conditions."""
    query = f"tags.`ntksweep.sweep_id` = '{sweep_id}' and tags.`ntksweep.role` = '{role}'"
    return f"{query} and {extra}" if extra else query


@dataclass(frozen=True)
class RunKey:
    """What sync needs of a child run: its id, the status of its attempt in ntksweep's
    ``Status`` values (see ``attempt_status``), its trial, attempt and execution."""

    run_id: str
    status: str | None
    trial_id: str | None
    attempt: str | None
    execution: str | None


def attempt_status(run_status: str | None, tag: str | None) -> str | None:
    """An attempt's status from its run: the ``status`` tag says how a *finished* run ended
    (completed or diverged); MLflow's own status rules otherwise — a driver killed between
    its last batch and ending the run leaves the tag saying completed on a RUNNING run,
    which a resume ends KILLED."""
    if run_status == "FINISHED":
        return tag if tag in ("completed", "diverged") else "completed"
    return {"RUNNING": "running", "SCHEDULED": "running", "KILLED": "killed",
            "FAILED": "failed"}.get(run_status or "", tag)


_RUN_KEYS_SQL = """
SELECT r.run_uuid, r.status,
       MAX(CASE WHEN t.key = 'status' THEN t.value END),
       MAX(CASE WHEN t.key = 'trial_id' THEN t.value END),
       MAX(CASE WHEN t.key = 'attempt' THEN t.value END),
       MAX(CASE WHEN t.key = 'ntksweep.execution' THEN t.value END)
FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid
WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active'
  AND r.run_uuid IN (SELECT run_uuid FROM tags WHERE key = 'ntksweep.sweep_id' AND value = ?)
  AND r.run_uuid IN (SELECT run_uuid FROM tags WHERE key = 'ntksweep.role' AND value = 'trial')
GROUP BY r.run_uuid
"""


def child_run_keys(client, uri: str, experiment_id: str, sweep_id: str) -> list[RunKey]:
    """Every child run of a sweep, as ``RunKey``s. From a SQLite store by one query on
    MLflow's tables (its search builds each run whole, ~10 ms a run: minutes for 10⁵); from
    any other store by its search, a page at a time (no cap on the number of runs)."""
    if uri.startswith("sqlite:///"):
        import sqlite3
        from contextlib import closing

        path = uri.removeprefix("sqlite:///").split("?")[0]
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
            rows = conn.execute(_RUN_KEYS_SQL, (int(experiment_id), sweep_id)).fetchall()
        return [RunKey(run_id, attempt_status(status, tag), *rest)
                for run_id, status, tag, *rest in rows]
    keys, token = [], None
    query = runs_of(sweep_id, "trial")
    while True:
        page = client.search_runs([experiment_id], query, max_results=1000, page_token=token)
        keys += [RunKey(r.info.run_id, attempt_status(r.info.status, r.data.tags.get("status")),
                        r.data.tags.get("trial_id"),
                        r.data.tags.get("attempt"), r.data.tags.get("ntksweep.execution"))
                 for r in page]
        token = page.token
        if not token:
            return keys
