"""The linearised network of a trial with k outputs, against an independent one trained in
parameter space: f_lin(θ, x) = f(θ_0, x) + J(x)(θ − θ_0), by gradient descent on the same
loss (Lee et al. 2019), and its kernel regression against the minimum-norm least-squares
solve on the Jacobian. Both couple the outputs through the full (N, N, k, k) Θ_0; the
per-logit mean kernel would be another model."""

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev, jvp, vjp

from ntksweep.models.layers import parameter_lr_factors
from ntksweep.trial import build_model, dataset_for, inputs, run_trial
from ntksweep.trial_spec import TrialSpec

SPEC = dict(dataset="digits", n_train=20, n_eval=12, width=24, depth=3, lr=0.5,
            dtype="float64", device="cpu", bias_std=0.1)


def _net(spec: TrialSpec):
    """The trial's own initial network (the same seed) and data as float64 tensors."""
    data = dataset_for(spec)
    model = build_model(spec, data, data.out_dim, torch.float64, "cpu")
    as_t = lambda a: torch.as_tensor(inputs(spec, data, a), dtype=torch.float64)  # noqa: E731
    return model, data, as_t


def _linearised_gd(spec: TrialSpec, steps: int) -> np.ndarray:
    """The linearised net's eval-set outputs (M, k) after ``steps`` GD steps in parameter
    space, each parameter at its learning-rate factor (Θ_η)."""
    model, data, as_t = _net(spec)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    rates = parameter_lr_factors(model)
    x_tr, x_ev = as_t(data.x_train), as_t(data.x_eval)
    y = torch.as_tensor(data.y_train)
    f = lambda p, x: functional_call(model, p, (x,))  # noqa: E731

    def lin(p, x):
        delta = {n: p[n] - theta0[n] for n in p}
        f0, jd = jvp(lambda q: f(q, x), (theta0,), (delta,))
        return f0 + jd

    theta = dict(theta0)
    for _ in range(steps):
        out, pullback = vjp(lambda p: lin(p, x_tr), theta)
        (grad,) = pullback(2.0 / len(y) * (out - y))              # ∇ (1/N) Σ ‖f − y‖²
        theta = {n: theta[n] - spec.lr * rates[n] * grad[n] for n in theta}
    return lin(theta, x_ev).detach().numpy()


def _jacobian(model, x: torch.Tensor) -> np.ndarray:
    """J (n k, P) of the model's outputs at x, each parameter's columns scaled by √r (its
    learning-rate factor), so that J Jᵀ is Θ_η flattened to (n k, n k)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    rates = parameter_lr_factors(model)
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    return torch.cat([(jac[n] * rates[n] ** 0.5).reshape(jac[n].shape[0] * jac[n].shape[1], -1)
                      for n in params], 1).numpy()


def test_gap_lin_is_the_distance_to_the_true_linearised_network_with_ten_outputs():
    steps = 12
    spec = TrialSpec(**SPEC, steps=steps, checkpoint_steps=(0, steps), keep_outputs="all")
    out = run_trial(spec)
    assert out.status == "completed", out.error
    f_lin = _linearised_gd(spec, steps)                            # (M, 10)
    f_net = out.outputs[steps]
    gap = np.sqrt(np.mean((f_net - f_lin) ** 2))
    assert out.records[-1]["gap_lin"] == pytest.approx(gap, rel=1e-6)
    # the outputs do couple: GD with the per-logit mean kernel (1/k) Σ_c Θ_0[:, :, c, c] is
    # another model, farther from the net than the 1e-6 this test resolves
    model, data, as_t = _net(spec)
    j_tr, j_ev = _jacobian(model, as_t(data.x_train)), _jacobian(model, as_t(data.x_eval))
    k, n = data.out_dim, spec.n_train
    mean = lambda a, b: np.einsum("iaja->ij", (a @ b.T).reshape(len(a) // k, k, -1, k)) / k  # noqa
    with torch.no_grad():
        f0_tr, f0_ev = (model(as_t(x)).numpy() for x in (data.x_train, data.x_eval))
    residual = f0_tr - data.y_train
    theta_xx, theta_ex = mean(j_tr, j_tr), mean(j_ev, j_tr)
    f_ev = f0_ev.copy()
    for _ in range(steps):          # the per-logit linear model on eval, step by step
        f_ev -= 2 * spec.lr / n * theta_ex @ residual
        residual -= 2 * spec.lr / n * theta_xx @ residual
    per_logit_gap = np.sqrt(np.mean((f_net - f_ev) ** 2))
    assert abs(per_logit_gap - gap) > 0.05 * gap, (per_logit_gap, gap)


def test_the_linearised_nets_test_regression_is_the_min_norm_solve_on_the_jacobian():
    spec = TrialSpec(**{**SPEC, "n_test": 15}, steps=1, checkpoints=2)
    out = run_trial(spec)
    assert out.status == "completed", out.error
    model, data, as_t = _net(spec)
    x_tr, x_te = as_t(data.x_train), as_t(data.x_test)
    with torch.no_grad():
        f0_tr, f0_te = model(x_tr).numpy(), model(x_te).numpy()
    j_tr, j_te = _jacobian(model, x_tr), _jacobian(model, x_te)
    step = np.linalg.lstsq(j_tr, (data.y_train - f0_tr).reshape(-1), rcond=None)[0]
    pred = f0_te + (j_te @ step).reshape(f0_te.shape)
    mse = ((pred - data.y_test) ** 2).sum(1).mean()
    assert out.records[0]["test_loss_kr_init"] == pytest.approx(mse, rel=1e-6)
    assert out.records[0]["test_acc_kr_init"] == pytest.approx(
        (pred.argmax(1) == data.labels_test).mean())


def test_the_step_size_against_the_initial_sharpness_is_recorded():
    """lr_sharpness = 2ηλ_max(Θ_0(X, X))/N over the (N k, N k) kernel: a GD step on the
    linearised net multiplies the residual's top eigendirection by 1 − lr_sharpness."""
    spec = TrialSpec(**SPEC, steps=1, checkpoints=2)
    out = run_trial(spec)
    model, data, as_t = _net(spec)
    j = _jacobian(model, as_t(data.x_train))
    top = np.linalg.eigvalsh(j @ j.T).max()
    first, last = out.records
    assert first["lr_sharpness"] == pytest.approx(2 * spec.lr * top / spec.n_train, rel=1e-8)
    assert np.isnan(last["lr_sharpness"])                   # measured at step 0 only
    adam = run_trial(spec.replace(optimizer="adam", lr=1e-3))
    assert np.isnan(adam.records[0]["lr_sharpness"])        # not a GD step size


@pytest.mark.parametrize("parametrization", ["mup", "mean_field"])
def test_the_nngp_distance_is_nan_where_the_nngp_limit_is_the_bias_alone(parametrization):
    """Under μP and mean-field the readout's prior variance vanishes with width: Σ^(L) is
    σ_b² alone (0 at bias_std 0, where the distance used to be inf)."""
    for bias_std in (0.0, 0.1):
        out = run_trial(TrialSpec(dataset="sphere", dim=4, n_train=8, n_eval=8, width=16,
                                  depth=2, steps=1, checkpoints=2, bias_std=bias_std,
                                  parametrization=parametrization, device="cpu"))
        assert out.status == "completed", out.error
        assert all(np.isnan(r["dist_nngp"]) for r in out.records)
        assert np.isfinite(out.records[0]["dist_inf"])
