"""The structured empirical NTK of networks built from ``Dense`` and ``Conv`` layers (CNNs,
ResNets): per layer, the per-example gradients of its weights and bias, contracted.

For a convolution z = α W ∗ a + β b, the gradient of output c with respect to W is
α Σ_p D_c[:, p] ⊗ patch_p(a), with D_c = ∂f_c/∂z (C_out, P) the gradient with respect to the
layer's pre-activations and patch_p(a) the C_in·k² inputs its window sees at position p; with
respect to b it is β Σ_p D_c[:, p]. A dense layer is the case P = 1. So

    Θ(x, x')_cd = Σ_layers ⟨G_c(x), G_d(x')⟩,   G = [α Σ_p D_p ⊗ patch_p, β Σ_p D_p],

from one batched forward pass and one backward pass per output for the pre-activation
gradients of every layer at once (each example's outputs depend on that example alone).
There is no Jacobian of the whole network and no per-example re-run (Novak et al. 2022
discuss the orderings: at these shapes the per-example weight gradients are the cheap one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.layers import Conv, Dense

__all__ = ["ntk_layerwise", "is_layerwise", "layer_gradient_sizes"]


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (Conv, Dense))]


def is_layerwise(model: nn.Module) -> bool:
    """Every trainable parameter belongs to a ``Dense`` or ``Conv`` layer."""
    owned = {id(p) for m in _layers(model) for p in (m.weight, m.bias)}
    return bool(owned) and all(id(p) in owned for p in model.parameters() if p.requires_grad)


def layer_gradient_sizes(model: nn.Module) -> list[int]:
    """Per layer: the length of one output's per-example gradient (weights and bias)."""
    return [m.weight.numel() + m.bias.numel() for m in _layers(model)]


def _per_example_gradients(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Per layer, its weights' then its bias's G (N, k, m): every output's gradient with
    respect to them, for each example."""
    layers = _layers(model)
    seen: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def keep(module, args, output):
        seen[module] = (args[0].detach(), output)

    hooks = [m.register_forward_hook(keep) for m in layers]
    try:
        with torch.enable_grad():
            out = model(x)
            out = out.reshape(out.shape[0], -1)                          # (N, k)
            zs = [seen[m][1] for m in layers]
            per_output = [torch.autograd.grad(out[:, c].sum(), zs, retain_graph=True)
                          for c in range(out.shape[1])]
    finally:
        for h in hooks:
            h.remove()
    grads = []
    for i, m in enumerate(layers):
        d = torch.stack([g[i] for g in per_output], 1).detach()         # (N, k, C_out, …)
        a = seen[m][0]
        if isinstance(m, Conv):
            pad = m.kernel_size // 2 if m.padding == "same" else 0
            patches = F.unfold(a, m.kernel_size, padding=pad)            # (N, C_in k², P)
            d = d.flatten(3)                                              # (N, k, C_out, P)
            g_w = torch.einsum("ncop,nmp->ncom", d, patches).flatten(2)
            g_b = d.sum(-1)
        else:
            g_w = torch.einsum("nco,nm->ncom", d, a).flatten(2)
            g_b = d
        grads += [g_w.mul_(m.weight_mult * m.weight_lr ** 0.5),   # Θ_η: r_p-weighted
                  g_b * (m.bias_mult * m.bias_lr ** 0.5)]
    return grads


def ntk_layerwise(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *,
                  trace: bool = False) -> Tensor:
    """Θ (n1, n2, k, k) of a network of ``Dense`` and ``Conv`` layers (module doc); with
    ``trace`` only its per-logit mean (n1, n2): k Gram products of single outputs instead
    of one of all k² output pairs."""
    g1 = _per_example_gradients(model, x1)
    g2 = g1 if x2 is None else _per_example_gradients(model, x2)
    n1, k = g1[0].shape[:2]
    n2 = g2[0].shape[0]
    if trace:
        theta = torch.zeros(k, n1, n2, dtype=g1[0].dtype, device=g1[0].device)
        for a, b in zip(g1, g2):                                    # (n, k, m) each
            theta.baddbmm_(a.transpose(0, 1), b.permute(1, 2, 0))
        return theta.mean(0)
    theta = torch.zeros(n1 * k, n2 * k, dtype=g1[0].dtype, device=g1[0].device)
    for a, b in zip(g1, g2):
        a, b = a.reshape(n1 * k, -1), b.reshape(n2 * k, -1)
        if x2 is None:
            _add_gram(theta, a)
        else:
            theta.addmm_(a, b.T)
    return theta.reshape(n1, k, n2, k).permute(0, 2, 1, 3)


def _add_gram(out: Tensor, a: Tensor, blocks: int = 4) -> None:
    """out += a aᵀ computing only the blocks on and above the diagonal (and mirroring) when
    there are enough rows for the blocks to stay efficient products (half of the Gram
    repeats); one product otherwise."""
    n = a.shape[0]
    if n < 1024:
        out.addmm_(a, a.T)
        return
    edges = [round(i * n / blocks) for i in range(blocks + 1)]
    spans = [slice(lo, hi) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]
    for i, rows in enumerate(spans):
        for cols in spans[i:]:
            block = a[rows] @ a[cols].T
            out[rows, cols] += block
            if cols != rows:
                out[cols, rows] += block.T
