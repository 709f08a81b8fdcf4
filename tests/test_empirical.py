"""Empirical NTK against brute force (per-sample autograd J Jᵀ in float64), between its
methods, against Θ_∞ by Monte-Carlo, and tiled/sharded against untiled."""

import numpy as np
import pytest
import torch
from torch import nn

from ntksweep import MLP, analytic_kernels, empirical_ntk
from ntksweep.errors import UserError
from ntksweep.kernels import empirical, ntk_methods, tiling
from ntksweep.models import CNN, ResNet

MC_RTOL = 0.05  # relative Frobenius error allowed for a 50-network Monte-Carlo mean


def brute_force_ntk(model, x1, x2):
    """Θ[i, j, a, b] = Σ_p ∂_p f_a(x_i) ∂_p f_b(x_j): one autograd call per (point, output)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def jac(x):
        rows = []
        for i in range(x.shape[0]):
            out = model(x[i:i + 1]).reshape(-1)
            per_out = []
            for a in range(out.shape[0]):
                grads = torch.autograd.grad(out[a], params, retain_graph=True, allow_unused=True)
                per_out.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                          for g, p in zip(grads, params)]))
            rows.append(torch.stack(per_out))
        return torch.stack(rows)                       # (N, k, P)

    j1, j2 = jac(x1), jac(x2)
    return torch.einsum("ikp,jlp->ijkl", j1, j2).detach()


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "leaky_relu", "sin"])
@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("out_dim", [1, 3])
@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
def test_methods_equal_brute_force(activation, depth, out_dim, parametrization):
    model = MLP(3, 7, depth, activation=activation, out_dim=out_dim, bias_std=0.4,
                parametrization=parametrization, seed=depth, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    x2 = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    expected = brute_force_ntk(model, x1, x2)
    expected_sym = brute_force_ntk(model, x1, x1)
    for method in ("structured", "jacobian", "ntk_vps"):
        got = empirical_ntk(model, x1, x2, method=method)
        got_sym = empirical_ntk(model, x1, method=method)   # (·, ·, k, k) for any k
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=method)
        torch.testing.assert_close(got_sym, expected_sym, rtol=1e-10, atol=1e-12, msg=method)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def test_cnn_through_generic_paths():
    torch.manual_seed(0)
    model = SmallCNN().double()
    x1, x2 = torch.randn(4, 1, 6, 6, dtype=torch.float64), torch.randn(3, 1, 6, 6,
                                                                       dtype=torch.float64)
    expected = brute_force_ntk(model, x1, x2)
    for method in ("auto", "jacobian", "ntk_vps"):
        torch.testing.assert_close(empirical_ntk(model, x1, x2, method=method), expected,
                                   rtol=1e-10, atol=1e-12)
    trace = empirical_ntk(model, x1, x2, trace=True)
    torch.testing.assert_close(trace, expected.diagonal(dim1=2, dim2=3).mean(-1))
    # auto takes NTK-vector products only when one example's Jacobian does not fit
    assert empirical._choose_method(model, "auto", 2, 8, 1000, x1[:1]) == "ntk_vps"
    assert empirical._choose_method(model, "auto", 2, 8, None, x1[:1]) == "jacobian"


def test_model_is_left_unchanged():
    model = MLP(2, 8, 3, bias_std=0.1, seed=0)
    model.train()
    model(torch.randn(3, 2)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("structured", "jacobian", "ntk_vps"):
        empirical_ntk(model, torch.randn(4, 2), method=method)
    assert model.training
    for g, p in zip(grads, model.parameters()):
        assert torch.equal(g, p.grad)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
def test_monte_carlo_mean_is_the_analytic_limit(parametrization):
    # The mean empirical NTK over independent width-1024 networks is Θ_∞ (NTK
    # parametrization) or its width-dependent standard counterpart: this pins the
    # parametrization and the 1/√n scaling to Jacot's.
    g = np.linspace(0, np.pi, 6)
    x = torch.tensor(np.stack([np.cos(g), np.sin(g)], 1))
    width, depth, nets = 1024, 3, 50
    kw = dict(activation="relu", weight_std=1.2, bias_std=0.2)
    mean = sum(empirical_ntk(MLP(2, width, depth, seed=s, parametrization=parametrization,
                                 dtype=torch.float64, **kw), x, method="structured",
                             trace=True)
               for s in range(nets)) / nets
    limit = analytic_kernels(x, depth=depth, parametrization=parametrization, width=width,
                             **kw).ntk
    err = np.linalg.norm(mean.numpy() - limit) / np.linalg.norm(limit)
    assert err < MC_RTOL, err
    # one network is further off than the mean of 50 (the fluctuations average out)
    one = empirical_ntk(MLP(2, 64, depth, seed=999, parametrization=parametrization,
                            dtype=torch.float64, **kw), x, trace=True).numpy()
    if parametrization == "ntk":
        assert np.linalg.norm(one - limit) / np.linalg.norm(limit) > err


@pytest.mark.parametrize("block", [1, 3, 5, 100])
@pytest.mark.parametrize("symmetric", [True, False])
def test_tiled_equals_untiled(block, symmetric):
    model = MLP(4, 16, 3, out_dim=2, bias_std=0.1, seed=1, dtype=torch.float64)
    x1, x2 = torch.randn(11, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    other = None if symmetric else x2
    full = empirical_ntk(model, x1, other)
    for method in ("structured", "ntk_vps"):
        tiled = empirical_ntk(model, x1, other, method=method, block_size=block)
        torch.testing.assert_close(tiled, full, rtol=1e-12, atol=1e-12)


def test_symmetric_tiles_computed_once():
    tiles = tiling.plan_tiles(10, 10, 3, symmetric=True)
    assert len(tiles) == 4 * 5 // 2
    assert all(t.r0 <= t.c0 for t in tiles)
    covered = np.zeros((10, 10), int)
    for t in tiles:
        covered[t.r0:t.r1, t.c0:t.c1] += 1
        if t.r0 != t.c0:
            covered[t.c0:t.c1, t.r0:t.r1] += 1
    assert (covered == 1).all()


def test_memory_budget_bounds_the_tiles():
    model = MLP(4, 64, 3, seed=0, dtype=torch.float64)
    x = torch.randn(200, 4, dtype=torch.float64)
    full = empirical_ntk(model, x)
    budget = tiling.tile_bytes(model, "structured", 32, 32, 1, 8)
    seen = []

    class Recording(tiling.SerialExecutor):
        def map_tiles(self, computation, tiles):
            seen.extend(tiles)
            return super().map_tiles(computation, tiles)

    tiled = empirical_ntk(model, x, memory_budget=budget, executor=Recording())
    torch.testing.assert_close(tiled, full, rtol=1e-12, atol=1e-12)
    assert len(seen) > 1
    assert all(tiling.tile_bytes(model, "structured", t.r1 - t.r0, t.c1 - t.c0, 1, 8) <= budget
               for t in seen)
    with pytest.raises(ValueError, match="too small for even a 1×1 tile"):
        empirical_ntk(model, x, memory_budget=100)


@pytest.mark.parametrize("make, shape, budget", [
    (lambda: MLP(3, 8, 2, seed=0, dtype=torch.float64), (3,), None),
    (lambda: CNN(2, 6, 3, out_dim=2, bias_std=0.1, seed=0, dtype=torch.float64), (2, 5, 5),
     2**20),
    (lambda: ResNet(1, 6, 4, seed=0, dtype=torch.float64), (1, 5, 5), None),
], ids=["mlp", "cnn-under-a-budget", "resnet"])
def test_out_of_memory_tile_is_split_and_retried(monkeypatch, make, shape, budget):
    # No GPU is needed to check the recovery logic: a method that runs out of memory on
    # any tile larger than 2×2 must still produce the exact kernel through sub-tiles
    # (a conv net's pieces keep their memory budget).
    model = make()
    x = torch.randn(9, *shape, dtype=torch.float64)
    full = empirical_ntk(model, x)
    real = ntk_methods.METHODS["structured"]
    calls = []

    def flaky(m, a, b=None, **options):
        calls.append(a.shape[0])
        assert options.get("memory_budget") == budget
        if a.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("simulated: tile too large")
        return real(m, a, b, **options)

    monkeypatch.setitem(ntk_methods.METHODS, "structured", flaky)
    got = empirical_ntk(model, x, method="structured", memory_budget=budget)
    torch.testing.assert_close(got, full, rtol=1e-12, atol=1e-12)
    assert max(calls) == 9 and min(calls) <= 2


@pytest.mark.parametrize("make, shape", [
    (lambda: MLP(5, 32, 3, out_dim=2, bias_std=0.1, seed=3, dtype=torch.float64), (5,)),
    (lambda: CNN(2, 8, 3, out_dim=2, bias_std=0.1, seed=3, dtype=torch.float64), (2, 5, 5)),
    (lambda: ResNet(1, 8, 4, seed=3, dtype=torch.float64), (1, 6, 6)),
])
def test_sharded_over_two_ray_actors_equals_unsharded(ray_local, make, shape):
    from ntksweep.sweep import RayTileExecutor

    model = make()
    x = torch.randn(23, *shape, dtype=torch.float64)
    full = empirical_ntk(model, x)
    with RayTileExecutor(num_actors=2) as ex:
        sharded = empirical_ntk(model, x, block_size=6, executor=ex)
        assert len(ex.devices) == 2
    torch.testing.assert_close(sharded, full, rtol=1e-12, atol=1e-12)


def test_bad_inputs():
    model = MLP(3, 8, 2, seed=0)
    with pytest.raises(ValueError, match="x1 has 4 features but the model expects in_dim=3"):
        empirical_ntk(model, torch.randn(2, 4))
    with pytest.raises(ValueError, match="same input shape"):
        empirical_ntk(model, torch.randn(2, 3), torch.randn(2, 5))
    with pytest.raises(ValueError, match="NaN or inf"):
        empirical_ntk(model, torch.tensor([[1.0, float("nan"), 0.0]]))
    frozen = MLP(3, 8, 2, seed=0).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        empirical_ntk(frozen, torch.randn(2, 3))
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        empirical_ntk(model, torch.randn(2, 3), method="fast")
    with pytest.raises(ValueError, match="needs an ntksweep.models.MLP"):
        empirical_ntk(SmallCNN(), torch.randn(2, 1, 6, 6), method="structured")


@pytest.mark.parametrize("method", ["structured", "jacobian", "ntk_vps"])
@pytest.mark.parametrize("make, shape", [
    (lambda: MLP(4, 16, 3, out_dim=3, bias_std=0.2, seed=4, dtype=torch.float64), (4,)),
    (lambda: CNN(1, 5, 3, out_dim=3, bias_std=0.2, seed=4, dtype=torch.float64), (1, 5, 5)),
    (lambda: ResNet(1, 5, 3, out_dim=3, parametrization="mup", seed=4, dtype=torch.float64),
     (1, 5, 5)),
])
def test_the_per_logit_trace_is_computed_directly_and_equals_the_full_kernels(method, make,
                                                                             shape):
    """trace=True forms only the k diagonal output pairs: equal to the mean of the full
    kernel's diagonal, symmetric, cross, tiled and μP-weighted alike."""
    model = make()
    x1, x2 = torch.randn(7, *shape, dtype=torch.float64), torch.randn(4, *shape,
                                                                     dtype=torch.float64)
    for a, b in ((x1, None), (x1, x2)):
        full = empirical_ntk(model, a, b, method=method)
        want = full.diagonal(dim1=2, dim2=3).mean(-1)
        for block in (None, 3):
            got = empirical_ntk(model, a, b, method=method, trace=True, block_size=block)
            torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-13)


# --- users' own modules: embeddings, extra arguments, dict outputs, attention ---------------
class _TokenClassifier(torch.nn.Module):
    """An embedding, a transformer block (its fused attention has no forward-mode AD), a
    pooling chosen by a keyword argument, and a dict of outputs."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 8)
        self.block = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.5, batch_first=True)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, tokens, pool="mean"):
        h = self.block(self.emb(tokens))
        return {"logits": self.out(h.mean(1) if pool == "mean" else h[:, 0]), "hidden": h}


def _brute_ntk(model, x, pick):
    """Θ = J Jᵀ from one autograd.grad per example and output, the model in eval mode."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(x)):
        out = pick(model(x[i:i + 1]))[0]
        rows += [torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            out[c], params, retain_graph=True, allow_unused=False)]) for c in range(len(out))]
    j = torch.stack(rows).reshape(len(x), -1, rows[0].numel())
    return torch.einsum("ikp,jlp->ijkl", j, j)


def test_a_users_transformer_with_token_ids_arguments_and_dict_outputs():
    """Token ids stay integers, a keyword argument reaches every call, the dict's logits are
    the output; 'auto' takes Jacobians (the fused attention has no forward-mode AD) and the
    kernel equals J Jᵀ by autograd, in eval mode (dropout 0.5 would make it random)."""
    torch.manual_seed(0)
    model = _TokenClassifier().double()
    tokens = torch.randint(0, 20, (5, 6))
    model.train()
    theta = empirical_ntk(model, tokens, output="logits", model_kwargs={"pool": "first"})
    assert model.training                                     # the mode is given back
    again = empirical_ntk(model, tokens, output=lambda out: out["logits"],
                          model_kwargs={"pool": "first"})
    reference = _brute_first(model, tokens)
    assert theta.shape == (5, 5, 3, 3)
    assert (theta - reference).abs().max() <= 1e-9 * reference.abs().max()
    assert torch.equal(theta, again)


def _brute_first(model, tokens):
    class First(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x, pool="first")

    return _brute_ntk(First(model), tokens, lambda out: out["logits"])


@pytest.mark.parametrize("call,message", [
    (lambda m, x: empirical_ntk(m, x), "pass output= its key"),
    (lambda m, x: empirical_ntk(m, x, output="logits", method="ntk_vps"),
     "use method='jacobian'"),
    (lambda m, x: empirical_ntk(m, x, output="nope"), "output='nope' failed"),
    (lambda m, x: empirical_ntk(m, x, output=lambda out: out["logits"].argmax(1)),
     "floating-point output"),
])
def test_what_a_users_module_is_told(call, message):
    model = _TokenClassifier().double()
    with pytest.raises(UserError, match=message):
        call(model, torch.randint(0, 20, (3, 4)))


@pytest.mark.parametrize("rows, cols", [(64, 64), (130, 1 << 14), (600, 1024)])
def test_a_gram_from_the_panels_above_its_diagonal_is_the_whole_product(rows, cols):
    """``layerwise._add_gram`` adds w · a aᵀ on and above the diagonal: in one product
    (small), or in row panels (uneven ones: 130 and 600 rows); ``_mirror_upper`` completes
    it."""
    from ntksweep.kernels.layerwise import _add_gram, _mirror_upper

    a = torch.randn(rows, cols, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = torch.full((rows, rows), 0.5, dtype=torch.float64)
    _add_gram(out, a, 0.25)
    torch.testing.assert_close(_mirror_upper(out), 0.5 + 0.25 * a @ a.T, rtol=1e-12, atol=1e-9)
