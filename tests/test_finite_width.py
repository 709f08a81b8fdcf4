"""The finite-width analysis (``ntksweep.analysis.finite_width``) against draws whose mean
and covariance are known, and against wide networks where theory fixes the answer."""

import numpy as np
import pytest
import torch

from ntksweep import MLP, analytic_kernels, empirical_ntk
from ntksweep.analysis.finite_width import (
    correction_exponents,
    corrections,
    extrapolate,
    width_corrections,
)

M = 5


def _planted(seed: int = 0):
    """A limit A (PD), a 1/n term B and a noise scale, all symmetric (M, M)."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(M, M))
    a = g @ g.T / M + np.eye(M)
    b = rng.normal(size=(M, M))
    return a, (b + b.T) / 2


def _draws(rng, a, b, n: int, seeds: int, noise: float = 1.0):
    """S kernels A + B/n + (noise/√n) E with E symmetric, entries N(0, 1) off and on the
    diagonal: E‖K − E K‖² = noise²·M²/n."""
    e = rng.normal(size=(seeds, M, M))
    e = (e + e.transpose(0, 2, 1)) / np.sqrt(2)
    e[:, np.arange(M), np.arange(M)] /= np.sqrt(2)
    return a + b / n + noise / np.sqrt(n) * e


def test_the_estimators_are_unbiased_where_the_naive_ones_are_not():
    """Over many repetitions at few seeds: m² averages ‖B/n‖²/‖A‖² (with B = 0: zero, where
    the seed mean's plain distance sits at its noise, V/S), s² averages the planted total
    variance, and the CIs cover."""
    a, b = _planted()
    rng = np.random.default_rng(1)
    n, seeds, reps = 16, 10, 400
    for shift in (b, np.zeros_like(b)):
        found = [corrections(_draws(rng, a, shift, n, seeds), a, n_boot=100, seed=r)
                 for r in range(reps)]
        m2 = np.array([f["mean_shift_sq"] for f in found])
        s2 = np.array([f["fluctuation"] ** 2 for f in found])
        true_m2 = np.sum((shift / n) ** 2) / np.sum(a * a)
        true_s2 = M * M / n / np.sum(a * a)
        assert abs(m2.mean() - true_m2) < 4 * m2.std() / np.sqrt(reps), (m2.mean(), true_m2)
        assert abs(s2.mean() - true_s2) < 4 * s2.std() / np.sqrt(reps)
        covered = np.mean([f["mean_shift_sq_lo"] <= true_m2 <= f["mean_shift_sq_hi"]
                           for f in found])
        assert covered > 0.85, covered
        if not shift.any():      # the naive estimate ‖K̄ − A‖² is V/S too high
            naive = np.mean([np.sum((_draws(rng, a, shift, n, seeds).mean(0) - a) ** 2)
                             for _ in range(reps)]) / np.sum(a * a)
            assert naive > true_s2 / seeds * 0.8 and abs(m2.mean()) < naive / 5


def test_the_extrapolation_recovers_a_planted_limit_within_its_standard_error():
    """K̄_n = A + B/n + noise over five widths: Θ̂_∞'s error is its standard error's size
    (mean z² ≈ 1) and far smaller than the widest width's seed mean's; given A, the fit
    returns B."""
    a, b = _planted(2)
    rng = np.random.default_rng(3)
    by_width = {n: _draws(rng, a, 20 * b, n, 64) for n in (16, 32, 64, 128, 256)}
    fit = extrapolate(by_width)
    z2 = ((fit.limit - a) / fit.limit_se) ** 2
    assert 0.4 < z2.mean() < 2.0, z2.mean()
    widest = np.linalg.norm(by_width[256].mean(0) - a)
    assert np.linalg.norm(fit.limit - a) < widest / 2
    given = extrapolate(by_width, a)
    assert np.linalg.norm(given.first - 20 * b) < 0.1 * np.linalg.norm(20 * b)


def _initial_kernels(depth: int, widths, seeds: int, x: np.ndarray, **net) -> dict:
    xt = torch.from_numpy(x)
    return {n: np.stack([empirical_ntk(MLP(x.shape[1], n, depth, seed=s, dtype=torch.float64,
                                           **net), xt, trace=True).numpy()
                         for s in range(seeds)]) for n in widths}


@pytest.mark.slow
@pytest.mark.parametrize("depth, net", [(2, dict(activation="relu", bias_std=0.1)),
                                        (4, dict(activation="identity", bias_std=0.0))],
                         ids=["one-hidden-layer-relu", "deep-linear"])
def test_networks_without_a_mean_shift_show_none_and_fluctuate_like_one_over_root_n(depth,
                                                                                     net):
    """Two networks whose E Θ_n = Θ_∞ at every width, exactly. One hidden layer (NTK
    parametrization): Θ_n averages iid hidden units whose mean is the limit. A deep linear
    net without biases: Θ_n = Σ_ℓ (a_ℓ(x)·a_ℓ(x')/n_ℓ) ‖D_ℓ‖², where the layer input a_ℓ
    depends on the weights below ℓ and the output gradient D_ℓ (the same for every x) on
    those above, so the two are independent; each linear layer keeps the expected inner
    product (E a_ℓ·a'_ℓ/n_ℓ = x·x'/d) and E‖D_ℓ‖² = 1, so E Θ_n = L x·x'/d = Θ_∞. The
    estimated mean shift is consistent with zero at every width (its CI holds 0), while
    s(n) ∝ n^−½ (b's CI holds −½, b in [−0.6, −0.4])."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    limit = analytic_kernels(x, depth=depth, **net).ntk
    if net["activation"] == "identity":
        assert np.allclose(limit, depth * x @ x.T / 3)
    table = width_corrections(_initial_kernels(depth, (16, 32, 64, 128), 600, x, **net),
                              limit, n_boot=200)
    assert ((table.mean_shift_sq_lo <= 0) & (0 <= table.mean_shift_sq_hi)).all(), table
    exps = correction_exponents(table).set_index("part")
    for part in ("all", "diagonal", "off_diagonal"):
        assert -0.6 <= exps.loc[part, "b"] <= -0.4, exps
        assert exps.loc[part, "b_lo"] < -0.5 < exps.loc[part, "b_hi"], exps
