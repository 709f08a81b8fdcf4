"""The registered architectures and the frozen description of one network.

``REGISTRY``: what each architecture reads (vectors, images, sequences), its own trial fields
beyond width and depth, and whether trials keep a fused implementation (``ntksweep.models``'
networks with the fused limits of ``kernels.analytic`` and ``kernels.conv``, which its
``ntksweep.layers`` composition reproduces weight for weight and to 1e-12). Torch-free: the
plan reads it before anything is imported; ``layers.presets`` holds the compositions under
the same names.

``Network``: everything that says which network a trial builds — architecture, widths,
depth, outputs, activation, scales, parametrization and the architecture's own fields —
from which its torch module (``module``) and its limit (``limit``) are made, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .choices import ARCHITECTURES, check_implemented
from .hyper import is_custom_architecture

__all__ = ["Architecture", "REGISTRY", "input_kind", "Network"]


@dataclass(frozen=True)
class Architecture:
    """A registered architecture (module doc): ``reads`` vectors (d,), images (C, H, W) or
    sequences (d, T) (channels first; a transformer reads an image's patches as tokens)."""

    reads: str
    fields: tuple[str, ...] = ()
    fused: bool = False


_CONV = ("kernel_size", "padding", "readout")
REGISTRY: dict[str, Architecture] = {
    "mlp": Architecture("vectors", fused=True),
    "cnn": Architecture("images", _CONV, fused=True),
    "resnet": Architecture("images", ("kernel_size",), fused=True),
    "myrtle": Architecture("images"),
    "transformer": Architecture("sequences",
                                ("heads", "attention", "attention_scaling", "query_key_std")),
}
check_implemented("architectures", ARCHITECTURES, REGISTRY)


def input_kind(architecture: str, shape) -> str:
    """How the network reads data of ``shape`` (a ``data.DataShape``): 'vectors',
    'images', 'sequences', or 'patches' (a transformer on images: their p×p patches are its
    tokens); a user's network reads whatever the data holds."""
    if is_custom_architecture(architecture):
        return "images" if shape.image_shape is not None else \
            "vectors" if shape.sequence_shape is None else "sequences"
    reads = REGISTRY[architecture].reads
    return "patches" if reads == "sequences" and shape.sequence_shape is None else reads


@dataclass(frozen=True)
class Network:
    """One network, described (module doc). ``options``: the architecture's own fields as
    (name, value) pairs; ``width`` matters to the limit in the standard parametrization only
    (its NTK reads the width)."""

    architecture: str
    width: int
    depth: int
    out_dim: int
    activation: str
    weight_std: float
    bias_std: float
    leaky_relu_slope: float
    parametrization: str = "ntk"
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, spec, out_dim: int) -> Network:
        """The network of the trial ``spec`` (a ``TrialSpec``) with ``out_dim`` outputs."""
        return cls(spec.architecture, spec.width, spec.depth, out_dim, spec.activation,
                   spec.weight_std, spec.bias_std, spec.leaky_relu_slope,
                   spec.parametrization, tuple((f, getattr(spec, f)) for f in spec.own_fields()))

    @property
    def fused(self) -> bool:
        return not is_custom_architecture(self.architecture) and \
            REGISTRY[self.architecture].fused

    def composition(self):
        """The registered preset as an ``ntksweep.layers`` composition."""
        from .layers import preset

        return preset(self.architecture, width=self.width, depth=self.depth,
                      out_dim=self.out_dim, activation=self.activation,
                      weight_std=self.weight_std, bias_std=self.bias_std,
                      leaky_relu_slope=self.leaky_relu_slope, **dict(self.options))

    @property
    def has_limit(self) -> bool:
        """Whether its limit has a closed form (not 1/√d attention: ``layers.attention``)."""
        return self.fused or self.composition().has_limit

    def module(self, in_shape: tuple[int, ...], *, seed: int | None, dtype, device):
        """The finite network for inputs (N, *in_shape), seeded: a fused architecture's
        ``ntksweep.models`` network, else its composition's module (the same weights)."""
        if not self.fused:
            return self.composition().module(in_shape, seed=seed, dtype=dtype, device=device,
                                             parametrization=self.parametrization)
        from .models import CNN, MLP, ResNet

        common = dict(activation=self.activation, weight_std=self.weight_std,
                      bias_std=self.bias_std, out_dim=self.out_dim,
                      parametrization=self.parametrization,
                      leaky_relu_slope=self.leaky_relu_slope, seed=seed, dtype=dtype,
                      device=device, **dict(self.options))
        if self.architecture == "mlp":
            return MLP(in_shape[0], self.width, self.depth, **common)
        if self.architecture == "resnet":
            return ResNet(in_shape[0], self.width, self.depth, **common)
        return CNN(in_shape[0], self.width, self.depth, image_size=tuple(in_shape[1:]),
                   **common)

    def limit(self, x1, x2=None, *, device: str | None = None, dtype: str = "float64"):
        """Θ_∞ and Σ^(L) (``AnalyticKernels``) on inputs as the network reads them (channels
        first), in ``dtype``: the fused recursions, or the composition's layer-by-layer
        limit."""
        from dataclasses import replace

        if self.fused:
            from .kernels.analytic import analytic_kernels

            where = {} if self.architecture == "mlp" else {"device": device}
            return analytic_kernels(
                x1, x2, depth=self.depth, activation=self.activation,
                weight_std=self.weight_std, bias_std=self.bias_std,
                parametrization=self.parametrization,
                width=self.width if self.parametrization == "standard" else None,
                leaky_relu_slope=self.leaky_relu_slope, architecture=self.architecture,
                dtype=dtype, **dict(self.options), **where)
        limit = self.composition().kernels(x1, x2, parametrization=self.parametrization,
                                           device=device, dtype=dtype)
        return replace(limit, depth=self.depth)      # the preset's depth, not its layers
