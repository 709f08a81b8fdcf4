"""Kernel regression: the t → ∞ end of gradient flow with a constant kernel, and the
baselines a trained network is compared with on held-out data.

With the MSE flow of ``metrics.KernelDynamics``, f_t(x) → f_0(x) + K(x, X) K(X, X)⁻¹ (Y − f_0(X))
as t → ∞ wherever K(X, X) is invertible. A ridge λ = ``ridge`` · tr K(X, X) / N (relative to
the mean eigenvalue, so one value suits kernels of any scale) gives

    f(x) = f_0(x) + K(x, X) (K(X, X) + λ I)⁻¹ (Y − f_0(X)),

the posterior mean of GP regression with noise variance λ when K is the prior covariance
(Rasmussen & Williams 2006, eq. 2.25; Lee et al. 2019 for Θ_∞ and Σ).
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from .metrics import eigendecompose, flat_kernel, small_eigenvalues

__all__ = ["kernel_regression", "regression_weights", "SingularKernelError"]


class SingularKernelError(UserError):
    """K(X, X) has (numerically) zero eigenvalues and no ridge was asked for."""


def regression_weights(k_XX: np.ndarray, y: np.ndarray, *, ridge: float = 0.0,
                       f0_X: np.ndarray | None = None, name: str = "K",
                       eig: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """α (N, k) with f(x) = f_0(x) + K(x, X) α the regression's prediction anywhere:
    α = (K(X, X) + λI)⁻¹ (Y − f_0(X)), λ = ``ridge`` times the mean eigenvalue. K(X, X) is
    (N, N) (one kernel per output column) or a full k-output (N, N, k, k); ``eig`` its
    ``eigendecompose`` (of the flat (N k, N k) matrix for a full one). A singular K(X, X)
    without a ridge raises ``SingularKernelError``, naming the kernel (``name``)."""
    residual = y - (0.0 if f0_X is None else f0_X)
    lam, v = eig if eig is not None else eigendecompose(
        k_XX if k_XX.ndim == 2 else flat_kernel(k_XX))
    lam = lam + ridge * max(float(lam.mean()), 1e-300)
    if small_eigenvalues(lam).any():
        raise SingularKernelError(
            f"{name} on the {k_XX.shape[0]} training points is singular (smallest eigenvalue "
            f"{lam.min():.3g}, largest {lam.max():.3g}): kernel regression without a ridge "
            "has no unique solution; set ridge (e.g. ridge: 1e-6, relative to the mean "
            "eigenvalue)")
    flat = residual.reshape(len(lam), -1)                       # (N k, 1) for a full kernel
    return (v @ ((v.T @ flat) / lam[:, None])).reshape(residual.shape)


def kernel_regression(k_xX: np.ndarray, k_XX: np.ndarray, y: np.ndarray, *,
                      ridge: float = 0.0, f0_x: np.ndarray | None = None,
                      f0_X: np.ndarray | None = None, name: str = "K",
                      eig: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Predictions (M, k) at x from K(x, X) (M, N), K(X, X) (N, N) — or full k-output
    kernels (M, N, k, k), (N, N, k, k) — targets Y (N, k), and optionally the model's outputs
    at initialisation f_0(x) (M, k), f_0(X) (N, k) (default zero: the mean over an initial
    GP): ``regression_weights``, then f_0(x) + K(x, X) α."""
    alpha = regression_weights(k_XX, y, ridge=ridge, f0_X=f0_X, name=name, eig=eig)
    f0 = 0.0 if f0_x is None else f0_x
    if k_xX.ndim == 2:
        return f0 + k_xX @ alpha
    return f0 + (flat_kernel(k_xX) @ alpha.reshape(-1, 1)).reshape(k_xX.shape[0], -1)
