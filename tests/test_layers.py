"""The layer algebra (ntksweep.layers): each layer's limit against mathematics — closed
forms derived here, an independent float64 implementation by explicit sums over position
pairs, Monte-Carlo over wide networks — and its finite module against the networks and the
kernels the presets reproduce."""

import itertools
import math

import numpy as np
import pytest
import torch

import ntksweep
from ntksweep import layers as nl
from ntksweep.architectures import REGISTRY
from ntksweep.errors import SpecError, UserError


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


# --- the presets are today's networks: the same limits, the same weights --------------------
@pytest.mark.parametrize("activation", ["relu", "erf", "tanh"])
def test_the_mlp_composition_has_the_mlp_limit(activation):
    x = np.random.default_rng(0).normal(size=(7, 3))
    ref = ntksweep.analytic_kernels(x, depth=4, activation=activation, bias_std=0.1)
    got = nl.mlp(64, 4, activation=activation, bias_std=0.1).kernels(x)
    assert _rel(got.ntk, ref.ntk) < 1e-12 and _rel(got.nngp, ref.nngp) < 1e-12
    assert (got.depth, got.activation, got.bias_std) == (4, activation, 0.1)


@pytest.mark.parametrize("architecture,options", [
    ("cnn", dict(readout="gap")), ("cnn", dict(readout="flatten")),
    ("cnn", dict(readout="gap", padding="valid")), ("cnn", dict(readout="flatten",
                                                                padding="valid")),
    ("resnet", {})])
def test_the_conv_compositions_have_the_conv_limits(architecture, options):
    imgs = np.random.default_rng(1).normal(size=(5, 2, 8, 8))
    ref = ntksweep.analytic_kernels(imgs, architecture=architecture, depth=4, **options)
    net = nl.preset(architecture, width=32, depth=4, **options)
    got = net.kernels(imgs)
    assert _rel(got.ntk, ref.ntk) < 1e-12 and _rel(got.nngp, ref.nngp) < 1e-12
    cross = net.kernels(imgs[:2], imgs[2:], memory_budget=1 << 16)    # tiles of one pair
    assert _rel(cross.ntk, ref.ntk[:2, 2:]) < 1e-12


@pytest.mark.parametrize("parametrization", ["ntk", "standard", "mup"])
def test_the_presets_modules_are_the_models_networks_weight_for_weight(parametrization):
    x = torch.randn(4, 2, 8, 8)
    pairs = [
        (nl.cnn(16, 4, out_dim=3, readout="flatten").module((2, 8, 8), seed=3,
                                                             parametrization=parametrization),
         ntksweep.CNN(2, 16, 4, out_dim=3, readout="flatten", image_size=(8, 8), seed=3,
                      parametrization=parametrization), x),
        (nl.resnet(16, 4, out_dim=3).module((2, 8, 8), seed=3,
                                            parametrization=parametrization),
         ntksweep.ResNet(2, 16, 4, out_dim=3, seed=3, parametrization=parametrization), x),
        (nl.mlp(16, 3, out_dim=2).module((5,), seed=1, parametrization=parametrization),
         ntksweep.MLP(5, 16, 3, out_dim=2, seed=1, parametrization=parametrization),
         torch.randn(4, 5)),
    ]
    for ours, theirs, inputs in pairs:
        assert torch.equal(ours(inputs), theirs(inputs))
        theirs_lr = ntksweep.models.layers.parameter_lr_factors(theirs)
        assert sorted(ntksweep.models.layers.parameter_lr_factors(ours).values()) == \
            sorted(theirs_lr.values())


# --- an independent implementation: explicit sums over every pair of positions -------------
def _relu_dual(k11, k12, k22):
    s = np.sqrt(k11 * k22)
    theta = np.arccos(np.clip(k12 / s, -1, 1))
    return (s / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * np.cos(theta)),
            (np.pi - theta) / (2 * np.pi))


def _brute_limit(x, layers):
    """Σ and Θ over the joint set of inputs (N, N, P, P) by loops over positions, one
    layer after the other; the same per-layer rules as the papers state them."""
    n, c, h, w = x.shape
    pos = list(itertools.product(range(h), range(w)))
    sig = np.einsum("icp,jcq->ijpq", x.reshape(n, c, -1), x.reshape(n, c, -1)) / c
    th = np.zeros_like(sig)
    for kind, *arg in layers:
        if kind == "conv":                                     # 3×3 same, σ_w, σ_b
            sw, sb = arg
            new_s, new_t = np.zeros_like(sig), np.zeros_like(th)
            for (a, (pi, pj)), (b, (qi, qj)) in itertools.product(enumerate(pos), repeat=2):
                for di, dj in itertools.product((-1, 0, 1), repeat=2):
                    p2, q2 = (pi + di, pj + dj), (qi + di, qj + dj)
                    if all(0 <= v < h for v in (*p2, *q2)):
                        new_s[:, :, a, b] += sig[:, :, p2[0] * w + p2[1], q2[0] * w + q2[1]]
                        new_t[:, :, a, b] += th[:, :, p2[0] * w + p2[1], q2[0] * w + q2[1]]
            sig = sw**2 * new_s / 9 + sb**2
            th = sw**2 * new_t / 9 + sig
        elif kind == "relu":
            var = np.einsum("iipp->ip", sig)
            e, e_dot = _relu_dual(var[:, None, :, None], sig, var[None, :, None, :])
            sig, th = e, e_dot * th
        elif kind == "pool":                                   # window, stride, valid
            win, step = arg
            out = (h - win) // step + 1
            cells = [[(i * step + a) * w + (j * step + b) for a in range(win)
                      for b in range(win)] for i in range(out) for j in range(out)]
            sig = np.array([[[[sig[u, v][np.ix_(cp, cq)].mean() for cq in cells]
                              for cp in cells] for v in range(n)] for u in range(n)])
            th = np.array([[[[th[u, v][np.ix_(cp, cq)].mean() for cq in cells]
                             for cp in cells] for v in range(n)] for u in range(n)])
            h = w = out
            pos = list(itertools.product(range(h), range(w)))
        elif kind == "gap_dense":                              # mean over pairs, Dense
            sw, sb = arg
            s = sw**2 * sig.mean((2, 3)) + sb**2
            return sw**2 * th.mean((2, 3)) + s, s
    raise AssertionError("the brute-force net must end in gap_dense")


@pytest.mark.parametrize("window,stride", [(2, None), (2, 1), (3, 1), (3, None)])
def test_pooling_nets_match_explicit_sums_over_position_pairs(window, stride):
    x = np.random.default_rng(2).normal(size=(4, 2, 4, 4))
    sw, sb = 1.3, 0.2
    net = nl.serial(nl.Conv(8, weight_std=sw, bias_std=sb), nl.Activation("relu"),
                    nl.AvgPool(window, stride), nl.Conv(8, weight_std=sw, bias_std=sb),
                    nl.Activation("relu"), nl.GlobalAvgPool(),
                    nl.Dense(1, weight_std=sw, bias_std=sb))
    theta, sigma = _brute_limit(x, [("conv", sw, sb), ("relu",), ("pool", window,
                                                                  stride or window),
                                    ("conv", sw, sb), ("relu",), ("gap_dense", sw, sb)])
    got = net.kernels(x)
    assert _rel(got.ntk, theta) < 1e-12 and _rel(got.nngp, sigma) < 1e-12
    cross = net.kernels(x[:1], x[1:])
    assert _rel(cross.ntk, theta[:1, 1:]) < 1e-12


# --- closed forms -----------------------------------------------------------------------
def test_a_window_1_pool_is_the_identity():
    imgs = np.random.default_rng(3).normal(size=(4, 1, 6, 6))
    plain = nl.cnn(8, 3).kernels(imgs)
    pooled = nl.serial(nl.Conv(8), nl.Activation("relu"), nl.AvgPool(1), nl.Conv(8),
                       nl.Activation("relu"), nl.GlobalAvgPool(), nl.Dense(1)).kernels(imgs)
    assert _rel(pooled.ntk, plain.ntk) < 1e-14 and _rel(pooled.nngp, plain.nngp) < 1e-14


def test_myrtle_on_images_that_pool_to_one_pixel():
    """On 4×4 images Myrtle-5's last stage sees 1×1 images: a 3×3 'same' convolution there
    reads only its centre tap, a dense layer with σ_w/3 (the other 8 of its k² = 9 taps
    see zero padding), and the global mean of one pixel is that pixel."""
    imgs = np.random.default_rng(4).normal(size=(5, 1, 4, 4))
    sw, sb = 1.2, 0.3
    w = dict(weight_std=sw, bias_std=sb)
    relu = nl.Activation("relu")
    as_dense = nl.serial(nl.Conv(8, **w), relu, nl.Conv(8, **w), relu, nl.AvgPool(2),
                         nl.Conv(8, **w), relu, nl.AvgPool(2), nl.Flatten(),
                         nl.Dense(8, weight_std=sw / 3, bias_std=sb), relu, nl.Dense(1, **w))
    got = nl.myrtle(8, 5, **w).kernels(imgs)
    want = as_dense.kernels(imgs)
    assert _rel(got.ntk, want.ntk) < 1e-13 and _rel(got.nngp, want.nngp) < 1e-13


def test_layernorm_on_inputs_of_equal_norm_is_a_rescaled_dense_layer():
    """After Dense on inputs of one norm every variance is c = σ_w²|x|²/d + σ_b², and
    LayerNorm divides Σ and Θ by c: the same as σ_w/√c and σ_b/√c in that Dense."""
    x = np.random.default_rng(5).normal(size=(6, 4))
    x *= 1.7 / np.linalg.norm(x, axis=1, keepdims=True)
    sw, sb = 1.4, 0.3
    c = sw**2 * 1.7**2 / 4 + sb**2
    tail = [nl.Activation("erf"), nl.Dense(32), nl.Activation("relu"), nl.Dense(1)]
    normed = nl.serial(nl.Dense(32, weight_std=sw, bias_std=sb), nl.LayerNorm(), *tail)
    scaled = nl.serial(nl.Dense(32, weight_std=sw / math.sqrt(c), bias_std=sb / math.sqrt(c)),
                       *tail)
    got, want = normed.kernels(x), scaled.kernels(x)
    assert _rel(got.ntk, want.ntk) < 1e-13 and _rel(got.nngp, want.nngp) < 1e-13


def test_layernorm_of_a_zero_input_is_zero_as_the_finite_modules_eps_makes_it():
    """A zero input without bias has zero variance: the finite LayerNorm's eps maps it to 0,
    so its features, its output and (σ_b = 0) its gradients vanish; the limit's row is 0
    too (not 0/0; the ReLU dual's variance floor leaves ~1e-151), and the other entries are
    those without it."""
    x = np.random.default_rng(6).normal(size=(4, 3))
    x[2] = 0.0
    net = nl.serial(nl.Dense(64, bias_std=0.0), nl.LayerNorm(), nl.Activation("relu"),
                    nl.Dense(1, bias_std=0.0))
    limit = net.kernels(x)
    for kernel in (limit.ntk, limit.nngp):
        assert np.isfinite(kernel).all() and np.abs(kernel[2]).max() < 1e-100
        assert np.abs(kernel[:, 2]).max() < 1e-100
    rest = net.kernels(x[[0, 1, 3]])
    assert _rel(limit.ntk[np.ix_([0, 1, 3], [0, 1, 3])], rest.ntk) < 1e-14
    model = net.module((3,), seed=0, dtype=torch.float64)
    theta = ntksweep.empirical_ntk(model, torch.from_numpy(x))
    assert not theta[2].any() and model(torch.from_numpy(x))[2].abs().max() == 0


# --- finite networks: the exact empirical NTK, and the mean over wide ones ------------------
def _layernorm_net(width: int):
    return nl.serial(nl.Dense(width), nl.LayerNorm(), nl.Activation("relu"), nl.Dense(width),
                     nl.LayerNorm(), nl.Activation("erf"), nl.Dense(2))


def _brute_ntk(model, x: torch.Tensor) -> torch.Tensor:
    """Θ (n, n, k, k) from autograd's per-example, per-output gradients: J·Jᵀ."""
    params = [p for p in model.parameters() if p.requires_grad]
    k = model(x[:1]).numel()
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        model(x[i:i + 1]).reshape(-1)[c], params)]) for i in range(len(x)) for c in range(k)]
    j = torch.stack(rows).reshape(len(x), k, -1)
    return torch.einsum("ikp,jlp->ijkl", j, j)


@pytest.mark.parametrize("name", ["myrtle", "layernorm", "transformer", "sqrt-relu"])
def test_the_structured_ntk_of_compositions_is_jacobian_times_jacobian(name):
    """The per-layer structured NTK — attention's projections are positionwise dense layers
    whose output gradients carry the attention — equals autograd's J·Jᵀ."""
    if name == "myrtle":
        net, x = nl.myrtle(6, 5, out_dim=2), torch.randn(5, 2, 8, 8, dtype=torch.float64)
    elif name == "layernorm":
        net, x = _layernorm_net(12), torch.randn(5, 3, dtype=torch.float64)
    else:
        options = dict(attention="relu", attention_scaling="sqrt") if name == "sqrt-relu" \
            else {}
        net = nl.transformer(8, 4, out_dim=2, heads=2, **options)
        x = torch.randn(5, 3, 6, dtype=torch.float64)                 # (n, d, T)
    model = net.module(tuple(x.shape[1:]), seed=0, dtype=torch.float64)
    structured = ntksweep.empirical_ntk(model, x, method="structured")
    brute = _brute_ntk(model, x)
    assert structured.shape == (5, 5, 2, 2)
    assert (structured - brute).abs().max() <= 1e-9 * brute.abs().max()
    tiled = ntksweep.empirical_ntk(model, x, x[:3], method="structured", block_size=2,
                                   memory_budget=1 << 20, trace=True)
    assert (tiled - brute[:, :3].diagonal(dim1=2, dim2=3).mean(-1)).abs().max() \
        <= 1e-9 * brute.abs().max()


def test_a_layer_applied_twice_is_not_taken_layer_by_layer():
    """A shared layer sees two inputs per forward pass: 'auto' takes Jacobians (equal to
    J·Jᵀ), and 'structured' refuses in one line."""
    from ntksweep.models.layers import PositionwiseDense

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.shared = PositionwiseDense(torch.randn(3, 3, generator=g, dtype=torch.float64),
                                            torch.randn(3, dtype=torch.float64), 0.5, 0.1)

        def forward(self, x):
            return self.shared(torch.tanh(self.shared(x))).mean(-1)

    model, x = Twice(), torch.randn(4, 3, 5, dtype=torch.float64)
    brute = _brute_ntk(model, x)
    assert (ntksweep.empirical_ntk(model, x) - brute).abs().max() <= 1e-9 * brute.abs().max()
    with pytest.raises(UserError, match="applied once per forward pass"):
        ntksweep.empirical_ntk(model, x, method="structured")


def _monte_carlo(net, x: np.ndarray, seeds: int, *, spread: bool = False):
    """‖mean Θ_0 − Θ_∞‖ / ‖Θ_∞‖ over ``seeds`` networks (and, with ``spread``, the standard
    error of that mean in the same units: √(Σ var / seeds) / ‖Θ_∞‖)."""
    limit = net.kernels(x).ntk
    thetas = np.stack([ntksweep.empirical_ntk(
        net.module(x.shape[1:], seed=s, dtype=torch.float64), torch.from_numpy(x),
        trace=True).numpy() for s in range(seeds)])
    scale = np.linalg.norm(limit)
    deviation = float(np.linalg.norm(thetas.mean(0) - limit) / scale)
    if not spread:
        return deviation
    return deviation, float(np.sqrt(thetas.var(0, ddof=1).sum() / seeds) / scale)


def test_wide_layernorm_nets_average_to_their_limit():
    x = np.random.default_rng(6).normal(size=(8, 4))
    assert _monte_carlo(_layernorm_net(512), x, 30) < 0.03      # measured 0.012


@pytest.mark.slow
def test_wide_myrtle_nets_average_to_their_limit():
    imgs = np.random.default_rng(0).normal(size=(6, 1, 8, 8))
    assert _monte_carlo(nl.myrtle(256, 5), imgs, 30) < 0.03      # measured 0.0095


# --- what a wrong composition is told ---------------------------------------------------
@pytest.mark.parametrize("build,message", [
    (lambda: nl.serial(nl.Conv(4), nl.Dense(1)).kernels(np.ones((2, 1, 4, 4))),
     r"maps inputs \(1, 4, 4\) to \(1, 4, 4\)"),      # a Dense acts at every position
    (lambda: nl.serial(nl.Conv(4), nl.Activation("relu")).kernels(np.ones((2, 1, 4, 4))),
     "end it with Flatten"),
    (lambda: nl.serial(nl.Conv(4), nl.residual(nl.Conv(8)), nl.GlobalAvgPool(), nl.Dense(1)
                       ).module((1, 4, 4)), "keep its input's shape"),
    (lambda: nl.myrtle(8, 6), "myrtle depth must be one of 5, 7, 10"),
    (lambda: nl.serial(nl.Conv(4), nl.AvgPool(8), nl.GlobalAvgPool(), nl.Dense(1)
                       ).kernels(np.ones((2, 1, 4, 4))), "does not fit"),
    (lambda: nl.serial(nl.Activation("relu"), nl.Dense(1)).kernels(np.ones((2, 3)),
                                                                   parametrization="standard"),
     "NTK parametrization"),
    (lambda: nl.serial(nl.Activation("relu")), None),
    (lambda: nl.Activation("swish"), "unknown activation"),
])
def test_a_wrong_composition_gets_one_clear_line(build, message):
    if message is None:   # an activation alone is a layer, not yet a network
        with pytest.raises(SpecError, match="nothing to train"):
            build().kernels(np.ones((2, 3)))
        return
    with pytest.raises(SpecError, match=message):
        build()


# --- the new presets in a sweep, end to end -----------------------------------------------
@pytest.mark.slow
def test_myrtle_and_transformer_sweeps_run_end_to_end_on_the_embedded_default(ray_local,
                                                                             tmp_path):
    """Ray, SQLite MLflow and Parquet as `ntksweep run` uses them: Myrtle-5 on digits, and
    transformers on the tokens task with a limit (linear scaling) and without (sqrt): every
    trial once in each store, the columns against Θ_∞ NaN exactly where there is none."""
    from mlflow.tracking import MlflowClient

    from ntksweep.sweep import run_sweep
    from ntksweep.sweep_spec import load_sweep_spec

    spec = load_sweep_spec({
        "name": "presets", "output_dir": str(tmp_path / "presets"),
        "base": {"steps": 8, "checkpoints": 3, "n_train": 24, "n_eval": 12, "n_test": 24,
                 "width": 16, "lr": 0.5},
        "zip": [{"architecture": ["myrtle", "transformer", "transformer"],
                 "dataset": ["digits", "tokens", "tokens"], "depth": [5, 3, 3],
                 "attention_scaling": ["linear", "linear", "sqrt"]}]})
    summary = run_sweep(spec, quiet=True)
    assert summary.counts == {"completed": 3}
    trials, ckpts = ntksweep.load_results(summary.out_dir)
    limited = trials.attention_scaling == "linear"
    assert limited.sum() == 2 and (trials[limited].init_dist_inf > 0).all()
    assert trials[~limited].init_dist_inf.isna().all()
    assert len(ckpts) == 9 and ckpts.dist_init.notna().all() and ckpts.test_loss.notna().all()
    # Θ_0's regression on every transformer, the one kernel a network without a limit has
    assert ckpts[ckpts.architecture == "transformer"].test_loss_kr_init.notna().all()
    client = MlflowClient(summary.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("presets").experiment_id],
                              "tags.`ntksweep.role` = 'trial'")
    assert sorted(r.data.params["architecture"] for r in runs) == \
        ["myrtle", "transformer", "transformer"]


# --- attention (Hron et al. 2020, linear scaling) -----------------------------------------
def test_attention_over_one_token_is_an_affine_layer_with_two_value_paths():
    """With one token every attention weight is 1: Σ' = σ_w² Σ + σ_b² and
    Θ' = σ_w² Θ + 2 σ_w² Σ + σ_b² (the value and output weights each add σ_w² Σ)."""
    x = np.random.default_rng(7).normal(size=(5, 3, 1))                 # (n, C, T = 1)
    sw, sb, rw, rb = 1.3, 0.2, 0.8, 0.4
    net = nl.serial(nl.SelfAttention(8, heads=2, weight_std=sw, bias_std=sb),
                    nl.GlobalAvgPool(), nl.Dense(1, weight_std=rw, bias_std=rb))
    s0 = np.einsum("ict,jct->ij", x, x) / 3
    s1, t1 = sw**2 * s0 + sb**2, 2 * sw**2 * s0 + sb**2
    s2 = rw**2 * s1 + rb**2
    got = net.kernels(x)
    assert _rel(got.nngp, s2) < 1e-13 and _rel(got.ntk, rw**2 * t1 + s2) < 1e-13


def _softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_attention_matches_explicit_sums_over_token_pairs():
    """Dense, LayerNorm, attention, mean, Dense on sequences, by loops over every pair of
    inputs and tokens of the joint covariance (the paper's formulas written out)."""
    x = np.random.default_rng(8).normal(size=(4, 3, 5))                 # (n, C, T)
    qk, sw, sb = 2.0, 1.1, 0.3
    net = nl.serial(nl.Dense(16, weight_std=sw, bias_std=sb), nl.LayerNorm(),
                    nl.SelfAttention(16, heads=2, query_key_std=qk, weight_std=sw,
                                     bias_std=sb), nl.GlobalAvgPool(), nl.Dense(1))
    n, _, t = x.shape
    s = np.einsum("ict,jcu->ijtu", x, x) / 3 * sw**2 + sb**2             # Dense
    th = s.copy()
    var = np.einsum("iitt->it", s)
    s, th = (m / np.sqrt(var[:, None, :, None] * var[None, :, None, :]) for m in (s, th))
    g = [_softmax(qk * s[i, i]) for i in range(n)]                       # (T, T) per input
    s2, t2 = np.zeros_like(s), np.zeros_like(th)
    for i, j, a, b in itertools.product(range(n), range(n), range(t), range(t)):
        gs = sum(g[i][a, p] * s[i, j, p, q] * g[j][b, q] for p in range(t) for q in range(t))
        gt = sum(g[i][a, p] * th[i, j, p, q] * g[j][b, q] for p in range(t) for q in range(t))
        s2[i, j, a, b] = sw**2 * gs + sb**2
        t2[i, j, a, b] = sw**2 * gt + 2 * sw**2 * gs + sb**2
    sig = s2.mean((2, 3)) + 0.1**2
    want = t2.mean((2, 3)) + sig
    got = net.kernels(x)
    assert _rel(got.nngp, sig) < 1e-12 and _rel(got.ntk, want) < 1e-12
    assert _rel(net.kernels(x[:1], x[1:]).ntk, want[:1, 1:]) < 1e-12


@pytest.mark.parametrize("mechanism", ["softmax", "identity"])
def test_wide_attention_nets_average_to_their_limit(mechanism):
    """The mean of 30 networks is within three standard errors of Θ_∞ (plus 1 % for the
    O(1/n) bias). Identity attention multiplies Gaussians up to the sixth power in Θ: its
    networks spread ~26 % about Θ_∞ at width 512 (softmax's ~13 %), so 30 of them pin the
    mean to ~5 % (2.4 %); measured deviations 10 % and 2.4 %."""
    x = np.random.default_rng(9).normal(size=(6, 3, 5))
    x /= np.sqrt((x**2).mean(1, keepdims=True))                          # unit-variance tokens
    net = nl.serial(nl.Dense(512), nl.SelfAttention(512, heads=4, mechanism=mechanism,
                                                    query_key_std=1.5),
                    nl.Activation("relu"), nl.GlobalAvgPool(), nl.Dense(1))
    deviation, error = _monte_carlo(net, x, 30, spread=True)
    assert deviation < 3 * error + 0.01


@pytest.mark.slow
def test_wide_transformers_average_to_their_limit():
    """The preset: embedding, two pre-norm blocks (attention, MLP), LayerNorm, mean,
    readout, at width 512 with 4 heads and with 1 (linear scaling concentrates either way)."""
    x = np.swapaxes(np.random.default_rng(0).normal(size=(6, 5, 4)), 1, 2).copy()
    for heads in (4, 1):
        assert _monte_carlo(nl.transformer(512, 4, heads=heads), x, 30) < 0.03  # 0.009, 0.008


def test_a_transformers_ntk_is_jacobian_times_jacobian_and_its_limit_reads_tokens():
    """'auto' (structured) on a composition with attention equals autograd's J·Jᵀ;
    ntksweep.analytic_kernels reads sequences as (n, T, d)."""
    rng = np.random.default_rng(10)
    seq = rng.normal(size=(4, 5, 3))                                      # (n, T, d)
    net = nl.transformer(8, 3, out_dim=2, heads=2)
    model = net.module((3, 5), seed=0, dtype=torch.float64)
    x = torch.from_numpy(np.swapaxes(seq, 1, 2).copy())
    theta = ntksweep.empirical_ntk(model, x)
    params = list(model.parameters())
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        model(x[i:i + 1])[0, c], params)]) for i in range(4) for c in range(2)]
    j = torch.stack(rows).reshape(4, 2, -1)
    brute = torch.einsum("ikp,jlp->ijkl", j, j)
    assert (theta - brute).abs().max() <= 1e-9 * brute.abs().max()
    limit = ntksweep.analytic_kernels(seq, architecture="transformer", depth=3,
                                      options={"heads": 2})
    assert _rel(limit.ntk, net.kernels(x.numpy()).ntk) < 1e-14
    many = ntksweep.analytic_kernels(seq, architecture="transformer", depth=3,
                                     options={"heads": 16})       # the limit reads no width
    assert _rel(many.ntk, nl.transformer(64, 3, heads=16).kernels(x.numpy()).ntk) < 1e-14


@pytest.mark.parametrize("build,message", [
    (lambda: nl.serial(nl.SelfAttention(8, scaling="sqrt"), nl.GlobalAvgPool(), nl.Dense(1)
                       ).kernels(np.ones((2, 3, 4))), "no closed-form limit"),
    (lambda: nl.transformer(8, 3).module((3, 4), parametrization="mup"), "NTK parametrization"),
    (lambda: nl.SelfAttention(8, mechanism="sigmoid"), "mechanism must be one of"),
    (lambda: nl.SelfAttention(2, heads=4), "give each head a key_width"),
    (lambda: ntksweep.analytic_kernels(np.ones((2, 3)), architecture="transformer", depth=3),
     "sequences"),
])
def test_what_a_wrong_attention_is_told(build, message):
    with pytest.raises(SpecError, match=message):
        build()


def test_sqrt_scaled_attention_is_a_finite_network():
    net = nl.serial(nl.SelfAttention(16, heads=2, scaling="sqrt"), nl.GlobalAvgPool(),
                    nl.Dense(1))
    model = net.module((3, 4), seed=0, dtype=torch.float64)
    theta = ntksweep.empirical_ntk(model, torch.randn(3, 3, 4, dtype=torch.float64))
    assert theta.shape == (3, 3, 1, 1) and torch.isfinite(theta).all()


# --- sequences in trials -------------------------------------------------------------------
def test_the_tokens_task_reads_the_marked_tokens_content():
    """Exactly one token per sequence carries the marker (√d in the last feature), and the
    target is one fixed direction of that token's content — recomputed here from the
    marker's position alone."""
    from ntksweep.data import make_dataset

    data = make_dataset("tokens", n_train=50, n_eval=20, seed=3, tokens=6, dim=5, n_test=10)
    x = data.sequences(data.x_train)                                     # (n, T, d)
    assert x.shape == (50, 6, 5) and data.shape.sequence_shape == (6, 5)
    marked = np.argmax(x[..., -1], 1)
    assert ((x[..., -1] > 0).sum(1) == 1).all() and np.allclose(x[np.arange(50), marked, -1],
                                                                np.sqrt(5))
    content = x[np.arange(50), marked, :-1]
    w, *_ = np.linalg.lstsq(content, data.y_train[:, 0], rcond=None)    # one direction fits
    assert np.allclose(content @ w, data.y_train[:, 0])
    assert not np.allclose(x[..., :-1].mean(1) @ w, data.y_train[:, 0], atol=0.1)
    alone = make_dataset("tokens", n_train=50, n_eval=20, seed=3, tokens=6, dim=5)
    assert alone.x_test.shape == (0, 30) and np.array_equal(alone.x_train, data.x_train)


def test_transformer_trials_with_and_without_a_limit():
    base = dict(architecture="transformer", dataset="tokens", depth=3, width=16, heads=2,
                steps=5, checkpoints=2, n_train=16, n_eval=8, n_test=8, lr=0.5)
    linear = ntksweep.run_trial(ntksweep.TrialSpec(**base))
    sqrt = ntksweep.run_trial(ntksweep.TrialSpec(**base, attention_scaling="sqrt"))
    assert linear.status == sqrt.status == "completed"
    first, last = linear.records[0], sqrt.records[-1]
    assert 0 < first["dist_inf"] < 1 and np.isfinite(first["test_loss_kr_inf"])
    assert np.isnan(last["dist_inf"]) and np.isnan(last["gap_inf"])
    assert np.isnan(last["test_loss_kr_inf"]) and np.isfinite(last["test_loss_kr_init"])
    assert last["dist_init"] > 0 and np.isfinite(last["gap_lin"])


@pytest.mark.parametrize("fields,message", [
    (dict(architecture="transformer", dataset="sphere"), "a transformer reads sequences"),
    (dict(architecture="myrtle", dataset="tokens", depth=5), "needs image data"),
    (dict(architecture="transformer", dataset="tokens", heads=300), "heads"),
    (dict(architecture="transformer", dataset="tokens", depth=2), "depth >= 3"),
    (dict(architecture="transformer", dataset="tokens", parametrization="mup"),
     "NTK parametrization only"),
    (dict(architecture="transformer", dataset="tokens", attention="gauss"), "attention"),
])
def test_a_wrong_transformer_trial_is_one_line(fields, message):
    with pytest.raises(SpecError, match=message):
        ntksweep.TrialSpec(**fields)


def test_images_reach_a_transformer_as_their_patches():
    """Token t = (i, j) of a p×p patching holds feature c·p² + a·p + b = pixel (c, i·p + a,
    j·p + b) — checked by loops; a digits trial runs on them, and a patch that does not
    tile the image is one line before anything runs."""
    from ntksweep.plan import check_trials
    from ntksweep.trial.builders import patches

    images = np.random.default_rng(11).normal(size=(2, 3, 4, 6))
    tokens = patches(images, 2)
    assert tokens.shape == (2, 12, 6)
    for n, c, i, j, a, b in itertools.product(range(2), range(3), range(2), range(3),
                                              range(2), range(2)):
        assert tokens[n, c * 4 + a * 2 + b, i * 3 + j] == images[n, c, i * 2 + a, j * 2 + b]
    outcome = ntksweep.run_trial(ntksweep.TrialSpec(
        architecture="transformer", dataset="digits", depth=3, width=16, heads=2, steps=2,
        checkpoints=2, n_train=16, n_eval=8, lr=0.5))
    assert outcome.status == "completed" and 0 < outcome.records[0]["dist_inf"] < 1
    with pytest.raises(SpecError, match="3×3 patches do not tile 8×8 images"):
        check_trials([ntksweep.TrialSpec(architecture="transformer", dataset="digits",
                                         patch=3)])


@pytest.mark.parametrize("architecture", sorted(REGISTRY))
def test_every_registered_architecture_is_one_description_with_a_module_and_a_limit(
        architecture):
    """``architectures.Network`` makes each registered architecture's module and limit, on
    the inputs its ``reads`` says; the fused ones' modules are their compositions' weight for
    weight, and their fused limits their compositions' limits."""
    from ntksweep.architectures import Network

    reads = REGISTRY[architecture].reads
    depth = {"myrtle": 5, "transformer": 3}.get(architecture, 3)
    in_shape = {"vectors": (3,), "images": (2, 4, 4), "sequences": (3, 5)}[reads]
    data = {"vectors": "circle", "images": "images", "sequences": "tokens"}[reads]
    defaults = ntksweep.TrialSpec(dataset=data)
    net = Network.of(defaults.replace(architecture=architecture, depth=depth, width=8,
                                      heads=2, dtype="float64"), out_dim=2)
    x = torch.randn(3, *in_shape, dtype=torch.float64)
    model = net.module(in_shape, seed=0, dtype=torch.float64, device="cpu")
    composed = net.composition().module(in_shape, seed=0, dtype=torch.float64)
    assert model(x).shape == (3, 2)
    assert torch.allclose(model(x), composed(x), rtol=1e-12, atol=1e-12)
    limit = net.limit(x.numpy())
    assert _rel(limit.ntk, net.composition().kernels(x.numpy()).ntk) < 1e-12
    assert net.has_limit and limit.depth == depth
    if architecture == "transformer":
        sqrt = Network.of(defaults.replace(architecture=architecture, depth=3,
                                           attention_scaling="sqrt"), out_dim=1)
        assert not sqrt.has_limit


@pytest.mark.parametrize("name, depth, shape", [("myrtle", 5, (3, 8, 8)),
                                                ("transformer", 4, (4, 6))])
def test_a_limits_tiles_compute_each_inputs_self_covariance_once(monkeypatch, name, depth,
                                                                  shape):
    """Tiles of input pairs replay their rows' and columns' self pair tensors
    (``layers.state.SelfTrace``) instead of computing them in every tile: the same numbers
    to the last bit, each block of inputs computed once."""
    from ntksweep.layers import network, state

    made = []

    class Counting(state.SelfTraces):
        def __init__(self, budget):
            super().__init__(budget)
            made.append(self)

    monkeypatch.setattr(network, "SelfTraces", Counting)
    # one pair of inputs per tile, as on a CPU for 32×32 images
    monkeypatch.setattr(network, "CACHE_TILE_BYTES", 64 * math.prod(shape[1:]) ** 2)
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(5, *shape)), rng.normal(size=(7, *shape))
    net = nl.preset(name, width=4, depth=depth)
    for second, blocks, tiles in ((x2, 5 + 7, 5 * 7), (None, 5, 5 * 6 // 2)):
        kept = network.limit_kernels(net, x1, second)
        assert made[-1].recorded == blocks
        monkeypatch.setattr(Counting, "keep", lambda *_: None)
        again = network.limit_kernels(net, x1, second)
        monkeypatch.setattr(Counting, "keep", state.SelfTraces.keep)
        # every tile its rows' and its columns' (a diagonal tile's are one block)
        assert made[-1].recorded == 2 * tiles - (5 if second is None else 0)
        np.testing.assert_array_equal(kept.ntk, again.ntk)
        np.testing.assert_array_equal(kept.nngp, again.nngp)
