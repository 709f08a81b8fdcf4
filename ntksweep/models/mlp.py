"""Fully connected networks in Jacot's NTK parametrization (default), the standard one, μP
or the mean-field one (``ntksweep.parametrizations``).

Depth L = number of weight matrices (docs/ARCHITECTURE.md, Conventions): L−1 hidden layers
of width n.

NTK parametrization:      z^(ℓ+1) = (σ_w/√n_ℓ) W^(ℓ) a^(ℓ) + σ_b b^(ℓ),   W, b ~ N(0, 1)
Standard parametrization: z^(ℓ+1) = W^(ℓ) a^(ℓ) + b^(ℓ),  W ~ N(0, σ_w²/n_ℓ), b ~ N(0, σ_b²)

Each :class:`Dense` layer records its forward multipliers (``weight_mult``, ``bias_mult``);
the structured empirical NTK reads them, so the finite network and its kernel come from
one definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..activations import LEAKY_RELU_SLOPE, get_activation
from ..choices import BIAS_STD
from ..errors import SpecError
from ..hyper import check_network
from .layers import Dense, init_affine

__all__ = ["MLP"]


class MLP(nn.Module):
    """An MLP f: (N, in_dim) → (N, out_dim) with ``depth`` weight matrices.

    ``width`` is the hidden width n (or a sequence of depth−1 hidden widths).
    ``seed`` makes the initialisation reproducible without touching torch's global RNG
    (parameters are drawn on CPU in float64 from a private generator, then cast/moved, so
    the same seed gives the same network on every device and dtype); ``seed=None`` draws
    from torch's global RNG directly on ``device``.
    """

    def __init__(
        self,
        in_dim: int,
        width: int | Sequence[int],
        depth: int,
        *,
        activation: str = "relu",
        weight_std: float = 1.0,
        bias_std: float = BIAS_STD,
        out_dim: int = 1,
        parametrization: str = "ntk",
        leaky_relu_slope: float = LEAKY_RELU_SLOPE,
        seed: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        check_network(depth=depth, activation=activation, weight_std=weight_std,
                      bias_std=bias_std, parametrization=parametrization, width=width,
                      leaky_relu_slope=leaky_relu_slope)
        hidden = [int(width)] * (depth - 1) if isinstance(width, int) else [int(w) for w in width]
        if len(hidden) != depth - 1 or any(w < 1 for w in hidden):
            raise SpecError(f"width must be a positive int or {depth - 1} positive ints; "
                            f"got {width!r}")
        if in_dim < 1 or out_dim < 1:
            raise SpecError(f"in_dim and out_dim must be >= 1; got {in_dim}, {out_dim}")
        self.act = get_activation(activation, leaky_relu_slope=leaky_relu_slope)
        self.activation = activation
        self.parametrization = parametrization
        self.weight_std, self.bias_std = float(weight_std), float(bias_std)
        self.in_dim, self.out_dim, self.depth = in_dim, out_dim, depth
        self.widths = (in_dim, *hidden, out_dim)  # n_0 … n_L

        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        init = dict(parametrization=parametrization, weight_std=weight_std, bias_std=bias_std,
                    generator=generator, dtype=dtype, device=device)
        self.layers = nn.ModuleList(
            Dense(**init_affine((n_out, n_in), n_in, role=_role(i, depth),
                                width=n_out if i == 0 and depth > 1 else n_in, **init))
            for i, (n_in, n_out) in enumerate(zip(self.widths[:-1], self.widths[1:])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in_dim) → f(x) (N, out_dim)."""
        a = x
        for i, layer in enumerate(self.layers):
            z = layer(a)
            a = self.act.fn(z) if i < self.depth - 1 else z
        return a

    @property
    def readout(self) -> Dense:
        """The last layer, which reads ``features``."""
        return self.layers[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations (N, n_(L−1)): what the readout layer sees."""
        a = x
        for layer in self.layers[:-1]:
            a = self.act.fn(layer(a))
        return a

    def extra_repr(self) -> str:
        return f"activation={self.activation}, parametrization={self.parametrization}"


def _role(i: int, depth: int) -> str:
    """Layer i's role in its parametrization (a depth-1 net's one layer is its readout)."""
    return "readout" if i == depth - 1 else "input" if i == 0 else "hidden"
