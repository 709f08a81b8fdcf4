"""One trial end to end, without Ray, MLflow or Parquet: ``builders`` (the one place a spec
becomes data, a network and a limit), ``train`` (gradient descent, SGD or Adam with a
checkpoint schedule), ``diagnostics`` (kernel velocity, alignment, the coordinate check),
``held_out`` (the test set's columns) and ``runner`` (``run_trial``: a trial's records)."""

from .builders import (
    TrialCache,
    build_model,
    dataset_for,
    inputs,
    limit_kernels,
    resolve_device,
)
from .runner import TrialRun, run_trial, warm_up

__all__ = ["TrialCache", "TrialRun", "run_trial", "warm_up", "dataset_for", "limit_kernels",
           "inputs", "build_model", "resolve_device"]
