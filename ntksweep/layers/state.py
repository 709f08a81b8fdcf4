"""The state the infinite-width limit carries from layer to layer: for inputs x1 (n1 of them)
and x2 (n2), the NNGP covariance Σ and the NTK Θ of one channel's pre-activations between
every pair of positions (p, q), and each input's covariance with itself, which the
activations' duals read (Σ(x, x)[p, p]) and the pooling layers average.

Positions: ``shape`` S is () for vectors, (H, W) for images, (T,) for sequences. A pair
tensor is (…, *S, *S) over every (p, q); ``diagonal`` keeps only p = q, (…, *S), which is
all a network needs when no later layer mixes positions (convolutions map the diagonal to
itself; a flatten readout averages it) — P numbers per input pair instead of P².
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = ["Kernel", "input_kernel", "pair_diagonal", "SelfTrace", "SelfTraces", "tracing"]


class SelfTrace:
    """What one block of inputs' self-covariance gives through a network, in the order its
    layers ask (``Kernel.own``): recorded the first time the block goes through, replayed
    every later time. The order is the network's, the same on every pass; only the pairs'
    values differ between tiles."""

    def __init__(self):
        self.values: list[Tensor] = []
        self.replaying = False
        self._at = 0

    def take(self, compute: Callable[[], Tensor]) -> Tensor:
        if not self.replaying:
            self.values.append(compute())
            return self.values[-1]
        self._at += 1
        return self.values[self._at - 1]

    def rewind(self) -> SelfTrace:
        self.replaying, self._at = True, 0
        return self

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.values)


class SelfTraces:
    """The traces of a limit's input blocks (keyed by the caller), kept within ``budget``
    bytes: a tile of input pairs then computes its pairs, not its rows' and columns' self
    pair tensors again — for images of 32×32 those are as large as a pair's own, and a tile
    on a CPU holds one pair. ``recorded`` counts the blocks' passes that computed."""

    def __init__(self, budget: int):
        self.budget, self.kept, self.bytes, self.recorded = budget, {}, 0, 0

    def get(self, key) -> SelfTrace:
        held = self.kept.get(key)
        if held is None:
            self.recorded += 1
            return SelfTrace()
        return held.rewind()

    def keep(self, key, trace: SelfTrace) -> None:
        if key not in self.kept and self.bytes + trace.nbytes <= self.budget:
            self.kept[key] = trace
            self.bytes += trace.nbytes


_ACTIVE: ContextVar[tuple[SelfTrace, SelfTrace] | None] = ContextVar("self_traces",
                                                                     default=None)


@contextmanager
def tracing(first: SelfTrace, second: SelfTrace):
    """Within: ``Kernel.own`` takes the first inputs' self values from ``first`` and the
    second's from ``second`` (the same trace when they are the same inputs)."""
    token = _ACTIVE.set((first, second))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@dataclass(frozen=True)
class Kernel:
    """Σ ``nngp`` and Θ ``ntk`` (n1, n2, *pairs); ``cov1`` Σ(x1, x1) (n1, *pairs) and
    ``cov2`` Σ(x2, x2) (n2, *pairs) — the same object when x2 is x1 —, in the limit's dtype;
    ``channels`` the finite network's channel count here (what the next affine layer's
    fan-in reads); ``ntk_zero``: Θ is known to be 0 (no parameter yet), so an affine layer
    need not average it. Layers never write into a kernel's tensors (a self trace replays
    them), only into the fresh ones they make."""

    nngp: Tensor
    ntk: Tensor
    cov1: Tensor
    cov2: Tensor
    shape: tuple[int, ...]
    diagonal: bool
    channels: int
    ntk_zero: bool = False

    @property
    def pair_dims(self) -> int:
        """The number of trailing position axes of a pair tensor."""
        return len(self.shape) * (1 if self.diagonal else 2)

    def own(self, fn: Callable[..., Tensor], *pairs: tuple) -> tuple[Tensor, Tensor]:
        """(fn(cov1, *firsts), fn(cov2, *seconds)) for each input's self-covariance, with
        the pairs' first or second items (computed once, and shared, when x2 is x1)."""
        traces = _ACTIVE.get()
        first = _take(traces and traces[0], lambda: fn(self.cov1, *(p[0] for p in pairs)))
        if self.cov2 is self.cov1:
            return first, first
        return first, _take(traces and traces[1], lambda: fn(self.cov2, *(p[1] for p in pairs)))

    def variances(self) -> tuple[Tensor, Tensor]:
        """Σ(x1, x1)[p, p] (n1, *S) and Σ(x2, x2)[q, q] (n2, *S)."""
        return self.own(lambda c: pair_diagonal(c, self.shape, self.diagonal))

    def map_pairs(self, fn: Callable[[Tensor], Tensor], shape: tuple[int, ...] | None = None,
                  **changes) -> Kernel:
        """The same linear map of the positions applied to Σ, Θ and both self-covariances
        (each has its own leading axes), with the new position shape."""
        cov1, cov2 = self.own(fn)
        return replace(self, nngp=fn(self.nngp), ntk=fn(self.ntk), cov1=cov1, cov2=cov2,
                       shape=self.shape if shape is None else shape, **changes)

    def broadcast(self, v1: Tensor, v2: Tensor) -> tuple[Tensor, Tensor]:
        """v1 (n1, *S) and v2 (n2, *S) as p- and q-factors of the cross pair tensors."""
        d = len(self.shape)
        if self.diagonal:
            return v1[:, None], v2[None]
        ones = (1,) * d
        return (v1.reshape(v1.shape[0], 1, *self.shape, *ones),
                v2.reshape(1, v2.shape[0], *ones, *self.shape))

    def broadcast_self(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """v (n, *S) as p- and q-factors of one input's self pair tensor (n, *pairs)."""
        if self.diagonal:
            return v, v
        ones = (1,) * len(self.shape)
        return v.reshape(v.shape[0], *self.shape, *ones), v.reshape(v.shape[0], *ones,
                                                                    *self.shape)


def _take(trace: SelfTrace | None, compute: Callable[[], Tensor]) -> Tensor:
    return compute() if trace is None else trace.take(compute)


def pair_diagonal(e: Tensor, shape: tuple[int, ...], diagonal: bool) -> Tensor:
    """E[p, p] (…, *S) of a pair tensor E (…, *S, *S) (itself when ``diagonal``)."""
    if diagonal or not shape:
        return e
    p = math.prod(shape)
    lead = e.shape[:e.dim() - 2 * len(shape)]
    return e.reshape(*lead, p, p).diagonal(dim1=-2, dim2=-1).reshape(*lead, *shape)


def input_kernel(a: Tensor, b: Tensor, symmetric: bool, diagonal: bool) -> Kernel:
    """The inputs' own covariance E⁰[p, q] = (1/C) Σ_c x_c(p) x'_c(q) for a (n1, C, *S) and
    b (n2, C, *S); Θ = 0 (no parameter yet)."""
    shape, c = tuple(a.shape[2:]), a.shape[1]
    fa, fb = a.reshape(a.shape[0], c, -1), b.reshape(b.shape[0], c, -1)      # (n, C, P)

    def cross(u: Tensor, v: Tensor) -> Tensor:
        if diagonal:
            return torch.einsum("icp,jcp->ijp", u, v).reshape(u.shape[0], v.shape[0], *shape) / c
        return torch.einsum("icp,jcq->ijpq", u, v).reshape(
            u.shape[0], v.shape[0], *shape, *shape) / c

    def own(u: Tensor) -> Tensor:
        if diagonal:
            return (u * u).mean(1).reshape(u.shape[0], *shape)
        return torch.einsum("icp,icq->ipq", u, u).reshape(u.shape[0], *shape, *shape) / c

    nngp = cross(fa, fb)
    cov1 = own(fa)
    return Kernel(nngp=nngp, ntk=torch.zeros_like(nngp), cov1=cov1,
                  cov2=cov1 if symmetric else own(fb), shape=shape, diagonal=diagonal,
                  channels=c, ntk_zero=True)
