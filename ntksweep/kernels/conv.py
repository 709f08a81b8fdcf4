"""Infinite-width kernels of convolutional networks and ResNets: the CNN-GP Σ and the CNTK
Θ_∞ (Novak et al. 2019, "Bayesian deep CNNs with many channels are GPs"; Arora et al. 2019,
"On exact computation with an infinitely wide neural net"), in the conventions of
``ntksweep.models.convnets`` (neural-tangents' ``stax``).

The recursion runs on the covariance of every pair of pixel positions (p, q) of an image
pair (x, x'):

    input        E⁰[p, q] = (1/C) Σ_c x_c(p) x'_c(q)
    convolution  Σ[p, q] = σ_w² 𝒜(E)[p, q] + σ_b²,   𝒜(E)[p, q] = (1/k²) Σ_δ E[p + δ, q + δ]
                 (δ over the k×k window; E is 0 outside the image for ``same``)
                 Θ ← σ_w² 𝒜(Ė ⊙ Θ) + Σ  (Θ = Σ after the first)
    activation   E = E[φ(u) φ(v)], Ė = E[φ'(u) φ'(v)] on each pair, (u, v) ~ N(0, [[Σ(x, x)[p, p],
                 Σ[p, q]], [·, Σ(x', x')[q, q]]]) — the MLP's duals, pair by pair
    residual     z ← z + Conv(φ(z)) adds the branch's Σ and Θ to the skip path's
    readout      ``flatten``: the dense layer averages the diagonal p = q,
                 Σ_out = σ_w² ⟨E⟩_p + σ_b²; ``gap``: it averages every (p, q);
                 Θ_out = σ_w² ⟨Ė ⊙ Θ⟩ + Σ_out

A convolution maps the diagonal p = q to itself (both positions move by the same δ), so a
``flatten`` CNN needs only the P diagonal entries of each image pair; ``gap`` and ResNets
need all P². Image pairs are computed in tiles under a byte budget.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SpecError
from ..hyper import check_conv
from .duals import get_dual
from .tiles import float64_points, limit_dtype, pair_kernels

__all__ = ["conv_kernels", "conv_limits", "as_float64_images"]

# A tile's working set: the recursion makes ~30 elementwise passes over every tile per
# layer, so a tile that stays in the cache (L2 + a share of L3) runs them at cache speed
# instead of memory speed (benchmarks/RESULTS.md, conv nets).
CACHE_TILE_BYTES = 16 << 20


def conv_average(e: Tensor, k: int, padding: str) -> Tensor:
    """𝒜(E): the mean over the k×k window of E[p + δ, q + δ] for E (…, H, W, H, W), zeros
    outside the image (``same``: output H×W) or only inside it (``valid``: (H−k+1)×(W−k+1)).
    The window and the zero padding are products over rows and columns, so 𝒜 is a mean
    over row shifts then one over column shifts (2k slice sums, not k²); slices add into
    place and nothing is padded."""
    return _shift_mean(_shift_mean(e, k, padding, (-4, -2)), k, padding, (-3, -1))


def _shift_mean(e: Tensor, k: int, padding: str, axes: tuple[int, int]) -> Tensor:
    """(1/k) Σ_d E[p + d, q + d] along one spatial axis of p and the same axis of q."""
    n = e.shape[axes[0]]

    def cut(t: Tensor, lo: int, hi: int) -> Tensor:
        return t.narrow(axes[0], lo, hi - lo).narrow(axes[1], lo, hi - lo)

    if padding == "valid":
        m = n - k + 1
        out = cut(e, 0, m).clone()
        for d in range(1, k):
            out += cut(e, d, d + m)
        return out.div_(k)
    out = e.clone()                                                      # d = 0
    for d in range(-(k // 2), k // 2 + 1):
        if d and abs(d) < n:  # outputs whose p + d (and q + d) stay inside the image
            lo, hi = max(0, -d), min(n, n - d)
            cut(out, lo, hi).add_(cut(e, lo + d, hi + d))
    return out.div_(k)


def conv_average_diagonal(d: Tensor, k: int, padding: str) -> Tensor:
    """𝒜 on the diagonal p = q alone: the k×k mean of d (…, H, W), as ``conv_average``."""
    shape = d.shape
    pooled = F.avg_pool2d(d.reshape(-1, 1, *shape[-2:]), k, stride=1,
                          padding=k // 2 if padding == "same" else 0, count_include_pad=True)
    return pooled.reshape(*shape[:-2], *pooled.shape[-2:])


def _affine(e: Tensor, weight_std: float, bias_std: float) -> Tensor:
    return e.mul_(weight_std**2).add_(bias_std**2)


def _variances(x: Tensor, depth: int, architecture: str, dual, k: int, padding: str,
               weight_std: float, bias_std: float) -> list[Tensor]:
    """Σ(x, x)[p, p] after each convolution (n, H_ℓ, W_ℓ): the per-image recursion that
    every pair's duals read."""
    v = [_affine(conv_average_diagonal((x * x).mean(1), k, padding), weight_std, bias_std)]
    for _ in range(depth - 2):
        e, _ = dual(v[-1], v[-1], v[-1])
        branch = _affine(conv_average_diagonal(e, k, padding), weight_std, bias_std)
        v.append(v[-1] + branch if architecture == "resnet" else branch)
    return v


def _pair_kernels(a: Tensor, b: Tensor, va: list[Tensor], vb: list[Tensor], *,
                  architecture: str, readout: str, dual, k: int, padding: str,
                  weight_std: float, bias_std: float) -> tuple[Tensor, Tensor]:
    """Θ and Σ of the readout for images a (r, C, H, W) × b (c, C, H, W): (r, c) each."""
    diagonal = architecture == "cnn" and readout == "flatten"
    if diagonal:                                                          # (r, c, H, W)
        e = torch.einsum("ichw,jchw->ijhw", a, b) / a.shape[1]
        average = conv_average_diagonal
        k11 = [v[:, None] for v in va]
        k22 = [v[None] for v in vb]
    else:                                                                 # (r, c, H, W, H, W)
        e = torch.einsum("ichw,jcxy->ijhwxy", a, b) / a.shape[1]
        average = conv_average
        k11 = [v[:, None, :, :, None, None] for v in va]
        k22 = [v[None, :, None, None] for v in vb]
    sigma = _affine(average(e, k, padding), weight_std, bias_std)         # Σ after the first
    theta = sigma.clone()
    for layer in range(1, len(va)):                                       # convs / blocks
        e, e_dot = dual(k11[layer - 1], sigma, k22[layer - 1])
        branch = _affine(average(e, k, padding), weight_std, bias_std)
        branch_theta = average(e_dot.mul_(theta), k, padding).mul_(weight_std**2).add_(branch)
        if architecture == "resnet":
            sigma, theta = sigma + branch, theta + branch_theta
        else:
            sigma, theta = branch, branch_theta
    e, e_dot = dual(k11[-1], sigma, k22[-1])                               # φ, then readout
    dims = tuple(range(2, e.dim()))
    out_sigma = e.mean(dims) * weight_std**2 + bias_std**2
    out_theta = (e_dot * theta).mean(dims) * weight_std**2 + out_sigma
    return out_theta, out_sigma


def _readout_on_inputs(a: Tensor, b: Tensor, readout: str, weight_std: float,
                       bias_std: float) -> tuple[Tensor, Tensor]:
    """A depth-1 CNN: the dense readout on the raw (flattened or pooled) pixels."""
    if readout == "flatten":
        e = a.flatten(1) @ b.flatten(1).T / a[0].numel()
    else:
        e = a.mean((2, 3)) @ b.mean((2, 3)).T / a.shape[1]
    sigma = e * weight_std**2 + bias_std**2
    return sigma, sigma


def conv_kernels(a: Tensor, b: Tensor, symmetric: bool, *, architecture: str, depth: int,
                 dual, weight_std: float, bias_std: float, kernel_size: int, padding: str,
                 readout: str, memory_budget: int) -> tuple[Tensor, Tensor]:
    """Θ_∞ and Σ (n1, n2) for images a (n1, C, H, W), b (n2, C, H, W), on their device and
    in their dtype; image pairs in tiles whose working memory stays near ``memory_budget`` bytes
    (on a CPU also within ``CACHE_TILE_BYTES``)."""
    n1, n2 = a.shape[0], b.shape[0]
    if architecture == "cnn" and depth == 1:
        return _readout_on_inputs(a, b, readout, weight_std, bias_std)
    args = dict(architecture=architecture, dual=dual, k=kernel_size, padding=padding,
                weight_std=weight_std, bias_std=bias_std)
    va = _variances(a, depth, **args)
    vb = va if symmetric else _variances(b, depth, **args)
    pixels = a.shape[2] * a.shape[3]
    per_pair = 8 * a.element_size() * (pixels if architecture == "cnn" and readout == "flatten"
                                       else pixels * pixels)               # ~8 buffers
    budget = memory_budget if a.is_cuda else min(memory_budget, CACHE_TILE_BYTES)
    side = max(1, int(math.sqrt(max(1, budget // per_pair))))
    return pair_kernels(n1, n2, side, symmetric, lambda t, _same: _pair_kernels(
        a[t.rows], b[t.cols], [v[t.rows] for v in va], [v[t.cols] for v in vb],
        readout=readout, **args), device=a.device, dtype=a.dtype)


def as_float64_images(x1, x2=None) -> tuple[Tensor, Tensor, bool]:
    """Validate (n1, C, H, W) / (n2, C, H, W) images given as numpy or torch: float64 torch."""
    a, b, symmetric = float64_points(x1, x2, ndim=4,
                                     what="images (points, channels, height, width)")
    a_t = torch.from_numpy(a)
    return a_t, a_t if symmetric else torch.from_numpy(b), symmetric


def conv_limits(x1, x2, *, architecture, depth, activation, weight_std, bias_std,
                parametrization, leaky_relu_slope, kernel_size, padding, readout, quadrature,
                memory_budget, device=None, dtype="float64") -> tuple[np.ndarray, np.ndarray]:
    """``analytic_kernels`` for ``architecture`` 'cnn' or 'resnet': (Θ_∞, Σ), (n1, n2)
    numpy in ``dtype``, for images x1 (n1, C, H, W) and x2 (n2, C, H, W) (default x1); the
    recursion runs on ``device`` (default: the CPU), in ``dtype``."""
    check_conv(architecture=architecture, depth=depth, kernel_size=kernel_size,
               padding=padding, readout=readout, parametrization=parametrization)
    a, b, symmetric = as_float64_images(x1, x2)
    a = a.to(device or "cpu", limit_dtype(dtype))
    b = a if symmetric else b.to(a.device, a.dtype)
    check_conv(architecture=architecture, depth=depth, kernel_size=kernel_size,
               padding=padding, readout=readout, image_size=tuple(a.shape[2:]))
    dual = get_dual(activation, quadrature=quadrature, leaky_relu_slope=leaky_relu_slope)
    ntk, nngp = conv_kernels(a, b, symmetric, architecture=architecture, depth=depth,
                             dual=dual, weight_std=weight_std, bias_std=bias_std,
                             kernel_size=kernel_size, padding=padding, readout=readout,
                             memory_budget=memory_budget)
    ntk, nngp = ntk.cpu().numpy(), nngp.cpu().numpy()
    if not (np.isfinite(ntk).all() and np.isfinite(nngp).all()):
        raise SpecError(f"the {activation} {architecture} kernel overflows {dtype} for these "
                        "inputs; rescale them, e.g. standardise them")
    return ntk, nngp
