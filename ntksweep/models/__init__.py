"""The finite networks: ``MLP``, ``CNN`` and ``ResNet``, their layers carrying the forward
multipliers that the structured empirical NTK reads."""

from ..choices import PADDINGS, READOUTS
from .convnets import CNN, ResNet
from .layers import Conv, Dense
from .mlp import MLP

__all__ = ["MLP", "CNN", "ResNet", "Dense", "Conv", "PADDINGS", "READOUTS"]
