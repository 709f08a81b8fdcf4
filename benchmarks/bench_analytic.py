"""Θ_∞ speed: N = 4096 points, depth 10, relu on one CPU core (issue #2 goal: well under 1 s).

Prints, from one run, the fused ReLU/leaky-ReLU path against the generic dual path (the
same recursion through ``duals.relu_dual``), and the other closed forms. Best of --repeats,
interleaved, because shared machines are noisy.

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
    p.add_argument("--activations", default="relu,leaky_relu,erf,gelu,tanh")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bias-stds", default="0,0.1", help="σ_b values (0: the default network)")
    args = p.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from ntksweep import analytic_kernels

    x = np.random.default_rng(0).normal(size=(args.n, 16))
    print(f"analytic Θ_∞: N={args.n}, depth={args.depth}, threads={args.threads}, "
          f"best of {args.repeats}")
    for act, bias_std in ((a, float(b)) for a in args.activations.split(",")
                          for b in args.bias_stds.split(",")):
        n = args.n if act != "tanh" else min(args.n, 512)  # quadrature: points² per pair
        xs = x[:n]
        variants = {"fused": True, "generic": False} if act in ("relu", "leaky_relu") \
            else {"": True}
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(args.repeats):
            for name, fused in variants.items():
                t0 = time.perf_counter()
                k = analytic_kernels(xs, depth=args.depth, activation=act, bias_std=bias_std,
                                     fused=fused)
                best[name] = min(best[name], time.perf_counter() - t0)
                assert np.isfinite(k.ntk).all()
        line = "   ".join(f"{name or 'time'} {t * 1e3:7.1f} ms" for name, t in best.items())
        if len(best) == 2:
            line += f"   → fused {best['generic'] / best['fused']:.2f}× faster"
        rate = n * n / min(best.values()) / 1e6
        print(f"  {act:<10} σ_b={bias_std:<4} N={n:<5} {line}   ({rate:6.1f} M pairs/s)")


if __name__ == "__main__":
    main()
