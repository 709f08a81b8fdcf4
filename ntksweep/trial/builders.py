"""The one place that maps a trial spec to objects: its data set, its network and its
infinite-width limit (and the device it runs on), and the per-process cache a long-lived
worker keeps of the data and the limits, keyed by everything they depend on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..data import Dataset, make_dataset
from ..errors import SpecError
from ..kernels import AnalyticKernels
from ..layers import Layer, preset
from ..layers.network import LIMIT_PARAMETRIZATIONS
from ..layers.registry import FUSED, analytic_kernels
from ..memory import network_input_shape
from ..models import CNN, MLP, ResNet
from ..trial_spec import TrialSpec
from . import custom

__all__ = ["TrialCache", "resolve_device", "dataset_for", "limit_kernels", "data_key",
           "limit_key", "cached_data", "cached_limits", "cached_test_limits", "inputs",
           "build_model", "kernel_flow", "has_limit", "out_dim_of", "patches", "composition_of"]


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


def out_dim_of(spec: TrialSpec, data: Dataset) -> int:
    """The network's outputs: the targets', or the 10 classes' logits for cross-entropy."""
    return 10 if spec.loss == "cross_entropy" else data.out_dim


def has_limit(spec: TrialSpec, out_dim: int) -> bool:
    """Whether the trial's network has an infinite-width limit to compare with: not
    attention with 1/√d scaling, whose logits stay random (``layers.attention``), nor a
    user's plain torch module (a user's composition has one, in ``LIMIT_PARAMETRIZATIONS``)."""
    if custom.is_custom(spec.architecture):
        return spec.parametrization in LIMIT_PARAMETRIZATIONS and \
            custom.composition(spec, out_dim) is not None
    return not (spec.architecture == "transformer" and spec.attention_scaling == "sqrt")


def limit_kernels(spec: TrialSpec, x1: np.ndarray, x2: np.ndarray | None = None,
                  device: str = "cpu", out_dim: int = 1) -> AnalyticKernels:
    """Θ_∞ and Σ^(L) of the trial's own architecture (its parametrization and, for the
    standard one, its width) on inputs as the net reads them (``inputs``): what every
    comparison with the limit uses, in trials and in figures alike. A conv net's limit runs
    on ``device`` (a GPU, where the trial has one)."""
    if (net := composition_of(spec, out_dim)) is not None:   # reads them as the net does
        limit = net.kernels(x1, x2, parametrization=spec.parametrization, device=device)
        return replace(limit, depth=spec.depth)
    where = {"device": device} if spec.architecture != "mlp" else {}
    return analytic_kernels(x1, x2, **spec.kernel_args(), **where)


def composition_of(spec: TrialSpec, out_dim: int) -> Layer | None:
    """The trial's network as an ``ntksweep.layers`` composition — a registered preset, or
    a user's — or None: the mlp, cnn and resnet build through ``models`` and have fused
    limits, and a user's plain torch module has no composition."""
    if custom.is_custom(spec.architecture):
        return custom.composition(spec, out_dim)
    if spec.architecture in FUSED:
        return None
    return preset(spec.architecture, width=spec.width, depth=spec.depth, out_dim=out_dim,
                  activation=spec.activation, weight_std=spec.weight_std,
                  bias_std=spec.bias_std, leaky_relu_slope=spec.leaky_relu_slope,
                  **dict(spec.network_options()))


def data_key(spec: TrialSpec) -> tuple:
    """Everything a trial's data set depends on: its name and ``make_dataset``'s arguments."""
    return (spec.dataset, *spec.data_args().values())


def cached_data(spec: TrialSpec, cache: TrialCache) -> Dataset:
    return cache.get(("data", *data_key(spec)), lambda: dataset_for(spec))


def cached_limits(spec: TrialSpec, data: Dataset, cache: TrialCache, device: str
            ) -> AnalyticKernels | None:
    """Θ_∞ and Σ^(L) on [eval; train] (M+N, M+N), computed once per data × architecture;
    None where the network has no limit (``has_limit``)."""
    out_dim = out_dim_of(spec, data)
    if not has_limit(spec, out_dim):
        return None
    key = ("limit", *data_key(spec), *spec.kernel_args().values())
    x = inputs(spec, data, np.concatenate([data.x_eval, data.x_train]))
    return cache.get(key, lambda: limit_kernels(spec, x, device=device, out_dim=out_dim))


def cached_test_limits(spec: TrialSpec, data: Dataset, cache: TrialCache, device: str
                 ) -> AnalyticKernels | None:
    """Θ_∞ and Σ^(L) between the test and the training set (T, N), once per data × limit;
    None without a limit."""
    out_dim = out_dim_of(spec, data)
    if not has_limit(spec, out_dim):
        return None
    key = ("limit_test", *data_key(spec), *spec.kernel_args().values())
    return cache.get(key, lambda: limit_kernels(spec, inputs(spec, data, data.x_test),
                                                inputs(spec, data, data.x_train), device,
                                                out_dim))


def patches(images: np.ndarray, p: int) -> np.ndarray:
    """Images (n, C, H, W) as sequences of their non-overlapping p×p patches, channels
    first: (n, C·p², (H/p)(W/p)), the patches in row-major order (a ViT's tokens)."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // p, p, w // p, p).transpose(0, 1, 3, 5, 2, 4)
    return np.ascontiguousarray(x.reshape(n, c * p * p, (h // p) * (w // p)))


def inputs(spec: TrialSpec, data: Dataset, x: np.ndarray) -> np.ndarray:
    """Rows of the data set as the network reads them, channels first: vectors (n, d) for an
    MLP, sequences (n, d, T) for a transformer (an image's patches: ``patches``), images
    (n, C, H, W) for the others."""
    if spec.architecture == "mlp":
        return x
    if custom.is_custom(spec.architecture):      # the data's own shape, channels first
        if data.image_shape is not None:
            return data.images(x)
        if data.sequence_shape is None:
            return x
    if spec.architecture == "transformer" and data.sequence_shape is None:
        return patches(data.images(x), spec.patch)
    if spec.architecture == "transformer" or custom.is_custom(spec.architecture):
        return np.ascontiguousarray(np.swapaxes(data.sequences(x), 1, 2))
    return data.images(x)


def build_model(spec: TrialSpec, data: Dataset, out_dim: int, dtype: torch.dtype,
                device: str) -> torch.nn.Module:
    """The trial's network, seeded by ``spec.seed``."""
    common = dict(activation=spec.activation, weight_std=spec.weight_std,
                  bias_std=spec.bias_std, out_dim=out_dim,
                  parametrization=spec.parametrization,
                  leaky_relu_slope=spec.leaky_relu_slope, seed=spec.seed, dtype=dtype,
                  device=device)
    if spec.architecture == "mlp":
        return MLP(data.in_dim, spec.width, spec.depth, **common)
    if (net := composition_of(spec, out_dim)) is not None:
        return net.module(network_input_shape(spec.architecture, data.shape, spec.patch),
                          seed=spec.seed, dtype=dtype, device=device,
                          parametrization=spec.parametrization)
    if custom.is_custom(spec.architecture):     # the user's plain torch module
        return custom.make(spec, out_dim).to(dtype=dtype, device=device)
    channels, height, width = data.image_shape
    if spec.architecture == "resnet":
        return ResNet(channels, spec.width, spec.depth, kernel_size=spec.kernel_size, **common)
    return CNN(channels, spec.width, spec.depth, kernel_size=spec.kernel_size,
               padding=spec.padding, readout=spec.readout, image_size=(height, width),
               **common)


def limit_key(spec: TrialSpec) -> tuple:
    """Everything a trial's limit kernels on its data depend on: the data and the limit."""
    return (*data_key(spec), *spec.kernel_args().values())


def kernel_flow(spec: TrialSpec) -> bool:
    """Whether the trial trains by a kernel flow its linear models can follow: MSE by
    gradient descent (Adam's steps are not one)."""
    return spec.loss == "mse" and spec.optimizer != "adam"
