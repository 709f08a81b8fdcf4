"""Layers with recorded forward multipliers, and their seeded initialisation.

A layer computes z = weight_mult · (W ⊛ a) + bias_mult · b with W, b trainable. In the NTK
parametrization W, b ~ N(0, 1) and the multipliers are σ_w/√fan_in and σ_b; in the standard
one the entries carry those scales and the multipliers are 1. The structured empirical NTK
reads the multipliers, so a network and its kernel come from one definition.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Dense", "Conv", "init_affine"]


def _randn(*shape: int, generator: torch.Generator | None, dtype: torch.dtype,
           device: str | torch.device) -> torch.Tensor:
    """N(0, 1). Seeded: drawn on CPU in float64 (so a seed means the same network on every
    device and dtype), in row chunks so a width-65536 layer never holds a float64 copy of
    itself. Unseeded: torch's global RNG, directly on ``device`` (fast for huge GPU nets)."""
    if generator is None:
        return torch.randn(*shape, dtype=dtype, device=device)
    out = torch.empty(*shape, dtype=dtype)
    rows = max(1, (1 << 24) // max(1, math.prod(shape[1:])))
    for r in range(0, shape[0], rows):
        out[r:r + rows] = torch.randn(min(rows, shape[0] - r), *shape[1:], generator=generator,
                                      dtype=torch.float64)
    return out


class Dense(nn.Module):
    """z = weight_mult · W a + bias_mult · b, with W (out, in) and b (out,) trainable."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, weight_mult: float,
                 bias_mult: float):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self.weight_mult = float(weight_mult)
        self.bias_mult = float(bias_mult)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        z = torch.addmm(self.bias * self.bias_mult, a, self.weight.T, alpha=self.weight_mult) \
            if self.bias_mult != 0 else self.weight_mult * (a @ self.weight.T)
        return z

    def extra_repr(self) -> str:
        return (f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, "
                f"weight_mult={self.weight_mult:.4g}, bias_mult={self.bias_mult:.4g}")


def init_affine(weight_shape: tuple[int, ...], fan_in: int, *, parametrization: str,
                weight_std: float, bias_std: float, generator: torch.Generator | None,
                dtype: torch.dtype, device: str | torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(W, b, weight_mult, bias_mult) of one layer, W then b drawn from ``generator``."""
    w = _randn(*weight_shape, generator=generator, dtype=dtype, device=device)
    b = _randn(weight_shape[0], generator=generator, dtype=dtype, device=device)
    if parametrization == "ntk":
        mults = (weight_std / math.sqrt(fan_in), bias_std)
    else:
        w, b = w.mul_(weight_std / math.sqrt(fan_in)), b.mul_(bias_std)
        mults = (1.0, 1.0)
    return w.to(device=device), b.to(device=device), *mults


class Conv(nn.Module):
    """z = weight_mult · (W ∗ a) + bias_mult · b: a k×k convolution, stride 1, zero padding
    ``same`` (output H×W) or ``valid`` (output (H−k+1)×(W−k+1)); W (C_out, C_in, k, k)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, weight_mult: float,
                 bias_mult: float, padding: str = "same"):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self.weight_mult = float(weight_mult)
        self.bias_mult = float(bias_mult)
        self.padding = padding

    @property
    def kernel_size(self) -> int:
        return self.weight.shape[-1]

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """a (N, C_in, H, W) → z (N, C_out, H', W')."""
        pad = self.kernel_size // 2 if self.padding == "same" else 0
        return nn.functional.conv2d(a, self.weight * self.weight_mult,
                                    self.bias * self.bias_mult, padding=pad)

    def extra_repr(self) -> str:
        return (f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, "
                f"k={self.kernel_size}, padding={self.padding}, "
                f"weight_mult={self.weight_mult:.4g}, bias_mult={self.bias_mult:.4g}")
