"""One driver per output dir, fenced: a driver stopped long enough to be taken over (Ctrl-Z,
a suspended laptop, a paused VM) finds out before its next write and writes nothing more;
its heartbeat never overwrites the new driver's lock. Waits are on conditions (a lock gone
stale, a token changed), never on the clock."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

import ntksweep
from ntksweep.errors import OutputDirError
from ntksweep.store import lock
from ntksweep.store.lock import LockLost


def _record(out):
    return json.loads((out / lock.LOCK_FILE).read_text())


def _until(condition, what: str, proc: subprocess.Popen | None = None):
    """Poll until ``condition()``; a process that ends first fails the test with its output
    (a hang is pytest-timeout's to end)."""
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the driver ended before {what}; it said:\n"
                                 + proc.communicate(timeout=60)[0][-3000:])
        time.sleep(0.05)


HOLDER = """
import sys, time
from ntksweep.store.lock import DriverLock, LockLost
held = DriverLock(sys.argv[1]).acquire()
print("held", held.token, flush=True)
sys.stdin.readline()                  # the test says when to write again
try:
    held.ensure_held()
    print("still mine", flush=True)
except LockLost as e:
    print("lost:", e, flush=True)
held.release()
"""
FAST = {"NTKSWEEP_LOCK_STALE": "1.5", "NTKSWEEP_LOCK_HEARTBEAT": "0.1"}


def _fast(monkeypatch):
    """This process's locks take over as fast as a ``FAST`` holder's expires."""
    stale, beat = float(FAST["NTKSWEEP_LOCK_STALE"]), float(FAST["NTKSWEEP_LOCK_HEARTBEAT"])
    for name, value in {"STALE": stale, "HEARTBEAT": beat, "LEASE": stale / 3,
                        "RECLAIM": 2 * beat + lock.SETTLE}.items():
        monkeypatch.setattr(lock, name, value)


def _holder(out):
    """A driver-like process that holds ``out``'s lock, and writes when told to."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env={**os.environ, **FAST},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("held"), line
    return proc, line.split()[1]


def test_a_holder_taken_over_while_stopped_may_not_write_and_never_overwrites(tmp_path,
                                                                             monkeypatch):
    _fast(monkeypatch)
    first, token = _holder(tmp_path)
    assert _record(tmp_path)["generation"] == 1
    first.send_signal(signal.SIGSTOP)         # Ctrl-Z: no heartbeat
    try:
        _until(lambda: lock.live_holder(tmp_path) is None, "stale")
        second = lock.DriverLock(tmp_path).acquire()
    finally:
        first.send_signal(signal.SIGCONT)
    assert _record(tmp_path)["token"] == second.token and _record(tmp_path)["generation"] == 2
    said, _ = first.communicate("write\n", timeout=60)   # its next write is refused
    assert said.startswith("lost:") and f"pid {os.getpid()}" in said, said
    assert _record(tmp_path)["token"] == second.token   # its heartbeat and release left it
    second.ensure_held()
    second.release()
    assert not (tmp_path / lock.LOCK_FILE).exists()


def test_a_write_that_lands_late_is_undone_and_its_writer_finds_it_lost(tmp_path, monkeypatch):
    """A holder stopped between reading its own token and writing its heartbeat writes late,
    over the record of the driver that took over meanwhile: the newer generation restores its
    record, and the late writer's next write is refused. The stop is a write held back."""
    _fast(monkeypatch)
    first = lock.DriverLock(tmp_path)
    armed, stopped, resumed = threading.Event(), threading.Event(), threading.Event()

    def held_back(out, name, text):
        if armed.is_set() and first.token in text:
            stopped.set()
            resumed.wait()
        lock_write(out, name, text)

    lock_write = lock.write_text
    monkeypatch.setattr(lock, "write_text", held_back)
    first.acquire()
    armed.set()
    assert stopped.wait(60)                    # its heartbeat read its token; the write waits
    armed.clear()
    _until(lambda: lock.live_holder(tmp_path) is None, "stale")
    second = lock.DriverLock(tmp_path).acquire()
    assert (second.took_over, _record(tmp_path)["generation"]) == (True, 2)
    resumed.set()                              # the late write lands over the new record
    with pytest.raises(LockLost):
        first.ensure_held()
    _until(lambda: _record(tmp_path)["token"] == second.token, "the newer holder's record")
    second.ensure_held()
    first.release()                            # leaves the newer holder's record alone
    assert _record(tmp_path)["token"] == second.token
    second.release()
    assert not (tmp_path / lock.LOCK_FILE).exists()


def test_a_holder_that_kept_beating_still_holds(tmp_path):
    first, token = _holder(tmp_path)
    said, _ = first.communicate("write\n", timeout=60)
    assert said.strip() == "still mine"


def test_a_lock_that_is_not_utf8_holds_nothing(tmp_path):
    (tmp_path / lock.LOCK_FILE).write_bytes(b"\xff\xfe\x00garbage")
    lock.check_unlocked(tmp_path)
    held = lock.DriverLock(tmp_path).acquire()
    held.release()


@pytest.mark.slow
def test_a_suspended_driver_stops_and_every_attempt_keeps_one_run(tmp_path):
    """Driver A is stopped (SIGSTOP) until its lock is stale; B takes the output dir over;
    A continues (SIGCONT), finds its lock gone before its next write and stops, exit 2; B
    finishes the sweep. Every trial is in Parquet once and has one finished run."""
    out = tmp_path / "out"
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "suspended", "output_dir": str(out),
        "base": {"dataset": "circle", "n_train": 16, "n_eval": 16, "depth": 3, "width": 256,
                 "steps": 400, "checkpoints": 4, "device": "cpu"},
        "grid": {"seed": list(range(8))}}))
    env = {**os.environ, "NTKSWEEP_LOCK_STALE": "2", "NTKSWEEP_LOCK_HEARTBEAT": "0.3"}
    cmd = [sys.executable, "-m", "ntksweep.cli", "run", str(spec), "--quiet", "--num-cpus", "2"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    second = None
    try:
        _until(lambda: len(list((out / "trials").rglob("*.parquet"))) >= 1, "a trial", first)
        token = _record(out)["token"]
        first.send_signal(signal.SIGSTOP)
        _until(lambda: time.time() - _record(out)["heartbeat"] > 2.0, "its lock went stale")
        second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        _until(lambda: (out / lock.LOCK_FILE).exists() and _record(out)["token"] != token,
               "the takeover", second)
        first.send_signal(signal.SIGCONT)
        said, _ = first.communicate(timeout=300)
        assert first.returncode == 2, said
        assert "lost the output dir" in said and "writes nothing more" in said, said
        said2, _ = second.communicate(timeout=600)
        assert second.returncode == 0, said2
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
    trials = ntksweep.load_results(out)[0]
    assert len(trials) == 8 and trials.trial_id.is_unique
    assert set(trials.status) == {"completed"}
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("suspended")
    runs = client.search_runs([exp.experiment_id], "tags.`ntksweep.role` = 'trial'",
                              max_results=1000)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for tid in trials.trial_id:
        finished = [r for r in runs if r.data.tags["trial_id"] == tid
                    and r.info.status == "FINISHED"]
        assert len(finished) == 1, (tid, [(r.data.tags["attempt"], r.info.status)
                                          for r in runs if r.data.tags["trial_id"] == tid])
    attempts = [(r.data.tags["trial_id"], r.data.tags["attempt"]) for r in runs]
    assert len(attempts) == len(set(attempts))          # no attempt number twice


def test_the_refusal_names_the_live_holder(tmp_path):
    held = lock.DriverLock(tmp_path).acquire()
    try:
        with pytest.raises(OutputDirError, match=f"pid {os.getpid()}"):
            lock.check_unlocked(tmp_path)
    finally:
        held.release()


def test_a_trial_row_commits_only_while_the_lock_holds(tmp_path):
    """The lock is checked as the trial's row appears, not a whole write earlier: a guard
    that raises leaves no row and no temporary file, and the trial is not written."""
    from ntksweep import store
    from ntksweep.records import Status, TrialOutcome

    spec = ntksweep.TrialSpec(width=8, steps=1)
    outcome = TrialOutcome(spec.trial_id, Status.COMPLETED,
                           [{"step": 0, "t": 0.0, "train_loss": 1.0}])

    def lost():
        raise lock.LockLost("another driver took the output dir over")

    with pytest.raises(lock.LockLost):
        store.write_trial(tmp_path, "s", spec, outcome, commit_guard=lost)
    assert not store.trial_written(tmp_path, spec)
    assert not list(tmp_path.rglob(".tmp-*"))
    store.write_trial(tmp_path, "s", spec, outcome, commit_guard=lambda: None)
    assert store.trial_written(tmp_path, spec)


def test_a_lock_knows_whether_it_took_over_from_a_holder_that_left_its_record(tmp_path):
    """Only a takeover can leave a stale writer behind (the driver re-checks trials it
    planned only then): a released lock leaves no record, a dead driver's record stays."""
    first = lock.DriverLock(tmp_path).acquire()
    assert not first.took_over
    first.release()
    second = lock.DriverLock(tmp_path).acquire()
    assert not second.took_over
    second.release()
    (tmp_path / lock.LOCK_FILE).write_text(json.dumps(      # a driver killed with -9
        {"host": "elsewhere", "pid": 1, "token": "dead", "generation": 3, "heartbeat": 0}))
    third = lock.DriverLock(tmp_path).acquire()
    assert third.took_over and third.generation == 4
    third.release()
