"""Every checkpoint-record column against an independent computation, and the package's
import boundaries."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.linalg import expm

from ntksweep import analytic_kernels
from ntksweep.data import make_dataset
from ntksweep.models import MLP
from ntksweep.records import RECORD_COLUMNS
from ntksweep.trial import run_trial
from ntksweep.trial.train import checkpoint_schedule
from ntksweep.trial_spec import TrialSpec

ROOT = Path(__file__).resolve().parents[1]


def full_ntk(model, x1, x2):
    """Θ(x1, x2)[a, b] = ∂f_a(x1)·∂f_b(x2) (n1, n2, k, k) by brute force: the full Jacobian
    of every output."""
    params = [p for p in model.parameters()]

    def jac(x):
        out = model(x)                                                    # (n, k)
        rows = []
        for i in range(out.shape[0]):
            for c in range(out.shape[1]):
                g = torch.autograd.grad(out[i, c], params, retain_graph=True)
                rows.append(torch.cat([t.reshape(-1) for t in g]))
        return torch.stack(rows).reshape(out.shape[0], out.shape[1], -1)  # (n, k, P)

    j1, j2 = jac(x1), jac(x2)
    return torch.einsum("iap,jbp->ijab", j1, j2).detach().numpy()


def per_logit_ntk(model, x1, x2):
    """(1/k) Σ_c ∂f_c(x1)·∂f_c(x2)."""
    return np.einsum("ijcc->ij", full_ntk(model, x1, x2)) / 10


def flat(theta):
    """A k-output kernel (n1, n2, k, k) as the (n1 k, n2 k) matrix of the stacked outputs."""
    n1, n2, k, _ = theta.shape
    return theta.transpose(0, 2, 1, 3).reshape(n1 * k, n2 * k)


def times(theta, v):
    """Θ v: a per-logit (n1, n2) kernel on each output column, or a full (n1, n2, k, k) one
    coupling them, applied to v (n2, k)."""
    return theta @ v if theta.ndim == 2 else np.einsum("ijab,jb->ia", theta, v)


def flow(theta_xX, theta_XX, f0_x, f0_X, y, t):
    """f_t(x) under gradient flow on (1/N)Σ‖f − y‖² with a fixed kernel, by a matrix
    exponential and a linear solve (not an eigendecomposition)."""
    n = theta_XX.shape[0]
    if theta_XX.ndim == 4:          # the stacked (N k) outputs, the cost still over N points
        decay = np.eye(flat(theta_XX).shape[0]) - expm(-2.0 * t / n * flat(theta_XX))
        step = np.linalg.solve(flat(theta_XX), decay @ (y - f0_X).reshape(-1))
        return f0_x + (flat(theta_xX) @ step).reshape(f0_x.shape)
    decay = np.eye(n) - expm(-2.0 * t / n * theta_XX)
    return f0_x + theta_xX @ np.linalg.solve(theta_XX, decay @ (y - f0_X))


def gd(theta_xX, theta_XX, f0_x, f0_X, y, lr, steps):
    """f_s(x) of the linear model by iterating its full-batch GD update s times."""
    f_x, f_X = f0_x.copy(), f0_X.copy()
    for _ in range(steps):
        f_x, f_X = (f_x - 2 * lr / len(y) * times(theta_xX, f_X - y),
                    f_X - 2 * lr / len(y) * times(theta_XX, f_X - y))
    return f_x


def nngp(net, x, weight_std, bias_std):
    """(σ_w²/n) A Aᵀ + σ_b² from the last hidden features A, by an explicit forward pass."""
    with torch.no_grad():
        a = x
        for layer in list(net.layers)[:-1]:
            a = torch.relu(a @ (layer.weight * layer.weight_mult).T
                           + layer.bias * layer.bias_mult)
    a = a.numpy()
    return weight_std ** 2 * a @ a.T / a.shape[1] + bias_std ** 2


def frob(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def cosine(a, b):
    return np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))


def test_every_record_column_is_its_formula_recomputed_independently():
    spec = TrialSpec(dataset="digits", n_train=12, n_eval=10, n_test=8, width=16, depth=3,
                     lr=0.5, steps=4, checkpoints=3, bias_std=0.2, dtype="float64",
                     device="cpu")
    result = run_trial(spec)
    assert result.status == "completed", result.error
    data = make_dataset("digits", n_train=12, n_eval=10, n_test=8, seed=0)
    x_tr, x_ev = torch.tensor(data.x_train), torch.tensor(data.x_eval)
    x_te, y_te = torch.tensor(data.x_test), data.y_test
    y_tr, y_ev = data.y_train, data.y_eval
    net = MLP(64, 16, 3, bias_std=0.2, out_dim=10, seed=0, dtype=torch.float64)
    lim = analytic_kernels(np.concatenate([data.x_eval, data.x_train]), depth=3, bias_std=0.2)
    lim_te = analytic_kernels(data.x_test, data.x_train, depth=3, bias_std=0.2)
    m = 10

    def regression(k_te, k_tr, f0_te=0.0, f0_tr=0.0):  # t → ∞ of the flow: a linear solve
        if k_tr.ndim == 4:     # the net's own kernel: its k outputs couple
            weights = np.linalg.solve(flat(k_tr), (y_tr - f0_tr).reshape(-1))
            pred = f0_te + (flat(k_te) @ weights).reshape(len(k_te), -1)
        else:
            pred = f0_te + k_te @ np.linalg.solve(k_tr, y_tr - f0_tr)
        return {"loss": np.mean(np.sum((pred - y_te) ** 2, 1)),
                "acc": np.mean(pred.argmax(1) == data.labels_test)}

    theta_inf = lim.ntk[:m, :m]
    with torch.no_grad():
        f0_ev, f0_tr = net(x_ev).numpy(), net(x_tr).numpy()
    t0_ev_tr = full_ntk(net, x_ev, x_tr)            # the linearised net's: full (·, ·, k, k)
    t0_tr_tr = full_ntk(net, x_tr, x_tr)
    with torch.no_grad():
        f0_te = net(x_te).numpy()
    fixed = {"inf": regression(lim_te.ntk, lim.ntk[m:, m:]),
             "nngp": regression(lim_te.nngp, lim.nngp[m:, m:]),
             "init": regression(full_ntk(net, x_te, x_tr), t0_tr_tr, f0_te, f0_tr)}
    sharpness = 2 * spec.lr * np.linalg.eigvalsh(flat(t0_tr_tr)).max() / len(y_tr)
    theta0 = per_logit_ntk(net, x_ev, x_ev)
    expected, step = [], 0

    def pre_activations(x):  # every layer's z, by an explicit forward pass
        zs, a = [], x
        with torch.no_grad():
            for layer in net.layers:
                zs.append(a @ (layer.weight * layer.weight_mult).T
                          + layer.bias * layer.bias_mult)
                a = torch.relu(zs[-1])
        return zs

    def rms(t):
        return float(t.pow(2).mean().sqrt())

    z0, previous = pre_activations(x_ev), None
    for target in checkpoint_schedule(spec):
        while step < target:  # plain gradient descent on (1/N) Σ ‖f − y‖²
            loss = ((net(x_tr) - torch.tensor(y_tr)) ** 2).sum(1).mean()
            grads = torch.autograd.grad(loss, list(net.parameters()))
            with torch.no_grad():
                for p, g in zip(net.parameters(), grads):
                    p -= spec.lr * g
            step += 1
        with torch.no_grad():
            f_ev, f_tr = net(x_ev).numpy(), net(x_tr).numpy()
        theta = per_logit_ntk(copy.deepcopy(net), x_ev, x_ev)
        t = spec.lr * step
        eig = np.linalg.eigvalsh(theta)[::-1]
        eig_inf = np.linalg.eigvalsh(theta_inf)[::-1]
        rec = {"step": step, "t": t,
               "train_loss": np.mean(np.sum((f_tr - y_tr) ** 2, 1)),
               "eval_loss": np.mean(np.sum((f_ev - y_ev) ** 2, 1)),
               "dist_inf": frob(theta, theta_inf), "dist_init": frob(theta, theta0),
               "align_inf": cosine(theta, theta_inf), "align_init": cosine(theta, theta0),
               **{f"eig{i + 1}": eig[i] for i in range(3)},
               **{f"eig{i + 1}_inf": eig_inf[i] for i in range(3)},
               "f_change": np.sqrt(np.mean((f_ev - f0_ev) ** 2)),
               "dist_nngp": frob(nngp(net, x_ev, 1.0, 0.2), lim.nngp[:m, :m]),
               "lr_sharpness": sharpness if step == 0 else np.nan}
        with torch.no_grad():
            f_te = net(x_te).numpy()
        rec["test_loss"] = np.mean(np.sum((f_te - y_te) ** 2, 1))
        rec["test_acc"] = np.mean(f_te.argmax(1) == data.labels_test)
        after = regression(full_ntk(copy.deepcopy(net), x_te, x_tr),
                           full_ntk(copy.deepcopy(net), x_tr, x_tr)) \
            if step == spec.steps else {"loss": np.nan, "acc": np.nan}
        disc = gd(lim_te.ntk, lim.ntk[m:, m:], f0_te, f0_tr, y_tr, spec.lr, step)
        rec["test_loss_gd_inf"] = np.mean(np.sum((disc - y_te) ** 2, 1))
        rec["test_acc_gd_inf"] = np.mean(disc.argmax(1) == data.labels_test)
        for name, values in (*fixed.items(), ("t", after)):
            for what in ("loss", "acc"):
                rec[f"test_{what}_kr_{name}"] = values[what]
        kernels = {"inf": (lim.ntk[:m, m:], lim.ntk[m:, m:]), "lin": (t0_ev_tr, t0_tr_tr)}
        for name, (k_xX, k_XX) in kernels.items():
            disc = gd(k_xX, k_XX, f0_ev, f0_tr, y_tr, spec.lr, step)
            cont = flow(k_xX, k_XX, f0_ev, f0_tr, y_tr, t)
            rec[f"gap_{name}"] = np.sqrt(np.mean((f_ev - disc) ** 2))
            rec[f"gap_{name}_flow"] = np.sqrt(np.mean((f_ev - cont) ** 2))
        yy = y_ev @ y_ev.T
        rec["target_align"] = np.sum(theta * yy) / (np.linalg.norm(theta) * np.linalg.norm(yy))
        rec["kernel_velocity"] = np.nan if previous is None else \
            np.linalg.norm(theta - previous[1]) / np.linalg.norm(previous[1]) / (t - previous[0])
        previous = (t, theta)
        zs = pre_activations(x_ev)                  # depth 3: input, hidden, readout
        for role, i in (("input", 0), ("hidden", 1), ("readout", 2)):
            rec[f"coord_{role}"] = rms(zs[i])
            rec[f"coord_{role}_change"] = rms(zs[i] - z0[i])
        expected.append(rec)
    assert [r["step"] for r in result.records] == [r["step"] for r in expected]
    timed = ("train_seconds", "kernel_seconds")
    assert set(RECORD_COLUMNS) == set(expected[0]) | set(timed)
    for got, want in zip(result.records, expected):
        for col in RECORD_COLUMNS:
            if col in timed:
                assert got[col] >= 0, col
            elif np.isnan(want[col]):
                assert np.isnan(got[col]), (got["step"], col)
            else:
                assert got[col] == pytest.approx(want[col], rel=1e-7, abs=1e-10), \
                    (got["step"], col, got[col], want[col])
    for col in timed:
        assert [r[col] for r in result.records] == sorted(r[col] for r in result.records)
