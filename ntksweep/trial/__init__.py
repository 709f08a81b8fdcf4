"""One trial end to end, without Ray, MLflow or Parquet: ``builders`` (the one place a spec
becomes data, a network and a limit), ``train`` (gradient descent, SGD or Adam with a
checkpoint schedule), ``diagnostics`` (kernel velocity, alignment, the coordinate check),
``held_out`` (the test set's columns) and ``runner`` (``run_trial``: a trial's records).

The names below load their module on first use: a reader of the builders (the report's
figures) does not load the runner."""

from __future__ import annotations

import importlib

_EXPORTS = {"TrialCache": ".builders", "build_model": ".builders", "dataset_for": ".builders",
            "inputs": ".builders", "limit_kernels": ".builders", "resolve_device": ".builders",
            "TrialRun": ".runner", "run_trial": ".runner", "warm_up": ".runner"}

__all__ = ["TrialCache", "TrialRun", "run_trial", "warm_up", "dataset_for", "limit_kernels",
           "inputs", "build_model", "resolve_device"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'ntksweep.trial' has no attribute {name!r}")
