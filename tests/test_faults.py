"""Faults and hostile input: nothing lost, nothing twice, nobody in (one driver per output
dir, every store exactly once, no input that runs code)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from servers import free_port, resume, stop_running_trials

import ntksweep
from ntksweep.errors import OutputDirError, SpecError
from ntksweep.store import lock
from ntksweep.sweep import plan_sweep, run_sweep
from ntksweep.sweep_spec import load_sweep_spec
from ntksweep.tracking.uri import redact, resolve_tracking_uri
from ntksweep.trial import run_trial
from ntksweep.trial_spec import TrialSpec

TINY = {"dataset": "circle", "n_train": 8, "n_eval": 8, "depth": 2, "steps": 6,
        "checkpoints": 3, "device": "cpu"}


class _Evil:
    """Unpickling this runs a shell command: what a crafted data file could carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_data_files_holding_pickles_never_run_code(tmp_path):
    marker = tmp_path / "pwned"
    np.save(tmp_path / "evil.npy", np.array([_Evil(marker)], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "evil.npz", X=np.array([_Evil(marker)], dtype=object), y=np.ones(1))
    for name, message in (("evil.npy", "never loaded"), ("evil.npz", "pickled objects")):
        r = run_trial(TrialSpec(dataset="file", data_path=str(tmp_path / name), **{
            k: v for k, v in TINY.items() if k != "dataset"}))
        assert r.status == "failed" and message in r.error, r.error
    assert not marker.exists()


def test_a_missing_data_file_is_refused_before_anything_is_written(tmp_path):
    spec = load_sweep_spec({"name": "d", "output_dir": str(tmp_path / "out"),
                            "base": {**TINY, "dataset": "file",
                                     "data_path": str(tmp_path / "missing.npz")}})
    with pytest.raises(SpecError, match="missing.npz.*does not exist"):
        plan_sweep(spec)
    with pytest.raises(SpecError, match="does not exist"):
        run_sweep(spec, quiet=True)
    assert not (tmp_path / "out").exists()


def test_credentials_are_redacted_wherever_a_uri_is_stored_or_shown():
    assert redact("http://alice:s3cret@mlflow.example:5000/x") == "http://mlflow.example:5000/x"
    assert redact("https://token@host") == "https://host"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    with pytest.raises(ntksweep.UserError) as e:
        resolve_tracking_uri("htp://alice:s3cret@host")
    assert "s3cret" not in str(e.value)


def test_a_live_driver_holds_the_output_dir_and_a_dead_ones_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    held = lock.DriverLock(out).acquire()
    try:
        with pytest.raises(OutputDirError, match=rf"host '{socket.gethostname()}', pid "
                                                 rf"{os.getpid()}"):
            lock.DriverLock(out).acquire()
        with pytest.raises(OutputDirError, match="in use by another ntksweep driver"):
            lock.check_unlocked(out)
    finally:
        held.release()
    assert not (out / lock.LOCK_FILE).exists()
    # a holder that died without releasing: a dead pid on this host, or a stale heartbeat
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for record in ({"host": socket.gethostname(), "pid": int(dead), "started": time.time(),
                    "heartbeat": time.time(), "token": "x"},
                   {"host": "elsewhere", "pid": 1, "started": 0,
                    "heartbeat": time.time() - 2 * lock.STALE, "token": "y"}):
        (out / lock.LOCK_FILE).write_text(json.dumps(record))
        taken = lock.DriverLock(out).acquire()
        assert json.loads((out / lock.LOCK_FILE).read_text())["token"] == taken.token
        taken.release()


def test_close_is_bounded_when_the_store_stops_answering(tmp_path, monkeypatch):
    from ntksweep.tracking.tracker import Tracker

    monkeypatch.chdir(tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}", "e", "s", required=True)
    answer, answered = threading.Event(), threading.Event()

    def hanging_request():           # a store that does not answer until the test lets it
        answer.wait()
        answered.set()

    tracker._submit(hanging_request)
    tracker.close(timeout=1.0)
    assert not answered.is_set()     # close() returned without waiting for the request
    assert "did not finish" in tracker.degraded
    answer.set()


def _cli(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "ntksweep.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _children(uri, name):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("ntksweep.role") == "trial"]


@pytest.mark.slow
def test_a_second_driver_is_refused_and_a_killed_ones_runs_are_closed(tmp_path):
    """One long trial and four short ones on two workers (longest first): the short ones
    reach Parquet while the long one is still live in MLflow, and its worker is then stopped
    (SIGSTOP) — the kill lands in the middle of it, not in a window between two trials'
    runs, on any machine."""
    spec_file = tmp_path / "s.yaml"
    out = tmp_path / "out"
    raw = {"name": "two", "output_dir": str(out),
           "base": {**TINY, "n_train": 32, "checkpoints": 10, "width": 512, "depth": 3},
           "zip": [{"seed": [0, 1, 2, 3, 4], "steps": [4000, 20, 20, 20, 20]}]}
    spec_file.write_text(yaml.safe_dump(raw))
    first = _cli("run", str(spec_file), "--quiet", "--num-cpus", "2")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    stopped = []
    try:
        _wait_for(lambda: len(list((out / "trials").rglob("*.parquet"))) == 4, first)
        stopped = stop_running_trials(first.pid)         # the long one's worker
        assert stopped and (out / lock.LOCK_FILE).exists()
        second, dry = _cli("run", str(spec_file), "--quiet"), _cli("run", str(spec_file),
                                                                  "--dry-run")
        text, _ = second.communicate(timeout=120)
        assert second.returncode == 2, text
        assert f"pid {first.pid}" in text and "in use by another ntksweep driver" in text
        assert dry.wait(timeout=120) == 2                # the dry run makes the same check
        _wait_for(lambda: any(r.info.status == "RUNNING" for r in _children(uri, "two")),
                  first)                                 # the long trial's run is live
    finally:
        first.send_signal(signal.SIGKILL)                # no chance to clean up
        first.wait()
        resume(stopped)                                  # its node stops the orphan
    done_before = set(ntksweep.load_results(out)[0].trial_id)
    assert len(done_before) == 4                         # the long one was cut short
    summary = run_sweep(load_sweep_spec(spec_file), quiet=True)     # takes the dead one's lock
    assert summary.counts == {"completed": 1}
    runs = _children(uri, "two")
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    trials = ntksweep.load_results(out)[0]
    assert len(trials) == 5 and trials.trial_id.is_unique
    for _, row in trials.iterrows():                    # exactly one finished run per trial,
        mine = [r for r in runs if r.data.tags["trial_id"] == row.trial_id]
        finished = [r for r in mine if r.info.status == "FINISHED"]
        assert len(finished) == 1                       # numbered after the killed attempt
        assert int(finished[0].data.tags["attempt"]) == row.attempts == len(mine)
    assert sorted(len([r for r in runs if r.data.tags["trial_id"] == t])
                  for t in trials.trial_id) == [1, 1, 1, 1, 2]


def _wait_for(condition, driver: subprocess.Popen) -> None:
    """Poll until ``condition()``; if the driver ends first, fail with what it said (a hang is
    pytest-timeout's to end, so no machine is too slow for this wait)."""
    while not condition():
        if driver.poll() is not None:
            raise AssertionError("the driver ended first; it said:\n"
                                 + driver.communicate(timeout=60)[0][-3000:])
        time.sleep(0.3)


@pytest.mark.slow
def test_sync_completes_the_runs_a_killed_driver_left_of_trials_in_parquet(ray_local, tmp_path):
    """A driver killed after its Parquet write and before its runs ended: each attempt keeps
    its one run, completed in place — the points it lacks added, none twice."""
    spec = load_sweep_spec({"name": "ks", "output_dir": str(tmp_path / "ks"), "base": TINY,
                            "grid": {"width": [8, 16]}})
    summary = run_sweep(spec, quiet=True)
    uri, out = summary.tracking_uri, summary.out_dir
    client = MlflowClient(uri)
    ckpts = ntksweep.load_results(out)[1]
    full, cut = _children(uri, "ks")
    client.set_terminated(full.info.run_id, "KILLED")    # every point had been sent …
    client.log_metric(full.info.run_id, "dist_inf", 9.0, step=10**6)   # … and one more
    client.delete_run(cut.info.run_id)                   # this one was cut short: its tags,
    first = client.get_metric_history(cut.info.run_id, "dist_inf")[0]  # one point, no params
    cut_id = client.create_run(full.info.experiment_id, tags=cut.data.tags).info.run_id
    client.log_metric(cut_id, "dist_inf", first.value, step=first.step)
    client.set_terminated(cut_id, "KILLED")
    sync = [sys.executable, "-m", "ntksweep.cli", "sync", out]
    once = subprocess.run(sync, capture_output=True, text=True, timeout=300)
    assert "2 trials pushed" in once.stdout, once.stdout + once.stderr
    twice = subprocess.run(sync, capture_output=True, text=True, timeout=300)
    assert "0 trials pushed, 2 already there" in twice.stdout, twice.stdout + twice.stderr
    runs = _children(uri, "ks")
    assert {r.info.run_id for r in runs} == {full.info.run_id, cut_id}
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "dist_inf")]
        expected = sorted(ckpts[ckpts.trial_id == run.data.tags["trial_id"]].step)
        assert sorted(steps) == expected + ([10**6] if run.info.run_id != cut_id else [])
        assert run.data.tags["synced"] == "true" and run.data.tags["status"] == "completed"
        assert "width" not in run.data.metrics and run.data.params["width"] in ("8", "16")


@pytest.mark.slow
def test_a_dead_tracking_server_does_not_hold_the_exit_and_says_to_sync(tmp_path):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump({"name": "dead", "output_dir": str(tmp_path / "out"),
                                         "base": TINY, "grid": {"width": [8]}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST")}
    uri = f"http://bob:pa55word@127.0.0.1:{free_port()}"   # nothing listens there
    proc = _cli("run", str(spec_file), "--num-cpus", "1", "--tracking-uri", uri, env=env)
    text, _ = proc.communicate(timeout=150)   # MLflow's own retries would take ~4 minutes
    assert proc.returncode == 0, text
    assert "ntksweep sync" in text and "pa55word" not in text
    assert "pa55word" not in (tmp_path / "out" / "sweep.json").read_text()
    assert len(ntksweep.load_results(tmp_path / "out")[0]) == 1


@pytest.mark.slow
def test_a_full_disk_stops_the_sweep_cleanly_and_keeps_what_was_written(ray_local, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        spec = load_sweep_spec({"name": "full", "output_dir": str(disk / "out"),
                                "base": {**TINY, "n_eval": 64, "checkpoints": 7,
                                         "keep_kernels": "all"},
                                "grid": {"width": [8, 16, 24, 32, 40, 48]}})
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        summary = run_sweep(spec, quiet=True, tracking_uri=uri)
        assert summary.disk_full and str(disk / "out") in summary.disk_full
        kept = ntksweep.load_results(disk / "out")[0]
        assert len(kept) < 6 and set(kept.status) <= {"completed"}
        assert "RUNNING" not in {r.info.status for r in _children(uri, "full")}
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_corrupt_or_truncated_files_are_skipped_then_moved_aside_and_rerun(ray_local, tmp_path):
    import pyarrow.parquet as pq

    spec = load_sweep_spec({"name": "c", "output_dir": str(tmp_path / "c"), "base": TINY,
                            "grid": {"width": [8, 16], "seed": [0, 1]}})
    out = Path(run_sweep(spec, quiet=True, tracking=False).out_dir)
    trial_files = sorted((out / "trials").rglob("*.parquet"))
    trial_files[0].write_bytes(b"PAR1 garbage, not a Parquet file")       # corrupt
    cut = out / "checkpoints" / trial_files[1].relative_to(out / "trials")
    pq.write_table(pq.read_table(cut).slice(0, 1), cut)                    # truncated
    with pytest.warns(UserWarning, match="1 unreadable file"):
        trials, _ = ntksweep.load_results(out)
    assert len(trials) == 3                                # the rest still reads
    # both files of each broken trial go aside: the corrupt row's checkpoints file too
    with pytest.warns(UserWarning, match="moved 4 unreadable or inconsistent file"):
        again = run_sweep(spec, quiet=True, tracking=False)
    assert again.skipped == 2 and again.counts == {"completed": 2}
    trials, ckpts = ntksweep.load_results(out)
    assert len(trials) == 4 and trials.trial_id.is_unique
    assert (ckpts.groupby("trial_id").size() == trials.set_index("trial_id").n_checkpoints).all()
    assert len(list((out / "_quarantine").rglob("*.parquet"))) == 4


_OK = {"name": "fz", "base": dict(TINY), "grid": {"seed": [0]}}
_BOMB = "\n".join(["description:", "  a: &a [x, x, x, x, x, x, x, x, x, x]"]
                  + [f"  {c}: &{c} [{', '.join([f'*{p}'] * 10)}]"
                     for p, c in zip("abcdefgh", "bcdefghi")]) + "\nname: fz\n"
_MALFORMED = [  # (YAML text or a dict to dump, extra CLI args, what the one line must say)
    ({**_OK, "base": 5}, [], "base must be a mapping"),
    ({**_OK, "resources": [1, 2]}, [], "resources must be a mapping"),
    ({**_OK, "output_dir": 123}, [], "output_dir must be a string"),
    (_OK, ["--set", "lr=[1,"], "not valid for a spec"),
    (_OK, ["--set", "lr=!!python/object/apply:os.system [echo hi]"], "not valid for a spec"),
    (_BOMB, [], "aliases are not accepted"),
    ({**_OK, "base": {**TINY, "width": 10**9}}, [], "needs about"),
    ({**_OK, "base": {**TINY, "n_train": 10**9}}, [], "n_train: must be an integer in"),
    ({**_OK, "base": {**TINY, "checkpoints": 10**9}}, [], "checkpoints: must be an integer in"),
    ({**_OK, "base": {**TINY, "steps": 10**12}}, [], "steps: must be an integer in"),
    ({**_OK, "base": {**TINY, "dataset": "file"}}, [], "dataset 'file' needs data_path"),
    ({**_OK, "base": {**TINY, "dataset": "file", "data_path": "/nonexistent.npz"}}, [],
     "does not exist"),
    ({**_OK, "base": {**TINY, "device": "gpu"}}, [], "device: must be"),
    ("name: fz\nname: other\n", [], "duplicate key 'name'"),
    ("name: fz\ndescription: " + "x" * (1 << 21) + "\n", [], "a spec is at most"),
    ({**_OK, "description": [1, 2]}, [], "description must be a string"),
    ({**_OK, "name": 5}, [], "name must be a string"),
    ({**_OK, "name": "a b"}, [], "name must be letters"),
    ({**_OK, "grid": [1, 2]}, [], "grid must be a mapping"),
    ({**_OK, "grid": {"width": 5}}, [], "grid.width must be a list"),
    ({**_OK, "grid": {"width": []}}, [], "grid.width is empty"),
    ({**_OK, "grid": {"widht": [1]}}, [], "did you mean 'width'"),
    ({**_OK, "zip": {"lr": [1]}}, [], "zip must be a list"),
    ({**_OK, "zip": [{"lr": [1, 2], "steps": [1]}]}, [], "same length"),
    ({**_OK, "zip": [5]}, [], "zip must map field names"),
    ({**_OK, "retries": -1}, [], "retries must be an integer >= 0"),
    ({**_OK, "retries": "two"}, [], "retries must be an integer"),
    ({**_OK, "retries": True}, [], "retries must be an integer"),
    ({**_OK, "resources": {"gpus_per_trial": -1}}, [], "gpus_per_trial must be"),
    ({**_OK, "resources": {"cpus_per_trial": 0}}, [], "cpus_per_trial must be"),
    ({**_OK, "resources": {"max_workers": 0}}, [], "max_workers must be"),
    ({**_OK, "resources": {"gpus": 1}}, [], "did you mean 'gpus_per_trial'"),
    ({**_OK, "tracking_uri": "htp://x"}, [], "scheme must be one of"),
    ({**_OK, "tracking_uri": 5}, [], "tracking_uri must be a string"),
    ({**_OK, "base": {**TINY, "depth": 0}}, [], "depth: must be an integer >= 1"),
    ({**_OK, "base": {**TINY, "depth": 2.5}}, [], "depth: must be an integer"),
    ({**_OK, "base": {**TINY, "activation": "swish"}}, [], "activation: must be one of"),
    ({**_OK, "base": {**TINY, "lr": "fast"}}, [], "lr: cannot read 'fast'"),
    ({**_OK, "base": {**TINY, "lr": float("nan")}}, [], "lr: must be a number > 0"),
    ({**_OK, "base": {**TINY, "weight_std": -1}}, [], "weight_std: must be"),
    ({**_OK, "base": {**TINY, "dataset": "mnist"}}, [], "dataset: must be one of"),
    ({**_OK, "base": {**TINY, "loss": "cross_entropy"}}, [], "cross_entropy needs class"),
    ({**_OK, "base": {**TINY, "optimizer": "adamw"}}, [], "optimizer: must be"),
    ({**_OK, "base": {**TINY, "dtype": "float16"}}, [], "dtype: must be"),
    ({**_OK, "base": {**TINY, "keep_kernels": "some"}}, [], "keep_kernels: must be"),
    ({**_OK, "base": {**TINY, "checkpoint_steps": [50]}}, [], "checkpoint_steps: must be"),
    ({**_OK, "base": {**TINY, "width": True}}, [], "width: must be an integer"),
    (_OK, ["--set", "width=[64,128]"], "--set grid.width=[64, 128]"),
    (_OK, ["--set", "nosuch=1"], "--set nosuch: unknown field"),
    ({**_OK, "width": 64}, [], "trial fields go under 'base:'"),
    ({**_OK, "smoke": 5}, ["--smoke"], "smoke must be a mapping"),
    ({**_OK, "grid": {"seed": list(range(1000)), "width": list(range(1, 201))}}, [],
     "more than 100,000"),
    ("- a\n- b\n", [], "a sweep spec is a mapping"),
]


@pytest.mark.parametrize("raw, args, says", _MALFORMED,
                         ids=[f"{i}-{c[2][:24]}" for i, c in enumerate(_MALFORMED)])
def test_malformed_specs_get_one_clear_line_and_touch_nothing(tmp_path, capsys, raw, args,
                                                              says):
    from ntksweep.cli import main

    out = tmp_path / "never"
    path = tmp_path / "spec.yaml"
    if isinstance(raw, str):
        text = raw if raw.startswith("- ") else raw + f"output_dir: {out}\n"
    else:
        text = yaml.safe_dump({"output_dir": str(out), **raw}, sort_keys=False)
    path.write_text(text)
    assert main(["run", str(path), "--dry-run", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ntksweep: error: ") and err.count("\n") == 1, err[:2000]
    assert says in err and "Traceback" not in err, err[:2000]
    assert not out.exists()


@pytest.mark.slow
def test_the_driver_keeps_no_python_state_per_finished_trial(tmp_path, monkeypatch):
    """The driver's Python heap (tracemalloc: deterministic, unlike resident memory) grows by
    well under a kilobyte per finished trial: no per-trial state survives its trial. Requests
    waiting for a lagging MLflow writer are bounded (here at 64) and measured apart: the
    heap is read when the writer has caught up, since a backlog of up to 64 requests at one
    mark and none at the other would differ by more than the bound (resident memory per
    trial: bench_driver_memory.py). Tracked, the driver does everything it does untracked
    and feeds the tracker, so one tracked sweep covers both."""
    import gc
    import tracemalloc

    from ntksweep.tracking import tracker

    monkeypatch.setattr(tracker, "_MAX_QUEUED", 64)
    trackers, opened = [], tracker.Tracker.__init__

    def keep(self, *args, **kw):
        opened(self, *args, **kw)
        trackers.append(self)

    monkeypatch.setattr(tracker.Tracker, "__init__", keep)
    marks, done, backlog = {}, [0], [0]

    def on_event(kind, data):
        if kind == "end":
            done[0] += 1
            writer = trackers[0]
            backlog[0] = max(backlog[0], writer.pending())
            if done[0] in (50, 250):
                writer.wait_idle()                   # the writer has caught up
                assert not writer.degraded
                gc.collect()
                marks[done[0]] = tracemalloc.get_traced_memory()[0]

    spec = load_sweep_spec({"name": "heap", "output_dir": str(tmp_path),
                            "base": {**TINY, "n_train": 2, "n_eval": 2, "width": 2,
                                     "steps": 1, "checkpoints": 2},
                            "grid": {"seed": list(range(250))}})
    tracemalloc.start()
    try:
        run_sweep(spec, quiet=True, tracking=True, num_cpus=2, on_event=on_event)
    finally:
        tracemalloc.stop()
    assert not trackers[0].degraded
    assert backlog[0] <= 64
    assert (marks[250] - marks[50]) / 200 < 1024, marks
