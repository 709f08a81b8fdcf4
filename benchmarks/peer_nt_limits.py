"""The neural-tangents side of ``bench_gram_peer.py``: run by the Python of a separate
benchmark venv (neural-tangents 0.6.5, jax 0.4.23 — see bench_peer.py), never imported by
ntksweep.

    PEER_PYTHON peer_nt_limits.py INPUTS.npz OUT.npz [--x64]

Reads images ``x1`` (n1, H, W, C) and ``x2`` (n2, H, W, C) and the networks' scales, jits
each network's analytic kernel_fn on the block x1 × x2 (NTK and NNGP together, as a
dataset-scale job needs both), writes the NTK it computed and then times one case per
request (``peer_neural_tangents.serve``). ``--x64``: in float64 (jax's x64 mode).
"""

import argparse

import jax
import numpy as np


def networks(w_std: float, b_std: float) -> dict:
    """ntksweep's presets in stax (the limit does not read the widths): the depth-4 CNN with
    global average pooling and with a flatten readout, and Myrtle-5."""
    from neural_tangents import stax

    def conv():
        return [stax.Conv(1, (3, 3), padding="SAME", W_std=w_std, b_std=b_std), stax.Relu()]

    def pool():
        return [stax.AvgPool((2, 2), strides=(2, 2), padding="VALID")]

    dense = stax.Dense(1, W_std=w_std, b_std=b_std)
    return {"cntk4_gap": stax.serial(*conv() * 3, stax.GlobalAvgPool(), dense),
            "cntk4_flatten": stax.serial(*conv() * 3, stax.Flatten(), dense),
            "myrtle5": stax.serial(*conv() * 2, *pool(), *conv(), *pool(), *conv(),
                                   stax.GlobalAvgPool(), dense)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("inputs")
    p.add_argument("out")
    p.add_argument("--x64", action="store_true")
    args = p.parse_args()
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    from peer_neural_tangents import serve  # this directory, the same venv; after x64 is set

    cfg = np.load(args.inputs)
    dtype = jax.numpy.float64 if args.x64 else jax.numpy.float32
    x1, x2 = (jax.numpy.asarray(cfg[k], dtype=dtype) for k in ("x1", "x2"))
    timed, outputs = {}, {}
    for name, (_, _, kernel_fn) in networks(float(cfg["weight_std"]),
                                            float(cfg["bias_std"])).items():
        if name not in str(cfg["cases"]).split(","):
            continue
        kfn = jax.jit(kernel_fn, static_argnames="get")
        timed[name] = lambda f=kfn: f(x1, x2, ("ntk", "nngp"))
        outputs[f"{name}_ntk"] = np.asarray(kfn(x1, x2, "ntk"))
    serve(timed, outputs, args.out)


if __name__ == "__main__":
    main()
