"""The one tile plan of a kernel matrix: (n1 × n2) cut into bands of rows, each band into
chunks of columns; a symmetric kernel (one input set) gets the chunks on and above the
diagonal only, the rest mirrored. The empirical NTK, the MLP limit and the conv limit all
plan their tiles here. And the one check of the points a kernel is asked for."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import SpecError

__all__ = ["Tile", "plan_tiles", "float64_points"]


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
