"""A composition as a whole network: its finite module, seeded, in a parametrization; and its
infinite-width kernels, computed in tiles of input pairs under a memory budget."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import SpecError
from ..kernels.analytic import AnalyticKernels
from ..kernels.conv import CACHE_TILE_BYTES
from ..kernels.tiles import float64_points, limit_dtype, pair_kernels
from ..models.layers import Dense as DenseModule
from ..parametrizations import PARAMETRIZATIONS, has_nngp_limit
from .affine import Conv, Dense
from .core import Build, Layer, leaves
from .elementwise import Activation
from .state import SelfTraces, input_kernel, tracing

__all__ = ["build_module", "limit_kernels", "Composed", "LIMIT_PARAMETRIZATIONS"]

# Θ_η at initialisation under μP equals the NTK parametrization's (docs/guide.md, "Lazy and
# rich training"); the standard one's limit depends on the widths and is the MLP's only.
LIMIT_PARAMETRIZATIONS = ("ntk", "mup")


class Composed(torch.nn.Module):
    """A composition's finite network: ``body`` maps (N, *input_shape) → (N, k); ``readout``
    is its last dense layer (what a trial's diagnostics read the features of)."""

    def __init__(self, body: torch.nn.Module):
        super().__init__()
        self.body = body

    @property
    def readout(self) -> DenseModule:
        return [m for m in self.body.modules() if isinstance(m, DenseModule)][-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def build_module(net: Layer, input_shape: tuple[int, ...], *, seed: int | None,
                 parametrization: str, dtype: torch.dtype,
                 device: str | torch.device) -> Composed:
    """The finite network for inputs (N, *input_shape); its affine layers drawn in network
    order from ``seed`` (None: torch's global generator) as ``MLP``, ``CNN`` and ``ResNet``
    draw theirs, so the same seed gives the same weights."""
    if parametrization not in PARAMETRIZATIONS:
        raise SpecError(f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}; got "
                        f"{parametrization!r}")
    shape = tuple(int(s) for s in input_shape)
    _check_output(net, shape)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    ctx = Build(generator, parametrization, dtype, device, affine_layers=net.affine)
    return Composed(net.build(shape, ctx))


def _check_output(net: Layer, shape: tuple[int, ...]) -> int:
    out = net.out_shape(shape)
    if len(out) != 1:
        raise SpecError(f"the network maps inputs {shape} to {out}, not to a vector of "
                        "outputs: end it with Flatten() or GlobalAvgPool() and a Dense(k)")
    if not any(isinstance(x, (Dense, Conv)) for x in leaves(net)):
        raise SpecError("the network has no Dense or Conv layer: nothing to train")
    if not isinstance(list(leaves(net))[-1], Dense):
        raise SpecError("a network ends in its readout: a Dense(k) layer")
    return out[0]


def _uniform(values: list[float]) -> float:
    return values[0] if values and all(v == values[0] for v in values) else math.nan


def describe(net: Layer) -> dict:
    """What ``AnalyticKernels`` records of a composition: its affine depth, its activations,
    and σ_w, σ_b where every affine layer shares them (NaN where they differ)."""
    affine = [x for x in leaves(net) if isinstance(x, (Dense, Conv))]
    names = sorted({x.name for x in leaves(net) if isinstance(x, Activation)})
    return dict(depth=len(affine), activation="+".join(names) or "identity",
                weight_std=_uniform([x.weight_std for x in affine]),
                bias_std=_uniform([x.bias_std for x in affine]))


def limit_kernels(net: Layer, x1, x2=None, *, parametrization: str = "ntk",
                  memory_budget: int = 256 << 20, device=None, dtype: str = "float64"
                  ) -> AnalyticKernels:
    """Θ_∞ and Σ of the network between x1 (n1, *input_shape) and x2 (n2, …) (default x1):
    (n1, n2) numpy each, per logit (k outputs: Θ_∞ ⊗ I_k), computed and returned in
    ``dtype`` ('float64' or 'float32': half the memory traffic). Input pairs run in tiles
    whose pair tensors stay near ``memory_budget`` bytes (on a CPU also within 16 MiB, so
    their elementwise passes run in cache); ``device`` runs them there. Each block of inputs'
    self pair tensors is computed in its first tile and replayed in the others
    (``state.SelfTraces``, within four budgets): on a CPU a tile of 32×32 images holds one
    pair, and recomputing its two inputs' would triple the work. Under μP Θ_∞ is the
    NTK parametrization's and Σ is the readout's σ_b² (``ntksweep.parametrizations``)."""
    if parametrization not in LIMIT_PARAMETRIZATIONS:
        raise SpecError(f"a composition's limit is that of the NTK parametrization (and of "
                        f"μP, whose Θ_η starts at the same Θ_∞); got {parametrization!r}")
    ndim = np.ndim(x1.detach().cpu() if hasattr(x1, "detach") else x1)
    a_np, b_np, symmetric = float64_points(x1, x2, ndim=max(ndim, 2),
                                           what="(points, channels, *positions)")
    _check_output(net, a_np.shape[1:])
    a = torch.from_numpy(a_np).to(device or "cpu", limit_dtype(dtype))
    b = a if symmetric else torch.from_numpy(b_np).to(a.device, a.dtype)
    positions = a_np[0, 0].size
    diagonal = not net.mixes_positions
    per_pair = 8 * a.element_size() * (positions if diagonal else positions ** 2)  # ~8 buffers
    budget = memory_budget if a.is_cuda else min(memory_budget, CACHE_TILE_BYTES)
    side = max(1, int(math.sqrt(max(1, budget // per_pair))))
    traces = SelfTraces(4 * memory_budget)      # what the self pair tensors may keep

    def tile(t, same):
        rows, cols = ("x1", t.r0, t.r1), ("x1" if symmetric else "x2", t.c0, t.c1)
        first = traces.get(rows)
        second = first if same else traces.get(cols)
        with tracing(first, second):
            k = net.limit(input_kernel(a[t.rows], b[t.cols], same, diagonal))
        traces.keep(rows, first)
        traces.keep(cols, second)
        return k.ntk, k.nngp

    ntk, nngp = pair_kernels(a.shape[0], b.shape[0], side, symmetric, tile, device=a.device,
                             dtype=a.dtype)
    ntk_np, nngp_np = ntk.cpu().numpy(), nngp.cpu().numpy()
    if not (np.isfinite(ntk_np).all() and np.isfinite(nngp_np).all()):
        raise SpecError(f"the network's limit overflows {dtype} for these inputs; rescale "
                        "them, e.g. standardise them")
    if not has_nngp_limit(parametrization):   # μP: the output's prior variance → σ_b²
        nngp_np = np.full_like(ntk_np, list(leaves(net))[-1].bias_std ** 2)
    return AnalyticKernels(ntk=ntk_np, nngp=nngp_np, parametrization=parametrization,
                           **describe(net))
