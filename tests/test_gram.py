"""Kernel jobs (``ntksweep kernel``): a network's limit on a data set in tiles, equal to
the limit computed in one piece; resumed without recomputing a finished tile; a damaged
or missing tile computed again; the same on Ray actors; bad specs refused in one line."""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

import ntksweep
from ntksweep import cli
from ntksweep.errors import SpecError
from ntksweep.gram import GramMatrix, load_gram_spec, run_gram
from ntksweep.gram.spec import read_manifest
from ntksweep.trial.builders import dataset_for, inputs, limit_kernels

CNN = {"dataset": "digits", "n_train": 40, "n_test": 13, "architecture": "cnn", "depth": 3}


def _spec(tmp_path, network=CNN, tile=16, name="g"):
    return load_gram_spec({"name": name, "output_dir": str(tmp_path / name),
                           "network": network, "tile": tile})


def _direct(spec):
    """The limit on the whole train set and test × train, in one piece each."""
    net = spec.network
    data = dataset_for(net)
    train, test = inputs(net, data, data.x_train), inputs(net, data, data.x_test)
    return limit_kernels(net, train), limit_kernels(net, test, train)


def test_a_kernel_job_is_the_limit_in_one_piece_and_reads_back_by_slices(tmp_path):
    spec = _spec(tmp_path)
    seen = []
    run = run_gram(spec, on_progress=seen.append)
    train, test = _direct(spec)
    # 40 train rows in tiles of 16: 3 bands, 3 + 2 + 1 upper-triangle tiles; test: 1 × 3
    assert run.computed == 6 + 3 and run.kept == 0 and len(seen) == 9
    assert run.entries == 16 * 16 * 3 + 16 * 8 * 2 + 8 * 8 + 13 * 40
    out = spec.output_dir
    np.testing.assert_allclose(np.asarray(GramMatrix(out, "train", "ntk")), train.ntk,
                               rtol=1e-13, atol=0)
    np.testing.assert_allclose(np.asarray(GramMatrix(out, "train", "nngp")), train.nngp,
                               rtol=1e-13, atol=0)
    np.testing.assert_allclose(np.asarray(GramMatrix(out, "test", "ntk")), test.ntk,
                               rtol=1e-13, atol=0)
    part = GramMatrix(out, "train", "ntk")[5:37, 3:20]     # across tiles and the diagonal
    np.testing.assert_allclose(part, train.ntk[5:37, 3:20], rtol=1e-13, atol=0)


def test_a_resumed_job_recomputes_only_missing_and_damaged_tiles(tmp_path):
    spec = _spec(tmp_path)
    run_gram(spec)
    tiles = sorted((tmp_path / "g" / "tiles").rglob("*.npz"))
    tiles[0].unlink()                                     # lost
    data = bytearray(tiles[1].read_bytes())
    data[len(data) // 2] ^= 0xFF                         # a flipped bit in its numbers
    tiles[1].write_bytes(bytes(data))
    tiles[2].write_bytes(tiles[2].read_bytes()[:100])     # cut short
    again = run_gram(spec)
    assert (again.computed, again.kept) == (3, 6)
    assert run_gram(spec).computed == 0                   # nothing twice
    train, _ = _direct(spec)
    np.testing.assert_allclose(np.asarray(GramMatrix(spec.output_dir)), train.ntk,
                               rtol=1e-13, atol=0)


@pytest.mark.parametrize("raw, match", [
    ({"name": "x", "network": {**CNN, "n_train": 10}, "tile": 0}, "tile: rows per tile"),
    ({"name": "x", "network": {**CNN, "depth": "three"}}, "depth"),
    ({"name": "x", "network": CNN, "tiles": 8}, "unknown key 'tiles' (did you mean 'tile'?)"),
    ({"network": CNN}, "name:"),
    ({"name": "x", "network": CNN, "dtype": "float16"}, "dtype: float64 (the default) or float32"),
])
def test_bad_kernel_specs_are_refused(raw, match):
    with pytest.raises(SpecError, match=re.escape(match)):
        load_gram_spec(raw)


def test_set_overrides_a_kernel_specs_keys_and_its_networks_fields(tmp_path, capsys):
    raw = {"name": "k", "output_dir": str(tmp_path / "k"), "network": CNN, "tile": 16}
    spec = load_gram_spec(raw, {"tile": 8, "dtype": "float32", "n_train": 24,
                                "network.depth": 2})
    assert (spec.tile, spec.dtype, spec.network.n_train, spec.network.depth) == \
        (8, "float32", 24, 2)
    assert spec.network.architecture == "cnn" and raw["network"] == CNN      # not mutated
    for key, match in (("n_trian", "did you mean 'n_train'"), ("tiles", "did you mean 'tile'")):
        with pytest.raises(SpecError, match=re.escape(match)):
            load_gram_spec(raw, {key: 3})
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["kernel", str(path), "--dry-run", "--set", "n_train=24"]) == 0
    assert "train: 24 × 24, 0/3 tiles" in capsys.readouterr().out     # bands of 16: 2 + 1


def test_a_network_without_a_limit_and_another_jobs_dir_are_refused(tmp_path):
    sqrt = {"dataset": "tokens", "n_train": 4, "architecture": "transformer",
            "attention_scaling": "sqrt", "heads": 1}
    with pytest.raises(SpecError, match="no closed-form limit"):
        run_gram(_spec(tmp_path, sqrt))
    assert not (tmp_path / "g").exists()                  # refused before writing
    run_gram(_spec(tmp_path, tile=20))
    for other in ({**CNN, "depth": 4}, {**CNN, "data_seed": 1}, {**CNN, "n_train": 41}):
        with pytest.raises(SpecError, match="holds another kernel job"):
            run_gram(_spec(tmp_path, other, tile=20))
    with pytest.raises(SpecError, match="holds another kernel job"):
        run_gram(_spec(tmp_path, tile=16))
    # fields the limit does not read (the seed, the training) name the same job: kept
    same = run_gram(_spec(tmp_path, {**CNN, "seed": 7, "lr": 0.5, "width": 32}, tile=20))
    assert (same.computed, same.kept) == (0, 3 + 2)


def test_the_command_runs_a_job_and_says_where_it_is(tmp_path, capsys):
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump({"name": "k", "output_dir": str(tmp_path / "k"),
                                    "network": {**CNN, "n_test": 0}, "tile": 20}))
    assert cli.main(["kernel", str(path)]) == 0
    captured = capsys.readouterr()
    assert "kernel train: 3/3 tiles" in captured.err and "3 tiles computed" in captured.out
    assert cli.main(["kernel", str(path)]) == 0 and "0 tiles computed, 3 kept" in \
        capsys.readouterr().out
    with_test = tmp_path / "t.yaml"
    with_test.write_text(yaml.safe_dump({"name": "t", "output_dir": str(tmp_path / "t"),
                                         "network": CNN, "tile": 20}))
    assert cli.main(["kernel", str(with_test), "--ridge", "1e-3"]) == 0
    out = capsys.readouterr().out
    assert "kernel regression with ntk (ridge 0.001, exact): test MSE" in out
    assert "kernel regression with nngp" in out and "accuracy" in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 't' / 'mlflow.db'}")
    run, = client.search_runs([client.get_experiment_by_name("t-kernel").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["architecture"] == "cnn"
    assert run.data.metrics["tiles_computed"] == 3 + 2 and run.data.tags["devices"]
    assert run.data.metrics["entries_per_second"] > 0
    timings = client.get_metric_history(run.info.run_id, "train_tile_seconds")
    assert len(timings) == 3 and all(m.value > 0 for m in timings)     # each tile's own
    assert cli.main(["status", str(tmp_path / "t")]) == 0
    shown = capsys.readouterr().out
    assert "train: 40 × 40, 3/3 tiles written (complete)" in shown and "test: 13 × 40" in shown
    assert cli.main(["kernel", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_dry_run_plans_the_job_verifies_what_is_done_and_writes_nothing(tmp_path, capsys):
    """`--dry-run`: the tiles a run would compute (a damaged or lost tile counted as to
    do, as a resume would), the entries they hold, the disk of the tiles a run writes (the
    files' own arrays), a pace timed on a real sample tile; nothing created or changed, and
    what a run refuses refused the same way."""
    from ntksweep.gram.plan import plan_gram

    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump({"name": "k", "output_dir": str(tmp_path / "k"),
                                    "network": CNN, "tile": 20}))
    assert cli.main(["kernel", str(path), "--dry-run", "--ridge", "1e-3"]) == 0
    shown = capsys.readouterr().out
    # train 40 × 40 in tiles of 20: the two diagonal squares and one above; test 13 × 40: 2
    assert "train: 40 × 40, 0/3 tiles already written and verified, 1,200 entries" in shown
    assert "test: 13 × 40, 0/2 tiles already written and verified, 520 entries" in shown
    assert "ms per entry" in shown and "then kernel regression with ridge 0.001: exact" in shown
    assert not (tmp_path / "k").exists()
    spec = load_gram_spec(path)
    run_gram(spec)
    arrays = [np.load(p) for p in (tmp_path / "k" / "tiles").rglob("*.npz")]
    assert plan_gram(spec).disk_bytes == sum(a["ntk"].nbytes + a["nngp"].nbytes for a in arrays)
    assert np.isnan(plan_gram(spec).seconds_per_entry)            # complete: nothing timed
    lost, damaged = sorted((tmp_path / "k" / "tiles" / "train").glob("*.npz"))[:2]
    lost.unlink()
    damaged.write_bytes(damaged.read_bytes()[:100])
    before = _snapshot(tmp_path / "k")
    plan = plan_gram(spec)
    train = plan.blocks[0]
    assert (train.done, train.tiles, plan.blocks[1].done, plan.blocks[1].tiles) == (1, 3, 2, 2)
    assert train.entries_left == 2 * 20 * 20 and plan.seconds_per_entry > 0
    assert 1 <= plan.sample <= 20
    assert cli.main(["kernel", str(path), "--dry-run", "--workers", "2"]) == 0
    assert "over 2 workers" in capsys.readouterr().out
    assert _snapshot(tmp_path / "k") == before                   # nothing written
    other = tmp_path / "o.yaml"
    other.write_text(path.read_text().replace("depth: 3", "depth: 4"))
    for options, refusal in ((["--dry-run"], "holds another kernel job"),
                             (["--dry-run", "--workers", "0"], "--workers 0: give 1")):
        assert cli.main(["kernel", str(other), *options]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and refusal in err, err
    assert _snapshot(tmp_path / "k") == before


@pytest.mark.slow
def test_the_other_commands_know_a_kernel_jobs_dir(tmp_path, capsys):
    """`ntksweep ui` serves a kernel job's MLflow store and links its experiment; on a job
    run without tracking it says so; `report` and `sync`, which read sweeps, say the dir
    holds a kernel job and where to look instead — each refusal one line."""
    import urllib.request

    from mlflow.tracking import MlflowClient
    from servers import free_port

    network = {**CNN, "n_train": 8, "n_test": 0}
    for name, options in (("tracked", []), ("untracked", ["--no-tracking"])):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, "output_dir": str(tmp_path / name),
                                        "network": network, "tile": 8}))
        assert cli.main(["kernel", str(path), *options]) == 0
    capsys.readouterr()
    for argv, said in ((["ui", str(tmp_path / "untracked")], "without an MLflow store"),
                       (["report", str(tmp_path / "tracked")], "holds a kernel job, not a sweep"),
                       (["sync", str(tmp_path / "tracked")], "ntksweep status")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ntksweep.cli", "ui", str(tmp_path / "tracked"),
                             "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in proc.stdout:        # printed once the server answers
            seen.append(line)
            if "MLflow UI for kernel job" in line:
                break
        client = MlflowClient(f"sqlite:///{tmp_path / 'tracked' / 'mlflow.db'}")
        exp_id = client.get_experiment_by_name("tracked-kernel").experiment_id
        link = seen[-1].split(": ", 1)[1].strip()
        assert link.endswith(f"/ntksweep/open?experiment={exp_id}"), seen
        assert urllib.request.urlopen(link, timeout=10).status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_float32_job_stores_float32_and_measures_its_precision_against_float64(
        tmp_path, capsys):
    """dtype: float32 — tiles and the matrix read back in float32, within float32's
    precision of the float64 limit; the precision each block's sample measured (the
    largest difference over its first 8 rows × columns, relative) is the one found here
    independently, kept in gram.json, shown by the command, its MLflow run and the status;
    a float64 job is refused that dir."""
    myrtle = {"dataset": "digits", "n_train": 20, "n_test": 10, "architecture": "myrtle",
              "depth": 5}
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump({"name": "k", "output_dir": str(tmp_path / "k"),
                                    "network": myrtle, "tile": 6, "dtype": "float32"}))
    assert cli.main(["kernel", str(path)]) == 0
    shown = capsys.readouterr().out
    spec = load_gram_spec(path)
    train, test = _direct(spec)
    tile = next((tmp_path / "k" / "tiles" / "train").glob("*.npz"))
    assert np.load(tile)["ntk"].dtype == np.float32
    manifest = read_manifest(spec.output_dir)
    for block, exact in (("train", train), ("test", test)):
        for kernel in ("ntk", "nngp"):
            got = GramMatrix(spec.output_dir, block, kernel)
            assert got.dtype == np.float32 and np.asarray(got).dtype == np.float32
            want = getattr(exact, kernel)
            assert np.abs(np.asarray(got) - want).max() <= 5e-6 * np.abs(want).max()
            sample = np.asarray(got)[:8, :8].astype(np.float64) - want[:8, :8]
            measured = np.abs(sample).max() / np.abs(want[:8, :8]).max()
            assert 0 < manifest["precision"][block][kernel] == pytest.approx(measured)
    assert "float32 precision, train: within" in shown and "float32 precision, test" in shown
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'k' / 'mlflow.db'}")
    run, = client.search_runs([client.get_experiment_by_name("k-kernel").experiment_id])
    assert run.data.params["dtype"] == "float32"
    assert run.data.metrics["train_ntk_float32_error"] == \
        pytest.approx(manifest["precision"]["train"]["ntk"])
    assert cli.main(["status", str(tmp_path / "k")]) == 0
    status = capsys.readouterr().out
    assert "float32" in status.splitlines()[0] and status.count("float32 within") == 2
    again = run_gram(spec)                                 # resumed: kept, and its measure
    assert again.computed == 0 and again.precision == manifest["precision"]
    with pytest.raises(SpecError, match="holds another kernel job"):
        run_gram(load_gram_spec({"name": "k", "output_dir": spec.output_dir,
                                 "network": myrtle, "tile": 6}))


def test_the_command_names_its_device_and_refuses_gpus_it_does_not_have(ray_local, tmp_path,
                                                                        capsys):
    """In this process: the CPU (here), named in the job's MLflow run; `--device cuda`
    without a GPU, and Ray workers asking for more GPUs than the cluster has, are one line
    each before any tile or run exists (Ray would wait for such GPUs forever)."""
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump({"name": "k", "output_dir": str(tmp_path / "k"),
                                    "network": {**CNN, "n_train": 8, "n_test": 0}, "tile": 8}))
    assert cli.main(["kernel", str(path)]) == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'k' / 'mlflow.db'}")
    run, = client.search_runs([client.get_experiment_by_name("k-kernel").experiment_id])
    assert run.data.tags["devices"] == ("cpu (this process)" if not torch.cuda.is_available()
                                        else f"{torch.cuda.get_device_name()} (this process)")
    capsys.readouterr()
    other = tmp_path / "o.yaml"
    other.write_text(path.read_text().replace(str(tmp_path / "k"), str(tmp_path / "o")))
    gpus = int(ray_local.cluster_resources().get("GPU", 0))
    refused = [["--workers", "2", "--gpus-per-worker", str(gpus + 1)]]
    if not torch.cuda.is_available():
        refused.append(["--device", "cuda"])
    for options in refused:
        assert cli.main(["kernel", str(other), *options]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("GPU" in err), err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="Ray's GPUs here are usable")
def test_tile_workers_given_gpus_their_torch_cannot_use_are_refused(ray_fresh, tmp_path,
                                                                     capsys):
    """Ray gives the tile workers GPUs (declared, on a machine whose torch has no CUDA, as a
    CPU build of torch on a GPU node would): one line before anything is written, not a job
    that computes on CPUs while it says GPUs."""
    ray_fresh.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump({"name": "k", "output_dir": str(tmp_path / "k"),
                                    "network": {**CNN, "n_train": 8, "n_test": 0}, "tile": 8}))
    assert cli.main(["kernel", str(path), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot use CUDA" in err and "--gpus-per-worker 0" in err
    assert not (tmp_path / "k").exists()
    assert cli.main(["kernel", str(path), "--workers", "2", "--gpus-per-worker", "0"]) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_kernel_job_on_the_gpu_is_the_cpus(tmp_path):
    """In this process on its GPU, float64 and float32: the CPU's kernel (float32 within its
    measured precision)."""
    from ntksweep.kernels.tiling import SerialExecutor

    myrtle = {"dataset": "digits", "n_train": 24, "n_test": 8, "architecture": "myrtle",
              "depth": 5}
    for dtype in ("float64", "float32"):
        spec = load_gram_spec({"name": dtype, "output_dir": str(tmp_path / dtype),
                               "network": myrtle, "tile": 8, "dtype": dtype})
        run = run_gram(spec, SerialExecutor("cuda"))
        train, _ = _direct(spec)
        got = np.asarray(GramMatrix(spec.output_dir, "train", "ntk")).astype(np.float64)
        scale = np.abs(train.ntk).max()
        assert np.abs(got - train.ntk).max() <= (1e-10 if dtype == "float64" else 5e-6) * scale
        assert dtype == "float64" or run.precision["train"]["ntk"] <= 5e-6


def test_the_kernel_command_imports_no_torch_to_parse():
    code = ("import sys, ntksweep.cli as c; c.build_parser().parse_args(['kernel', 'x.yaml']);"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.slow
def test_ray_actors_compute_the_same_tiles(ray_local, tmp_path):
    from ntksweep.sweep import RayTileExecutor

    serial = _spec(tmp_path, name="serial")
    run_gram(serial)
    sharded = _spec(tmp_path, name="ray")
    with RayTileExecutor(2) as executor:
        run = run_gram(sharded, executor)
    assert run.computed == 9
    assert len(executor.seconds) == 9 and min(executor.seconds.values()) > 0
    for block in ("train", "test"):
        np.testing.assert_array_equal(np.asarray(GramMatrix(sharded.output_dir, block)),
                                      np.asarray(GramMatrix(serial.output_dir, block)))


def test_the_guides_kernel_spec_is_a_valid_one():
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    section = guide.split("## Dataset-scale kernels", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = load_gram_spec(yaml.safe_load(block))
    assert spec.network.architecture == "myrtle" and set(spec.blocks()) == {"train", "test"}


@pytest.mark.slow
def test_a_job_killed_mid_run_resumes_without_recomputing_a_finished_tile(tmp_path):
    """kill -9 of the command while it writes tiles; the rerun keeps every tile that was
    there (none rewritten: their files are untouched) and computes only the rest."""
    import os
    import signal
    import time

    path = tmp_path / "k.yaml"
    network = {**CNN, "n_train": 160, "n_test": 0}
    path.write_text(yaml.safe_dump({"name": "k", "output_dir": str(tmp_path / "k"),
                                    "network": network, "tile": 8}))
    proc = subprocess.Popen([sys.executable, "-m", "ntksweep.cli", "kernel", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tiles = tmp_path / "k" / "tiles" / "train"
    while proc.poll() is None and len(list(tiles.glob("[0-9]*.npz"))) < 5:
        time.sleep(0.05)                  # polls the condition: as long as the job runs
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in tiles.glob("[0-9]*.npz")}
    assert 5 <= len(before) < 210, len(before)            # 20 bands: 210 tiles in all
    run = run_gram(load_gram_spec(path))
    assert (run.computed, run.kept) == (210 - len(before), len(before))
    assert all(tiles.joinpath(name).stat().st_mtime_ns == t for name, t in before.items())
    train, _ = _direct(load_gram_spec(path))
    np.testing.assert_allclose(np.asarray(GramMatrix(tmp_path / "k")), train.ntk,
                               rtol=1e-13, atol=0)


def test_conjugate_gradients_over_tiles_solve_as_the_exact_regression(tmp_path):
    """PCG streaming over the tiles against the exact solve, with either preconditioner,
    and both against ``kernel_regression`` on the limit computed in one piece (an
    independent path)."""
    from ntksweep.gram.regression import fit_gram
    from ntksweep.kernels.regression import kernel_regression

    spec = _spec(tmp_path, {**CNN, "n_train": 60, "n_test": 30}, tile=16)
    run_gram(spec)
    exact = fit_gram(spec.output_dir, ridge=1e-3, method="exact")
    for preconditioner in ("nystrom", "jacobi"):
        pcg = fit_gram(spec.output_dir, ridge=1e-3, method="pcg", tol=1e-12, rank=8,
                       preconditioner=preconditioner)
        assert pcg.method.startswith(f"pcg ({preconditioner}") and pcg.iterations > 1
        assert pcg.residual < 1e-10
        np.testing.assert_allclose(pcg.predictions, exact.predictions, rtol=0, atol=1e-9)
    train, test = _direct(spec)
    data = dataset_for(spec.network)
    direct = kernel_regression(test.ntk, train.ntk, data.y_train, ridge=1e-3)
    np.testing.assert_allclose(exact.predictions, direct, rtol=1e-8, atol=1e-10)
    assert exact.test_mse == pytest.approx(((direct - data.y_test) ** 2).sum(1).mean())
    assert exact.test_accuracy == np.mean(direct.argmax(1) == data.labels_test) > 0.5


def test_a_file_of_class_ids_is_scored_by_accuracy(tmp_path):
    """Your own images with `labels` (class ids) — the digits saved as a file: the kernel
    job's regression scores accuracy, the one a solve with one-hot targets minus 1/k on the
    job's matrices gives, well above chance."""
    from sklearn.datasets import load_digits

    from ntksweep.gram.regression import fit_gram

    digits = load_digits()
    np.savez(tmp_path / "digits.npz", X=digits.images[:, None] / 16.0, labels=digits.target)
    network = {"dataset": "file", "data_path": str(tmp_path / "digits.npz"), "n_train": 60,
               "n_test": 40, "architecture": "cnn", "depth": 3}
    spec = _spec(tmp_path, network, tile=32)
    run_gram(spec)
    fit = fit_gram(spec.output_dir, ridge=1e-3)
    data = dataset_for(spec.network)
    k_train = np.asarray(GramMatrix(spec.output_dir, "train", "ntk"))
    k_test = np.asarray(GramMatrix(spec.output_dir, "test", "ntk"))
    targets = np.eye(10)[data.labels_train] - 0.1
    lam = 1e-3 * np.trace(k_train) / len(k_train)
    predictions = k_test @ np.linalg.solve(k_train + lam * np.eye(len(k_train)), targets)
    accuracy = np.mean(predictions.argmax(1) == data.labels_test)
    assert fit.test_accuracy == pytest.approx(accuracy) and accuracy > 0.5


def test_the_nystrom_preconditioner_takes_the_top_of_the_spectrum_out(tmp_path):
    """Frangella et al.'s bound: CG on P⁻¹(K + λI) needs fewer than half Jacobi's steps on
    a CNTK (71 against 25 at rank 64 when written), and at rank N the sketch is K itself, so
    P⁻¹ is a multiple of (K + λI)⁻¹ and CG ends in one step (two: rounding)."""
    from ntksweep.gram.regression import fit_gram

    spec = _spec(tmp_path, {**CNN, "n_train": 150, "n_test": 20, "depth": 4}, tile=64)
    run_gram(spec)
    exact = fit_gram(spec.output_dir, ridge=1e-4, method="exact")
    solved = {}
    for preconditioner, rank in (("jacobi", 1), ("nystrom", 64), ("nystrom", 150)):
        fit = fit_gram(spec.output_dir, ridge=1e-4, method="pcg", tol=1e-10,
                       preconditioner=preconditioner, rank=rank)
        np.testing.assert_allclose(fit.predictions, exact.predictions, rtol=0, atol=1e-7)
        solved[preconditioner, rank] = fit.iterations
    assert solved["nystrom", 64] * 2 < solved["jacobi", 1]
    assert solved["nystrom", 150] <= 2
    with pytest.raises(ntksweep.errors.UserError, match="preconditioner must be"):
        fit_gram(spec.output_dir, method="pcg", preconditioner="ilu")


@pytest.mark.slow
def test_a_worker_killed_mid_tile_is_replaced_and_the_job_completes(ray_local, tmp_path):
    """SIGKILL of a tile actor's process while the job runs: the executor starts another,
    computes the lost tile there, and the job finishes whole — every tile written once."""
    import os
    import signal
    import threading

    from ntksweep.sweep import RayTileExecutor

    spec = _spec(tmp_path, {**CNN, "n_train": 120, "n_test": 0}, tile=8)   # 120 tiles
    written = []
    with RayTileExecutor(2) as executor:
        victim, _ = ray_local.get(executor.actors[0].where.remote())
        job = threading.Thread(target=lambda: written.append(
            run_gram(spec, executor, on_progress=lambda p: None)))
        job.start()
        tiles = tmp_path / "g" / "tiles" / "train"
        while job.is_alive() and len(list(tiles.glob("[0-9]*.npz"))) < 3:
            job.join(0.05)
        os.kill(victim, signal.SIGKILL)
        job.join(300)
        assert executor.replaced >= 1
    run, = written
    assert (run.computed, run.kept) == (120, 0)
    train, _ = _direct(spec)
    np.testing.assert_allclose(np.asarray(GramMatrix(spec.output_dir)), train.ntk,
                               rtol=1e-13, atol=0)


@pytest.mark.slow
def test_a_two_node_cluster_computes_the_kernel_of_one_process(ray_fresh, tmp_path):
    """256 digits (8×8 images), a CNN's limit, on a 2-node local Ray cluster (one tile
    actor per node): the job's Gram matrix is the limit computed in one piece here."""
    from ray.cluster_utils import Cluster

    from ntksweep.sweep import RayTileExecutor

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray_fresh.init(address=cluster.address, log_to_driver=False)
    try:
        spec = _spec(tmp_path, {**CNN, "n_train": 256, "n_test": 0, "depth": 2}, tile=32)
        with RayTileExecutor(2) as executor:
            run = run_gram(spec, executor)
            nodes = {node for _, node in ray_fresh.get([a.where.remote()
                                                        for a in executor.actors])}
    finally:
        ray_fresh.shutdown()
        cluster.shutdown()
    assert len(nodes) == 2 and run.computed == 36           # 8 bands: 36 tiles
    train, _ = _direct(spec)
    np.testing.assert_allclose(np.asarray(GramMatrix(spec.output_dir)), train.ntk,
                               rtol=1e-13, atol=0)


def test_a_kernel_job_on_an_object_store_resumes_there(s3, tmp_path):
    """Tiles and manifest in s3:// (a real S3-compatible server): the same matrix, and a
    rerun keeps every tile it finds there."""
    out = f"s3://{s3.bucket}/gram"
    spec = load_gram_spec({"name": "s3", "output_dir": out, "network": CNN, "tile": 16})
    first = run_gram(spec)
    assert (first.computed, run_gram(spec).kept) == (9, 9)
    train, test = _direct(spec)
    np.testing.assert_allclose(np.asarray(GramMatrix(out, "train")), train.ntk,
                               rtol=1e-13, atol=0)
    np.testing.assert_allclose(np.asarray(GramMatrix(out, "test", "nngp")), test.nngp,
                               rtol=1e-13, atol=0)


def test_a_shared_limits_tiles_are_cut_for_its_actors_once(tmp_path):
    """A shared limit's tile gives each actor about three tiles, none under 64 rows; a job
    that has begun keeps its tile whatever the workers of the run that resumes it."""
    from ntksweep.gram import GramSpec
    from ntksweep.sweep.limits import job_tile, shared_tile

    assert [shared_tile(1000, n) for n in (1, 2, 8)] == [334, 250, 143]
    assert shared_tile(100, 8) == 64
    job = str(tmp_path / "limit")
    assert job_tile(job, 1000, 2) == 250
    run_gram(GramSpec("limit", job, load_gram_spec({"name": "x", "network": CNN}).network,
                      tile=20, eval_rows=True))
    assert job_tile(job, 1000, 8) == 20


SHARED = {"dataset": "digits", "n_train": 40, "n_eval": 8, "n_test": 8, "depth": 3,
          "steps": 2, "checkpoints": 2, "device": "cpu", "lr": 0.1, "dtype": "float64"}


def _sweep(tmp_path, seeds):
    from ntksweep.sweep_spec import load_sweep_spec

    return load_sweep_spec({"name": "s", "output_dir": str(tmp_path / "s"), "base": SHARED,
                            "grid": {"architecture": ["cnn", "mlp"], "width": [8, 16],
                                     "seed": seeds}})


def _alone_agrees(out, trials, cols=("dist_inf", "dist_nngp", "gap_inf", "test_loss_kr_inf")):
    """Whether each trial's checkpoints in ``out`` are what the trial measures alone."""
    from ntksweep.trial import run_trial

    _, ckpts = ntksweep.load_results(out)
    agree = []
    for t in trials:
        alone = run_trial(t)
        rows = ckpts[ckpts.trial_id == t.trial_id].sort_values("step")
        agree.append(all(np.allclose(rows[c], [r[c] for r in alone.records], rtol=1e-10,
                                     atol=0) for c in cols))
    return agree


def test_a_sweeps_trials_read_their_limit_from_one_kernel_job(ray_local, tmp_path, capsys):
    """The conv trials' limit is one kernel job in OUT/limits (the MLP's, a closed form per
    pair, stays with the workers); every trial measures what it measures alone; a sweep
    resumed with more seeds keeps the job's tiles, and its new trials read them (a planted
    Θ_∞ shows in the conv trials only)."""
    from ntksweep.store.tiles import read_tile, write_tile
    from ntksweep.sweep import plan_sweep, run_sweep

    first = _sweep(tmp_path, [0, 1])
    assert any("4 trial(s) to run read a limit over pairs of positions" in note
               for note in plan_sweep(first)["notes"])
    summary = run_sweep(first, quiet=True)
    assert summary.counts == {"completed": 8}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 's' / 'mlflow.db'}")
    parent, = client.search_runs([client.get_experiment_by_name("s").experiment_id],
                                 "tags.`ntksweep.role` = 'sweep'")
    assert parent.data.metrics["shared_limits"] == 1
    assert parent.data.metrics["shared_limit_tiles_computed"] == 2
    assert parent.data.metrics["shared_limit_entries_per_second"] > 0
    jobs = sorted((tmp_path / "s" / "limits").iterdir())
    assert len(jobs) == 1 and (jobs[0] / "gram.json").is_file()
    tiles = sorted(jobs[0].rglob("*.npz"))
    # 48 points in one tile of 64 rows; test × [eval; train] in one more
    assert [t.relative_to(jobs[0]).as_posix() for t in tiles] == \
        ["tiles/test/0_0.npz", "tiles/train/0_0.npz"]
    assert cli.main(["status", first.out_dir]) == 0
    shown = capsys.readouterr().out
    assert f"shared limit {jobs[0].name}: cnn depth 3 on digits" in shown
    assert "train: 48 × 48, 1/1 tiles written (complete)" in shown
    assert "test: 8 × 48, 1/1 tiles written (complete)" in shown
    assert all(_alone_agrees(first.out_dir, [t for t in first.trials() if t.width == 8
                                             and t.seed == 0]))
    planted = read_tile(jobs[0], "tiles/train/0_0.npz")
    write_tile(jobs[0], "tiles/train/0_0.npz", {**planted, "ntk": 2 * planted["ntk"]})
    stamps = [t.stat().st_mtime_ns for t in tiles]
    spec = _sweep(tmp_path, [0, 1, 2])
    run_sweep(spec, tracking=False)
    assert "shared limit 1/1: cnn depth 3 on digits" in capsys.readouterr().err
    assert [t.stat().st_mtime_ns for t in tiles] == stamps       # nothing computed twice
    assert len(ntksweep.load_results(spec.out_dir)[0]) == 12
    new = [t for t in spec.trials() if t.seed == 2 and t.width == 8]
    assert [t.architecture for t in new] == ["cnn", "mlp"]
    assert _alone_agrees(spec.out_dir, new, cols=("dist_inf",)) == [False, True]
