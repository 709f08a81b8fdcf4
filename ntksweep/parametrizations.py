"""The parametrizations a network can be trained in, as one family: Yang & Hu's (2021,
"Feature learning in infinite-width neural networks", §3) abc-parametrizations. Each layer's
effective weights are W = m · w with trainable entries w ~ N(0, s²), trained at the rate
η · r; a parametrization fixes, per layer role and width n, the multiplier m, the initial
standard deviation s and the learning-rate factor r (for W and for b). Every place that
needs them — the networks (``models.layers``), the trainer (``train``) and the measured
kernel Θ_η (``kernels``) — reads them from ``layer_scales`` and ``lr_factors`` here.

With σ_w, σ_b the spec's weight and bias scales and fan_in a layer's fan-in (C_in·k² for a
convolution; the width n for hidden and readout layers):

- ``ntk`` (Jacot et al. 2018): m = σ_w/√fan_in, s = 1; bias m = σ_b, s = 1; r = 1.
- ``standard``: m = 1, s = σ_w/√fan_in; bias m = 1, s = σ_b; r = 1 (its stable learning
  rate shrinks like 1/n; its NTK grows with n).
- ``mup``, the maximal-update parametrization (Yang & Hu 2021, Table 3: a = (−½, 0, …, ½),
  b = ½, c = 0), moved by the abc symmetry (a, b, c) → (a + θ, b − θ, c − 2θ) (SGD) to
  N(0, 1) entries: ``ntk``'s layers with the readout's multiplier divided by a further √n,
  and every weight and hidden bias trained at η·n (the readout bias at η: at η·n its update
  alone would move f by O(n)). With Adam the symmetry is (a + θ, b − θ, c − θ) and the
  rules of TP5 (Yang et al. 2022, Table 3; the ``mup`` package's ``MuAdam``) become r = 1
  everywhere except hidden weights, r = 1/√n.
- ``mean_field`` (Mei, Montanari & Nguyen 2018; Chizat & Bach 2018): f = (1/n) Σ_j a_j
  φ(⟨w_j, x⟩ + b_j) trained at η·n — for two-layer networks, which is where it is defined;
  there it coincides with μP (Yang & Hu 2021, §5), and so does its definition here.

In ``mup`` (and ``mean_field``) the kernel that drives gradient descent, Θ_η = Σ_l r_l J_l J_lᵀ,
equals ``ntk``'s Θ for the same draws at initialisation — every weight's Jacobian is 1/√n of
``ntk``'s and its rate n times — so its infinite-width limit at initialisation is Θ_∞; the
output's prior variance is σ_b² + O(1/n), so its NNGP limit is the constant σ_b².
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PARAMETRIZATIONS", "ROLES", "LayerScales", "layer_scales", "lr_factors",
           "kernel_is_ntk_limit", "has_nngp_limit"]

PARAMETRIZATIONS = ("ntk", "standard", "mup", "mean_field")
ROLES = ("input", "hidden", "readout")       # the first weight layer, the ones inside, the last


@dataclass(frozen=True)
class LayerScales:
    """One layer's W = weight_mult · w, w ~ N(0, weight_init²), and b likewise."""

    weight_mult: float
    weight_init: float
    bias_mult: float
    bias_init: float

    @property
    def weight_variance(self) -> float:
        """The prior variance of one entry of the effective weights W."""
        return (self.weight_mult * self.weight_init) ** 2

    @property
    def bias_variance(self) -> float:
        return (self.bias_mult * self.bias_init) ** 2


def layer_scales(parametrization: str, role: str, fan_in: int, width: int, *,
                 weight_std: float, bias_std: float) -> LayerScales:
    """The multipliers and initial scales of a layer (module doc); ``width`` is the
    network's hidden width n."""
    _check(parametrization, role)
    if parametrization == "standard":
        return LayerScales(1.0, weight_std / math.sqrt(fan_in), 1.0, bias_std)
    mult = weight_std / math.sqrt(fan_in)
    if parametrization in ("mup", "mean_field") and role == "readout":
        mult /= math.sqrt(width)
    return LayerScales(mult, 1.0, bias_std, 1.0)


def lr_factors(parametrization: str, optimizer: str, role: str, width: int
               ) -> tuple[float, float]:
    """(r for W, r for b): the layer's learning rates are η·r (module doc)."""
    _check(parametrization, role)
    if parametrization in ("ntk", "standard"):
        return 1.0, 1.0
    if optimizer == "adam":
        return (1.0 / math.sqrt(width) if role == "hidden" else 1.0), 1.0
    return float(width), (1.0 if role == "readout" else float(width))


def kernel_is_ntk_limit(parametrization: str) -> bool:
    """Whether Θ_η at initialisation converges to the NTK parametrization's Θ_∞."""
    return parametrization in ("ntk", "mup", "mean_field")


def has_nngp_limit(parametrization: str) -> bool:
    """Whether the output's prior covariance has a non-degenerate limit (in μP and the
    mean-field parametrization it tends to the constant σ_b²)."""
    return parametrization in ("ntk", "standard")


def _check(parametrization: str, role: str) -> None:
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}; "
                         f"got {parametrization!r}")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
