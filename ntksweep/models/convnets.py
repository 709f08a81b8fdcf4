"""Convolutional networks and ResNets in the NTK parametrization (default) or the standard
one, in the conventions of neural-tangents' ``stax`` (Novak et al. 2019; Arora et al. 2019):

    convolution   z = (σ_w/√(C_in·k²)) W ∗ a + σ_b b,   W, b ~ N(0, 1); stride 1,
                  padding ``same`` (zeros, output H×W) or ``valid``
    CNN           L−1 convolutions of ``width`` channels, each followed by φ; then the readout
                  ``flatten`` (a dense layer on the C·H·W features, fan-in C·H·W) or ``gap``
                  (global average pooling over positions, then a dense layer, fan-in C)
    ResNet        a convolution (the stem), L−2 residual blocks z ← z + Conv(φ(z)) (the sum
                  not rescaled), then φ, global average pooling and a dense layer

Depth L = the number of weight tensors, as for the MLP. Inputs are images (N, C, H, W).
Seeded like ``MLP``: the same seed gives the same network on every device and dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from ..activations import LEAKY_RELU_SLOPE, get_activation
from ..choices import BIAS_STD, PADDINGS, READOUTS
from ..errors import SpecError
from ..hyper import check_conv, check_network
from .layers import Conv, Dense, init_affine

__all__ = ["CNN", "ResNet", "PADDINGS", "READOUTS"]


class _ConvNet(nn.Module):
    """What CNN and ResNet share: checks, the activation, seeded layers, the readout."""

    def _setup(self, architecture: str, in_channels: int, width: int, depth: int, *,
               kernel_size: int, padding: str, readout: str, activation: str,
               weight_std: float, bias_std: float, out_dim: int, parametrization: str,
               leaky_relu_slope: float, seed: int | None, dtype: torch.dtype, device,
               image_size: tuple[int, int] | None = None) -> dict:
        check_network(depth=depth, activation=activation, weight_std=weight_std,
                      bias_std=bias_std, parametrization=parametrization, width=width,
                      leaky_relu_slope=leaky_relu_slope)
        check_conv(architecture=architecture, depth=depth, kernel_size=kernel_size,
                   padding=padding, readout=readout, image_size=image_size)
        for name, value in (("in_channels", in_channels), ("width", width),
                            ("out_dim", out_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"{name} must be an integer >= 1; got {value!r}")
        self.act = get_activation(activation, leaky_relu_slope=leaky_relu_slope)
        self.activation, self.parametrization = activation, parametrization
        self.in_channels, self.width, self.depth, self.out_dim = in_channels, width, depth, out_dim
        self.kernel_size, self.padding = kernel_size, padding
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return dict(parametrization=parametrization, weight_std=weight_std, bias_std=bias_std,
                    generator=generator, dtype=dtype, device=device)

    def _conv(self, c_in: int, init: dict, role: str) -> Conv:
        k = self.kernel_size
        return Conv(**init_affine((self.width, c_in, k, k), c_in * k * k, role=role,
                                  width=self.width, **init), padding=self.padding)

    def _readout(self, fan_in: int, init: dict) -> Dense:
        return Dense(**init_affine((self.out_dim, fan_in), fan_in, role="readout",
                                   width=self.width, **init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) → f(x) (N, out_dim)."""
        return self.readout(self.features(x))

    def extra_repr(self) -> str:
        return f"activation={self.activation}, parametrization={self.parametrization}"


class CNN(_ConvNet):
    """L−1 convolutions with φ, then a ``flatten`` or ``gap`` readout and a dense layer
    (module doc). ``image_size`` (H, W) is needed for ``flatten`` (its dense layer's fan-in
    is C·H'·W')."""

    def __init__(self, in_channels: int, width: int, depth: int, *, kernel_size: int = 3,
                 padding: str = "same", readout: str = "gap", activation: str = "relu",
                 weight_std: float = 1.0, bias_std: float = BIAS_STD, out_dim: int = 1,
                 parametrization: str = "ntk", leaky_relu_slope: float = LEAKY_RELU_SLOPE,
                 image_size: tuple[int, int] | None = None, seed: int | None = None,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        super().__init__()
        init = self._setup("cnn", in_channels, width, depth, kernel_size=kernel_size,
                           padding=padding, readout=readout, activation=activation,
                           weight_std=weight_std,
                           bias_std=bias_std, out_dim=out_dim, parametrization=parametrization,
                           leaky_relu_slope=leaky_relu_slope, seed=seed, dtype=dtype,
                           device=device, image_size=image_size)
        self.readout_kind = readout
        channels = [in_channels] + [width] * (depth - 1)
        self.convs = nn.ModuleList(self._conv(c, init, "input" if i == 0 else "hidden")
                                   for i, c in enumerate(channels[:-1]))
        fan_in = channels[-1]
        if readout == "flatten":
            if image_size is None:
                raise SpecError("readout='flatten' needs image_size=(H, W): its dense layer's "
                                "fan-in is C·H·W")
            shrink = (kernel_size - 1) * (depth - 1) if padding == "valid" else 0
            fan_in *= (image_size[0] - shrink) * (image_size[1] - shrink)
        self.readout = self._readout(fan_in, init)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The readout's input (N, F): flattened φ(z) (F = C·H'·W') or its spatial mean
        (F = C)."""
        a = x
        for conv in self.convs:
            a = self.act.fn(conv(a))
        return a.flatten(1) if self.readout_kind == "flatten" else a.mean((2, 3))


class ResNet(_ConvNet):
    """A stem convolution, L−2 blocks z ← z + Conv(φ(z)), then φ, global average pooling and
    a dense layer (module doc); ``same`` padding (the sum needs equal shapes)."""

    def __init__(self, in_channels: int, width: int, depth: int, *, kernel_size: int = 3,
                 activation: str = "relu", weight_std: float = 1.0, bias_std: float = BIAS_STD,
                 out_dim: int = 1, parametrization: str = "ntk",
                 leaky_relu_slope: float = LEAKY_RELU_SLOPE, seed: int | None = None,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        super().__init__()
        init = self._setup("resnet", in_channels, width, depth, kernel_size=kernel_size,
                           padding="same", readout="gap",
                           activation=activation, weight_std=weight_std, bias_std=bias_std,
                           out_dim=out_dim, parametrization=parametrization,
                           leaky_relu_slope=leaky_relu_slope, seed=seed, dtype=dtype,
                           device=device)
        self.stem = self._conv(in_channels, init, "input")
        self.blocks = nn.ModuleList(self._conv(width, init, "hidden") for _ in range(depth - 2))
        self.readout = self._readout(width, init)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The readout's input (N, C): the spatial mean of φ(z) after the last block."""
        z = self.stem(x)
        for block in self.blocks:
            z = z + block(self.act.fn(z))
        return self.act.fn(z).mean((2, 3))
