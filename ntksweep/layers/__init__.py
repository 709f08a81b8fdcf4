"""A layer algebra: each layer defined once with its finite torch module and its
infinite-width limit (``core``), composed by ``serial`` and ``residual``.

    from ntksweep import layers as nl

    net = nl.serial(nl.Conv(256), nl.Activation("relu"), nl.AvgPool(2),
                    nl.Conv(256), nl.Activation("relu"), nl.GlobalAvgPool(), nl.Dense(10))
    model = net.module((3, 8, 8), seed=0)      # torch.nn.Module: (N, 3, 8, 8) → (N, 10)
    k = net.kernels(x)                         # Θ_∞, Σ: float64 (n, n), per logit

Shapes exclude the batch: vectors (C,), images (C, H, W). ``mlp``, ``cnn``, ``resnet`` and
``myrtle`` are registered compositions (``presets``).
"""

from .affine import Conv, Dense
from .core import Layer, Residual, Serial, residual, serial
from .elementwise import Activation, LayerNorm
from .pooling import AvgPool, Flatten, GlobalAvgPool
from .presets import PRESETS, cnn, mlp, myrtle, preset, resnet

__all__ = ["Layer", "Serial", "Residual", "serial", "residual", "Dense", "Conv", "Activation",
           "LayerNorm", "Flatten", "GlobalAvgPool", "AvgPool", "PRESETS", "preset", "mlp",
           "cnn", "resnet", "myrtle"]
