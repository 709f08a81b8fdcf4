"""Clusters: a 2-node Ray of `ray start` processes with token auth, a real `mlflow server`,
the sweep submitted with `ray job submit`; an S3-compatible server (moto) as the output dir;
fsspec-only schemes; and the deployment files under cluster/, checked by their tools' rules."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from servers import RayNodes

import ntksweep
from ntksweep import store
from ntksweep.records import TrialOutcome
from ntksweep.sweep import run_sweep
from ntksweep.sweep_spec import load_sweep_spec
from ntksweep.trial_spec import TrialSpec

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
TINY = {"dataset": "circle", "n_train": 8, "n_eval": 8, "depth": 2, "steps": 6,
        "checkpoints": 3, "device": "cpu"}


def tiny_spec(name, out, grid=None, **base):
    return {"name": name, "output_dir": str(out), "base": {**TINY, **base},
            "grid": grid or {"width": [8, 16], "seed": [0, 1]},
            "resources": {"cpus_per_trial": 1}}


# ---------------------------------------------------------------- cluster in a box
@pytest.mark.slow
def test_cluster_in_a_box_ray_job_submit(tmp_path, mlflow_server):
    """Head and worker as separate `ray start` processes (token auth on), a real MLflow
    server, and the sweep submitted as a Ray job: trials on both nodes, each exactly once in
    MLflow and in Parquet."""
    raw = tiny_spec("box", tmp_path / "out", grid={"width": [8, 16, 32], "seed": [0, 1]})
    spec_file = tmp_path / "box.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    expected = sorted(t.trial_id for t in load_sweep_spec(raw).trials())
    nodes = RayNodes(cpus_per_node=1).start(n_workers=1)
    try:
        entry = (f"{shlex.quote(sys.executable)} -m ntksweep.cli run {spec_file} "
                 f"--address auto --tracking-uri {mlflow_server.uri} --quiet")
        job = subprocess.run(["ray", "job", "submit", "--address", nodes.dashboard,
                              "--submission-id", "ntksweep-box", "--", *shlex.split(entry)],
                             env=nodes.env, capture_output=True, text=True, timeout=400)
        assert job.returncode == 0 and "succeeded" in job.stdout, \
            job.stdout[-3000:] + job.stderr[-3000:] + nodes.logs()
    finally:
        nodes.stop()

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("box")
    children = client.search_runs([exp.experiment_id], "tags.`ntksweep.role` = 'trial'")
    assert sorted(r.data.tags["trial_id"] for r in children) == expected
    assert {r.info.status for r in children} == {"FINISHED"}
    assert len({r.data.tags["node_id"] for r in children}) == 2      # both nodes ran trials
    history = client.get_metric_history(children[0].info.run_id, "dist_inf")
    assert len(history) == 3
    trials, ckpts = ntksweep.load_results(tmp_path / "out")
    assert sorted(trials.trial_id) == expected and set(trials.status) == {"completed"}
    assert len(ckpts) == 3 * len(expected) and not ckpts.duplicated(["trial_id", "step"]).any()


# ---------------------------------------------------------------- object storage
@pytest.mark.slow
def test_a_data_file_only_the_driver_can_read_reaches_every_worker(ray_fresh, monkeypatch,
                                                                    tmp_path):
    """`dataset: file` with a relative data_path, on a 2-node cluster started in another
    directory (its workers cannot open that path, as on nodes without the driver's disk;
    one CPU each, so one worker on each): every trial reads the driver's file and completes
    with the numbers of the same trial run in this process on the file read here."""
    from ray.cluster_utils import Cluster

    rng = np.random.default_rng(0)
    data = tmp_path / "here"
    data.mkdir()
    np.savez(data / "points.npz", X=rng.normal(size=(24, 3)), y=rng.normal(size=(24, 1)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    monkeypatch.chdir(data)
    base = {**TINY, "dataset": "file", "data_path": "points.npz", "n_train": 12,
            "n_eval": 12}
    grid = {"width": [8, 16], "seed": [0, 1]}
    try:
        summary = run_sweep(load_sweep_spec(tiny_spec("far", tmp_path / "far", grid, **base)),
                            address=cluster.address, tracking=False, quiet=True)
    finally:
        ray_fresh.shutdown()
        cluster.shutdown()
    far, _ = ntksweep.load_results(summary.out_dir)
    assert set(far.status) == {"completed"}, list(far.error)
    for row in far.itertuples():             # each trial again here, reading the file here
        here = ntksweep.run_trial(TrialSpec(**{**base, "width": row.width, "seed": row.seed}))
        assert here.records[0]["dist_inf"] == pytest.approx(row.init_dist_inf, rel=1e-5)
        assert here.records[-1]["train_loss"] == pytest.approx(row.final_train_loss, rel=1e-5)


def test_sweep_to_s3_resumes_there_and_reads_back(ray_local, s3, tmp_path):
    out = f"s3://{s3.bucket}/sweeps/tiny"
    raw = tiny_spec("s3tiny", out, keep_kernels="first_last")
    spec = load_sweep_spec(raw)
    # SQLite cannot live in a bucket: the default is refused before anything is written
    with pytest.raises(ValueError, match="object store.*--tracking-uri"):
        run_sweep(spec, quiet=True)
    assert s3.keys() == []
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = run_sweep(spec, tracking_uri=uri, quiet=True)
    assert first.counts == {"completed": 4}
    keys = s3.keys("sweeps/tiny/")
    rows = [k for k in keys if k.startswith("sweeps/tiny/trials/width=")]
    assert len(rows) == 4 and not any("/.tmp-" in k or ".probe-" in k for k in keys)
    assert "sweeps/tiny/sweep.json" in keys and any("/kernels/" in k for k in keys)

    # lose one finished trial (its completion row): the re-run redoes exactly that one
    s3.client().delete_object(Bucket=s3.bucket, Key=rows[0])
    again = run_sweep(spec, tracking_uri=uri, quiet=True)
    assert again.skipped == 3 and again.counts == {"completed": 1}

    trials, ckpts = ntksweep.load_results(out)
    assert sorted(trials.trial_id) == sorted(t.trial_id for t in spec.trials())
    assert not ckpts.duplicated(["trial_id", "step"]).any() and len(ckpts) == 12
    assert len(ntksweep.load_results(out, {"width": 8})[0]) == 2
    # the same sweep on local disk gives the same numbers (the store is only transport)
    local = run_sweep(load_sweep_spec({**raw, "output_dir": str(tmp_path / "local")}),
                      quiet=True)
    _, local_ckpts = ntksweep.load_results(local.out_dir)
    cols = ["trial_id", "step", "dist_inf", "dist_init", "train_loss"]
    pd.testing.assert_frame_equal(ckpts[cols].reset_index(drop=True),
                                  local_ckpts[cols].reset_index(drop=True))
    path = ckpts.kernel_path.dropna().iloc[0]
    np.testing.assert_array_equal(store.load_array(out, path),
                                  store.load_array(local.out_dir, path))


def test_cli_against_s3(s3, tmp_path):
    out = f"s3://{s3.bucket}/cli"
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec("clis3", out, grid={"width": [8]})))
    run = subprocess.run([sys.executable, "-m", "ntksweep.cli", "run", str(spec_file),
                          "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--quiet",
                          "--num-cpus", "1"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **s3.env})
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"Results in {out}" in run.stdout
    dry = subprocess.run([sys.executable, "-m", "ntksweep.cli", "run", str(spec_file),
                          "--dry-run"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **s3.env})
    assert "1 already done" in dry.stdout, dry.stdout + dry.stderr
    report = subprocess.run([sys.executable, "-m", "ntksweep.cli", "report", out,
                             "--html-dir", str(tmp_path / "rep"), "--tracking-uri",
                             f"sqlite:///{tmp_path}/m.db"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, **s3.env})
    assert report.returncode == 0, report.stdout + report.stderr
    assert (tmp_path / "rep" / "report.html").read_text().count("<h1>ntksweep report: cli") == 1


def test_unreachable_bucket_is_refused_before_any_trial(ray_local, s3, tmp_path):
    spec = load_sweep_spec(tiny_spec("nob", f"s3://no-such-bucket-{s3.port}/x"))
    with pytest.raises(ValueError, match="not writable.*bucket"):
        run_sweep(spec, tracking_uri=f"sqlite:///{tmp_path}/m.db", quiet=True)


def test_fsspec_only_scheme_round_trip():
    """A scheme pyarrow lacks goes through fsspec (here its in-memory filesystem)."""
    out = "memory://ntksweep-test/run"
    spec = TrialSpec.from_dict({**TINY, "width": 8, "seed": 0})
    records = [{"step": s, "t": float(s), "dist_inf": 0.1 / (s + 1)} for s in (0, 3, 6)]
    store.check_writable(out)
    kernel = np.arange(16.0).reshape(4, 4)
    store.write_trial(out, "s", spec, TrialOutcome("abc", "completed", records, {6: kernel}))
    trials, ckpts = ntksweep.load_results(out)
    assert list(trials.trial_id) == ["abc"] and trials.width.dtype == np.int64
    assert list(ckpts.step) == [0, 3, 6] and ckpts.dist_inf.iloc[2] == pytest.approx(0.1 / 7)
    np.testing.assert_array_equal(store.load_array(out, ckpts.kernel_path.iloc[2]), kernel)
    assert store.finished_trials(out) == {"abc": "completed"}


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(ValueError, match="no filesystem handles this URI"):
        ntksweep.load_results("nosuchscheme://bucket/x")


# ---------------------------------------------------------------- deployment files
def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_ray_up_config_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))           # Ray's JSON schema for `ray up`
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["max_workers"] >= 1 and "--gpus all" in config["docker"]["worker_run_options"]
    assert any("pip install" in c and "ntksweep" in c for c in config["setup_commands"])
    assert any("mlflow server" in c for c in config["head_start_ray_commands"])
    assert config["available_node_types"][config["head_node_type"]]["resources"]["CPU"] == 0


def test_kuberay_manifests_are_consistent():
    cluster, = _docs(CLUSTER / "kuberay" / "raycluster.yaml")
    job, = _docs(CLUSTER / "kuberay" / "rayjob.yaml")
    mlflow = {d["kind"]: d for d in _docs(CLUSTER / "kuberay" / "mlflow.yaml")}
    pvc, = _docs(CLUSTER / "kuberay" / "results-pvc.yaml")
    for doc in (cluster, job):
        assert doc["apiVersion"] == "ray.io/v1"
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    # the manifest's Ray is the image's (head, workers and driver must match), whatever Ray
    # this machine happens to have
    base_image = next(ln.split()[1] for ln in (CLUSTER / "Dockerfile").read_text().splitlines()
                      if ln.startswith("FROM "))
    assert base_image.startswith(f"rayproject/ray:{cluster['spec']['rayVersion']}-")
    workers = cluster["spec"]["workerGroupSpecs"][0]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] >= 1 and workers["maxReplicas"] >= workers["minReplicas"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    # the job finds the cluster by name and writes where the head mounts the results volume
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    mount = head["containers"][0]["volumeMounts"][0]
    claim = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in head["volumes"]
             if "persistentVolumeClaim" in v}
    # the specs ConfigMap is optional: the head starts without one
    specs = [v for v in head["volumes"] if "configMap" in v]
    assert specs and all(v["configMap"]["optional"] for v in specs)
    assert claim[mount["name"]] == pvc["metadata"]["name"]
    entry = shlex.split(job["spec"]["entrypoint"])
    assert entry[:2] == ["ntksweep", "run"]
    assert entry[entry.index("--out") + 1].startswith(mount["mountPath"] + "/")
    # the entrypoint's spec and overrides are valid for ntksweep itself
    spec_path = Path(entry[2].replace("/home/ray/ntksweep/", str(CLUSTER.parent) + "/"))
    sets = [entry[i + 1] for i, a in enumerate(entry) if a == "--set"]
    from ntksweep.sweep_spec import parse_overrides

    spec = load_sweep_spec(spec_path, parse_overrides(sets))
    assert spec.resources.gpus_per_trial == 1 and spec.resources.max_workers >= 1
    # MLflow: the URI the job uses is a host the server allows, served by the Service
    deploy, service = mlflow["Deployment"], mlflow["Service"]
    uri = entry[entry.index("--tracking-uri") + 1]
    host = uri.split("//")[1]
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    allowed = next(a.split("=", 1)[1] for a in args if a.startswith("--allowed-hosts="))
    assert host in allowed.split(",")
    assert host.split(".")[0] == service["metadata"]["name"]
    assert int(host.split(":")[1]) == service["spec"]["ports"][0]["port"]
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"] \
        == deploy["spec"]["template"]["metadata"]["labels"]
    env = {e["name"]: e.get("value") for e in head["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_URI"] == uri


def test_slurm_script_and_dockerfile():
    script = CLUSTER / "slurm" / "ntksweep.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "#SBATCH --nodes" in text and "ray start --head" in text and "ntksweep run" in text
    lines = [ln.strip() for ln in (CLUSTER / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    import ray

    assert lines[0] == f"FROM rayproject/ray:{ray.__version__}-py311-gpu"
    copied = [ln.split()[-2] for ln in lines if ln.startswith("COPY")]
    for part in ("ntksweep", "experiments"):
        assert part in copied and (CLUSTER.parent / part).is_dir()
    assert any(ln.startswith("RUN pip install") and "[cluster]" in ln for ln in lines)
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((CLUSTER.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert "cluster" in extras


SRUN = """#!/usr/bin/env bash
# stand-in for SLURM's srun on a one-node 'allocation': drop srun's options, run the command;
# with SRUN_HEAD_FAILS_ONCE=FILE the first `ray start --head` fails, as a head whose dashboard
# agent was late on a busy node does
while [[ $# -gt 0 && $1 == -* ]]; do
  case $1 in -w|--nodelist|-N|-n) shift 2 ;; *) shift ;; esac
done
if [[ -n "${SRUN_HEAD_FAILS_ONCE:-}" && "$1 $2 $3" == "ray start --head" \
      && ! -e "$SRUN_HEAD_FAILS_ONCE" ]]; then
  touch "$SRUN_HEAD_FAILS_ONCE"; echo "Exception: The current node timed out during startup." >&2
  exit 1
fi
exec "$@"
"""
SCONTROL = """#!/usr/bin/env bash
# stand-in for `scontrol show hostnames LIST`
tr ',' '\\n' <<< "$3"
"""


def slurm_allocation(tmp_path, ray_start_args):
    """The environment of a one-node 'allocation' on this machine: srun and scontrol are
    stand-ins on PATH; Ray's ports and temp dir are this test's own."""
    from servers import free_port

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SLURM_JOB_NODELIST": "localhost", "SLURM_SUBMIT_DIR": str(tmp_path),
           "SLURM_CPUS_PER_TASK": "2", "SLURM_GPUS_PER_NODE": "0",
           "NTKSWEEP_OUT": str(tmp_path / "results"), "RAY_PORT": str(free_port()),
           "MLFLOW_PORT": str(free_port()), "MLFLOW_WORKERS": "1",
           "RAY_START_ARGS": ray_start_args}
    env.pop("RAY_AUTH_MODE", None)       # the script turns token auth on itself
    return env


@pytest.mark.slow
def test_slurm_script_runs_a_sweep(tmp_path):
    """The batch script itself, end to end on this machine: only srun and scontrol are
    stand-ins (a one-node allocation); Ray, MLflow and the sweep are real. The first Ray
    head fails to start; the script starts another."""
    from servers import free_port

    spec_file = tmp_path / "slurmy.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec("slurmy", tmp_path / "unused")))
    temp = f"/tmp/ntk-slurm-{free_port()}"
    ports = " ".join(f"--{p}={free_port()}" for p in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port"))
    env = slurm_allocation(tmp_path, f"--temp-dir={temp} {ports}")
    env["SRUN_HEAD_FAILS_ONCE"] = str(tmp_path / "head-failed")
    try:
        run = subprocess.run(["bash", str(CLUSTER / "slurm" / "ntksweep.sbatch"), str(spec_file),
                              "--set", "steps=4"], env=env, capture_output=True, text=True,
                             timeout=400)
    finally:
        import shutil

        shutil.rmtree(temp, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "head-failed").exists()               # the first head failed ...
    assert "did not start (attempt 1 of 3)" in run.stderr    # ... and the second one ran it
    out = tmp_path / "results" / "slurmy"
    trials, _ = ntksweep.load_results(out)
    assert len(trials) == 4 and set(trials.status) == {"completed"}
    assert set(trials.steps) == {4}                          # the extra options reached it
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")      # the server's store, now closed
    exp = client.get_experiment_by_name("slurmy")
    children = client.search_runs([exp.experiment_id], "tags.`ntksweep.role` = 'trial'")
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}


@pytest.mark.slow
def test_slurm_script_stops_with_a_clear_error_when_the_ray_head_does_not_start(tmp_path):
    """A head that cannot start (here: an option `ray start` refuses) is tried three times,
    then the script exits non-zero saying so, before MLflow or the sweep start."""
    spec_file = tmp_path / "slurmy.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec("slurmy", tmp_path / "unused")))
    env = slurm_allocation(tmp_path, "--no-such-ray-option")
    run = subprocess.run(["bash", str(CLUSTER / "slurm" / "ntksweep.sbatch"), str(spec_file)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr.count("did not start (attempt") == 3
    assert "no Ray head on" in run.stderr and "after 3 attempts" in run.stderr
    assert run.stderr.count("no-such-ray-option") >= 3           # ray's own words, each time
    assert "mlflow" not in run.stdout.lower()                    # no server, no sweep
    assert not (tmp_path / "results" / "slurmy" / "mlflow.db").exists()
    assert not (tmp_path / "results" / "slurmy" / "trials").exists()


@pytest.mark.parametrize("env, gpus", [
    ({"SLURM_GPUS_ON_NODE": "4"}, "4"),                       # any request, as slurmd saw it
    ({"SLURM_GPUS_PER_NODE": "2"}, "2"),                      # --gpus-per-node=2
    ({"SLURM_GPUS_PER_NODE": "a100:8"}, "8"),                 # --gpus-per-node=a100:8
    ({"SLURM_TRES_PER_NODE": "gres/gpu:3"}, "3"),             # --gres=gpu:3
    ({"SLURM_JOB_GRES": "gpu:h100:2"}, "2"),                  # --gres=gpu:h100:2
    ({"SLURM_TRES_PER_NODE": "cpu=4,gres/gpu:tesla:6"}, "6"),
    ({"SLURM_JOB_GPUS": "0,1,2"}, "3"),                       # only the ids
    ({}, "0"),                                                # a CPU allocation
])
def test_slurm_script_counts_gpus_from_every_variable(env, gpus):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    run = subprocess.run(["bash", str(CLUSTER / "slurm" / "ntksweep.sbatch"), "--print-gpus"],
                         env={**clean, **env}, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and run.stdout.strip() == gpus, (run.stdout, run.stderr)
