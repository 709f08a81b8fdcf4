"""Which MLflow store a sweep is tracked in: one policy, used by ``run``, ``report``, ``ui``
and ``sync``. No MLflow import here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse, urlunparse

from ..errors import TrackingError
from ..records import EMBEDDED_STORE

__all__ = ["SERVER_ENV", "UI_ENV", "EMBEDDED", "default_tracking_uri", "check_tracking_uri",
           "resolve_tracking_uri", "recorded_form", "is_embedded", "redact", "scrub",
           "credentials_env", "ui_command"]

EMBEDDED = EMBEDDED_STORE     # what sweep.json records for the embedded default

_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "databricks")
# For an `mlflow server` serving sweeps: MLflow 3 also starts a job runner for its GenAI
# scorers, which tracking does not use and which keeps a core busy importing after start-up
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# ... and `ntksweep ui`'s own server, quiet: its dependencies' warnings and MLflow's start-up
# notices are not the user's business (a failing server's errors still show)
UI_ENV = {**SERVER_ENV, "PYTHONWARNINGS": "ignore", "MLFLOW_LOGGING_LEVEL": "WARNING"}


def default_tracking_uri(out_dir: str | Path) -> str:
    """The embedded default: SQLite inside a local output dir. An object store cannot hold a
    SQLite database, so for an ``s3://…`` output dir a tracking server must be named."""
    out = str(out_dir).removeprefix("file://")
    if "://" in out:
        raise TrackingError(f"output dir {out!r} is in an object store, where the default "
                            "SQLite MLflow store cannot live: start `mlflow server` and pass "
                            "--tracking-uri http://HOST:5000 (or tracking_uri: in the spec, or "
                            "MLFLOW_TRACKING_URI)")
    return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def check_tracking_uri(uri: str) -> None:
    """Reject malformed URIs before anything runs (the server may still be down later)."""
    parsed = urlparse(uri)
    if parsed.scheme not in _SCHEMES:
        raise TrackingError(f"tracking URI {redact(uri)!r}: scheme must be one of "
                            f"{', '.join(_SCHEMES)} (e.g. http://host:5000 or "
                            "sqlite:////abs/path/mlflow.db)")
    if parsed.scheme in ("http", "https") and not parsed.netloc:
        raise TrackingError(f"tracking URI {redact(uri)!r} has no host; write http://HOST:PORT")
    if parsed.scheme == "sqlite" and not uri.startswith("sqlite:///"):
        raise TrackingError(f"tracking URI {uri!r}: SQLite URIs look like "
                            "sqlite:////abs/path.db")


def is_embedded(recorded: str | None) -> bool:
    """Whether sweep.json's URI is the embedded default: ``EMBEDDED``, or — by its shape, as
    versions before 0.3 recorded it — an absolute SQLite URI of a file named mlflow.db (the
    output dir it names may since have been copied or moved)."""
    return recorded == EMBEDDED or bool(
        recorded and recorded.startswith("sqlite:///") and recorded.endswith("/mlflow.db"))


def recorded_form(uri: str, out_dir: str | Path) -> str:
    """What sweep.json records of the URI a sweep runs with: ``EMBEDDED`` for the default
    inside ``out_dir``, else the URI without its credentials."""
    try:
        if uri == default_tracking_uri(out_dir):
            return EMBEDDED
    except TrackingError:           # an object-store output dir has no default
        pass
    return redact(uri)


def resolve_tracking_uri(given: str | None, *, spec_uri: str | None = None,
                         recorded: str | None = None, out_dir: str | Path | None = None
                         ) -> tuple[str, bool]:
    """(uri, explicit): the first of ``given`` (--tracking-uri), ``spec_uri`` (the spec's
    tracking_uri:), $MLFLOW_TRACKING_URI, ``recorded`` (what the sweep ran with, from its
    sweep.json; the embedded default stands for the SQLite file in ``out_dir`` as it is
    now), else the SQLite default inside ``out_dir``. ``explicit``: named by the user (a
    multi-node sweep may use an explicit SQLite file, never the default). Raises
    ``TrackingError`` when none applies; validates the result."""
    explicit = given or spec_uri or os.environ.get("MLFLOW_TRACKING_URI")
    uri = explicit or (None if is_embedded(recorded) else recorded)
    if not uri:
        if out_dir is None:
            raise TrackingError("no MLflow store is named: pass --tracking-uri http://HOST:5000")
        uri = default_tracking_uri(out_dir)
    check_tracking_uri(uri)
    return uri, bool(explicit)


def redact(uri: str) -> str:
    """The URI without its credentials (``user:password@``), as it may be stored or shown;
    credentials belong in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD."""
    parsed = urlparse(uri)
    if "@" not in parsed.netloc:
        return uri
    return urlunparse(parsed._replace(netloc=parsed.netloc.rsplit("@", 1)[1]))


def scrub(text: str, uri: str) -> str:
    """``text`` (an error message that may quote the URI) without the URI's credentials."""
    parsed = urlparse(uri)
    if "@" not in parsed.netloc:
        return text
    userinfo = parsed.netloc.rsplit("@", 1)[0]
    return text.replace(userinfo + "@", "").replace(userinfo, "***")


def credentials_env(uri: str) -> dict[str, str]:
    """The URI's ``user:password@`` as the environment MLflow reads them from
    (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD); empty without them."""
    parsed = urlparse(uri)
    if not parsed.username:
        return {}
    return {"MLFLOW_TRACKING_USERNAME": unquote(parsed.username),
            "MLFLOW_TRACKING_PASSWORD": unquote(parsed.password or "")}


def ui_command(port: int = 5000, host: str = "127.0.0.1", app: str | None = None
               ) -> list[str]:
    """The command that serves the MLflow UI (``app``: an ``mlflow.app`` entry point's name);
    its store goes in its environment (``MLFLOW_BACKEND_STORE_URI``), never on a command line
    others can read in ``ps``."""
    # one worker: a local UI serves one user, and each of MLflow's default four imports
    # MLflow (seconds on 2 cores) before the first page; uvicorn's per-request lines off
    return [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port),
            "--workers", "1", "--uvicorn-opts", "--log-level warning",
            *(["--app-name", app] if app else [])]
