"""The public empirical NTK: ``empirical_ntk(model, x1, x2)``, exact, memory-bounded and
shardable (tiles and executors: ``tiling``; the per-tile methods: ``ntk_methods``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError
from ..memory import AUTO_JACOBIAN_BYTES, largest_block
from ..models import MLP
from .adapted import adapt
from .layerwise import is_layerwise
from .ntk_methods import METHODS, trainable_params
from .tiling import (
    SerialExecutor,
    TileComputation,
    TileExecutor,
    plan_tiles,
    tile_bytes,
    tile_bytes_of,
)

__all__ = ["empirical_ntk"]




def _as_tensor(x, name: str, like: Tensor) -> Tensor:
    """Floating inputs in the model's dtype on its device; integer ones (token ids for an
    ``nn.Embedding``) keep their dtype: they are looked up, not differentiated."""
    x = torch.as_tensor(x)
    if x.ndim < 2 and x.is_floating_point():
        raise UserError(f"{name} must be (points, features…); got shape {tuple(x.shape)}")
    if x.ndim < 1:
        raise UserError(f"{name} must hold one row per point; got a scalar")
    if x.is_floating_point():
        if not torch.isfinite(x).all():
            raise UserError(f"{name} contains NaN or inf; clean the inputs first")
        return x.to(dtype=like.dtype, device=like.device)
    return x.to(device=like.device)


def _choose_method(model: nn.Module, method: str, k: int, itemsize: int,
                   budget: int | None, point: Tensor) -> str:
    if method == "auto":
        if isinstance(model, MLP) or is_layerwise(model, point):
            return "structured"
        one = tile_bytes(model, "jacobian", 1, 1, k, itemsize, point)
        return "jacobian" if one <= (budget or AUTO_JACOBIAN_BYTES) else "ntk_vps"
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of: auto, "
                        f"{', '.join(METHODS)}")
    if method == "structured" and not (isinstance(model, MLP) or is_layerwise(model, point)):
        raise UserError(f"method='structured' needs an ntksweep.models.MLP or a network whose "
                        "parameters all sit in ntksweep Dense, Conv and attention layers, each "
                        f"applied once per forward pass; got {type(model).__name__}; use "
                        "method='auto', 'jacobian' or 'ntk_vps'")
    return method


def empirical_ntk(
    model: nn.Module,
    x1,
    x2=None,
    *,
    method: str = "auto",
    block_size: int | None = None,
    memory_budget: int | None = None,
    executor: TileExecutor | None = None,
    trace: bool = False,
    out_device: str | torch.device | None = None,
    model_kwargs: dict | None = None,
    output=None,
) -> Tensor:
    """The empirical NTK of ``model`` between x1 (n1, …) and x2 (n2, …) (default x1).

    Returns (n1, n2, k, k) for a model of k outputs (one too: (n1, n2, 1, 1)) — or with
    ``trace=True`` the per-logit mean (1/k) Σ_c Θ[:, :, c, c], (n1, n2): the rank says
    which was asked for, never how many outputs the model has. Computed in the
    model's dtype on its device; inputs are cast there. ``method``: 'auto' (structured for
    ntksweep MLPs and networks of ntksweep layers — presets and ``ntksweep.layers``
    compositions, attention included — else the cheaper generic one), 'structured',
    'jacobian', 'ntk_vps'.
    ``memory_budget`` (bytes of working memory per tile) or ``block_size`` tile the kernel;
    ``executor`` computes the tiles (default: this process). The model is left unchanged.

    Any module: ``model_kwargs`` are passed to every call (``attention_mask=None``);
    ``output`` picks the tensor from what the model returns — a key (``'logits'``), an
    attribute, an index, or a function of it. Integer inputs (token ids) stay integers.
    The kernel is that of the model in **eval mode** (dropout off, BatchNorm on its running
    statistics; the mode is restored after): a train-mode forward is random or couples the
    examples of a batch, and has no per-example kernel. 'auto' takes per-example Jacobians
    in tiles that fit ``memory_budget`` (2 GiB when none is given) and NTK-vector products
    only when not even one example's Jacobian fits; forward-mode AD, which those products
    need, is missing for some ops (fused attention): the error then says to use 'jacobian'.
    """
    params = trainable_params(model)
    like = next(iter(params.values()))
    a = _as_tensor(x1, "x1", like)
    b = None if x2 is None else _as_tensor(x2, "x2", like)
    if b is not None and a.shape[1:] != b.shape[1:]:
        raise UserError(f"x1 points have shape {tuple(a.shape[1:])} but x2 points "
                        f"{tuple(b.shape[1:])}; both need the same input shape")
    if isinstance(model, MLP) and a.shape[1] != model.in_dim:
        raise UserError(f"x1 has {a.shape[1]} features but the model expects in_dim="
                        f"{model.in_dim}")
    was_training = model.training
    switch = any(m.training for m in model.modules())    # an eval-mode model stays as it is
    if switch:
        model.eval()
    try:
        with torch.no_grad():
            model, probe = adapt(model, model_kwargs, output, a[:1])
            k = probe.reshape(1, -1).shape[1]
        n1, n2 = a.shape[0], (a if b is None else b).shape[0]
        chosen = _choose_method(model, method, k, like.element_size(), memory_budget, a[:1])
        if method == "auto" and chosen == "jacobian" and memory_budget is None:
            memory_budget = AUTO_JACOBIAN_BYTES        # tiles of Jacobians, never all at once
        method = chosen
        block = _block(model, method, max(n1, n2), k, like.element_size(), block_size,
                       memory_budget, a[:1])
        computation = TileComputation(model, a, b, method, trace, memory_budget)
        tiles = plan_tiles(n1, n2, block, symmetric=b is None)
        device = like.device if out_device is None else torch.device(out_device)
        out = torch.empty(n1, n2, *(() if trace else (k, k)), dtype=like.dtype, device=device)
        _assemble(out, (executor or SerialExecutor()).map_tiles(computation, tiles),
                  symmetric=b is None)
    finally:
        if switch:
            model.train(was_training)
    return out


def _block(model: nn.Module, method: str, n: int, k: int, itemsize: int,
           block_size: int | None, memory_budget: int | None, point: Tensor) -> int:
    """The tile side: ``block_size``, or n, shrunk to the largest that fits the budget."""
    block = n if block_size is None else int(block_size)
    if memory_budget is not None:
        size = tile_bytes_of(model, method, k, itemsize, point)
        fits = largest_block(n, lambda s: size(s, s), memory_budget)
        if fits is None:
            need = size(1, 1)
            raise UserError(f"memory_budget={memory_budget} bytes is too small for even a "
                            f"1×1 tile of this model with method={method!r} (needs about "
                            f"{need} bytes); raise the budget")
        block = min(block, fits)
    if block < 1:
        raise UserError(f"block_size must be >= 1; got {block_size!r}")
    return block


def _assemble(out: Tensor, blocks, symmetric: bool) -> None:
    """Write each (tile, value) into ``out`` (n1, n2, k, k) or (n1, n2), mirroring
    off-diagonal tiles of a symmetric kernel."""
    for tile, value in blocks:
        if isinstance(value, np.ndarray) and not value.flags.writeable:
            value = value.copy()  # zero-copy from Ray's object store
        value = torch.as_tensor(value).to(out.device)
        out[tile.r0:tile.r1, tile.c0:tile.c1] = value
        if symmetric and tile.r0 != tile.c0:
            out[tile.c0:tile.c1, tile.r0:tile.r1] = value.transpose(0, 1) if value.dim() == 2 \
                else value.permute(1, 0, 3, 2)
