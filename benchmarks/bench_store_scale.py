"""The store at the sizes specs allow (≤ 100,000 trials): memory of reading it back, per trial
file. Writes N synthetic trials (3 checkpoints each; real files through ``write_trial``),
then measures in fresh processes the peak resident memory above the baseline (VmHWM, reset
before the call) and the time of what a resume, a sweep's end and a user do with it:
``trial_states`` (resume), ``load_trials`` (the end of a sweep, ``status``), and
``load_results`` (pandas). Goal: ≤ 2 KiB per trial file for each.

    python benchmarks/bench_store_scale.py [N ...]        # default: 1000 10000
"""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import sys
import tempfile
import time
from pathlib import Path


def write_store(out: str, n: int) -> float:
    """N trials' files, as a sweep writes them; returns the seconds it took."""
    from ntksweep import store
    from ntksweep.records import RECORD_COLUMNS, TrialOutcome
    from ntksweep.trial_spec import TrialSpec

    t0 = time.perf_counter()
    base = TrialSpec(dataset="circle", n_train=2, n_eval=2, depth=2, steps=2, checkpoints=3)
    for i in range(n):
        spec = base.replace(seed=i, width=(8, 16, 32, 64)[i % 4])
        records = [{c: float(step) for c in RECORD_COLUMNS} | {"step": step}
                   for step in (0, 1, 2)]
        store.write_trial(out, "bench", spec, TrialOutcome(spec.trial_id, "completed",
                                                           records))
    return time.perf_counter() - t0


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())[1])


def measure(out: str, what: str) -> dict:
    from ntksweep import store

    call = {"trial_states": lambda: store.trial_states(out),
            "load_trials": lambda: store.load_trials(out),
            "load_results": lambda: store.load_results(out)}[what]
    store.trial_states(out)                      # first-use allocations out of the figure
    Path("/proc/self/clear_refs").write_text("5")
    before = _kib("VmRSS")
    t0 = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - t0
    rows = len(result[0]) if isinstance(result, tuple) else len(result)
    return {"seconds": round(seconds, 2), "peak_MiB": round((_kib("VmHWM") - before) / 1024, 1),
            "rows": rows}


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv] or [1000, 10000]
    ctx = mp.get_context("spawn")
    results = {}
    for n in sizes:
        out = tempfile.mkdtemp(prefix=f"ntksweep-scale-{n}-")
        with ctx.Pool(1) as pool:
            wrote = pool.apply(write_store, (out, n))
        row = {"write_seconds": round(wrote, 1)}
        for what in ("trial_states", "load_trials", "load_results"):
            with ctx.Pool(1) as pool:
                m = pool.apply(measure, (out, what))
            m["KiB_per_trial"] = round(m["peak_MiB"] * 1024 / n, 2)
            row[what] = m
        results[n] = row
        print(n, json.dumps(row), flush=True)
    if len(sizes) >= 2:        # the growth per trial between the sizes: constants cancel
        lo, hi = min(sizes), max(sizes)
        for what in ("trial_states", "load_trials", "load_results"):
            grow = (results[hi][what]["peak_MiB"] - results[lo][what]["peak_MiB"]) * 1024
            per = grow / (hi - lo)
            print(f"{what}: {per:.2f} KiB per trial ({per / 2:.2f} per file: a trial has a "
                  f"trials and a checkpoints file), {results[hi][what]['seconds'] / hi * 1e3:.2f}"
                  " ms per trial", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
