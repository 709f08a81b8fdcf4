"""The embedded SQLite tracking store: write-ahead log, no fsync per commit, artifacts beside
the file."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["tune_sqlite", "artifact_root", "relocate_artifacts", "StoreDamage",
           "check_sqlite_store", "set_aside"]

log = logging.getLogger(__name__)
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
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _relax_sqlite_sync):
        event.listen(Engine, "connect", _relax_sqlite_sync)


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite store's file. MLflow's own
    default there is ``./mlruns`` under whatever directory the driver runs in, which would
    leave an output dir without its artifacts and litter the user's working directory. A
    server or another database keeps its own default (None)."""
    path = _sqlite_path(uri)
    return str(Path(path).parent / "mlartifacts") if path else None


def relocate_artifacts(uri: str) -> None:
    """Keep a SQLite store's artifacts beside it after its directory was copied or moved:
    the experiments' and runs' artifact locations that lie in some ``…/mlartifacts`` other
    than the one beside this file (where ``artifact_root`` put them) are rewritten to it.
    Without this a copied output dir's new runs would write their artifacts into the
    original's directory, and a moved one's would recreate the old path."""
    path = _sqlite_path(uri)
    if path is None or not Path(path).is_file():
        return
    here = artifact_root(uri)
    with sqlite3.connect(path, timeout=20) as conn:
        if not conn.execute("SELECT name FROM sqlite_master WHERE name = 'experiments'"
                            ).fetchone():
            return                                    # a store MLflow has not built yet
        for eid, location in conn.execute(
                "SELECT experiment_id, artifact_location FROM experiments").fetchall():
            old = _beside_root(location)
            if old is None or old == here:
                continue
            conn.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                         (here + location.removeprefix("file://")[len(old):], eid))
            conn.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                         "WHERE experiment_id = ? AND artifact_uri LIKE ?",
                         (here, len(old) + 1, eid, old + "/%"))


def _beside_root(location: str | None) -> str | None:
    """The ``/…/mlartifacts`` directory a location lies in, or None (a server's, an S3
    bucket's, MLflow's own ./mlruns)."""
    location = (location or "").removeprefix("file://")
    head, sep, _ = location.partition("/mlartifacts")
    return head + sep if sep and location.startswith("/") else None


def _relax_sqlite_sync(dbapi_conn, _record) -> None:
    if isinstance(dbapi_conn, sqlite3.Connection):
        main = dbapi_conn.execute("PRAGMA database_list").fetchone()
        if main and main[2] and os.path.realpath(main[2]) in _RELAXED_DBS:
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")




@dataclass(frozen=True)
class StoreDamage:
    """A SQLite tracking store that MLflow cannot open as it is. ``runs``: the runs still
    readable in it (0: nothing in it can be lost by setting it aside)."""

    path: str
    problem: str
    runs: int

    def advice(self) -> str:
        return (f"the MLflow store {self.path} is damaged ({self.problem}) and holds "
                f"{self.runs} runs: move it aside — mv {self.path} {self.path}.damaged — and "
                "the next run (or `ntksweep sync OUT`) rebuilds it from Parquet")


_MLFLOW_TABLES = ("alembic_version", "experiments", "runs")


def check_sqlite_store(uri: str) -> StoreDamage | None:
    """A SQLite store's damage (a half-built schema — the disk filled while MLflow created
    it —, a truncated or corrupt file), or None for a sound one or none at all. Reads only."""
    path = _sqlite_path(uri)
    if path is None or not Path(path).is_file():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=20) as conn:
            check = conn.execute("PRAGMA quick_check").fetchone()
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
            missing = [t for t in _MLFLOW_TABLES if t not in tables]
            versions = conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] \
                if "alembic_version" in tables else 0
            runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0] \
                if "runs" in tables else 0
    except sqlite3.DatabaseError as e:      # not a database, or malformed past reading
        return StoreDamage(path, str(e), 0)
    if check and check[0] != "ok":
        return StoreDamage(path, f"quick_check: {check[0]}", runs)
    if missing or not versions:
        return StoreDamage(path, "half-built: " + (f"no {', '.join(missing)} table"
                                                   if missing else "no schema version"), runs)
    return None


def set_aside(damage: StoreDamage) -> str:
    """Move a damaged store (with its -wal and -shm) to ``<file>.damaged-<time>``; returns
    the new name. Nothing is deleted."""
    from .mlflow_api import forget_sqlite_engine

    stamp = time.strftime("%Y%m%dT%H%M%S")
    for suffix in ("-wal", "-shm", ""):
        if Path(damage.path + suffix).exists():
            os.replace(damage.path + suffix, f"{damage.path}.damaged-{stamp}{suffix}")
    forget_sqlite_engine(damage.path)
    return f"{damage.path}.damaged-{stamp}"
