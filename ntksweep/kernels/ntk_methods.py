"""Empirical NTK Θ(x, x') = Σ_p r_p ∂_p f(x) ∂_p f(x')ᵀ of a finite network, exactly, with
r_p the parameter's learning-rate factor (``parametrizations``; 1 in the NTK and standard
parametrizations): Θ_η, the kernel of gradient descent, df/dt = −η Θ_η ∇_f C.

Three methods, all returning (n1, n2, k, k) for k outputs:

- ``structured`` (ntksweep MLPs): per dense layer z = α W a + β b the parameters' share of
  the NTK is (r_W α² A Aᵀ + r_b β²) ⊙ (D Dᵀ), with A the layer's inputs and D = ∂f/∂z the output
  gradients w.r.t. its pre-activations (Novak et al. 2022, "structured derivatives").
  D comes from a backward pass of pre-activation gradients only — no weight gradients,
  no Jacobian: time O(N L k n² + N² L k² n), memory O(N L k n + N² k²).
- ``jacobian`` (any module): torch.func per-example Jacobians J (N, k, P), contracted
  J1 J2ᵀ. Memory O(N k P).
- ``ntk_vps`` (any module): NTK-vector products Θ v = J1 (J2ᵀ v) by vjp then jvp, one per
  column basis vector. Memory O(P + activations) per vector; time O(N k) passes.

All run without changing the model (mode restored, parameters and .grad untouched).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from .. import choices
from ..errors import UserError
from ..models import MLP
from ..models.layers import parameter_lr_factors
from .layerwise import ntk_layerwise

__all__ = ["ntk_structured", "ntk_jacobian", "ntk_vps", "ntk_times", "METHODS",
           "trainable_params"]


def trainable_params(model: nn.Module) -> dict[str, Tensor]:
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise UserError(f"{type(model).__name__} has no trainable parameters: its NTK is zero; "
                         "set requires_grad=True on the parameters you train")
    return params


# --------------------------------------------------------------------------- structured
def mlp_features(model: MLP, x: Tensor) -> list[tuple[Tensor, Tensor | None]]:
    """Per layer ℓ (input a^ℓ (N, n_ℓ), D^ℓ = ∂f/∂z^(ℓ+1) (N, k, n_(ℓ+1)) or None for the
    output layer, where D is the identity and is never materialised)."""
    inputs, derivs = [], []
    a = x
    for i, layer in enumerate(model.layers):
        inputs.append(a)
        z = layer(a)
        if i < model.depth - 1:
            derivs.append(model.act.derivative(z))
            a = model.act.fn(z)
    # backward of pre-activation gradients: D^(L−1) = I_k, D^ℓ = (D^(ℓ+1) α W) ⊙ σ'(z)
    grads: list[Tensor | None] = [None] * model.depth
    d = None
    for i in range(model.depth - 1, 0, -1):
        layer = model.layers[i]
        w = layer.weight * layer.weight_mult                             # (n_out, n_in)
        d = w.expand(x.shape[0], *w.shape) if d is None else d @ w       # (N, k, n_in)
        d = d * derivs[i - 1][:, None, :]
        grads[i - 1] = d
    return list(zip(inputs, grads))


def ntk_structured(model: MLP, x1: Tensor, x2: Tensor | None = None, *,
                   trace: bool = False) -> Tensor:
    """Θ (n1, n2, k, k) of an ntksweep MLP by structured derivatives; with ``trace`` its
    per-logit mean (n1, n2) — only the k diagonal output pairs are formed."""
    with torch.no_grad():
        f1 = mlp_features(model, x1)
        f2 = f1 if x2 is None else mlp_features(model, x2)
        n1, n2, k = x1.shape[0], (x1 if x2 is None else x2).shape[0], model.out_dim
        # k = 1 (the common case) accumulates into a contiguous (n1, n2) matrix
        flat = k == 1 or trace
        theta = torch.zeros(n1, n2, *(() if flat else (k, k)), dtype=x1.dtype, device=x1.device)
        eye = torch.eye(k, dtype=x1.dtype, device=x1.device)
        for layer, (a1, d1), (a2, d2) in zip(model.layers, f1, f2):
            gram = (a1 @ a2.T).mul_(layer.weight_lr * layer.weight_mult**2)   # r α² AAᵀ + r β²
            if layer.bias_mult:
                gram.add_(layer.bias_lr * layer.bias_mult**2)
            if d1 is None:                                                # output layer: I_k
                theta += gram if flat else gram[:, :, None, None] * eye
            elif k == 1:
                theta.addcmul_(gram, d1[:, 0] @ d2[:, 0].T)
            elif trace:                                                   # (1/k) Σ_c D_c D_cᵀ
                theta.addcmul_(gram, torch.einsum("ikn,jkn->ij", d1, d2), value=1 / k)
            else:
                theta.addcmul_(gram[:, :, None, None], torch.einsum("ikn,jln->ijkl", d1, d2))
    return theta if trace else theta.reshape(n1, n2, k, k)


# --------------------------------------------------------------------------- generic
def _single_output(model: nn.Module, params: dict[str, Tensor]):
    def f(p, x):  # one example (…) → (k,)
        return functional_call(model, p, (x.unsqueeze(0),)).reshape(-1)

    return f


def ntk_jacobian(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *,
                 trace: bool = False) -> Tensor:
    """Θ (n1, n2, k, k) by contracting per-example Jacobians (torch.func vmap(jacrev)); with
    ``trace`` its per-logit mean (n1, n2)."""
    params = trainable_params(model)
    f = _single_output(model, params)
    jac = vmap(jacrev(f), (None, 0))
    j1 = jac(params, x1)
    j2 = j1 if x2 is None else jac(params, x2)
    rates = parameter_lr_factors(model)
    theta = None
    for name in params:
        a, b = j1[name].flatten(2), j2[name].flatten(2)                  # (N, k, P_name)
        term = torch.einsum("ikp,jkp->ij", a, b) / a.shape[1] if trace \
            else torch.einsum("ikp,jlp->ijkl", a, b)
        if rates[name] != 1.0:
            term.mul_(rates[name])
        theta = term if theta is None else theta.add_(term)
    return theta


def _ntk_product(model: nn.Module, x1: Tensor, x2: Tensor):
    """(v ↦ Θ(x1, x2) v for v (n2, k) → (n1, k), the outputs at x2 (n2, k)): one vjp over x2
    (R J2ᵀ v, R the learning-rate factors) and one jvp over x1; no Jacobian is formed."""
    params = trainable_params(model)

    def f(p, x):
        out = functional_call(model, p, (x,))
        return out.reshape(x.shape[0], -1)

    out2, vjp_fn = vjp(lambda p: f(p, x2), params)
    rates = parameter_lr_factors(model)

    def product(vec: Tensor) -> Tensor:
        (cotangent,) = vjp_fn(vec)                                      # R J2ᵀ vec
        cotangent = {n: c * rates[n] if rates[n] != 1.0 else c for n, c in cotangent.items()}
        return jvp(lambda p: f(p, x1), (params,), (cotangent,))[1]      # J1 R J2ᵀ vec

    return product, out2


def ntk_times(model: nn.Module, x1: Tensor, x2: Tensor, v: Tensor) -> Tensor:
    """Θ(x1, x2) v (n1, k) for v (n2, k), without forming Θ: what a kernel predictor
    f(x) = f_0(x) + Θ(x, X) α needs at many points x once α is known."""
    with torch.no_grad():
        return _ntk_product(model, x1, x2)[0](v.to(dtype=x1.dtype, device=x1.device))


def ntk_vps(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *,
            trace: bool = False) -> Tensor:
    """Θ (n1, n2, k, k) by NTK-vector products: columns J1 (J2ᵀ e_j) for each basis e_j
    (``trace``: the per-logit mean of it, (n1, n2))."""
    column, out2 = _ntk_product(model, x1, x1 if x2 is None else x2)
    n2, k = out2.shape
    basis = torch.eye(n2 * k, dtype=out2.dtype, device=out2.device).reshape(n2 * k, n2, k)
    try:
        cols = vmap(column)(basis)                                      # (n2 k, n1, k)
    except NotImplementedError as e:     # an op without forward-mode AD (fused attention)
        raise UserError(f"method='ntk_vps' needs forward-mode AD, which this model lacks "
                        f"({e}); use method='jacobian' (reverse mode), with memory_budget= "
                        "to tile it") from None
    theta = cols.reshape(n2, k, -1, k).permute(2, 0, 3, 1)              # (n1, n2, k, k)
    return theta.diagonal(dim1=2, dim2=3).mean(-1) if trace else theta


def ntk_structured_any(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *,
                       trace: bool = False, memory_budget: int | None = None) -> Tensor:
    """Structured derivatives: the MLP's feature products, or per-layer gradients of any
    network of ``Dense`` and ``Conv`` layers (``layerwise``, in chunks that fit
    ``memory_budget``; an MLP's tile is bounded by its size alone)."""
    if isinstance(model, MLP):
        return ntk_structured(model, x1, x2, trace=trace)
    return ntk_layerwise(model, x1, x2, trace=trace, memory_budget=memory_budget)


METHODS = {"structured": ntk_structured_any, "jacobian": ntk_jacobian, "ntk_vps": ntk_vps}
choices.check_implemented("NTK methods", set(choices.NTK_METHODS) - {"auto"}, METHODS)
