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


def _pool_first(e: Tensor, window: int, stride: int) -> Tensor:
    """Average-pool the first (H, W) of E (B, H, W, *rest) → (B, H', W', *rest)."""
    b, h, w = e.shape[:3]
    rest = e.shape[3:]
    x = e.reshape(b, h, w, -1).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    pooled = F.avg_pool2d(x, window, stride)
    h2, w2 = pooled.shape[-2:]
    return pooled.reshape(b, -1, h2, w2).permute(0, 2, 3, 1).reshape(b, h2, w2, *rest)


def _pool_blocks(e: Tensor, w: int) -> Tensor:
    """Non-overlapping w×w "valid" pooling of both positions of E (…, H, W, H, W) with no
    permuted copy of E: the second position as images of the first's (``avg_pool2d`` on a
    view), then the first as a mean over its blocks, each row of pairs contiguous within."""
    *lead, n1, m1, n2, m2 = e.shape
    h1, w1, h2, w2 = (s // w for s in (n1, m1, n2, m2))
    second = F.avg_pool2d(e.reshape(-1, 1, n2, m2), w)              # (… n1 m1, 1, h2, w2)
    rows = second.reshape(-1, n1, m1, h2 * w2)[:, :h1 * w, :w1 * w]
    first = rows.reshape(-1, h1, w, w1, w, h2 * w2).mean((2, 4))
    return first.reshape(*lead, h1, w1, h2, w2)


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

        def pool_pairs(e: Tensor) -> Tensor:                 # (…, H, W, H, W)
            if self.step == self.window:                     # one pass: a mean over blocks
                return _pool_blocks(e, self.window)
            lead = e.shape[:-4]
            flat = e.reshape(-1, *e.shape[-4:])
            once = _pool_first(flat, self.window, self.step)             # p pooled
            swapped = once.permute(0, 3, 4, 1, 2)
            twice = _pool_first(swapped, self.window, self.step).permute(0, 3, 4, 1, 2)
            return twice.reshape(*lead, *twice.shape[1:])

        return k.map_pairs(pool_pairs, out[1:])
