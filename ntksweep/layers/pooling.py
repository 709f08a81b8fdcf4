"""Layers that change the positions: ``Flatten``, ``GlobalAvgPool`` and ``AvgPool``.

    flatten      Σ' = ⟨Σ[p, p]⟩_p   (a dense layer on the C·P features, fan-in C·P, sees the
                 mean of the diagonal: different positions' features are different inputs)
    global mean  Σ' = ⟨Σ[p, q]⟩_{p, q}
    avg pool     Σ'[P, Q] = ⟨Σ[p, q]⟩_{p ∈ P, q ∈ Q}   (windows of w×w, stride s, "valid")

and the same for Θ and each input's self-covariance (neural-tangents' ``stax.Flatten``,
``GlobalAvgPool``, ``AvgPool``). The pooling layers read every pair (p, q), so a network
that has one keeps the whole pair tensors up to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SpecError
from .core import Layer
from .state import pair_diagonal

__all__ = ["Flatten", "GlobalAvgPool", "AvgPool"]


def _spatial(shape: tuple[int, ...], what: str) -> None:
    if len(shape) < 2:
        raise SpecError(f"{what} reads inputs with positions (C, H, W) or (C, T); got {shape}")


class _Flat(nn.Module):
    def forward(self, a: Tensor) -> Tensor:
        return a.flatten(1)


class _Mean(nn.Module):
    def forward(self, a: Tensor) -> Tensor:
        return a.mean(tuple(range(2, a.dim())))


@dataclass(frozen=True)
class Flatten(Layer):
    """(C, *S) → (C·P,)."""

    def out_shape(self, shape):
        return (math.prod(shape),)

    def build(self, shape, ctx):
        return _Flat()

    def limit(self, k):
        d = len(k.shape)

        def mean_diagonal(e: Tensor) -> Tensor:
            diag = pair_diagonal(e, k.shape, k.diagonal)
            return diag.mean(tuple(range(diag.dim() - d, diag.dim()))) if d else diag

        return k.map_pairs(mean_diagonal, (), diagonal=False,
                           channels=k.channels * math.prod(k.shape))


@dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """(C, *S) → (C,): the mean over positions."""

    mixes_positions: bool = True

    def out_shape(self, shape):
        return shape[:1]

    def build(self, shape, ctx):
        return _Mean()

    def limit(self, k):
        d = k.pair_dims

        def mean_pairs(e: Tensor) -> Tensor:
            return e.mean(tuple(range(e.dim() - d, e.dim()))) if d else e

        return k.map_pairs(mean_pairs, (), diagonal=False)


def _pool_pairs(e: Tensor, window: int, stride: int) -> Tensor:
    """w×w "valid" average pooling, stride s, of both positions of E (…, H, W, H, W) with no
    permuted copy of E: the second position as images of the first's (``avg_pool2d`` on a
    view), then the first as the mean of its w² strided shifts, each a view whose rows of
    pairs stay contiguous."""
    *lead, n1, m1, n2, m2 = e.shape
    second = F.avg_pool2d(e.reshape(-1, 1, n2, m2), window, stride)   # (… n1 m1, 1, h2, w2)
    h2, w2 = second.shape[-2:]
    rows = second.reshape(-1, n1, m1, h2 * w2)
    h1, w1 = (n1 - window) // stride + 1, (m1 - window) // stride + 1
    shifts = [rows[:, i:i + stride * (h1 - 1) + 1:stride, j:j + stride * (w1 - 1) + 1:stride]
              for i in range(window) for j in range(window)]
    first = shifts[0].clone()
    for shift in shifts[1:]:
        first += shift
    return first.div_(window * window).reshape(*lead, h1, w1, h2, w2)


@dataclass(frozen=True)
class AvgPool(Layer):
    """w×w average pooling of images (C, H, W), stride ``stride`` (default w), "valid"."""

    window: int
    stride: int | None = None
    mixes_positions: bool = True

    def __post_init__(self):
        for name in ("window", "stride"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise SpecError(f"AvgPool's {name} must be an integer >= 1; got {v!r}")

    @property
    def step(self) -> int:
        return self.stride or self.window

    def out_shape(self, shape):
        if len(shape) != 3:
            raise SpecError(f"AvgPool reads images (C, H, W); got {shape}")
        h, w = ((s - self.window) // self.step + 1 for s in shape[1:])
        if h < 1 or w < 1:
            raise SpecError(f"a {self.window}×{self.window} pool does not fit a "
                            f"{shape[1]}×{shape[2]} image")
        return (shape[0], h, w)

    def build(self, shape, ctx):
        self.out_shape(shape)
        return nn.AvgPool2d(self.window, self.step)

    def limit(self, k):
        out = self.out_shape((k.channels, *k.shape))

        return k.map_pairs(lambda e: _pool_pairs(e, self.window, self.step), out[1:])
