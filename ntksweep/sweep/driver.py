"""The sweep driver: schedules trials on long-lived Ray actors and is the only writer of
MLflow and Parquet (one writer: no lock races, works with SQLite and with a server).

Measured Ray behaviour this relies on (shared/NOTES.md): ActorPool wedges on a dead actor,
so we run our own ``ray.wait`` loop over streaming generators; a trial that raises inside
``run_trial`` comes back as status 'failed' (recorded, never retried: it is deterministic),
while a dead worker process (RayActorError / ActorDiedError) is replaced and its trial
re-queued up to ``retries`` times. Only the driver's Parquet write makes a trial count, so
an attempt lost with its worker leaves nothing behind and a trial never appears twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import ray
import yaml
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from .. import store
from ..config import TrialSpec
from ..spec import SweepSpec
from ..tracking import Tracker, Untracked, check_tracking_uri, default_tracking_uri
from ..train import batch_rows
from .worker import TrialWorker

__all__ = ["SweepSummary", "run_sweep", "plan_sweep", "sweep_id_of", "check_output_dir",
           "check_single_node_tracking"]


@dataclass(frozen=True)
class SweepSummary:
    sweep_id: str
    out_dir: str
    total: int
    skipped: int
    counts: dict[str, int]
    retried: int
    wall_seconds: float
    interrupted: bool = False
    tracking_uri: str = ""                # "" when the sweep was not tracked in MLflow
    tracking_degraded: str | None = None
    workers: list[dict] = field(default_factory=list)


def sweep_id_of(spec: SweepSpec) -> str:
    """What a sweep measures (name, base, axes), not how it runs (resources, retries)."""
    blob = json.dumps({"name": spec.name, "base": spec.base, "grid": spec.grid, "zip": spec.zip},
                      sort_keys=True, default=list)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def check_output_dir(spec: SweepSpec, force: bool = False) -> str:
    """Refuse an output dir (a path or an ``s3://`` URI) that holds a different sweep unless
    ``force``; reads only."""
    out = spec.out_dir
    held = store.read_text(out, "sweep.json")
    sid = sweep_id_of(spec)
    if held is not None and not force:
        held = json.loads(held)
        if held.get("sweep_id") != sid:
            raise ValueError(f"output dir {out!r} holds a different sweep "
                             f"({held.get('name')!r}, id {held.get('sweep_id')}); use another "
                             "output dir, or --force to add to it anyway")
    return out


def check_single_node_tracking(uri: str, explicit: bool) -> None:
    """The SQLite default is for one machine: a multi-node sweep needs a tracking server that
    every user and node can reach (and that outlives the head node's disk)."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1 and not explicit and uri.startswith("sqlite:"):
        raise ValueError(f"this Ray cluster has {len(alive)} nodes, but MLflow would use the "
                         f"single-machine SQLite default ({uri}); start `mlflow server` "
                         "(cluster/README.md) and pass --tracking-uri http://HOST:5000, or set "
                         "tracking_uri: in the spec (an explicit sqlite:/// URI is accepted "
                         "if you want the file on the driver's node)")


def _plan_state(status: str | None) -> str:
    """'todo', a done status (skipped on resume), or 'rerun:<status>' (failed, killed)."""
    if status is None:
        return "todo"
    return status if status in store.DONE_STATUSES else f"rerun:{status}"


def plan_sweep(spec: SweepSpec) -> dict[str, Any]:
    """What a run would do: every trial with its id and whether it is already done."""
    done = store.finished_trials(spec.out_dir)
    rows = [{"trial_id": t.trial_id, **{k: getattr(t, k) for k in spec.axes()},
             "state": _plan_state(done.get(t.trial_id))} for t in spec.trials()]
    return {"sweep_id": sweep_id_of(spec), "out_dir": spec.out_dir, "trials": rows,
            "axes": {k: list(v) for k, v in spec.axes().items()}}


def _worker_shape(spec: SweepSpec, n_trials: int, cpu_only: bool = False
                  ) -> tuple[int, float, float]:
    """How many actors, with how many GPUs/CPUs each. ``max_workers`` given: that many are
    requested (on an autoscaling cluster the ones that do not fit yet wait for new nodes);
    otherwise as many as the cluster holds now. ``gpus_per_trial: auto`` takes one GPU per
    actor on a cluster with GPUs, unless every trial asks for ``device: cpu`` (then a GPU
    would only cap the actors at one per GPU)."""
    res = ray.cluster_resources()
    gpus = spec.resources.gpus_per_trial
    if gpus == "auto":
        gpus = 1.0 if res.get("GPU", 0) >= 1 and not cpu_only else 0.0
    cpus = spec.resources.cpus_per_trial
    cap = spec.resources.max_workers
    if cap:
        return min(cap, n_trials), float(gpus), float(cpus)
    if gpus > 0:
        n = int(res.get("GPU", 0) // gpus)
        if n < 1:
            raise ValueError(f"resources.gpus_per_trial={gpus} but the Ray cluster has "
                             f"{res.get('GPU', 0)} GPUs; set gpus_per_trial: 0 for CPU workers, "
                             "or max_workers: N to wait for an autoscaler to add GPU nodes")
    else:
        n = int(res.get("CPU", 1) // cpus)
    return max(1, min(n, n_trials)), float(gpus), float(cpus)


def run_sweep(spec: SweepSpec, *, address: str | None = None, tracking_uri: str | None = None,
              force: bool = False, quiet: bool = False, num_cpus: int | None = None,
              tracking: bool = True, on_event=None) -> SweepSummary:
    """Run every trial of ``spec`` not already done in its output dir; see the module doc.
    ``tracking=False``: Parquet only, no MLflow runs (``ntksweep sync`` pushes them later);
    the output dir still names the tracking URI that sync would use."""
    started = time.perf_counter()
    explicit = tracking_uri or spec.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    try:
        uri = explicit or default_tracking_uri(spec.out_dir)
    except ValueError:  # an object-store output dir: only an untracked sweep needs no server
        if tracking:
            raise
        uri = ""
    if uri:
        check_tracking_uri(uri)
    out = check_output_dir(spec, force)
    sid = sweep_id_of(spec)
    trials = spec.trials()
    done = store.finished_trials(out)
    pending = [t for t in trials if done.get(t.trial_id) not in store.DONE_STATUSES]
    # longest first; the sort is stable (also reversed), so ties stay in grid order
    todo = deque((t, 1) for t in sorted(pending, key=_work, reverse=True))
    skipped = len(trials) - len(todo)
    started_ray = False
    if todo and not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else num_cpus,
                 include_dashboard=False, log_to_driver=not quiet)
        started_ray = True
    actors: list = []
    starting: dict = {}  # describe() ref → actor: an actor takes trials once it is up

    def new_actor():
        # No runtime_env: Ray already sets OMP_NUM_THREADS to the actor's num_cpus, and the
        # actor sizes torch's pool itself. An env_vars runtime_env would make Ray start a
        # dedicated process per actor (measured: ~1 s later up) and leave the workers it
        # prestarted for this driver idle, polling, on the cores the trials need.
        a = TrialWorker.options(num_gpus=gpus, num_cpus=cpus).remote(int(cpus))
        actors.append(a)
        starting[a.describe.remote()] = a

    try:
        if todo:
            if tracking:
                check_single_node_tracking(uri, bool(explicit))
            n_workers, gpus, cpus = _worker_shape(spec, len(todo),
                                                  all(t.device == "cpu" for t, _ in todo))
        store.check_writable(out)
        sweep_yaml = yaml.safe_dump(spec.source, sort_keys=False)
        store.write_text(out, "sweep.yaml", sweep_yaml)
        store.write_text(out, "sweep.json", json.dumps({"sweep_id": sid, "name": spec.name,
                                                        "tracking_uri": uri}, indent=1))
        for _ in range(n_workers if todo else 0):
            new_actor()  # they boot (seconds: a process, torch) while MLflow opens its store
        tracker = Tracker(uri, spec.name, sid, sweep_yaml) if tracking else Untracked()
    except BaseException:
        for a in actors:
            _kill(a)
        if started_ray:
            ray.shutdown()
        raise
    counts: Counter = Counter()
    retried = 0
    workers: list[dict] = []
    running: dict = {}  # generator → state
    progress = _progress(len(todo), quiet)

    stop_requested: list[int] = []

    def stop(signum, frame):
        # only a flag: an exception raised here would surface inside whatever call the
        # driver is in (an MLflow request, a Parquet write) instead of at a safe point
        stop_requested.append(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}

    start_failures = 0
    infos: dict = {}

    def finish(state, status, error, summary=None, arrays=None):
        trial, attempt = state["trial"], state["attempt"]
        paths = {kind: {int(step): store.save_array(out, kind, trial.trial_id, step, a)
                        for step, a in kept.items()} for kind, kept in (arrays or {}).items()}
        summary = summary or {}
        store.write_trial(out, trial_id=trial.trial_id, sweep_id=sid, spec=trial.to_dict(),
                          status=status, records=state["records"], attempts=attempt, error=error,
                          device=summary.get("device", ""), host=state["worker"].get("host", ""),
                          wall_seconds=summary.get("wall_seconds", float("nan")),
                          kernel_paths=paths.get("kernels"), output_paths=paths.get("outputs"))
        tracker.end_trial(state["run_id"], status, {
            "device": summary.get("device"), "error": (error or "")[-4000:] or None,
            "train_seconds": summary.get("train_seconds"),
            "kernel_seconds": summary.get("kernel_seconds")})
        counts[status] += 1
        progress.update(1)

    def launch(actor, worker_info):
        trial, attempt = todo.popleft()
        run_id = tracker.start_trial(trial.trial_id, attempt, trial.to_dict(), worker_info)
        gen = actor.run.remote(trial.to_dict())
        running[gen] = {"trial": trial, "attempt": attempt, "actor": actor, "records": [],
                        "run_id": run_id, "worker": worker_info}
        _event(on_event, "start", trial=trial.trial_id, attempt=attempt, worker=worker_info)

    idle: list = []

    def hand_out():
        while todo and idle and not stop_requested:
            a = idle.pop()
            launch(a, infos[a])

    def record(state, records):
        for rec in records:
            state["records"].append(rec)
            tracker.log_record(state["run_id"], rec)
            _event(on_event, "record", trial=state["trial"].trial_id, record=rec)

    shown, crashed = None, False
    try:
        while (todo or running) and not stop_requested:
            hand_out()
            ready, _ = ray.wait([*running, *starting], num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in starting:  # an actor came up (on a node that may be new)
                    actor = starting.pop(ref)
                    try:
                        infos[actor] = ray.get(ref)
                    except (RayActorError, ActorDiedError) as e:
                        start_failures += 1  # its node went away, or it cannot start
                        if start_failures > 2 * n_workers + spec.retries:
                            raise RuntimeError(f"trial workers keep failing to start; last: "
                                               f"{e}") from None
                        new_actor()
                        continue
                    workers.append(infos[actor])
                    idle.append(actor)
                    continue
                gen = ref
                state = running[gen]
                try:
                    item = ray.get(next(gen))
                except StopIteration:
                    running.pop(gen)
                    idle.append(state["actor"])
                    continue
                except (RayActorError, ActorDiedError) as e:
                    running.pop(gen)
                    actor = state["actor"]
                    tracker.end_trial(state["run_id"], "failed", {"error": f"worker died: {e}"})
                    _kill(actor)
                    new_actor()
                    if state["attempt"] <= spec.retries:
                        retried += 1
                        todo.appendleft((state["trial"], state["attempt"] + 1))
                        _event(on_event, "retry", trial=state["trial"].trial_id)
                    else:
                        finish(state, "failed", f"worker process died {state['attempt']} times;"
                               f" last: {e}")
                    continue
                except RayTaskError as e:  # raised outside run_trial's own handling
                    running.pop(gen)
                    idle.append(state["actor"])
                    finish(state, "failed", str(e))
                    continue
                if item[0] == "records":
                    record(state, item[1])
                else:  # the last item: the actor takes its next trial before this one is
                    _, summary, arrays, tail = item  # written (not at end-of-stream)
                    record(state, tail)
                    running.pop(gen)
                    idle.append(state["actor"])
                    hand_out()
                    finish(state, summary["status"], summary["error"], summary, arrays)
                    _event(on_event, "end", trial=state["trial"].trial_id,
                           status=summary["status"])
            if shown != (now := (len(running), counts["failed"], counts["diverged"], retried)):
                shown = now
                progress.set_postfix(running=now[0], failed=now[1], diverged=now[2],
                                     retried=now[3], refresh=False)
    except KeyboardInterrupt:  # a second Ctrl-C while waiting on Ray
        stop_requested.append(signal.SIGINT)
    except BaseException:
        crashed = True
        raise
    finally:
        interrupted = bool(stop_requested)
        for state in running.values():  # stopped, or the driver itself failed
            tracker.end_trial(state["run_id"], "killed")
        for s, handler in old.items():
            signal.signal(s, handler)
        progress.close()
        for a in actors:
            _kill(a)
        tracker.close("FAILED" if crashed else "KILLED" if interrupted else "FINISHED",
                      {"completed": counts["completed"], "failed": counts["failed"],
                       "diverged": counts["diverged"]})
        if started_ray:
            ray.shutdown()
    return SweepSummary(sid, out, len(trials), skipped, dict(counts), retried,
                        time.perf_counter() - started, interrupted, uri if tracking else "",
                        tracker.degraded, workers)


def _work(t: TrialSpec) -> float:
    """A trial's multiply-adds, roughly, to start the longest first (LPT scheduling): a sweep
    in grid order ends on its widest trials, one per worker, while the other workers idle.
    Weights ≈ depth·width²; training passes over them steps × batch rows times; each
    checkpoint's empirical NTK on the eval set ≈ M² passes. The checkpoint count is the
    asked-for one (``checkpoint_schedule`` would dedupe it exactly, at ~70 µs per trial:
    0.7 s before a 10⁴-trial sweep could start)."""
    n_checkpoints = len(t.checkpoint_steps) if t.checkpoint_steps else t.checkpoints
    return t.depth * t.width ** 2 * (t.steps * batch_rows(t, t.n_train)
                                     + n_checkpoints * t.n_eval ** 2)


def _kill(actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001  (already dead)
        pass


def _event(callback, kind: str, **data) -> None:
    if callback is not None:
        callback(kind, data)


def _progress(total: int, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="trials", unit="trial", disable=quiet, dynamic_ncols=True)
