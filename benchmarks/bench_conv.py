"""Conv nets and ResNets: the empirical NTK and the analytic CNTK (issue #22). Every ratio
is measured in one run, on the machine it runs on.

    python benchmarks/bench_conv.py [--device cuda] [--repeats 3]

1. empirical, depth 4 CNN (three 3×3 SAME convolutions + GAP + dense), 8×8×1 inputs,
   N = 128, width 128, float32: the structured (per-layer gradient) NTK against torch.func
   Jacobian contraction on the same net (goal ≥ 1.3×), and its roofline ratio: its time ÷ the
   time of the bare operations it needs — one forward and one backward of the convolutions,
   the per-example weight-gradient products, the Gram products (goal ≤ 1.3);
2. memory: width 256, N = 512 under memory_budget = 512 MiB (and ``--budgets``) against the
   unbounded kernel (equal), with the peak memory of each (fresh processes; max RSS on CPU);
3. analytic, the same architecture and inputs at N = 128: the CNTK's time;
4. ``--only scale`` (asked for by name): the CNTK and a width-256 CNN's empirical NTK at
   N = 1,000s of 8×8 and 16×16 images (``--points``), with the GPU's peak memory.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ntksweep import analytic_kernels, empirical_ntk
from ntksweep.models import CNN

sys.path.insert(0, str(Path(__file__).parent))
from bench_empirical import best_time  # noqa: E402


def bare_operations(model: CNN, x: torch.Tensor) -> None:
    """What the structured method must do at least: forward and backward through the
    convolutions, per-example weight gradients (patches × pre-activation gradients) and the
    symmetric Gram products, with no bookkeeping."""
    acts, zs = [], []
    a = x
    with torch.enable_grad():
        for conv in model.convs:
            acts.append(a)
            z = conv(a)
            zs.append(z)
            a = torch.relu(z)
        out = model.readout(a.mean((2, 3)))
        ds = torch.autograd.grad(out.sum(), zs)
    for conv, a, d in zip(model.convs, acts, ds):
        patches = F.unfold(a, conv.kernel_size, padding=conv.kernel_size // 2)
        g = torch.bmm(d.flatten(2), patches.transpose(1, 2)).flatten(1)   # (N, C_out·C_in k²)
        n = len(g)
        torch.mm(g[: n // 2], g.T)          # the upper half of the symmetric Gram, roughly
        torch.mm(g[n // 2:], g[n // 2:].T)


def flop_floor(model: CNN, n: int, sync) -> dict:
    """The least arithmetic the empirical NTK needs — forward and input-backward of the
    width → width convolutions, the per-example weight gradients, the symmetric Gram
    products — at the GEMM rate this machine reaches (a large square matmul, same run)."""
    flops = 0.0
    for conv in list(model.convs)[1:]:
        c_out, c_in, k, _ = conv.weight.shape
        p = 64                                              # 8×8 positions, SAME
        per_example = 2.0 * p * c_out * c_in * k * k
        flops += n * per_example * 3                        # forward, input grads, weight grads
        flops += 2.0 * n * n * c_out * c_in * k * k / 2     # the Gram's upper half
    a = torch.randn(2048, 2048, device=next(model.parameters()).device)
    rate = 2 * 2048**3 / best_time(lambda: a @ a, 3, sync)
    return {"gflop": flops / 1e9, "gemm_gflops": rate / 1e9, "floor_s": flops / rate}


def speed(args) -> dict:
    torch.manual_seed(0)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    x = torch.randn(128, 1, 8, 8, device=args.device)
    net = CNN(1, 128, 4, seed=0, device=args.device)
    t_struct = best_time(lambda: empirical_ntk(net, x, method="structured"), args.repeats, sync)
    t_jac = best_time(lambda: empirical_ntk(net, x, method="jacobian"), args.repeats, sync)
    t_bare = best_time(lambda: bare_operations(net, x), args.repeats, sync)
    xs = x.double().cpu().numpy()
    t0 = time.perf_counter()
    analytic_kernels(xs, architecture="cnn", depth=4)
    floor = flop_floor(net, len(x), sync)
    return {"structured_s": t_struct, "jacobian_s": t_jac, "bare_s": t_bare, **floor,
            "over_flop_floor": t_struct / floor["floor_s"],
            "speedup_vs_torch_func": t_jac / t_struct, "roofline": t_struct / t_bare,
            "analytic_cntk_s": time.perf_counter() - t0}


def scale_one(size: int, n: int, device: str, width: int) -> dict:
    """Whether N = 1,000s of size×size images are practical: the analytic CNTK (depth 4, GAP,
    ReLU, float64) and a width-``width`` CNN's empirical NTK (float32) at N, timed once each
    (a first small call outside the timing pays the one-time costs); on CUDA with the peak
    memory allocated."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    x = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(0))
    xs = x.double().numpy()
    analytic_kernels(xs[:4], architecture="cnn", depth=4, device=device)
    t0 = time.perf_counter()
    analytic_kernels(xs, architecture="cnn", depth=4, device=device)
    t_analytic = time.perf_counter() - t0
    net = CNN(1, width, 4, seed=0, device=device)
    xd = x.to(device)
    empirical_ntk(net, xd[:4])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    empirical_ntk(net, xd)
    sync()
    t_empirical = time.perf_counter() - t0
    pairs = n * (n + 1) / 2
    return {"size": size, "n": n, "width": width, "analytic_s": t_analytic,
            "analytic_ms_per_pair": 1e3 * t_analytic / pairs, "empirical_s": t_empirical,
            "empirical_peak_GiB": torch.cuda.max_memory_allocated() / 2**30
            if device == "cuda" else None}


def scale(args) -> list[dict]:
    return [scale_one(int(size), int(n), args.device, args.width)
            for size, n in (point.split(":") for point in args.points.split(","))]


def _rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())[1])


def memory_one(cfg: dict) -> dict:
    """One configuration in a fresh process: the peak of its resident memory above where it
    started — the kernel's high-water mark (VmHWM), reset just before the kernel (Linux ≥ 4.0:
    ``clear_refs`` 5), so no peak is missed between samples."""
    torch.manual_seed(0)
    x = torch.randn(cfg["n"], 1, 8, 8)
    net = CNN(1, cfg["width"], 4, seed=0)
    if cfg["warm"]:     # first-use allocations (the convolutions' kernels) not counted
        empirical_ntk(net, x[:4])
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    theta = empirical_ntk(net, x, memory_budget=cfg["budget"], trace=True)   # (n, n)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_extra_MiB": (_rss_kib("VmHWM") - before) / 1024,
            "sum": float(theta.double().sum()), "diag": float(theta.double().trace())}


def memory(args) -> dict:
    ctx = mp.get_context("spawn")
    rows = {}
    for budget in sorted({*args.budgets, 512}) + [None]:
        budget = None if budget is None else budget << 20
        with ctx.Pool(1) as pool:
            rows[str(budget)] = pool.apply(memory_one, ({"n": 512, "width": 256,
                                                         "budget": budget,
                                                         "warm": args.warm},))
    bounded, unbounded = rows[str(512 << 20)], rows["None"]
    rows["equal_rel"] = abs(bounded["sum"] - unbounded["sum"]) / abs(unbounded["sum"])
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", choices=["speed", "memory", "scale"])
    p.add_argument("--points", default="8:1000,8:4000,16:1000",
                   help="scale: image side:N pairs, comma-separated")
    p.add_argument("--width", type=int, default=256, help="scale: the CNN's channels")
    p.add_argument("--budgets", type=lambda v: [int(b) for b in v.split(",")], default=[512],
                   help="memory budgets to measure, MiB, comma-separated (512 always)")
    p.add_argument("--warm", action="store_true",
                   help="count memory from after a small kernel (first-use allocations out)")
    args = p.parse_args(argv)
    results = {}
    if args.only in (None, "speed"):
        results["speed"] = speed(args)
    if args.only in (None, "memory"):
        results["memory"] = memory(args)
    if args.only == "scale":        # minutes on a CPU: asked for by name only
        results["scale"] = scale(args)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
