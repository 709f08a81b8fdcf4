"""``ntksweep ui``: serve the MLflow UI on a sweep's store, and say where its runs are only
once the server answers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from urllib.parse import urlparse

from ..errors import TrackingError, UserError
from .uri import UI_ENV, redact, ui_command

__all__ = ["serve_ui", "check_port_free", "runs_page", "has_opener"]


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on, before starting anything."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"port {port} on {host} is in use ({e.strerror}): another "
                            "MLflow UI may be serving there; pick another with --port") from None


OPEN_PATH = "/ntksweep/open"        # ui_app's page: the model-training switch, then the runs
WORKFLOW_STORAGE = ("mlflow.workflowType_v1", "machine_learning")   # the UI's own setting
APP_NAME = "ntksweep"                # our ``mlflow.app`` entry point (pyproject.toml)


def runs_page(base: str, experiment_id: str | None, view: str | None = None, *,
              opener: bool = False) -> str:
    """The deep link to an experiment's runs in MLflow 3's model-training view, opening the
    sweep's shared ``view`` (``naming.sweep_view``) where it has one; with ``opener``, through
    ``ui_app``'s page, which also keeps the model-training layout on every page after it."""
    if not experiment_id:
        return base
    if opener:
        return f"{base}{OPEN_PATH}?experiment={experiment_id}" + \
            (f"&view={view}" if view else "")
    shared = f"&viewStateShareKey={view}" if view else ""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning{shared}"


def _experiment(uri: str, name: str, sweep_id: str | None) -> tuple[str | None, str | None]:
    """(the experiment's id, the sweep's view key where the experiment holds its view)."""
    from mlflow.tracking import MlflowClient

    from .naming import VIEW_PREFIX, view_key

    exp = MlflowClient(uri).get_experiment_by_name(name)
    if exp is None:
        return None, None
    key = view_key(sweep_id) if sweep_id else None
    return exp.experiment_id, key if key and VIEW_PREFIX + key in exp.tags else None


def has_opener() -> bool:
    """Whether ``mlflow ui --app-name ntksweep`` can start: the installed package's entry
    point (a checkout run without installing has none)."""
    from importlib.metadata import entry_points

    return any(e.name == APP_NAME for e in entry_points(group="mlflow.app"))


def _wait_until_up(proc: subprocess.Popen, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TrackingError(f"the MLflow UI exited with code {proc.returncode} before "
                                "it answered; its output is above")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise TrackingError(f"the MLflow UI did not answer on {url} within {timeout_s:.0f} s")


def serve_ui(uri: str, experiment: str, host: str, port: int, *, sweep_id: str | None = None,
             timeout_s: float = 120.0, stream=None, what: str = "sweep") -> int:
    """Start the UI, wait until it answers, print the link to the sweep's runs (``what``: or
    a kernel job's), and serve until interrupted (Ctrl-C or SIGTERM reach the server too).
    Returns its exit code. A tracking server (http, https) serves its own UI: its link is
    printed and nothing starts. The store (with any credentials) reaches the UI's process
    through its environment."""
    if urlparse(uri).scheme in ("http", "https"):
        base = redact(uri).rstrip("/")
        print(f"MLflow UI for {what} {experiment!r} (its tracking server's own): "
              f"{runs_page(base, *_experiment(uri, experiment, sweep_id))}", file=stream,
              flush=True)
        return 0
    check_port_free(host, port)
    opener = has_opener()
    cmd = ui_command(port, host, app=APP_NAME if opener else None)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown}:{port}"
    print(f"starting the MLflow UI on {redact(uri)} …", file=stream, flush=True)
    proc = subprocess.Popen(cmd, env={**UI_ENV, **os.environ,
                                      "MLFLOW_BACKEND_STORE_URI": uri})
    forward = lambda signum, _frame: proc.send_signal(signum)  # noqa: E731
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # the link is read from the store while the server starts (MLflow's import here
        # overlaps its own there), and printed once the server answers
        link = runs_page(base, *_experiment(uri, experiment, sweep_id), opener=opener)
        _wait_until_up(proc, base, timeout_s)
        print(f"MLflow UI for {what} {experiment!r}: {link}", file=stream, flush=True)
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
    return 0 if code in (0, -signal.SIGINT, -signal.SIGTERM) else code
