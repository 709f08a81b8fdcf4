"""What a run's requests carry: a spec as MLflow params, a checkpoint record as metrics, and
the buffer in which a child run's params, metrics and tags wait for their one batch."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Metric, Param, RunTag

from ..records import Record

__all__ = ["RunBuffer", "flat_params", "record_metrics"]


def flat_params(spec: dict[str, Any]) -> list[Param]:
    """A trial spec's fields as params, sorted; a list as its JSON."""
    return [Param(k, json.dumps(v) if isinstance(v, (list, tuple)) else str(v))
            for k, v in sorted(spec.items())]


def record_metrics(record: Record, now_ms: int) -> list[Metric]:
    """A checkpoint record's finite numbers as metrics at its step (MLflow stores no NaN
    history worth plotting; a NaN column says "not defined here", as the Parquet row does)."""
    step = int(record["step"])
    return [Metric(k, float(v), now_ms, step) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)]


@dataclass
class RunBuffer:
    """What a child run has not sent yet. ``logged``: metric key → the steps the run already
    has (a reopened run), which are not sent again."""

    params: list[Param] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    tags: list[RunTag] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)  # when the oldest item came in
    logged: dict[str, set[int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.params or self.metrics or self.tags)

    def take(self) -> tuple[list[Param], list[Metric], list[RunTag]]:
        out = self.params, self.metrics, self.tags
        self.params, self.metrics, self.tags = [], [], []
        return out

    def add_metrics(self, metrics: list[Metric]) -> None:
        if self.logged:
            metrics = [m for m in metrics if m.step not in self.logged.get(m.key, ())]
        if not self:
            self.since = time.monotonic()
        self.metrics.extend(metrics)
