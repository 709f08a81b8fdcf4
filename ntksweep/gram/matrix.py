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
    Θ_∞, ``nngp``: Σ) of a kernel job's output dir; ``shape`` (n1, n2), float64."""

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
        self.symmetric = block == "train"
        self.tiles = plan_tiles(*self.shape, manifest["spec"]["tile"], self.symmetric)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        full = self[:, :]
        return full if dtype is None else full.astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key
        r0, r1, _ = rows.indices(self.shape[0])
        c0, c1, _ = cols.indices(self.shape[1])
        out = np.empty((r1 - r0, c1 - c0))
        for tile in self.tiles:
            self._place(out, tile, r0, r1, c0, c1, transposed=False)
            if self.symmetric and not tile.diagonal:
                self._place(out, tile, r0, r1, c0, c1, transposed=True)
        return out

    def tile_value(self, tile) -> np.ndarray:
        """One tile's kernel (rows × cols, float64), as computed: not mirrored."""
        arrays = read_tile(self.out, tile_path(self.block, tile))
        if arrays is None:
            raise UserError(f"tile {tile_path(self.block, tile)} of {self.out} is missing or "
                            "damaged; run the kernel job again to compute it")
        return arrays[self.kernel]

    def _place(self, out: np.ndarray, tile, r0, r1, c0, c1, transposed: bool) -> None:
        """Copy the part of ``tile`` (or of its mirror image) inside [r0, r1) × [c0, c1)."""
        tr0, tr1, tc0, tc1 = (tile.c0, tile.c1, tile.r0, tile.r1) if transposed else \
            (tile.r0, tile.r1, tile.c0, tile.c1)
        if tile.diagonal:          # a diagonal tile holds its whole square
            tc1 = tc0 + (tr1 - tr0)
        lo_r, hi_r, lo_c, hi_c = max(r0, tr0), min(r1, tr1), max(c0, tc0), min(c1, tc1)
        if lo_r >= hi_r or lo_c >= hi_c:
            return
        value = self.tile_value(tile).T if transposed else self.tile_value(tile)
        out[lo_r - r0:hi_r - r0, lo_c - c0:hi_c - c0] = \
            value[lo_r - tr0:hi_r - tr0, lo_c - tc0:hi_c - tc0]
