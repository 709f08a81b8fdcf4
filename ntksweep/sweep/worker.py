"""The long-lived trial actor: one per GPU (or per ``cpus_per_trial`` CPU slot)."""

from __future__ import annotations

import gc
import os
import queue
import socket
import threading
from dataclasses import dataclass

import ray

from ..consent import grant_imports
from ..records import Record, TrialOutcome
from ..trial_spec import TrialSpec

_DONE = object()


@dataclass(frozen=True)
class Checkpoints:
    """Checkpoint records measured since the last message, in order."""

    records: list[Record]


@dataclass(frozen=True)
class Finished:
    """The trial's outcome: every record (the driver logs those it has not seen yet) and its
    kept arrays. The last message of a trial."""

    outcome: TrialOutcome


def _ready(items: queue.Queue) -> list:
    """The next item (waiting for it) and every one already queued behind it."""
    batch = [items.get()]
    while batch[-1] is not _DONE:
        try:
            batch.append(items.get_nowait())
        except queue.Empty:
            break
    return batch


def device_facts() -> dict:
    """What ``no_cuda_for`` reads, in an actor: its host, the GPUs Ray gave it, whether its
    torch can use CUDA, and that torch's version — plain values: the driver unpickles them
    without torch (``torch.__version__`` is a TorchVersion, whose unpickling imports torch)."""
    import torch

    return {"host": socket.gethostname(), "gpu_ids": ",".join(map(str, ray.get_gpu_ids())),
            "cuda": torch.cuda.is_available(), "torch": str(torch.__version__)}


def no_cuda_for(info: dict, cpu_instead: str) -> str | None:
    """Why an actor that Ray gave GPUs cannot use them (its torch has no CUDA: a CPU build on
    a GPU node, say), in one line; None when it can or was given none. ``info``: the actor's
    host, gpu_ids, cuda and torch; ``cpu_instead``: how to compute on CPUs instead."""
    if not info.get("gpu_ids") or info.get("cuda"):
        return None
    return (f"Ray gave the worker on {info.get('host')} GPU {info['gpu_ids']}, but torch "
            f"{info.get('torch')} there cannot use CUDA (a CPU build, or no driver): install "
            f"a CUDA build of torch on that node, or compute on CPUs ({cpu_instead})")


@ray.remote
class TrialWorker:
    """Runs trial after trial, keeping per-actor caches (data sets, Θ_∞) between them."""

    def __init__(self, num_threads: int = 1, allowed_imports: str = ""):
        grant_imports(allowed_imports)         # the driver's consent (``consent``)
        # torch and the trial code load here, in the actor: the driver that defines this
        # class never imports torch (a second and a half off every sweep's start)
        import torch

        from ..trial import TrialCache, warm_up

        torch.set_num_threads(max(1, num_threads))  # its CPU share: actors must not oversubscribe
        self.cache = TrialCache()
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        self._allocated = 0  # CUDA bytes still allocated after the last trial
        # One-off costs (imports, the CUDA context) are paid beside start-up, and kept out
        # of the first trial's wall time: run() waits for this before it starts the clock.
        # In a thread, so that describe() answers at once and the driver hands this actor
        # a trial as soon as it is up (blocking here, the first actor to be warm could take
        # a short sweep's every trial). A failure shows again, recorded, in real trials.
        self._warm = threading.Thread(target=warm_up, args=("cuda:0" if self.gpu_ids else "cpu",),
                                      daemon=True, name="warm-up")
        self._warm.start()

    def describe(self) -> dict:
        import torch

        return {**device_facts(), "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id(),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                "torch_threads": torch.get_num_threads(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "")}

    def run(self, spec: TrialSpec, limit: dict | None = None, data: list | None = None):
        """Stream ``Checkpoints`` as checkpoints are measured, then one ``Finished``;
        ``limit``: the trial's limit kernels where the sweep computed them once for every
        trial that reads them (``sweep.limits``); ``data``: its data file's arrays as the
        driver read them (``sweep.files``).

        Records that are ready together travel as one message, and those still queued when
        the trial ends ride with its outcome: each message is a round trip through Ray and a
        wake-up of the driver, and a short trial's checkpoints can come faster than that.

        A CPU actor on a GPU node still sees every GPU (Ray leaves CUDA_VISIBLE_DEVICES
        unset), so device 'auto' resolves to cuda only when Ray assigned this actor a GPU.
        """
        self._warm.join()
        if data is not None:
            from .files import receive_data_file

            receive_data_file(spec.data_path, data)
        if limit is not None:
            from ..trial.builders import cache_shared_limit

            cache_shared_limit(spec, self.cache, limit)
        if spec.device == "auto":
            spec = spec.replace(device="cuda:0" if self.gpu_ids else "cpu")
        items: queue.Queue = queue.Queue()
        box = {}

        def target():
            try:
                from ..trial import run_trial

                box["outcome"] = run_trial(spec, on_checkpoint=items.put, cache=self.cache)
            finally:
                items.put(_DONE)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        while (batch := _ready(items))[-1] is not _DONE:
            yield Checkpoints(batch)
        thread.join()
        outcome = box.pop("outcome")
        self._free()
        yield Finished(outcome)

    def _free(self) -> None:
        """Hand the trial's cached GPU memory back. Reference counting has already freed the
        model; a full ``gc.collect`` (slow with torch loaded: a floor under every short
        trial) runs only when allocated memory grew since the last trial, i.e. when reference
        cycles are holding tensors."""
        if not self.gpu_ids:
            return
        import torch

        if torch.cuda.is_initialized():
            if torch.cuda.memory_allocated() > self._allocated:
                gc.collect()
            self._allocated = torch.cuda.memory_allocated()
            torch.cuda.empty_cache()
