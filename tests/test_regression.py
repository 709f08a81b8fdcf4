"""Kernel regression (ntksweep.kernels.regression) and the test-set baselines of a trial,
against closed forms, a trained linear model and an independent solve."""

import numpy as np
import pytest
import torch

from ntksweep import TrialSpec, analytic_kernels, run_trial
from ntksweep.data import make_dataset
from ntksweep.kernels.metrics import KernelDynamics
from ntksweep.kernels.regression import SingularKernelError, kernel_regression


def _features(rng, n, p):
    return rng.standard_normal((n, p)) / np.sqrt(p)


def test_interpolation_is_the_flow_at_infinite_time():
    rng = np.random.default_rng(0)
    phi_tr, phi_te = _features(rng, 20, 60), _features(rng, 7, 60)
    k_xX, k_XX = phi_te @ phi_tr.T, phi_tr @ phi_tr.T
    y, f0_x, f0_X = rng.standard_normal((20, 2)), rng.standard_normal((7, 2)), \
        rng.standard_normal((20, 2))
    flow = KernelDynamics(k_xX, k_XX, f0_x, f0_X, y).flow(1e9)
    pred = kernel_regression(k_xX, k_XX, y, f0_x=f0_x, f0_X=f0_X)
    np.testing.assert_allclose(pred, flow, rtol=1e-8, atol=1e-10)
    # and it interpolates the training targets
    np.testing.assert_allclose(kernel_regression(k_XX, k_XX, y, f0_x=f0_X, f0_X=f0_X), y,
                               atol=1e-9)


def test_equals_a_trained_linear_model():
    """f(x) = wᵀφ(x) trained by full-batch GD on the MSE from w_0 converges to kernel
    regression with K = φφᵀ from f_0 = w_0ᵀφ."""
    rng = np.random.default_rng(1)
    phi_tr, phi_te = _features(rng, 12, 40), _features(rng, 5, 40)
    y = rng.standard_normal((12, 1))
    w0 = rng.standard_normal((40, 1))
    w = torch.tensor(w0, requires_grad=True)
    a, b = torch.tensor(phi_tr), torch.tensor(y)
    opt = torch.optim.SGD([w], lr=2.0)
    for _ in range(20000):
        opt.zero_grad()
        ((a @ w - b) ** 2).sum(1).mean().backward()
        opt.step()
    trained = phi_te @ w.detach().numpy()
    pred = kernel_regression(phi_te @ phi_tr.T, phi_tr @ phi_tr.T, y, f0_x=phi_te @ w0,
                             f0_X=phi_tr @ w0)
    np.testing.assert_allclose(pred, trained, rtol=1e-6, atol=1e-8)


def test_ridge_is_the_regularised_solve_and_singular_kernels_say_what_to_do():
    rng = np.random.default_rng(2)
    phi = _features(rng, 10, 4)                                  # rank 4: singular
    k, y = phi @ phi.T, rng.standard_normal((10, 1))
    with pytest.raises(SingularKernelError, match="set ridge"):
        kernel_regression(k, k, y, name="Θ_0")
    lam = 1e-3 * np.trace(k) / 10
    expect = k @ np.linalg.solve(k + lam * np.eye(10), y)
    np.testing.assert_allclose(kernel_regression(k, k, y, ridge=1e-3), expect, rtol=1e-9)


@pytest.mark.parametrize("name", ["circle", "sphere", "digits", "images"])
def test_a_test_set_changes_no_other_array_and_is_held_out(name):
    base = make_dataset(name, n_train=30, n_eval=20, seed=3)
    more = make_dataset(name, n_train=30, n_eval=20, seed=3, n_test=25)
    for field in ("x_train", "y_train", "x_eval", "y_eval"):
        np.testing.assert_array_equal(getattr(base, field), getattr(more, field))
    assert base.x_test.shape == (0, base.in_dim) and more.x_test.shape == (25, base.in_dim)
    seen = {r.tobytes() for r in np.concatenate([more.x_train, more.x_eval])}
    assert not any(r.tobytes() in seen for r in more.x_test)


def test_a_file_with_its_own_test_set(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "d.npz"
    np.savez(path, X=rng.standard_normal((40, 3)), y=rng.standard_normal(40),
             X_test=rng.standard_normal((9, 3)), y_test=rng.standard_normal(9))
    d = make_dataset("file", n_train=20, n_eval=10, n_test=5, path=str(path))
    with np.load(path) as f:
        np.testing.assert_array_equal(d.x_test, f["X_test"][:5])


def test_a_trials_baselines_against_an_independent_solve():
    spec = TrialSpec(dataset="digits", n_train=60, n_eval=16, n_test=50, width=32, depth=3,
                     steps=4, checkpoints=2, architecture="cnn", bias_std=0.1)
    out = run_trial(spec)
    assert out.status == "completed", out.error
    first, last = out.records[0], out.records[-1]
    d = make_dataset("digits", n_train=60, n_eval=16, n_test=50)
    x = np.concatenate([d.x_test, d.x_train]).reshape(-1, 1, 8, 8)
    lim = analytic_kernels(x, **spec.kernel_args())
    for kind, k in (("inf", lim.ntk), ("nngp", lim.nngp)):
        pred = k[:50, 50:] @ np.linalg.solve(k[50:, 50:], d.y_train)
        assert first[f"test_loss_kr_{kind}"] == pytest.approx(
            ((pred - d.y_test) ** 2).sum(1).mean(), rel=1e-6)
        assert first[f"test_acc_kr_{kind}"] == pytest.approx(
            (pred.argmax(1) == d.labels_test).mean())
    assert 0.5 < first["test_acc_kr_inf"] <= 1          # kernels do learn digits
    assert np.isnan(first["test_loss_kr_t"]) and np.isfinite(last["test_loss_kr_t"])
    assert np.isfinite([r["test_loss"] for r in out.records]).all()


def test_no_test_set_no_test_columns():
    out = run_trial(TrialSpec(n_train=8, n_eval=8, width=16, depth=2, steps=2, checkpoints=2))
    assert all(np.isnan(r["test_loss"]) and np.isnan(r["test_loss_kr_inf"])
               for r in out.records)


def test_a_singular_measured_kernel_is_nan_and_a_singular_limit_says_what_to_do():
    """A net whose ReLUs died has a singular Θ_T: its kernel regression is NaN and the trial's
    other measurements stand; a singular Θ_∞ (duplicate inputs) is the user's to fix."""
    from ntksweep.trial import TrialCache, TrialRun

    spec = TrialSpec(dataset="digits", n_train=6, n_eval=4, n_test=3, width=8, depth=2)
    held_out = TrialRun(spec, TrialCache(), "cpu", None).held_out
    phi = np.random.default_rng(5).standard_normal((9, 2))
    k = phi @ phi.T                                             # rank 2 on 6 points
    scores = held_out._regression("t", k[6:, :6], k[:6, :6], None, None)
    assert np.isnan(scores["test_loss_kr_t"]) and np.isnan(scores["test_acc_kr_t"])
    with pytest.raises(SingularKernelError, match="Θ_∞ on the 6 training points"):
        held_out._regression("inf", k[6:, :6], k[:6, :6], None, None)


def test_the_limits_regressions_are_solved_once_per_worker():
    """Θ_∞'s and Σ's predictions do not depend on the net: a worker's second trial on the
    same data and limit reuses them (one cached entry each), Θ_0's is its own."""
    from ntksweep.trial import TrialCache

    cache = TrialCache()
    spec = TrialSpec(dataset="digits", n_train=30, n_eval=8, n_test=20, width=16, depth=2,
                     steps=2, checkpoints=2)
    first, second = (run_trial(spec.replace(seed=s), cache=cache).records[0] for s in (0, 1))
    assert first["test_loss_kr_inf"] == second["test_loss_kr_inf"]
    assert first["test_loss_kr_init"] != second["test_loss_kr_init"]
    solved = [k[:2] for k in cache._items if k[0] == "kr"]
    assert sorted(solved) == [("kr", "inf"), ("kr", "nngp")]
