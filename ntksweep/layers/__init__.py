"""A layer algebra: each layer defined once with its finite torch module and its
infinite-width limit (``core``), composed by ``serial`` and ``residual``.

    from ntksweep import layers as nl

    net = nl.serial(nl.Conv(256), nl.Activation("relu"), nl.AvgPool(2),
                    nl.Conv(256), nl.Activation("relu"), nl.GlobalAvgPool(), nl.Dense(10))
    model = net.module((3, 8, 8), seed=0)      # torch.nn.Module: (N, 3, 8, 8) → (N, 10)
    k = net.kernels(x)                         # Θ_∞, Σ: float64 (n, n), per logit

Shapes exclude the batch and put channels first: vectors (C,), images (C, H, W),
sequences (C, T). ``mlp``, ``cnn``, ``resnet``, ``myrtle`` and ``transformer`` are
registered compositions (``presets``).
"""

from .affine import Conv, Dense
from .attention import SelfAttention
from .core import Layer, Residual, Serial, residual, serial
from .elementwise import Activation, LayerNorm
from .pooling import AvgPool, Flatten, GlobalAvgPool
from .presets import PRESETS, cnn, mlp, myrtle, preset, resnet, transformer

__all__ = ["Layer", "Serial", "Residual", "serial", "residual", "Dense", "Conv", "Activation",
           "LayerNorm", "Flatten", "GlobalAvgPool", "AvgPool", "SelfAttention", "PRESETS",
           "preset", "mlp", "cnn", "resnet", "myrtle", "transformer"]
