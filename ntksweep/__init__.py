"""ntksweep: how far are finite networks from their infinite-width NTK limit?

The public surface, loaded on first use (so that ``import ntksweep.records`` or
``ntksweep.store`` pulls in neither torch, Ray nor MLflow). Shapes and types, once:

- specs: ``TrialSpec`` (one trial, frozen; ``trial_id`` its key), ``SweepSpec`` and
  ``load_sweep_spec`` (a YAML sweep expanded into trials);
- running: ``run_trial(spec) → TrialOutcome`` (one trial, in process: its checkpoint
  records), ``run_sweep(spec) → SweepSummary`` (a sweep on Ray, tracked in MLflow);
- results: ``load_results(out) → (trials, checkpoints)`` pandas DataFrames;
  ``load_members(out)`` an ensemble's networks, one row each (``member_kernels(rows)`` →
  their Θ_0 (S, M, M));
- analytic kernels: ``analytic_kernels(x1, x2, depth=…, architecture=…) → AnalyticKernels``
  with ``.ntk`` (Θ_∞) and ``.nngp`` (Σ), float64 numpy (n1, n2), per logit (the limit of k
  outputs is Θ_∞ ⊗ I_k); x (n, d) for an MLP, images (n, C, H, W) for a cnn or resnet;
- empirical kernels: ``empirical_ntk(model, x1, x2) → torch.Tensor`` (n1, n2, k, k) in the
  model's dtype and device — (n1, n2) with ``trace=True``, the per-logit mean;
- networks: ``MLP``, ``CNN``, ``ResNet`` (the parametrizations' multipliers recorded on
  their layers); kernel methods: ``kernel_regression``, ``KernelDynamics`` (the linear
  model trained by gradient flow or descent with a fixed kernel), numpy in and out.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("ntksweep")  # one source of truth: pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:   # what IDEs and type checkers see; at run time each loads on first use
    from .activations import ACTIVATIONS, get_activation
    from .errors import UserError
    from .kernels import AnalyticKernels, empirical_ntk
    from .kernels.metrics import KernelDynamics
    from .kernels.regression import kernel_regression
    from .layers.registry import analytic_kernels
    from .models import CNN, MLP, ResNet
    from .records import TrialOutcome
    from .store import load_members, load_results, member_kernels
    from .sweep import SweepSummary, run_sweep
    from .sweep_spec import SweepSpec, load_sweep_spec
    from .trial import run_trial
    from .trial_spec import TrialSpec

_EXPORTS = {
    "TrialSpec": ".trial_spec", "SweepSpec": ".sweep_spec", "load_sweep_spec": ".sweep_spec",
    "run_trial": ".trial", "TrialOutcome": ".records", "run_sweep": ".sweep",
    "SweepSummary": ".sweep", "load_results": ".store", "load_members": ".store",
    "member_kernels": ".store",
    "analytic_kernels": ".layers.registry", "AnalyticKernels": ".kernels",
    "empirical_ntk": ".kernels", "kernel_regression": ".kernels.regression",
    "KernelDynamics": ".kernels.metrics", "MLP": ".models", "CNN": ".models",
    "ResNet": ".models", "ACTIVATIONS": ".activations", "get_activation": ".activations",
    "UserError": ".errors",
}

__all__ = ["TrialSpec", "SweepSpec", "load_sweep_spec", "run_trial", "TrialOutcome",
           "run_sweep", "SweepSummary", "load_results", "load_members", "member_kernels",
           "analytic_kernels", "AnalyticKernels",
           "empirical_ntk", "kernel_regression", "KernelDynamics", "MLP", "CNN", "ResNet",
           "ACTIVATIONS", "get_activation", "UserError", "__version__"]
assert set(__all__) == {*_EXPORTS, "__version__"}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ntksweep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
