"""An ensemble trial's members: S networks of one architecture at initialisation, each the
network of the plain trial of its seed (``TrialSpec.member``), measured one after another on
the data, the limit and the device the trial already holds — what the finite-width analysis
reads (``analysis.finite_width``), at a fraction of a trial's cost per network."""

from __future__ import annotations

import numpy as np
import torch

from ..data import Dataset
from ..kernels import empirical_ntk
from ..kernels.metrics import rel_frobenius, shift_and_fluctuation
from ..records import Members
from ..trial_spec import TrialSpec
from .builders import build_model

__all__ = ["measure_members"]


def measure_members(spec: TrialSpec, data: Dataset, out_dim: int, x_eval: torch.Tensor,
                    first: np.ndarray, theta_inf: np.ndarray | None) -> Members:
    """Θ_0 on the eval set x_eval (M, …) per logit of the S = ``spec.ensemble`` members, as
    ``Members``; ``first``: member 0's (M, M), the trial's own network, already measured;
    ``theta_inf``: Θ_∞ on the eval set (M, M), or None where there is no limit."""
    dtype = getattr(torch, spec.dtype)
    kernels = np.empty((spec.ensemble, *first.shape))
    kernels[0] = first
    for j in range(1, spec.ensemble):
        # measured only, never trained: built in eval mode, which empirical_ntk then keeps
        model = build_model(spec.member(j), data, out_dim, dtype, str(x_eval.device)).eval()
        kernels[j] = empirical_ntk(model, x_eval, method=spec.ntk_method, trace=True,
                                   memory_budget=spec.memory_budget).double().cpu().numpy()
    seeds = np.array([spec.member(j).seed for j in range(spec.ensemble)], np.int64)
    if theta_inf is None:
        return Members(seeds, kernels, np.full(spec.ensemble, np.nan))
    dist = np.array([rel_frobenius(k, theta_inf) for k in kernels])
    shift_sq, fluct_sq = shift_and_fluctuation(kernels.reshape(len(kernels), -1),
                                               theta_inf.ravel())
    return Members(seeds, kernels, dist, shift_sq, float(np.sqrt(fluct_sq)))
