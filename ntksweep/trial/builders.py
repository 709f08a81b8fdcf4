"""The one place that maps a trial spec to objects: its data set, its network and its
infinite-width limit (and the device it runs on), and the per-process cache a long-lived
worker keeps of the data and the limits, keyed by everything they depend on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..architectures import REGISTRY, Network, input_kind
from ..data import Dataset, make_dataset
from ..errors import SpecError
from ..kernels import AnalyticKernels
from ..layers.network import LIMIT_PARAMETRIZATIONS
from ..memory import network_input_shape
from ..trial_spec import TrialSpec
from . import custom

__all__ = ["TrialCache", "resolve_device", "dataset_for", "limit_kernels", "data_key",
           "limit_key", "cached_data", "cached_limits", "cached_test_limits", "inputs",
           "build_model", "kernel_flow", "has_limit", "patches",
           "cache_shared_limit"]


class TrialCache:
    """Per-process caches (a long-lived actor keeps one): data sets and analytic kernels,
    keyed by everything they depend on."""

    def __init__(self, max_items: int = 64):
        self._items: dict[tuple, Any] = {}
        self.max_items = max_items

    def get(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key in self._items:
            return self._items[key]
        if len(self._items) >= self.max_items:
            self._items.pop(next(iter(self._items)))
        value = self._items[key] = make()
        return value


def resolve_device(device: str) -> str:
    """'auto' → cuda where this process sees a GPU, else cpu; a named device must exist
    (``SpecError`` otherwise)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= n:
            raise SpecError(f"device {device!r} requested but this process sees {n} CUDA "
                            "GPU(s); use device: auto or cpu")
    return device


def dataset_for(spec: TrialSpec) -> Dataset:
    """The trial's data set, rebuilt deterministically from its spec."""
    return make_dataset(spec.dataset, **spec.data_args())


def has_limit(spec: TrialSpec, out_dim: int) -> bool:
    """Whether the trial's network has an infinite-width limit to compare with: not
    attention with 1/√d scaling, whose logits stay random (``layers.attention``), nor a
    user's plain torch module (a user's composition has one, in ``LIMIT_PARAMETRIZATIONS``)."""
    if custom.is_custom(spec.architecture):
        net = custom.composition(spec, out_dim)
        return spec.parametrization in LIMIT_PARAMETRIZATIONS and net is not None and \
            net.has_limit
    return Network.of(spec, out_dim).has_limit


def limit_kernels(spec: TrialSpec, x1: np.ndarray, x2: np.ndarray | None = None,
                  device: str = "cpu", out_dim: int = 1, dtype: str = "float64"
                  ) -> AnalyticKernels:
    """Θ_∞ and Σ^(L) of the trial's own architecture (its parametrization and, for the
    standard one, its width) on inputs as the net reads them (``inputs``): what every
    comparison with the limit uses, in trials and in figures alike. A conv net's limit runs
    on ``device`` (a GPU, where the trial has one), in ``dtype`` (float64 for every
    comparison; a kernel job may ask for float32)."""
    if custom.is_custom(spec.architecture):
        limit = custom.composition(spec, out_dim).kernels(
            x1, x2, parametrization=spec.parametrization, device=device, dtype=dtype)
        return replace(limit, depth=spec.depth)
    return Network.of(spec, out_dim).limit(x1, x2, device=device, dtype=dtype)


def data_key(spec: TrialSpec) -> tuple:
    """Everything a trial's data set depends on: its name and ``make_dataset``'s arguments."""
    return (spec.dataset, *spec.data_args().values())


def cached_data(spec: TrialSpec, cache: TrialCache) -> Dataset:
    return cache.get(("data", *data_key(spec)), lambda: dataset_for(spec))


def cached_limits(spec: TrialSpec, data: Dataset, cache: TrialCache, device: str
            ) -> AnalyticKernels | None:
    """Θ_∞ and Σ^(L) on [eval; train] (M+N, M+N), computed once per data × architecture;
    None where the network has no limit (``has_limit``)."""
    out_dim = data.out_dim
    if not has_limit(spec, out_dim):
        return None
    key = ("limit", *limit_key(spec))
    x = inputs(spec, data, np.concatenate([data.x_eval, data.x_train]))
    return cache.get(key, lambda: limit_kernels(spec, x, device=device, out_dim=out_dim))


def cached_test_limits(spec: TrialSpec, data: Dataset, cache: TrialCache, device: str
                 ) -> AnalyticKernels | None:
    """Θ_∞ and Σ^(L) between the test and the training set (T, N), once per data × limit;
    None without a limit."""
    out_dim = data.out_dim
    if not has_limit(spec, out_dim):
        return None
    key = ("limit_test", *limit_key(spec))
    return cache.get(key, lambda: limit_kernels(spec, inputs(spec, data, data.x_test),
                                                inputs(spec, data, data.x_train), device,
                                                out_dim))


def cache_shared_limit(spec: TrialSpec, cache: TrialCache,
                       kernels: dict[str, np.ndarray]) -> None:
    """Hand the worker's cache a limit the sweep computed once for every trial that reads it
    (``sweep.limits``: ``ntk``, ``nngp`` on [eval; train], ``test_ntk``, ``test_nngp`` on test
    × [eval; train]), under the keys ``cached_limits`` and ``cached_test_limits`` look up —
    once per worker: a worker that holds it already copies nothing (copies: Ray hands
    arrays over read-only)."""
    about = dict(depth=spec.depth, activation=spec.activation, weight_std=spec.weight_std,
                 bias_std=spec.bias_std, parametrization=spec.parametrization)
    m, key = spec.n_eval, limit_key(spec)
    cache.get(("limit", *key), lambda: AnalyticKernels(
        np.array(kernels["ntk"]), np.array(kernels["nngp"]), **about))
    if "test_ntk" in kernels:
        cache.get(("limit_test", *key), lambda: AnalyticKernels(
            np.array(kernels["test_ntk"][:, m:]), np.array(kernels["test_nngp"][:, m:]),
            **about))


def patches(images: np.ndarray, p: int) -> np.ndarray:
    """Images (n, C, H, W) as sequences of their non-overlapping p×p patches, channels
    first: (n, C·p², (H/p)(W/p)), the patches in row-major order (a ViT's tokens)."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // p, p, w // p, p).transpose(0, 1, 3, 5, 2, 4)
    return np.ascontiguousarray(x.reshape(n, c * p * p, (h // p) * (w // p)))


def inputs(spec: TrialSpec, data: Dataset, x: np.ndarray) -> np.ndarray:
    """Rows of the data set as the network reads them, channels first: vectors (n, d) for an
    MLP, sequences (n, d, T) for a transformer (an image's patches: ``patches``), images
    (n, C, H, W) for the others; a user's network reads the data's own shape."""
    kind = input_kind(spec.architecture, data.shape)
    if kind == "vectors":
        return x
    if kind == "images":
        return data.images(x)
    if kind == "patches":
        return patches(data.images(x), spec.patch)
    return np.ascontiguousarray(np.swapaxes(data.sequences(x), 1, 2))


def build_model(spec: TrialSpec, data: Dataset, out_dim: int, dtype: torch.dtype,
                device: str) -> torch.nn.Module:
    """The trial's network, seeded by ``spec.seed`` (an ensemble's: its member 0,
    ``TrialSpec.member``)."""
    spec = spec.member(0)
    in_shape = network_input_shape(spec.architecture, data.shape, spec.patch)
    if not custom.is_custom(spec.architecture):
        return Network.of(spec, out_dim).module(in_shape, seed=spec.seed, dtype=dtype,
                                                device=device)
    if (net := custom.composition(spec, out_dim)) is not None:
        return net.module(in_shape, seed=spec.seed, dtype=dtype, device=device,
                          parametrization=spec.parametrization)
    return custom.make(spec, out_dim).to(dtype=dtype, device=device)   # a plain module


def limit_key(spec: TrialSpec) -> tuple:
    """Everything a trial's limit kernels on its data depend on: the data, how the network
    reads it (a transformer's patch size on images) and the limit's fields — for a user's
    function, also every other trial field it names but the seed (which draws weights, and
    the limit reads none)."""
    known = REGISTRY.get(spec.architecture)
    reads = (spec.patch,) if known is not None and known.reads == "sequences" else ()
    named = custom.named_fields(spec) if custom.is_custom(spec.architecture) else ()
    return (*data_key(spec), *reads, *spec.kernel_args().values(), *named)


def kernel_flow(spec: TrialSpec) -> bool:
    """Whether the trial trains by a kernel flow its linear models can follow: MSE by
    gradient descent (Adam's steps are not one)."""
    return spec.loss == "mse" and spec.optimizer != "adam"
