"""What the held-out test set and its kernel-regression baselines cost a trial (issue #23):
the same width-1024 trial on digits with and without ``n_test``, best of ``--repeats``, in
one run; goal: the test-set work ≤ 10 % of the trial.

    python benchmarks/bench_baselines.py [--device cuda] [--width 1024] [--n-test 512]

The fixed kernels' solves (Θ_∞, Σ, Θ_0) are done once per trial at step 0 and the limits
once per (data, limit) per process; Θ_T once, at the last checkpoint.
"""

import argparse
import time

from ntksweep.trial import TrialCache, run_trial
from ntksweep.trial_spec import TrialSpec


def best(spec: TrialSpec, repeats: int) -> float:
    cache = TrialCache()           # a worker's cache: the limits are computed once
    run_trial(spec.replace(steps=2, checkpoints=2), cache=cache)       # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run_trial(spec, cache=cache)
        times.append(time.perf_counter() - t0)
        assert out.status == "completed", out.error
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--n-test", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    spec = TrialSpec(dataset="digits", n_train=256, n_eval=64, width=args.width, depth=3,
                     bias_std=0.1, lr=1.0, steps=200, checkpoints=8, device=args.device)
    without = best(spec, args.repeats)
    with_test = best(spec.replace(n_test=args.n_test), args.repeats)
    share = (with_test - without) / with_test
    print(f"[{args.device}] digits, width {args.width}, depth 3, N = 256, 200 GD steps, "
          f"8 checkpoints; n_test = {args.n_test}")
    print(f"  trial without a test set {without:.2f} s, with {with_test:.2f} s: the test "
          f"set and its baselines are {100 * share:.1f} % of the trial (goal ≤ 10 %)")


if __name__ == "__main__":
    main()
