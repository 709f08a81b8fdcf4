"""A kernel job's Gram matrix read back lazily: ``GramMatrix(out, "train", "ntk")[r0:r1,
c0:c1]`` reads only the tiles that slice touches (the lower triangle of a symmetric block
from the tiles above it, transposed); ``np.asarray(matrix)`` reads it all."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..kernels.tiles import plan_tiles
from ..store.tiles import read_tile
from .spec import MANIFEST, read_manifest, tile_path

__all__ = ["GramMatrix", "KERNELS"]

KERNELS = ("ntk", "nngp")


class GramMatrix:
    """One block (``train``: train × train; ``test``: test × train) of one kernel (``ntk``:
    Θ_∞, ``nngp``: Σ) of a kernel job's output dir; ``shape`` (n1, n2), ``dtype`` the job's
    (float64, or float32)."""

    def __init__(self, out: str | Path, block: str = "train", kernel: str = "ntk"):
        manifest = read_manifest(out)
        if manifest is None:
            raise UserError(f"{out} holds no kernel job ({MANIFEST} is missing); run "
                            "ntksweep kernel SPEC first")
        if block not in manifest["shapes"]:
            raise UserError(f"block {block!r} is not in {out}: it has "
                            f"{', '.join(manifest['shapes'])}")
        if kernel not in KERNELS:
            raise UserError(f"kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
        self.out, self.block, self.kernel = out, block, kernel
        self.shape = tuple(manifest["shapes"][block])
        self.dtype = np.dtype(manifest["spec"].get("dtype", "float64"))
        self.symmetric = block == "train"
        self.tiles = plan_tiles(*self.shape, manifest["spec"]["tile"], self.symmetric)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        full = self[:, :]
        return full if dtype is None else full.astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key
        r0, r1, _ = rows.indices(self.shape[0])
        c0, c1, _ = cols.indices(self.shape[1])
        out = np.empty((r1 - r0, c1 - c0), dtype=self.dtype)
        for tile in self.tiles:
            mirrored = self.symmetric and not tile.diagonal
            places = [t for t in ((False, True) if mirrored else (False,))
                      if _overlap(tile, t, r0, r1, c0, c1) is not None]
            if places:                         # read once, placed as itself and its mirror
                value = self.tile_value(tile)
                for transposed in places:
                    _place(out, value, tile, transposed, r0, r1, c0, c1)
        return out

    def tile_value(self, tile) -> np.ndarray:
        """One tile's kernel (rows × cols, in ``dtype``), as computed: not mirrored."""
        arrays = read_tile(self.out, tile_path(self.block, tile))
        if arrays is None:
            raise UserError(f"tile {tile_path(self.block, tile)} of {self.out} is missing or "
                            "damaged; run the kernel job again to compute it")
        return arrays[self.kernel]



def _overlap(tile, transposed: bool, r0, r1, c0, c1):
    """Where ``tile`` (or its mirror image) lies — (tr0, tc0) — and the part of it inside
    [r0, r1) × [c0, c1) — (lo_r, hi_r, lo_c, hi_c) —; None where it lies outside."""
    tr0, tr1, tc0, tc1 = (tile.c0, tile.c1, tile.r0, tile.r1) if transposed else \
        (tile.r0, tile.r1, tile.c0, tile.c1)
    if tile.diagonal:          # a diagonal tile holds its whole square
        tc1 = tc0 + (tr1 - tr0)
    lo_r, hi_r, lo_c, hi_c = max(r0, tr0), min(r1, tr1), max(c0, tc0), min(c1, tc1)
    return None if lo_r >= hi_r or lo_c >= hi_c else (tr0, tc0, lo_r, hi_r, lo_c, hi_c)


def _place(out: np.ndarray, value: np.ndarray, tile, transposed: bool, r0, r1, c0,
           c1) -> None:
    """Copy the part of the tile's ``value`` (or of its mirror image) inside the slice."""
    tr0, tc0, lo_r, hi_r, lo_c, hi_c = _overlap(tile, transposed, r0, r1, c0, c1)
    value = value.T if transposed else value
    out[lo_r - r0:hi_r - r0, lo_c - c0:hi_c - c0] = \
        value[lo_r - tr0:hi_r - tr0, lo_c - tc0:hi_c - tc0]
