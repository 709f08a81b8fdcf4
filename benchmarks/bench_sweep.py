"""Orchestration cost of a sweep (issue #5) and logging throughput (issue #6), each from
one run on this machine.

1. ≥ 200 trivial trials through the whole driver (Ray actors, streaming, MLflow SQLite,
   Parquet): overhead per trial = wall ÷ trials − mean trial time ÷ workers
   (goal ≤ 50 ms per trial).
2. Speed-up from 1 to 2 workers on CPU-bound trials (goal ≥ 1.8× on 2 cores).
3. MLflow logging throughput, batched, to SQLite and to a local `mlflow server`
   (goal ≥ 5,000 metric points/s), and the driver's time per checkpoint record.

    python benchmarks/bench_sweep.py [--trivial 200] [--heavy 12]
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ntksweep  # noqa: E402
from ntksweep.spec import load_sweep_spec  # noqa: E402
from ntksweep.sweep import run_sweep  # noqa: E402
from ntksweep.tracking import Tracker  # noqa: E402
from ntksweep.trial import RECORD_COLUMNS  # noqa: E402


def sweep(tmp, name, base, n, workers):
    spec = load_sweep_spec({"name": name, "output_dir": str(Path(tmp) / name),
                            "base": {"device": "cpu", **base}, "grid": {"seed": list(range(n))},
                            "resources": {"cpus_per_trial": 1, "max_workers": workers}})
    starts = []
    t0 = time.perf_counter()
    summary = run_sweep(spec, quiet=True, on_event=lambda kind, _: kind == "start" and
                        starts.append(time.perf_counter()))
    wall = time.perf_counter() - t0
    trials, _ = ntksweep.load_results(summary.out_dir)
    assert len(trials) == n and set(trials.status) == {"completed"}
    return wall, trials.wall_seconds.mean(), starts[0] - t0


def logging_rate(uri, n_records=500):
    tracker = Tracker(uri, "bench", f"b{time.time_ns()}", required=True)
    run = tracker.start_trial("t", 1, {"width": 1})
    rec = {c: 0.5 for c in RECORD_COLUMNS}
    t0 = time.perf_counter()
    for step in range(n_records):
        tracker.log_record(run, {**rec, "step": step})
    per_record = (time.perf_counter() - t0) / n_records   # the driver's cost (enqueue)
    tracker.end_trial(run, "completed")
    tracker.close()                                      # wait until everything is sent
    wall = time.perf_counter() - t0
    points = n_records * (len(RECORD_COLUMNS) - 1)
    return points / wall, per_record


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trivial", type=int, default=200)
    p.add_argument("--heavy", type=int, default=24)
    p.add_argument("--only", choices=["sweep", "logging"], help="run one part")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "logging":
            sweep_part(tmp, args)
        if args.only != "sweep":
            logging_part(tmp)


def sweep_part(tmp, args):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    trivial = {"n_train": 4, "n_eval": 4, "width": 4, "depth": 1, "steps": 1,
               "checkpoints": 2}
    wall, trial_s, startup = sweep(tmp, "trivial", trivial, args.trivial, 2)
    overhead = wall / args.trivial - trial_s / 2
    steady = (wall - startup) / args.trivial - trial_s / 2
    print(f"{args.trivial} trivial trials on 2 workers: {wall:.1f} s wall (of which "
          f"{startup:.1f} s one-off store/actor start-up), mean trial {trial_s * 1e3:.1f} ms")
    print(f"  orchestration overhead {overhead * 1e3:.1f} ms/trial overall, "
          f"{steady * 1e3:.1f} ms/trial once the actors are up")
    heavy = {"n_train": 64, "n_eval": 64, "width": 512, "depth": 3, "steps": 150,
             "checkpoints": 4}
    w1, _, s1 = sweep(tmp, "one", heavy, args.heavy, 1)
    w2, _, s2 = sweep(tmp, "two", heavy, args.heavy, 2)
    print(f"{args.heavy} CPU-bound trials: 1 worker {w1:.1f} s, 2 workers {w2:.1f} s → "
          f"speed-up {w1 / w2:.2f}× end to end; {(w1 - s1) / (w2 - s2):.2f}× once the "
          f"actors are up (start-up {s1:.1f} s / {s2:.1f} s)")
    ray.shutdown()


def logging_part(tmp):
    rate, per = logging_rate(f"sqlite:///{tmp}/bench.db")
    print(f"MLflow SQLite: {rate:,.0f} metric points/s batched; driver "
          f"{per * 1e3:.3f} ms per checkpoint record")
    for workers in (4, 1):  # 4: mlflow server's default
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host",
                                   "127.0.0.1", "--port", str(port), "--backend-store-uri",
                                   f"sqlite:///{tmp}/server{workers}.db", "--workers",
                                   str(workers), "--artifacts-destination",
                                   f"{tmp}/artifacts{workers}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            logging_rate(f"http://127.0.0.1:{port}", 100)  # warm the server's workers
            rate, per = logging_rate(f"http://127.0.0.1:{port}")
            print(f"MLflow server (localhost, --workers {workers}): {rate:,.0f} metric "
                  f"points/s batched; driver {per * 1e3:.3f} ms per checkpoint record")
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
