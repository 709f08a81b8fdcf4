import math

import pytest
import torch

from ntksweep import ACTIVATIONS
from ntksweep.models import MLP


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_registered_derivative_equals_autograd(name):
    act = ACTIVATIONS[name]
    x = torch.linspace(-4, 4, 201, dtype=torch.float64)
    x = torch.cat([x, torch.zeros(1, dtype=torch.float64)]).requires_grad_(True)
    (grad,) = torch.autograd.grad(act.fn(x).sum(), x)
    torch.testing.assert_close(act.derivative(x.detach()), grad, rtol=1e-12, atol=1e-12)


def test_shapes_and_depth_convention():
    net = MLP(5, 7, depth=3, out_dim=2, seed=0)
    assert [tuple(l.weight.shape) for l in net.layers] == [(7, 5), (7, 7), (2, 7)]
    assert net(torch.randn(4, 5)).shape == (4, 2)
    assert MLP(5, 7, depth=1, seed=0)(torch.randn(3, 5)).shape == (3, 1)


def test_seed_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = MLP(3, 16, 3, seed=7), MLP(3, 16, 3, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    c = MLP(3, 16, 3, seed=8)
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)
    d = MLP(3, 16, 3, seed=7, dtype=torch.float64)
    torch.testing.assert_close(d.layers[1].weight.float(), a.layers[1].weight)


def test_parametrizations_realise_the_same_function_distribution():
    # NTK: f = (σw/√n) W a + σb b with W ~ N(0,1); standard: W ~ N(0, σw²/n).
    # Same seed ⇒ the same function, different parameters.
    x = torch.randn(6, 4, dtype=torch.float64)
    ntk = MLP(4, 32, 3, weight_std=1.3, bias_std=0.2, seed=3, dtype=torch.float64)
    std = MLP(4, 32, 3, weight_std=1.3, bias_std=0.2, seed=3, dtype=torch.float64,
              parametrization="standard")
    torch.testing.assert_close(ntk(x), std(x))
    assert ntk.layers[1].weight.std().item() == pytest.approx(1.0, rel=0.1)
    assert std.layers[1].weight.std().item() == pytest.approx(1.3 / math.sqrt(32), rel=0.1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=0), "depth must be"),
    (dict(depth=3, width=[4]), "width must be"),
    (dict(depth=2, activation="nope"), "unknown activation"),
    (dict(depth=2, parametrization="x"), "parametrization"),
    (dict(depth=2, bias_std=-1.0), "bias_std"),
])
def test_invalid_arguments(kwargs, match):
    kwargs = {"width": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        MLP(3, **kwargs)
