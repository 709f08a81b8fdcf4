"""Kernel regression with a kernel job's Gram matrices (``kernels.regression``'s
convention: λ = ridge · tr K(X, X)/N, f(x) = K(x, X)(K(X, X) + λI)⁻¹ Y, targets the data
set's — one-vs-rest ±0.9/−0.1 columns for classes): an exact solve where the matrix fits in
memory, and otherwise preconditioned conjugate gradients whose products stream over the
tiles (Adlam et al. 2023 solve at scale this way), so no more than one tile, a few (N, k)
vectors and the preconditioner's (N, rank) basis are held at a time.

The preconditioner: by default the randomized Nyström one (Frangella, Tropp & Udell 2023,
"Randomized Nyström preconditioning", SIAM J. Matrix Anal. Appl. 44(2), Algorithms 2.1 and
eq. 5.3) — a rank-ℓ sketch K Ω from one more pass over the tiles, whose eigenvectors U and
eigenvalues Λ̂ give P⁻¹ = (λ̂_ℓ + λ) U (Λ̂ + λI)⁻¹ Uᵀ + (I − U Uᵀ): the top of the spectrum,
which makes CG on K + λI slow (NTKs' eigenvalues fall fast, so κ ~ λ_max / λ), is taken out.
``jacobi`` (the diagonal) is kept for comparison."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.linalg import solve_triangular

from ..errors import UserError
from ..kernels.regression import regression_weights
from ..trial.builders import dataset_for
from ..trial_spec import TrialSpec
from .matrix import GramMatrix
from .spec import read_manifest

__all__ = ["GramFit", "fit_gram", "nystrom_preconditioner", "EXACT_BYTES", "solves_exactly",
           "PRECONDITIONERS"]

PRECONDITIONERS = ("nystrom", "jacobi")

EXACT_BYTES = 4 << 30     # "auto" solves exactly while K(X, X) takes at most this


@dataclass(frozen=True)
class GramFit:
    """Test predictions (T, k), their MSE (1/T) Σ ‖f − y‖² and accuracy (NaN without
    classes), how it was solved ('exact', or 'pcg' with its preconditioner, e.g.
    'pcg (nystrom, rank 256)'), the CG iterations (0: exact) and the relative residual
    ‖(K + λI)α − Y‖/‖Y‖ of the solve."""

    predictions: np.ndarray
    test_mse: float
    test_accuracy: float
    method: str
    iterations: int
    residual: float


def _matvec(matrix: GramMatrix, v: np.ndarray) -> np.ndarray:
    """K v for v (n2, k), one tile at a time (a symmetric block's tiles used twice)."""
    out = np.zeros((matrix.shape[0], v.shape[1]))
    for tile in matrix.tiles:
        block = matrix.tile_value(tile)
        out[tile.rows] += block @ v[tile.c0:tile.c1]
        if matrix.symmetric and not tile.diagonal:
            out[tile.c0:tile.c1] += block.T @ v[tile.rows]
    return out


def nystrom_preconditioner(matrix: GramMatrix, rank: int, lam: float, seed: int = 0
                           ) -> Callable[[np.ndarray], np.ndarray]:
    """r (N, k) ↦ P⁻¹ r for K + λI (module doc): Frangella et al.'s Algorithm 2.1 — an
    orthonormal Gaussian Ω (N, ℓ), Y = K Ω in one pass over the tiles, the shift
    ν = √N·eps·‖Y‖₂ for stability, B = (Y + νΩ) C⁻ᵀ with C Cᵀ = Ωᵀ(Y + νΩ), U Σ = B's
    SVD, Λ̂ = max(Σ² − ν, 0) — then eq. 5.3."""
    n = matrix.shape[0]
    omega, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, min(rank, n))))
    y = _matvec(matrix, omega)
    nu = np.sqrt(n) * np.finfo(np.float64).eps * np.linalg.norm(y, 2)
    y += nu * omega
    c = np.linalg.cholesky(omega.T @ y)                     # lower: C Cᵀ = Ωᵀ Y_ν
    b = solve_triangular(c, y.T, lower=True).T             # Y_ν C⁻ᵀ (N, ℓ)
    u, s, _ = np.linalg.svd(b, full_matrices=False)
    eig = np.maximum(s * s - nu, 0.0)
    shift = max(lam, np.finfo(np.float64).eps * eig[0])        # λ = 0: no division by 0
    scale = ((eig[-1] + shift) / (eig + shift))[:, None]

    def apply(r: np.ndarray) -> np.ndarray:
        ur = u.T @ r
        return u @ (scale * ur) + (r - u @ ur)

    return apply


def _pcg(matrix: GramMatrix, y: np.ndarray, lam: float,
         precondition: Callable[[np.ndarray], np.ndarray], tol: float,
         max_iter: int) -> tuple[np.ndarray, int]:
    """(K + λI) α = Y column by column at once, with P⁻¹ = ``precondition``."""
    apply = lambda v: _matvec(matrix, v) + lam * v  # noqa: E731
    alpha = np.zeros_like(y)
    r = y.copy()
    z = precondition(r)
    p = z.copy()
    rz = (r * z).sum(0)
    target = tol * np.linalg.norm(y, axis=0)
    for it in range(1, max_iter + 1):
        q = apply(p)
        step = rz / np.maximum((p * q).sum(0), 1e-300)
        alpha += step * p
        r -= step * q
        if (np.linalg.norm(r, axis=0) <= target).all():
            return alpha, it
        z = precondition(r)
        rz, old = (r * z).sum(0), rz
        p = z + (rz / np.maximum(old, 1e-300)) * p
    raise UserError(f"conjugate gradients did not reach a relative residual of {tol:g} in "
                    f"{max_iter} iterations; raise the ridge (the kernel is ill-conditioned) "
                    "or max_iter")


def solves_exactly(n: int) -> bool:
    """Whether ``fit_gram``'s "auto" solves n training points exactly: K(X, X) in float64
    within ``EXACT_BYTES``; conjugate gradients over the tiles beyond."""
    return 8 * n * n <= EXACT_BYTES


def fit_gram(out: str | Path, *, kernel: str = "ntk", ridge: float = 0.0,
             method: str = "auto", tol: float = 1e-8, max_iter: int = 10_000,
             preconditioner: str = "nystrom", rank: int = 256) -> GramFit:
    """Kernel regression on the job's training set, scored on its test set (module doc);
    ``method``: 'exact', 'pcg' or 'auto' (exact up to ``EXACT_BYTES``); conjugate
    gradients with ``preconditioner`` 'nystrom' (of ``rank``) or 'jacobi'."""
    if method not in ("auto", "exact", "pcg"):
        raise UserError(f"method must be auto, exact or pcg; got {method!r}")
    if preconditioner not in PRECONDITIONERS:
        raise UserError(f"preconditioner must be nystrom or jacobi; got {preconditioner!r}")
    if not isinstance(rank, int) or rank < 1:
        raise UserError(f"rank: the Nyström preconditioner's rank, an integer >= 1; got {rank!r}")
    train, test = GramMatrix(out, "train", kernel), GramMatrix(out, "test", kernel)
    network = TrialSpec.from_dict(read_manifest(out)["spec"]["network"])
    data = dataset_for(network)
    y = np.asarray(data.y_train, float).reshape(train.shape[0], -1)
    diag = np.concatenate([np.diag(train.tile_value(t)) for t in train.tiles if t.diagonal])
    lam = ridge * float(diag.mean())
    if method == "exact" or (method == "auto" and solves_exactly(train.shape[0])):
        k = np.asarray(train, dtype=np.float64)      # a float32 job's too: solved in float64
        alpha = regression_weights(k, y, ridge=ridge, name=f"{kernel} of {out}")
        method, iterations = "exact", 0
        residual_vec = k @ alpha + lam * alpha - y
    else:
        if preconditioner == "nystrom":
            precondition = nystrom_preconditioner(train, rank, lam)
            preconditioner = f"nystrom, rank {min(rank, train.shape[0])}"
        else:
            inv = 1.0 / (diag + lam)[:, None]
            precondition = lambda r: inv * r  # noqa: E731
        alpha, iterations = _pcg(train, y, lam, precondition, tol, max_iter)
        method, residual_vec = f"pcg ({preconditioner})", _matvec(train, alpha) + lam * alpha - y
    predictions = _matvec(test, alpha)
    y_test = np.asarray(data.y_test, float).reshape(len(predictions), -1)
    labels = data.labels_test
    accuracy = float("nan") if labels is None else \
        float(np.mean(predictions.argmax(1) == np.asarray(labels)))
    return GramFit(predictions, float(((predictions - y_test) ** 2).sum(1).mean()), accuracy,
                   method, iterations,
                   float(np.linalg.norm(residual_vec) / np.linalg.norm(y)))
