"""ntksweep against neural-tangents, side by side in one run on one machine (issues #3, #22).

neural-tangents is archived and needs its own venv (never a dependency of ntksweep):

    python -m venv /tmp/ntvenv && /tmp/ntvenv/bin/pip install neural-tangents==0.6.5 \
        jax==0.4.23 jaxlib==0.4.23 "numpy<2" "scipy<1.13" tf2jax==0.3.5
    python benchmarks/bench_peer.py --peer-python /tmp/ntvenv/bin/python

Both sides get the same inputs, float32 for the networks, best of --repeats after one warm-up
(neural-tangents: after jit compilation). The peer runs in its own process and venv, kept up
between requests, and the two sides take turns case by case (``peer_session``): they never
share the cores, and a shared machine's drift falls on both.
1. analytic CNTK, depth 4 (three 3×3 SAME convolutions, ReLU, GAP, dense), 8×8×1, N = 128
   (goal ≥ 5×), and the largest difference between the two kernels (relative to its max);
2. empirical NTK of that CNN at width 128 (goal ≥ 2× the peer's faster implementation);
3. empirical NTK of a depth-4 ReLU MLP, width 1024, N = 256, d = 16 (goal ≥ 2×);
4. empirical NTK of the transformer preset, depth 4 (2 blocks), width 128, 4 heads, T = 16
   tokens of d = 16, N = 128 (goal ≥ 2× the peer's faster implementation, and ≥ 1.3× our own
   torch.func Jacobian contraction), and the two transformer limits' largest difference on
   the first 16 sequences (the conventions agree: tied query-key weights, 1/d_key logits).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from ntksweep import analytic_kernels, empirical_ntk
from ntksweep import layers as nl
from ntksweep.models import CNN, MLP

sys.path.insert(0, str(Path(__file__).parent))
from peer_session import Peer, interleaved_best  # noqa: E402

SHAPES = dict(depth=4, weight_std=1.0, bias_std=0.1, cnn_n=128, cnn_width=128, mlp_n=256,
              mlp_width=1024, mlp_dim=16, tf_n=128, tf_width=128, tf_heads=4, tf_tokens=16,
              tf_dim=16, tf_limit_n=16)


def peer_inputs(x_cnn: np.ndarray, x_mlp: np.ndarray, x_tf: np.ndarray) -> dict:
    return dict(cnn_x=x_cnn.transpose(0, 2, 3, 1), mlp_x=x_mlp, tf_x=x_tf, **SHAPES)


def our_cases(x_cnn: np.ndarray, x_mlp: np.ndarray, x_tf: np.ndarray) -> tuple[dict, dict]:
    """(the timed calls, by the peer's case names; the transformer's limit, compared with
    the peer's — the CNTK comes from its timed call)."""
    s = SHAPES
    stds = dict(weight_std=s["weight_std"], bias_std=s["bias_std"])
    timed = {"cnn_analytic": lambda: analytic_kernels(x_cnn, architecture="cnn",
                                                      depth=s["depth"], **stds)}
    net = nl.transformer(s["tf_width"], s["depth"], heads=s["tf_heads"], **stds)
    seqs = x_tf.transpose(0, 2, 1).copy()                                  # (N, d, T)
    nets = {"cnn": (CNN(1, s["cnn_width"], s["depth"], seed=0, **stds), x_cnn),
            "mlp": (MLP(s["mlp_dim"], s["mlp_width"], s["depth"], seed=0, **stds), x_mlp),
            "tf": (net.module(seqs.shape[1:], seed=0), seqs)}
    for arch, (model, x) in nets.items():
        xt = torch.as_tensor(x, dtype=torch.float32)
        for method in ("structured", "jacobian"):
            timed[f"{arch}_empirical_{method}"] = \
                lambda model=model, xt=xt, method=method: empirical_ntk(model, xt, method=method)
    return timed, {"tf_analytic_ntk": net.kernels(seqs[:s["tf_limit_n"]]).ntk}


def report(ours: dict, peer: dict) -> None:
    """ours, peer: seconds per case as ``<case>_s`` and the compared kernels."""
    print(f"2-core CPU here; peer: {peer['versions']} on {peer['devices']}")
    diff = np.abs(ours["cnn_analytic_ntk"] - peer["cnn_analytic_ntk"]).max()
    scale = np.abs(ours["cnn_analytic_ntk"]).max()
    rows = [("analytic CNTK, N=128", "cnn_analytic_s", ["cnn_analytic_s"]),
            ("empirical CNN w=128, N=128", "cnn_empirical_structured_s",
             ["cnn_empirical_structured_s", "cnn_empirical_jacobian_s"]),
            ("empirical MLP w=1024, N=256", "mlp_empirical_structured_s",
             ["mlp_empirical_structured_s", "mlp_empirical_jacobian_s"]),
            ("empirical transformer, N=128", "tf_empirical_structured_s",
             ["tf_empirical_structured_s", "tf_empirical_jacobian_s"])]
    print(f"{'':<29}{'ntksweep':>10}{'neural-tangents (best impl.)':>30}{'speed-up':>10}")
    for label, mine, theirs in rows:
        t_peer = min(float(peer[k]) for k in theirs)
        which = min(theirs, key=lambda k: float(peer[k])).split("_")[-2]
        print(f"{label:<29}{ours[mine]:>9.3f}s{t_peer:>20.3f}s ({which:>10})"
              f"{t_peer / ours[mine]:>9.2f}×")
    print(f"analytic CNTK: ntksweep (float64) vs neural-tangents (float32): "
          f"max |ΔΘ| / max Θ = {diff / scale:.1e}")
    tf, tf_peer = np.asarray(ours["tf_analytic_ntk"]), peer["tf_analytic_ntk"]
    print(f"transformer limit, {len(tf)} sequences: max |ΔΘ| / max Θ = "
          f"{np.abs(tf - tf_peer).max() / np.abs(tf).max():.1e}")
    print(f"transformer: structured over our torch.func Jacobian contraction: "
          f"{ours['tf_empirical_jacobian_s'] / ours['tf_empirical_structured_s']:.2f}× faster")
    print("all seconds: " + ", ".join(f"{k} ours {ours[k]:.3f} peer {float(peer[k]):.3f}"
                                      for k in ours if k.endswith("_s")))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--peer-python", required=True, help="the Python of the neural-tangents venv")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    x_cnn = rng.normal(size=(SHAPES["cnn_n"], 1, 8, 8))
    x_mlp = rng.normal(size=(SHAPES["mlp_n"], SHAPES["mlp_dim"]))
    x_tf = rng.normal(size=(SHAPES["tf_n"], SHAPES["tf_tokens"], SHAPES["tf_dim"]))
    timed, ours = our_cases(x_cnn, x_mlp, x_tf)
    script = str(Path(__file__).with_name("peer_neural_tangents.py"))
    with Peer(args.peer_python, script, peer_inputs(x_cnn, x_mlp, x_tf)) as peer_process:
        best_ours, best_peer, results = interleaved_best(peer_process, timed, args.repeats)
        peer = dict(peer_process.outputs)
    ours["cnn_analytic_ntk"] = results["cnn_analytic"].ntk
    ours.update({f"{case}_s": t for case, t in best_ours.items()})
    peer.update({f"{case}_s": t for case, t in best_peer.items()})
    report(ours, peer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
