"""The one tile plan of a kernel matrix: (n1 × n2) cut into bands of rows, each band into
chunks of columns; a symmetric kernel (one input set) gets the chunks on and above the
diagonal only, the rest mirrored. The empirical NTK, the MLP limit and the conv limit all
plan their tiles here. And the one check of the points a kernel is asked for, and of the
precision a limit is computed in."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..choices import DTYPES
from ..errors import SpecError

__all__ = ["Tile", "plan_tiles", "float64_points", "pair_kernels", "limit_dtype"]


@dataclass(frozen=True)
class Tile:
    """Rows [r0, r1) of x1 against columns [c0, c1) of x2; ``diagonal``: a symmetric
    kernel's block that starts on its diagonal (it holds the square [r0, r1)²)."""

    r0: int
    r1: int
    c0: int
    c1: int
    diagonal: bool = False

    @property
    def rows(self) -> slice:
        return slice(self.r0, self.r1)

    @property
    def cols(self) -> slice:
        return slice(self.c0, self.c1)


def plan_tiles(n1: int, n2: int, block: int | tuple[int, int], symmetric: bool
               ) -> list[Tile]:
    """Tiles of ``block`` = (rows, cols) (an int: square) covering (n1, n2) — or, when
    ``symmetric``, its upper triangle, each band starting at the diagonal with a chunk wide
    enough to hold the band's whole square."""
    h, w = (block, block) if isinstance(block, (int, np.integer)) else block
    if h < 1 or w < 1:
        raise SpecError(f"a tile must be an int or (rows, cols) of ints >= 1; got {block!r}")
    h, w = int(h), int(max(w, h) if symmetric else w)
    return list(_tiles(n1, n2, h, w, symmetric))


def _tiles(n1: int, n2: int, h: int, w: int, symmetric: bool) -> Iterator[Tile]:
    for r0 in range(0, n1, h):
        for c0 in range(r0 if symmetric else 0, n2, w):
            yield Tile(r0, min(r0 + h, n1), c0, min(c0 + w, n2),
                       diagonal=symmetric and c0 == r0)


def float64_points(x1, x2=None, *, ndim: int, what: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """x1 (n1, …) and x2 (n2, …) (numpy or torch; default x1) as float64 numpy arrays of
    ``ndim`` axes, finite and of one point shape: (x1, x2, whether x2 was x1). ``what`` names
    the shape in the error: "(points, features)", "(points, channels, height, width)"."""

    def convert(x, name):
        if hasattr(x, "detach"):                       # a torch.Tensor
            x = x.detach().cpu().double().numpy()
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != ndim:
            raise SpecError(f"{name} must be {what}; got shape {x.shape}")
        if not np.isfinite(x).all():
            raise SpecError(f"{name} contains NaN or inf; clean the inputs first")
        return x

    a = convert(x1, "x1")
    b = a if x2 is None else convert(x2, "x2")
    if a.shape[1:] != b.shape[1:]:
        raise SpecError(f"x1 points have shape {a.shape[1:]} but x2 points {b.shape[1:]}; "
                        "both need the same input dim")
    return a, b, x2 is None


def limit_dtype(name: str) -> torch.dtype:
    """The torch dtype of a limit computed in ``name`` (``choices.DTYPES``): float64, the
    default and every check's, or float32 — half the memory traffic of the recursions over
    pairs of positions, which are memory-bound (benchmarks/RESULTS.md), and what a GPU runs
    fast."""
    if name not in DTYPES:
        raise SpecError(f"dtype: a limit is computed in float64 or float32; got {name!r}")
    return getattr(torch, name)


def pair_kernels(n1: int, n2: int, side: int, symmetric: bool, compute, *, device=None,
                 dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Θ and Σ (n1, n2) in ``dtype``, filled tile by tile: ``compute(tile, same)`` gives the
    tile's (Θ, Σ), ``same`` when its rows and columns are the same inputs; with
    ``symmetric`` only the upper triangle is computed, mirrored, and the diagonal tiles
    symmetrised (their entries agree only up to the last bits of the duals)."""
    ntk = torch.empty(n1, n2, dtype=dtype, device=device)
    nngp = torch.empty_like(ntk)
    for t in plan_tiles(n1, n2, side, symmetric):
        theta, sigma = compute(t, symmetric and t.rows == t.cols)
        ntk[t.rows, t.cols], nngp[t.rows, t.cols] = theta, sigma
        if symmetric and not t.diagonal:
            ntk[t.cols, t.rows], nngp[t.cols, t.rows] = theta.T, sigma.T
    if symmetric:
        ntk, nngp = (ntk + ntk.T) / 2, (nngp + nngp.T) / 2
    return ntk, nngp
