"""The neural-tangents side of ``bench_peer.py``: run by the Python of a separate benchmark
venv (neural-tangents 0.6.5, jax 0.4.23 — see bench_peer.py), never imported by ntksweep.

    PEER_PYTHON peer_neural_tangents.py INPUTS.npz OUT.npz --repeats 3

Reads the inputs bench_peer.py drew (``cnn_x`` (N, H, W, C), ``mlp_x`` (N, d), ``tf_x``
(N, T, d)) and the
shapes it asks for, times each case jitted (best of ``repeats``, after one compiling call),
and writes the seconds and the analytic CNTK it computed.
"""

import argparse
import time

import jax
import neural_tangents as nt
import numpy as np
from neural_tangents import stax


def best_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


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


def empirical(apply_fn, init_fn, x, impl, repeats: int) -> float:
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    fn = jax.jit(nt.empirical_ntk_fn(apply_fn, vmap_axes=0, implementation=impl))
    return best_time(lambda: fn(x, None, params), repeats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("inputs")
    p.add_argument("out")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cfg = np.load(args.inputs)
    w_std, b_std, depth = float(cfg["weight_std"]), float(cfg["bias_std"]), int(cfg["depth"])
    impls = {"structured": nt.NtkImplementation.STRUCTURED_DERIVATIVES,
             "jacobian": nt.NtkImplementation.JACOBIAN_CONTRACTION}
    res = {"devices": str(jax.devices()), "versions": f"neural-tangents {nt.__version__}, "
                                                      f"jax {jax.__version__}"}

    x = jax.numpy.asarray(cfg["cnn_x"], dtype=jax.numpy.float32)
    init_fn, apply_fn, kernel_fn = cnn(int(cfg["cnn_width"]), depth, w_std, b_std)
    kfn = jax.jit(kernel_fn, static_argnames="get")
    res["cnn_analytic_s"] = best_time(lambda: kfn(x, None, "ntk"), args.repeats)
    res["cnn_analytic_ntk"] = np.asarray(kfn(x, None, "ntk"))
    for name, impl in impls.items():
        res[f"cnn_empirical_{name}_s"] = empirical(apply_fn, init_fn, x, impl, args.repeats)

    x = jax.numpy.asarray(cfg["mlp_x"], dtype=jax.numpy.float32)
    init_fn, apply_fn, _ = mlp(int(cfg["mlp_width"]), depth, w_std, b_std)
    for name, impl in impls.items():
        res[f"mlp_empirical_{name}_s"] = empirical(apply_fn, init_fn, x, impl, args.repeats)

    x = jax.numpy.asarray(cfg["tf_x"], dtype=jax.numpy.float32)
    init_fn, apply_fn, kernel_fn = transformer(int(cfg["tf_width"]), depth, int(cfg["tf_heads"]),
                                               w_std, b_std)
    for name, impl in impls.items():
        res[f"tf_empirical_{name}_s"] = empirical(apply_fn, init_fn, x, impl, args.repeats)
    res["tf_analytic_ntk"] = np.asarray(jax.jit(kernel_fn, static_argnames="get")(
        x[:int(cfg["tf_limit_n"])], None, "ntk"))
    np.savez(args.out, **res)


if __name__ == "__main__":
    main()
