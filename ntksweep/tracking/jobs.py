"""A kernel job's MLflow run (``ntksweep.gram``): one run per execution of the job, in an
experiment named after it — its spec as params, its progress (tiles done, entries, entries
per second) as metrics stepped by tiles done, at most every few seconds (a SQLite store
takes tens of ms per write), and the devices it ran on as a tag."""

from __future__ import annotations

import socket
import time
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from .. import __version__
from .runs import open_experiment
from .sqlite import tune_sqlite

__all__ = ["JobRun", "LOG_EVERY_S"]

LOG_EVERY_S = 5.0


class JobRun:
    """The run; ``log(step, metrics)`` buffers and sends every ``LOG_EVERY_S``;
    ``end(status, metrics, tags)`` sends the rest and closes it."""

    def __init__(self, uri: str, experiment: str, name: str, params: dict[str, Any]):
        tune_sqlite(uri)
        self.client = MlflowClient(uri)
        exp = open_experiment(self.client, uri, experiment)
        run = self.client.create_run(exp, run_name=name, tags={
            "ntksweep.role": "kernel_job", "ntksweep.version": __version__,
            "host": socket.gethostname()})
        self.run_id = run.info.run_id
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000])
                                                   for k, v in params.items()])
        self._buffer: list[Metric] = []
        self._sent = time.monotonic()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if time.monotonic() - self._sent >= LOG_EVERY_S:
            self._flush()

    def _flush(self) -> None:
        for i in range(0, len(self._buffer), 1000):      # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=self._buffer[i:i + 1000])
        self._buffer, self._sent = [], time.monotonic()

    def end(self, status: str = "FINISHED", metrics: dict[str, float] | None = None,
            tags: dict[str, str] | None = None) -> None:
        if metrics:
            self.log(0, metrics)
        self._flush()
        for key, value in (tags or {}).items():
            self.client.set_tag(self.run_id, key, value)
        self.client.set_terminated(self.run_id, status)
