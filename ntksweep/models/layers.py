"""Layers with recorded forward multipliers and learning-rate factors, and their seeded
initialisation.

A layer computes z = weight_mult · (W ⊛ a) + bias_mult · b with W, b trainable, initialised
and trained as its parametrization says (``ntksweep.parametrizations``): in the NTK
parametrization W, b ~ N(0, 1) and the multipliers are σ_w/√fan_in and σ_b; in the standard
one the entries carry those scales and the multipliers are 1. The structured empirical NTK
reads the multipliers and the learning-rate factors, so a network and its kernel come from
one definition.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..parametrizations import layer_scales, lr_factors

__all__ = ["Dense", "PositionwiseDense", "Conv", "init_affine", "affine_layers",
           "parameter_lr_factors", "seeded_normal"]


def seeded_normal(*shape: int, generator: torch.Generator | None, dtype: torch.dtype,
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


class _Affine(nn.Module):
    """What Dense and Conv share: W, b trainable (b may be absent: attention's projections);
    z = weight_mult · (W ⊛ a) + bias_mult · b;
    the learning-rate factors r of W and b under gradient descent (the measured kernel Θ_η
    weighs each layer's share by them), the layer's ``role`` (``parametrizations``) and the
    prior variances of one entry of the effective W and b."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, weight_mult: float,
                 bias_mult: float, *, weight_lr: float = 1.0, bias_lr: float = 1.0,
                 role: str = "hidden", prior: tuple[float, float] | None = None):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.weight_mult = float(weight_mult)
        self.bias_mult = 0.0 if bias is None else float(bias_mult)
        self.weight_lr, self.bias_lr, self.role = float(weight_lr), float(bias_lr), role
        self.prior = prior if prior is not None else (self.weight_mult**2, self.bias_mult**2)

    def _repr_scales(self) -> str:
        lr = f", lr×({self.weight_lr:.4g}, {self.bias_lr:.4g})" \
            if (self.weight_lr, self.bias_lr) != (1.0, 1.0) else ""
        return f"weight_mult={self.weight_mult:.4g}, bias_mult={self.bias_mult:.4g}{lr}"


class Dense(_Affine):
    """z = weight_mult · W a + bias_mult · b, with W (out, in) and b (out,) trainable."""

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        z = torch.addmm(self.bias * self.bias_mult, a, self.weight.T, alpha=self.weight_mult) \
            if self.bias_mult != 0 else self.weight_mult * (a @ self.weight.T)
        return z

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, {self._repr_scales()}"


class PositionwiseDense(_Affine):
    """``Dense`` at every position: z (N, C_in, *S) → (N, C_out, *S), the same W and b at each
    (a token's dense layer in a transformer; a 1×1 convolution on images)."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        # one matrix product over every position, channels last: no copy when ``a`` is
        # itself a channels-first view of channels-last memory (as this layer's, LayerNorm's
        # and attention's outputs are); the multipliers are folded into the (small) weights
        moved = a.movedim(1, -1)
        flat = moved.reshape(-1, moved.shape[-1])
        w = (self.weight * self.weight_mult).T
        z = flat @ w if self.bias_mult == 0 else torch.addmm(self.bias * self.bias_mult, flat, w)
        return z.reshape(*moved.shape[:-1], -1).movedim(-1, 1)

    def extra_repr(self) -> str:
        return (f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, per position, "
                f"{self._repr_scales()}")


def init_affine(weight_shape: tuple[int, ...], fan_in: int, *, role: str, width: int,
                parametrization: str, weight_std: float, bias_std: float,
                generator: torch.Generator | None, dtype: torch.dtype,
                device: str | torch.device) -> dict:
    """One layer's constructor arguments in ``parametrization`` (``layer_scales``; the
    learning-rate factors under gradient descent, ``lr_factors``): W then b drawn from
    ``generator``; ``width`` is the network's hidden width n."""
    scales = layer_scales(parametrization, role, fan_in, width, weight_std=weight_std,
                          bias_std=bias_std)
    w = seeded_normal(*weight_shape, generator=generator, dtype=dtype, device=device)
    b = seeded_normal(weight_shape[0], generator=generator, dtype=dtype, device=device)
    if scales.weight_init != 1.0 or scales.bias_init != 1.0:
        w, b = w.mul_(scales.weight_init), b.mul_(scales.bias_init)
    weight_lr, bias_lr = lr_factors(parametrization, "gd", role, width)
    return dict(weight=w.to(device=device), bias=b.to(device=device),
                weight_mult=scales.weight_mult, bias_mult=scales.bias_mult,
                weight_lr=weight_lr, bias_lr=bias_lr, role=role,
                prior=(scales.weight_variance, scales.bias_variance))


class Conv(_Affine):
    """z = weight_mult · (W ∗ a) + bias_mult · b: a k×k convolution, stride 1, zero padding
    ``same`` (output H×W) or ``valid`` (output (H−k+1)×(W−k+1)); W (C_out, C_in, k, k)."""

    def __init__(self, *, padding: str = "same", **affine):
        super().__init__(**affine)
        self.padding = padding

    @property
    def kernel_size(self) -> int:
        return self.weight.shape[-1]

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """a (N, C_in, H, W) → z (N, C_out, H', W')."""
        pad = self.kernel_size // 2 if self.padding == "same" else 0
        bias = None if self.bias is None else self.bias * self.bias_mult
        return nn.functional.conv2d(a, self.weight * self.weight_mult, bias, padding=pad)

    def extra_repr(self) -> str:
        return (f"in={self.weight.shape[1]}, out={self.weight.shape[0]}, "
                f"k={self.kernel_size}, padding={self.padding}, {self._repr_scales()}")


def parameter_lr_factors(model: nn.Module) -> dict[str, float]:
    """Every trainable parameter's learning-rate factor r under gradient descent, by name
    (1 for parameters outside ``Dense`` and ``Conv`` layers): the weights of the measured
    kernel Θ_η = Σ_p r_p ∂_p f ∂_p fᵀ."""
    factors = {name: 1.0 for name, p in model.named_parameters() if p.requires_grad}
    for prefix, module in model.named_modules():
        if isinstance(module, _Affine):
            dot = f"{prefix}." if prefix else ""
            factors[f"{dot}weight"] = module.weight_lr
            if module.bias is not None:
                factors[f"{dot}bias"] = module.bias_lr
    return factors


def affine_layers(model: nn.Module) -> list[_Affine]:
    """The model's ``Dense`` and ``Conv`` layers, in module order."""
    return [m for m in model.modules() if isinstance(m, _Affine)]
