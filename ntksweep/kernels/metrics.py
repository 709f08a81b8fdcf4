"""Comparing kernels, and the infinite-width (kernel gradient flow) prediction.

All functions take numpy float arrays and return numpy/float; kernels are (N, N)
per-logit matrices unless stated.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rel_frobenius", "alignment", "top_eigenvalues", "kernel_flow_prediction",
           "kernel_gd_prediction", "kernel_flow_gaussian"]


def rel_frobenius(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖_F / ‖b‖_F (dist_inf: b = Θ_∞; dist_init: b = Θ_0)."""
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
    v, gain = _flow_gain(theta_XX, np.atleast_1d(np.asarray(t, dtype=np.float64)), n_train or n)
    residual = v.T @ (y - f0_X)                                         # (N, k) in eigenbasis
    out = f0_x + np.einsum("mn,tn,nk->tmk", theta_xX @ v, gain, residual)
    return out if np.ndim(t) else out[0]


def kernel_gd_prediction(
    theta_xX: np.ndarray,
    theta_XX: np.ndarray,
    f0_x: np.ndarray,
    f0_X: np.ndarray,
    y: np.ndarray,
    lr: float,
    steps: int,
) -> np.ndarray:
    """Outputs at x after ``steps`` steps of full-batch gradient descent at step size ``lr`` on
    C(f) = (1/N) Σ ‖f(x_i) − y_i‖² with a constant kernel Θ — the discrete dynamics a
    linearised network trained by GD follows exactly (Lee et al. 2019, §2.2, in discrete
    time):

        f_{s+1}(x) = f_s(x) − (2η/N) Θ(x, X) (f_s(X) − Y)
        ⇒ f_s(X) = Y + (I − (2η/N) Θ(X, X))^s (f_0(X) − Y)
          f_s(x) = f_0(x) + Θ(x, X) Θ(X, X)⁻¹ (I − (I − (2η/N) Θ(X, X))^s) (Y − f_0(X)).

    Shapes as ``kernel_flow_prediction`` (per-logit (M, N) / (N, N) kernels); returns (M, k).
    It tends to the continuous flow at t = η s as η → 0; at the learning rates people train
    with, the two differ by a time-step error that does not shrink with width.
    """
    n = y.shape[0]
    lam, v = np.linalg.eigh(0.5 * (theta_XX + theta_XX.T))
    lam = np.clip(lam, 0.0, None)
    c = 2.0 * lr / n
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # (1 − (1 − cλ)^s)/λ, written through log1p where 1 − cλ > 0 (no cancellation for
        # small cλ); → c s as λ → 0, so singular kernels are fine
        stable = -np.expm1(steps * np.log1p(-np.minimum(c * lam, 1 - 1e-16))) / lam
        direct = (1.0 - np.power(1.0 - c * lam, steps)) / lam
        gain = np.where(c * lam < 1.0, stable, direct)
        gain = np.where(lam > 1e-12 * max(lam.max(), 1e-300), gain, c * steps)
    residual = v.T @ (y - f0_X)
    return f0_x + (theta_xX @ v) @ (gain[:, None] * residual)


def _flow_gain(theta_XX: np.ndarray, times: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Θ(X,X) = V Λ Vᵀ and (1 − e^{−2tλ/N})/λ for each time, (T, N), written with expm1 so
    that it tends to 2t/N as λ → 0 (singular kernels are fine)."""
    lam, v = np.linalg.eigh(0.5 * (theta_XX + theta_XX.T))
    lam = np.clip(lam, 0.0, None)
    rate = 2.0 * times[:, None] / n                                     # (T, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(lam > 1e-12 * max(lam.max(), 1e-300),
                        -np.expm1(-rate * lam) / np.where(lam > 0, lam, 1.0), rate)
    return v, gain


def kernel_flow_gaussian(
    theta_xX: np.ndarray,
    theta_XX: np.ndarray,
    sigma_xx: np.ndarray,
    sigma_xX: np.ndarray,
    sigma_XX: np.ndarray,
    y: np.ndarray,
    t: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The law of f_t(x) in the infinite-width limit (Jacot et al. 2018, Fig. 2): with
    f_0 ~ GP(0, Σ) independently per output and the Θ flow of ``kernel_flow_prediction``,
    f_t(x) = f_0(x) + A(x)(Y − f_0(X)), A(x) = Θ(x,X)Θ(X,X)⁻¹(I − e^{−(2/N)tΘ(X,X)}), so
    f_t(x) is Gaussian with

        mean  A(x) Y                                                     (M, k)
        var   Σ(x,x) − 2 A(x) Σ(X,x) + A(x) Σ(X,X) A(x)ᵀ                 (M,), every output.

    Shapes: theta_xX, sigma_xX (M, N); theta_XX, sigma_XX (N, N); sigma_xx (M,) (the
    diagonal Σ(x, x)); y (N, k).
    """
    v, gain = _flow_gain(theta_XX, np.array([float(t)]), y.shape[0])
    a = (theta_xX @ v * gain[0]) @ v.T                                  # A (M, N)
    mean = a @ y
    var = sigma_xx - 2 * np.einsum("mn,mn->m", a, sigma_xX) \
        + np.einsum("mn,nl,ml->m", a, sigma_XX, a)
    return mean, np.clip(var, 0.0, None)
