"""Sharding one empirical NTK's tiles over Ray actors (the executor seam of
``ntksweep.kernels.empirical_ntk``).

Each actor receives the tile computation (model + inputs) once through the object store,
moves it to its own GPU when Ray gave it one (``CUDA_VISIBLE_DEVICES`` → ``cuda:0``), and
returns tiles as numpy (zero-copy through the object store; torch tensors would be pickled).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import ray

from ..consent import grant_imports, granted
from ..errors import UserError
from ..kernels.tiling import Tile, TileComputation
from .worker import device_facts, no_cuda_for


@ray.remote
class _TileWorker:
    def __init__(self, allowed_imports: str = ""):
        grant_imports(allowed_imports)         # the driver's consent (``consent``)
        self._computation: TileComputation | None = None

    def describe(self) -> dict:
        return device_facts()

    def load(self, computation: TileComputation) -> str:
        """Take the computation onto this actor's device; say which (a GPU by its name)."""
        import torch

        device = "cuda:0" if ray.get_gpu_ids() else "cpu"   # usable: checked at start
        self._computation = computation.to(device)
        return f"cuda ({torch.cuda.get_device_name(0)})" if device != "cpu" else "cpu"

    def compute(self, tile: Tile) -> tuple[np.ndarray, float]:
        """The tile, and the seconds it took here."""
        import time

        started = time.perf_counter()
        value = self._computation(tile).cpu().numpy()
        return value, time.perf_counter() - started

    def where(self) -> tuple[int, str]:
        """(this actor's process id, its node's id)."""
        import os

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def unload(self) -> None:
        import gc

        import torch

        self._computation = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def local_tile_executor(workers: int, address: str | None = None,
                        gpus_per_worker: float | None = None) -> RayTileExecutor:
    """``workers`` tile actors of one CPU and ``gpus_per_worker`` GPUs each (default: one
    where the cluster has GPUs, else none) on the Ray cluster at ``address`` (default: a
    local Ray of ``workers`` CPUs and this machine's GPUs, started quietly unless one runs
    already). ``UserError`` before any actor starts where the cluster has too few GPUs (Ray
    would wait for them forever)."""
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else workers,
                 include_dashboard=False, log_to_driver=False)
    have = ray.cluster_resources().get("GPU", 0)
    gpus = (1.0 if have else 0.0) if gpus_per_worker is None else gpus_per_worker
    if gpus < 0 or workers * gpus > have:
        raise UserError(f"{workers} tile workers of {gpus:g} GPUs need "
                        f"{workers * gpus:g}; the Ray cluster has {have:g} (fewer workers, "
                        "--gpus-per-worker 0 for CPUs, or a fraction to share a GPU)")
    return RayTileExecutor(workers, num_gpus=gpus)


class RayTileExecutor:
    """Spreads tiles over ``num_actors`` Ray actors (each ``num_gpus`` GPUs, ``num_cpus`` CPUs).

    Ray must be initialised by the caller (``ray.init(...)``) or is started locally.
    Use as a context manager, or call ``shutdown()``, to release the actors. Construction
    waits for the actors and raises ``UserError`` where Ray gave one GPUs that its torch
    cannot use.
    """

    # a tile whose actor died this many times is not tried again (it kills its worker)
    MAX_TRIES = 3

    def __init__(self, num_actors: int = 2, *, num_gpus: float = 0, num_cpus: float = 1):
        if num_actors < 1:
            raise UserError(f"num_actors must be >= 1; got {num_actors}")
        if not ray.is_initialized():
            ray.init()
        self.options = {"num_gpus": num_gpus, "num_cpus": num_cpus}    # each actor's
        self.actors = self._start(num_actors)
        self.devices: list[str] = []
        self.replaced = 0          # actors that died and were replaced
        self.seconds: dict[Tile, float] = {}   # each tile's, on its actor

    def map_tiles(self, computation: TileComputation,
                  tiles: Sequence[Tile]) -> Iterator[tuple[Tile, np.ndarray]]:
        """The tiles as they finish; an actor that dies (its process killed, its node lost)
        is replaced and its tile computed again on the new one."""
        ref = ray.put(computation)
        self.devices = ray.get([a.load.remote(ref) for a in self.actors])
        queue, pending, idle = list(tiles), {}, list(self.actors)
        tries: dict[Tile, int] = {}
        try:
            while queue or pending:
                while queue and idle:  # one tile in flight per actor: bounded memory
                    actor, tile = idle.pop(), queue.pop(0)
                    pending[actor.compute.remote(tile)] = (actor, tile)
                done, _ = ray.wait(list(pending), num_returns=1)
                actor, tile = pending.pop(done[0])
                try:
                    value, self.seconds[tile] = ray.get(done[0])
                except ray.exceptions.RayActorError:
                    tries[tile] = tries.get(tile, 0) + 1
                    if tries[tile] >= self.MAX_TRIES:
                        raise
                    idle.append(self._replace(actor, ref))
                    queue.insert(0, tile)
                    continue
                idle.append(actor)
                yield tile, value
        finally:
            ray.get([a.unload.remote() for a in self.actors])

    def _start(self, n: int) -> list:
        """``n`` new actors, up; ``UserError`` where Ray gave one a GPU its torch cannot use
        (refused, not computed on its CPU instead)."""
        actors = [_TileWorker.options(**self.options).remote(granted()) for _ in range(n)]
        for info in ray.get([a.describe.remote() for a in actors]):
            if why := no_cuda_for(info, "tile workers of no GPU: --gpus-per-worker 0"):
                for actor in actors:
                    ray.kill(actor)
                raise UserError(why)
        return actors

    def _replace(self, dead, ref):
        """A new actor in the dead one's place, loaded with the computation."""
        fresh, = self._start(1)
        ray.get(fresh.load.remote(ref))
        self.actors[self.actors.index(dead)] = fresh
        self.replaced += 1
        return fresh

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def __enter__(self) -> RayTileExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
