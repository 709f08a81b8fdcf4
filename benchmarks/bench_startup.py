"""How soon `ntksweep run` talks and starts working: the README's quick start (the embedded
spec, local Ray, SQLite MLflow) in a fresh process and a fresh output dir, timed from the
command's start to its first line, to the first trial running, and to its end.

    python benchmarks/bench_startup.py [--repeats 3]

Goals (issue #36, 2 cores): first line < 1 s, first trial running < 8 s. The phase lines
(`ntksweep/phases.py`) say where the rest of the time goes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "ntksweep.cli", "run", "--out",
                                 str(Path(tmp) / "qs")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        seen: dict[str, float] = {}
        for line in proc.stderr:
            now = time.monotonic() - t0
            seen.setdefault("first_line_s", now)
            if "first trial is running" in line:
                seen["first_trial_s"] = now
            if line.startswith("["):
                print(f"  {now:6.2f} s  {line.rstrip()}")
        if proc.wait() != 0:
            raise SystemExit(f"the quick start failed (exit {proc.returncode})")
        seen["total_s"] = time.monotonic() - t0
        return seen


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    runs = [one_run() for _ in range(args.repeats)]
    for key in ("first_line_s", "first_trial_s", "total_s"):
        values = sorted(r[key] for r in runs)
        print(f"{key:15s} median {values[len(values) // 2]:6.2f} s   "
              f"(min {values[0]:.2f}, max {values[-1]:.2f}, {len(values)} runs)")


if __name__ == "__main__":
    main()
