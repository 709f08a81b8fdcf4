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
from .metrics import KernelDynamics

__all__ = ["kernel_regression", "SingularKernelError"]


class SingularKernelError(UserError):
    """K(X, X) has (numerically) zero eigenvalues and no ridge was asked for."""


def kernel_regression(k_xX: np.ndarray, k_XX: np.ndarray, y: np.ndarray, *,
                      ridge: float = 0.0, f0_x: np.ndarray | None = None,
                      f0_X: np.ndarray | None = None, name: str = "K",
                      eig: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Predictions (M, k) at x from K(x, X) (M, N), K(X, X) (N, N), targets Y (N, k), and
    optionally the model's outputs at initialisation f_0(x) (M, k), f_0(X) (N, k) (default
    zero: the mean over an initial GP): ``KernelDynamics.regression``. ``name`` says which
    kernel in an error; ``eig``: K(X, X)'s ``eigendecompose`` where it is already known."""
    zeros = np.zeros((k_xX.shape[0], y.shape[1]))
    model = KernelDynamics(k_xX, k_XX, zeros if f0_x is None else f0_x,
                           0.0 if f0_X is None else f0_X, y, eig=eig)
    pred = model.regression(ridge)
    if pred is None:
        lam = model.lam
        raise SingularKernelError(
            f"{name} on the {len(lam)} training points is singular (smallest eigenvalue "
            f"{lam.min():.3g}, largest {lam.max():.3g}): kernel regression without a ridge "
            "has no unique solution; set ridge (e.g. ridge: 1e-6, relative to the mean "
            "eigenvalue)")
    return pred
