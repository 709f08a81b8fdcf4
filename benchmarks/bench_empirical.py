"""Empirical NTK speed and memory (issue #3). All ratios are measured in one run.

    python benchmarks/bench_empirical.py                      # CPU: the issue's figures
    python benchmarks/bench_empirical.py --device cuda \
        --widths 1024,4096,16384,65536 --ns 512,2048,8192

1. structured vs torch.func Jacobian contraction, depth 4, width 1024, N=256, float32
   (goal ≥ 50×; neural-tangents' STRUCTURED_DERIVATIVES measured 0.05–0.09 s on the same
   2-core machine, goal ≥ 2× faster than that);
2. roofline: structured time ÷ time of the bare matrix products it needs (one forward, one
   pre-activation backward, the Gram products) on the same shapes (goal ≤ 1.5);
3. widths × N with peak memory (each configuration in a fresh process: max RSS on CPU,
   torch.cuda.max_memory_allocated on GPU).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time

import torch

NT_STRUCTURED_SECONDS = (0.05, 0.09)  # neural-tangents 0.6.5 on the 2-core VM: RESULTS.md


def best_time(fn, repeats: int, sync) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def bare_products(model, x):
    """Exactly the matrix products the structured method performs, with no bookkeeping."""
    a, acts, ds = x, [], []
    for i, layer in enumerate(model.layers):
        acts.append(a)
        z = a @ layer.weight.T
        a = torch.relu(z) if i < model.depth - 1 else z
    d = None
    for i in range(model.depth - 1, 0, -1):
        w = model.layers[i].weight
        d = w.expand(x.shape[0], *w.shape)[:, 0] if d is None else d @ w
        ds.append(d)
    for a in acts:
        a @ a.T
    for d in ds:
        d @ d.T


def run_one(cfg: dict) -> dict:
    import ntksweep
    from ntksweep.models import MLP

    torch.set_num_threads(cfg["threads"]) if cfg["threads"] else None
    dev = torch.device(cfg["device"])
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)  # unseeded MLP: drawn directly on the device (fast at width 65536)
    model = MLP(cfg["in_dim"], cfg["width"], cfg["depth"], device=dev)
    x = torch.randn(cfg["n"], cfg["in_dim"], device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    out = {"width": cfg["width"], "n": cfg["n"], "depth": cfg["depth"]}
    out["structured_s"] = best_time(lambda: ntksweep.empirical_ntk(model, x, method="structured"),
                                    cfg["repeats"], sync)
    if dev.type == "cuda":
        out["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        out["device"] = torch.cuda.get_device_name()
    else:
        out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["device"] = "cpu"
    with torch.no_grad():
        out["bare_s"] = best_time(lambda: bare_products(model, x), cfg["repeats"], sync)
    if cfg.get("jacobian"):
        out["jacobian_s"] = best_time(
            lambda: ntksweep.empirical_ntk(model, x, method="jacobian"), 2, sync)
    return out


def in_fresh_process(cfg: dict) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(run_one, (cfg,))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--widths", default="1024,4096,10000,32768")
    p.add_argument("--ns", default="512")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--in-dim", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    base = dict(device=args.device, depth=args.depth, in_dim=args.in_dim, threads=args.threads,
                repeats=args.repeats)
    rows = []

    head = in_fresh_process({**base, "width": 1024, "n": 256, "jacobian": True})
    rows.append(head)
    s, j, bare = head["structured_s"], head["jacobian_s"], head["bare_s"]
    print(f"[{head['device']}] depth {args.depth}, width 1024, N=256, float32")
    print(f"  structured            {s * 1e3:9.2f} ms")
    print(f"  jacobian contraction  {j * 1e3:9.2f} ms   → structured is {j / s:6.1f}× faster")
    print(f"  bare matrix products  {bare * 1e3:9.2f} ms   → roofline ratio {s / bare:5.2f}")
    lo, hi = NT_STRUCTURED_SECONDS
    print(f"  vs neural-tangents structured ({lo}–{hi} s on the 2-core CPU): "
          f"{lo / s:4.1f}–{hi / s:4.1f}× faster")
    print(f"\n{'width':>7} {'N':>6} {'structured':>12} {'bare':>10} {'roofline':>9} "
          f"{'peak MiB':>10}")
    for n in map(int, args.ns.split(",")):
        for w in map(int, args.widths.split(",")):
            r = in_fresh_process({**base, "width": w, "n": n, "repeats": min(args.repeats, 3)})
            rows.append(r)
            print(f"{w:>7} {n:>6} {r['structured_s'] * 1e3:10.1f}ms {r['bare_s'] * 1e3:8.1f}ms "
                  f"{r['structured_s'] / r['bare_s']:9.2f} {r['peak_mib']:10.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
