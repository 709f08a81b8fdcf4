"""Output dirs that can be copied and moved, side files that are damaged, and directories
that are not ours: a copy is a sweep of its own (the original untouched, byte for byte), a
moved dir leaves nothing at its old path, and a damaged sweep.json, trials row, lock or
mlflow.db is repaired or explained in one line — never a traceback, never a dead end."""

import hashlib
import shutil
import sqlite3

import pytest
from mlflow.tracking import MlflowClient

import ntksweep
from ntksweep import cli, store
from ntksweep.plan import plan_sweep
from ntksweep.records import SweepMeta
from ntksweep.sweep import run_sweep
from ntksweep.sweep_spec import load_sweep_spec

TINY = {"dataset": "circle", "n_train": 8, "n_eval": 8, "depth": 2, "steps": 6,
        "checkpoints": 3, "device": "cpu"}


def _spec(out, widths=(8, 16), name="rel"):
    return load_sweep_spec({"name": name, "output_dir": str(out), "base": TINY,
                            "grid": {"width": list(widths)}})


def _fingerprint(root):
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _runs(out, name="rel"):
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], "tags.`ntksweep.role` = 'trial'",
                              max_results=1000)


@pytest.mark.slow
def test_a_copied_output_dir_is_a_sweep_of_its_own_and_a_moved_one_leaves_no_trace(
        ray_local, tmp_path):
    original = tmp_path / "original"
    run_sweep(_spec(original), quiet=True)
    assert (original / "sweep.json").read_text().count("embedded") == 1
    before = _fingerprint(original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    grown = run_sweep(_spec(copy, (8, 16, 32)), quiet=True)       # resume the copy, grown
    assert grown.counts == {"completed": 1} and grown.skipped == 2
    assert _fingerprint(original) == before                       # not a byte changed there
    runs = _runs(copy)
    assert len(runs) == 3 and all(r.info.artifact_uri.startswith(str(copy)) for r in runs)
    assert len(_runs(original)) == 2
    moved = tmp_path / "moved"
    shutil.move(copy, moved)
    again = run_sweep(_spec(moved, (8, 16, 32, 64)), quiet=True)
    assert again.counts == {"completed": 1}
    assert not copy.exists()                                      # nothing recreated there
    runs = _runs(moved)
    assert len(runs) == 4 and all(r.info.artifact_uri.startswith(str(moved)) for r in runs)
    served = MlflowClient(f"sqlite:///{moved / 'mlflow.db'}").download_artifacts(
        runs[0].info.run_id, "trial_spec.json", str(tmp_path))
    assert '"width"' in open(served).read()
    assert cli.main(["status", str(moved)]) == 0


@pytest.mark.slow
def test_damaged_side_files_are_repaired_or_one_line(ray_local, tmp_path, capsys):
    out = tmp_path / "dmg"
    spec = _spec(out, name="dmg")
    run_sweep(spec, quiet=True)
    good_meta = (out / "sweep.json").read_text()
    # a truncated sweep.json: rebuilt from the Parquet rows and sweep.yaml, wherever read
    (out / "sweep.json").write_text(good_meta[:20])
    with pytest.warns(UserWarning, match="rebuilt it"):
        assert len(ntksweep.load_results(out)[0]) == 2
    assert store.read_meta(out) == SweepMeta.from_json(good_meta)
    # a trials row with a status no version writes, and a lock that is not text
    victim = next((out / "trials").rglob("*.parquet"))
    row = store.load_trials(out)
    bogus = row[row.trial_id == victim.stem].assign(status="bogus")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ntksweep.store.tables import TRIALS_SCHEMA
    pq.write_table(pa.Table.from_pandas(bogus.drop(columns=["width", "depth"]),
                                        schema=TRIALS_SCHEMA, preserve_index=False), victim)
    (out / "driver.lock").write_bytes(b"\xff\xfe\x00")
    plan = plan_sweep(spec)
    assert sorted(r["state"] for r in plan["trials"]) == ["completed", "todo"]
    with pytest.warns(UserWarning, match="unreadable or inconsistent"):
        resumed = run_sweep(spec, quiet=True)
    assert resumed.counts == {"completed": 1}
    assert set(store.load_trials(out).status) == {"completed"}
    capsys.readouterr()
    # an mlflow.db whose schema is broken but which holds runs: one line, the command
    spec_file = tmp_path / "dmg.yaml"
    spec_file.write_text((out / "sweep.yaml").read_text())
    db = out / "mlflow.db"
    with sqlite3.connect(db) as conn:           # the whole store in the file, none in -wal
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    keep = db.read_bytes()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE alembic_version")
    for extra in (["--dry-run"], []):
        assert cli.main(["run", str(spec_file), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"mv {db} {db}.damaged" in err, err
    # a truncated one: nothing in it can be read, so it is set aside and rebuilt
    (out / "mlflow.db-wal").unlink(missing_ok=True)
    (out / "mlflow.db-shm").unlink(missing_ok=True)
    db.write_bytes(keep[:len(keep) // 3])
    with pytest.warns(UserWarning, match="moved it to"):
        assert run_sweep(_spec(out, (8, 16, 32), name="dmg"), quiet=True).counts == {
            "completed": 1}
    assert sorted(r.data.params["width"] for r in _runs(out, "dmg")) == ["16", "32", "8"]


@pytest.mark.slow
def test_a_half_built_mlflow_db_is_set_aside_and_rebuilt(ray_local, tmp_path):
    """The disk filled while MLflow created its store: a file with part of a schema and no
    runs. Nothing in it can be lost: the next run sets it aside and starts a new store,
    into which it pushes what Parquet holds."""
    out = tmp_path / "half"
    out.mkdir()
    with sqlite3.connect(out / "mlflow.db") as conn:
        conn.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY)")
    plan = plan_sweep(_spec(out, name="half"))
    assert plan["notes"] and "sets it aside" in plan["notes"][0]
    with pytest.warns(UserWarning, match="moved it to"):
        summary = run_sweep(_spec(out, name="half"), quiet=True)
    assert summary.counts == {"completed": 2}
    assert len(_runs(out, "half")) == 2
    assert list(out.glob("mlflow.db.damaged-*"))


def test_a_directory_that_holds_no_sweep_is_refused(tmp_path, capsys):
    home = tmp_path / "project"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: x\noutput_dir: {home}\nbase: {{steps: 2, checkpoints: 2}}\n")
    for extra in (["--dry-run"], []):
        assert cli.main(["run", str(spec), *extra]) == 2
        err = capsys.readouterr().err
        assert "not empty (notes.txt) and holds no ntksweep sweep" in err
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]
    spec.write_text("name: x\noutput_dir: /\nbase: {steps: 2, checkpoints: 2}\n")
    assert cli.main(["run", str(spec), "--dry-run"]) == 2
    assert "holds no ntksweep sweep" in capsys.readouterr().err
