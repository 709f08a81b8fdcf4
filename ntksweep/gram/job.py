"""A kernel job: the NNGP and NTK Gram matrices of a network's infinite-width limit on a
data set (train × train, and test × train), in tiles — the upper triangle of a symmetric
block, largest first — each written atomically to the output dir as it finishes. A job that
stops (killed, or a worker lost) resumes where it was: every tile that reads back whole and
matches its checksum is kept, every other is computed again (``store.tiles``).

Layout of the output dir::

    gram.json                        the job's spec and its blocks' shapes
    tiles/<block>/<r0>_<c0>.npz      one tile: ntk, nngp (rows × cols, the job's dtype), sha256

A float32 job's tiles are computed and stored in float32; when its last tile is done, the
first ``PRECISION_SAMPLE`` rows × columns of each block are computed again in float64 and
the largest difference from the stored values (relative to the largest entry of the sample)
goes into ``gram.json`` — a measured precision, not an assumed one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..errors import SpecError
from ..kernels.tiles import Tile, plan_tiles
from ..kernels.tiling import SerialExecutor
from ..store import write_text
from ..store.tiles import read_tile, write_tile
from ..trial.builders import (
    dataset_for,
    has_limit,
    inputs,
    limit_kernels,
    limit_key,
)
from ..trial_spec import TrialSpec
from .spec import MANIFEST, GramSpec, read_manifest, tile_path

__all__ = ["LimitTiles", "GramProgress", "GramRun", "run_gram", "check_job", "limit_digest",
           "PRECISION_SAMPLE"]

PRECISION_SAMPLE = 8      # a float32 job's check: this many rows × columns of each block


@dataclass(frozen=True)
class LimitTiles:
    """Any tile of one block of a network's limit (picklable: ships to Ray actors, as the
    empirical NTK's ``TileComputation`` does): rows of x1 (n1, …) against columns of x2."""

    network: TrialSpec
    x1: np.ndarray
    x2: np.ndarray
    out_dim: int
    device: str = "cpu"
    dtype: str = "float64"

    def to(self, device: str) -> LimitTiles:
        return replace(self, device=str(device))

    def __call__(self, tile: Tile) -> torch.Tensor:
        """(2, rows, cols) in ``dtype``: Θ_∞ and Σ of the tile (a diagonal tile: its square)."""
        # copies: arrays that came through Ray's object store are read-only
        x2 = None if tile.diagonal else np.array(self.x2[tile.cols])
        k = limit_kernels(self.network, np.array(self.x1[tile.rows]), x2, self.device,
                          self.out_dim, self.dtype)
        return torch.from_numpy(np.stack([k.ntk, k.nngp]))


@dataclass(frozen=True)
class GramProgress:
    """Where a job is in one block: tiles done of all, entries computed in this run, the
    seconds so far, the tiles this run computed, and the last tile's seconds where it ran
    (NaN where the executor does not say)."""

    block: str
    done: int
    total: int
    entries: int
    seconds: float
    done_in_run: int = 0
    tile_seconds: float = float("nan")

    @property
    def eta_seconds(self) -> float:
        """At this run's pace so far (tiles kept from before took no time)."""
        rate = self.done_in_run / self.seconds if self.seconds > 0 else 0.0
        return (self.total - self.done) / rate if rate > 0 else float("nan")


@dataclass(frozen=True)
class GramRun:
    """A finished job: tiles computed in this run, tiles kept from before (verified), the
    entries computed, the seconds; a float32 job's measured precision (block → kernel →
    largest relative difference from float64 on the sample; empty for float64)."""

    computed: int
    kept: int
    entries: int
    seconds: float
    precision: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def entries_per_second(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else float("nan")


def job_blocks(spec: GramSpec) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
    """Each block's (rows' inputs, columns' inputs) as the network reads them (the same
    array twice for a symmetric block), and the network's output count; ``SpecError`` where
    it has no closed-form limit."""
    net = spec.network
    data = dataset_for(net)
    out_dim = data.out_dim
    if not has_limit(net, out_dim):
        raise SpecError(f"network: {net.architecture!r} with these fields has no closed-form "
                        "limit (1/√d attention, a plain module): a kernel job computes limits")
    train = np.concatenate([data.x_eval, data.x_train]) if spec.eval_rows else data.x_train
    sets = {"train": inputs(net, data, train)}
    if net.n_test:
        sets["test"] = inputs(net, data, data.x_test)
    return {name: (sets[r], sets[c]) for name, (r, c) in spec.blocks().items()}, out_dim


def limit_digest(network: TrialSpec) -> str:
    """16 hex chars naming a network's limit on its data (``trial.builders.limit_key``):
    the same for every trial that differs only where the limit does not look (its seed,
    its training)."""
    blob = json.dumps(list(limit_key(network)), default=str, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def manifest_of(spec: GramSpec, blocks: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """The job's manifest (``spec.read_manifest``) before any precision is measured."""
    fields = json.loads(spec.to_json())
    fields.pop("output_dir")          # the same dir may be named by another path
    return {"spec": fields, "shapes": {b: [len(x1), len(x2)] for b, (x1, x2) in blocks.items()},
            "limit": limit_digest(spec.network)}


def check_manifest(out: str, manifest: dict) -> dict | None:
    """The manifest ``out`` holds (None: none yet), after refusing a dir that holds another
    job's tiles: another limit, data, tiling or shape (its spec describes the job; the
    trial fields that the limit does not read may differ)."""
    held = read_manifest(out)
    if held is None:
        return None
    fields = manifest["spec"]
    if any(held.get(k) != manifest[k] for k in ("limit", "shapes")) or \
            any(held["spec"].get(k) != fields.get(k) for k in ("tile", "eval_rows", "dtype")):
        raise SpecError(f"{out} holds another kernel job's tiles ({MANIFEST} differs); "
                        "give this one its own output_dir")
    return held


def check_job(spec: GramSpec) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
    """``job_blocks``, after refusing what the job cannot do: a network without a limit,
    data it cannot have, a dir holding another job's tiles. Writes nothing."""
    blocks, out_dim = job_blocks(spec)
    check_manifest(spec.output_dir, manifest_of(spec, blocks))
    return blocks, out_dim


def run_gram(spec: GramSpec, executor=None,
             on_progress: Callable[[GramProgress], None] | None = None,
             checked: tuple[dict, int] | None = None) -> GramRun:
    """Compute every tile of the job that the output dir lacks (module doc); ``executor``:
    anything with ``map_tiles(computation, tiles)`` yielding (tile, value) as they finish
    (default: this process, one after another; ``sweep.RayTileExecutor``: Ray actors);
    ``checked``: what ``check_job`` returned for ``spec`` (its data, not read again)."""
    started = time.perf_counter()
    blocks, out_dim = checked or check_job(spec)
    manifest = manifest_of(spec, blocks)
    if check_manifest(spec.output_dir, manifest) is None:     # again: the dir may have moved on
        write_text(spec.output_dir, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    computed = kept = entries = 0
    executor = executor or SerialExecutor()
    for name, (x1, x2) in blocks.items():
        tiles = plan_tiles(len(x1), len(x2), spec.tile, symmetric=x1 is x2)
        todo = missing_tiles(spec.output_dir, name, tiles)
        kept += len(tiles) - len(todo)
        work = LimitTiles(spec.network, x1, x2, out_dim, dtype=spec.dtype)
        done_here = 0
        for tile, value in executor.map_tiles(work, todo):
            value = np.asarray(value)
            write_tile(spec.output_dir, tile_path(name, tile), {"ntk": value[0],
                                                               "nngp": value[1]})
            done_here += 1
            entries += value[0].size
            if on_progress is not None:
                on_progress(GramProgress(
                    name, len(tiles) - len(todo) + done_here, len(tiles), entries,
                    time.perf_counter() - started, done_here,
                    getattr(executor, "seconds", {}).get(tile, float("nan"))))
        computed += done_here
    precision = {} if spec.dtype == "float64" else _precision(spec, blocks, out_dim)
    return GramRun(computed, kept, entries, time.perf_counter() - started, precision)


def _precision(spec: GramSpec, blocks: dict[str, tuple[np.ndarray, np.ndarray]],
               out_dim: int) -> dict[str, dict[str, float]]:
    """A float32 job's precision (module doc), measured once and kept in the manifest:
    block → kernel → max |K32 − K64| / max |K64| on the first ``PRECISION_SAMPLE`` rows
    and columns (a symmetric block's sample holds its diagonal, the pairs of a point with
    itself)."""
    from .matrix import KERNELS, GramMatrix

    manifest = read_manifest(spec.output_dir)
    if "precision" in manifest:
        return manifest["precision"]
    out = {}
    for name, (x1, x2) in blocks.items():
        s1, s2 = min(PRECISION_SAMPLE, len(x1)), min(PRECISION_SAMPLE, len(x2))
        exact = limit_kernels(spec.network, x1[:s1], None if x1 is x2 else x2[:s2],
                              out_dim=out_dim)
        out[name] = {}
        for kernel in KERNELS:
            stored = GramMatrix(spec.output_dir, name, kernel)[:s1, :s2].astype(np.float64)
            reference = getattr(exact, kernel)
            scale = max(float(np.abs(reference).max()), 1e-300)
            out[name][kernel] = float(np.abs(stored - reference).max()) / scale
    write_text(spec.output_dir, MANIFEST, json.dumps({**manifest, "precision": out},
                                                     indent=1, sort_keys=True))
    return out


def missing_tiles(out: str, block: str, tiles: Sequence[Tile]) -> list[Tile]:
    """The tiles without a whole, verified file, largest first (the long ones start first,
    so that the last to finish is short)."""
    todo = [t for t in tiles if read_tile(out, tile_path(block, t)) is None]
    return sorted(todo, key=lambda t: (t.r1 - t.r0) * (t.c1 - t.c0), reverse=True)
