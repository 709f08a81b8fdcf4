"""Layers that act on each position alone: an activation φ and LayerNorm over channels.

    activation   Σ' = E[φ(u) φ(v)],  Θ' = E[φ'(u) φ'(v)] ⊙ Θ,  (u, v) ~ N(0, [[Σ(x, x)[p, p],
                 Σ[p, q]], [·, Σ(x', x')[q, q]]])  — the activations' duals (``kernels.duals``)
    LayerNorm    Σ' = Σ[p, q] / √(Σ(x, x)[p, p] Σ(x', x')[q, q]), Θ' likewise

LayerNorm's limit (neural-tangents' ``stax.LayerNorm(axis=channel)``): over n channels the
mean of a centred Gaussian field tends to 0 and its mean square to Σ(x, x)[p, p], and the
gradients through both are O(1/n) of the kernel, so normalising divides Σ and Θ by the two
positions' standard deviations. The finite module has no affine parameters (γ, β): trained
per-channel scales would add an O(1) term of their own to Θ, and the limit would have to
carry it — neural-tangents' layer has none either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..activations import LEAKY_RELU_SLOPE, get_activation
from ..kernels.duals import get_dual, positive_sqrt
from .core import Layer
from .state import Kernel

__all__ = ["Activation", "LayerNorm"]


class _Pointwise(nn.Module):
    def __init__(self, name: str, leaky_relu_slope: float):
        super().__init__()
        self.name = name
        self.fn = get_activation(name, leaky_relu_slope=leaky_relu_slope).fn

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fn(z)

    def extra_repr(self) -> str:
        return self.name


@dataclass(frozen=True)
class Activation(Layer):
    """φ applied to every coordinate: relu, leaky_relu, erf, tanh, gelu, identity, sigmoid,
    softplus, sin (``ntksweep.ACTIVATIONS``); ``quadrature``: force the numerical dual."""

    name: str
    leaky_relu_slope: float = LEAKY_RELU_SLOPE
    quadrature: bool | None = None

    def __post_init__(self):
        get_activation(self.name, leaky_relu_slope=self.leaky_relu_slope)   # validates

    def build(self, shape, ctx):
        return _Pointwise(self.name, self.leaky_relu_slope)

    def limit(self, k):
        dual = get_dual(self.name, quadrature=self.quadrature,
                        leaky_relu_slope=self.leaky_relu_slope)
        v1, v2 = k.variances()
        k11, k22 = k.broadcast(v1, v2)
        nngp, nngp_dot = dual(k11, k.nngp, k22)

        def own(cov, v):
            p, q = k.broadcast_self(v)
            return dual(p, cov, q)[0]

        cov1, cov2 = k.own(own, (v1, v2))
        # the dual's Σ̇ is a fresh tensor of the pairs' shape: Θ' = Σ̇ ⊙ Θ in its place
        return Kernel(nngp=nngp, ntk=nngp_dot.mul_(k.ntk), cov1=cov1, cov2=cov2,
                      shape=k.shape, diagonal=k.diagonal, channels=k.channels,
                      ntk_zero=k.ntk_zero)


class _ChannelNorm(nn.Module):
    """(z − mean_c z) / std_c z at each position of z (N, C, *S), no affine parameters."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        moved = z.movedim(1, -1)
        return nn.functional.layer_norm(moved, moved.shape[-1:], eps=self.eps).movedim(-1, 1)


@dataclass(frozen=True)
class LayerNorm(Layer):
    """Normalise over the channels at each position (module doc); ``eps`` as torch's, in the
    finite module only."""

    eps: float = 1e-5

    def build(self, shape, ctx):
        return _ChannelNorm(self.eps)

    def limit(self, k):
        # an input of zero variance (a zero input, no bias) normalises to 0, as the finite
        # module's eps makes it do: its covariances divide to 0, not 0/0
        v1, v2 = k.variances()
        s1, s2 = k.broadcast(positive_sqrt(v1), positive_sqrt(v2))
        scale = s1 * s2

        def own(cov, v):
            p, q = k.broadcast_self(positive_sqrt(v))
            return cov / (p * q)

        cov1, cov2 = k.own(own, (v1, v2))
        return Kernel(nngp=k.nngp / scale, ntk=k.ntk / scale, cov1=cov1, cov2=cov2,
                      shape=k.shape, diagonal=k.diagonal, channels=k.channels)
