"""Kernel jobs: entries per second of a network's limit on a data set, computed in tiles in
this process and on Ray actors (the scaling over actors), with the limit in one piece as
the reference — the tiles' own cost (each diagonal tile recomputes its rows' variances).

    python benchmarks/bench_gram.py [--n 256] [--tile 32] [--actors 2]

The job: the depth-4 GAP CNTK (ReLU, float64) on N digits (8×8), train × train.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--tile", type=int, default=32)
    p.add_argument("--actors", type=int, default=2)
    args = p.parse_args(argv)

    from ntksweep.gram import GramMatrix, load_gram_spec, run_gram
    from ntksweep.sweep import local_tile_executor
    from ntksweep.trial.builders import dataset_for, inputs, limit_kernels

    network = {"dataset": "digits", "n_train": args.n, "architecture": "cnn", "depth": 4}
    entries = args.n * (args.n + 1) // 2
    with tempfile.TemporaryDirectory() as tmp:
        spec = load_gram_spec({"name": "b", "output_dir": f"{tmp}/serial",
                               "network": network, "tile": args.tile})
        data = dataset_for(spec.network)
        t0 = time.perf_counter()
        whole = limit_kernels(spec.network, inputs(spec.network, data, data.x_train)).ntk
        one_piece = time.perf_counter() - t0
        serial = run_gram(spec)
        assert np.allclose(np.asarray(GramMatrix(spec.output_dir)), whole, rtol=1e-12)
        executor = local_tile_executor(args.actors)
        spec_ray = load_gram_spec({"name": "b", "output_dir": f"{tmp}/ray",
                                   "network": network, "tile": args.tile})
        sharded = run_gram(spec_ray, executor)
        executor.shutdown()
    print(f"CNTK depth 4 GAP on {args.n} digits, tiles of {args.tile} ({entries:,} entries):")
    print(f"  in one piece (no tiles)   {one_piece:7.2f} s  {entries / one_piece:9,.0f} entries/s")
    print(f"  tiles, this process       {serial.seconds:7.2f} s  "
          f"{entries / serial.seconds:9,.0f} entries/s")
    print(f"  tiles, {args.actors} Ray actors        {sharded.seconds:7.2f} s  "
          f"{entries / sharded.seconds:9,.0f} entries/s  "
          f"({serial.seconds / sharded.seconds:.2f}× this process)")


if __name__ == "__main__":
    main()
