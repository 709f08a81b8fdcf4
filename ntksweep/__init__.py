"""ntksweep: how far are finite networks from their infinite-width NTK limit?

The public surface, loaded on first use (so that ``import ntksweep.records`` or
``ntksweep.store`` does not pull in torch, Ray or MLflow):

- specs: ``TrialSpec``, ``SweepSpec``, ``load_sweep_spec``
- running: ``run_trial`` (one trial, in process), ``run_sweep`` (a sweep on Ray)
- results: ``load_results`` (the Parquet store as pandas DataFrames)
- kernels: ``analytic_kernels`` (Θ_∞ and Σ), ``empirical_ntk`` (Θ of a finite net), ``MLP``
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ntksweep")  # one source of truth: pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS = {
    "TrialSpec": ".trial_spec", "SweepSpec": ".sweep_spec", "load_sweep_spec": ".sweep_spec",
    "run_trial": ".trial", "run_sweep": ".sweep", "load_results": ".store",
    "analytic_kernels": ".kernels", "AnalyticKernels": ".kernels",
    "empirical_ntk": ".kernels", "MLP": ".models", "ACTIVATIONS": ".activations",
    "get_activation": ".activations", "UserError": ".errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ntksweep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
