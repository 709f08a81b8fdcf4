"""Your own network in a sweep (``architecture: "package.module:function"``): a composition
gets its limit and measures like a built-in network, a plain torch module measures what needs
no limit, nothing is imported without the user's consent, and every mistake is one line
before anything runs."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import ntksweep
from ntksweep.choices import ALLOW_IMPORT_ENV
from ntksweep.errors import SpecError
from ntksweep.plan import check_trials

TESTS = Path(__file__).resolve().parent
BASE = dict(dataset="circle", depth=3, width=64, steps=5, checkpoints=2, n_train=16, lr=0.1,
            n_eval=16, n_test=16)


@pytest.fixture
def allowed(monkeypatch):
    monkeypatch.setenv(ALLOW_IMPORT_ENV, "user_networks")
    monkeypatch.syspath_prepend(str(TESTS))


def test_a_users_composition_measures_exactly_as_the_built_in_network(allowed):
    """The user's MLP composition draws the built-in MLP's weights and has its limit: every
    number of the trial is the built-in trial's (float64: the two compute Θ by different
    structured paths, the MLP's fused one and the layer-wise one)."""
    own = ntksweep.run_trial(ntksweep.TrialSpec(architecture="user_networks:composed",
                                                dtype="float64", **BASE))
    built_in = ntksweep.run_trial(ntksweep.TrialSpec(architecture="mlp", dtype="float64",
                                                     **BASE))
    assert own.status == built_in.status == "completed"
    for mine, theirs in zip(own.records, built_in.records):
        for key in ("dist_inf", "dist_init", "gap_inf", "gap_lin", "dist_nngp",
                    "test_loss_kr_inf", "train_loss"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-9, nan_ok=True), key
    assert np.isfinite(own.records[0]["dist_inf"])


def test_a_users_networks_that_differ_in_a_field_its_function_names_get_their_own_limits(
        allowed):
    """One worker's cache keys a user's limit by every field the function reads (here σ_QK,
    which no built-in field of a user's architecture carries)."""
    from ntksweep.trial import TrialCache
    from ntksweep.trial.builders import cached_data, cached_limits

    cache = TrialCache()
    common = dict(dataset="tokens", dim=4, tokens=3, n_train=4, n_eval=2, depth=3, width=8,
                  steps=0, architecture="user_networks:attending")
    first = ntksweep.TrialSpec(query_key_std=1.0, **common)
    second = ntksweep.TrialSpec(query_key_std=3.0, **common)
    cached_limits(first, cached_data(first, cache), cache, "cpu")
    shared = cached_limits(second, cached_data(second, cache), cache, "cpu")
    alone = cached_limits(second, cached_data(second, TrialCache()), TrialCache(), "cpu")
    np.testing.assert_array_equal(shared.ntk, alone.ntk)


def test_a_users_torch_module_measures_what_needs_no_limit(allowed):
    outcome = ntksweep.run_trial(ntksweep.TrialSpec(architecture="user_networks:plain",
                                                    **BASE))
    assert outcome.status == "completed", outcome.error
    last = outcome.records[-1]
    for key in ("dist_inf", "gap_inf", "dist_nngp", "test_loss_kr_inf"):
        assert np.isnan(last[key]), key
    for key in ("dist_init", "gap_lin", "test_loss", "test_loss_kr_init", "target_align"):
        assert np.isfinite(last[key]), key


@pytest.mark.parametrize("architecture,message", [
    ("user_networks:wrong_signature", "must take width, depth and out_dim"),
    ("user_networks:wrong_inputs", r"does not run on inputs \(1, 2\)"),
    ("user_networks:not_a_network", "returned a int"),
    ("user_networks:raises", "raised ValueError: width must be even"),
    ("user_networks:missing", "has no function 'missing'"),
    ("user_networks_gone:net", "cannot import user_networks_gone"),
])
def test_a_users_mistake_is_one_line_before_anything_runs(allowed, monkeypatch,
                                                          architecture, message):
    monkeypatch.setenv(ALLOW_IMPORT_ENV, "user_networks,user_networks_gone")
    with pytest.raises(SpecError, match=message):
        check_trials([ntksweep.TrialSpec(architecture=architecture, **BASE)])


def test_nothing_is_imported_without_consent(monkeypatch):
    monkeypatch.delenv(ALLOW_IMPORT_ENV, raising=False)
    monkeypatch.syspath_prepend(str(TESTS))
    sys.modules.pop("user_networks", None)
    with pytest.raises(SpecError, match="--allow-import user_networks"):
        check_trials([ntksweep.TrialSpec(architecture="user_networks:plain", **BASE)])
    assert "user_networks" not in sys.modules


@pytest.mark.slow
def test_a_sweep_of_your_own_networks_from_the_command_line(tmp_path):
    """`ntksweep run --allow-import`: the composition and the plain module each once in
    Parquet and in MLflow; without the flag the same command is one line and writes
    nothing."""
    out = tmp_path / "own"
    spec = tmp_path / "own.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "own", "output_dir": str(out), "base": BASE,
        "grid": {"architecture": ["user_networks:composed", "user_networks:plain"]}}))
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop(ALLOW_IMPORT_ENV, None)
    cmd = [sys.executable, "-m", "ntksweep.cli", "run", str(spec), "--quiet"]
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--allow-import user_networks" in refused.stderr
    assert not out.exists()
    ran = subprocess.run([*cmd, "--allow-import", "user_networks"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    trials, _ = ntksweep.load_results(out)
    assert sorted(trials.architecture) == ["user_networks:composed", "user_networks:plain"]
    assert set(trials.status) == {"completed"}
    by = trials.set_index("architecture").init_dist_inf
    assert np.isfinite(by["user_networks:composed"]) and np.isnan(by["user_networks:plain"])


def test_a_users_composition_has_its_memory_planned_from_its_layers(allowed):
    """The plan estimates a composition's peak from the shapes its layers report — growing
    with its width — and a too-small memory_budget is refused there as for a built-in net;
    a plain module is built and run once, unestimated."""
    from ntksweep.data import data_shape
    from ntksweep.plan import _network_bytes

    def peak(architecture, width):
        t = ntksweep.TrialSpec(architecture=architecture, **{**BASE, "width": width})
        return _network_bytes(t, data_shape(t.dataset, **t.data_args()))

    small, large = peak("user_networks:composed", 64), peak("user_networks:composed", 2048)
    assert 0 < small < large
    # its 2048² float32 weight matrix, its gradient and a step's temporary: ≥ 3 · 16 MiB
    assert large > 3 * 2048**2 * 4
    assert peak("user_networks:plain", 64) == 0


def test_a_kernel_job_and_a_single_trial_take_the_same_consent(monkeypatch, tmp_path, capsys):
    """`ntksweep kernel` and `ntksweep trial` take `--allow-import` as `run` does: without it
    one line naming the flag, nothing written; with it the kernel job's Gram matrix is the
    user's composition's own limit on the data in one piece."""
    from ntksweep import cli
    from ntksweep import layers as nl
    from ntksweep.gram import GramMatrix
    from ntksweep.trial.builders import dataset_for

    monkeypatch.setenv(ALLOW_IMPORT_ENV, "")           # restored after: the flag sets it
    monkeypatch.syspath_prepend(str(TESTS))
    network = {"dataset": "digits", "n_train": 12, "architecture": "user_networks:pooled"}
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump({"name": "k", "output_dir": str(tmp_path / "k"),
                                    "network": network, "tile": 5}))
    trial = ["trial", "--architecture", "user_networks:composed", "--dataset", "circle",
             "--n-train", "8", "--n-eval", "8", "--steps", "2", "--checkpoints", "2"]
    for argv in (["kernel", str(path)], trial):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--allow-import user_networks" in err, err
    assert not (tmp_path / "k").exists()
    assert cli.main(["kernel", str(path), "--allow-import", "user_networks"]) == 0
    spec = ntksweep.TrialSpec(**network)
    x = dataset_for(spec).x_train.reshape(12, 1, 8, 8)
    own = nl.serial(nl.Conv(64), nl.Activation("relu"), nl.AvgPool(2), nl.Conv(64),
                    nl.Activation("relu"), nl.GlobalAvgPool(), nl.Dense(10)).kernels(x)
    np.testing.assert_allclose(np.asarray(GramMatrix(tmp_path / "k", "train", "ntk")), own.ntk,
                               rtol=1e-12, atol=0)
    assert cli.main([*trial, "--allow-import", "user_networks"]) == 0
    assert "status: completed" in capsys.readouterr().out


@pytest.mark.slow
def test_workers_on_a_cluster_get_the_consent_of_the_process_that_started_them(
        ray_fresh, monkeypatch, tmp_path):
    """A 2-node Ray cluster started without the consent (its workers do not share the
    driver's environment, as on a real cluster) and a driver given it: the tile workers
    compute the user's composition's limit, equal to it in one piece, and a sweep's trial
    of the user's network completes there."""
    from ray.cluster_utils import Cluster

    from ntksweep import layers as nl
    from ntksweep.gram import GramMatrix, load_gram_spec, run_gram
    from ntksweep.sweep import RayTileExecutor, run_sweep
    from ntksweep.sweep_spec import load_sweep_spec
    from ntksweep.trial.builders import dataset_for

    monkeypatch.delenv(ALLOW_IMPORT_ENV, raising=False)
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.syspath_prepend(str(TESTS))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    monkeypatch.setenv(ALLOW_IMPORT_ENV, "user_networks")    # this process only
    network = {"dataset": "digits", "n_train": 12, "architecture": "user_networks:pooled"}
    job = load_gram_spec({"name": "k", "output_dir": str(tmp_path / "k"), "network": network,
                          "tile": 4})
    sweep = load_sweep_spec({"name": "own", "output_dir": str(tmp_path / "own"),
                             "base": {**BASE, "architecture": "user_networks:composed"}})
    try:
        ray_fresh.init(address=cluster.address, log_to_driver=False)
        with RayTileExecutor(2) as executor:
            run = run_gram(job, executor)
        ray_fresh.shutdown()
        summary = run_sweep(sweep, address=cluster.address, tracking=False, quiet=True)
    finally:
        ray_fresh.shutdown()
        cluster.shutdown()
    assert run.computed == 6                                  # 3 bands of 4: 3 + 2 + 1
    x = dataset_for(ntksweep.TrialSpec(**network)).x_train.reshape(12, 1, 8, 8)
    own = nl.serial(nl.Conv(64), nl.Activation("relu"), nl.AvgPool(2), nl.Conv(64),
                    nl.Activation("relu"), nl.GlobalAvgPool(), nl.Dense(10)).kernels(x)
    np.testing.assert_allclose(np.asarray(GramMatrix(job.output_dir, "train", "ntk")),
                               own.ntk, rtol=1e-12, atol=0)
    trials, _ = ntksweep.load_results(summary.out_dir)
    assert list(trials.status) == ["completed"], list(trials.error)
    assert np.isfinite(trials.init_dist_inf.iloc[0])
