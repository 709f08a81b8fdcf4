"""How a sweep's work is laid out on the Ray cluster: the trial actors' shape (how many,
with how many GPUs and CPUs), each trial's work estimate (the longest start first), and the
check that a multi-node cluster is not given the single-machine tracking default."""

from __future__ import annotations

from dataclasses import dataclass

import ray

from ..errors import SpecError, TrackingError
from ..sweep_spec import SweepSpec
from ..trial_spec import TrialSpec

__all__ = ["WorkerShape", "worker_shape", "work_estimate", "check_single_node_tracking"]


def check_single_node_tracking(uri: str, explicit: bool) -> None:
    """The SQLite default is for one machine: a multi-node sweep needs a tracking server that
    every user and node can reach (and that outlives the head node's disk)."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1 and not explicit and uri.startswith("sqlite:"):
        raise TrackingError(f"this Ray cluster has {len(alive)} nodes, but MLflow would use "
                            f"the single-machine SQLite default ({uri}); start `mlflow server` "
                            "(cluster/README.md) and pass --tracking-uri http://HOST:5000, or "
                            "set tracking_uri: in the spec (an explicit sqlite:/// URI is "
                            "accepted if you want the file on the driver's node)")


@dataclass(frozen=True)
class WorkerShape:
    """How many actors, with how many GPUs/CPUs each."""

    n: int
    gpus: float
    cpus: float


def worker_shape(spec: SweepSpec, n_trials: int, cpu_only: bool = False) -> WorkerShape:
    """``max_workers`` given: that many are requested (on an autoscaling cluster the ones
    that do not fit yet wait for new nodes); otherwise as many as the cluster holds now.
    ``gpus_per_trial: auto`` takes one GPU per actor on a cluster with GPUs, unless every
    trial asks for ``device: cpu`` (then a GPU would only cap the actors at one per GPU)."""
    res = ray.cluster_resources()
    gpus = spec.resources.gpus_per_trial
    if gpus == "auto":
        gpus = 1.0 if res.get("GPU", 0) >= 1 and not cpu_only else 0.0
    cpus = spec.resources.cpus_per_trial
    if cap := spec.resources.max_workers:
        return WorkerShape(min(cap, n_trials), float(gpus), float(cpus))
    if gpus > 0:
        n = int(res.get("GPU", 0) // gpus)
        if n < 1:
            raise SpecError(f"resources.gpus_per_trial={gpus} but the Ray cluster has "
                            f"{res.get('GPU', 0)} GPUs; set gpus_per_trial: 0 for CPU workers, "
                            "or max_workers: N to wait for an autoscaler to add GPU nodes")
    else:
        n = int(res.get("CPU", 1) // cpus)
    return WorkerShape(max(1, min(n, n_trials)), float(gpus), float(cpus))


def work_estimate(t: TrialSpec) -> float:
    """A trial's multiply-adds, roughly, to start the longest first (LPT scheduling): a sweep
    in grid order ends on its widest trials, one per worker, while the other workers idle.
    Weights ≈ depth·width²; training passes over them steps × batch rows times; each
    checkpoint's empirical NTK on the eval set ≈ M² passes, an ensemble's members one each.
    The checkpoint count is the asked-for one (``checkpoint_schedule`` would dedupe it
    exactly, at a cost per trial that adds up before a large sweep can start)."""
    n_checkpoints = 1 if t.steps == 0 else \
        len(t.checkpoint_steps) if t.checkpoint_steps else t.checkpoints
    return t.depth * t.width ** 2 * (t.steps * t.batch_rows(t.n_train)
                                     + (n_checkpoints + t.ensemble - 1) * t.n_eval ** 2)
