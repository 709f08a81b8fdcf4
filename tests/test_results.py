"""Results: a real `mlflow server` on localhost, the SQLite default, `ntksweep sync`, the
Parquet store's schema, atomicity, resume and filters, and refusals before any trial."""

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient
from servers import MlflowServer, free_port, processes_under

import ntksweep
from ntksweep import store
from ntksweep.records import RECORD_COLUMNS
from ntksweep.sweep import plan_sweep, run_sweep, sweep_id_of
from ntksweep.sweep_spec import load_sweep_spec
from ntksweep.trial import run_trial
from ntksweep.trial_spec import TrialSpec

TINY = {"dataset": "circle", "n_train": 8, "n_eval": 8, "depth": 2, "steps": 6,
        "checkpoints": 3, "device": "cpu"}


def spec_for(tmp_path, name="r", **top):
    return load_sweep_spec({"name": name, "output_dir": str(tmp_path / name),
                            "base": {**TINY, "keep_kernels": "first_last"},
                            "grid": {"width": [8, 16], "seed": [0, 1]}, **top})


def check_mlflow(uri, spec, summary):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(spec.name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("ntksweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("ntksweep.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    # what the UI shows: the model-training view, runs named and tagged by their axes, the
    # sweep's counts on its parent run
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    if not any(c.data.tags.get("synced") for c in children):
        assert parents[0].data.metrics["trials_completed"] == 4
    trials, ckpts = ntksweep.load_results(summary.out_dir)
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.info.status == "FINISHED" and child.data.tags["status"] == "completed"
        tid = child.data.tags["trial_id"]
        trial = next(t for t in spec.trials() if t.trial_id == tid)
        assert child.data.params["width"] == str(trial.width)
        assert child.info.run_name == f"w{trial.width}-s{trial.seed}"
        assert child.data.tags["width"] == str(trial.width)
        assert child.data.params["lr"] == str(trial.lr)
        history = client.get_metric_history(child.info.run_id, "dist_inf")
        rows = ckpts[ckpts.trial_id == tid].sort_values("step")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == rows.step.tolist()
        np.testing.assert_allclose([m.value for m in sorted(history, key=lambda m: m.step)],
                                   rows.dist_inf.to_numpy())
        # the trials row's summary as run-level metrics, one point each (the runs table's
        # columns, the compare view's axes)
        row = trials[trials.trial_id == tid].iloc[0]
        for key in ("init_dist_inf", "final_dist_inf", "final_dist_init", "final_train_loss"):
            assert child.data.metrics[key] == pytest.approx(row[key], rel=1e-12), key
            assert len(client.get_metric_history(child.info.run_id, key)) == 1, key
    return client, parents[0], children


def test_sweep_logs_to_a_real_mlflow_server(ray_local, tmp_path, mlflow_server):
    spec = spec_for(tmp_path)
    summary = run_sweep(spec, tracking_uri=mlflow_server.uri, quiet=True)
    assert summary.tracking_degraded is None
    client, parent, _ = check_mlflow(mlflow_server.uri, spec, summary)
    arts = [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "sweep.yaml" in arts
    # resuming continues the same parent run, adds no children
    run_sweep(spec, tracking_uri=mlflow_server.uri, quiet=True)
    check_mlflow(mlflow_server.uri, spec, summary)


def test_sqlite_default_and_sync_after_server_was_down(ray_local, tmp_path):
    spec = spec_for(tmp_path, "s")
    summary = run_sweep(spec, quiet=True)
    assert summary.tracking_uri.startswith("sqlite:///") and (Path(summary.out_dir)
                                                             / "mlflow.db").exists()
    check_mlflow(summary.tracking_uri, spec, summary)

    port = free_port()
    down = f"http://127.0.0.1:{port}"
    spec2 = spec_for(tmp_path, "down")
    summary2 = run_sweep(spec2, tracking_uri=down, quiet=True)
    assert summary2.tracking_degraded and summary2.counts == {"completed": 4}
    assert len(ntksweep.load_results(summary2.out_dir)[0]) == 4     # Parquet complete anyway
    server = MlflowServer(tmp_path / "late-server", port).start()
    try:
        def sync():
            out = subprocess.run([sys.executable, "-m", "ntksweep.cli", "sync", summary2.out_dir],
                                 capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stdout + out.stderr
            return out.stdout
        assert "4 trials pushed" in sync()
        check_mlflow(down, spec2, summary2)
        assert "0 trials pushed, 4 already there" in sync()             # idempotent
        check_mlflow(down, spec2, summary2)
    finally:
        server.stop()


def test_an_untracked_sweep_writes_parquet_only_and_sync_pushes_it_later(ray_local, tmp_path):
    spec = spec_for(tmp_path, "untracked")
    summary = run_sweep(spec, quiet=True, tracking=False)
    assert summary.tracking_uri == "" and summary.counts == {"completed": 4}
    out = Path(summary.out_dir)
    assert not (out / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert len(ntksweep.load_results(out)[0]) == 4
    sync = subprocess.run([sys.executable, "-m", "ntksweep.cli", "sync", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert sync.returncode == 0 and "4 trials pushed" in sync.stdout, sync.stdout + sync.stderr
    check_mlflow(f"sqlite:///{out / 'mlflow.db'}", spec, summary)   # the default store
    # its artifacts live in the output dir too, not in the directory sync ran from
    assert len(list((out / "mlartifacts").rglob("trial_spec.json"))) == 4
    assert not (tmp_path / "mlruns").exists()


def test_sqlite_store_uses_wal_and_normal_sync_for_its_own_file_only(tmp_path):
    import sqlite3

    import sqlalchemy

    from ntksweep.tracking.tracker import Tracker

    uri = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    tracker = Tracker(uri, "wal", "s1", required=True)
    tracker.close()
    with sqlite3.connect(tmp_path / "out" / "mlflow.db") as conn:  # WAL: a property of the file
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def synchronous(db_uri):  # any engine on the tuned file commits without an fsync each
        engine = sqlalchemy.create_engine(db_uri)
        try:
            with engine.connect() as conn:
                return conn.exec_driver_sql("PRAGMA synchronous").scalar()
        finally:
            engine.dispose()

    assert synchronous(uri) == 1                                      # NORMAL
    assert synchronous(f"sqlite:///{tmp_path / 'other.db'}") == 2     # others keep FULL


def test_a_long_trial_shows_in_mlflow_while_it_runs(tmp_path, monkeypatch):
    from ntksweep.tracking.tracker import Tracker

    monkeypatch.chdir(tmp_path)  # whatever MLflow writes relative to the cwd stays out of the repo
    uri = f"sqlite:///{tmp_path / 'live.db'}"
    tracker = Tracker(uri, "live", "s1", required=True)
    handle = tracker.start_trial("t1", 1, {"width": 8, "depth": 2})
    tracker.log_record(handle, {"step": 0, "train_loss": 0.5})
    reader = MlflowClient(uri)
    exp = reader.get_experiment_by_name("live")

    def child():
        runs = reader.search_runs([exp.experiment_id], "tags.trial_id = 't1'")
        return runs[0] if runs else None

    while not (child() and child().data.metrics):    # the writer's tick sends it, unended
        time.sleep(0.2)
    run = child()
    assert run.info.status == "RUNNING"                       # the trial has not ended
    assert run.data.metrics == {"train_loss": 0.5} and run.data.params["width"] == "8"
    tracker.log_record(handle, {"step": 1, "train_loss": 0.25})
    tracker.end_trial(handle, "completed")
    tracker.close()
    history = reader.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.25)]
    assert reader.get_run(run.info.run_id).info.status == "FINISHED"


def test_runs_carry_the_drivers_times_and_end_tags_even_when_the_writer_lags(tmp_path,
                                                                             monkeypatch):
    """80 trials started and ended back to back, each batch delayed 50 ms (injected, so that
    the writer falls seconds behind the calls on any machine, beyond the live UI's
    ``_LIVE_SECONDS``, however fast its SQLite writes are). Yet each run's start
    and end are the moments of the calls, its end tags and status are there, and each
    went out as one batch (a stale ended trial is not split into a live batch and a last
    one)."""
    from ntksweep.tracking.tracker import _LIVE_SECONDS, Tracker

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'lag.db'}"
    tracker = Tracker(uri, "lag", "s1", required=True)
    batches = Counter()
    send = tracker._log_batch

    def counted(run_id, *args):
        batches[run_id] += 1
        time.sleep(0.05)  # a slow store: the lag this test is about
        return send(run_id, *args)

    tracker._log_batch = counted
    called = {}
    for i in range(80):
        before = int(time.time() * 1000)
        handle = tracker.start_trial(f"t{i}", 1, {"width": i})
        started = int(time.time() * 1000)
        tracker.log_record(handle, {"step": 0, "train_loss": 1.0 / (i + 1)})
        time.sleep(0.002)
        ending = int(time.time() * 1000)
        tracker.end_trial(handle, "diverged" if i % 2 else "failed", {"error": f"e{i}"})
        called[f"t{i}"] = (before, started, ending, int(time.time() * 1000))
    last_call = int(time.time() * 1000)
    tracker.close()
    assert int(time.time() * 1000) - last_call > 1000 * _LIVE_SECONDS  # the writer lagged
    reader = MlflowClient(uri)
    exp = reader.get_experiment_by_name("lag")
    runs = reader.search_runs([exp.experiment_id], "tags.`ntksweep.role` = 'trial'",
                              max_results=100)
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(called)
    for run in runs:
        i = int(run.data.tags["trial_id"][1:])
        before, started, ending, ended = called[f"t{i}"]
        assert before <= run.info.start_time <= started
        assert ending <= run.info.end_time <= ended
        assert run.info.status == ("FINISHED" if i % 2 else "FAILED")
        assert run.data.tags["status"] == ("diverged" if i % 2 else "failed")
        assert run.data.tags["error"] == f"e{i}" and run.data.params == {"width": str(i)}
        assert run.data.metrics == {"train_loss": 1.0 / (i + 1)}
        assert batches[run.info.run_id] == 1


@pytest.mark.parametrize("n_metrics, n_params, n_tags", [
    (0, 0, 0), (1000, 0, 0), (1001, 0, 0), (950, 100, 0), (2500, 250, 130), (0, 101, 0)])
def test_chunks_respect_every_log_batch_limit(n_metrics, n_params, n_tags):
    from mlflow.entities import Metric, Param, RunTag

    from ntksweep.tracking.mlflow_api import chunks as _chunks

    metrics = [Metric(f"m{i}", float(i), 0, i) for i in range(n_metrics)]
    params = [Param(f"p{i}", str(i)) for i in range(n_params)]
    tags = [RunTag(f"t{i}", str(i)) for i in range(n_tags)]
    chunks = list(_chunks(metrics, params, tags))
    for m, p, t in chunks:
        assert len(m) <= 1000 and len(p) <= 100 and len(t) <= 100
        assert 0 < len(m) + len(p) + len(t) <= 1000
    assert [x for c in chunks for x in c[0]] == metrics
    assert [x for c in chunks for x in c[1]] == params
    assert [x for c in chunks for x in c[2]] == tags


def test_batches_to_a_server_are_cut_to_the_rest_limits(tmp_path, mlflow_server):
    """The tracker posts log-batch JSON itself to a server: 150 params (over the 100 a
    request may carry) and 1,500 points (over 1,000) arrive whole, in order, once."""
    from ntksweep.tracking.tracker import Tracker

    spec = {f"p{i:03d}": i for i in range(150)}
    tracker = Tracker(mlflow_server.uri, "limits", "s1", required=True)
    handle = tracker.start_trial("t1", 1, spec)
    for step in range(500):
        tracker.log_record(handle, {"step": step, "a": step / 2, "b": -step, "c": 1.0})
    tracker.end_trial(handle, "completed")
    tracker.close()
    assert tracker.degraded is None
    reader = MlflowClient(mlflow_server.uri)
    exp = reader.get_experiment_by_name("limits")
    run = reader.search_runs([exp.experiment_id], "tags.trial_id = 't1'")[0]
    assert run.data.params == {k: str(v) for k, v in spec.items()}
    for key, f in (("a", lambda s: s / 2), ("b", lambda s: -s), ("c", lambda s: 1.0)):
        history = reader.get_metric_history(run.info.run_id, key)
        assert sorted((m.step, m.value) for m in history) == [(s, f(s)) for s in range(500)]
    assert run.info.status == "FINISHED"


def test_parquet_schema_round_trip_and_kernels(tmp_path):
    spec = TrialSpec(width=16, keep_kernels="first_last", **TINY)
    r = run_trial(spec)
    store.write_trial(tmp_path, "x", spec, r)
    for table, schema in (("trials", store.TRIALS_SCHEMA), ("checkpoints",
                                                           store.CHECKPOINTS_SCHEMA)):
        f = next((tmp_path / table).rglob("*.parquet"))
        written = pq.read_schema(f)
        assert written.remove_metadata().equals(schema.remove_metadata())
        assert written.metadata[b"ntksweep_schema"] == store.SCHEMA_VERSION.encode()
    trials, ckpts = ntksweep.load_results(tmp_path)
    assert trials.width.dtype == np.int64 and trials.depth.dtype == np.int64
    assert list(ckpts.step) == [rec["step"] for rec in r.records]
    np.testing.assert_allclose(ckpts.dist_inf, [rec["dist_inf"] for rec in r.records])
    first = ckpts.iloc[0]
    np.testing.assert_array_equal(np.load(tmp_path / first.kernel_path), r.kernels[0])
    assert pd.isna(ckpts.iloc[1].kernel_path)
    assert set(RECORD_COLUMNS) <= set(ckpts.columns)


def test_half_written_files_are_never_visible_and_rewrites_do_not_duplicate(tmp_path):
    spec = TrialSpec(width=8, **TINY)
    r = run_trial(spec)
    store.write_trial(tmp_path, "x", spec, r)
    part = next((tmp_path / "trials").rglob("*.parquet")).parent
    (part / ".tmp-deadbeef-partial.parquet").write_bytes(b"PAR1 half a file")
    store.write_trial(tmp_path, "x", spec, r)              # a re-run replaces, never appends
    trials, ckpts = ntksweep.load_results(tmp_path)
    assert len(trials) == 1 and len(ckpts) == len(r.records)
    assert len(pd.read_parquet(tmp_path / "trials")) == 1  # plain pandas skips hidden files


def test_filters_read_only_matching_partitions(tmp_path):
    for w in (8, 16, 32):
        spec = TrialSpec(width=w, **TINY)
        store.write_trial(tmp_path, "x", spec, run_trial(spec))
    for f in (tmp_path / "checkpoints").glob("width=32/*/*.parquet"):
        f.write_bytes(b"corrupt")   # never read when filtered away
    trials, ckpts = ntksweep.load_results(tmp_path, {"width": [8, 16]})
    assert sorted(trials.width) == [8, 16] and set(ckpts.width) == {8, 16}
    assert ckpts.width.dtype == np.int64


def test_refusals_before_any_trial(ray_local, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="not writable"):
        run_sweep(load_sweep_spec({"name": "w", "output_dir": str(blocker / "sub"),
                                   "base": TINY}), quiet=True)
    with pytest.raises(ValueError, match="scheme must be one of"):
        run_sweep(spec_for(tmp_path, "u"), tracking_uri="htp:/oops", quiet=True)
    assert not (tmp_path / "u" / "trials").exists()
    first = spec_for(tmp_path, "same")
    run_sweep(first, quiet=True)
    other = load_sweep_spec({"name": "other", "output_dir": first.output_dir, "base": TINY})
    with pytest.raises(ValueError, match="holds a different sweep"):
        run_sweep(other, quiet=True)
    run_sweep(other, quiet=True, force=True)
    meta = json.loads((Path(first.output_dir) / "sweep.json").read_text())
    assert meta["name"] == "other"


def test_a_sweep_grows_in_place_and_a_changed_base_is_another_sweep(ray_local, tmp_path):
    def spec(grid, **base):
        return load_sweep_spec({"name": "grow", "output_dir": str(tmp_path / "grow"),
                                "base": {**TINY, **base}, "grid": grid})

    first = run_sweep(spec({"width": [8, 16], "seed": [0]}), quiet=True)
    assert plan_sweep(spec({"width": [8, 16, 32], "seed": [0, 1]}))["sweep_id"] == \
        first.sweep_id                                     # dry-run: the same sweep
    grown = run_sweep(spec({"width": [8, 16, 32], "seed": [0, 1]}), quiet=True)
    assert grown.sweep_id == first.sweep_id and grown.skipped == 2 and grown.total == 6
    trials, _ = ntksweep.load_results(grown.out_dir)
    assert len(trials) == 6 and set(trials.sweep_id) == {first.sweep_id}
    client = MlflowClient(grown.tracking_uri)                # one parent run, six children
    exp = client.get_experiment_by_name("grow").experiment_id
    assert len(client.search_runs([exp], "tags.`ntksweep.role` = 'sweep'")) == 1
    assert len(client.search_runs([exp], "tags.`ntksweep.role` = 'trial'")) == 6
    # a changed base field is another sweep: refused, saying which field
    with pytest.raises(ValueError, match=r"base field lr 1\.0 → 0\.5"):
        plan_sweep(spec({"width": [8]}, lr=0.5))


def test_a_forced_sweep_hides_the_failed_rows_it_superseded(ray_local, tmp_path):
    out = str(tmp_path / "f")
    broken = load_sweep_spec({"name": "f", "output_dir": out,   # beyond the quadrature
                              "base": {**TINY, "activation": "tanh", "weight_std": 1e20},
                              "grid": {"width": [8]}})
    first = run_sweep(broken, quiet=True)                # the trial fails making its limit
    assert first.counts == {"failed": 1}
    fixed = run_sweep(load_sweep_spec({"name": "f", "output_dir": out, "base": TINY,
                                       "grid": {"width": [8, 16]}}), quiet=True, force=True)
    trials, ckpts = ntksweep.load_results(out)
    assert set(trials.status) == {"completed"} and set(trials.sweep_id) == {fixed.sweep_id}
    assert set(ckpts.trial_id) <= set(trials.trial_id)


def test_an_output_dir_from_an_earlier_version_keeps_its_sweep_id(tmp_path):
    """Earlier versions put the axes in a sweep's id: their dirs keep that id (and so their
    MLflow parent run), also when the sweep grows now."""

    spec = spec_for(tmp_path, "old")
    out = Path(spec.output_dir)
    out.mkdir()
    earlier = spec.earlier_sweep_id
    (out / "sweep.json").write_text(json.dumps(
        {"sweep_id": earlier, "name": "old", "tracking_uri": ""}))
    assert plan_sweep(spec)["sweep_id"] == earlier != sweep_id_of(spec)   # no sweep.yaml
    (out / "sweep.yaml").write_text(yaml.safe_dump(spec.source))
    grown = load_sweep_spec({**spec.source, "grid": {"width": [8, 16, 32], "seed": [0, 1]}})
    assert plan_sweep(grown)["sweep_id"] == earlier
    other = load_sweep_spec({**spec.source, "base": {**spec.base, "lr": 0.25}})
    with pytest.raises(ValueError, match="base field lr 1.0 → 0.25"):
        plan_sweep(other)


def test_ui_command_serves_the_sweep_store(ray_local, tmp_path):
    summary = run_sweep(spec_for(tmp_path, "ui"), quiet=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ntksweep.cli", "ui", summary.out_dir,
                             "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in proc.stdout:        # the link is printed once the server answers
            seen.append(line)
            if "MLflow UI for sweep" in line:
                break
        uri = f"sqlite:///{Path(summary.out_dir) / 'mlflow.db'}"
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("ui")
        exp_id = exp.experiment_id
        key = f"ntksweep-{summary.sweep_id}"
        link = f"http://127.0.0.1:{port}/ntksweep/open?experiment={exp_id}&view={key}"
        assert seen[-1].strip().endswith(link), seen
        # the sweep's shared view (every run shown, grouped by the non-seed axes) ...
        view = json.loads(exp.tags[f"mlflow.sharedViewState.{key}"])
        assert view["runsHiddenMode"] == "SHOW_ALL"
        assert [k["groupByData"] for k in view["groupBy"]["groupByKeys"]] == ["width"]
        # ... opened by our page, which keeps MLflow's switch on model training first
        page = urllib.request.urlopen(link, timeout=10).read().decode()
        assert '"mlflow.workflowType_v1"' in page and '\\"machine_learning\\"' in page
        assert (f'location.replace("/#/experiments/{exp_id}/runs?workflowType='
                f'machine_learning&viewStateShareKey={key}")') in page
        for bad in ("experiment=1x", f"experiment={exp_id}&view=a%22%3Cb"):
            with pytest.raises(urllib.error.HTTPError, match="400"):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ntksweep/open?{bad}",
                                       timeout=10)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
        assert body.strip() == b"OK"
        assert not processes_under(proc.pid, "_job_runner")     # no GenAI job runner beside the UI
        # a trial's spec artifact, kept in the output dir, comes back through the UI
        run = client.search_runs([exp_id], "tags.`ntksweep.role` = 'trial'", max_results=1)[0]
        assert run.info.artifact_uri.startswith(str(Path(summary.out_dir).resolve()))
        served = urllib.request.urlopen(f"http://127.0.0.1:{port}/get-artifact?path="
                                        f"trial_spec.json&run_uuid={run.info.run_id}",
                                        timeout=30).read()
        assert json.loads(served)["width"] == int(run.data.params["width"])
        # a second UI on the same port is refused at once, with a non-zero exit
        busy = subprocess.run([sys.executable, "-m", "ntksweep.cli", "ui", summary.out_dir,
                               "--port", str(port)], capture_output=True, text=True, timeout=60)
        assert busy.returncode != 0 and "in use" in busy.stderr + busy.stdout, busy
        proc.terminate()                              # SIGTERM reaches the server: a clean stop
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(tmp_path / "ui", ignore_errors=True)


def test_report_is_logged_to_the_parent_run(ray_local, tmp_path):
    spec = spec_for(tmp_path, "rep")
    summary = run_sweep(spec, quiet=True)
    out = subprocess.run([sys.executable, "-m", "ntksweep.cli", "report", summary.out_dir],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    client = MlflowClient(summary.tracking_uri)
    exp = client.get_experiment_by_name(spec.name)
    parent = [r for r in client.search_runs([exp.experiment_id])
              if r.data.tags.get("ntksweep.role") == "sweep"][0]
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "dist_inf_vs_width.png", "sweep.yaml"} <= arts
