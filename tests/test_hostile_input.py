"""Hostile and broken input: crafted data files, a zip bomb, YAML nested past reason, a binary
file as spec — each one line before anything runs, never a traceback, no code run; start-up
interrupted or the terminal closed; credentials never written, uploaded or shown."""

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ntksweep import cli, data_files

TINY = {"dataset": "circle", "n_train": 8, "n_eval": 8, "depth": 2, "steps": 6,
        "checkpoints": 3, "device": "cpu"}
N = 40


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _crafted(tmp: Path) -> dict[str, Path]:
    """Data files a user (or an attacker) might hand over, each wrong in its own way."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(N, 3)), rng.normal(size=N)
    files = {
        "strings as X": _npz(tmp / "s.npz", X=np.array([["a"] * 3] * N), y=y),
        "complex X": _npz(tmp / "c.npz", X=x + 1j, y=y),
        "datetimes as y": _npz(tmp / "d.npz", X=x, y=np.array(["2020-01-01"] * N,
                                                                dtype="datetime64[D]")),
        "bytes as y": _npz(tmp / "b.npz", X=x, y=np.array([b"x"] * N)),
        "a scalar X": _npz(tmp / "0d.npz", X=np.float64(3.0), y=y),
        "X without features": _npz(tmp / "nf.npz", X=np.zeros((N, 0)), y=y),
        "no y": _npz(tmp / "noy.npz", X=x),
        "NaN in X": _npz(tmp / "nan.npz", X=np.where(x > 1, np.nan, x), y=y),
        "lengths differ": _npz(tmp / "len.npz", X=x, y=y[:-3]),
        "structured X": _npz(tmp / "rec.npz", X=np.zeros(N, dtype=[("a", "f8"), ("b", "i4")]),
                             y=y),
    }
    np.savez(tmp / "obj.npz", X=np.array([object()] * N, dtype=object), y=y)
    files["objects in X"] = tmp / "obj.npz"
    (tmp / "notzip.npz").write_bytes(b"PK\x03\x04 this is not a zip archive at all")
    files["not a zip"] = tmp / "notzip.npz"
    good = _npz(tmp / "good.npz", X=x, y=y).read_bytes()
    (tmp / "cut.npz").write_bytes(good[:len(good) // 2])
    files["cut short"] = tmp / "cut.npz"
    pd.DataFrame({"a": ["u"] * N, "y": y}).to_parquet(tmp / "str.parquet")
    files["a string column"] = tmp / "str.parquet"
    pd.DataFrame({"a": x[:, 0]}).to_parquet(tmp / "noy.parquet")
    files["Parquet without y"] = tmp / "noy.parquet"
    pq.write_table(pa.table({"a": pa.array([[1.0, 2.0]] * N), "y": y}), tmp / "list.parquet")
    files["a list column"] = tmp / "list.parquet"
    tensor = pa.FixedShapeTensorArray.from_numpy_ndarray(np.zeros((N, 2, 2)))
    pq.write_table(pa.table({"t": tensor, "y": y}), tmp / "ext.parquet")
    files["an extension-type column"] = tmp / "ext.parquet"
    (tmp / "junk.parquet").write_bytes(b"PAR1 but then nothing")
    files["junk Parquet"] = tmp / "junk.parquet"
    (tmp / "data.csv").write_text("a,y\n1,2\n")
    files["a CSV"] = tmp / "data.csv"
    (tmp / "dir.npz").mkdir()
    files["a directory"] = tmp / "dir.npz"
    return files


def _spec(tmp: Path, **base) -> str:
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "hostile", "output_dir": str(tmp / "out"),
                                    "base": {**TINY, **base}}))
    return str(path)


def _one_line(capsys, argv, *phrases) -> str:
    assert cli.main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("ntksweep: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and all(p in err for p in phrases), err
    return err


def test_crafted_data_files_are_one_line_and_run_nothing(tmp_path, capsys):
    files = _crafted(tmp_path)
    assert len(files) == 20
    for what, path in files.items():
        spec = _spec(tmp_path, dataset="file", data_path=str(path), n_train=8, n_eval=8)
        for extra in (["--dry-run"], []):
            _one_line(capsys, ["run", spec, *extra])
        assert not (tmp_path / "out").exists(), what


def test_a_zip_bomb_is_refused_from_its_headers(tmp_path, capsys, monkeypatch):
    """An .npz whose arrays decompress past the limit is refused before any is decompressed
    (here 64 MiB of zeros in ~64 KiB, against a 16 MiB limit; the real limit is 4 GiB)."""
    monkeypatch.setattr(data_files, "MAX_DATA_BYTES", 16 << 20)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, array in (("X", np.zeros((1 << 20, 8))), ("y", np.zeros(1 << 20))):
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, array)
    assert bomb.stat().st_size < 1 << 20
    decompressed = []
    real = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: decompressed.append(a) or real(*a, **k))
    spec = _spec(tmp_path, dataset="file", data_path=str(bomb))
    _one_line(capsys, ["run", spec, "--dry-run"], "decompress to", "NTKSWEEP_MAX_DATA_BYTES")
    assert decompressed == []


def test_yaml_nested_past_reason_and_binary_specs_are_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: deep\nbase: {lr: " + "[" * 5000 + "]" * 5000 + "}\n")
    _one_line(capsys, ["run", str(deep), "--dry-run"], "nested too deeply")
    binary = tmp_path / "model.pt"
    binary.write_bytes(bytes(range(256)) * 8)
    _one_line(capsys, ["run", str(binary), "--dry-run"], "not a text file")
    _one_line(capsys, ["trial", "--spec", str(binary)], "not a text file")


def _driver(spec_file, *extra):
    return subprocess.Popen([sys.executable, "-m", "ntksweep.cli", "run", str(spec_file),
                             "--num-cpus", "2", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_ctrl_c_at_start_up_exits_130_with_the_resume_line(tmp_path):
    out = tmp_path / "out"
    spec = Path(_spec(tmp_path, width=8))
    proc = _driver(spec)
    while not (out / "driver.lock").exists():      # Ray is up: start-up is under way
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    said, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, said
    assert "Traceback" not in said and "run the same command again" in said, said


@pytest.mark.slow
def test_a_closed_terminal_stops_the_sweep_as_sigterm_does(tmp_path):
    out = tmp_path / "out"
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "hup", "output_dir": str(out),
                                    "base": {**TINY, "width": 512, "depth": 3, "n_train": 32},
                                    "zip": [{"seed": [0, 1], "steps": [20, 20000]}]}))
    proc = _driver(spec, "--quiet")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    try:
        while not (len(list((out / "trials").rglob("*.parquet"))) == 1
                   and _running(uri)):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.3)
        proc.send_signal(signal.SIGHUP)
        said, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, said
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("hup")
    statuses = sorted(r.info.status for r in client.search_runs([exp.experiment_id],
                      "tags.`ntksweep.role` = 'trial'"))
    assert statuses == ["FINISHED", "KILLED"]


def _running(uri) -> bool:
    if not Path(uri.removeprefix("sqlite:///")).exists():
        return False
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("hup")
    return exp is not None and any(r.info.status == "RUNNING" for r in client.search_runs(
        [exp.experiment_id], "tags.`ntksweep.role` = 'trial'"))


@pytest.mark.slow
def test_credentials_are_never_written_uploaded_or_shown(mlflow_server, tmp_path):
    secret = "s3cr3t-Pa55"
    host = mlflow_server.uri.removeprefix("http://")
    uri = f"http://alice:{secret}@{host}"
    out = tmp_path / "out"
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "creds", "output_dir": str(out),
                                    "tracking_uri": uri, "base": TINY,
                                    "grid": {"width": [8, 16, 32]}}))
    run = subprocess.run([sys.executable, "-m", "ntksweep.cli", "run", str(spec), "--num-cpus",
                          "2", "--report"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert secret not in run.stdout + run.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("creds")
    parent = client.search_runs([exp.experiment_id], "tags.`ntksweep.role` = 'sweep'")[0]
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep.yaml", "report.html"} <= names
    for name in ("sweep.yaml", "report.html"):
        local = client.download_artifacts(parent.info.run_id, name, str(tmp_path))
        assert secret not in Path(local).read_text(), name
    ui = subprocess.run([sys.executable, "-m", "ntksweep.cli", "ui", str(out),
                         "--tracking-uri", uri], capture_output=True, text=True, timeout=120,
                        env={**os.environ})
    assert ui.returncode == 0, ui.stdout + ui.stderr
    assert secret not in ui.stdout + ui.stderr
    assert f"http://{host}/#/experiments/{exp.experiment_id}/runs" in ui.stdout
