"""A trial's memory estimate (``ntksweep.memory.trial_memory``, what preflight refuses a
sweep by) against its measured peak, for MLPs, CNNs and ResNets (goal: estimate ÷ peak in
0.8–2). Each trial runs in a fresh process after a warm-up trial; its peak is the resident
high-water mark above where it started (VmHWM reset just before it: Linux ``clear_refs`` 5).

    python benchmarks/bench_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import sys
import time
from pathlib import Path

CASES = {   # name → trial fields; digits: 10 outputs, so the full (·, ·, 10, 10) Θ_0 too
    "mlp w4096 circle": dict(dataset="circle", width=4096, depth=4, n_train=256, n_eval=128),
    "mlp w2048 digits": dict(dataset="digits", width=2048, depth=3, n_train=256, n_eval=64,
                             n_test=256),
    "cnn w256 digits": dict(dataset="digits", architecture="cnn", width=256, depth=4,
                            n_train=128, n_eval=32, n_test=128),
    "cnn w512 images": dict(dataset="images", dim=8, architecture="cnn", width=512, depth=3,
                            n_train=256, n_eval=64),
    "cnn w512 digits budget 256MiB": dict(dataset="digits", architecture="cnn", width=512,
                                          depth=3, n_train=128, n_eval=32,
                                          memory_budget=256 << 20),
    "resnet w256 digits": dict(dataset="digits", architecture="resnet", width=256, depth=4,
                               n_train=128, n_eval=32, n_test=128),
}
QUICK = ("mlp w2048 digits", "cnn w256 digits", "resnet w256 digits")


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())[1])


def measure(fields: dict) -> dict:
    """In a fresh process: the trial's estimate and its measured peak above the baseline."""
    from ntksweep.data import data_shape
    from ntksweep.memory import trial_memory
    from ntksweep.trial import run_trial, warm_up
    from ntksweep.trial_spec import TrialSpec

    spec = TrialSpec(**fields, steps=20, checkpoints=3, device="cpu")
    shape = data_shape(spec.dataset, **spec.data_args())
    in_shape = (shape.in_dim,) if spec.architecture == "mlp" else shape.image_shape
    estimate = trial_memory(spec, in_shape, shape.out_dim)
    warm_up()
    Path("/proc/self/clear_refs").write_text("5")
    before = _kib("VmRSS")
    t0 = time.perf_counter()
    outcome = run_trial(spec)
    peak = (_kib("VmHWM") - before) * 1024
    return {"status": str(outcome.status), "seconds": round(time.perf_counter() - t0, 1),
            "estimate_MiB": round(estimate.peak / 2**20), "peak_MiB": round(peak / 2**20),
            "ratio": round(estimate.peak / peak, 2),
            "largest_phase": max(estimate.phases, key=estimate.phases.get)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    args = p.parse_args(argv)
    ctx = mp.get_context("spawn")
    rows = {}
    for name, fields in CASES.items():
        if args.quick and name not in QUICK:
            continue
        with ctx.Pool(1) as pool:
            rows[name] = pool.apply(measure, (fields,))
        print(name, rows[name], flush=True)
    ratios = [r["ratio"] for r in rows.values()]
    print(json.dumps({"cases": rows, "ratio_min": min(ratios), "ratio_max": max(ratios)},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
