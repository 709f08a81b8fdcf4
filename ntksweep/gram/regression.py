"""Kernel regression with a kernel job's Gram matrices (``kernels.regression``'s
convention: λ = ridge · tr K(X, X)/N, f(x) = K(x, X)(K(X, X) + λI)⁻¹ Y, targets the data
set's — one-vs-rest ±0.9/−0.1 columns for classes): an exact solve where the matrix fits in
memory, and otherwise preconditioned conjugate gradients whose products stream over the
tiles (Adlam et al. 2023 solve at scale this way; the preconditioner here is the diagonal,
Jacobi's), so no more than one tile and a few (N, k) vectors are held at a time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..kernels.regression import regression_weights
from ..trial.builders import dataset_for
from ..trial_spec import TrialSpec
from .matrix import GramMatrix
from .spec import read_manifest

__all__ = ["GramFit", "fit_gram", "EXACT_BYTES"]

EXACT_BYTES = 4 << 30     # "auto" solves exactly while K(X, X) takes at most this


@dataclass(frozen=True)
class GramFit:
    """Test predictions (T, k), their MSE (1/T) Σ ‖f − y‖² and accuracy (NaN without
    classes), how it was solved, the CG iterations (0: exact) and the relative residual
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


def _pcg(matrix: GramMatrix, y: np.ndarray, lam: float, diag: np.ndarray, tol: float,
         max_iter: int) -> tuple[np.ndarray, int]:
    """(K + λI) α = Y column by column at once, Jacobi-preconditioned."""
    apply = lambda v: _matvec(matrix, v) + lam * v  # noqa: E731
    inv = 1.0 / (diag + lam)[:, None]
    alpha = np.zeros_like(y)
    r = y.copy()
    z = inv * r
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
        z = inv * r
        rz, old = (r * z).sum(0), rz
        p = z + (rz / np.maximum(old, 1e-300)) * p
    raise UserError(f"conjugate gradients did not reach a relative residual of {tol:g} in "
                    f"{max_iter} iterations; raise the ridge (the kernel is ill-conditioned) "
                    "or max_iter")


def fit_gram(out: str | Path, *, kernel: str = "ntk", ridge: float = 0.0,
             method: str = "auto", tol: float = 1e-8, max_iter: int = 10_000) -> GramFit:
    """Kernel regression on the job's training set, scored on its test set (module doc);
    ``method``: 'exact', 'pcg' or 'auto' (exact up to ``EXACT_BYTES``)."""
    if method not in ("auto", "exact", "pcg"):
        raise UserError(f"method must be auto, exact or pcg; got {method!r}")
    train, test = GramMatrix(out, "train", kernel), GramMatrix(out, "test", kernel)
    network = TrialSpec.from_dict(read_manifest(out)["spec"]["network"])
    data = dataset_for(network)
    y = np.asarray(data.y_train, float).reshape(train.shape[0], -1)
    diag = np.concatenate([np.diag(train.tile_value(t)) for t in train.tiles if t.diagonal])
    lam = ridge * float(diag.mean())
    if method == "exact" or (method == "auto" and 8 * train.shape[0] ** 2 <= EXACT_BYTES):
        k = np.asarray(train, dtype=np.float64)      # a float32 job's too: solved in float64
        alpha = regression_weights(k, y, ridge=ridge, name=f"{kernel} of {out}")
        method, iterations = "exact", 0
        residual_vec = k @ alpha + lam * alpha - y
    else:
        alpha, iterations = _pcg(train, y, lam, diag, tol, max_iter)
        method, residual_vec = "pcg", _matvec(train, alpha) + lam * alpha - y
    predictions = _matvec(test, alpha)
    y_test = np.asarray(data.y_test, float).reshape(len(predictions), -1)
    labels = data.labels_test
    accuracy = float("nan") if labels is None else \
        float(np.mean(predictions.argmax(1) == np.asarray(labels)))
    return GramFit(predictions, float(((predictions - y_test) ** 2).sum(1).mean()), accuracy,
                   method, iterations,
                   float(np.linalg.norm(residual_vec) / np.linalg.norm(y)))
