"""The structured empirical NTK of networks whose parameters all sit in ``Dense``, ``Conv``
and positionwise dense layers (CNNs, ResNets, Myrtle nets, transformers — attention's
key, query, value and output projections are positionwise dense layers, LayerNorm has no
parameters): per layer, the per-example gradients of its weights and bias, contracted.

For a convolution z = α W ∗ a + β b, the gradient of output c with respect to W is
α Σ_p D_c[:, p] ⊗ patch_p(a), with D_c = ∂f_c/∂z (C_out, P) the gradient with respect to the
layer's pre-activations and patch_p(a) the C_in·k² inputs its window sees at position p; with
respect to b it is β Σ_p D_c[:, p]. A dense layer is the case P = 1; a positionwise one is a
1×1 convolution (patch_p(a) = a[:, p]), however the positions are later mixed (attention
only changes D). So

    Θ(x, x')_cd = Σ_layers ⟨G_c(x), G_d(x')⟩,   G = [α Σ_p D_p ⊗ patch_p, β Σ_p D_p],

from one batched forward pass and one backward pass per output for the pre-activation
gradients of every layer at once (each example's outputs depend on that example alone).
There is no Jacobian of the whole network and no per-example re-run (Novak et al. 2022
discuss the orderings: at these shapes the per-example weight gradients are the cheap one).
G is formed one layer at a time and, under a memory budget, a few input channels at a time:
its columns split, so Θ = Σ over the chunks of G Gᵀ with no work repeated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..memory import CPU_CHUNK_BYTES, MIN_CHUNK_CHANNELS, Footprint, LayerShape
from ..models.layers import Conv, Dense, PositionwiseDense, affine_layers

__all__ = ["ntk_layerwise", "is_layerwise", "footprint", "layer_shapes", "LayerwisePlan",
           "plan_layerwise"]



def is_layerwise(model: nn.Module, point: Tensor | None = None) -> bool:
    """Every trainable parameter belongs to a ``Dense``, ``PositionwiseDense`` or ``Conv``
    layer (attention's projections are positionwise dense layers) — and, given an input
    ``point`` (1, …), each of those layers runs once per forward pass: a layer applied
    twice (shared weights) has two inputs the per-layer gradients would not sum."""
    layers = affine_layers(model)
    owned = {id(p) for m in layers for p in (m.weight, m.bias) if p is not None}
    if not owned or any(id(p) not in owned for p in model.parameters() if p.requires_grad):
        return False
    if point is None:
        return True
    calls = dict.fromkeys(layers, 0)

    def count(module, _args, _out):
        calls[module] += 1

    hooks = [m.register_forward_hook(count) for m in layers]
    try:
        with torch.no_grad():
            model(point)
    finally:
        for h in hooks:
            h.remove()
    return all(c == 1 for c in calls.values())


def layer_shapes(model: nn.Module, x: Tensor) -> tuple[list[LayerShape], int]:
    """(each Dense and Conv layer's ``LayerShape`` on inputs shaped like x (1, …), the
    model's output count k), from one forward pass."""
    shapes = []

    def keep(module, args, output):
        a = args[0]
        kk = module.kernel_size ** 2 if isinstance(module, Conv) else 1
        shapes.append(LayerShape(a.shape[1], a[0, 0].numel(), output.shape[1],
                                 output[0, 0].numel(), kk, bias=module.bias is not None))

    hooks = [m.register_forward_hook(keep) for m in affine_layers(model)]
    try:
        with torch.no_grad():
            k = model(x[:1]).numel()
    finally:
        for h in hooks:
            h.remove()
    return shapes, k


def footprint(model: nn.Module, x: Tensor) -> Footprint:
    """The per-example footprint of ``model``'s layers on inputs shaped like x (1, …)."""
    shapes, k = layer_shapes(model, x)
    return Footprint.of(shapes, k, x.element_size())


def _batch_signals(model: nn.Module, x: Tensor) -> list[tuple[nn.Module, Tensor, Tensor]]:
    """Per layer: (layer, its input a (N, C_in, …), D = ∂f/∂z (N, k, C_out, P_out)), from one
    forward pass and one backward pass per output (to the pre-activations only)."""
    layers = affine_layers(model)
    seen: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def keep(module, args, output):
        seen[module] = (args[0].detach(), output)

    hooks = [m.register_forward_hook(keep) for m in layers]
    try:
        with torch.enable_grad():
            out = model(x)
            out = out.reshape(out.shape[0], -1)                          # (N, k)
            zs = [seen[m][1] for m in layers]
            k = out.shape[1]
            per_output = [torch.autograd.grad(out[:, c].sum(), zs, retain_graph=c < k - 1)
                          for c in range(k)]
    finally:
        for h in hooks:
            h.remove()
    del out, zs
    signals = []
    for i, m in enumerate(layers):
        d = per_output[0][i][:, None] if len(per_output) == 1 else \
            torch.stack([g[i] for g in per_output], 1)                   # (N, k, C_out, …)
        signals.append((m, seen.pop(m)[0], d.reshape(*d.shape[:3], -1)))
    return signals


def _signals(model: nn.Module, x: Tensor, batch: int) -> list[tuple[nn.Module, Tensor, Tensor]]:
    """``_batch_signals`` of all of x, ``batch`` examples at a time (each example's outputs
    depend on it alone), written into tensors for all of x."""
    if batch >= len(x):
        return _batch_signals(model, x)
    out = None
    for i in range(0, len(x), batch):
        part = _batch_signals(model, x[i:i + batch])
        if out is None:
            out = [(m, a.new_empty(len(x), *a.shape[1:]), d.new_empty(len(x), *d.shape[1:]))
                   for m, a, d in part]
        for (_, a, d), (_, pa, pd) in zip(out, part):
            a[i:i + len(pa)], d[i:i + len(pd)] = pa, pd
    return out


def _patches(m: nn.Module, part: Tensor) -> Tensor:
    """What each output position of layer m sees of the input channels ``part`` (N, c, …):
    (N, c·k², P) for a k×k convolution, (N, c, P) at each position, (N, c, 1) for ``Dense``."""
    if isinstance(m, Conv):
        pad = m.kernel_size // 2 if m.padding == "same" else 0
        return F.unfold(part, m.kernel_size, padding=pad)
    if isinstance(m, PositionwiseDense):
        return part.flatten(2)
    return part[:, :, None]


class _Scratch:
    """One flat buffer for tensors used one at a time, grown when a larger one is asked for:
    a layer's gradient chunks reuse the last layer's pages instead of faulting in fresh
    ones (~8 MiB per layer of a width-128 transformer on 128 sequences)."""

    def __init__(self):
        self._flat: Tensor | None = None

    def take(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        size = math.prod(shape)
        if self._flat is None or self._flat.numel() < size:
            self._flat = None                            # the old pages go before the new
            self._flat = like.new_empty(size)
        return self._flat[:size].view(shape)


def _gradient_chunks(m: nn.Module, a: Tensor, d: Tensor, channels: int,
                     scratch: _Scratch) -> Iterator[tuple[Tensor, float]]:
    """The layer's per-example gradients G (N, k, ·) without their multipliers, each chunk
    with the weight its Gram carries (r α² for Θ_η): its weights' Σ_p D_p ⊗ patch_p,
    ``channels`` input channels at a time, then its bias's Σ_p D_p. Each column of G is in
    exactly one chunk, so Σ_chunks weight · G Gᵀ is the layer's share. The weights' chunks
    are views of ``scratch`` (drawing the next overwrites the last), and the multipliers
    scale the small Gram, not G."""
    n, k, c_out, positions = d.shape
    rows = d.reshape(n, k * c_out, positions)
    for c0 in range(0, a.shape[1], channels):
        patches = _patches(m, a[:, c0:c0 + channels])                      # (N, c k², P)
        g = torch.bmm(rows, patches.transpose(1, 2),                       # Σ_p D_p ⊗ patch_p
                      out=scratch.take((n, k * c_out, patches.shape[1]), rows))
        yield g.view(n, k, -1), m.weight_mult ** 2 * m.weight_lr
    if m.bias is not None:
        yield d.sum(-1), m.bias_mult ** 2 * m.bias_lr


@dataclass(frozen=True)
class LayerwisePlan:
    """How a tile of ``points`` examples is computed: its forward and backward passes
    ``batch`` examples at a time, and each layer's per-example gradients ``channels[i]``
    input channels at a time."""

    batch: int
    channels: tuple[int, ...]


def plan_layerwise(model: nn.Module, x: Tensor, points: int,
                   memory_budget: int | None = None) -> LayerwisePlan:
    """The plan of a tile of ``points`` examples shaped like x (1, …): without a budget one
    batch and every channel at once; under ``memory_budget`` bytes, batches of what the room
    left by the held signals allows, and per layer as many input channels as fit (at least
    one: the tile planner made room for that). On the CPU a chunk is also at most
    ``CPU_CHUNK_BYTES`` (its Gram product reads it back from the cache), but not fewer than
    ``MIN_CHUNK_CHANNELS`` channels for that (thinner chunks make the k-output products
    inefficient)."""
    shapes, k = layer_shapes(model, x)
    size, cuda = x.element_size(), x.is_cuda
    batch, room = points, None
    if memory_budget is not None:
        f = Footprint.of(shapes, k, size)
        room = memory_budget - points * f.held                # for batches, then chunks
        batch = max(1, room // f.transient)
    channels = []
    for shape in shapes:
        per_channel = points * shape.channel_bytes(k, size)
        fit = shape.c_in if room is None else max(1, room // per_channel)
        if not cuda:
            fit = min(fit, max(MIN_CHUNK_CHANNELS, CPU_CHUNK_BYTES // per_channel))
        channels.append(int(min(shape.c_in, fit)))
    return LayerwisePlan(int(min(batch, points)), tuple(channels))


def ntk_layerwise(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *,
                  trace: bool = False, memory_budget: int | None = None) -> Tensor:
    """Θ (n1, n2, k, k) of a network of ``Dense`` and ``Conv`` layers (module doc); with
    ``trace`` only its per-logit mean (n1, n2): k Gram products of single outputs instead
    of one of all k² output pairs. With ``memory_budget`` (bytes) the forward and backward
    passes go in batches and each layer's per-example gradients are formed a few input
    channels at a time (``plan_layerwise``), so that all of it fits: the same arithmetic,
    in smaller pieces."""
    n1, n2 = len(x1), len(x1 if x2 is None else x2)
    plan = plan_layerwise(model, x1[:1], n1 if x2 is None else n1 + n2, memory_budget)
    s1 = _signals(model, x1, plan.batch)
    s2 = s1 if x2 is None else _signals(model, x2, plan.batch)
    k = s1[0][2].shape[1]
    shape = (k, n1, n2) if trace else (n1 * k, n2 * k)
    theta = torch.zeros(shape, dtype=s1[0][2].dtype, device=s1[0][2].device)
    scratch1, scratch2 = _Scratch(), _Scratch()
    for (m, a1, d1), (_, a2, d2), channels in zip(s1, s2, plan.channels):
        if type(m) is Dense:
            _accumulate_dense(theta, m, a1, d1, a2, d2, trace)
            continue
        chunks1 = _gradient_chunks(m, a1, d1, channels, scratch1)
        chunks2 = chunks1 if x2 is None else _gradient_chunks(m, a2, d2, channels, scratch2)
        for g1, weight in chunks1:                                        # (n, k, m) each
            g2 = g1 if x2 is None else next(chunks2)[0]
            _accumulate(theta, g1, g2, weight, trace, symmetric=x2 is None)
    if trace:
        return theta.mean(0)
    if x2 is None:
        theta = _mirror_upper(theta)
    return theta.reshape(n1, k, n2, k).permute(0, 2, 1, 3)


def _accumulate_dense(theta: Tensor, m: Dense, a1: Tensor, d1: Tensor, a2: Tensor,
                      d2: Tensor, trace: bool) -> None:
    """theta += a dense layer's share without its per-example gradients: they are outer
    products D_c ⊗ a, so ⟨G_c(x), G_d(x')⟩ = (w² a·a' + b²) D_c·D'_d (w, b the r-weighted
    multipliers) — N² (C_in + k² C_out) work instead of N² k² C_in C_out."""
    w2 = m.weight_mult ** 2 * m.weight_lr
    b2 = 0.0 if m.bias is None else m.bias_mult ** 2 * m.bias_lr
    inputs = torch.addmm(a1.new_full((), b2).expand(len(a1), len(a2)), a1, a2.T,
                         beta=1.0, alpha=w2)                              # (n1, n2)
    if trace:                                                           # d (n, k, C_out, 1)
        theta.addcmul_(torch.bmm(d1[..., 0].transpose(0, 1), d2[..., 0].permute(1, 2, 0)),
                       inputs)
        return
    n1, n2, k = len(a1), len(a2), d1.shape[1]
    outputs = d1.reshape(n1 * k, -1) @ d2.reshape(n2 * k, -1).T         # (n1 k, n2 k)
    theta += (outputs.view(n1, k, n2, k) * inputs[:, None, :, None]).view_as(theta)


def _accumulate(theta: Tensor, g1: Tensor, g2: Tensor, weight: float, trace: bool,
                symmetric: bool) -> None:
    """theta += weight × the chunk's Gram: per output (k, n1, n2) with ``trace``, else all
    output pairs (n1 k, n2 k) — of a symmetric kernel only on and above the diagonal
    (``_add_gram``)."""
    if trace:
        theta.baddbmm_(g1.transpose(0, 1), g2.permute(1, 2, 0), alpha=weight)
    elif symmetric:
        _add_gram(theta, g1.reshape(theta.shape[0], -1), weight)
    else:
        theta.addmm_(g1.reshape(theta.shape[0], -1), g2.reshape(theta.shape[1], -1).T,
                     alpha=weight)


def _add_gram(out: Tensor, a: Tensor, weight: float = 1.0) -> None:
    """out += weight · a aᵀ on and above the diagonal, in row panels a[rows] a[rows:]ᵀ (half
    of a Gram repeats, and torch has no symmetric product); below the diagonal out gains
    whatever the panels cover, and ``_mirror_upper`` completes the Gram once, after every
    layer. Four panels of 32 to 128 rows (more panels of 128 rows beyond 512) stay efficient
    products. Measured on the VM's 2 cores (float32, best of 15), one product → panels:
    (128 × 16384) 2.91 → 2.45 ms, (256 × 16384) 11.7 → 9.7, (512 × 16384) 43.4 → 33.4,
    (1024 × 4096) 45.3 → 35.1; below ~4 MFLOP, one product."""
    n, m = a.shape
    rows = min(128, max(32, n // 4))                        # four panels, 32 to 128 rows
    panels = 1 if n * n * m < 1 << 22 else max(1, n // rows)
    edges = [round(i * n / panels) for i in range(panels + 1)]
    for lo, hi in zip(edges[:-1], edges[1:]):
        out[lo:hi, lo:].addmm_(a[lo:hi], a[lo:].T, alpha=weight)


def _mirror_upper(theta: Tensor) -> Tensor:
    """theta, in place, made the symmetric matrix of its upper triangle and diagonal."""
    return theta.triu_().add_(theta.triu(1).T)
