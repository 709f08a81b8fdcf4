"""Θ_∞ and Σ against mathematics: closed forms written out here, identities, Jacot's check
values, and an independent scipy-integrated recursion. Never against our own output."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from ntksweep import ACTIVATIONS, analytic_kernels
from ntksweep.errors import SpecError

RTOL_TIGHT = 1e-10


def circle(gammas):
    return np.stack([np.cos(gammas), np.sin(gammas)], 1)


@pytest.mark.parametrize("gamma, expected", [(0.0, 0.28250), (math.pi / 2, 0.09270),
                                             (math.pi, 0.06435)])
def test_jacot_check_values(gamma, expected):
    k = analytic_kernels(np.array([[1.0, 0.0]]), circle(np.array([gamma])), depth=4,
                         activation="relu", weight_std=1.0, bias_std=0.1)
    assert k.ntk.shape == (1, 1)
    assert k.ntk[0, 0] == pytest.approx(expected, abs=5e-6)


def test_one_hidden_layer_relu_written_out():
    # depth 2: Θ = Σ1·Σ̇2 + Σ2, Σ2 = σw² E[relu relu] + σb², Σ̇2 = σw² (π−θ)/(2π)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3))
    sw, sb = 1.3, 0.4
    k = analytic_kernels(x, depth=2, activation="relu", weight_std=sw, bias_std=sb)
    for i in range(5):
        for j in range(5):
            s11 = sw**2 * x[i] @ x[i] / 3 + sb**2
            s22 = sw**2 * x[j] @ x[j] / 3 + sb**2
            s12 = sw**2 * x[i] @ x[j] / 3 + sb**2
            th = math.acos(max(-1.0, min(1.0, s12 / math.sqrt(s11 * s22))))
            e = math.sqrt(s11 * s22) / (2 * math.pi) * (math.sin(th)
                                                        + (math.pi - th) * math.cos(th))
            sigma2 = sw**2 * e + sb**2
            dot2 = sw**2 * (math.pi - th) / (2 * math.pi)
            assert k.nngp[i, j] == pytest.approx(sigma2, rel=RTOL_TIGHT)
            assert k.ntk[i, j] == pytest.approx(s12 * dot2 + sigma2, rel=RTOL_TIGHT)


def test_one_hidden_layer_erf_written_out():
    x = np.array([[0.3, -1.2], [2.0, 0.5], [-0.7, -0.1]])
    sw, sb = 0.9, 0.2
    k = analytic_kernels(x, depth=2, activation="erf", weight_std=sw, bias_std=sb)
    s = sw**2 * x @ x.T / 2 + sb**2
    d = np.diag(s)
    e = 2 / np.pi * np.arcsin(2 * s / np.sqrt(np.outer(1 + 2 * d, 1 + 2 * d)))
    edot = 4 / np.pi / np.sqrt(np.outer(1 + 2 * d, 1 + 2 * d) - 4 * s**2)
    np.testing.assert_allclose(k.nngp, sw**2 * e + sb**2, rtol=RTOL_TIGHT)
    np.testing.assert_allclose(k.ntk, s * sw**2 * edot + sw**2 * e + sb**2, rtol=RTOL_TIGHT)


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_deep_linear_network_ntk(depth):
    # identity σ, σ_b = 0: Σ^(ℓ) = σw^{2ℓ} x·x'/n0, Σ̇ = σw², so Θ^(L) = L σw^{2L} x·x'/n0
    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(size=(4, 6)), rng.normal(size=(3, 6))
    sw = 1.1
    k = analytic_kernels(x1, x2, depth=depth, activation="identity", weight_std=sw,
                         bias_std=0.0)
    gram = x1 @ x2.T / 6
    np.testing.assert_allclose(k.ntk, depth * sw ** (2 * depth) * gram, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(k.nngp, sw ** (2 * depth) * gram, rtol=1e-12, atol=1e-15)


def test_relu_diagonal_is_geometric_series():
    # on the diagonal θ = 0: E[relu(u)²] = k/2 and Σ̇ = σw²/2
    x = np.random.default_rng(2).normal(size=(6, 4))
    sw, sb, depth = 1.4, 0.3, 5
    k = analytic_kernels(x, depth=depth, activation="relu", weight_std=sw, bias_std=sb)
    sigma = sw**2 * (x * x).sum(1) / 4 + sb**2
    theta = sigma.copy()
    for _ in range(depth - 1):
        sigma = sw**2 * sigma / 2 + sb**2
        theta = theta * sw**2 / 2 + sigma
    np.testing.assert_allclose(np.diag(k.nngp), sigma, rtol=1e-12)
    np.testing.assert_allclose(np.diag(k.ntk), theta, rtol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
@pytest.mark.parametrize("cross", [False, True])
def test_fused_arccos_path_equals_generic_duals(activation, cross):
    """The fused in-place layer (its own algebra: ė cos θ + B sin θ) against the recursion
    through duals.arccos_dual, across tile edges (n not a multiple of the tile), with a
    duplicate point, an antipodal pair and (but for the last case: σ_b = 0 without a zero
    input is the normalised ρ, Θ/(s1 s2) recursion) a zero input."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(37, 5))
    x[3], x[4] = x[0], -x[1]
    x2 = rng.normal(size=(23, 5)) if cross else None
    for sb, zero in ((0.0, True), (0.2, True), (0.0, False)):
        x[5] = 0.0 if zero else x[6] / 3
        kw = dict(depth=6, activation=activation, weight_std=1.3, bias_std=sb, tile=16)
        fused, generic = analytic_kernels(x, x2, **kw), analytic_kernels(x, x2, fused=False, **kw)
        np.testing.assert_allclose(fused.ntk, generic.ntk, rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(fused.nngp, generic.nngp, rtol=1e-12, atol=1e-300)
        if not cross:
            # duplicate rows, to round-off: numpy's SIMD loops may round an entry differently
            # (by an ulp) by its position in the array
            np.testing.assert_allclose(fused.ntk[3], fused.ntk[0], rtol=1e-14, atol=0)


@pytest.mark.parametrize("tile", [16, (8, 16), (5, 3), (64, 512)])
@pytest.mark.parametrize("fused", [True, False])
def test_mirrored_blocks_equal_the_full_cross_kernel(tile, fused):
    """x2 None computes the blocks on and above the diagonal and mirrors them; x2 = a copy of
    x computes every block. Block shapes that do not divide n (37), rectangular ones, and
    one (5, 3) narrower than tall (widened to hold the diagonal square)."""
    x = np.random.default_rng(3).normal(size=(37, 4))
    kw = dict(depth=5, activation="relu", bias_std=0.3, tile=tile, fused=fused)
    sym, cross = analytic_kernels(x, **kw), analytic_kernels(x, x.copy(), **kw)
    for a, b in ((sym.ntk, cross.ntk), (sym.nngp, cross.nngp)):
        np.testing.assert_array_equal(a, a.T)
        np.testing.assert_allclose(a, b, rtol=1e-13)


def _independent_recursion(x, depth, sigma, dsigma, sw, sb):
    """Per-pair recursion with scipy's adaptive 2-D integration (no Gauss–Hermite)."""
    n = len(x)
    S = sw**2 * x @ x.T / x.shape[1] + sb**2
    T = S.copy()
    for _ in range(depth - 1):
        S_new, D = np.empty_like(S), np.empty_like(S)
        for i in range(n):
            for j in range(n):
                s1, s2 = math.sqrt(S[i, i]), math.sqrt(S[j, j])
                rho = max(-1.0, min(1.0, S[i, j] / (s1 * s2)))
                c = math.sqrt(1 - rho * rho)

                def expect(f, s1=s1, s2=s2, rho=rho, c=c):
                    def integrand(z2, z1):
                        u = s1 * z1
                        v = s2 * (rho * z1 + c * z2)
                        return f(u) * f(v) * math.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * math.pi)
                    return integrate.dblquad(integrand, -9, 9, -9, 9, epsabs=1e-11)[0]

                S_new[i, j] = sw**2 * expect(sigma) + sb**2
                D[i, j] = sw**2 * expect(dsigma)
        T = T * D + S_new
        S = S_new
    return S, T


@pytest.mark.parametrize("name, f, df", [
    ("tanh", math.tanh, lambda u: 1 - math.tanh(u) ** 2),
    ("sigmoid", lambda u: 1 / (1 + math.exp(-u)),
     lambda u: math.exp(-u) / (1 + math.exp(-u)) ** 2),
])
def test_quadrature_matches_independent_integration(name, f, df):
    x = np.array([[1.0, 0.2], [-0.4, 0.9], [0.3, -1.1]])
    S, T = _independent_recursion(x, 3, f, df, 1.2, 0.3)
    k = analytic_kernels(x, depth=3, activation=name, weight_std=1.2, bias_std=0.3)
    np.testing.assert_allclose(k.nngp, S, rtol=1e-6)
    np.testing.assert_allclose(k.ntk, T, rtol=1e-6)


def test_closed_form_vs_quadrature():
    x = np.random.default_rng(3).normal(size=(20, 5))
    for name in ("erf", "gelu", "sin"):
        exact = analytic_kernels(x, depth=4, activation=name, bias_std=0.2)
        quad = analytic_kernels(x, depth=4, activation=name, bias_std=0.2, quadrature=True)
        err = np.linalg.norm(exact.ntk - quad.ntk) / np.linalg.norm(exact.ntk)
        assert err < 1e-6, (name, err)


def test_relu_quadrature_is_only_first_order():
    # σ' = step is discontinuous: the quadrature error of Σ̇ halves when the step halves,
    # which is why ReLU needs its arc-cosine closed form.
    x = np.random.default_rng(3).normal(size=(20, 5))
    exact = analytic_kernels(x, depth=4, activation="relu", bias_std=0.2).ntk

    def err(points):
        quad = analytic_kernels(x, depth=4, activation="relu", bias_std=0.2, quadrature=True,
                                quadrature_points=points).ntk
        return np.linalg.norm(exact - quad) / np.linalg.norm(exact)

    coarse, fine = err(301), err(601)
    assert coarse < 3e-2
    assert 0.4 < fine / coarse < 0.6


def _edge_inputs():
    base = np.array([[1.0, 0.5, -0.2]])
    return np.concatenate([
        base, base, -base,               # identical and antipodal
        np.zeros((1, 3)),                # zero input
        1e8 * np.array([[0.3, -1.0, 2.0]]),   # huge norm
        1e-8 * np.array([[-2.0, 0.1, 0.4]]),  # tiny norm
        np.array([[0.0, 1.0, 0.0]]),
    ])


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("bias_std", [0.0, 0.1])
def test_degenerate_inputs_are_finite_symmetric_psd(activation, bias_std):
    x = _edge_inputs()
    if activation in ("sigmoid", "softplus", "tanh", "gelu", "erf", "sin"):
        x = x[np.linalg.norm(x, axis=1) < 1e3]  # huge norms: covered for closed forms below
    k = analytic_kernels(x, depth=4, activation=activation, bias_std=bias_std)
    for m in (k.ntk, k.nngp):
        assert np.isfinite(m).all()
        np.testing.assert_allclose(m, m.T, rtol=1e-12, atol=0)
        eig = np.linalg.eigvalsh(m / max(np.abs(m).max(), 1e-300))
        assert eig.min() > -1e-9
        assert (np.diag(m) >= 0).all()


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "erf", "gelu", "sin", "identity"])
def test_huge_norms_closed_forms_finite(activation):
    x = _edge_inputs()
    k = analytic_kernels(x, depth=6, activation=activation, bias_std=0.1)
    assert np.isfinite(k.ntk).all() and np.isfinite(k.nngp).all()
    # identical inputs give identical rows (to an ulp: see the fused-path test)
    np.testing.assert_allclose(k.ntk[0], k.ntk[1], rtol=1e-14, atol=0)


def test_torch_inputs_and_cross_kernel():
    x1 = torch.randn(4, 3, dtype=torch.float32)
    x2 = torch.randn(5, 3, dtype=torch.float64)
    k = analytic_kernels(x1, x2, depth=3)
    assert k.ntk.shape == (4, 5) and k.ntk.dtype == np.float64
    full = analytic_kernels(torch.cat([x1.double(), x2]), depth=3)
    np.testing.assert_allclose(k.ntk, full.ntk[:4, 4:], rtol=1e-12)


def test_standard_parametrization_linear_closed_form():
    # identity σ, depth 2, standard: Θ = (x·x' + 1)·σw² + n1 (σw² x·x'/n0 + σb²) + 1
    x = np.random.default_rng(4).normal(size=(3, 4))
    sw, sb, n1 = 0.8, 0.5, 300
    k = analytic_kernels(x, depth=2, activation="identity", weight_std=sw, bias_std=sb,
                         parametrization="standard", width=n1)
    g = x @ x.T
    np.testing.assert_allclose(k.ntk, (g + 1) * sw**2 + n1 * (sw**2 * g / 4 + sb**2) + 1,
                               rtol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=3, activation="swish"), "unknown activation 'swish'.*relu"),
    (dict(depth=0), "depth must be an integer >= 1"),
    (dict(depth=2.5), "depth must be an integer"),
    (dict(depth=2, weight_std=-1.0), "weight_std must be"),
    (dict(depth=2, bias_std=-0.1), "bias_std must be"),
    (dict(depth=2, parametrization="muP"), "parametrization must be"),
    (dict(depth=2, parametrization="standard"), "needs width"),
    (dict(depth=2, tile=(0, 64)), "tile must be an int or \\(rows, cols\\) of ints >= 1"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        analytic_kernels(np.ones((2, 3)), **kwargs)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="same input dim"):
        analytic_kernels(np.ones((2, 3)), np.ones((2, 4)), depth=2)
    with pytest.raises(ValueError, match="NaN or inf"):
        analytic_kernels(np.array([[1.0, np.nan]]), depth=2)
    with pytest.raises(ValueError, match="2-D"):
        analytic_kernels(np.ones(3), depth=2)


def test_leaky_relu_slope_is_one_field_for_the_network_and_its_limit():
    import torch

    from ntksweep import MLP, empirical_ntk

    x = np.random.default_rng(0).normal(size=(6, 3))
    a, sb = -0.5, 0.1
    kw = dict(depth=3, activation="leaky_relu", bias_std=sb, leaky_relu_slope=a)
    closed = analytic_kernels(x, **kw)
    # independently, from σ = a·x + (1 − a)·relu(x) and E[u relu(v)] = k12/2:
    # E[σσ] = a k12 + (1 − a)² E[relu relu], E[σ'σ'] = a + (1 − a)² (π − θ)/(2π)
    sig = x @ x.T / 3 + sb**2
    theta = sig.copy()
    for _ in range(2):
        d = np.sqrt(np.diag(sig))
        cos = np.clip(sig / np.outer(d, d), -1, 1)
        ang = np.arccos(cos)
        np.fill_diagonal(ang, 0.0)     # a point with itself: θ = 0 exactly
        relu = np.outer(d, d) * (np.sin(ang) + (np.pi - ang) * cos) / (2 * np.pi)
        dot = a + (1 - a) ** 2 * (np.pi - ang) / (2 * np.pi)
        sig = a * sig + (1 - a) ** 2 * relu + sb**2
        theta = theta * dot + sig
    np.testing.assert_allclose(closed.ntk, theta, rtol=1e-10)
    np.testing.assert_allclose(analytic_kernels(x, fused=False, **kw).ntk, theta, rtol=1e-10)
    default = analytic_kernels(x, depth=3, activation="leaky_relu", bias_std=0.1)
    assert np.abs(closed.ntk - default.ntk).max() > 0.05 * np.abs(default.ntk).max()
    net = MLP(3, 4, 2, activation="leaky_relu", leaky_relu_slope=-0.5, seed=0)
    assert net.act.fn(torch.tensor([-2.0])).item() == 1.0
    # the networks' mean NTK is the limit with their slope (Monte-Carlo, 40 nets of width 512)
    xs = torch.tensor(x)
    mean = np.mean([empirical_ntk(MLP(3, 512, 3, activation="leaky_relu", bias_std=0.1,
                                      leaky_relu_slope=-0.5, seed=s, dtype=torch.float64),
                                  xs, trace=True).numpy() for s in range(40)], axis=0)
    assert np.abs(mean - closed.ntk).max() < 0.03 * np.abs(closed.ntk).max()


def _nested_quad(f, k11, k12, k22):
    """E[f(u) f(v)] by scipy's adaptive quadrature, nested: z1 outside, z2 inside, each with
    breakpoints where the integrand turns over (an independent reference)."""
    s1, s2 = math.sqrt(k11), math.sqrt(k22)
    rho = k12 / (s1 * s2)
    c = math.sqrt(max(0.0, 1 - rho * rho))
    gauss = 1 / math.sqrt(2 * math.pi)

    def inner(z1):
        if c < 1e-14:
            return f(s2 * rho * z1)
        zs = -rho * z1 / c
        pts = [p for p in (zs - 40 / (s2 * c), zs, zs + 40 / (s2 * c)) if -12 < p < 12]
        return integrate.quad(lambda z2: f(s2 * (rho * z1 + c * z2)) * gauss
                              * math.exp(-z2 * z2 / 2), -12, 12, points=pts or None,
                              limit=400, epsabs=0, epsrel=1e-12)[0]

    pts = [p for p in (-40 / s1, 0.0, 40 / s1) if -12 < p < 12]
    return integrate.quad(lambda z1: f(s1 * z1) * inner(z1) * gauss * math.exp(-z1 * z1 / 2),
                          -12, 12, points=pts, limit=400, epsabs=0, epsrel=1e-11)[0]


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "softplus"])
def test_quadrature_is_exact_at_every_variance(name):
    """std 1e-3 … 1e3 (tanh saturates into a step within 1/std), at every correlation — a
    point with itself (ρ = ±1) and pairs within 1e-6 of it included: against scipy's
    adaptive quadrature, to 1e-8 relative."""
    import warnings

    import scipy.special as sp

    from ntksweep.kernels.duals import quadrature_dual

    fn = {"tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
          "sigmoid": (sp.expit, lambda x: sp.expit(x) * (1 - sp.expit(x))),
          "softplus": (lambda x: np.logaddexp(0, x), sp.expit)}[name]
    dual = quadrature_dual(name)
    for std in (1e-3, 1.0, 10.0, 100.0, 1e3):
        k = std * std
        rhos = (1.0, 0.999999, 0.6, -0.3, -0.999999, -1.0)
        scale = 1.3 ** 0.5                     # ρ is k12 / √(k11 k22), k22 = 1.3 k11
        e, e_dot = dual(torch.full((len(rhos),), k, dtype=torch.float64),
                        torch.tensor([r * k * scale for r in rhos], dtype=torch.float64),
                        torch.full((len(rhos),), 1.3 * k, dtype=torch.float64))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # scipy's roundoff notes at its own 1e-12
            for i, rho in enumerate(rhos):
                for got, f in ((e[i], fn[0]), (e_dot[i], fn[1])):
                    want = _nested_quad(f, k, rho * k * scale, 1.3 * k)
                    assert got.item() == pytest.approx(want, rel=1e-8), (std, rho)
    with pytest.raises(SpecError, match="beyond what its quadrature resolves"):
        dual(*(torch.full((1,), 1e32, dtype=torch.float64),) * 3)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_extreme_input_scales_are_exact_or_a_clear_error(activation):
    """Never NaN, never a wrong finite value: without bias the (leaky) ReLU and identity
    kernels are homogeneous, Θ(cx, cx') = c² Θ(x, x'), at any c; every other activation
    either returns finite values or refuses with the scale in its message."""
    x = np.random.default_rng(1).normal(size=(5, 3))
    unit = analytic_kernels(x, depth=3, activation=activation, bias_std=0.0)
    for c in (1e-200, 1e-140, 1e-80, 1e80, 1e140, 1e200):
        try:
            k = analytic_kernels(x * c, depth=3, activation=activation, bias_std=0.0)
        except SpecError as e:
            assert "rescale the inputs" in str(e)
            assert activation not in ("relu", "leaky_relu", "identity") or c * c > 1e300
            continue
        assert np.isfinite(k.ntk).all() and np.isfinite(k.nngp).all()
        if activation in ("relu", "leaky_relu", "identity") and 1e-300 < c * c < 1e300:
            np.testing.assert_allclose(k.ntk / c / c, unit.ntk, rtol=1e-12)
    biased = analytic_kernels(x * 1e-160, depth=3, bias_std=0.1)      # the bias dominates
    np.testing.assert_allclose(biased.ntk, analytic_kernels(0 * x, depth=3, bias_std=0.1).ntk,
                               rtol=1e-12)


# --- float32 limits ------------------------------------------------------------------------
F32_CASES = {          # (architecture's arguments, point shape); quadrature σ (tanh) excepted
    "mlp": (dict(architecture="mlp", depth=4), (5,)),
    "cnn_gap": (dict(architecture="cnn", depth=4), (3, 8, 8)),
    "cnn_flatten_erf": (dict(architecture="cnn", depth=3, readout="flatten",
                             activation="erf"), (3, 8, 8)),
    "resnet": (dict(architecture="resnet", depth=4), (3, 8, 8)),
    "myrtle": (dict(architecture="myrtle", depth=5), (3, 8, 8)),
    "myrtle_gelu": (dict(architecture="myrtle", depth=5, activation="gelu"), (3, 8, 8)),
    "transformer": (dict(architecture="transformer", depth=4), (6, 4)),
}


class _Float64Ops(torch.overrides.TorchFunctionMode):
    """Counts the torch calls that return a float64 tensor of more than 64 entries."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.numel() > 64:
            self.count += 1
        return out


@pytest.mark.parametrize("case", list(F32_CASES))
def test_a_float32_limit_runs_in_float32_within_its_precision_of_float64(case):
    """dtype='float32': the recursion over pairs never touches float64 (the MLP's O(L)
    closed form excepted: it runs in float64 and returns float32), and each kernel lies
    within 5e-6 of the float64 one relative to its largest entry — on a block holding a
    point with itself, a duplicate and, without bias, a zero input (measured: ≤ 1.3e-6; with
    float64's snap a self pair carried 2e-5)."""
    args, shape = F32_CASES[case]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, *shape))
    x[3] = x[1]                                          # a duplicate: θ = 0 off the diagonal
    for bias_std, points in ((0.1, x), (0.0, np.concatenate([x, np.zeros((1, *shape))]))):
        exact = analytic_kernels(points, bias_std=bias_std, **args)
        ops = _Float64Ops()
        with ops:
            fast = analytic_kernels(points, bias_std=bias_std, dtype="float32", **args)
        assert args["architecture"] == "mlp" or ops.count == 0
        for kernel in ("ntk", "nngp"):
            got, want = getattr(fast, kernel), getattr(exact, kernel)
            assert got.dtype == np.float32 and np.isfinite(got).all()
            assert np.abs(got - want).max() <= 5e-6 * np.abs(want).max(), (kernel, bias_std)
    cross = analytic_kernels(x[:2], x[2:], dtype="float32", **args)
    assert cross.ntk.shape == (2, 3) and cross.ntk.dtype == np.float32


def test_a_limit_in_another_dtype_is_refused():
    with pytest.raises(SpecError, match="dtype: a limit is computed in float64 or float32"):
        analytic_kernels(np.ones((2, 3)), depth=2, dtype="float16")
