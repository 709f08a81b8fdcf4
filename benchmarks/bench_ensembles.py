"""Ensembles of networks at initialisation, end to end in a sweep: `ntksweep run` in a fresh
process and output dir (local Ray, SQLite MLflow, Parquet), timed from the command's start
to its end, and from its first trial running to its end (the trials alone).

    python benchmarks/bench_ensembles.py [--networks 10000] [--plain 40]

Rows: depth-4 width-256 ReLU MLPs on N = 32 eval points as ensemble trials (4 trials of
networks/4 members) and as one plain init-only trial per network (the way before ensembles),
and depth-4 width-64 CNNs on 8×8 images. Goal (issue #34, 2 cores): ≥ 10,000 MLP Θ_0 per
minute end to end.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

MLP = {"dataset": "circle", "n_train": 32, "n_eval": 32, "depth": 4, "width": 256,
       "steps": 0, "device": "cpu"}
CNN = {"dataset": "images", "dim": 8, "n_train": 32, "n_eval": 32, "architecture": "cnn",
       "depth": 4, "width": 64, "steps": 0, "device": "cpu"}


def timed_sweep(base: dict, seeds: int) -> tuple[float, float]:
    """(the whole command's seconds, the trials' seconds: from the first trial running)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"name": "bench", "output_dir": str(Path(tmp) / "out"), "base": base,
                "grid": {"seed": list(range(seeds))}, "resources": {"cpus_per_trial": 1}}
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "ntksweep.cli", "run", str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        first = None
        for line in proc.stderr:
            if first is None and "first trial is running" in line:
                first = time.monotonic()
        if proc.wait() != 0:
            raise SystemExit(f"the sweep failed (exit {proc.returncode})")
        end = time.monotonic()
        return end - t0, end - (first or t0)


def row(name: str, base: dict, trials: int, networks: int) -> float:
    whole, trials_s = timed_sweep(base, trials)
    rate = 60 * networks / whole
    print(f"{name:44s} {networks:6d} nets  {whole:6.1f} s  {rate:8.0f} /min end to end  "
          f"{60 * networks / trials_s:8.0f} /min over the trials", flush=True)
    return rate


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", type=int, default=10000)
    p.add_argument("--plain", type=int, default=40)
    p.add_argument("--cnn", type=int, default=1000)
    args = p.parse_args(argv)
    per = args.networks // 4
    ensemble = row(f"MLP d4 w256, 4 trials × ensemble {per}", {**MLP, "ensemble": per}, 4,
                   4 * per)
    plain = row(f"MLP d4 w256, {args.plain} plain trials", MLP, args.plain, args.plain)
    print(f"ensemble / plain trials: {ensemble / plain:.1f}× the networks per minute")
    row(f"CNN d4 w64 8×8, 4 trials × ensemble {args.cnn // 4}",
        {**CNN, "ensemble": args.cnn // 4}, 4, 4 * (args.cnn // 4))


if __name__ == "__main__":
    main()
