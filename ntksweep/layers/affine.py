"""The trainable layers: ``Dense`` and ``Conv``, the finite ones of ``models.layers`` (whose
recorded multipliers and learning-rate factors the structured empirical NTK and the trainer
read), with their limits in the NTK parametrization (Jacot et al. 2018; Novak et al. 2019):

    dense        Σ' = σ_w² Σ + σ_b²,          Θ' = σ_w² Θ + Σ'
    convolution  Σ' = σ_w² 𝒜(Σ) + σ_b²,       Θ' = σ_w² 𝒜(Θ) + Σ'
                 𝒜(E)[p, q] = (1/k²) Σ_δ E[p + δ, q + δ]  (``kernels.conv.conv_average``)

at every pair of positions, and the same for each input's self-covariance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..choices import BIAS_STD, PADDINGS
from ..errors import SpecError
from ..kernels.conv import conv_average, conv_average_diagonal
from ..memory import LayerShape
from ..models.layers import Conv as ConvModule
from ..models.layers import Dense as DenseModule
from ..models.layers import PositionwiseDense, init_affine
from .core import Build, Layer
from .state import Kernel

__all__ = ["Dense", "Conv"]


def _check(width: int, weight_std: float, bias_std: float) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise SpecError(f"a layer's width must be an integer >= 1; got {width!r}")
    if not (weight_std > 0 and bias_std >= 0):
        raise SpecError(f"weight_std must be > 0 and bias_std >= 0; got {weight_std}, "
                        f"{bias_std}")


def _affine(k: Kernel, average, weight_std: float, bias_std: float, **changes) -> Kernel:
    """Σ' = σ_w² 𝒜(Σ) + σ_b², Θ' = σ_w² 𝒜(Θ) + Σ' (``average`` 𝒜, a function returning a
    fresh tensor; None for a dense layer's identity); Θ' = Σ' where Θ is 0. The pair tensors
    are memory-bound: each step runs in place in what 𝒜 made (never in ``k``'s own
    tensors)."""
    w2, b2 = weight_std**2, bias_std**2

    def scaled(e: Tensor, add) -> Tensor:              # σ_w² 𝒜(e) + add
        return e * w2 + add if average is None else average(e).mul_(w2).add_(add)

    nngp = scaled(k.nngp, b2)
    cov1, cov2 = k.own(lambda c: scaled(c, b2))
    ntk = nngp.clone() if k.ntk_zero else scaled(k.ntk, nngp)
    return Kernel(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2,
                  shape=changes.get("shape", k.shape), diagonal=k.diagonal,
                  channels=changes["channels"])


@dataclass(frozen=True)
class Dense(Layer):
    """z = (σ_w/√C) W a + σ_b b: on vectors (C,) → (width,), or at every position of
    (C, *S) → (width, *S) (a token's dense layer)."""

    width: int
    weight_std: float = 1.0
    bias_std: float = BIAS_STD
    affine: int = 1

    def __post_init__(self):
        _check(self.width, self.weight_std, self.bias_std)

    def out_shape(self, shape):
        return (self.width, *shape[1:])

    def shapes(self, shape):
        positions = math.prod(shape[1:])
        return [LayerShape(shape[0], positions, self.width, positions, 1)]

    def build(self, shape, ctx: Build):
        c = shape[0]
        role, n = ctx.next_role(c, self.width)
        module = DenseModule if len(shape) == 1 else PositionwiseDense
        return module(**init_affine((self.width, c), c, role=role, width=n,
                                    weight_std=self.weight_std, bias_std=self.bias_std,
                                    **ctx.init))

    def limit(self, k):
        return _affine(k, None, self.weight_std, self.bias_std, channels=self.width)


@dataclass(frozen=True)
class Conv(Layer):
    """z = (σ_w/√(C k²)) W ∗ a + σ_b b: a k×k convolution, stride 1, on images (C, H, W) →
    (width, H', W'); padding ``same`` (zeros; H' = H) or ``valid`` (H' = H − k + 1)."""

    width: int
    kernel_size: int = 3
    padding: str = "same"
    weight_std: float = 1.0
    bias_std: float = BIAS_STD
    affine: int = 1

    def __post_init__(self):
        _check(self.width, self.weight_std, self.bias_std)
        if self.padding not in PADDINGS:
            raise SpecError(f"padding must be one of {', '.join(PADDINGS)}; got "
                            f"{self.padding!r}")
        if self.padding == "same" and self.kernel_size % 2 == 0:
            raise SpecError(f"'same' padding needs an odd kernel_size; got {self.kernel_size}")

    def out_shape(self, shape):
        if len(shape) != 3:
            raise SpecError(f"Conv reads images (C, H, W), got inputs {shape}")
        if self.padding == "same":
            return (self.width, *shape[1:])
        h, w = (s - self.kernel_size + 1 for s in shape[1:])
        if h < 1 or w < 1:
            raise SpecError(f"a valid {self.kernel_size}×{self.kernel_size} convolution "
                            f"leaves no pixel of a {shape[1]}×{shape[2]} image: use "
                            "padding='same' or a smaller kernel_size")
        return (self.width, h, w)

    def shapes(self, shape):
        out = self.out_shape(shape)
        return [LayerShape(shape[0], math.prod(shape[1:]), self.width, math.prod(out[1:]),
                           self.kernel_size ** 2)]

    def build(self, shape, ctx: Build):
        self.out_shape(shape)
        c, k = shape[0], self.kernel_size
        role, n = ctx.next_role(c, self.width)
        return ConvModule(**init_affine((self.width, c, k, k), c * k * k, role=role, width=n,
                                        weight_std=self.weight_std, bias_std=self.bias_std,
                                        **ctx.init), padding=self.padding)

    def limit(self, k):
        out = self.out_shape((k.channels, *k.shape))
        mean = conv_average_diagonal if k.diagonal else conv_average
        return _affine(k, lambda e: mean(e, self.kernel_size, self.padding), self.weight_std,
                       self.bias_std, shape=out[1:], channels=self.width)
