"""Exactly once in MLflow, round 3: a quarantined trial runs again as its next attempt; an
interrupted attempt's run stays KILLED when another execution finishes the trial (sync never
merges two executions into one run); the parent run's summaries go to a new step per
driver; `report` and `sync` leave a live sweep's runs alone."""

import signal
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient
from servers import resume, stop_running_trials

import ntksweep
from ntksweep.sweep import run_sweep
from ntksweep.sweep_spec import load_sweep_spec
from ntksweep.sync import sync_from_store

TINY = {"dataset": "circle", "n_train": 8, "n_eval": 8, "depth": 2, "steps": 6,
        "checkpoints": 3, "device": "cpu"}


def _trial_runs(uri, name):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], "tags.`ntksweep.role` = 'trial'",
                              max_results=1000)


def _parent(uri, name):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], "tags.`ntksweep.role` = 'sweep'")[0]


@pytest.mark.slow
def test_a_quarantined_trial_runs_as_its_next_attempt(ray_local, tmp_path):
    spec = load_sweep_spec({"name": "q", "output_dir": str(tmp_path / "q"), "base": TINY,
                            "grid": {"width": [8, 16]}})
    summary = run_sweep(spec, quiet=True)
    out, uri = summary.out_dir, summary.tracking_uri
    victim = sorted((tmp_path / "q" / "trials").rglob("*.parquet"))[0]
    tid = victim.stem
    victim.write_bytes(victim.read_bytes()[:50])            # a copy cut short
    with pytest.warns(UserWarning, match="moved 2 unreadable or inconsistent"):
        again = run_sweep(spec, quiet=True)
    assert again.counts == {"completed": 1}
    runs = [r for r in _trial_runs(uri, "q") if r.data.tags["trial_id"] == tid]
    assert sorted((r.data.tags["attempt"], r.info.status) for r in runs) == [
        ("1", "FINISHED"), ("2", "FINISHED")]               # not a second attempt 1
    rerun = next(r for r in runs if r.data.tags["attempt"] == "2")
    assert victim.name in rerun.data.tags["ntksweep.quarantined"]
    trials = ntksweep.load_results(out)[0]
    assert int(trials.set_index("trial_id").attempts[tid]) == 2


@pytest.mark.slow
def test_the_parent_runs_summaries_take_a_new_step_per_driver(ray_local, tmp_path):
    spec = load_sweep_spec({"name": "steps", "output_dir": str(tmp_path / "s"),
                            "base": TINY, "grid": {"width": [8, 16, 32]}})
    summary = run_sweep(spec, quiet=True)
    run_sweep(spec, quiet=True)                                   # a resume: nothing to do
    sync_from_store(summary.out_dir, summary.tracking_uri, "steps", summary.sweep_id)
    client = MlflowClient(summary.tracking_uri)
    parent = _parent(summary.tracking_uri, "steps").info.run_id
    for key, steps in (("trials_completed", [0, 1]), ("synced_trials", [0]),
                       ("width_exponent_init_dist_inf", [0, 1])):
        assert sorted(m.step for m in client.get_metric_history(parent, key)) == steps, key


@pytest.mark.slow
def test_report_and_sync_leave_a_live_sweep_alone_and_a_new_execution_gets_its_own_run(
        ray_local, tmp_path):
    """A long trial is live (its worker stopped, SIGSTOP, so that it stays live for as long
    as the test needs and finishes quickly when run again): `report` writes its page and
    leaves the runs RUNNING, `sync` is refused. Ctrl-C: the run ends KILLED. A
    `--no-tracking` resume finishes the trial as another execution; `sync` gives that
    execution its own run, after the KILLED one."""
    out = tmp_path / "live"
    spec_file = tmp_path / "s.yaml"
    raw = {"name": "live", "output_dir": str(out),
           "base": {**TINY, "n_train": 32, "width": 512, "depth": 3, "checkpoints": 10},
           "zip": [{"seed": [0, 1], "steps": [20, 4000]}]}
    spec_file.write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{out / 'mlflow.db'}"
    driver = subprocess.Popen([sys.executable, "-m", "ntksweep.cli", "run", str(spec_file),
                               "--quiet", "--num-cpus", "2"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    stopped = []
    try:
        while not stopped:    # the short trial is written; the long one runs: stop it there
            assert driver.poll() is None, driver.communicate()[0][-3000:]
            if len(list((out / "trials").rglob("*.parquet"))) == 1:
                stopped = stop_running_trials(driver.pid)
            time.sleep(0.1)
        while not ((out / "mlflow.db").exists() and any(
                r.info.status == "RUNNING" for r in _trial_runs(uri, "live"))):
            assert driver.poll() is None, driver.communicate()[0][-3000:]
            time.sleep(0.3)
        report = subprocess.run([sys.executable, "-m", "ntksweep.cli", "report", str(out)],
                                capture_output=True, text=True, timeout=300)
        assert report.returncode == 0, report.stdout + report.stderr
        assert any(r.info.status == "RUNNING" for r in _trial_runs(uri, "live"))
        assert _parent(uri, "live").info.status == "RUNNING"
        sync = subprocess.run([sys.executable, "-m", "ntksweep.cli", "sync", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert sync.returncode == 2 and "in use by another ntksweep driver" in sync.stderr
        assert any(r.info.status == "RUNNING" for r in _trial_runs(uri, "live"))
        assert len(list((out / "trials").rglob("*.parquet"))) == 1
        resume(stopped)
        driver.send_signal(signal.SIGINT)
        said, _ = driver.communicate(timeout=300)
        assert driver.returncode == 130, said
    finally:
        resume(stopped)
        if driver.poll() is None:
            driver.kill()
    killed = [r for r in _trial_runs(uri, "live") if r.info.status == "KILLED"]
    assert len(killed) == 1
    tid = killed[0].data.tags["trial_id"]
    client = MlflowClient(uri)
    before = client.get_metric_history(killed[0].info.run_id, "dist_inf")
    spec = load_sweep_spec(spec_file)
    resumed = run_sweep(spec, quiet=True, tracking=False)          # another execution
    assert resumed.counts == {"completed": 1}
    sync_from_store(str(out), uri, "live", resumed.sweep_id,
                    (out / "sweep.yaml").read_text())
    runs = [r for r in _trial_runs(uri, "live") if r.data.tags["trial_id"] == tid]
    assert sorted((r.data.tags["attempt"], r.info.status) for r in runs) == [
        ("1", "KILLED"), ("2", "FINISHED")]
    assert client.get_metric_history(killed[0].info.run_id, "dist_inf") == before
    finished = next(r for r in runs if r.info.status == "FINISHED")
    ckpts = ntksweep.load_results(out)[1]
    mine = ckpts[ckpts.trial_id == tid].sort_values("step")
    assert [m.value for m in sorted(client.get_metric_history(finished.info.run_id,
                                                              "dist_inf"),
                                    key=lambda m: m.step)] == pytest.approx(
        list(mine.dist_inf))


def test_an_attempts_status_is_its_tag_only_once_its_run_finished():
    """The tag records how a finished attempt ended; a run MLflow still holds open (its
    driver died before ending it) or ended killed is unfinished whatever the tag says."""
    from ntksweep.tracking.mlflow_api import attempt_status

    assert attempt_status("FINISHED", "diverged") == "diverged"
    assert attempt_status("FINISHED", "completed") == "completed"
    assert attempt_status("RUNNING", "completed") == "running"
    assert attempt_status("KILLED", "completed") == "killed"
    assert attempt_status("FAILED", "failed") == "failed"
