"""``ntksweep kernel SPEC --dry-run``: what a kernel job would compute and what it would
cost, before anything is written or started — each block's shape and tiles (those already
in the output dir verified, as a resume would), the entries left, the disk the finished
job takes, and its pace measured on this process's device on one sample tile of the data
(an off-diagonal one: most of a large job's tiles are)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..console import bytes_text, duration_text
from ..kernels.tiles import plan_tiles
from ..trial.builders import limit_kernels
from .job import check_job, missing_tiles
from .regression import solves_exactly
from .spec import GramSpec

__all__ = ["BlockPlan", "GramPlan", "plan_gram", "plan_lines", "PACE_SECONDS"]

PACE_SECONDS = 0.25     # the timed sample grows (doubling its side) until it takes this long


@dataclass(frozen=True)
class BlockPlan:
    """One Gram block: its (rows, cols), its tiles, those already whole in the output dir,
    and the entries the missing ones hold (a diagonal tile counts its whole square, as it
    is computed)."""

    name: str
    shape: tuple[int, int]
    tiles: int
    done: int
    entries_left: int


@dataclass(frozen=True)
class GramPlan:
    """The job's blocks; its pace: seconds per entry on ``device``, measured on a
    ``sample`` × ``sample`` tile (0 and NaN: the job is complete, nothing was timed); the
    bytes of its tiles when complete (both kernels)."""

    blocks: tuple[BlockPlan, ...]
    device: str
    sample: int
    seconds_per_entry: float
    disk_bytes: int

    @property
    def entries_left(self) -> int:
        return sum(b.entries_left for b in self.blocks)


def plan_gram(spec: GramSpec, device: str = "cpu") -> GramPlan:
    """The plan of ``spec`` (module doc); refuses what ``run_gram`` would refuse (a network
    without a limit, a dir holding another job) and writes nothing."""
    blocks, out_dim = check_job(spec)
    plans, disk = [], 0
    itemsize = np.dtype(spec.dtype).itemsize
    for name, (x1, x2) in blocks.items():
        tiles = plan_tiles(len(x1), len(x2), spec.tile, symmetric=x1 is x2)
        todo = missing_tiles(spec.output_dir, name, tiles)
        plans.append(BlockPlan(name, (len(x1), len(x2)), len(tiles), len(tiles) - len(todo),
                               _entries(todo)))
        disk += 2 * itemsize * _entries(tiles)
    if not any(b.entries_left for b in plans):         # complete: nothing to time
        return GramPlan(tuple(plans), device, 0, float("nan"), disk)
    sample, seconds = _pace(spec, blocks["train"][0], out_dim, device)
    return GramPlan(tuple(plans), device, sample, seconds / sample ** 2, disk)


def _entries(tiles) -> int:
    return sum((t.r1 - t.r0) * (t.c1 - t.c0) for t in tiles)


def _pace(spec: GramSpec, x: np.ndarray, out_dim: int, device: str) -> tuple[int, float]:
    """(side, seconds) of the limit on x[:side] against x's last ``side`` points: the side
    doubles from 1 until a tile takes ``PACE_SECONDS`` or reaches the job's tile (or the
    data), so that a cheap limit is not timed on its overhead nor a costly one for long."""
    side, cap = 1, min(spec.tile, len(x))
    while True:
        x1, x2 = np.array(x[:side]), np.array(x[len(x) - side:])
        started = time.perf_counter()
        limit_kernels(spec.network, x1, x2, device, out_dim, spec.dtype)
        seconds = time.perf_counter() - started
        if seconds >= PACE_SECONDS or side == cap:
            return side, seconds
        side = min(2 * side, cap)


def plan_lines(plan: GramPlan, workers: int = 1, ridge: float | None = None) -> list[str]:
    """The plan in words: a line per block, the disk, the time left at the measured pace
    (over ``workers`` as fast as this process), and with ``ridge`` the regression's solver."""
    lines = [f"  {b.name}: {b.shape[0]} × {b.shape[1]}, {b.done}/{b.tiles} tiles already "
             f"written and verified, {b.entries_left:,} entries to compute"
             for b in plan.blocks]
    lines.append(f"  disk when complete: {bytes_text(plan.disk_bytes)} (Θ and Σ)")
    lines.append(_pace_line(plan, workers))
    if ridge is not None and len(plan.blocks) > 1:
        n = plan.blocks[0].shape[0]
        solver = "exact" if solves_exactly(n) else "conjugate gradients over the tiles"
        lines.append(f"  then kernel regression with ridge {ridge:g}: {solver} "
                     f"(K(X, X) {bytes_text(8 * n * n)} in float64)")
    return lines


def _pace_line(plan: GramPlan, workers: int) -> str:
    if not plan.sample:
        return "  complete: nothing left to compute"
    left = plan.entries_left * plan.seconds_per_entry
    over = "" if workers == 1 else \
        f", ≈ {duration_text(left / workers)} over {workers} workers as fast as this one"
    return (f"  pace here ({plan.device}, a {plan.sample} × {plan.sample} tile timed): "
            f"{plan.seconds_per_entry * 1e3:.3g} ms per entry → ≈ {duration_text(left)} of "
            f"compute left{over}")
