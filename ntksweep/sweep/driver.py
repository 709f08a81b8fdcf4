"""The sweep driver (``SweepRun``): starts Ray, the actors and the tracker, schedules trials
on the long-lived actors, takes their messages, and is the only writer of MLflow and
Parquet (one writer: no lock races, works with SQLite and with a server).

Ray behaviour this relies on (docs/ARCHITECTURE.md, "Ray"): ``ActorPool`` wedges on a dead
actor, so the driver runs its own ``ray.wait`` loop over streaming generators. A trial that
raises inside ``run_trial`` comes back as status 'failed' (recorded, never retried: it is
deterministic), while a dead worker process (RayActorError / ActorDiedError) is replaced
and its trial re-queued up to ``retries`` times. Only the driver's Parquet write makes a
trial count, so an attempt lost with its worker leaves nothing behind and a trial never
appears twice.
"""

from __future__ import annotations

import errno
import logging
import signal
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError

from .. import console, phases, store
from ..consent import granted
from ..errors import UserError
from ..records import Record, Status, SweepMeta, TrialOutcome
from ..store.lock import DriverLock, LockLost
from ..sweep_spec import SweepSpec, spec_yaml
from ..sync import push_missing
from ..tracking.protocol import Untracked
from ..tracking.uri import recorded_form, redact
from ..trial_spec import TRIAL_FIELDS, TrialSpec
from .files import ship_data_files
from .limits import SharedLimits, share_limits
from .shape import WorkerShape, check_single_node_tracking, worker_shape
from .worker import Checkpoints, Finished, TrialWorker, no_cuda_for

__all__ = ["SweepRun"]


@dataclass
class _Attempt:
    """A trial attempt running on an actor: what the driver knows of it."""

    trial: TrialSpec
    attempt: int
    actor: Any
    worker: dict[str, Any]
    handle: int | None            # the tracker's handle of its MLflow run
    execution: str                # its id, in its Parquet row and on its MLflow run
    tries: int = 1                # attempts in this run of the sweep (retries count these)
    records: list[Record] = field(default_factory=list)   # streamed so far, logged


class SweepRun:
    """The driver's state for one run of a sweep, and its steps: ``start`` (Ray, actors,
    tracker, the output dir's metadata), ``loop`` (hand out trials, take messages, until
    done or stopped), and the handlers of each event."""

    def __init__(self, spec: SweepSpec, out: str, sweep_id: str,
                 todo: deque[tuple[TrialSpec, int]], attempts: dict[str, int] | None = None,
                 *, quiet: bool = False, on_event=None,
                 quarantined: dict[str, str] | None = None):
        self.spec, self.out, self.sweep_id, self.todo = spec, out, sweep_id, todo
        self.stored_attempts = attempts or {}
        self.quarantined = quarantined or {}     # trial_id → its files moved aside now
        self.quiet, self.on_event = quiet, on_event
        self.actors: list = []
        self.starting: dict = {}        # describe() ref → actor: it takes trials once up
        self.infos: dict = {}           # actor → its describe()
        self.idle: list = []
        self.running: dict[Any, _Attempt] = {}   # streaming generator → attempt
        self.counts: Counter = Counter()
        self.written_late = 0        # trials another driver committed after this one's plan
        self.retried = 0
        self.tries: dict[str, int] = {}   # trial_id → its try in this run (after a retry)
        self.start_failures = 0
        self.workers: list[dict] = []
        self.stop_requested: list[int] = []
        self.started_ray = False
        self.shape = WorkerShape(0, 0.0, 1.0)
        self.tracker = None
        self.limits = SharedLimits()       # its trials' shared limits (``limits``)
        self.data_files: dict[str, list] = {}    # data_path → its arrays' ref (``files``)
        self.lock: DriverLock | None = None
        self.disk_full: str | None = None   # why the sweep stopped early, if it was the disk
        self.lock_lost: str | None = None   # another driver took the output dir over

    # -- start --------------------------------------------------------------------------
    def start(self, address: str | None, num_cpus: int | None, uri: str, explicit: bool,
              tracking: bool) -> None:
        """Start Ray (unless running), check the cluster and the output dir, write the sweep's
        metadata, boot the actors and open the tracker; undo it all if any step fails."""
        if self.todo and not ray.is_initialized():
            # Ray resets its logger's level at init: keep what the caller set (the CLI quiets
            # the start-up notices unless --verbose)
            level = logging.getLogger("ray").level or logging.INFO
            phases.say(f"connecting to the Ray cluster at {address} …" if address else
                       f"starting a local Ray ({num_cpus or 'all'} CPUs) …", self.quiet)
            ray.init(address=address, num_cpus=None if address else num_cpus,
                     include_dashboard=False, log_to_driver=not self.quiet,
                     logging_level=level)
            self.started_ray = True
        try:
            if self.todo:
                if tracking:
                    check_single_node_tracking(uri, explicit)
                self.shape = worker_shape(self.spec, len(self.todo),
                                          all(t.device == "cpu" for t, _ in self.todo))
            store.check_writable(self.out)
            self.lock = DriverLock(self.out).acquire()
            sweep_yaml = spec_yaml(self.spec)
            store.write_text(self.out, "sweep.yaml", sweep_yaml)
            store.write_meta(self.out, SweepMeta(self.sweep_id, self.spec.name,
                                                 recorded_form(uri, self.out)))
            if self.todo:       # before the actors: the limit's tiles take their cores
                self.limits = share_limits(self.out, [t for t, _ in self.todo], self.shape,
                                           self.quiet)
                self.data_files = ship_data_files(t for t, _ in self.todo)
            for _ in range(self.shape.n if self.todo else 0):
                self._new_actor()  # they boot (seconds) while MLflow opens its store
            if self.todo:
                phases.say(f"Ray ready; {self.shape.n} workers starting; opening the MLflow "
                           f"store {redact(uri) if tracking else '(not tracked)'} …",
                           self.quiet)
            # MLflow's import (a second) runs while the actors boot, not before Ray's start
            from ..tracking.tracker import open_tracker

            self.tracker = open_tracker(uri, self.spec.name, self.sweep_id, tracked=tracking,
                                        sweep_yaml=sweep_yaml, axes=tuple(self.spec.axes()),
                                        description=self.spec.description,
                                        guard=self.lock.ensure_held)
            self._number_attempts()
            if tracking and not self.tracker.degraded:
                # trials a killed driver wrote to Parquet before its tracker sent their runs
                push_missing(self.tracker, self.out, self.sweep_id)
        except BaseException:
            self._release()
            raise

    def _number_attempts(self) -> None:
        """A trial run again gets the attempt after its last one, whether Parquet (a failed
        trial) or MLflow (every run of the trial: a killed or lost attempt, or a finished one
        whose Parquet record went to quarantine) remembers it."""
        made, tracked = self.stored_attempts, self.tracker.attempts
        self.todo = deque((t, 1 + max(made.get(t.trial_id, 0), tracked.get(t.trial_id, 0)))
                          for t, _ in self.todo)

    def _new_actor(self) -> None:
        # No runtime_env: Ray already sets OMP_NUM_THREADS to the actor's num_cpus, and the
        # actor sizes torch's pool itself. An env_vars runtime_env would make Ray start a
        # dedicated process per actor and leave the workers it prestarted for this driver
        # idle, polling, on the cores the trials need.
        shape = self.shape
        a = TrialWorker.options(num_gpus=shape.gpus, num_cpus=shape.cpus).remote(
            int(shape.cpus), granted())
        self.actors.append(a)
        self.starting[a.describe.remote()] = a

    def _release(self) -> None:
        for a in self.actors:
            _kill(a)
        if self.lock is not None:
            self.lock.release()
        if self.started_ray:
            ray.shutdown()

    # -- the loop -----------------------------------------------------------------------
    def loop(self) -> None:
        """Run until every trial is done or a stop is requested; always close the tracker
        and release the actors (a crash marks the sweep's run FAILED)."""
        progress = console.progress(len(self.todo), self.quiet,
                                    warmup=min(len(self.todo), max(1, self.shape.n)))
        old = {s: signal.signal(s, self._stop)
               for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        shown, crashed = None, None
        try:
            while (self.todo or self.running) and not self.stop_requested:
                self.lock.ensure_held()
                self._hand_out()
                ready, _ = ray.wait([*self.running, *self.starting], num_returns=1,
                                    timeout=1.0)
                for ref in ready:
                    self._on_ready(ref, progress)
                now = (len(self.running), self.counts[Status.FAILED.value],
                       self.counts[Status.DIVERGED.value], self.retried)
                if shown != now:
                    shown = now
                    progress.set_postfix(running=now[0], failed=now[1], diverged=now[2],
                                         retried=now[3], refresh=False)
        except KeyboardInterrupt:  # a second Ctrl-C while waiting on Ray
            self.stop_requested.append(signal.SIGINT)
        except LockLost as e:      # another driver took over: write nothing more
            self.lock_lost = str(e)
            raise
        except BaseException as e:
            crashed = f"{type(e).__name__}: {e}"
            raise
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            progress.close()
            self._close(crashed)

    @property
    def interrupted(self) -> bool:
        return bool(self.stop_requested)

    def _stop(self, signum, frame) -> None:
        # only a flag: an exception raised here would surface inside whatever call the
        # driver is in (an MLflow request, a Parquet write) instead of at a safe point
        self.stop_requested.append(signum)

    def _close(self, crashed: str | None) -> None:
        """End the runs and the sweep's parent (``crashed``: why the driver failed, a tag on
        the parent run), and release the actors, the lock and Ray."""
        if self.lock_lost:         # the runs and the parent are the other driver's now
            for a in self.actors:
                _kill(a)
            self.actors = []
            self.tracker.abandon(self.lock_lost)
            self._release()
            return
        for attempt in self.running.values():  # stopped, or the driver itself failed
            self.tracker.end_trial(attempt.handle, Status.KILLED)
        for a in self.actors:
            _kill(a)
        self.actors = []
        status = "FAILED" if crashed else "KILLED" if self.interrupted else "FINISHED"
        summary = {"error": crashed[-4000:]} if crashed else {}
        if not crashed and not isinstance(self.tracker, Untracked):  # the whole sweep so far
            summary = console.sweep_numbers(store.load_trials(self.out, columns=[
                *TRIAL_FIELDS, *console.SUMMARY_COLUMNS])) | self.limits.numbers()
        self.tracker.close(status, summary)
        self._release()

    def _hand_out(self) -> None:
        while self.todo and self.idle and not self.stop_requested:
            trial, attempt = self.todo.popleft()
            if self._written_by_another(trial):
                continue
            actor = self.idle.pop()
            worker = self.infos[actor]
            execution = uuid.uuid4().hex[:16]
            tags = {"ntksweep.execution": execution}
            if files := self.quarantined.get(trial.trial_id):
                tags["ntksweep.quarantined"] = files
            handle = self.tracker.start_trial(trial.trial_id, attempt, trial.to_dict(), worker,
                                              tags)
            if not self.running and not self.counts:      # the sweep's first trial
                gpus = f", GPU {worker['gpu_ids']}" if worker.get("gpu_ids") else ""
                phases.say(f"the first trial is running (on {worker.get('host', '?')}{gpus}); "
                           "progress follows", self.quiet)
            limit = self.limits.refs.get(trial.trial_id)
            data = self.data_files.get(trial.data_path) if trial.dataset == "file" else None
            self.running[actor.run.remote(trial, limit, data)] = _Attempt(
                trial, attempt, actor, worker, handle, execution,
                self.tries.get(trial.trial_id, 1))
            self._event("start", trial=trial.trial_id, attempt=attempt, worker=worker)

    def _written_by_another(self, trial: TrialSpec) -> bool:
        """A trial with no row when this sweep was planned whose row is there now: a driver
        this one took the output dir over from committed it after the plan (it was stopped
        between its lock check and its write). Running it again would give it a second
        finished run; the store's row stands, and sync completed that attempt's run. Only
        after a takeover: a released lock has no writer left behind (and the lookup is a
        request per trial on an object store)."""
        if not self.lock.took_over or trial.trial_id in self.stored_attempts \
                or not store.trial_written(self.out, trial):
            return False
        self.written_late += 1
        return True

    def _on_ready(self, ref, progress) -> None:
        if ref in self.starting:
            self._on_actor_up(ref)
            return
        attempt = self.running[ref]
        try:
            message = ray.get(next(ref))
        except StopIteration:
            self.running.pop(ref)
            self.idle.append(attempt.actor)
        except (RayActorError, ActorDiedError) as e:
            self._on_worker_died(ref, attempt, e, progress)
        except RayTaskError as e:  # raised outside run_trial's own handling
            self.running.pop(ref)
            self.idle.append(attempt.actor)
            self._finish(attempt, _failed(attempt, str(e)), progress)
        else:
            if isinstance(message, Checkpoints):
                self._log(attempt, message.records)
            else:
                self._on_finished(ref, attempt, message, progress)

    def _on_actor_up(self, ref) -> None:
        """An actor came up (on a node that may be new), or failed to."""
        actor = self.starting.pop(ref)
        try:
            self.infos[actor] = ray.get(ref)
        except (RayActorError, ActorDiedError) as e:
            self.start_failures += 1  # its node went away, or it cannot start
            if self.start_failures > 2 * self.shape.n + self.spec.retries:
                raise RuntimeError(f"trial workers keep failing to start; last: {e}") from None
            self._new_actor()
            return
        self._check_cuda(self.infos[actor])
        self.workers.append(self.infos[actor])
        self.idle.append(actor)

    def _check_cuda(self, info: dict) -> None:
        """Stop the sweep, before this actor runs a trial, where Ray gave it GPUs that its
        torch cannot use and trials would go there (device auto or cuda): each would fail."""
        why = no_cuda_for(info, "device: cpu, resources: {gpus_per_trial: 0}")
        if why and any(t.device == "auto" or t.device.startswith("cuda") for t, _ in self.todo):
            raise UserError(why)

    def _on_worker_died(self, ref, attempt: _Attempt, error: Exception, progress) -> None:
        self.running.pop(ref)
        self.tracker.end_trial(attempt.handle, Status.FAILED, {"error": f"worker died: {error}"})
        _kill(attempt.actor)
        self._new_actor()
        if attempt.tries <= self.spec.retries:
            self.retried += 1
            self.todo.appendleft((attempt.trial, attempt.attempt + 1))
            self.tries[attempt.trial.trial_id] = attempt.tries + 1
            self._event("retry", trial=attempt.trial.trial_id)
        else:
            self._finish(attempt, _failed(attempt, f"worker process died {attempt.tries} "
                                                   f"times; last: {error}"), progress)

    def _on_finished(self, ref, attempt: _Attempt, message: Finished, progress) -> None:
        # the actor takes its next trial before this one is written (not at end-of-stream)
        outcome = message.outcome
        self._log(attempt, outcome.records[len(attempt.records):])
        self.running.pop(ref)
        self.idle.append(attempt.actor)
        self._hand_out()
        self._finish(attempt, outcome, progress)
        self._event("end", trial=attempt.trial.trial_id, status=str(outcome.status))

    def _log(self, attempt: _Attempt, records: list[Record]) -> None:
        for rec in records:
            attempt.records.append(rec)
            self.tracker.log_record(attempt.handle, rec)
            self._event("record", trial=attempt.trial.trial_id, record=rec)

    def _finish(self, attempt: _Attempt, outcome: TrialOutcome, progress) -> None:
        """Write the outcome to Parquet (what makes the trial count), then end its run. A full
        disk stops the sweep as SIGTERM would: what was written stays, this trial runs again
        on resume."""
        self.lock.ensure_held()      # a driver that lost its output dir writes nothing
        try:                         # … checked again as the trial's row commits
            store.write_trial(self.out, self.sweep_id, attempt.trial, outcome,
                              attempts=attempt.attempt, host=attempt.worker.get("host", ""),
                              execution=attempt.execution, commit_guard=self.lock.ensure_held)
        except OSError as e:
            if not _disk_full(e):
                raise
            self.disk_full = (f"the disk holding {self.out} is full ({e}); free space there "
                              "(or use another output dir) and run the same command again")
            self.stop_requested.append(signal.SIGTERM)
            self.tracker.end_trial(attempt.handle, Status.KILLED, {"error": self.disk_full})
            return
        self.tracker.end_trial(attempt.handle, outcome.status, {
            "device": outcome.device, "error": (outcome.error or "")[-4000:] or None,
            "train_seconds": outcome.train_seconds, "kernel_seconds": outcome.kernel_seconds},
            summary=outcome.summary)
        self.counts[outcome.status.value] += 1
        progress.update(1)

    def _event(self, kind: str, **data) -> None:
        if self.on_event is not None:
            self.on_event(kind, data)


def _failed(attempt: _Attempt, error: str) -> TrialOutcome:
    """A trial that could not finish: the records it streamed, and why."""
    return TrialOutcome(attempt.trial.trial_id, Status.FAILED, list(attempt.records),
                        error=error, device="")


def _disk_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e)


def _kill(actor) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001  (already dead)
        pass
