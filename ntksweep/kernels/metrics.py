"""Comparing kernels, and the infinite-width (kernel gradient flow) prediction.

All functions take numpy float arrays and return numpy/float; kernels are (N, N)
per-logit matrices unless stated.
"""

from __future__ import annotations

import numpy as np

__all__ = ["rel_frobenius", "alignment", "shift_and_fluctuation", "top_eigenvalues",
           "KernelDynamics", "eigendecompose", "flat_kernel", "per_logit", "small_eigenvalues",
           "kernel_flow_prediction", "kernel_gd_prediction", "kernel_flow_gaussian"]


def rel_frobenius(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖_F / ‖b‖_F (dist_inf: b = Θ_∞; dist_init: b = Θ_0)."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def alignment(a: np.ndarray, b: np.ndarray) -> float:
    """Kernel alignment ⟨a, b⟩_F / (‖a‖_F ‖b‖_F) ∈ [−1, 1] (Cristianini et al. 2002;
    the "kernel velocity" cosine of Fort et al. 2020 is 1 − this)."""
    return float(np.vdot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def shift_and_fluctuation(draws: np.ndarray, limit: np.ndarray) -> tuple[float, float]:
    """(m², s²): the mean shift and the fluctuation of S ≥ 2 draws (S, E) of a kernel's
    entries around its limit (E,), both relative to ‖limit‖²:

        K̄ = (1/S) Σ_s K_s,   V = (1/(S − 1)) Σ_s ‖K_s − K̄‖²    (E V = E‖K − E K‖²)
        s² = V/‖Θ_∞‖²,        m² = (‖K̄ − Θ_∞‖² − V/S)/‖Θ_∞‖²

    unbiased, because E‖K̄ − Θ_∞‖² = ‖E K − Θ_∞‖² + E‖K − E K‖²/S: the seed mean's own
    noise is removed, so a zero mean shift reads as m² ≈ 0 of either sign."""
    s_count = len(draws)
    mean = draws.mean(0)
    v = float(((draws - mean) ** 2).sum()) / (s_count - 1)
    norm2 = float(limit @ limit)
    return (float(((mean - limit) ** 2).sum()) - v / s_count) / norm2, v / norm2


def flat_kernel(theta: np.ndarray) -> np.ndarray:
    """A k-output kernel (n1, n2, k, k) as the (n1 k, n2 k) matrix it is: row (i, a), column
    (j, b) holds Θ(x_i, x_j)[a, b]."""
    n1, n2, k, _ = theta.shape
    return theta.transpose(0, 2, 1, 3).reshape(n1 * k, n2 * k)


def per_logit(theta: np.ndarray) -> np.ndarray:
    """The per-logit mean (1/k) Σ_c Θ[:, :, c, c] (n1, n2) of a k-output kernel (n1, n2, k, k)
    (what the distances compare; it is Θ_∞ for the limit Θ_∞ ⊗ I_k)."""
    return np.einsum("ijcc->ij", theta) / theta.shape[2]


def top_eigenvalues(k: np.ndarray, m: int = 3) -> np.ndarray:
    """The m largest eigenvalues of the symmetric part of k, descending (m,)."""
    eig = np.linalg.eigvalsh(0.5 * (k + k.T))
    return eig[::-1][:m]


class KernelDynamics:
    """The linear model trained on (X, Y) by C(f) = (1/N) Σ ‖f(x_i) − y_i‖² with a constant
    kernel Θ, read at points x (Jacot et al. 2018, §5; Lee et al. 2019 with Θ = Θ_0). The
    eigendecomposition Θ(X, X) = V Λ Vᵀ is done once; each prediction is then one (M, N)
    product:

        f(x) = f_0(x) + Θ(x, X) V g(Λ) Vᵀ (Y − f_0(X)),

    with g(λ) = (1 − e^{−2tλ/N})/λ for gradient flow to time t (``flow``) and
    g(λ) = (1 − (1 − 2ηλ/N)^s)/λ after s full-batch GD steps of size η (``gd``: the discrete
    dynamics a linearised network trained by GD follows exactly; it tends to the flow at
    t = ηs as η → 0, and at usual learning rates differs from it by a time-step error that
    does not shrink with width). Both g tend to their λ → 0 limits (2t/N, 2ηs/N), so
    singular kernels are fine. The t → ∞ end, g(λ) = 1/(λ + ridge), is kernel regression
    (``regression.regression_weights``).

    Shapes: theta_xX (M, N), theta_XX (N, N), f0_x (M, k), f0_X (N, k), y (N, k) — one
    kernel acting on each output column (Θ ⊗ I_k: the limit, or a one-output net) — or the
    full k-output kernels theta_xX (M, N, k, k), theta_XX (N, N, k, k), whose output pairs
    couple (a finite net's Θ_0: the true linearised network); then Θ(X, X) is the
    (N k, N k) ``flat_kernel``. ``eig``: Θ(X, X)'s ``eigendecompose`` (of that flat matrix
    for a full kernel), where it is already known (a fixed kernel shared by models).
    """

    def __init__(self, theta_xX: np.ndarray, theta_XX: np.ndarray, f0_x: np.ndarray,
                 f0_X: np.ndarray | float, y: np.ndarray, *, n_train: int | None = None,
                 eig: tuple[np.ndarray, np.ndarray] | None = None):
        self.n = n_train or y.shape[0]
        self.shape = f0_x.shape                                          # (M, k)
        residual = y - f0_X                                              # (N, k)
        if theta_XX.ndim == 4:  # one output column of the (N k)-long stacked targets
            theta_xX, theta_XX = flat_kernel(theta_xX), flat_kernel(theta_XX)
            f0_x, residual = f0_x.reshape(-1, 1), residual.reshape(-1, 1)
        self.lam, v = eig if eig is not None else eigendecompose(theta_XX)
        self.proj = theta_xX @ v                                         # (M, N)
        self.residual = v.T @ residual                                   # (N, k), eigenbasis
        self.f0_x = f0_x

    def _at(self, gain: np.ndarray) -> np.ndarray:
        """f_0(x) + Θ(x, X) V diag(gain) Vᵀ (Y − f_0(X)) for gain (N,) or (T, N): (M, k) or
        (T, M, k)."""
        out = self.f0_x + np.einsum("mn,...n,nk->...mk", self.proj, gain, self.residual)
        return out.reshape(*out.shape[:-2], *self.shape)

    def flow(self, t: float | np.ndarray) -> np.ndarray:
        """f_t(x) (M, k), or (T, M, k) for a vector of times."""
        out = self._at(_flow_gain(self.lam, np.atleast_1d(np.asarray(t, float)), self.n))
        return out if np.ndim(t) else out[0]

    def gd(self, lr: float, steps: int) -> np.ndarray:
        """f(x) (M, k) after ``steps`` full-batch GD steps of size ``lr``."""
        return self._at(_gd_gain(self.lam, lr, steps, self.n))


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
    """Outputs at x after time t of gradient flow with a constant kernel (``KernelDynamics``):

        df(x)/dt = −(2/N) Θ(x, X) (f(X) − Y)
        ⇒ f_t(x) = f_0(x) + Θ(x, X) Θ(X, X)⁻¹ (I − e^{−(2/N) t Θ(X, X)}) (Y − f_0(X)).

    Shapes as ``KernelDynamics``, or with a full (M, N, k, k) / (N, N, k, k) kernel,
    flattened to (M k, N k). Returns (M, k), or (T, M, k) for a vector of times.
    """
    return KernelDynamics(theta_xX, theta_XX, f0_x, f0_X, y, n_train=n_train).flow(t)


def kernel_gd_prediction(theta_xX: np.ndarray, theta_XX: np.ndarray, f0_x: np.ndarray,
                         f0_X: np.ndarray, y: np.ndarray, lr: float, steps: int) -> np.ndarray:
    """Outputs at x (M, k) after ``steps`` steps of full-batch gradient descent at step size
    ``lr`` with a constant kernel (``KernelDynamics``):

        f_{s+1}(x) = f_s(x) − (2η/N) Θ(x, X) (f_s(X) − Y)
        ⇒ f_s(x) = f_0(x) + Θ(x, X) Θ(X, X)⁻¹ (I − (I − (2η/N) Θ(X, X))^s) (Y − f_0(X)).
    """
    return KernelDynamics(theta_xX, theta_XX, f0_x, f0_X, y).gd(lr, steps)


def eigendecompose(theta_XX: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Θ(X, X) = V Λ Vᵀ of its symmetric part, negative rounding clipped to 0."""
    lam, v = np.linalg.eigh(0.5 * (theta_XX + theta_XX.T))
    return np.clip(lam, 0.0, None), v


def small_eigenvalues(lam: np.ndarray) -> np.ndarray:
    """Eigenvalues that are zero to the kernel's precision: their gains take the λ → 0 limit."""
    return lam <= 1e-12 * max(lam.max(initial=0.0), 1e-300)


def _flow_gain(lam: np.ndarray, times: np.ndarray, n: int) -> np.ndarray:
    """(1 − e^{−2tλ/N})/λ for each time, (T, N), with expm1 (→ 2t/N as λ → 0)."""
    rate = 2.0 * times[:, None] / n                                     # (T, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(small_eigenvalues(lam), rate,
                        -np.expm1(-rate * lam) / np.where(lam > 0, lam, 1.0))


def _gd_gain(lam: np.ndarray, lr: float, steps: int, n: int) -> np.ndarray:
    """(1 − (1 − cλ)^s)/λ, c = 2η/N, (N,): through log1p where 1 − cλ > 0 (no cancellation
    for small cλ), directly where a step overshoots; → c s as λ → 0."""
    c = 2.0 * lr / n
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        stable = -np.expm1(steps * np.log1p(-np.minimum(c * lam, 1 - 1e-16))) / lam
        direct = (1.0 - np.power(1.0 - c * lam, steps)) / lam
        return np.where(small_eigenvalues(lam), c * steps, np.where(c * lam < 1.0, stable, direct))


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
    lam, v = eigendecompose(theta_XX)
    gain = _flow_gain(lam, np.array([float(t)]), y.shape[0])
    a = (theta_xX @ v * gain[0]) @ v.T                                  # A (M, N)
    mean = a @ y
    var = sigma_xx - 2 * np.einsum("mn,mn->m", a, sigma_xX) \
        + np.einsum("mn,nl,ml->m", a, sigma_XX, a)
    return mean, np.clip(var, 0.0, None)
