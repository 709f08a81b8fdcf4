"""The parametrization family (ntksweep.parametrizations): each instance's network and
training step against a hand-written reference, Θ_η against the NTK parametrization's Θ,
μP's learning-rate transfer in miniature, and the limit kernels."""

import math

import numpy as np
import pytest
import torch

from ntksweep import TrialSpec, analytic_kernels, empirical_ntk
from ntksweep.errors import SpecError
from ntksweep.models import CNN, MLP, ResNet
from ntksweep.parametrizations import layer_scales, lr_factors
from ntksweep.trial import run_trial
from ntksweep.trial.train import make_optimizer

SW, SB = 1.3, 0.2


def hand_written(params, x, parametrization, n, d):
    """f(x) of a depth-3 MLP written out: the multipliers each parametrization puts in front
    of its N(0, 1)-or-scaled entries (Yang & Hu 2021, Table 3, in the N(0, 1) form)."""
    (w1, b1), (w2, b2), (w3, b3) = params
    if parametrization == "standard":
        m1, m2, m3, mb = 1.0, 1.0, 1.0, 1.0
    else:
        m1, m2, m3, mb = SW / math.sqrt(d), SW / math.sqrt(n), SW / math.sqrt(n), SB
        if parametrization == "mup":
            m3 /= math.sqrt(n)                       # the readout: 1/n instead of 1/√n
    h = torch.relu(m1 * x @ w1.T + mb * b1)
    h = torch.relu(m2 * h @ w2.T + mb * b2)
    return m3 * h @ w3.T + mb * b3


@pytest.mark.parametrize("parametrization", ["ntk", "standard", "mup"])
def test_forward_and_one_training_step_against_a_hand_written_reference(parametrization):
    n, d, lr = 32, 5, 0.05
    net = MLP(d, n, 3, weight_std=SW, bias_std=SB, parametrization=parametrization, seed=1,
              dtype=torch.float64)
    x, y = torch.randn(7, d, dtype=torch.float64), torch.randn(7, 1, dtype=torch.float64)
    params = [(lay.weight.detach().clone().requires_grad_(),
               lay.bias.detach().clone().requires_grad_()) for lay in net.layers]
    torch.testing.assert_close(net(x), hand_written(params, x, parametrization, n, d))
    # one GD step: every parameter moves by η·r·∂C/∂p, with μP's r = n except the
    # readout bias (r = 1)
    spec = TrialSpec(width=n, depth=3, parametrization=parametrization, lr=lr,
                     weight_std=SW, bias_std=SB)
    opt = make_optimizer(net, spec)
    loss = ((net(x) - y) ** 2).sum(1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    ref_loss = ((hand_written(params, x, parametrization, n, d) - y) ** 2).sum(1).mean()
    grads = torch.autograd.grad(ref_loss, [p for pair in params for p in pair])
    rates = {"mup": [n, n, n, n, n, 1]}.get(parametrization, [1] * 6)
    with torch.no_grad():
        moved = [p - lr * r * g for p, g, r in zip([p for pair in params for p in pair],
                                                    grads, rates)]
    stepped = [(moved[2 * i], moved[2 * i + 1]) for i in range(3)]
    torch.testing.assert_close(net(x), hand_written(stepped, x, parametrization, n, d))


@pytest.mark.parametrize("method", ["structured", "jacobian", "ntk_vps"])
@pytest.mark.parametrize("make, shape", [
    (lambda p: MLP(4, 24, 3, out_dim=2, bias_std=SB, parametrization=p, seed=2,
                   dtype=torch.float64), (4,)),
    (lambda p: CNN(1, 6, 3, bias_std=SB, parametrization=p, seed=2, dtype=torch.float64),
     (1, 5, 5)),
    (lambda p: ResNet(1, 6, 3, bias_std=SB, parametrization=p, seed=2, dtype=torch.float64),
     (1, 5, 5)),
])
def test_mups_kernel_of_gradient_descent_is_the_ntk_parametrizations(method, make, shape):
    """Θ_η = Σ r_p ∂_p f ∂_p fᵀ of a μP net equals Θ of the NTK-parametrized net with the
    same draws: each Jacobian is 1/√n of it and each rate n times (the readout bias: 1, 1)."""
    x = torch.randn(6, *shape, dtype=torch.float64)
    mup, ntk = make("mup"), make("ntk")
    torch.testing.assert_close(empirical_ntk(mup, x, method=method),
                               empirical_ntk(ntk, x, method=method), rtol=1e-10, atol=1e-12)


def test_mean_field_is_two_layer_mup_and_refuses_other_depths():
    a = MLP(3, 16, 2, parametrization="mean_field", seed=0, dtype=torch.float64)
    b = MLP(3, 16, 2, parametrization="mup", seed=0, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x))
    assert [lay.weight_lr for lay in a.layers] == [16.0, 16.0]
    with pytest.raises(SpecError, match="two-layer networks"):
        MLP(3, 16, 3, parametrization="mean_field")
    with pytest.raises(SpecError, match="parametrization"):
        TrialSpec(parametrization="mean-field")


def test_adam_rules_follow_the_mup_package():
    """μP with Adam (TP5, Table 3): hidden weights at η/√n in the N(0, 1) form (η/n on the
    effective weights, as MuAdam's 1/width_mult), everything else at η."""
    n = 64
    assert lr_factors("mup", "adam", "hidden", n) == (1 / 8, 1.0)
    assert lr_factors("mup", "adam", "input", n) == lr_factors("mup", "adam", "readout", n) \
        == (1.0, 1.0)
    net = MLP(3, n, 3, parametrization="mup", seed=0)
    opt = make_optimizer(net, TrialSpec(width=n, depth=3, parametrization="mup",
                                        optimizer="adam", lr=0.01))
    assert isinstance(opt, torch.optim.Adam)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([0.01 / 8, 0.01])
    scales = layer_scales("mup", "readout", n, n, weight_std=1.0, bias_std=0.0)
    assert scales.weight_mult == pytest.approx(1 / n)


def test_mup_transfers_its_learning_rate_and_the_standard_one_does_not():
    """At one learning rate, the loss after a few GD steps is about the same at every width
    in μP; in the standard parametrization the widest network diverges (its NTK grows ∝ n)."""
    def loss_after(parametrization, width):
        out = run_trial(TrialSpec(dataset="sphere", dim=8, teacher="network", n_train=64,
                                  n_eval=8, width=width, depth=3, bias_std=0.1, lr=0.05,
                                  steps=20, checkpoints=2, parametrization=parametrization,
                                  device="cpu"))
        return out.status, out.records[-1]["train_loss"]

    mup = [loss_after("mup", w) for w in (64, 512, 4096)]
    assert all(s == "completed" for s, _ in mup)
    losses = [v for _, v in mup]
    assert max(losses) / min(losses) < 1.5, losses
    status, _ = loss_after("standard", 4096)
    assert status == "diverged"


def test_the_limits_of_mup_are_the_ntk_kernel_and_the_constant_nngp():
    x = np.random.default_rng(3).normal(size=(5, 4))
    mup = analytic_kernels(x, depth=3, bias_std=SB, parametrization="mup")
    ntk = analytic_kernels(x, depth=3, bias_std=SB)
    np.testing.assert_array_equal(mup.ntk, ntk.ntk)
    np.testing.assert_array_equal(mup.nngp, np.full((5, 5), SB**2))


def test_a_mup_trial_starts_where_the_ntk_one_does_and_keeps_moving():
    """Same seed: Θ_η at init is the NTK net's Θ (equal init dist_inf); after training, the
    μP kernel has moved far more than the NTK one at the same width."""
    runs = {p: run_trial(TrialSpec(dataset="sphere", dim=8, teacher="network", n_train=32,
                                   n_eval=16, width=1024, depth=3, bias_std=0.1, lr=0.05,
                                   steps=30, checkpoints=2, parametrization=p,
                                   dtype="float64", device="cpu"))
            for p in ("ntk", "mup")}
    first = {p: r.records[0] for p, r in runs.items()}
    assert first["mup"]["dist_inf"] == pytest.approx(first["ntk"]["dist_inf"], rel=1e-9)
    last = {p: r.records[-1]["dist_init"] for p, r in runs.items()}
    assert last["mup"] > 10 * last["ntk"], last
