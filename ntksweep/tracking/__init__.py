"""MLflow tracking: the only MLflow code (docs/ARCHITECTURE.md: one adapter per system).

- ``uri``: which tracking store a sweep uses (one policy for run, report, ui and sync),
  its validation and redaction; no MLflow import.
- ``sqlite``: the embedded SQLite default's tuning and artifact location.
- ``mlflow_api``: every use of MLflow internals (the REST log-batch, request limits,
  artifact repositories), so an MLflow upgrade breaks in one place.
- ``tracker``: ``Tracker`` (parent/child runs, asynchronous) and ``Untracked``, both
  ``TrialTracker``s.

Import the submodules; this package's own import pulls in no MLflow.
"""

from .uri import (
    SERVER_ENV,
    check_tracking_uri,
    default_tracking_uri,
    redact,
    resolve_tracking_uri,
    ui_command,
)

__all__ = ["SERVER_ENV", "check_tracking_uri", "default_tracking_uri", "redact",
           "resolve_tracking_uri", "ui_command"]
