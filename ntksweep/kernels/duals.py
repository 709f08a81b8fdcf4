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

import functools
import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from ..activations import LEAKY_RELU_SLOPE, get_activation
from ..errors import SpecError

Dual = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
_PI = math.pi

MAX_QUADRATURE_POINTS = 301


_ONE = torch.ones((), dtype=torch.float64)

# Correlations within 8 ulp of ±1 are taken as exactly ±1: such angles (< 1e-7 rad) are below
# what float64 dot products resolve, and without this a point paired with itself (or with a
# duplicate) gets the √ulp ≈ 1e-8 angle of a last-bit mismatch between Σ(x, x') and
# √(Σ(x,x) Σ(x',x')) instead of θ = 0 — a 1e-8 relative error on the kernel's diagonal.
# In float32 the same 8 ulp (``snap``): its √ulp ≈ 3e-4 rad would be a 2e-5 error.
SNAP = 1.0 - 8 * float(np.finfo(np.float64).eps)


def positive_sqrt(v: Tensor) -> Tensor:
    """√v with v floored at a tiny positive number of its dtype (1e-300; float32's smallest
    normal): a zero variance then divides a zero covariance to 0, never 0/0."""
    return v.clamp(min=max(1e-300, torch.finfo(v.dtype).tiny)).sqrt()


def snap(dtype: torch.dtype) -> float:
    """``SNAP`` in ``dtype``: 1 − 8 ulp."""
    return 1.0 - 8 * torch.finfo(dtype).eps


def _sin_from_cos(cos: Tensor) -> Tensor:
    return torch.addcmul(_ONE, cos, cos, value=-1.0).clamp_(min=0.0).sqrt_()


def arccos_dual(k11, k12, k22, slope: float = 0.0):
    """Leaky ReLU σ(x) = max(x, 0) + a·min(x, 0), a = ``slope`` (a = 0: ReLU).

    Arc-cosine kernels of degree 1 and 0 (Cho & Saul 2009) in the leaky form of
    Tsuchida et al. (2018) (neural-tangents' ``ABRelu``), with A = (1+a²)/2, B = (1−a)²/(2π):
        E[σ'σ'] = A − B θ
        E[σσ]   = s1 s2 [A cos θ + B (sin θ − θ cos θ)] = s1 s2 [B sin θ + E[σ'σ'] cos θ]
    The pair tensors are memory-bound, so cos θ is k12 times the per-position reciprocals
    of s1 and s2 (no s1 s2 tensor, no division) and every later step runs in place: 9 passes
    over the pairs instead of 13 (ReLU at 32×32: 30–40% less time). |cos θ| within 8 ulp of
    1 becomes exactly 1 (``snap``), so a point with itself gets θ = 0; a zero variance
    forces k12 = 0 and so cos θ = 0 (uncorrelated)."""
    s1, s2 = positive_sqrt(k11), positive_sqrt(k22)
    cos = torch.mul(k12, (1.0 / snap(k12.dtype)) / s1).mul_(1.0 / s2).clamp_(-1.0, 1.0)
    a = slope
    big_a, big_b = (1 + a * a) / 2, (1 - a) ** 2 / (2 * _PI)
    e_dot = torch.acos(cos).mul_(-big_b).add_(big_a)
    e_sigma = _sin_from_cos(cos).mul_(big_b).addcmul_(e_dot, cos)
    return e_sigma.mul_(s1).mul_(s2), e_dot


def relu_dual(k11, k12, k22):
    """ReLU (Cho & Saul 2009): E[σσ] = s1 s2 (sin θ + (π − θ) cos θ)/(2π),
    E[σ'σ'] = (π − θ)/(2π) — ``arccos_dual`` at a = 0, the hot path of most sweeps."""
    return arccos_dual(k11, k12, k22)


def leaky_relu_dual(k11, k12, k22, slope: float = LEAKY_RELU_SLOPE):
    return arccos_dual(k11, k12, k22, slope=slope)


def erf_dual(k11, k12, k22):
    """σ = erf (Williams 1997):
    E[σσ]   = (2/π) arcsin(2 k12 / √((1+2k11)(1+2k22)))
    E[σ'σ'] = (4/π) / √((1+2k11)(1+2k22) − 4 k12²)
    """
    a, b = 1.0 + 2.0 * k11, 1.0 + 2.0 * k22
    # roots taken apart: (1+2k11)(1+2k22) overflows float64 for variances past ~1e154
    e_sigma = (2 / _PI) * torch.asin((2.0 * k12 / (torch.sqrt(a) * torch.sqrt(b))).clamp(-1, 1))
    # (1+2k11)(1+2k22) − 4k12² = 1 + 2k11 + 2k22 + 4(k11 k22 − k12²), each term ≥ 0, with
    # k11 k22 − k12² = (s − k12)(s + k12), s = √k11 √k22 (no inf − inf at huge variances)
    s = torch.sqrt(k11) * torch.sqrt(k22)
    det = 1.0 + 2.0 * k11 + 2.0 * k22 + 4.0 * ((s - k12).clamp(min=0.0) * (s + k12))
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
    # clamped at 0: at huge variances rounding can put k12 a few ulp (≫ 1) past the bound
    plus = torch.exp((k12 - half_sum).clamp(max=0.0))
    minus = torch.exp((-k12 - half_sum).clamp(max=0.0))
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
    # step 0.25 is ~1e-8 accurate for tanh at std √2; shrink it ∝ 1/std beyond that (the
    # polar rule takes over above _POLAR_STD, well before the cap)
    points = int(np.ceil(2 * _Z_MAX / 0.25 * max(1.0, min(std_max, 1e6) / np.sqrt(2.0)))) | 1
    return min(points, MAX_QUADRATURE_POINTS)


# Above this std the trapezoid's nodes would grow ∝ std (tanh(s z) turns over within 1/s in
# z); the polar rule's cost grows only like log(std), and it is as cheap there already.
_POLAR_STD = 3.0
_POLAR_MAX_STD = 1e15
_LOG_STEP = 0.2         # the radial rule's step in log r, and the (anti)parallel rule's
# the log rules start at r = e^(−margin)/std: below that a 2-D integrand holds ~r² of its
# mass (e^(−28)), a 1-D one of σ'σ' (flat at 0) ~r (so it starts lower)
_LOG_MARGIN, _LOG_MARGIN_1D = 14.0, 36.0


@lru_cache(maxsize=64)
def _log_nodes(log_std: int, top: float, margin: float = _LOG_MARGIN
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes r = e^u, u uniform on [−log_std − margin, log ``top``] at step 0.2, for ∫₀^top dr:
    the trapezoid rule in log r, whose nodes are as dense around r = 1/std (where σ(std·r·…)
    turns over) as anywhere, at every std (its error ~e^(−π²/(2·0.2)) ≈ 2e-11 for integrands
    analytic in a strip |Im u| < π/4, as e^(−r²/2) is). Weights w with Σ w g(r) ≈ ∫ g dr."""
    u = torch.arange(-log_std - margin, math.log(top) + 1e-9, _LOG_STEP, dtype=torch.float64)
    r = torch.exp(u)
    return r, _LOG_STEP * r


@lru_cache(maxsize=1)
def _angle_nodes() -> tuple[torch.Tensor, torch.Tensor]:
    """Tanh-sinh nodes x ∈ (−1, 1), x = tanh((π/2) sinh t), t ∈ [−2.8, 2.8] at step 0.05,
    clustering at both ends, and their weights (for ∫₋₁¹ dx). The step was chosen against
    scipy's adaptive quadrature: 0.1 left 3e-5 at std 10³ near (anti)parallel pairs."""
    t = torch.arange(-2.8, 2.8 + 1e-9, 0.05, dtype=torch.float64)
    x = torch.tanh(0.5 * _PI * torch.sinh(t))
    w = 0.05 * 0.5 * _PI * torch.cosh(t) / torch.cosh(0.5 * _PI * torch.sinh(t)) ** 2
    return x, w


def _log_std(std: float) -> int:
    return max(0, math.ceil(math.log(std)))


def _polar_expectations(act, s1: Tensor, s2: Tensor, rho: Tensor, out: tuple[Tensor, Tensor],
                        chunk: int) -> None:
    """E[f(u) g(v)] (f = g = σ, then σ') for each pair, in polar coordinates around the
    origin, (z1, z2) = r (cos α, sin α), where both transition lines of the integrand meet:
    σ(u) turns over along cos α = 0 and σ(v) along cos(α − β) = 0, (cos β, sin β) =
    (ρ, √(1−ρ²)), since u = s1 r cos α and v = s2 r cos(α − β). Radially the rule is
    uniform in log r (``_log_nodes``; the Gaussian r e^(−r²/2)/(2π) in its weights); each of
    the four arcs between those directions gets a tanh-sinh rule, so a turn-over of width
    1/(s r) is resolved at any std s. (Anti)parallel pairs go to ``_parallel_expectations``."""
    log_std = _log_std(float(torch.maximum(s1, s2).max()))
    r, w_r = (t.to(rho.device) for t in _log_nodes(log_std, 12.0))   # e^(−72) beyond
    w_r = w_r * r * torch.exp(-0.5 * r * r) / (2 * _PI)
    x, w_x = (t.to(rho.device) for t in _angle_nodes())
    beta = torch.acos(rho)                                                  # (P,)
    kinks = torch.stack([torch.full_like(beta, 0.5 * _PI), torch.full_like(beta, 1.5 * _PI),
                         torch.remainder(beta + 0.5 * _PI, 2 * _PI),
                         torch.remainder(beta + 1.5 * _PI, 2 * _PI)], 1).sort(1).values
    ends = torch.cat([kinks[:, 1:], kinks[:, :1] + 2 * _PI], 1)             # (P, 4)
    half = 0.5 * (ends - kinks)
    alpha = (0.5 * (kinks + ends))[..., None] + half[..., None] * x          # (P, 4, J)
    w_alpha = (half[..., None] * w_x).reshape(len(beta), -1)                # (P, A)
    alpha = alpha.reshape(len(beta), -1)
    step = max(1, chunk // (r.numel() * alpha.shape[1]))
    for lo in range(0, len(beta), step):
        sl = slice(lo, lo + step)
        cu = (s1[sl, None] * torch.cos(alpha[sl]))[:, None, :]              # (p, 1, A)
        cv = (s2[sl, None] * torch.cos(alpha[sl] - beta[sl, None]))[:, None, :]
        u, v = r[:, None] * cu, r[:, None] * cv                              # (p, R, A)
        for target, f in zip(out, (act.fn, act.derivative)):
            target[sl] = torch.einsum("pra,r,pa->p", f(u) * f(v), w_r, w_alpha[sl])
    parallel = rho.abs() >= snap(rho.dtype)
    if parallel.any():
        exact = _parallel_expectations(act, s1[parallel], s2[parallel],
                                       torch.sign(rho[parallel]))
        for target, values in zip(out, exact):
            target[parallel] = values


def _parallel_expectations(act, s1: Tensor, s2: Tensor, sign: Tensor
                           ) -> tuple[Tensor, Tensor]:
    """E[f(s1 z) f(±s2 z)], z ~ N(0, 1) (f = σ, then σ'), for pairs with ρ = ±1 (a point
    with itself, within ``SNAP``): a one-dimensional integral, on each side of z = 0 by the
    log rule (the 2-D rule's arcs degenerate there, and the two turn-overs coincide)."""
    r, w = _log_nodes(_log_std(float(torch.maximum(s1, s2).max())), 9.0, _LOG_MARGIN_1D)
    r, w = r.to(s1.device), (w * torch.exp(-0.5 * r * r) / math.sqrt(2 * _PI)).to(s1.device)
    values = []
    for f in (act.fn, act.derivative):
        total = torch.zeros_like(s1)
        for side in (1.0, -1.0):
            z = side * r                                                    # (R,)
            total += (f(s1[:, None] * z) * f(sign[:, None] * s2[:, None] * z)) @ w
        values.append(total)
    return values[0], values[1]


def quadrature_dual(activation: str, points: int | None = None, *, chunk: int = 1 << 22,
                    leaky_relu_slope: float = LEAKY_RELU_SLOPE) -> Dual:
    """E[σσ], E[σ'σ'] for any registered σ by a quadrature in (z1, z2) ~ N(0, I₂).

    u = s1 z1, v = s2 (ρ z1 + √(1−ρ²) z2). Up to std 3 (or with ``points`` given): the
    tensor-product trapezoid rule, E[f(u) g(v)] = Σ_i Σ_j w_i w_j f(u_i) g(v_ij), ``points``
    per axis (default: from the largest std, ~1e-12 for smooth σ); above it, the polar
    rule of ``_polar_expectations`` (≤ 1e-8 relative up to std 10³ at every correlation,
    checked against scipy's adaptive quadrature; beyond, pairs within ~10⁻⁶ of parallel
    lose digits, 2e-7 at std 10⁵; past std 10¹⁵ a ``SpecError`` names the variance).
    Evaluated in chunks of ``chunk`` values to bound memory. Kinked σ (ReLU) converge only
    algebraically, which is why they have closed forms.
    """
    act = get_activation(activation, leaky_relu_slope=leaky_relu_slope)

    def dual(k11, k12, k22):
        k11, k12, k22 = torch.broadcast_tensors(k11, k12, k22)
        shape = k12.shape
        s1 = torch.sqrt(k11.clamp(min=0.0)).reshape(-1)
        s2 = torch.sqrt(k22.clamp(min=0.0)).reshape(-1)
        prod = s1 * s2
        rho = torch.where(prod > 0, k12.reshape(-1) / torch.where(prod > 0, prod, 1.0), 0.0)
        rho = rho.clamp(-1.0, 1.0)
        std = max(float(s1.max()) if s1.numel() else 0.0, float(s2.max()) if s2.numel() else 0.0)
        e_sigma, e_dot = torch.empty_like(rho), torch.empty_like(rho)
        if points is None and std > _POLAR_STD:
            if not std <= _POLAR_MAX_STD:
                raise SpecError(f"the {activation} kernel needs pre-activation variances up to "
                                f"{std * std:.3g}, beyond what its quadrature resolves "
                                f"(std {_POLAR_MAX_STD:g}); rescale the inputs or lower "
                                "weight_std")
            _polar_expectations(act, s1, s2, rho, (e_sigma, e_dot), chunk // 2)
            return e_sigma.reshape(shape), e_dot.reshape(shape)
        m = points or _points_for(std)
        z, w = (t.to(rho.device) for t in _trapezoid_nodes(m))
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


def get_dual(activation: str, *, quadrature: bool | None = None, points: int | None = None,
             leaky_relu_slope: float = LEAKY_RELU_SLOPE) -> Dual:
    """The dual of a registered activation: its closed form unless ``quadrature`` is True
    (or it has none, e.g. tanh, sigmoid, softplus)."""
    get_activation(activation)  # validates the name
    if quadrature or activation not in CLOSED_FORM_DUALS:
        return quadrature_dual(activation, points, leaky_relu_slope=leaky_relu_slope)
    if activation == "leaky_relu":
        return functools.partial(leaky_relu_dual, slope=leaky_relu_slope)
    return CLOSED_FORM_DUALS[activation]
