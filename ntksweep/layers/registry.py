"""The limit of any registered architecture by name: ``ntksweep.analytic_kernels``.

``mlp``, ``cnn`` and ``resnet`` keep their fused recursions (``kernels.analytic``: the
in-place arc-cosine path; ``kernels.conv``: pixel pairs in cache-sized tiles), which their
compositions reproduce to 1e-12 (tests/test_layers.py); every other preset runs its
composition's layer-by-layer limit."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..activations import LEAKY_RELU_SLOPE
from ..architectures import REGISTRY
from ..choices import BIAS_STD
from ..errors import SpecError
from ..hyper import check_conv, check_network
from ..kernels import analytic as fused
from ..kernels.analytic import FUSED, AnalyticKernels
from .presets import preset

__all__ = ["analytic_kernels", "FUSED"]



def analytic_kernels(x1, x2=None, *, depth: int, architecture: str = "mlp",
                     activation: str = "relu", weight_std: float = 1.0,
                     bias_std: float = BIAS_STD, parametrization: str = "ntk",
                     width: int | None = None, leaky_relu_slope: float = LEAKY_RELU_SLOPE,
                     kernel_size: int = 3, padding: str = "same", readout: str = "gap",
                     quadrature: bool | None = None, memory_budget: int = 1 << 28,
                     device: str | None = None, dtype: str = "float64", options=None,
                     **fused_options) -> AnalyticKernels:
    """Θ_∞ and Σ^(L) of the registered ``architecture`` (``layers.PRESETS``) of depth L:
    (n1, n2) numpy each, per logit, for x1 (n1, …) and x2 (n2, …) (default x1) —
    vectors (n, d) for an mlp, sequences (n, T, d) for a transformer, images (n, C, H, W)
    for the others —, in ``dtype``: 'float64', or 'float32' (the recursions over pairs of
    positions run in it: half their memory traffic). ``options``: a preset's own fields (a
    transformer's heads, attention, attention_scaling, query_key_std). ``fused_options``
    (tile, fused, quadrature_points) reach ``kernels.analytic_kernels``, the MLP's
    recursion. In ``mup`` and ``mean_field`` Θ_∞ is the NTK parametrization's and Σ is
    σ_b²."""
    options = dict(options or ())          # a dict, or (name, value) pairs
    args = dict(depth=depth, activation=activation, weight_std=weight_std, bias_std=bias_std,
                parametrization=parametrization, leaky_relu_slope=leaky_relu_slope,
                quadrature=quadrature)
    if architecture in FUSED and not options:
        return fused.analytic_kernels(
            x1, x2, **args, width=width, architecture=architecture, kernel_size=kernel_size,
            padding=padding, readout=readout, memory_budget=memory_budget, device=device,
            dtype=dtype, **fused_options)
    check_network(depth=depth, activation=activation, weight_std=weight_std,
                  bias_std=bias_std, parametrization=parametrization, width=width,
                  leaky_relu_slope=leaky_relu_slope)
    known = REGISTRY.get(architecture)
    if known is not None and known.reads == "sequences":    # (n, T, d) → channels first
        x1, x2 = (None if x is None else _tokens_last(x) for x in (x1, x2))
    else:
        check_conv(architecture=architecture, depth=depth, kernel_size=kernel_size,
                   padding=padding, readout=readout, parametrization=parametrization)
    width = 4 * options.get("heads", 1)      # any width: each head needs a key channel
    net = preset(architecture, width=width, depth=depth, activation=activation,
                 weight_std=weight_std, bias_std=bias_std, leaky_relu_slope=leaky_relu_slope,
                 quadrature=quadrature, **options)         # the limit reads no width
    limit = net.kernels(x1, x2, parametrization=parametrization, memory_budget=memory_budget,
                        device=device, dtype=dtype)
    return replace(limit, depth=int(depth))      # the preset's depth, not its layer count


def _tokens_last(x):
    """(n, T, d) sequences as the layers read them, channels first: (n, d, T)."""
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise SpecError(f"a transformer reads sequences (points, tokens, features); got shape "
                        f"{x.shape}")
    return np.swapaxes(x, 1, 2)
