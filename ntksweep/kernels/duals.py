"""Dual activations: Gaussian expectations that drive the infinite-width recursion.

For (u, v) ~ N(0, [[k11, k12], [k12, k22]]) each dual returns the pair

    E[σ(u) σ(v)]   (feeds Σ^(ℓ+1))   and   E[σ'(u) σ'(v)]   (feeds Σ̇^(ℓ+1)),

vectorised over broadcastable float64 arrays k11, k12, k22. Closed forms where they
exist; a Gaussian quadrature for every other registered activation.

Numerical conventions (so that degenerate inputs never give NaN):
- correlations are clamped to [-1, 1] (rounding can push |k12| past √(k11 k22));
- a zero-variance pre-activation (zero input and zero bias) is treated as uncorrelated
  with everything; the value never reaches Θ because Σ is zero there;
- determinants k11 k22 − k12² are clipped at 0 and expanded so that huge norms do not
  cancel catastrophically.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from ..activations import LEAKY_RELU_SLOPE, get_activation

Dual = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
_PI = math.pi

MAX_QUADRATURE_POINTS = 301


_ONE = torch.ones((), dtype=torch.float64)

# Correlations within 8 ulp of ±1 are taken as exactly ±1: such angles (< 1e-7 rad) are below
# what float64 dot products resolve, and without this a point paired with itself (or with a
# duplicate) gets the √ulp ≈ 1e-8 angle of a last-bit mismatch between Σ(x, x') and
# √(Σ(x,x) Σ(x',x')) instead of θ = 0 — a 1e-8 relative error on the kernel's diagonal.
SNAP = 1.0 - 8 * float(np.finfo(np.float64).eps)


def _norms_and_angle(k11: Tensor, k12: Tensor, k22: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """√(k11 k22), cos θ = k12/√(k11 k22) clamped to [−1, 1], and θ ∈ [0, π].

    |cos θ| within 8 ulp of 1 becomes exactly 1 (``SNAP``), so a point with itself gets
    θ = 0. A zero variance forces k12 = 0 and so cos θ = 0 (uncorrelated).
    """
    prod = torch.sqrt(k11.clamp(min=1e-150) * k22.clamp(min=1e-150))  # > 0: no 0/0
    cos = torch.div(k12, prod).mul_(1.0 / SNAP).clamp_(-1.0, 1.0)
    return prod, cos, torch.acos(cos)


def _sin_from_cos(cos: Tensor) -> Tensor:
    return torch.addcmul(_ONE, cos, cos, value=-1.0).clamp_(min=0.0).sqrt_()


def arccos_dual(k11, k12, k22, slope: float = 0.0):
    """Leaky ReLU σ(x) = max(x, 0) + a·min(x, 0), a = ``slope`` (a = 0: ReLU).

    Arc-cosine kernels of degree 1 and 0 (Cho & Saul 2009) in the leaky form of
    Tsuchida et al. (2018) (neural-tangents' ``ABRelu``):
        E[σσ]   = s1 s2 [(1+a²)/2 · cos θ + (1−a)²/(2π) · (sin θ − θ cos θ)]
        E[σ'σ'] = (1+a²)/2 − (1−a)² θ/(2π)
    """
    prod, cos, theta = _norms_and_angle(k11, k12, k22)
    a = slope
    sin = _sin_from_cos(cos)
    e_sigma = prod * ((1 + a * a) / 2 * cos + (1 - a) ** 2 / (2 * _PI) * (sin - theta * cos))
    e_dot = (1 + a * a) / 2 - (1 - a) ** 2 / (2 * _PI) * theta
    return e_sigma, e_dot


def relu_dual(k11, k12, k22):
    """ReLU (Cho & Saul 2009): E[σσ] = s1 s2 (sin θ + (π − θ) cos θ)/(2π),
    E[σ'σ'] = (π − θ)/(2π). Written out with in-place ops: the hot path of most sweeps."""
    prod, cos, theta = _norms_and_angle(k11, k12, k22)
    pi_minus_theta = torch.rsub(theta, _PI)
    e_sigma = torch.addcmul(_sin_from_cos(cos), pi_minus_theta, cos).mul_(prod).div_(2 * _PI)
    return e_sigma, pi_minus_theta.div_(2 * _PI)


def leaky_relu_dual(k11, k12, k22):
    return arccos_dual(k11, k12, k22, slope=LEAKY_RELU_SLOPE)


def erf_dual(k11, k12, k22):
    """σ = erf (Williams 1997):
    E[σσ]   = (2/π) arcsin(2 k12 / √((1+2k11)(1+2k22)))
    E[σ'σ'] = (4/π) / √((1+2k11)(1+2k22) − 4 k12²)
    """
    a, b = 1.0 + 2.0 * k11, 1.0 + 2.0 * k22
    e_sigma = (2 / _PI) * torch.asin((2.0 * k12 / torch.sqrt(a * b)).clamp(-1.0, 1.0))
    # (1+2k11)(1+2k22) − 4k12² = 1 + 2k11 + 2k22 + 4(k11 k22 − k12²), each term ≥ 0
    det = 1.0 + 2.0 * k11 + 2.0 * k22 + 4.0 * (k11 * k22 - k12 * k12).clamp(min=0.0)
    return e_sigma, (4 / _PI) * torch.rsqrt(det)


def identity_dual(k11, k12, k22):
    """σ(x) = x: E[uv] = k12 and σ' = 1."""
    k12 = torch.broadcast_tensors(k11, k12, k22)[1]
    return k12.clone(), torch.ones_like(k12)


def sin_dual(k11, k12, k22):
    """σ = sin: E[sin u sin v] = e^{-(k11+k22)/2} sinh(k12), E[cos u cos v] = … cosh(k12).

    Written with exponents ≤ 0 (|k12| ≤ (k11+k22)/2) so huge variances do not overflow.
    """
    half_sum = 0.5 * (k11 + k22)
    plus, minus = torch.exp(k12 - half_sum), torch.exp(-k12 - half_sum)
    return 0.5 * (plus - minus), 0.5 * (plus + minus)


def gelu_dual(k11, k12, k22):
    """σ(x) = x Φ(x) (exact GELU), Tsuchida et al. 2021 (arXiv:2002.08517):
    with δ² = (1+k11)(1+k22) − k12² and α = arctan(k12 / δ),
        E[σσ]   = k12/4 + [ (k12² + k11 k22 δ²) / ((1+k11)(1+k22) δ) + k12 α ] / (2π)
        E[σ'σ'] = 1/4 + α/(2π) + k12 / (2π δ) · (1/δ² + (1 − k11 k22)/((1+k11)(1+k22)) + 1)
    """
    p = k11 * k22
    p1 = (1.0 + k11) * (1.0 + k22)
    delta_sq = 1.0 + k11 + k22 + (p - k12 * k12).clamp(min=0.0)
    delta = torch.sqrt(delta_sq)
    alpha = torch.atan2(k12, delta)
    e_sigma = 0.25 * k12 + ((k12 * k12 + p * delta_sq) / (p1 * delta) + k12 * alpha) / (2 * _PI)
    e_dot = 0.25 + alpha / (2 * _PI) + k12 / (2 * _PI * delta) * (
        1.0 / delta_sq + (1.0 - p) / p1 + 1.0
    )
    return e_sigma, e_dot


_Z_MAX = 9.0  # Gaussian tail beyond 9σ: e^{-40.5}, below float64 resolution


@lru_cache(maxsize=16)
def _trapezoid_nodes(points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes z and weights w with Σ w g(z) ≈ E_{z~N(0,1)} g(z): the trapezoid rule on
    [−9, 9]. For analytic g it converges like exp(−2π d / h) (d: distance of g's nearest
    complex singularity), far faster per node than Gauss–Hermite for tanh-like σ."""
    z = np.linspace(-_Z_MAX, _Z_MAX, points)
    w = (z[1] - z[0]) * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    return torch.from_numpy(z), torch.from_numpy(w)


def _points_for(std_max: float) -> int:
    # step 0.25 is ~1e-8 accurate for tanh at std √2; shrink it ∝ 1/std beyond that
    points = int(np.ceil(2 * _Z_MAX / 0.25 * max(1.0, std_max / np.sqrt(2.0)))) | 1
    return min(points, MAX_QUADRATURE_POINTS)


def quadrature_dual(activation: str, points: int | None = None, *, chunk: int = 1 << 22) -> Dual:
    """E[σσ], E[σ'σ'] for any registered σ by a tensor-product quadrature in (z1, z2).

    u = s1 z1, v = s2 (ρ z1 + √(1−ρ²) z2) with z1, z2 ~ N(0, 1) independent, so
    E[f(u) g(v)] = Σ_i Σ_j w_i w_j f(u_i) g(v_ij). ``points`` per axis (default: chosen
    from the largest std so that smooth σ are accurate to ~1e-8); cost points² per pair,
    evaluated in chunks of ``chunk`` values to bound memory. Kinked σ (ReLU) converge
    only algebraically, which is why they have closed forms.
    """
    act = get_activation(activation)

    def dual(k11, k12, k22):
        k11, k12, k22 = torch.broadcast_tensors(k11, k12, k22)
        shape = k12.shape
        s1 = torch.sqrt(k11.clamp(min=0.0)).reshape(-1)
        s2 = torch.sqrt(k22.clamp(min=0.0)).reshape(-1)
        prod = s1 * s2
        rho = torch.where(prod > 0, k12.reshape(-1) / torch.where(prod > 0, prod, 1.0), 0.0)
        rho = rho.clamp(-1.0, 1.0)
        m = points or _points_for(max(float(s1.max()) if s1.numel() else 0.0,
                                      float(s2.max()) if s2.numel() else 0.0))
        z, w = _trapezoid_nodes(m)
        e_sigma, e_dot = torch.empty_like(rho), torch.empty_like(rho)
        step = max(1, chunk // (m * m))
        for lo in range(0, rho.numel(), step):
            sl = slice(lo, lo + step)
            u = s1[sl, None] * z                                                # (P, m)
            r = rho[sl, None, None]
            v = s2[sl, None, None] * (r * z[:, None] + torch.sqrt(1.0 - r * r) * z)  # (P, m, m)
            for out, f in ((e_sigma, act.fn), (e_dot, act.derivative)):
                inner = f(v) @ w                                                # (P, m): E over z2
                out[sl] = (f(u) * inner) @ w                                    # (P,): E over z1
        return e_sigma.reshape(shape), e_dot.reshape(shape)

    return dual


CLOSED_FORM_DUALS: dict[str, Dual] = {
    "relu": relu_dual,
    "leaky_relu": leaky_relu_dual,
    "erf": erf_dual,
    "identity": identity_dual,
    "sin": sin_dual,
    "gelu": gelu_dual,
}


def get_dual(activation: str, *, quadrature: bool | None = None, points: int | None = None) -> Dual:
    """The dual of a registered activation: its closed form unless ``quadrature`` is True
    (or it has none, e.g. tanh, sigmoid, softplus)."""
    get_activation(activation)  # validates the name
    if quadrature or activation not in CLOSED_FORM_DUALS:
        return quadrature_dual(activation, points)
    return CLOSED_FORM_DUALS[activation]
