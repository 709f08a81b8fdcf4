"""The neural-tangents side of ``bench_peer.py``: run by the Python of a separate benchmark
venv (neural-tangents 0.6.5, jax 0.4.23 — see bench_peer.py), never imported by ntksweep.

    PEER_PYTHON peer_neural_tangents.py INPUTS.npz OUT.npz

Reads the inputs bench_peer.py drew (``cnn_x`` (N, H, W, C), ``mlp_x`` (N, d), ``tf_x``
(N, T, d)) and the shapes it asks for, jits and compiles each case, writes the kernels it
computed (the analytic CNTK, the transformer's limit) to OUT.npz and then times one case
per request (``serve``), so that bench_peer interleaves its own runs with the peer's.
"""

import argparse
import json
import sys
import time

import jax
import neural_tangents as nt
import numpy as np
from neural_tangents import stax


def serve(timed: dict, outputs: dict, out: str) -> None:
    """Compile every timed case (one call each), write ``outputs`` and the versions to
    ``out``, say ``{"ready": …}``, then answer each line ``time CASE`` on stdin with
    ``{"seconds": …}`` of one jitted call, until stdin closes (``peer_session.Peer``)."""
    for fn in timed.values():
        jax.block_until_ready(fn())
    np.savez(out, devices=str(jax.devices()),
             versions=f"neural-tangents {nt.__version__}, jax {jax.__version__}", **outputs)
    print(json.dumps({"ready": sorted(timed)}), flush=True)
    for line in sys.stdin:
        command, _, case = line.strip().partition(" ")
        if command != "time" or case not in timed:
            print(json.dumps({"error": f"unknown request {line.strip()!r}"}), flush=True)
            continue
        t0 = time.perf_counter()
        jax.block_until_ready(timed[case]())
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)


def cnn(width: int, depth: int, w_std: float, b_std: float):
    """depth − 1 3×3 SAME convolutions with ReLU, global average pooling, a dense readout."""
    layers = []
    for _ in range(depth - 1):
        layers += [stax.Conv(width, (3, 3), padding="SAME", W_std=w_std, b_std=b_std),
                   stax.Relu()]
    return stax.serial(*layers, stax.GlobalAvgPool(), stax.Dense(1, W_std=w_std, b_std=b_std))


def mlp(width: int, depth: int, w_std: float, b_std: float):
    layers = []
    for _ in range(depth - 1):
        layers += [stax.Dense(width, W_std=w_std, b_std=b_std), stax.Relu()]
    return stax.serial(*layers, stax.Dense(1, W_std=w_std, b_std=b_std))


def residual(*layers):
    """z + f(z)."""
    return stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), stax.serial(*layers)),
                       stax.FanInSum())


def transformer(width: int, depth: int, heads: int, w_std: float, b_std: float):
    """ntksweep's preset: an embedding, depth − 2 pre-norm blocks (attention with tied
    query-key weights and 1/d_key logits, a ReLU MLP), LayerNorm, the mean over tokens, a
    dense readout; sequences (N, T, d), channels last."""
    attend = stax.GlobalSelfAttention(width, width // heads, width // heads, heads,
                                      linear_scaling=True, W_value_std=w_std, b_std=b_std)
    block = stax.serial(residual(stax.LayerNorm(), attend),
                        residual(stax.LayerNorm(), stax.Dense(width, w_std, b_std), stax.Relu(),
                                 stax.Dense(width, w_std, b_std)))
    return stax.serial(stax.Dense(width, w_std, b_std), *[block] * (depth - 2),
                       stax.LayerNorm(), stax.GlobalAvgPool(), stax.Dense(1, w_std, b_std))


def empirical(apply_fn, init_fn, x, impl):
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    fn = jax.jit(nt.empirical_ntk_fn(apply_fn, vmap_axes=0, implementation=impl))
    return lambda: fn(x, None, params)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("inputs")
    p.add_argument("out")
    args = p.parse_args()
    cfg = np.load(args.inputs)
    w_std, b_std, depth = float(cfg["weight_std"]), float(cfg["bias_std"]), int(cfg["depth"])
    impls = {"structured": nt.NtkImplementation.STRUCTURED_DERIVATIVES,
             "jacobian": nt.NtkImplementation.JACOBIAN_CONTRACTION}
    timed, outputs = {}, {}

    x_cnn = jax.numpy.asarray(cfg["cnn_x"], dtype=jax.numpy.float32)
    init_fn, apply_fn, kernel_fn = cnn(int(cfg["cnn_width"]), depth, w_std, b_std)
    kfn = jax.jit(kernel_fn, static_argnames="get")
    timed["cnn_analytic"] = lambda: kfn(x_cnn, None, "ntk")
    outputs["cnn_analytic_ntk"] = np.asarray(kfn(x_cnn, None, "ntk"))
    for name, impl in impls.items():
        timed[f"cnn_empirical_{name}"] = empirical(apply_fn, init_fn, x_cnn, impl)

    x_mlp = jax.numpy.asarray(cfg["mlp_x"], dtype=jax.numpy.float32)
    init_fn, apply_fn, _ = mlp(int(cfg["mlp_width"]), depth, w_std, b_std)
    for name, impl in impls.items():
        timed[f"mlp_empirical_{name}"] = empirical(apply_fn, init_fn, x_mlp, impl)

    x_tf = jax.numpy.asarray(cfg["tf_x"], dtype=jax.numpy.float32)
    init_fn, apply_fn, kernel_fn = transformer(int(cfg["tf_width"]), depth, int(cfg["tf_heads"]),
                                               w_std, b_std)
    for name, impl in impls.items():
        timed[f"tf_empirical_{name}"] = empirical(apply_fn, init_fn, x_tf, impl)
    outputs["tf_analytic_ntk"] = np.asarray(jax.jit(kernel_fn, static_argnames="get")(
        x_tf[:int(cfg["tf_limit_n"])], None, "ntk"))
    serve(timed, outputs, args.out)


if __name__ == "__main__":
    main()
