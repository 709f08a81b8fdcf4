"""Sweeps on real Ray: local, a 2-node cluster on this machine, killed workers, a killed
driver, failing trials, bad specs, GPU placement with logical GPUs (and with the real ones
when this machine has any)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import ntksweep
from ntksweep import cli
from ntksweep.sweep import run_sweep
from ntksweep.sweep_spec import SpecError, load_sweep_spec

TINY = {"dataset": "circle", "n_train": 8, "n_eval": 8, "depth": 2, "steps": 6,
        "checkpoints": 3, "device": "cpu"}


def sweep(tmp_path, name="t", grid=None, base=None, **top):
    raw = {"name": name, "output_dir": str(tmp_path / name), "base": {**TINY, **(base or {})},
           "grid": grid or {"width": [8, 16], "seed": [0, 1]}, **top}
    return load_sweep_spec(raw)


def assert_each_trial_once(out, spec):
    trials, ckpts = ntksweep.load_results(out)
    expected = {t.trial_id for t in spec.trials()}
    assert sorted(trials.trial_id) == sorted(expected)
    assert not ckpts.duplicated(["trial_id", "step"]).any()
    return trials, ckpts


def test_local_sweep_end_to_end(ray_local, tmp_path):
    spec = sweep(tmp_path)
    events, started = [], []

    def on_event(kind, data):
        events.append(kind)
        if kind == "start":
            started.append(width_of[data["trial"]])

    width_of = {t.trial_id: t.width for t in spec.trials()}
    summary = run_sweep(spec, quiet=True, on_event=on_event)
    assert started == [16, 16, 8, 8]              # the longest first, not in grid order
    assert summary.counts == {"completed": 4}
    trials, ckpts = assert_each_trial_once(summary.out_dir, spec)
    assert set(trials.status) == {"completed"} and len(ckpts) == 4 * 3
    assert events.count("record") == 12          # records streamed live, one per checkpoint
    # each actor's thread pools match its CPU share (torch defaults to every core here)
    assert [(w["torch_threads"], w["omp_num_threads"]) for w in summary.workers] == [(1, "1")] * 2
    # resume: nothing left to do, nothing written twice
    again = run_sweep(spec, quiet=True)
    assert again.skipped == 4 and again.counts == {}
    assert_each_trial_once(summary.out_dir, spec)


def test_an_actor_with_two_cpus_runs_two_threads(ray_local, tmp_path):
    spec = sweep(tmp_path, grid={"seed": [0]}, resources={"cpus_per_trial": 2})
    summary = run_sweep(spec, quiet=True)
    assert summary.counts == {"completed": 1}
    assert [(w["torch_threads"], w["omp_num_threads"]) for w in summary.workers] == [(2, "2")]


def test_killed_worker_process_is_replaced_and_trial_rerun(ray_local, tmp_path):
    spec = sweep(tmp_path, base={"steps": 400, "checkpoints": 40, "width": 64},
                 grid={"seed": [0, 1, 2]})
    killed = []

    def on_event(kind, data):
        if kind == "record" and not killed and data["record"]["step"] >= 1:
            pid = started[data["trial"]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    started = {}

    def track(kind, data):
        if kind == "start":
            started[data["trial"]] = data["worker"]["pid"]
        on_event(kind, data)

    summary = run_sweep(spec, quiet=True, on_event=track)
    assert killed and summary.retried >= 1
    assert summary.counts == {"completed": 3}
    trials, _ = assert_each_trial_once(summary.out_dir, spec)
    assert trials.attempts.max() == 2


def test_failing_trial_is_recorded_and_sweep_goes_on(ray_local, tmp_path):
    # a limit beyond its quadrature (tanh at pre-activation std 1e20): the trial raises where
    # it runs (what preflight can see — missing files, impossible devices — is refused
    # before the sweep starts: test_preflight)
    spec = sweep(tmp_path, grid={"seed": [0]},
                 zip=[{"width": [8, 9], "activation": ["relu", "tanh"],
                       "weight_std": [1.0, 1e20]}])
    summary = run_sweep(spec, quiet=True)
    assert summary.counts == {"completed": 1, "failed": 1}
    trials, _ = assert_each_trial_once(summary.out_dir, spec)
    failed = trials[trials.status == "failed"].iloc[0]
    assert "quadrature resolves" in failed.error and failed.attempts == 1   # not retried
    # a resumed sweep re-runs the failed trial only, as its next attempt
    again = run_sweep(spec, quiet=True)
    assert again.skipped == 1 and again.counts == {"failed": 1}
    trials, _ = assert_each_trial_once(summary.out_dir, spec)
    assert trials[trials.status == "failed"].attempts.item() == 2


def test_a_failing_driver_leaves_no_run_running(ray_local, tmp_path):
    """An error in the driver itself (here: a progress callback that raises) propagates, and
    MLflow is left consistent: the running trials' runs killed, the sweep's run failed with
    the error as its tag."""
    from mlflow.tracking import MlflowClient

    spec = sweep(tmp_path, base={"steps": 300, "checkpoints": 30, "width": 64})

    def on_event(kind, data):
        if kind == "record" and data["record"]["step"] >= 1:
            raise RuntimeError("callback broke")

    with pytest.raises(RuntimeError, match="callback broke"):
        run_sweep(spec, quiet=True, on_event=on_event)
    client = MlflowClient(f"sqlite:///{Path(spec.out_dir).resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id])
    parents = [r for r in runs if r.data.tags["ntksweep.role"] == "sweep"]
    children = [r for r in runs if r.data.tags["ntksweep.role"] == "trial"]
    assert [r.info.status for r in parents] == ["FAILED"]
    assert parents[0].data.tags["ntksweep.error"] == "RuntimeError: callback broke"
    assert children and {r.info.status for r in children} == {"KILLED"}
    assert len(ntksweep.load_results(spec.out_dir)[0]) == 0   # nothing half-written


def test_records_ready_together_travel_as_one_item():
    import queue

    from ntksweep.sweep.worker import _DONE, _ready

    items = queue.Queue()
    for x in ("a", "b"):
        items.put(x)
    assert _ready(items) == ["a", "b"]                 # does not wait for more
    for x in ("c", _DONE, "never"):
        items.put(x)
    assert _ready(items) == ["c", _DONE]               # nothing is taken past the end


def test_gpu_actors_get_their_own_device(ray_fresh, tmp_path):
    import ray

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        spec = sweep(tmp_path, resources={"gpus_per_trial": 1, "cpus_per_trial": 1})
        summary = run_sweep(spec, quiet=True)
        # gpus_per_trial: auto with every trial on device: cpu takes no GPU (a GPU each would
        # cap the CPU actors at one per GPU)
        cpu_trials = run_sweep(sweep(tmp_path, "cpu", grid={"width": [8, 16, 32]}), quiet=True)
    finally:
        ray.shutdown()
    visible = sorted(w["cuda_visible_devices"] for w in summary.workers)
    assert visible == ["0", "1"]
    assert summary.counts == {"completed": 4}
    assert cpu_trials.counts == {"completed": 3} and len(cpu_trials.workers) == 2
    assert all(w["gpu_ids"] == "" for w in cpu_trials.workers)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="Ray's GPUs here are usable")
def test_gpus_its_torch_cannot_use_stop_the_sweep_before_any_trial(ray_fresh, tmp_path,
                                                                  capsys):
    """Ray gives the actors GPUs (here: declared, on a machine whose torch has no CUDA — as
    a CPU build of torch on a GPU node would) and the trials would go there (device auto):
    one line naming the worker, the torch and the way out, before any trial runs, instead of
    every trial failing on a device it was never asked for. Trials on device cpu still run
    (test_gpu_actors_get_their_own_device)."""
    import ray

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({
            "name": "nocuda", "output_dir": str(tmp_path / "nocuda"),
            "base": {**TINY, "device": "auto"}, "grid": {"seed": [0, 1]},
            "resources": {"gpus_per_trial": 1}}))
        assert cli.main(["run", str(path), "--quiet"]) == 2
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot use CUDA" in err and torch.__version__ in err, err
    assert "gpus_per_trial: 0" in err
    assert not (tmp_path / "nocuda" / "trials").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'nocuda' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("nocuda").experiment_id])
    assert [r.data.tags["ntksweep.role"] for r in runs] == ["sweep"]     # no trial's run
    assert runs[0].info.status == "FAILED"
    assert "cannot use CUDA" in runs[0].data.tags["ntksweep.error"]     # the reason, kept


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.skipif(_cuda_devices() == 0, reason="needs a CUDA GPU")
def test_sweep_on_real_gpus_matches_cpu(ray_fresh, tmp_path):
    """Ray finds the real GPUs itself; one actor per GPU, each seeing only its own device
    (cuda:0 inside the actor), and the measurements agree with the same trials on the CPU."""
    import ray

    grid = {"width": [64, 256], "seed": [0, 1, 2]}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert ray.cluster_resources().get("GPU") == _cuda_devices()
        gpu = run_sweep(sweep(tmp_path, "gpu", grid, {"device": "auto"},
                              resources={"gpus_per_trial": 1, "cpus_per_trial": 1}), quiet=True)
        cpu = run_sweep(sweep(tmp_path, "cpu", grid), quiet=True)
    finally:
        ray.shutdown()
    assert gpu.counts == cpu.counts == {"completed": 6}
    visible = [w["cuda_visible_devices"] for w in gpu.workers]
    assert len(visible) == min(_cuda_devices(), 6) and len(set(visible)) == len(visible)
    assert all(v and w["gpu_ids"] == v for v, w in zip(visible, gpu.workers))
    g_trials, g_ckpts = ntksweep.load_results(gpu.out_dir)
    c_trials, c_ckpts = ntksweep.load_results(cpu.out_dir)
    assert set(g_trials.run_device) == {"cuda:0"} and set(c_trials.run_device) == {"cpu"}
    key = ["trial_id", "step"]
    g, c = g_ckpts.sort_values(key).reset_index(), c_ckpts.sort_values(key).reset_index()
    assert list(g.trial_id) == list(c.trial_id) and list(g.step) == list(c.step)
    # same seeded initialisation; float32 on two devices: agreement to float32 round-off
    for col in ("dist_inf", "dist_init", "train_loss"):
        np.testing.assert_allclose(g[col], c[col], rtol=2e-3, atol=1e-6, err_msg=col)


def test_two_node_cluster_runs_trials_on_both_nodes(ray_fresh, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    import ray

    ray.init(address=cluster.address, log_to_driver=False)
    try:
        nodes = set()
        spec = sweep(tmp_path, grid={"width": [8, 16, 32], "seed": [0, 1]})
        # the single-machine SQLite default is refused on 2 nodes, before anything is written
        with pytest.raises(ValueError, match="2 nodes.*--tracking-uri"):
            run_sweep(spec, quiet=True)
        assert not Path(spec.out_dir).exists()
        summary = run_sweep(spec, quiet=True, tracking_uri=f"sqlite:///{tmp_path}/explicit.db",
                            on_event=lambda k, d: k == "start" and nodes.add(
                                d["worker"]["node_id"]))
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert len(nodes) == 2
    assert summary.counts == {"completed": 6}
    assert_each_trial_once(summary.out_dir, spec)


def _cli(*args, **kw):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "ntksweep.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_killed_driver_resumes_without_duplicates(tmp_path):
    spec_file = tmp_path / "s.yaml"
    # trials of ~2 s each, 12 of them on 2 workers: the signal lands mid-sweep
    raw = {"name": "k", "output_dir": str(tmp_path / "out"),
           "base": {**TINY, "n_train": 32, "steps": 600, "checkpoints": 10, "width": 256},
           "grid": {"seed": list(range(12))}}
    spec_file.write_text(yaml.safe_dump(raw))
    proc = _cli("run", str(spec_file), "--quiet", "--num-cpus", "2")
    trials_dir = tmp_path / "out" / "trials"
    while not list(trials_dir.rglob("*.parquet")):     # a hang is pytest-timeout's to end
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    done_before = len(ntksweep.load_results(tmp_path / "out")[0])
    assert 1 <= done_before < 12
    rerun = _cli("run", str(spec_file), "--quiet", "--num-cpus", "2")
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out
    assert f"{done_before} already done" in out
    assert_each_trial_once(tmp_path / "out", load_sweep_spec(spec_file))


@pytest.mark.parametrize("raw, match", [
    ({"name": "x", "bse": {}}, r"line 2\): unknown key 'bse' \(did you mean 'base'\?\)"),
    ({"name": "x", "grid": {"widht": [1]}}, r"line 3\): grid: unknown field 'widht'.*'width'"),
    ({"name": "x", "grid": {"width": []}}, r"grid.width is empty"),
    ({"name": "x", "grid": {"width": 64}}, r"grid.width must be a list"),
    ({"name": "x", "base": {"depth": 0}}, r"depth: must be an integer >= 1"),
    ({"name": "x", "grid": {"lr": [1.0, "fast"]}}, r"lr: cannot read 'fast'"),
    ({"name": "x", "width": 64}, r"trial fields go under 'base:'"),
    ({"name": "x", "resources": {"gpus": 1}}, r"did you mean 'gpus_per_trial'"),
    ({"name": "x", "zip": [{"lr": [1, 2], "steps": [1]}]}, r"same length"),
])
def test_bad_specs_are_refused_before_anything_is_written(tmp_path, raw, match):
    path = tmp_path / "bad.yaml"
    raw = {**raw, "output_dir": str(tmp_path / "never")}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(SpecError, match=match):
        load_sweep_spec(path)
    proc = _cli("run", str(path))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "ntksweep: error:" in out
    assert not (tmp_path / "never").exists()


def test_dry_run_and_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "d", "output_dir": str(tmp_path / "o"), "base": TINY,
                                    "grid": {"width": [8, 16], "seed": [0, 1, 2]}}))
    proc = _cli("run", str(path), "--dry-run", "--set", "steps=3", "--set", "seed=5")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "2 trials: 2 to run" in out and not (tmp_path / "o" / "trials").exists()
    spec = load_sweep_spec(path, {"steps": 3, "seed": 5})
    assert {t.steps for t in spec.trials()} == {3} and {t.seed for t in spec.trials()} == {5}


def test_help_mentions_every_command():
    out = subprocess.run([sys.executable, "-m", "ntksweep.cli", "--help"], capture_output=True,
                         text=True).stdout
    for cmd in ("run", "trial", "ui", "sync"):
        assert cmd in out


def test_trial_command_prints_a_table(tmp_path):
    proc = _cli("trial", "--width", "16", "--steps", "4", "--n-train", "4", "--n-eval", "4",
                "--checkpoints", "3", "--json", str(tmp_path / "r.json"))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "dist_inf" in out and "status: completed" in out
    assert Path(tmp_path / "r.json").exists()


@pytest.mark.slow
def test_the_cli_explains_a_sweep_in_a_log(tmp_path):
    """Without a terminal: progress lines, no Ray or MLflow start-up chatter, the failures
    with their axes and last error line, the headline exponent; then ``ntksweep status``."""
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "talk", "output_dir": str(tmp_path / "out"), "base": TINY,
        "grid": {"seed": [0]}, "zip": [{"width": [8, 16, 32, 9],
                                        "activation": ["relu", "relu", "relu", "tanh"],
                                        "weight_std": [1.0, 1.0, 1.0, 1e20]}]}))
    run = _cli("run", str(spec_file), "--num-cpus", "2")
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 1, out                          # a trial failed
    assert "trials: 4/4 done" in out and "\r" not in out     # log lines, not a bar
    for chatter in ("Token authentication", "Creating initial MLflow database",
                    "Started a local Ray instance"):
        assert chatter not in out, out
    failed = out.split("failed trials", 1)[1]
    assert "width=9" in failed and "quadrature resolves" in failed
    assert "headline: init dist_inf ∝ width^" in out and "95 % CI" in out
    status = _cli("status", str(tmp_path / "out"))
    text, _ = status.communicate(timeout=120)
    assert status.returncode == 0 and "3 completed, 1 failed" in text, text
    assert "driver: none running" in text
