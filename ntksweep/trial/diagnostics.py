"""Feature-learning diagnostics of a trial: how fast its kernel moves, how well it aligns
with the targets, and the coordinate check of μP — each layer's pre-activation size and how
far it moved from initialisation, on the eval set.

- kernel velocity: ‖Θ_{t_i} − Θ_{t_(i−1)}‖_F / ‖Θ_{t_(i−1)}‖_F per unit of training time
  t = lr × step, the kernel's relative Frobenius speed (Fort et al. 2020, "Deep learning
  versus kernel learning", measure the kernel distance 1 − cos instead, blind to scale);
- kernel-target alignment (Cristianini et al. 2002): ⟨Θ, Y Yᵀ⟩_F / (‖Θ‖_F ‖Y Yᵀ‖_F);
- coordinate check (Yang et al. 2022, TP5 §D.1; the ``mup`` package's ``coord_check``):
  the RMS of each layer's pre-activations and of their change since step 0, averaged over
  the layers of each role (input, hidden, readout). Under μP both stay O(1) in width; under
  the NTK parametrization the change shrinks like n^(−1/2); under the standard one the
  readout's grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models.layers import affine_layers
from ..parametrizations import ROLES
from ..records import COORD_COLUMNS

__all__ = ["COORD_COLUMNS", "kernel_velocity", "target_alignment", "EvalPass", "forward_pass",
           "coordinate_check"]



def kernel_velocity(theta: np.ndarray, previous: np.ndarray, dt: float) -> float:
    """‖Θ − Θ_prev‖_F / ‖Θ_prev‖_F / dt for two (M, M) kernels dt apart in training time."""
    return float(np.linalg.norm(theta - previous) / np.linalg.norm(previous) / dt)


def target_alignment(theta: np.ndarray, y: np.ndarray) -> float:
    """⟨Θ, Y Yᵀ⟩_F / (‖Θ‖_F ‖Y Yᵀ‖_F) for Θ (M, M) and targets Y (M, k)."""
    yy = y @ y.T
    return float(np.sum(theta * yy) / (np.linalg.norm(theta) * np.linalg.norm(yy)))


@dataclass(frozen=True)
class EvalPass:
    """One forward pass on x (M, …): the outputs f (M, k) and the readout's input features
    (M, F), float64 numpy, and (role, z) of every Dense and Conv layer, in module order."""

    output: np.ndarray
    features: np.ndarray
    preactivations: list[tuple[str, torch.Tensor]]


def forward_pass(model: nn.Module, x: torch.Tensor) -> EvalPass:
    """Everything a checkpoint reads off the network on x, from one pass (hooks record each
    layer's pre-activations and what its ``readout`` layer reads)."""
    layers = affine_layers(model)
    seen: dict[nn.Module, torch.Tensor] = {}
    features: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, _a, z: seen.__setitem__(m, z.detach()))
             for m in layers]
    if hasattr(model, "readout"):     # a user's plain module has no readout to read
        hooks.append(model.readout.register_forward_pre_hook(
            lambda _m, args: features.append(args[0].detach())))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    as_np = lambda t: t.double().cpu().numpy()  # noqa: E731
    return EvalPass(as_np(out.reshape(len(x), -1)),
                    as_np(features[0]) if features else np.zeros((len(x), 0)),
                    [(m.role, seen[m]) for m in layers if m in seen])


def coordinate_check(now: list[tuple[str, torch.Tensor]],
                     init: list[tuple[str, torch.Tensor]]) -> dict[str, float]:
    """``COORD_COLUMNS``: per role, the mean over its layers of RMS(z) and RMS(z − z_0);
    NaN for a role the network does not have."""
    out = {}
    for role in ROLES:
        pairs = [(z, z0) for (r, z), (_, z0) in zip(now, init) if r == role]
        rms = lambda t: float(t.double().pow(2).mean().sqrt())  # noqa: E731
        out[f"coord_{role}"] = float(np.mean([rms(z) for z, _ in pairs])) if pairs else np.nan
        out[f"coord_{role}_change"] = \
            float(np.mean([rms(z - z0) for z, z0 in pairs])) if pairs else np.nan
    return out
