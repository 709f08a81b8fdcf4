"""Your own network in a sweep: ``architecture: "package.module:function"``.

The function is called with the trial's ``width``, ``depth`` and ``out_dim`` and with every
other trial field its signature names (``activation``, ``weight_std``, ``heads``, …), and
returns either an ``ntksweep.layers`` composition — which has its limit, so every column is
measured — or any ``torch.nn.Module`` (its empirical NTK, dist_init, velocity, alignment and
test scores; the columns against Θ_∞ and Σ are NaN). Inputs reach it channels first, as
every architecture reads them: vectors (N, d), images (N, C, H, W), sequences (N, d, T).

Importing a module runs its code, and a spec is input: a module is imported only where the
user allowed it, on the command line (``--allow-import package``) or in
``NTKSWEEP_ALLOW_IMPORT`` (comma-separated packages); the check and every mistake (a missing
module, a wrong signature, a network that does not run on the data's shape) is one line
before anything runs.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..consent import ALLOW_IMPORT_ENV, allowed
from ..errors import SpecError
from ..hyper import is_custom_architecture as is_custom
from ..layers import Layer
from ..trial_spec import TRIAL_FIELDS, TrialSpec

__all__ = ["is_custom", "allowed", "factory", "named_fields", "make", "composition", "check",
           "ALLOW_ENV"]

ALLOW_ENV = ALLOW_IMPORT_ENV


def factory(architecture: str) -> Callable:
    """The user's function, imported (``allowed`` checked first)."""
    module_name, _, name = architecture.partition(":")
    package = module_name.split(".")[0]
    if not allowed(architecture):
        raise SpecError(f"architecture {architecture!r} imports and runs {module_name}: allow "
                        f"it with --allow-import {package} (ntksweep run, trial or kernel) or "
                        f"{ALLOW_ENV}={package}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise SpecError(f"architecture {architecture!r}: cannot import {module_name} ({e}); "
                        "install it, or put its directory on PYTHONPATH") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise SpecError(f"architecture {architecture!r}: {module_name} has no function "
                        f"{name!r}")
    return fn


def _arguments(fn: Callable, spec: TrialSpec, out_dim: int) -> dict:
    """width, depth, out_dim and every trial field the function names."""
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    missing = [n for n in ("width", "depth", "out_dim")
               if n not in params and not takes_all]
    if missing:
        raise SpecError(f"architecture {spec.architecture!r}: its function must take width, "
                        f"depth and out_dim; it lacks {', '.join(missing)}")
    args = {"width": spec.width, "depth": spec.depth, "out_dim": out_dim}
    args.update({n: getattr(spec, n) for n in params
                 if n in TRIAL_FIELDS and n not in args and n != "architecture"})
    return args


def named_fields(spec: TrialSpec) -> tuple[tuple[str, object], ...]:
    """The trial fields the user's function names beyond width, depth and out_dim, but the
    seed, as (name, value) pairs: what its network's limit may depend on besides those."""
    args = _arguments(factory(spec.architecture), spec, 1)
    return tuple((n, v) for n, v in sorted(args.items())
                 if n not in ("width", "depth", "out_dim", "seed"))


def make(spec: TrialSpec, out_dim: int) -> Layer | nn.Module:
    """What the user's function returns for this trial, its torch draws seeded by the
    trial's seed (a plain module initialises from torch's global generator)."""
    fn = factory(spec.architecture)
    args = _arguments(fn, spec, out_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        try:
            net = fn(**args)
        except Exception as e:  # noqa: BLE001  (the user's code: say where it failed)
            raise SpecError(f"architecture {spec.architecture!r}: calling it with "
                            f"{sorted(args)} raised {type(e).__name__}: {e}") from None
    if not isinstance(net, (Layer, nn.Module)):
        raise SpecError(f"architecture {spec.architecture!r} returned a "
                        f"{type(net).__name__}: return an ntksweep.layers composition or a "
                        "torch.nn.Module")
    return net


@functools.lru_cache(maxsize=64)
def composition(spec: TrialSpec, out_dim: int) -> Layer | None:
    """The trial's network where it is a composition (frozen: kept, so that asking whether
    it has a limit and computing that limit call the user's function once), else None."""
    net = make(spec, out_dim)
    return net if isinstance(net, Layer) else None


def check(spec: TrialSpec, in_shape: tuple[int, ...], out_dim: int) -> list | None:
    """Build the trial's network and run it on one input of the data's shape: one line for
    whatever does not work. Returns a composition's layer shapes (``Layer.shapes``: what
    its memory is planned from), None for a plain torch module."""
    net = make(spec, out_dim)
    try:
        module = net.module(in_shape, seed=spec.seed) if isinstance(net, Layer) else net
        with torch.no_grad():
            out = module(torch.zeros(1, *in_shape, dtype=next(module.parameters()).dtype))
    except SpecError as e:
        raise SpecError(f"architecture {spec.architecture!r}: {e}") from None
    except Exception as e:  # noqa: BLE001
        raise SpecError(f"architecture {spec.architecture!r} does not run on inputs "
                        f"{(1, *in_shape)} (channels first): {type(e).__name__}: {e}") from None
    if not isinstance(out, torch.Tensor) or out.reshape(1, -1).shape[1] != out_dim:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SpecError(f"architecture {spec.architecture!r} maps one input to {shape}; the "
                        f"data needs {out_dim} output(s) per input (out_dim)")
    if not np.isfinite(out.detach().numpy()).all():
        raise SpecError(f"architecture {spec.architecture!r} gives NaN or inf on zeros")
    return net.shapes(in_shape) if isinstance(net, Layer) else None
