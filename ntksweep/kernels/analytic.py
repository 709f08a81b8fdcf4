"""Infinite-width kernels of a fully connected network: the NNGP Σ^(L) and the NTK Θ_∞^(L).

Jacot, Gabriel & Hongler (NeurIPS 2018), Theorem 1 / Proposition 1, in the conventions of
DESIGN.md (depth L = number of weight matrices, NTK parametrization):

    Σ^(1)(x, x')   = σ_w² x·x'/n0 + σ_b²                          Θ^(1) = Σ^(1)
    Σ^(ℓ+1)        = σ_w² E[σ(u)σ(v)] + σ_b²     (u, v) ~ N(0, Σ^(ℓ) on {x, x'})
    Σ̇^(ℓ+1)        = σ_w² E[σ'(u)σ'(v)]
    Θ^(ℓ+1)        = Θ^(ℓ) Σ̇^(ℓ+1) + Σ^(ℓ+1)

For k outputs the limit is Θ_∞ ⊗ I_k; we return the per-logit (n1, n2) kernel.

Standard parametrization (W ~ N(0, σ_w²/n_ℓ), b ~ N(0, σ_b²)) has the same Σ and Σ̇ but
its NTK grows with width: the gradient w.r.t. a weight is √n_ℓ/σ_w times the NTK-
parametrized one, so the layer's term σ_w² E becomes n_ℓ E and the bias term σ_b² becomes 1
(Lee et al. 2019, App. B; neural-tangents' ``parameterization='standard'``). Θ_std is the
width-dependent kernel a finite standard network's NTK concentrates around.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..activations import LEAKY_RELU_SLOPE, get_activation
from .duals import SNAP, get_dual

__all__ = ["AnalyticKernels", "analytic_kernels", "as_float64_inputs"]


class Cov(NamedTuple):
    """A covariance on {x1} ∪ {x2}: k11 = diag on x1 (n1, 1), k12 (n1, n2),
    k22 = diag on x2 (1, n2)."""

    k11: Tensor
    k12: Tensor
    k22: Tensor


@dataclass(frozen=True)
class AnalyticKernels:
    """Θ_∞^(L) (``ntk``) and Σ^(L) (``nngp``), each (n1, n2) float64, per logit."""

    ntk: np.ndarray
    nngp: np.ndarray
    depth: int
    activation: str
    weight_std: float
    bias_std: float
    parametrization: str


def input_gram(x1: Tensor, x2: Tensor) -> Cov:
    """x·x'/n0 on both diagonals and across."""
    n0 = x1.shape[1]
    return Cov((x1 * x1).sum(1, keepdim=True) / n0, x1 @ x2.T / n0, (x2 * x2).sum(1)[None] / n0)


def affine(e: Tensor, weight_std: float, bias_std: float) -> Tensor:
    """Σ = σ_w² E + σ_b² (the covariance of a random affine layer's outputs)."""
    return torch.add(torch.tensor(bias_std**2, dtype=e.dtype), e, alpha=weight_std**2)


def theta_step(theta: Tensor, sigma_dot: Tensor, layer_term: Tensor) -> Tensor:
    """Θ^(ℓ+1) = Θ^(ℓ) Σ̇^(ℓ+1) + (the new layer's own parameters' term; Σ^(ℓ+1) for NTK)."""
    return torch.addcmul(layer_term, theta, sigma_dot)


class ArcCosLayer:
    """The (leaky-)ReLU recursion on one (r, c) tile at a time, in place in preallocated
    buffers: the hot loop of most sweeps, 11 vectorised passes per layer, no allocation.

    With a the negative slope (0: ReLU), A = (1+a²)/2, B = (1−a)²/(2π) and
    e_dot = A − Bθ, the arc-cosine expectations of ``duals.arccos_dual`` read
        E[σ'σ'] = e_dot,   E[σσ] = s1 s2 (e_dot cos θ + B sin θ),
    so, in the NTK parametrization, with ė = σ_w² e_dot and s1 s2 cos θ = Σ^(ℓ)(x, x'),
        Σ^(ℓ+1) = ė Σ^(ℓ) + σ_w² B s1 s2 sin θ + σ_b²,   Θ^(ℓ+1) = ė Θ^(ℓ) + Σ^(ℓ+1).

    ``diag1``/``diag2``: Σ^(ℓ)(x, x) per layer for the rows' and the columns' points. Their
    square roots divide Σ(x, x') with the rows' side shrunk by ``duals.SNAP`` (so |cos θ|
    within 8 ulp of 1 becomes 1, as in ``duals``); the shrink is undone in Σ^(ℓ+1).
    """

    def __init__(self, tile: int, slope: float, weight_std: float, bias_std: float,
                 diag1: list[Tensor], diag2: list[Tensor]):
        w2 = weight_std**2
        self.w2 = w2
        self.w2a = torch.tensor(w2 * (1 + slope * slope) / 2, dtype=torch.float64)
        self.w2b = w2 * (1 - slope) ** 2 / (2 * math.pi)
        self.w2b_sq = torch.tensor(self.w2b**2, dtype=torch.float64)
        self.b2 = torch.tensor(bias_std**2, dtype=torch.float64)
        # > 0: a zero input with zero bias is uncorrelated with everything, as in ``duals``
        self.std1 = [d.clamp(min=1e-150).sqrt_().mul_(SNAP)[:, None] for d in diag1]  # (n1, 1)
        self.std2 = [d.clamp(min=1e-150).sqrt_()[None, :] for d in diag2]           # (1, n2)
        self.sigma, self.theta, self.spare, self.prod, self.cos, self.sin = (
            torch.empty(tile, tile, dtype=torch.float64) for _ in range(6))

    def run(self, e0: Tensor, rows: slice, cols: slice, depth: int,
            sigma_out: Tensor, theta_out: Tensor) -> None:
        """Σ^(L) and Θ^(L) on the tile, from E^(0) = x·x'/n0 (r, c), written into
        ``sigma_out`` and ``theta_out`` (views of the result matrices: no copy)."""
        r, c = e0.shape
        sigma, theta, spare = (b[:r, :c] for b in (self.sigma, self.theta, self.spare))
        prod, cos, sin = (b[:r, :c] for b in (self.prod, self.cos, self.sin))
        if depth == 1:
            sigma, theta = sigma_out, theta_out
        torch.add(self.b2, e0, alpha=self.w2, out=sigma)                   # Σ^(1)
        theta.copy_(sigma)                                                 # Θ^(1)
        for ell in range(depth - 1):
            last = ell == depth - 2
            torch.mul(self.std1[ell][rows], self.std2[ell][:, cols], out=prod)  # s1 s2 SNAP
            torch.div(sigma, prod, out=cos).clamp_(-1.0, 1.0)              # cos θ
            torch.addcmul(self.w2b_sq, cos, cos, value=-self.w2b**2, out=sin).sqrt_()
            sin.mul_(prod)                                                 # σ_w²B s1s2 sin θ·SNAP
            e_dot = torch.acos(cos, out=cos)                               # θ
            torch.add(self.w2a, e_dot, alpha=-self.w2b, out=e_dot)         # ė = σ_w²(A − Bθ)
            sin.addcmul_(sigma, e_dot)                                     # (ė Σ + …)·SNAP
            sigma = sigma_out if last else sigma
            torch.add(self.b2, sin, alpha=1.0 / SNAP, out=sigma)           # Σ^(ℓ+1)
            torch.addcmul(sigma, theta, e_dot, out=theta_out if last else spare)  # Θ^(ℓ+1)
            theta, spare = spare, theta


def as_float64_inputs(x1, x2=None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate (n1, d) / (n2, d) inputs given as numpy or torch; return float64 numpy."""

    def convert(x, name):
        if hasattr(x, "detach"):  # torch.Tensor without importing torch here
            x = x.detach().cpu().double().numpy()
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D (points, features); got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf; clean the inputs first")
        return x

    a = convert(x1, "x1")
    symmetric = x2 is None
    b = a if symmetric else convert(x2, "x2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"x1 has {a.shape[1]} features but x2 has {b.shape[1]}; both need the same input dim"
        )
    return a, b, symmetric


def _check_hyper(depth, activation, weight_std, bias_std, parametrization, width):
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError("depth must be an integer >= 1 (number of weight matrices); "
                         f"got {depth!r}")
    get_activation(activation)
    if not np.isfinite(weight_std) or weight_std <= 0:
        raise ValueError(f"weight_std must be a finite number > 0; got {weight_std!r}")
    if not np.isfinite(bias_std) or bias_std < 0:
        raise ValueError(f"bias_std must be a finite number >= 0; got {bias_std!r}")
    if parametrization not in ("ntk", "standard"):
        raise ValueError(f"parametrization must be 'ntk' or 'standard'; got {parametrization!r}")
    if parametrization == "standard" and (width is None or width < 1):
        raise ValueError("parametrization='standard' needs width=<hidden width> (its NTK scales "
                         "with width)")


def _mirror(ntk, nngp, rows, cols, scratch, diagonal: bool) -> None:
    """Symmetric case: copy the tile at (rows, cols) to (cols, rows), or symmetrize a
    diagonal tile (quadrature and BLAS treat u and v asymmetrically, in the last bits).
    Through a contiguous scratch: a transposed copy into strided rows is ~2× slower."""
    for m in (ntk, nngp):
        tile = m[rows, cols]
        t = scratch[:tile.shape[1], :tile.shape[0]]
        t.copy_(tile.T)
        if diagonal:
            tile.add_(t).mul_(0.5)
        else:
            m[cols, rows].copy_(t)


def analytic_kernels(
    x1,
    x2=None,
    *,
    depth: int,
    activation: str = "relu",
    weight_std: float = 1.0,
    bias_std: float = 0.0,
    parametrization: str = "ntk",
    width: int | None = None,
    quadrature: bool | None = None,
    quadrature_points: int | None = None,
    tile: int = 128,
    fused: bool = True,
) -> AnalyticKernels:
    """Θ_∞ and Σ^(L) of a depth-L MLP for inputs x1 (n1, d) and x2 (n2, d) (default x1).

    Returns (n1, n2) float64 kernels per logit (the k-output limit is Θ_∞ ⊗ I_k).
    ``quadrature=True`` forces quadrature even where a closed form exists (for checks);
    ``width`` is needed only for the standard parametrization. ReLU and leaky ReLU (NTK
    parametrization) take the fused in-place ``ArcCosLayer`` path unless ``fused=False``
    (the generic dual path, kept for checks). The recursion runs through
    all layers one (tile × tile) block at a time so the block stays in cache; with x2 None
    only the upper-triangular blocks are computed and mirrored.
    """
    _check_hyper(depth, activation, weight_std, bias_std, parametrization, width)
    a_np, b_np, symmetric = as_float64_inputs(x1, x2)
    a, b = torch.from_numpy(a_np), torch.from_numpy(b_np)
    dual = get_dual(activation, quadrature=quadrature, points=quadrature_points)
    fan_ins = [a.shape[1]] + [width or 0] * (depth - 1)

    def layer_term(e: Tensor, sigma: Tensor, layer: int) -> Tensor:
        """The new layer's own (weight + bias) contribution to Θ."""
        if parametrization == "ntk":
            return sigma                                                 # σ_w² E + σ_b²
        return fan_ins[layer] * e + 1.0

    def diagonal_sigmas(x: Tensor) -> list[Tensor]:
        """Σ^(ℓ)(x, x) for ℓ = 1 … L, (n,) each: the 1-D recursion every block reuses."""
        sig = [affine((x * x).sum(1) / x.shape[1], weight_std, bias_std)]
        for _ in range(depth - 1):
            e, _ = dual(sig[-1], sig[-1], sig[-1])
            sig.append(affine(e, weight_std, bias_std))
        return sig

    diag1 = diagonal_sigmas(a)
    diag2 = diag1 if symmetric else diagonal_sigmas(b)
    n1, n2 = a.shape[0], b.shape[0]
    ntk, nngp = torch.empty(n1, n2, dtype=torch.float64), torch.empty(n1, n2, dtype=torch.float64)
    slope = {"relu": 0.0, "leaky_relu": LEAKY_RELU_SLOPE}.get(activation)
    if fused and slope is not None and not quadrature and parametrization == "ntk":
        arccos = ArcCosLayer(tile, slope, weight_std, bias_std, diag1, diag2)
    else:
        arccos = None
    scratch = torch.empty(tile, tile, dtype=torch.float64)
    for i in range(0, n1, tile):
        rows = slice(i, min(i + tile, n1))
        for j in range(i if symmetric else 0, n2, tile):
            cols = slice(j, min(j + tile, n2))
            e = a[rows] @ b[cols].T / a.shape[1]                         # E^(0) = x·x'/n0
            if arccos is not None:
                arccos.run(e, rows, cols, depth, nngp[rows, cols], ntk[rows, cols])
            else:
                sigma = affine(e, weight_std, bias_std)                  # Σ^(1)
                theta = layer_term(e, sigma, 0)                          # Θ^(1)
                for layer in range(1, depth):
                    e, e_dot = dual(diag1[layer - 1][rows, None], sigma,
                                    diag2[layer - 1][None, cols])
                    sigma = affine(e, weight_std, bias_std)              # Σ^(ℓ+1)
                    theta = theta_step(theta, e_dot.mul_(weight_std**2),
                                       layer_term(e, sigma, layer))
                ntk[rows, cols], nngp[rows, cols] = theta, sigma
            if symmetric:
                _mirror(ntk, nngp, rows, cols, scratch, i == j)
    return AnalyticKernels(
        ntk=ntk.numpy(),
        nngp=nngp.numpy(),
        depth=int(depth),
        activation=activation,
        weight_std=float(weight_std),
        bias_std=float(bias_std),
        parametrization=parametrization,
    )
