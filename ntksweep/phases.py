"""What a sweep is doing while nothing else shows it — Ray starting, the MLflow store
opening, the workers booting: one line per phase, at once, on stderr beside the progress
(a terminal or a log alike), with the seconds since the command started."""

from __future__ import annotations

import logging
import os
import sys
import time

__all__ = ["say", "quiet_start"]

_T0 = time.monotonic()   # the CLI imports this module first: its start, near enough


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[{time.monotonic() - _T0:5.1f} s] {message}", file=sys.stderr, flush=True)


def quiet_start() -> None:
    """Ray's and MLflow's start-up chatter (a local cluster's token notice, database
    migrations) stays out of the output; ``--verbose`` shows it."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    for name in ("ray", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
