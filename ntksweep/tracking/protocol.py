"""What the sweep driver calls on a tracker, and the tracker of an untracked sweep."""

from __future__ import annotations

from typing import Any, Protocol

from ..records import Record, Status

__all__ = ["TrialTracker", "Untracked"]


class TrialTracker(Protocol):
    """What the sweep driver calls; every call returns at once. ``start_trial`` returns a
    handle (None: nothing is tracked) that the other calls take."""

    degraded: str | None
    attempts: dict[str, int]   # trial_id → the highest attempt any of its runs holds

    def start_trial(self, trial_id: str, attempt: int, spec: dict[str, Any],
                    worker: dict[str, Any] | None = None,
                    tags: dict[str, str] | None = None) -> int | None: ...

    def child_runs(self) -> list: ...

    def log_record(self, handle: int | None, record: Record) -> None: ...

    def end_trial(self, handle: int | None, status: Status | str,
                  tags: dict[str, Any] | None = None,
                  summary: dict[str, Any] | None = None) -> None: ...

    def close(self, status: str = "FINISHED", summary: dict[str, Any] | None = None) -> None: ...

    def abandon(self, reason: str) -> None: ...


class Untracked:
    """A ``TrialTracker`` that tracks nothing: a sweep run with ``--no-tracking`` (Parquet
    only; ``ntksweep sync`` pushes it to MLflow later)."""

    degraded = None
    attempts: dict[str, int] = {}

    def start_trial(self, trial_id: str, attempt: int, spec: dict[str, Any],
                    worker: dict[str, Any] | None = None,
                    tags: dict[str, str] | None = None) -> None:
        return None

    def child_runs(self) -> list:
        return []

    def log_record(self, handle: int | None, record: Record) -> None:
        pass

    def end_trial(self, handle: int | None, status: Status | str,
                  tags: dict[str, Any] | None = None,
                  summary: dict[str, Any] | None = None) -> None:
        pass

    def close(self, status: str = "FINISHED", summary: dict[str, Any] | None = None) -> None:
        pass

    def abandon(self, reason: str) -> None:
        pass
