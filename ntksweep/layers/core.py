"""A layer defined once: its finite torch module and its infinite-width transform of the
kernel state (``state.Kernel``), composed by ``serial`` and ``residual`` — the idea of
neural-tangents' ``stax`` (Novak et al. 2020), in PyTorch.

Every layer says (1) ``out_shape``: its output's shape (C, *S) from its input's, (2)
``build``: its torch module, its affine layers drawn in network order from one seeded
generator in the network's parametrization, (3) ``limit``: what it does to Σ, Θ and the
self-covariances, and (4) ``shapes``: its trainable maps' sizes per example
(``memory.LayerShape``: what the structured empirical NTK holds and multiplies, so tiles and
memory are planned from them); ``mixes_positions`` says whether it needs every pair of
positions (pooling) or keeps the diagonal p = q to itself (convolutions, activations), and
``has_limit`` whether its limit has a closed form.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import SpecError
from ..memory import LayerShape
from .state import Kernel

__all__ = ["Layer", "Build", "Serial", "Residual", "serial", "residual", "leaves"]


@dataclass
class Build:
    """What building a network's modules shares: the generator (one draw order: the
    network's), the parametrization, dtype and device, and the affine layers' count, so each
    knows its role (the first reads the input, the last is the readout) and the network's
    width n (the first affine layer's output channels, as ``MLP`` and ``CNN`` count it)."""

    generator: torch.Generator | None
    parametrization: str
    dtype: torch.dtype
    device: str | torch.device
    affine_layers: int
    built: int = 0
    width: int | None = None

    def next_role(self, in_channels: int, out_channels: int) -> tuple[str, int]:
        """(the next affine layer's role, the width n its scales read: its own output
        channels for the input layer, the network's width after it)."""
        i, self.built = self.built, self.built + 1
        last = i == self.affine_layers - 1
        if i == 0 and not last:
            self.width = out_channels
            return "input", out_channels
        return ("readout" if last else "hidden"), self.width or in_channels

    @property
    def init(self) -> dict:
        return dict(parametrization=self.parametrization, generator=self.generator,
                    dtype=self.dtype, device=self.device)


class Layer(ABC):
    """The three things a layer knows (module doc). Shapes exclude the batch: (C, *S)."""

    mixes_positions: bool = False
    affine: int = 0          # trainable affine layers (Dense, Conv) it holds
    has_limit: bool = True

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def shapes(self, shape: tuple[int, ...]) -> list[LayerShape]:
        """Its trainable maps on inputs (C, *S), in network order (none: no parameters)."""
        return []

    @abstractmethod
    def build(self, shape: tuple[int, ...], ctx: Build) -> nn.Module:
        """The finite module for inputs (N, *shape)."""

    @abstractmethod
    def limit(self, k: Kernel) -> Kernel:
        """The infinite-width transform of the kernel state."""

    # -- as a whole network (``network``) ------------------------------------------------
    def module(self, input_shape: tuple[int, ...], *, seed: int | None = None,
               parametrization: str = "ntk", dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> nn.Module:
        """The finite network for inputs (N, *input_shape) → (N, out): ``network.module``."""
        from .network import build_module

        return build_module(self, input_shape, seed=seed, parametrization=parametrization,
                            dtype=dtype, device=device)

    def kernels(self, x1, x2=None, **options):
        """Θ_∞ and Σ of the network, (n1, n2) float64 per logit: ``network.limit_kernels``."""
        from .network import limit_kernels

        return limit_kernels(self, x1, x2, **options)


class _Sequence(nn.Module):
    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.layers:
            x = m(x)
        return x


@dataclass(frozen=True)
class Serial(Layer):
    """Layers applied one after the other."""

    layers: tuple[Layer, ...]
    mixes_positions: bool = field(init=False)
    affine: int = field(init=False)
    has_limit: bool = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "mixes_positions", any(x.mixes_positions for x in self.layers))
        object.__setattr__(self, "affine", sum(x.affine for x in self.layers))
        object.__setattr__(self, "has_limit", all(x.has_limit for x in self.layers))

    def out_shape(self, shape):
        for layer in self.layers:
            shape = layer.out_shape(shape)
        return shape

    def shapes(self, shape):
        out = []
        for layer in self.layers:
            out += layer.shapes(shape)
            shape = layer.out_shape(shape)
        return out

    def build(self, shape, ctx):
        modules = []
        for layer in self.layers:
            modules.append(layer.build(shape, ctx))
            shape = layer.out_shape(shape)
        return _Sequence(modules)

    def limit(self, k):
        for layer in self.layers:
            k = layer.limit(k)
        return k


class _Residual(nn.Module):
    def __init__(self, branch: nn.Module):
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


@dataclass(frozen=True)
class Residual(Layer):
    """z ← z + f(z), the sum not rescaled: the branch's Σ and Θ add to the skip path's."""

    branch: Layer
    mixes_positions: bool = field(init=False)
    affine: int = field(init=False)
    has_limit: bool = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "mixes_positions", self.branch.mixes_positions)
        object.__setattr__(self, "affine", self.branch.affine)
        object.__setattr__(self, "has_limit", self.branch.has_limit)

    def shapes(self, shape):
        return self.branch.shapes(shape)

    def out_shape(self, shape):
        if (out := self.branch.out_shape(shape)) != shape:
            raise SpecError(f"a residual branch must keep its input's shape {shape}; it "
                            f"makes {out} (give its layers the input's width and 'same' "
                            "padding)")
        return shape

    def build(self, shape, ctx):
        self.out_shape(shape)
        return _Residual(self.branch.build(shape, ctx))

    def limit(self, k):
        f = self.branch.limit(k)
        cov1, cov2 = k.own(lambda c, fc: c + fc, (f.cov1, f.cov2))
        return Kernel(nngp=k.nngp + f.nngp, ntk=k.ntk + f.ntk, cov1=cov1, cov2=cov2,
                      shape=k.shape, diagonal=k.diagonal, channels=k.channels)


def serial(*layers: Layer) -> Serial:
    """The layers one after the other (nested ``serial``s are flattened)."""
    flat: list[Layer] = []
    for layer in layers:
        if not isinstance(layer, Layer):
            raise SpecError(f"serial takes ntksweep.layers layers; got {layer!r}")
        flat.extend(layer.layers if isinstance(layer, Serial) else (layer,))
    return Serial(tuple(flat))


def residual(*layers: Layer) -> Residual:
    """z + f(z) with f = ``serial(*layers)``."""
    return Residual(serial(*layers))


def leaves(layer: Layer):
    """Every layer inside ``layer`` that is not a combinator, in network order."""
    if isinstance(layer, Serial):
        for inner in layer.layers:
            yield from leaves(inner)
    elif isinstance(layer, Residual):
        yield from leaves(layer.branch)
    else:
        yield layer
