"""A sweep's data files (``dataset: file``) travel to its workers from the driver, read
there once: a worker on another node sees neither the driver's filesystem nor its working
directory (a relative ``data_path``), and every trial then reads the arrays the driver
checked."""

from __future__ import annotations

from collections.abc import Iterable

import ray

from ..data_files import provide, provided, read_arrays
from ..trial_spec import TrialSpec

__all__ = ["ship_data_files", "receive_data_file"]


def ship_data_files(trials: Iterable[TrialSpec]) -> dict[str, list]:
    """data_path → [an object ref of its arrays] for every file the trials read; the ref in
    a list, so that Ray hands it to a worker unresolved and the worker fetches it once."""
    paths = sorted({t.data_path for t in trials if t.dataset == "file" and t.data_path})
    return {path: [ray.put(read_arrays(path))] for path in paths}


def receive_data_file(path: str, shipped: list) -> None:
    """In a worker: ``path`` reads as the driver's arrays from now on (fetched once)."""
    if not provided(path):
        provide(path, ray.get(shipped[0]))
