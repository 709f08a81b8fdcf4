"""Comparing kernels, and the infinite-width (kernel gradient flow) prediction.

All functions take numpy float arrays and return numpy/float; kernels are (N, N)
per-logit matrices unless stated.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rel_frobenius", "alignment", "top_eigenvalues", "kernel_flow_prediction"]


def rel_frobenius(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖_F / ‖b‖_F (DESIGN.md: dist_inf with b = Θ_∞, dist_init with b = Θ_0)."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def alignment(a: np.ndarray, b: np.ndarray) -> float:
    """Kernel alignment ⟨a, b⟩_F / (‖a‖_F ‖b‖_F) ∈ [−1, 1] (Cristianini et al. 2002;
    the "kernel velocity" cosine of Fort et al. 2020 is 1 − this)."""
    return float(np.vdot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def top_eigenvalues(k: np.ndarray, m: int = 3) -> np.ndarray:
    """The m largest eigenvalues of the symmetric part of k, descending (m,)."""
    eig = np.linalg.eigvalsh(0.5 * (k + k.T))
    return eig[::-1][:m]


def kernel_flow_prediction(
    theta_xX: np.ndarray,
    theta_XX: np.ndarray,
    f0_x: np.ndarray,
    f0_X: np.ndarray,
    y: np.ndarray,
    t: float | np.ndarray,
    *,
    n_train: int | None = None,
) -> np.ndarray:
    """Outputs at x after time t of gradient flow on C(f) = (1/N) Σ ‖f(x_i) − y_i‖² with a
    constant kernel Θ (Jacot et al. 2018, §5; Lee et al. 2019 with Θ = Θ_0):

        df(x)/dt = −(2/N) Θ(x, X) (f(X) − Y)
        ⇒ f_t(x) = f_0(x) + Θ(x, X) Θ(X, X)⁻¹ (I − e^{−(2/N) t Θ(X, X)}) (Y − f_0(X)).

    Shapes: theta_xX (M, N), theta_XX (N, N), f0_x (M, k), f0_X (N, k), y (N, k) — the
    per-logit kernel acting on each output column (Θ ⊗ I_k) — or with a full
    (M, N, k, k) / (N, N, k, k) kernel, flattened to (M k, N k). Returns (M, k), or
    (T, M, k) for a vector of times. Uses Θ(X,X) = V Λ Vᵀ and (1 − e^{−2tλ/N})/λ written
    with expm1 (→ 2t/N as λ → 0) so singular kernels are fine.
    """
    n, k = y.shape
    if theta_XX.ndim == 4:  # rows (i, a), columns (j, b); the cost still averages over N
        m = theta_xX.shape[0]
        flat = kernel_flow_prediction(
            theta_xX.transpose(0, 2, 1, 3).reshape(m * k, n * k),
            theta_XX.transpose(0, 2, 1, 3).reshape(n * k, n * k),
            f0_x.reshape(-1, 1), f0_X.reshape(-1, 1), y.reshape(-1, 1), t, n_train=n)
        return flat.reshape(*flat.shape[:-2], m, k)
    lam, v = np.linalg.eigh(0.5 * (theta_XX + theta_XX.T))
    lam = np.clip(lam, 0.0, None)
    times = np.atleast_1d(np.asarray(t, dtype=np.float64))
    rate = 2.0 * times[:, None] / (n_train or n)                                    # (T, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(lam > 1e-12 * max(lam.max(), 1e-300),
                        -np.expm1(-rate * lam) / np.where(lam > 0, lam, 1.0), rate)  # (T, N)
    residual = v.T @ (y - f0_X)                                         # (N, k) in eigenbasis
    out = f0_x + np.einsum("mn,tn,nk->tmk", theta_xX @ v, gain, residual)
    return out if np.ndim(t) else out[0]
