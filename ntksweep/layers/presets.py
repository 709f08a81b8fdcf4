"""Networks as compositions of ``ntksweep.layers``, registered by name: the MLP, CNN and
ResNet of ``ntksweep.models`` (the same weights from the same seed, the same limits),
Myrtle nets (Shankar et al. 2020, "Neural kernels without tangents") and pre-norm
transformers (Hron et al. 2020's attention limit). Depth L counts the
weight tensors everywhere."""

from __future__ import annotations

from collections.abc import Callable

from ..activations import LEAKY_RELU_SLOPE
from ..choices import ARCHITECTURES, BIAS_STD, MYRTLE_STAGES, check_implemented
from ..errors import SpecError
from .affine import Conv, Dense
from .attention import SelfAttention
from .core import Layer, residual, serial
from .elementwise import Activation, LayerNorm
from .pooling import AvgPool, Flatten, GlobalAvgPool

__all__ = ["mlp", "cnn", "resnet", "myrtle", "transformer", "PRESETS", "preset"]



def _act(activation: str, leaky_relu_slope: float, quadrature: bool | None) -> Activation:
    return Activation(activation, leaky_relu_slope=leaky_relu_slope, quadrature=quadrature)


def mlp(width: int, depth: int, out_dim: int = 1, *, activation: str = "relu",
        weight_std: float = 1.0, bias_std: float = BIAS_STD,
        leaky_relu_slope: float = LEAKY_RELU_SLOPE, quadrature: bool | None = None) -> Layer:
    """[Dense(width), φ] × (L − 1), Dense(out_dim): ``models.MLP``."""
    w = dict(weight_std=weight_std, bias_std=bias_std)
    act = _act(activation, leaky_relu_slope, quadrature)
    hidden = [serial(Dense(width, **w), act) for _ in range(depth - 1)]
    return serial(*hidden, Dense(out_dim, **w))


def cnn(width: int, depth: int, out_dim: int = 1, *, kernel_size: int = 3,
        padding: str = "same", readout: str = "gap", activation: str = "relu",
        weight_std: float = 1.0, bias_std: float = BIAS_STD,
        leaky_relu_slope: float = LEAKY_RELU_SLOPE, quadrature: bool | None = None) -> Layer:
    """[Conv(width), φ] × (L − 1), Flatten or GlobalAvgPool, Dense(out_dim): ``models.CNN``."""
    w = dict(weight_std=weight_std, bias_std=bias_std)
    act = _act(activation, leaky_relu_slope, quadrature)
    convs = [serial(Conv(width, kernel_size, padding, **w), act) for _ in range(depth - 1)]
    pool = Flatten() if readout == "flatten" else GlobalAvgPool()
    return serial(*convs, pool, Dense(out_dim, **w))


def resnet(width: int, depth: int, out_dim: int = 1, *, kernel_size: int = 3,
           activation: str = "relu", weight_std: float = 1.0, bias_std: float = BIAS_STD,
           leaky_relu_slope: float = LEAKY_RELU_SLOPE, quadrature: bool | None = None) -> Layer:
    """Conv(width), [z + Conv(width)(φ(z))] × (L − 2), φ, GlobalAvgPool, Dense(out_dim):
    ``models.ResNet``."""
    w = dict(weight_std=weight_std, bias_std=bias_std)
    act = _act(activation, leaky_relu_slope, quadrature)
    blocks = [residual(act, Conv(width, kernel_size, "same", **w)) for _ in range(depth - 2)]
    return serial(Conv(width, kernel_size, "same", **w), *blocks, act, GlobalAvgPool(),
                  Dense(out_dim, **w))


def myrtle(width: int, depth: int, out_dim: int = 1, *, activation: str = "relu",
           weight_std: float = 1.0, bias_std: float = BIAS_STD,
           leaky_relu_slope: float = LEAKY_RELU_SLOPE, quadrature: bool | None = None) -> Layer:
    """Myrtle-L: [Conv 3×3 same, φ] × a, AvgPool(2), [Conv, φ] × b, AvgPool(2), [Conv, φ] × c,
    GlobalAvgPool, Dense(out_dim), with (a, b, c) = ``MYRTLE_STAGES[L]``."""
    if depth not in MYRTLE_STAGES:
        raise SpecError(f"myrtle depth must be one of {', '.join(map(str, MYRTLE_STAGES))}; "
                        f"got {depth!r}")
    w = dict(weight_std=weight_std, bias_std=bias_std)
    act = _act(activation, leaky_relu_slope, quadrature)

    def stage(n: int) -> list[Layer]:
        return [serial(Conv(width, 3, "same", **w), act) for _ in range(n)]

    a, b, c = MYRTLE_STAGES[depth]
    return serial(*stage(a), AvgPool(2), *stage(b), AvgPool(2), *stage(c), GlobalAvgPool(),
                  Dense(out_dim, **w))


def transformer(width: int, depth: int, out_dim: int = 1, *, heads: int = 4,
                attention: str = "softmax", attention_scaling: str = "linear",
                query_key_std: float = 1.0, activation: str = "relu",
                weight_std: float = 1.0, bias_std: float = BIAS_STD,
                leaky_relu_slope: float = LEAKY_RELU_SLOPE,
                quadrature: bool | None = None) -> Layer:
    """Sequences (d, T) (channels first): a token embedding Dense(width), L − 2 pre-norm
    blocks z ← z + Attn(LN(z)); z ← z + Dense(width)(φ(Dense(width)(LN(z)))), then LN, the
    mean over tokens and Dense(out_dim)."""
    if depth < 3:
        raise SpecError(f"a transformer has depth >= 3 (an embedding, a block, a readout); "
                        f"got {depth!r}")
    w = dict(weight_std=weight_std, bias_std=bias_std)
    act = _act(activation, leaky_relu_slope, quadrature)
    attend = SelfAttention(width, heads, scaling=attention_scaling, mechanism=attention,
                           query_key_std=query_key_std, **w)
    blocks = [serial(residual(LayerNorm(), attend),
                     residual(LayerNorm(), Dense(width, **w), act, Dense(width, **w)))
              for _ in range(depth - 2)]
    return serial(Dense(width, **w), *blocks, LayerNorm(), GlobalAvgPool(),
                  Dense(out_dim, **w))


PRESETS: dict[str, Callable[..., Layer]] = {"mlp": mlp, "cnn": cnn, "resnet": resnet,
                                            "myrtle": myrtle, "transformer": transformer}
check_implemented("architectures", ARCHITECTURES, PRESETS)


def preset(name: str, **kwargs) -> Layer:
    """The registered network ``name`` built from ``kwargs`` (width, depth, out_dim, …)."""
    if name not in PRESETS:
        raise SpecError(f"unknown architecture {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name](**kwargs)
