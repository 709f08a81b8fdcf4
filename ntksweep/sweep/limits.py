"""A sweep's shared limits. Trials that read one network's limit on one data set (the same
``trial.builders.limit_key``: seeds, widths in the NTK parametrization, learning rates, …)
get it from one kernel job (``ntksweep.gram``) run before the trials start, instead of each
worker computing it again: its tiles spread over actors shaped like the trial workers (on
their GPUs where they have them) and are written to ``OUT/limits/<digest>/``, so that a
stopped sweep resumes the job where it was. The driver reads the kernels back once and hands
them to the workers through Ray's object store (a worker on another node may not see the
output dir). The plan reads which trials share (``positional``) without Ray or torch.

Shared are the limits whose cost grows with pairs of positions — conv nets, Myrtle nets,
transformers, users' compositions on images or sequences. An MLP's limit is a closed form
per pair of points, cheaper to compute than to read back: each worker computes its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import phases
from ..architectures import input_kind
from ..data import data_shape
from ..trial_spec import TrialSpec

if TYPE_CHECKING:
    from .shape import WorkerShape

__all__ = ["SHARED_DIR", "SharedLimits", "positional", "shared_tile", "job_tile",
           "share_limits"]

SHARED_DIR = "limits"
# a shared limit's tile is never smaller: below it the per-tile overhead outweighs the
# balance more tiles give (benchmarks/RESULTS.md, "Kernel jobs")
MIN_TILE = 64


@dataclass(frozen=True)
class SharedLimits:
    """What a run of the sweep did for its shared limits: ``refs`` trial_id → a Ray object
    ref of its kernels; the jobs, the tiles computed and kept, the entries computed and the
    seconds (what the sweep's MLflow run records)."""

    refs: dict[str, Any] = field(default_factory=dict)
    jobs: int = 0
    computed: int = 0
    kept: int = 0
    entries: int = 0
    seconds: float = 0.0

    def numbers(self) -> dict[str, float]:
        """The parent run's metrics (none without a shared limit)."""
        if not self.jobs:
            return {}
        rate = self.entries / self.seconds if self.computed else float("nan")
        return {"shared_limits": self.jobs, "shared_limit_tiles_computed": self.computed,
                "shared_limit_tiles_kept": self.kept, "shared_limit_seconds": self.seconds,
                "shared_limit_entries_per_second": rate}


def positional(trials: Sequence[TrialSpec]) -> list[TrialSpec]:
    """The trials whose network reads images or sequences: their limit tracks pairs of
    positions (torch-free: a sweep of MLPs decides this without importing torch)."""
    kinds: dict[tuple, str] = {}
    out = []
    for t in trials:
        key = (t.dataset, *t.data_args().values(), t.architecture)
        if key not in kinds:
            kinds[key] = input_kind(t.architecture, data_shape(t.dataset, **t.data_args()))
        if kinds[key] != "vectors":
            out.append(t)
    return out


def shared_tile(points: int, actors: int) -> int:
    """Rows per tile of a limit on ``points`` points over ``actors`` actors: enough bands for
    about three upper-triangle tiles per actor (the longest start first, the last to finish
    is short), none under ``MIN_TILE``."""
    bands = math.ceil(math.sqrt(6 * actors))
    return max(MIN_TILE, math.ceil(points / bands))


def job_tile(job: str, points: int, actors: int) -> int:
    """The tile of the shared limit in ``job``: the one its tiles were cut to where it has
    begun (a sweep resumed with another number of workers keeps them), else
    ``shared_tile``."""
    from ..gram.spec import read_manifest

    held = read_manifest(job)
    return held["spec"]["tile"] if held is not None else shared_tile(points, actors)


class _OnDemand:
    """Tile actors started only when a job has tiles to compute (a resumed sweep whose
    limits are whole starts none)."""

    def __init__(self, shape: WorkerShape):
        self.shape, self.executor = shape, None

    @property
    def seconds(self) -> dict:
        return {} if self.executor is None else self.executor.seconds

    def map_tiles(self, computation, tiles):
        if not tiles:
            return iter(())
        if self.executor is None:
            from .shard import RayTileExecutor  # torch: only where there are tiles

            self.executor = RayTileExecutor(self.shape.n, num_gpus=self.shape.gpus,
                                            num_cpus=self.shape.cpus)
        return self.executor.map_tiles(computation, tiles)

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()


def share_limits(out: str, trials: Sequence[TrialSpec], shape: WorkerShape,
                 quiet: bool = False) -> SharedLimits:
    """Compute (or resume) the limit of every group of ``trials`` that reads one (module
    doc); its ``refs``: trial_id → a Ray object ref of its kernels (``ntk``, ``nngp`` on
    [eval; train], ``test_ntk``, ``test_nngp`` on test × [eval; train] where there is a test
    set) for each trial whose limit is shared."""
    candidates = positional(trials)
    if not candidates:
        return SharedLimits()
    started = time.perf_counter()
    import ray

    from ..gram.job import limit_digest
    from ..trial.builders import dataset_for, has_limit

    groups: dict[str, list[TrialSpec]] = {}
    for t in candidates:
        groups.setdefault(limit_digest(t), []).append(t)
    groups = {d: ts for d, ts in groups.items()
              if has_limit(ts[0], dataset_for(ts[0]).out_dim)}
    refs: dict[str, Any] = {}
    runs = []
    executor = _OnDemand(shape)
    try:
        for i, (digest, members) in enumerate(groups.items(), 1):
            phases.say(f"shared limit {i}/{len(groups)}: {_describe(members)}", quiet)
            kernels, run = _compute(out, digest, members[0], executor, shape.n, quiet)
            runs.append(run)
            ref = ray.put(kernels)
            refs.update((t.trial_id, ref) for t in members)
    finally:
        executor.shutdown()
    return SharedLimits(refs, len(runs), sum(r.computed for r in runs),
                        sum(r.kept for r in runs), sum(r.entries for r in runs),
                        time.perf_counter() - started)


def _describe(members: list[TrialSpec]) -> str:
    t = members[0]
    return (f"{t.architecture} depth {t.depth} on {t.dataset} ({t.n_eval} eval + {t.n_train} "
            f"train points{f', {t.n_test} test' if t.n_test else ''}), read by "
            f"{len(members)} trial(s)")


def _compute(out: str, digest: str, network: TrialSpec, executor, actors: int,
             quiet: bool):
    """One group's kernel job, run (or resumed) to the end: its kernels read back, and the
    run (``gram.job.GramRun``)."""
    from ..gram.command import progress_lines
    from ..gram.job import run_gram
    from ..gram.matrix import GramMatrix
    from ..gram.spec import GramSpec

    job = f"{str(out).rstrip('/')}/{SHARED_DIR}/{digest}"
    spec = GramSpec(f"limit-{digest}", job, network,
                    job_tile(job, network.n_eval + network.n_train, actors), eval_rows=True)
    run = run_gram(spec, executor, on_progress=None if quiet else progress_lines())
    if run.kept:
        phases.say(f"  {run.kept} tile(s) kept from before, {run.computed} computed", quiet)
    blocks = {"": "train", "test_": "test"} if network.n_test else {"": "train"}
    return {prefix + kernel: np.asarray(GramMatrix(spec.output_dir, block, kernel))
            for prefix, block in blocks.items() for kernel in ("ntk", "nngp")}, run
