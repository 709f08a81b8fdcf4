"""Dataset-scale limits against neural-tangents, per Gram entry, side by side in one run on
one machine (issue #35): the depth-4 CNTK with global average pooling, the same with a
flatten readout, and Myrtle-5, on a test × train block of 32×32×3 images (each entry: Θ_∞
and Σ of one pair of images, as a kernel job computes them).

neural-tangents is archived and needs its own venv (never a dependency of ntksweep):

    python -m venv /tmp/ntvenv && /tmp/ntvenv/bin/pip install neural-tangents==0.6.5 \
        jax==0.4.23 jaxlib==0.4.23 "numpy<2" "scipy<1.13" tf2jax==0.3.5
    python benchmarks/bench_gram_peer.py --peer-python /tmp/ntvenv/bin/python

Both sides run in float32 (the peer's default; ours ``dtype="float32"``) and in float64
(ours' default; the peer's jax x64 mode), compared at the same precision and best against
best. The peer runs in its own processes (one per precision), kept up between requests, and
the sides take turns case by case (``peer_session``): they never share the cores, and a
shared machine's drift falls on both. Each side's best of --repeats after one warm-up (the
peer's: after jit compilation). Goal: ≥ 5×
the peer's per-entry time for the GAP CNTK and Myrtle-5. The
flatten readout's cost per pair grows as H·W, the GAP's as (H·W)²: the per-entry times at
--side and at half of it show it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ntksweep import analytic_kernels

sys.path.insert(0, str(Path(__file__).parent))
from peer_session import Peer, interleaved_best  # noqa: E402

CASES = {"cntk4_gap": dict(architecture="cnn", depth=4, readout="gap"),
         "cntk4_flatten": dict(architecture="cnn", depth=4, readout="flatten"),
         "myrtle5": dict(architecture="myrtle", depth=5)}
STDS = dict(weight_std=1.0, bias_std=0.1)


def run_side(python: str, x1: np.ndarray, x2: np.ndarray, repeats: int,
             x64: bool) -> tuple[dict, dict]:
    """(ours, the peer's) at one precision: seconds per case as ``<case>_s`` and each NTK,
    the two sides taking turns (images channels last for stax)."""
    dtype = "float64" if x64 else "float32"
    timed = {name: lambda args=args: analytic_kernels(x1, x2, **args, **STDS, dtype=dtype)
             for name, args in CASES.items()}
    inputs = dict(x1=x1.transpose(0, 2, 3, 1), x2=x2.transpose(0, 2, 3, 1),
                  cases=",".join(CASES), **STDS)
    script = str(Path(__file__).with_name("peer_nt_limits.py"))
    with Peer(python, script, inputs, *(["--x64"] * x64)) as process:
        best_ours, best_peer, kernels = interleaved_best(process, timed, repeats)
        peer = dict(process.outputs)
    ours = {f"{case}_ntk": k.ntk for case, k in kernels.items()}
    ours.update({f"{case}_s": t for case, t in best_ours.items()})
    peer.update({f"{case}_s": t for case, t in best_peer.items()})
    return ours, peer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--peer-python", required=True, help="the Python of the neural-tangents venv")
    p.add_argument("--side", type=int, default=32, help="image side (default 32: CIFAR's)")
    p.add_argument("--n1", type=int, default=4, help="test rows of the block")
    p.add_argument("--n2", type=int, default=8, help="train columns of the block")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    sides = {args.side: None, args.side // 2: None}
    for side in sides:
        x1, x2 = (rng.normal(size=(n, 3, side, side)) for n in (args.n1, args.n2))
        ours64, peer64 = run_side(args.peer_python, x1, x2, args.repeats, x64=True)
        ours32, peer32 = run_side(args.peer_python, x1, x2, args.repeats, x64=False)
        sides[side] = (ours64, ours32, peer32, peer64)
    entries = args.n1 * args.n2
    print(f"per Gram entry (Θ_∞ and Σ of one pair), a {args.n1} × {args.n2} block of "
          f"{args.side}×{args.side}×3 images; {sides[args.side][2]['versions']}, "
          f"{sides[args.side][2]['devices']}")
    print("ms per entry; the peer's time ÷ ours at the same precision and best against best; "
          "our NTK's largest difference from the peer's float64, relative")
    print(f"{'case':>14} {'ours f64':>9} {'ours f32':>9} {'peer f64':>9} {'peer f32':>9} "
          f"{'f64':>6} {'f32':>6} {'best':>6} {'diff f64':>9} {'diff f32':>9}")
    ours64, ours32, peer32, peer64 = sides[args.side]
    for name in CASES:
        o64, o32, p64, p32 = (1e3 * float(r[f"{name}_s"]) / entries
                              for r in (ours64, ours32, peer64, peer32))
        ref = peer64[f"{name}_ntk"]
        d64, d32 = (np.abs(r[f"{name}_ntk"] - ref).max() / np.abs(ref).max()
                    for r in (ours64, ours32))
        print(f"{name:>14} {o64:9.3f} {o32:9.3f} {p64:9.3f} {p32:9.3f} {p64 / o64:5.1f}× "
              f"{p32 / o32:5.1f}× {min(p64, p32) / min(o64, o32):5.1f}× {d64:9.1e} {d32:9.1e}")
    half = args.side // 2
    for name in ("cntk4_gap", "cntk4_flatten"):
        grow = float(sides[args.side][0][f"{name}_s"]) / float(sides[half][0][f"{name}_s"])
        print(f"{name}: ours per entry at {args.side}² ÷ at {half}²: {grow:.1f}× "
              f"(H·W grew 4×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
