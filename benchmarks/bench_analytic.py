"""Θ_∞ speed: N = 4096 points, depth 10, relu on one CPU core (issue #2 goal: well under 1 s).

    python benchmarks/bench_analytic.py [--n 4096] [--depth 10] [--threads 1]
"""

import argparse
import os
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--activations", default="relu,erf,gelu,tanh")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from ntksweep import analytic_kernels

    x = np.random.default_rng(0).normal(size=(args.n, 16))
    print(f"analytic Θ_∞: N={args.n}, depth={args.depth}, threads={args.threads}")
    for act in args.activations.split(","):
        n = args.n if act != "tanh" else min(args.n, 512)  # quadrature: points² per pair
        xs = x[:n]
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            analytic_kernels(xs, depth=args.depth, activation=act, bias_std=0.1)
            best = min(best, time.perf_counter() - t0)
        print(f"  {act:<8} N={n:<5} {best * 1e3:9.1f} ms   ({n * n / best / 1e6:7.1f} M pairs/s)")


if __name__ == "__main__":
    main()
