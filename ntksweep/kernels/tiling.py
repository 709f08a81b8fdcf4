"""Tiles of an empirical NTK and the executors that compute them.

The (N1 × N2) kernel is cut into row × column tiles sized so that one tile's working
memory fits a byte budget; with x2 None only tiles on or above the diagonal are computed
and mirrored. Tiles go through an *executor*: in-process by default, or any object with
``map_tiles(computation, tiles)`` — e.g. ``ntksweep.sweep.RayTileExecutor`` spreads them over
Ray actors (the kernels package itself never imports Ray). On CUDA an out-of-memory tile is
split in four and retried instead of failing the trial.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from ..memory import LayerShape, generic_tile_bytes, structured_tile_bytes
from ..models import MLP
from .layerwise import layer_shapes
from .ntk_methods import METHODS, trainable_params
from .tiles import Tile, plan_tiles

__all__ = ["Tile", "TileComputation", "TileExecutor", "SerialExecutor", "plan_tiles",
           "tile_bytes", "tile_bytes_of"]


@dataclass(frozen=True)
class TileComputation:
    """Everything needed to compute any tile of one kernel (picklable: ships to actors)."""

    model: nn.Module
    x1: Tensor
    x2: Tensor | None
    method: str
    trace: bool = False            # the per-logit mean (r, c) instead of (r, c, k, k)
    memory_budget: int | None = None   # bytes per tile

    def to(self, device: str | torch.device) -> TileComputation:
        return dataclasses.replace(self, model=self.model.to(device), x1=self.x1.to(device),
                                   x2=None if self.x2 is None else self.x2.to(device))

    def __call__(self, tile: Tile) -> Tensor:
        """The (r, c, k, k) block (``trace``: (r, c)), splitting itself in four on CUDA
        out-of-memory (the pieces then come back assembled on the host)."""
        xr = self.x1[tile.r0:tile.r1]
        xc = (self.x1 if self.x2 is None else self.x2)[tile.c0:tile.c1]
        # only the conv nets' structured method splits its work further under the budget
        budget = {"memory_budget": self.memory_budget} if self.method == "structured" else {}
        try:
            return METHODS[self.method](self.model, xr, None if tile.diagonal else xc,
                                        trace=self.trace, **budget)
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
    """Yields (tile, value) as tiles finish; ``seconds`` (Tile → float) records how long
    each took where it ran (a kernel job logs them)."""

    seconds: dict[Tile, float]

    def map_tiles(self, computation: TileComputation,
                  tiles: Sequence[Tile]) -> Iterable[tuple[Tile, Tensor | np.ndarray]]: ...


class SerialExecutor:
    """Computes tiles one after another in this process — on ``device`` where one is given
    (the computation moved there, as a Ray actor moves it to its GPU); ``devices`` names it
    (a GPU by its name), as a Ray executor names its actors'."""

    def __init__(self, device: str | None = None):
        self.device = device
        self.seconds: dict[Tile, float] = {}
        gpu = device is not None and str(device).startswith("cuda")
        self.devices = [f"{torch.cuda.get_device_name(device) if gpu else 'cpu'} (this process)"]

    def map_tiles(self, computation: TileComputation,
                  tiles: Sequence[Tile]) -> Iterator[tuple[Tile, Tensor]]:
        if self.device is not None:
            computation = computation.to(self.device)
        for tile in tiles:
            started = time.perf_counter()
            value = computation(tile)
            self.seconds[tile] = time.perf_counter() - started
            yield tile, value


def tile_bytes(model: nn.Module, method: str, rows: int, cols: int, out_dim: int,
               itemsize: int, point: Tensor | None = None) -> int:
    """Working-memory estimate (bytes) of one rows × cols tile, excluding the model itself
    and the assembled output (``memory``: the same rules a trial's estimate plans by).
    ``point`` (1, …): an input, needed for the structured method on conv nets (their
    signals' sizes depend on the image size)."""
    return tile_bytes_of(model, method, out_dim, itemsize, point)(rows, cols)


def tile_bytes_of(model: nn.Module, method: str, out_dim: int, itemsize: int,
                  point: Tensor | None = None) -> Callable[[int, int], int]:
    """(rows, cols) ↦ ``tile_bytes``, the model's layers read once (a forward pass of
    ``point`` for a conv net's): a search over tile sides asks many times."""
    if method == "structured" and not isinstance(model, MLP):
        if point is None:
            raise ValueError("tile_bytes needs an example input for a conv net's layers")
        shapes, _ = layer_shapes(model, point)
        return lambda rows, cols: structured_tile_bytes(shapes, out_dim, itemsize, rows, cols,
                                                        conv=True)
    if method == "structured":
        shapes = [LayerShape(layer.in_features, 1, layer.weight.shape[0], 1, 1)
                  for layer in model.layers]
        return lambda rows, cols: structured_tile_bytes(shapes, out_dim, itemsize, rows, cols,
                                                        conv=False)
    params = sum(p.numel() for p in trainable_params(model).values())
    return lambda rows, cols: generic_tile_bytes(params, out_dim, itemsize, rows, cols)
