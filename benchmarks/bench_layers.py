"""The layer algebra's limits against the fused recursions they reproduce, and the new
presets' costs, in one run (ratios of timings taken side by side).

    python benchmarks/bench_layers.py [--points 64] [--repeats 3]

- cnn (depth 4, GAP, 8×8×1) and mlp (depth 10, 2-D points): ``kernels`` of the composition
  against ``kernels.analytic_kernels``' fused path — the trials keep the fused ones;
- myrtle-5 and a transformer (depth 4, 8 tokens of 8 features): the composition's limit;
- the transformer's empirical NTK at width 128 (4 heads), float32: 'auto' (the structured
  per-layer path: attention's projections are positionwise dense layers) against torch.func
  Jacobian contraction on the same module.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ntksweep import empirical_ntk
from ntksweep import layers as nl
from ntksweep.kernels import analytic_kernels as fused


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    n, r = args.points, args.repeats
    images = rng.normal(size=(n, 1, 8, 8))
    vectors = rng.normal(size=(4 * n, 2))
    rows = {
        "cnn_fused_s": best(lambda: fused(images, architecture="cnn", depth=4), r),
        "cnn_composition_s": best(lambda: nl.cnn(1, 4).kernels(images), r),
        "mlp_fused_s": best(lambda: fused(vectors, depth=10), r),
        "mlp_composition_s": best(lambda: nl.mlp(1, 10).kernels(vectors), r),
        "myrtle5_limit_s": best(lambda: nl.myrtle(1, 5).kernels(images), r),
    }
    seqs = np.swapaxes(rng.normal(size=(n, 8, 8)), 1, 2).copy()          # (n, d, T)
    net = nl.transformer(128, 4, heads=4)
    rows["transformer_limit_s"] = best(lambda: net.kernels(seqs), r)
    model = net.module((8, 8), seed=0)
    x = torch.from_numpy(seqs).float()
    rows["transformer_w128_empirical_s"] = best(lambda: empirical_ntk(model, x), r)
    rows["transformer_w128_jacobian_s"] = best(
        lambda: empirical_ntk(model, x, method="jacobian"), r)
    rows["transformer_jacobian_over_structured"] = \
        rows["transformer_w128_jacobian_s"] / rows["transformer_w128_empirical_s"]
    rows["cnn_composition_over_fused"] = rows["cnn_composition_s"] / rows["cnn_fused_s"]
    rows["mlp_composition_over_fused"] = rows["mlp_composition_s"] / rows["mlp_fused_s"]
    for key, value in rows.items():
        print(f"{key:32s} {value:.3f}")


if __name__ == "__main__":
    main()
