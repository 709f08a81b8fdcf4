"""The activation registry shared by finite networks and their infinite-width kernels.

One entry per nonlinearity σ: the function itself and its derivative σ' (both torch,
elementwise, any dtype/device). The finite MLP uses ``fn``; the structured empirical NTK
uses ``derivative`` in its pre-activation backward pass; the analytic kernels look up a
closed-form dual by the same name (``ntksweep.kernels.duals``) or integrate ``fn`` and
``derivative`` by Gaussian quadrature.

Derivative conventions at kinks follow torch's autograd (relu'(0) = 0,
leaky_relu'(0) = slope), so that our explicit derivatives equal autograd exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import choices
from .choices import LEAKY_RELU_SLOPE
from .errors import SpecError

__all__ = ["Activation", "ACTIVATIONS", "get_activation", "leaky_relu", "LEAKY_RELU_SLOPE"]
_SQRT_2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


@dataclass(frozen=True)
class Activation:
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    derivative: Callable[[torch.Tensor], torch.Tensor]


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / _SQRT_2))


def _gelu_derivative(x: torch.Tensor) -> torch.Tensor:
    # d/dx [x Φ(x)] = Φ(x) + x φ(x)
    return _normal_cdf(x) + x * _INV_SQRT_2PI * torch.exp(-0.5 * x * x)


def _sigmoid_derivative(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def leaky_relu(slope: float) -> Activation:
    """σ(x) = max(x, 0) + a·min(x, 0) with negative slope a (torch's ``leaky_relu``)."""
    return Activation("leaky_relu", lambda x: torch.nn.functional.leaky_relu(x, slope),
                      lambda x: torch.where(x > 0, x.new_ones(()), x.new_full((), slope)))


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("relu", torch.relu, lambda x: (x > 0).to(x.dtype)),
        leaky_relu(LEAKY_RELU_SLOPE),
        Activation("erf", torch.erf, lambda x: _TWO_OVER_SQRT_PI * torch.exp(-x * x)),
        Activation("tanh", torch.tanh, lambda x: 1.0 - torch.tanh(x) ** 2),
        Activation("gelu", lambda x: x * _normal_cdf(x), _gelu_derivative),
        Activation("identity", lambda x: x, torch.ones_like),
        Activation("sigmoid", torch.sigmoid, _sigmoid_derivative),
        Activation("softplus", torch.nn.functional.softplus, torch.sigmoid),
        Activation("sin", torch.sin, torch.cos),
    ]
}
choices.check_implemented("activations", choices.ACTIVATIONS, ACTIVATIONS)


def get_activation(name: str, *, leaky_relu_slope: float = LEAKY_RELU_SLOPE) -> Activation:
    """Look an activation up by name (leaky ReLU with its negative slope); unknown names list
    the known ones."""
    if name == "leaky_relu" and leaky_relu_slope != LEAKY_RELU_SLOPE:
        return leaky_relu(float(leaky_relu_slope))
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(ACTIVATIONS))
        raise SpecError(f"unknown activation {name!r}; choose one of: {known}") from None
