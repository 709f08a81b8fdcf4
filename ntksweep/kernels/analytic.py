"""Infinite-width kernels of a fully connected network: the NNGP Σ^(L) and the NTK Θ_∞^(L).

Jacot, Gabriel & Hongler (NeurIPS 2018), Theorem 1 / Proposition 1, in the conventions of
docs/ARCHITECTURE.md (depth L = number of weight matrices, NTK parametrization):

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

import numpy as np
import torch
from torch import Tensor

from ..activations import LEAKY_RELU_SLOPE
from ..architectures import REGISTRY
from ..choices import BIAS_STD
from ..errors import SpecError
from ..hyper import check_network
from ..parametrizations import has_nngp_limit
from .conv import conv_limits
from .duals import SNAP, get_dual
from .tiles import float64_points, limit_dtype, plan_tiles

_ONE = torch.ones((), dtype=torch.float64)
_TINY = 1e-300  # a variance floor that only ever replaces an exact 0 (no 0/0)
# σ(c·u) = c·σ(u) for c > 0: without bias the kernels of these scale as |x||x'|
_HOMOGENEOUS = ("relu", "leaky_relu", "identity")

__all__ = ["AnalyticKernels", "analytic_kernels", "as_float64_inputs", "FUSED"]

FUSED = tuple(name for name, a in REGISTRY.items() if a.fused)   # fused recursions here


@dataclass(frozen=True)
class AnalyticKernels:
    """Θ_∞^(L) (``ntk``) and Σ^(L) (``nngp``), each (n1, n2) float64 (or the float32 a
    limit was asked for), per logit."""

    ntk: np.ndarray
    nngp: np.ndarray
    depth: int
    activation: str
    weight_std: float
    bias_std: float
    parametrization: str


def affine(e: Tensor, weight_std: float, bias_std: float) -> Tensor:
    """Σ = σ_w² E + σ_b² (the covariance of a random affine layer's outputs)."""
    return torch.add(torch.tensor(bias_std**2, dtype=e.dtype), e, alpha=weight_std**2)


def theta_step(theta: Tensor, sigma_dot: Tensor, layer_term: Tensor) -> Tensor:
    """Θ^(ℓ+1) = Θ^(ℓ) Σ̇^(ℓ+1) + (the new layer's own parameters' term; Σ^(ℓ+1) for NTK)."""
    return torch.addcmul(layer_term, theta, sigma_dot)


class ArcCosLayer:
    """The (leaky-)ReLU recursion on one (r, c) block at a time, in place in four preallocated
    buffers: the hot loop of most sweeps, 11 vectorised passes per layer, no allocation.

    With a the negative slope (0: ReLU), A = (1+a²)/2, B = (1−a)²/(2π) and
    e_dot = A − Bθ, the arc-cosine expectations of ``duals.arccos_dual`` read
        E[σ'σ'] = e_dot,   E[σσ] = s1 s2 (e_dot cos θ + B sin θ),
    so, in the NTK parametrization, with ė = σ_w² e_dot and s1 s2 cos θ = Σ^(ℓ)(x, x'),
        Σ^(ℓ+1) = ė Σ^(ℓ) + σ_w² B s1 s2 sin θ + σ_b²,   Θ^(ℓ+1) = ė Θ^(ℓ) + Σ^(ℓ+1).

    ``diag1``/``diag2``: Σ^(ℓ)(x, x) per layer for the rows' and the columns' points. cos θ
    multiplies Σ(x, x') by their reciprocal square roots, the rows' side shrunk by
    ``duals.SNAP`` (so |cos θ| within 8 ulp of 1 becomes 1, as in ``duals``); the sin θ term
    uses the unshrunk s1 s2. Multiplying by per-row and per-column vectors (broadcast) costs
    less than forming s1 s2 and dividing by it.

    Without bias (σ_b = 0, every input nonzero) the variances only scale, s' = √(σ_w² A) s,
    so the recursion closes on ρ = cos θ and Θ̃ = Θ/(s1 s2) (``_run_unbiased``):
        ρ' = ė_A ρ + (B/A) sin θ,   Θ̃' = ė_A Θ̃ + ρ',   ė_A = ė/(σ_w² A) = 1 − (B/A) θ,
    8 passes per layer instead of 11, and s1 s2 multiplies back once at the end.
    """

    def __init__(self, shape: tuple[int, int], slope: float, weight_std: float,
                 bias_std: float, diag1: list[Tensor], diag2: list[Tensor]):
        w2 = weight_std**2
        self.w2 = w2
        self.w2a = torch.tensor(w2 * (1 + slope * slope) / 2, dtype=torch.float64)
        self.w2b = w2 * (1 - slope) ** 2 / (2 * math.pi)
        self.b2 = torch.tensor(bias_std**2, dtype=torch.float64)
        # > 0: a zero input with zero bias is uncorrelated with everything, as in ``duals``
        std1 = [d.clamp(min=_TINY).sqrt() for d in diag1]
        std2 = [d.clamp(min=_TINY).sqrt() for d in diag2]
        self.inv1 = [(1.0 / (s * SNAP))[:, None] for s in std1]       # (n1, 1)
        self.inv2 = [(1.0 / s)[None, :] for s in std2]                 # (1, n2)
        self.bstd1 = [(self.w2b * s)[:, None] for s in std1]          # σ_w² B s1, (n1, 1)
        self.std2 = [s[None, :] for s in std2]                          # (1, n2)
        self.buffers = [torch.empty(shape, dtype=torch.float64) for _ in range(4)]
        self.unbiased = bias_std == 0 and all(bool((d[0] > 0).all()) for d in (diag1, diag2))
        if self.unbiased:
            self.ratio = self.w2b / float(self.w2a)                        # B/A
            self.ratio_sq = torch.tensor(self.ratio**2, dtype=torch.float64)
            self.w2_inv1 = (self.w2 / std1[0])[:, None]                  # σ_w²/s1, unshrunk
            self.last1 = std1[-1][:, None]                                 # s^(L), (n1, 1)

    def run(self, e0: Tensor, rows: slice, cols: slice, depth: int,
            sigma_out: Tensor, theta_out: Tensor) -> None:
        """Σ^(L) and Θ^(L) on the block, from E^(0) = x·x'/n0 (r, c), written into
        ``sigma_out`` and ``theta_out`` (views of the result matrices: no copy)."""
        if self.unbiased and depth > 1:
            return self._run_unbiased(e0, rows, cols, depth, sigma_out, theta_out)
        r, c = e0.shape
        sigma, theta, cos, sin = (b[:r, :c] for b in self.buffers)
        if depth == 1:
            sigma, theta = sigma_out, theta_out
        torch.add(self.b2, e0, alpha=self.w2, out=sigma)                   # Σ^(1)
        theta.copy_(sigma)                                                 # Θ^(1)
        for ell in range(depth - 1):
            last = ell == depth - 2
            torch.mul(sigma, self.inv1[ell][rows], out=cos)
            cos.mul_(self.inv2[ell][:, cols]).clamp_(-1.0, 1.0)            # cos θ (snapped)
            torch.addcmul(_ONE, cos, cos, value=-1.0, out=sin).sqrt_()     # sin θ
            sin.mul_(self.bstd1[ell][rows])
            torch.addcmul(self.b2, sin, self.std2[ell][:, cols], out=sin)  # σ_w²B s1s2 sin θ + σ_b²
            e_dot = torch.acos(cos, out=cos)                               # θ
            torch.add(self.w2a, e_dot, alpha=-self.w2b, out=e_dot)         # ė = σ_w²(A − Bθ)
            new_sigma, new_theta = (sigma_out, theta_out) if last else (sigma, theta)
            torch.addcmul(sin, sigma, e_dot, out=new_sigma)                # Σ^(ℓ+1)
            torch.addcmul(new_sigma, theta, e_dot, out=new_theta)          # Θ^(ℓ+1)
            sigma, theta = new_sigma, new_theta

    def _run_unbiased(self, e0: Tensor, rows: slice, cols: slice, depth: int,
                      sigma_out: Tensor, theta_out: Tensor) -> None:
        """``run`` for σ_b = 0: the recursion on ρ and Θ̃ = Θ/(s1 s2) (class doc)."""
        r, c = e0.shape
        rho, theta, ang, sin = (b[:r, :c] for b in self.buffers)
        torch.mul(e0, self.w2_inv1[rows], out=theta)
        theta.mul_(self.inv2[0][:, cols])                                  # Θ̃^(1) = ρ^(1)
        torch.mul(theta, 1.0 / SNAP, out=rho).clamp_(-1.0, 1.0)            # cos θ (snapped)
        for ell in range(depth - 1):
            torch.addcmul(self.ratio_sq, rho, rho, value=-self.ratio**2, out=sin).sqrt_()
            e_dot = torch.acos(rho, out=ang)                                # θ
            torch.add(_ONE, e_dot, alpha=-self.ratio, out=e_dot)           # ė_A = 1 − (B/A)θ
            torch.addcmul(sin, e_dot, rho, out=sin)                        # ρ' (unsnapped)
            torch.addcmul(sin, theta, e_dot, out=theta)                    # Θ̃'
            if ell < depth - 2:
                torch.mul(sin, 1.0 / SNAP, out=rho).clamp_(-1.0, 1.0)
        std1, std2 = self.last1[rows], self.std2[-1][:, cols]              # s^(L)
        torch.mul(sin, std1, out=sigma_out).mul_(std2)                     # Σ^(L) = ρ s1 s2
        torch.mul(theta, std1, out=theta_out).mul_(std2)                   # Θ^(L) = Θ̃ s1 s2


def as_float64_inputs(x1, x2=None) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validate (n1, d) / (n2, d) inputs given as numpy or torch; return float64 numpy."""
    return float64_points(x1, x2, ndim=2, what="2-D (points, features)")


def _unit_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (n, d) → (rows scaled to norm √d, i.e. x·x/d = 1; zero rows stay 0), the scale of
    each row: x = u · scale, computed without squaring x (no overflow or underflow)."""
    peak = np.abs(x).max(axis=1) if x.size else np.zeros(len(x))
    peak = np.where(peak > 0, peak, 1.0)
    unit = x / peak[:, None]                            # entries in [−1, 1]: safe to square
    norms = np.linalg.norm(unit, axis=1) / np.sqrt(x.shape[1])
    safe = np.where(norms > 0, norms, 1.0)
    with np.errstate(over="ignore"):
        return unit / safe[:, None], norms * peak


def _max_sq(x: np.ndarray) -> float:
    with np.errstate(over="ignore"):
        return float(np.max(np.sum(x * x, axis=1)) / x.shape[1]) if x.size else 0.0


def _mirror(ntk: np.ndarray, nngp: np.ndarray, rows: slice, cols: slice) -> None:
    """Symmetric case: copy the block at (rows, cols) to (cols, rows). A block that starts on
    the diagonal (cols.start == rows.start) holds the square (rows, rows): that part is
    symmetrized instead (quadrature and BLAS treat u and v asymmetrically, in the last bits).
    numpy, not torch: its strided transposed copy is the faster one (benchmarks/RESULTS.md)."""
    upper = max(cols.start, rows.stop)                 # columns from here lie above the square
    for m in (ntk, nngp):
        if cols.start < rows.stop:
            square = m[rows, rows]
            square[...] = (square + square.T) * 0.5
        if upper < cols.stop:
            np.copyto(m[upper:cols.stop, rows], m[rows, upper:cols.stop].T)


def _diagonal_sigmas(x: Tensor, depth: int, dual, weight_std: float, bias_std: float
                     ) -> list[Tensor]:
    """Σ^(ℓ)(x, x) for ℓ = 1 … L, (n,) each: the 1-D recursion every block reuses."""
    sig = [affine((x * x).sum(1) / x.shape[1], weight_std, bias_std)]
    for _ in range(depth - 1):
        e, _ = dual(sig[-1], sig[-1], sig[-1])
        sig.append(affine(e, weight_std, bias_std))
    return sig


def _layer_term(e: Tensor, sigma: Tensor, parametrization: str, fan_in: int) -> Tensor:
    """The new layer's own (weight + bias) contribution to Θ: Σ^(ℓ+1) = σ_w² E + σ_b² in the
    NTK parametrization, n_ℓ E + 1 in the standard one (module doc)."""
    if parametrization == "ntk":
        return sigma
    return fan_in * e + 1.0


def _generic_block(e: Tensor, diag1: list[Tensor], diag2: list[Tensor], rows: slice,
                   cols: slice, dual, weight_std: float, bias_std: float,
                   parametrization: str, fan_ins: list[int]) -> tuple[Tensor, Tensor]:
    """Θ^(L) and Σ^(L) of one (rows, cols) block from E^(0) = x·x'/n0 through the dual."""
    sigma = affine(e, weight_std, bias_std)                              # Σ^(1)
    theta = _layer_term(e, sigma, parametrization, fan_ins[0])           # Θ^(1)
    for layer in range(1, len(fan_ins)):
        e, e_dot = dual(diag1[layer - 1][rows, None], sigma, diag2[layer - 1][None, cols])
        sigma = affine(e, weight_std, bias_std)                          # Σ^(ℓ+1)
        theta = theta_step(theta, e_dot.mul_(weight_std**2),
                           _layer_term(e, sigma, parametrization, fan_ins[layer]))
    return theta, sigma


def _mlp_kernels(a: Tensor, b: Tensor, symmetric: bool, *, depth: int, dual,
                 weight_std: float, bias_std: float, parametrization: str,
                 width: int | None, tile, arccos_slope: float | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The MLP recursion over blocks of (rows, cols) pairs: (Θ_∞, Σ) as (n1, n2) numpy;
    ``arccos_slope``: the fused (leaky-)ReLU path with that negative slope."""
    diag1 = _diagonal_sigmas(a, depth, dual, weight_std, bias_std)
    diag2 = diag1 if symmetric else _diagonal_sigmas(b, depth, dual, weight_std, bias_std)
    n1, n2 = a.shape[0], b.shape[0]
    tiles = plan_tiles(n1, n2, tile, symmetric)
    shape = (tiles[0].r1 - tiles[0].r0, tiles[0].c1 - tiles[0].c0) if tiles else (1, 1)
    # numpy's allocations of this size get transparent huge pages: fewer page faults
    ntk_np, nngp_np = np.empty((n1, n2)), np.empty((n1, n2))
    ntk, nngp = torch.from_numpy(ntk_np), torch.from_numpy(nngp_np)
    arccos = None
    if arccos_slope is not None:
        arccos = ArcCosLayer(shape, arccos_slope, weight_std, bias_std, diag1, diag2)
    fan_ins = [a.shape[1]] + [width or 0] * (depth - 1)
    b_t = (b / b.shape[1]).T                                             # (d, n2), 1/n0 folded in
    for t in tiles:
        rows, cols = t.rows, t.cols
        e = a[rows] @ b_t[:, cols]                                       # E^(0) = x·x'/n0
        if arccos is not None:
            arccos.run(e, rows, cols, depth, nngp[rows, cols], ntk[rows, cols])
        else:
            ntk[rows, cols], nngp[rows, cols] = _generic_block(
                e, diag1, diag2, rows, cols, dual, weight_std, bias_std,
                parametrization, fan_ins)
        if symmetric:
            _mirror(ntk_np, nngp_np, rows, cols)
    return ntk_np, nngp_np


def analytic_kernels(
    x1,
    x2=None,
    *,
    depth: int,
    activation: str = "relu",
    weight_std: float = 1.0,
    bias_std: float = BIAS_STD,
    parametrization: str = "ntk",
    width: int | None = None,
    quadrature: bool | None = None,
    quadrature_points: int | None = None,
    tile: int | tuple[int, int] = (64, 512),
    fused: bool = True,
    leaky_relu_slope: float = LEAKY_RELU_SLOPE,
    architecture: str = "mlp",
    kernel_size: int = 3,
    padding: str = "same",
    readout: str = "gap",
    memory_budget: int = 1 << 28,
    device: str | None = None,
    dtype: str = "float64",
) -> AnalyticKernels:
    """Θ_∞ and Σ^(L) of a depth-L MLP for inputs x1 (n1, d) and x2 (n2, d) (default x1), or
    of a CNN or ResNet (``architecture``) for images (n, C, H, W). In ``mup`` and
    ``mean_field`` Θ_∞ is the limit of Θ_η at initialisation (the NTK parametrization's)
    and Σ is σ_b² (``ntksweep.parametrizations``).

    Returns (n1, n2) float64 kernels per logit (the k-output limit is Θ_∞ ⊗ I_k).
    ``quadrature=True`` forces quadrature even where a closed form exists (for checks);
    ``width`` is needed only for the standard parametrization; ``leaky_relu_slope`` is leaky
    ReLU's negative slope a (σ(x) = max(x, 0) + a·min(x, 0)). ReLU and leaky ReLU (NTK
    parametrization) take the fused in-place ``ArcCosLayer`` path unless ``fused=False``
    (the generic dual path, kept for checks). The recursion runs through all layers one
    block of ``tile`` = (rows, cols) pairs at a time (an int: square) so that the block stays
    in cache: 64 × 512 keeps the fused path's four buffers in a laptop's L2 while amortising
    each torch op's dispatch cost. With x2 None only the blocks on and above the diagonal are
    computed and mirrored. Conv nets and ResNets run their pixel-pair recursion on
    ``device`` (e.g. 'cuda'; default the CPU) in tiles of image pairs under
    ``memory_budget`` bytes, in ``dtype`` ('float64', or 'float32': half the memory traffic;
    the MLP's recursion, O(L) per pair, runs in float64 and returns ``dtype``).
    """
    check_network(depth=depth, activation=activation, weight_std=weight_std,
                  bias_std=bias_std, parametrization=parametrization, width=width,
                  leaky_relu_slope=leaky_relu_slope)
    # mup, mean_field: Θ_η at initialisation is the NTK parametrization's Θ for the same
    # draws, and the output's prior variance tends to σ_b² (ntksweep.parametrizations)
    limit = parametrization if has_nngp_limit(parametrization) else "ntk"
    limit_dtype(dtype)                     # a clear error for any other name
    if architecture not in FUSED:
        raise SpecError(f"kernels.analytic_kernels computes the mlp, cnn and resnet limits; "
                        f"for {architecture!r} use ntksweep.analytic_kernels (every "
                        "registered architecture)")
    if architecture != "mlp":
        ntk_np, nngp_np = conv_limits(
            x1, x2, architecture=architecture, depth=depth, activation=activation,
            weight_std=weight_std, bias_std=bias_std, parametrization=limit,
            leaky_relu_slope=leaky_relu_slope, kernel_size=kernel_size, padding=padding,
            readout=readout, quadrature=quadrature, memory_budget=memory_budget,
            device=device, dtype=dtype)
    else:
        ntk_np, nngp_np = _mlp_limits(
            x1, x2, depth=depth, activation=activation, weight_std=weight_std,
            bias_std=bias_std, parametrization=limit, width=width, quadrature=quadrature,
            quadrature_points=quadrature_points, tile=tile, fused=fused,
            leaky_relu_slope=leaky_relu_slope, device=device)
        with np.errstate(over="ignore"):
            ntk_np, nngp_np = ntk_np.astype(dtype), nngp_np.astype(dtype)
        if not (np.isfinite(ntk_np).all() and np.isfinite(nngp_np).all()):
            raise SpecError(f"the {activation} kernel overflows {dtype} for these inputs; "
                            "rescale them, e.g. standardise them, or compute in float64")
    if limit != parametrization:
        nngp_np = np.full_like(ntk_np, bias_std**2)
    return AnalyticKernels(ntk_np, nngp_np, int(depth), activation, float(weight_std),
                           float(bias_std), parametrization)


def _mlp_limits(x1, x2, *, depth, activation, weight_std, bias_std, parametrization, width,
                quadrature, quadrature_points, tile, fused, leaky_relu_slope, device
                ) -> tuple[np.ndarray, np.ndarray]:
    """``analytic_kernels`` for an MLP: (Θ_∞, Σ), (n1, n2) float64 numpy."""
    if device not in (None, "cpu"):
        raise SpecError(f"device={device!r} runs the conv nets' and ResNets' limits; the MLP "
                        "recursion runs on the CPU (it is per image pair O(L), not O(L·P²))")
    a_np, b_np, symmetric = as_float64_inputs(x1, x2)
    given = (a_np, b_np)
    scale = None
    if activation in _HOMOGENEOUS and bias_std == 0 and parametrization == "ntk":
        # exact at any input scale: the kernels of unit-norm inputs, times |x||x'|
        a_np, na = _unit_rows(a_np)
        b_np, nb = (a_np, na) if symmetric else _unit_rows(b_np)
        with np.errstate(over="ignore"):
            scale = np.outer(na, nb)
    dual = get_dual(activation, quadrature=quadrature, points=quadrature_points,
                    leaky_relu_slope=leaky_relu_slope)
    slope = {"relu": 0.0, "leaky_relu": leaky_relu_slope}.get(activation)
    fused = fused and slope is not None and not quadrature and parametrization == "ntk"
    ntk_np, nngp_np = _mlp_kernels(
        torch.from_numpy(a_np), torch.from_numpy(b_np), symmetric, depth=depth, dual=dual,
        weight_std=weight_std, bias_std=bias_std, parametrization=parametrization,
        width=width, tile=tile, arccos_slope=slope if fused else None)
    if scale is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            ntk_np, nngp_np = ntk_np * scale, nngp_np * scale
    if not (np.isfinite(ntk_np).all() and np.isfinite(nngp_np).all()):
        raise SpecError(f"the {activation} kernel overflows float64 for these inputs "
                        f"(x·x/n0 up to {max(map(_max_sq, given)):.3g}); rescale the "
                        "inputs, e.g. standardise them")
    return ntk_np, nngp_np
