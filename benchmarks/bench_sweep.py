"""Orchestration cost of a sweep (issue #5) and logging throughput (issue #6), each from
one run on this machine.

1. ≥ 200 trivial trials through the whole driver (Ray actors, streaming, MLflow SQLite,
   Parquet): overhead per trial = wall ÷ trials − mean trial time ÷ workers
   (goal ≤ 50 ms per trial), overall and once the actors are up (the difference is the
   one-off start-up: a fresh MLflow store, actor processes importing torch).
2. Speed-up from 1 to 2 workers on CPU-bound trials (goal ≥ 1.8× on 2 cores), beside the
   machine's own ceiling in the same run: the same trials in one plain process vs two
   side by side (no Ray, no MLflow, no driver).
3. MLflow logging throughput, batched, to SQLite and to a local `mlflow server`
   (goal ≥ 5,000 metric points/s), and the driver's time per checkpoint record.

    python benchmarks/bench_sweep.py [--trivial 200] [--repeats 3] [--only sweep|logging]
                                     [--heavy 24 | --spec experiments/quickstart.yaml]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ntksweep  # noqa: E402
from ntksweep.spec import load_sweep_spec  # noqa: E402
from ntksweep.sweep import run_sweep  # noqa: E402
from ntksweep.tracking import SERVER_ENV, Tracker  # noqa: E402
from ntksweep.trial import RECORD_COLUMNS  # noqa: E402


def seeds_spec(base, n):
    """A sweep of n seeds of one CPU trial."""
    return {"base": {"device": "cpu", **base}, "grid": {"seed": list(range(n))}}


def sweep(tmp, name, raw, workers):
    """(wall s, mean trial s, start-up s, driver CPU s per trial once the actors are up)."""
    n = len(load_sweep_spec({**raw, "name": name}).trials())
    spec = load_sweep_spec({**raw, "name": name, "output_dir": str(Path(tmp) / name),
                            "resources": {"cpus_per_trial": 1, "max_workers": workers}})
    first = []

    def on_event(kind, _):
        if kind == "start" and not first:
            first.append((time.perf_counter(), time.process_time()))

    t0 = time.perf_counter()
    summary = run_sweep(spec, quiet=True, on_event=on_event)
    wall, cpu = time.perf_counter() - t0, time.process_time()  # process_time: all threads
    trials, _ = ntksweep.load_results(summary.out_dir)
    assert len(trials) == n and set(trials.status) == {"completed"}
    return wall, trials.wall_seconds.mean(), first[0][0] - t0, (cpu - first[0][1]) / n


_PLAIN = """
import json, sys, time
import torch
from ntksweep.config import TrialSpec
from ntksweep.trial import TrialCache, run_trial
torch.set_num_threads(1)
trials, cache = json.loads(sys.stdin.readline()), TrialCache()
run_trial(TrialSpec.from_dict({**trials[0], "seed": 10**6}), cache=cache)  # warm, like an actor
print(flush=True)
sys.stdin.readline()
for t in trials:
    run_trial(TrialSpec.from_dict(t), cache=cache)
print(flush=True)
"""


def plain_ceiling(raw):
    """Throughput of two plain processes side by side (each half of the sweep's trials,
    alternately dealt) ÷ one process running all of them."""
    trials = [{**t.to_dict(), "device": "cpu"} for t in load_sweep_spec(
        {**raw, "name": "plain"}).trials()]

    def wall(shares):
        ps = [subprocess.Popen([sys.executable, "-c", _PLAIN], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in shares]
        for p, share in zip(ps, shares):
            p.stdin.write(json.dumps(share) + "\n")
            p.stdin.flush()
        for p in ps:
            p.stdout.readline()
        t0 = time.perf_counter()
        for p in ps:
            p.stdin.write("\n")
            p.stdin.flush()
        for p in ps:
            p.stdout.readline()
            p.wait()
        return time.perf_counter() - t0

    one, two = wall([trials]), wall([trials[0::2], trials[1::2]])
    return one, two, one / two


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
    p.add_argument("--spec", help="measure the speed-up on this sweep spec's trials instead "
                                  "of --heavy seeds of a ~0.6 s trial")
    p.add_argument("--repeats", type=int, default=3, help="rounds of each measurement")
    p.add_argument("--only", choices=["sweep", "logging"], help="run one part")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "logging":
            sweep_part(tmp, args)
        if args.only != "sweep":
            logging_part(tmp, args.repeats)


def sweep_part(tmp, args):
    """Each measurement --repeats times, interleaved, best kept (shared machines are noisy:
    a figure and its reference always come from the same round)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    trivial = seeds_spec({"n_train": 4, "n_eval": 4, "width": 4, "depth": 1, "steps": 1,
                          "checkpoints": 2}, args.trivial)
    if args.spec:   # a real sweep's trials, e.g. the quick start's (0.3–4 s each)
        raw = yaml.safe_load(Path(args.spec).read_text())
        heavy = {k: raw[k] for k in ("base", "grid", "zip") if k in raw}
        heavy["base"] = {**heavy.get("base", {}), "device": "cpu"}
        what = args.spec
    else:
        heavy = seeds_spec({"n_train": 64, "n_eval": 64, "width": 512, "depth": 3,
                            "steps": 150, "checkpoints": 4}, args.heavy)
        what = "~0.6 s each"
    n_heavy = len(load_sweep_spec({**heavy, "name": "count"}).trials())
    best_triv = best_speed = None
    for r in range(args.repeats):
        wall, trial_s, startup, cpu = sweep(tmp, f"trivial{r}", trivial, 2)
        overhead = wall / args.trivial - trial_s / 2
        steady = (wall - startup) / args.trivial - trial_s / 2
        print(f"[{r + 1}] {args.trivial} trivial trials on 2 workers: {wall:.1f} s wall (of "
              f"which {startup:.1f} s one-off store/actor start-up), mean trial "
              f"{trial_s * 1e3:.1f} ms, driver CPU {cpu * 1e3:.0f} ms/trial → overhead "
              f"{overhead * 1e3:.1f} ms/trial overall, {steady * 1e3:.1f} once the actors are up")
        if best_triv is None or steady < best_triv[1]:
            best_triv = (overhead, steady)
        w1, t1, s1, c1 = sweep(tmp, f"one{r}", heavy, 1)
        w2, t2, s2, c2 = sweep(tmp, f"two{r}", heavy, 2)
        one, two, ceiling = plain_ceiling(heavy)
        speed, e2e = (w1 - s1) / (w2 - s2), w1 / w2
        print(f"[{r + 1}] {n_heavy} CPU-bound trials ({what}): 1 worker {w1:.1f} s, 2 workers "
              f"{w2:.1f} s → {e2e:.2f}× end to end, {speed:.2f}× once the actors are up "
              f"(start-up {s1:.1f} / {s2:.1f} s; mean trial {t1:.2f} / {t2:.2f} s; driver CPU "
              f"{c1 * 1e3:.0f} / {c2 * 1e3:.0f} ms per trial); ceiling without Ray/MLflow/"
              f"driver: one process {one:.1f} s, two {two:.1f} s → {ceiling:.2f}×")
        if best_speed is None or speed > best_speed[0]:
            best_speed = (speed, e2e, ceiling)
    print(f"best of {args.repeats}: orchestration overhead {best_triv[1] * 1e3:.1f} ms/trial "
          f"once the actors are up ({best_triv[0] * 1e3:.1f} overall); speed-up 1 → 2 workers "
          f"{best_speed[0]:.2f}× once up ({best_speed[1]:.2f}× end to end; that round's "
          f"ceiling {best_speed[2]:.2f}×)")
    ray.shutdown()


def logging_part(tmp, repeats):
    """Each rate --repeats times, best and median; the driver's enqueue cost per record.
    The servers run without MLflow 3's job runner (GenAI scorers, unused by tracking), which
    otherwise keeps one of the 2 cores busy importing for ~20 s after /health answers."""
    rates = [logging_rate(f"sqlite:///{tmp}/bench{r}.db") for r in range(repeats)]
    report("MLflow SQLite", rates)
    env = {**os.environ, **SERVER_ENV}
    for workers in (4, 1):  # 4: mlflow server's default
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host",
                                   "127.0.0.1", "--port", str(port), "--backend-store-uri",
                                   f"sqlite:///{tmp}/server{workers}.db", "--workers",
                                   str(workers), "--artifacts-destination",
                                   f"{tmp}/artifacts{workers}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            logging_rate(f"http://127.0.0.1:{port}", 100)  # warm the server's workers
            rates = [logging_rate(f"http://127.0.0.1:{port}") for _ in range(repeats)]
            report(f"MLflow server (localhost, --workers {workers})", rates)
        finally:
            server.terminate()
            server.wait(30)


def report(what, rates):
    points = sorted(r for r, _ in rates)
    per = min(p for _, p in rates)
    print(f"{what}: {points[-1]:,.0f} metric points/s batched, best of {len(points)} "
          f"(median {points[len(points) // 2]:,.0f}; all {', '.join(f'{p:,.0f}' for p in points)});"
          f" driver {per * 1e3:.3f} ms per checkpoint record")


if __name__ == "__main__":
    main()
