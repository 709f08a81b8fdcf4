"""Kernels: analytic infinite-width limits, empirical NTKs, tiling, comparison metrics.

Pure maths: no Ray, MLflow or Parquet imports here.
"""

from .analytic import AnalyticKernels, analytic_kernels
from .empirical import empirical_ntk
from .tiling import SerialExecutor, Tile, TileComputation, TileExecutor

__all__ = ["AnalyticKernels", "SerialExecutor", "Tile", "TileComputation", "TileExecutor",
           "analytic_kernels", "empirical_ntk"]
