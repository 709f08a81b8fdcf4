"""A Gram entry's cost on one device, for the GPU rows of dataset-scale kernels (issue #35):
the 21-layer CNTK with global average pooling (20 convolutions, ReLU, then the dense
readout) and Myrtle-5 on 32×32×3 images, per entry (Θ_∞ and Σ of one pair), in float32 and
float64, with float32's largest difference from float64 on the block (relative to its
largest entry). neural-tangents publishes 2.70 ms per entry for its 21-layer pooling CNTK
on a V100 in float32; the goal on an H100/H200 is ≤ 0.5 ms.

    python benchmarks/bench_gram_gpu.py                         # cuda, a 64 × 64 block
    python benchmarks/bench_gram_gpu.py --device cpu --n1 2 --n2 4 --side 16   # a check

Prints one JSON object. Each time is the best of --repeats after one warm-up, with the
device synchronised (``bench_empirical.best_time``). The limit's tiles fill
``--memory-budget`` bytes of the device.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ntksweep import analytic_kernels

sys.path.insert(0, str(Path(__file__).parent))
from bench_empirical import best_time  # noqa: E402

CASES = {"cntk21_gap": dict(architecture="cnn", depth=21, readout="gap"),
         "myrtle5": dict(architecture="myrtle", depth=5)}
STDS = dict(weight_std=1.0, bias_std=0.1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--n1", type=int, default=64, help="rows of the block (test images)")
    p.add_argument("--n2", type=int, default=64, help="columns (train images)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--memory-budget", type=int, default=16 << 30)
    args = p.parse_args(argv)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rng = np.random.default_rng(0)
    x1, x2 = (rng.normal(size=(n, 3, args.side, args.side)) for n in (args.n1, args.n2))
    entries = args.n1 * args.n2
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    result = {"device": name, "torch": torch.__version__, "block": [args.n1, args.n2],
              "image": [3, args.side, args.side], "cases": {}}
    for case, kwargs in CASES.items():
        row, kernels = {}, {}
        for dtype in ("float32", "float64"):
            seconds = best_time(lambda dt=dtype, kw=kwargs, out=kernels: out.__setitem__(
                dt, analytic_kernels(x1, x2, **kw, **STDS, device=args.device, dtype=dt,
                                     memory_budget=args.memory_budget)), args.repeats, sync)
            row[f"{dtype}_ms_per_entry"] = 1e3 * seconds / entries
        for kernel in ("ntk", "nngp"):
            exact = getattr(kernels["float64"], kernel)
            diff = np.abs(getattr(kernels["float32"], kernel) - exact).max()
            row[f"float32_{kernel}_error"] = float(diff / np.abs(exact).max())
        result["cases"][case] = row
        print(f"{case}: {row}", file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
