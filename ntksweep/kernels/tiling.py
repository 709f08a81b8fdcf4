"""Memory-bounded, shardable empirical NTKs: the public ``empirical_ntk``.

The (N1 × N2) kernel is cut into row × column tiles sized so that one tile's working
memory fits a byte budget; with x2 None only tiles on or above the diagonal are computed
and mirrored. Tiles go through an *executor*: in-process by default, or any object with
``map_tiles(computation, tiles)`` — e.g. ``ntksweep.sweep.RayTileExecutor`` spreads them over
Ray actors (the kernels package itself never imports Ray). On CUDA an out-of-memory tile is
split in four and retried instead of failing the trial.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ..models import MLP
from .empirical import METHODS, trainable_params

__all__ = ["empirical_ntk", "Tile", "TileComputation", "TileExecutor", "SerialExecutor",
           "plan_tiles", "tile_bytes"]


@dataclass(frozen=True)
class Tile:
    """Rows [r0, r1) of x1 against columns [c0, c1) of x2; ``diagonal``: a symmetric
    block of one input set (computed with one forward pass, mirrored on assembly)."""

    r0: int
    r1: int
    c0: int
    c1: int
    diagonal: bool = False


@dataclass(frozen=True)
class TileComputation:
    """Everything needed to compute any tile of one kernel (picklable: ships to actors)."""

    model: nn.Module
    x1: Tensor
    x2: Tensor | None
    method: str

    def to(self, device: str | torch.device) -> TileComputation:
        return TileComputation(self.model.to(device), self.x1.to(device),
                               None if self.x2 is None else self.x2.to(device), self.method)

    def __call__(self, tile: Tile) -> Tensor:
        """The (r, c, k, k) block, splitting itself in four on CUDA out-of-memory (the
        pieces then come back assembled on the host)."""
        xr = self.x1[tile.r0:tile.r1]
        xc = (self.x1 if self.x2 is None else self.x2)[tile.c0:tile.c1]
        try:
            return METHODS[self.method](self.model, xr, None if tile.diagonal else xc)
        except torch.cuda.OutOfMemoryError:
            if tile.r1 - tile.r0 <= 1 and tile.c1 - tile.c0 <= 1:
                raise
            torch.cuda.empty_cache()
        rm, cm = (tile.r0 + tile.r1 + 1) // 2, (tile.c0 + tile.c1 + 1) // 2
        rows = [(tile.r0, rm), (rm, tile.r1)] if tile.r1 - tile.r0 > 1 else [(tile.r0, tile.r1)]
        cols = [(tile.c0, cm), (cm, tile.c1)] if tile.c1 - tile.c0 > 1 else [(tile.c0, tile.c1)]
        # the device is full: stage the pieces on the host and assemble them there
        blocks = [[self(Tile(r0, r1, c0, c1)).cpu() for c0, c1 in cols] for r0, r1 in rows]
        return torch.cat([torch.cat(row, dim=1) for row in blocks], dim=0)


class TileExecutor(Protocol):
    def map_tiles(self, computation: TileComputation,
                  tiles: Sequence[Tile]) -> Iterable[tuple[Tile, Tensor | np.ndarray]]: ...


class SerialExecutor:
    """Computes tiles one after another in this process."""

    def map_tiles(self, computation: TileComputation,
                  tiles: Sequence[Tile]) -> Iterator[tuple[Tile, Tensor]]:
        for tile in tiles:
            yield tile, computation(tile)


def tile_bytes(model: nn.Module, method: str, rows: int, cols: int, out_dim: int,
               itemsize: int) -> int:
    """Working-memory estimate (bytes) of one rows × cols tile, excluding the model itself
    and the assembled output: per-point features or Jacobians plus per-pair blocks."""
    k = out_dim
    if method == "structured":
        per_point = sum(l.in_features + (k + 2) * l.weight.shape[0] for l in model.layers)
        per_pair = 2 * k * k + 2
    else:
        per_point = 3 * k * sum(p.numel() for p in trainable_params(model).values())
        per_pair = 2 * k * k
    return itemsize * ((rows + cols) * per_point + rows * cols * per_pair)


def plan_tiles(n1: int, n2: int, block: int, symmetric: bool) -> list[Tile]:
    tiles = []
    for r0 in range(0, n1, block):
        for c0 in range(r0 if symmetric else 0, n2, block):
            tiles.append(Tile(r0, min(r0 + block, n1), c0, min(c0 + block, n2),
                              diagonal=symmetric and r0 == c0))
    return tiles


def _as_tensor(x, name: str, like: Tensor) -> Tensor:
    x = torch.as_tensor(x)
    if x.ndim < 2:
        raise ValueError(f"{name} must be (points, features…); got shape {tuple(x.shape)}")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf; clean the inputs first")
    return x.to(dtype=like.dtype, device=like.device)


def _choose_method(model: nn.Module, method: str, n: int, k: int, itemsize: int,
                   budget: int | None) -> str:
    if method == "auto":
        if isinstance(model, MLP):
            return "structured"
        jac_bytes = tile_bytes(model, "jacobian", n, 0, k, itemsize)
        return "jacobian" if jac_bytes <= (budget or 2 << 30) else "ntk_vps"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: auto, "
                         f"{', '.join(METHODS)}")
    if method == "structured" and not isinstance(model, MLP):
        raise ValueError(f"method='structured' needs an ntksweep.models.MLP, got "
                         f"{type(model).__name__}; use method='auto', 'jacobian' or 'ntk_vps'")
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
) -> Tensor:
    """The empirical NTK of ``model`` between x1 (n1, …) and x2 (n2, …) (default x1).

    Returns (n1, n2) for a model with one output, else (n1, n2, k, k) — or with
    ``trace=True`` the per-logit mean (1/k) Σ_c Θ[:, :, c, c], (n1, n2). Computed in the
    model's dtype on its device; inputs are cast there. ``method``: 'auto' (structured for
    ntksweep MLPs, else the cheaper generic one), 'structured', 'jacobian', 'ntk_vps'.
    ``memory_budget`` (bytes of working memory per tile) or ``block_size`` tile the kernel;
    ``executor`` computes the tiles (default: this process). The model is left unchanged.
    """
    params = trainable_params(model)
    like = next(iter(params.values()))
    a = _as_tensor(x1, "x1", like)
    b = None if x2 is None else _as_tensor(x2, "x2", like)
    if b is not None and a.shape[1:] != b.shape[1:]:
        raise ValueError(f"x1 points have shape {tuple(a.shape[1:])} but x2 points "
                         f"{tuple(b.shape[1:])}; both need the same input shape")
    if isinstance(model, MLP) and a.shape[1] != model.in_dim:
        raise ValueError(f"x1 has {a.shape[1]} features but the model expects in_dim="
                         f"{model.in_dim}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            k = model(a[:1]).reshape(1, -1).shape[1]
        n1, n2 = a.shape[0], (a if b is None else b).shape[0]
        method = _choose_method(model, method, n1 + n2, k, like.element_size(), memory_budget)
        block = max(n1, n2) if block_size is None else int(block_size)
        if memory_budget is not None:
            fits = [s for s in _candidate_blocks(max(n1, n2))
                    if tile_bytes(model, method, s, s, k, like.element_size()) <= memory_budget]
            if not fits:
                need = tile_bytes(model, method, 1, 1, k, like.element_size())
                raise ValueError(f"memory_budget={memory_budget} bytes is too small for even a "
                                 f"1×1 tile of this model with method={method!r} (needs about "
                                 f"{need} bytes); raise the budget")
            block = min(block, max(fits))
        if block < 1:
            raise ValueError(f"block_size must be >= 1; got {block_size!r}")
        computation = TileComputation(model, a, b, method)
        tiles = plan_tiles(n1, n2, block, symmetric=b is None)
        device = like.device if out_device is None else torch.device(out_device)
        out = torch.empty(n1, n2, k, k, dtype=like.dtype, device=device)
        for tile, block_value in (executor or SerialExecutor()).map_tiles(computation, tiles):
            if isinstance(block_value, np.ndarray) and not block_value.flags.writeable:
                block_value = block_value.copy()  # zero-copy from Ray's object store
            block_value = torch.as_tensor(block_value).to(device)
            out[tile.r0:tile.r1, tile.c0:tile.c1] = block_value
            if b is None and tile.r0 != tile.c0:
                out[tile.c0:tile.c1, tile.r0:tile.r1] = block_value.permute(1, 0, 3, 2)
    finally:
        model.train(was_training)
    if trace:
        return out.diagonal(dim1=2, dim2=3).mean(-1)
    return out[:, :, 0, 0] if k == 1 else out


def _candidate_blocks(n: int) -> list[int]:
    sizes = {n}
    s = 1
    while s < n:
        sizes.add(s)
        s *= 2
    for s in list(sizes):  # also ⌈n/m⌉ so tiles are even
        if s < n:
            sizes.add(math.ceil(n / math.ceil(n / s)))
    return sorted(sizes)
