"""Kernels: analytic infinite-width limits, empirical NTKs, tiling, comparison metrics.

Pure maths: no Ray, MLflow or Parquet imports here.
"""

from .analytic import AnalyticKernels, analytic_kernels

__all__ = ["AnalyticKernels", "analytic_kernels"]
