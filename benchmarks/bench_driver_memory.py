"""The sweep driver's memory per trial: N trivial trials (tracked in SQLite, or not) and the
driver's resident memory after a quarter, half, three quarters and all of them; prints the
growth per trial over the last three quarters (the first quarter includes warm-up).

    python benchmarks/bench_driver_memory.py [N] [--untracked]
"""

import gc
import os
import sys
import tempfile

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ntksweep.sweep import run_sweep  # noqa: E402
from ntksweep.sweep_spec import load_sweep_spec  # noqa: E402


def rss() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(n: int, tracked: bool, out: str | None = None) -> list[int]:
    """The driver's RSS (bytes) after n/4, n/2, 3n/4 and n trivial trials."""
    out = out or tempfile.mkdtemp(prefix="ntksweep-mem-")
    spec = load_sweep_spec({"name": "mem", "output_dir": out,
                            "base": {"dataset": "circle", "n_train": 2, "n_eval": 2, "depth": 2,
                                     "width": 2, "steps": 1, "checkpoints": 2, "device": "cpu"},
                            "grid": {"seed": list(range(n))}})
    marks, done = {}, [0]

    def on_event(kind, data):
        if kind == "end":
            done[0] += 1
            if done[0] in (n // 4, n // 2, 3 * n // 4, n):
                gc.collect()
                marks[done[0]] = rss()

    run_sweep(spec, quiet=True, tracking=tracked, num_cpus=2, on_event=on_event)
    return [marks[k] for k in sorted(marks)]


if __name__ == "__main__":
    n = int(next((a for a in sys.argv[1:] if a.isdigit()), 800))
    tracked = "--untracked" not in sys.argv
    pts = measure(n, tracked)
    print(f"{'tracked' if tracked else 'untracked'}: driver RSS "
          f"{[round(p / 2**20, 1) for p in pts]} MiB; "
          f"{(pts[-1] - pts[0]) / (n - n // 4) / 1024:.2f} KiB per trial over the last 3/4")
