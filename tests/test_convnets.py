"""Convolutional networks and ResNets: the analytic CNN-GP / CNTK against closed-form special
cases, a direct double sum over pixel pairs and Monte-Carlo; the networks themselves."""

import math

import numpy as np
import pytest
import torch

from ntksweep import analytic_kernels, empirical_ntk
from ntksweep.errors import SpecError
from ntksweep.models import CNN, ResNet

RNG = np.random.default_rng(0)


def relu_expectations(k11, k12, k22):
    """Cho & Saul's arc-cosine formulas, written out here (not ntksweep's duals)."""
    s = math.sqrt(k11 * k22)
    c = max(-1.0, min(1.0, k12 / s)) if s > 0 else 0.0
    t = math.acos(c)
    return s * (math.sin(t) + (math.pi - t) * c) / (2 * math.pi), (math.pi - t) / (2 * math.pi)


def direct(x, y, *, architecture, depth, k, padding, readout, sw=1.0, sb=0.1):
    """Θ_∞(x, y), Σ(x, y) for two images (C, H, W) by explicit loops over pixel pairs and
    window offsets: the recursion of kernels/conv.py's docstring, one entry at a time."""
    c, h, w = x.shape
    r = k // 2 if padding == "same" else 0

    def window(mat, hi, wi, ho, wo):
        """𝒜 of a covariance dict over pixel pairs of an hi×wi grid → an ho×wo grid."""
        out = {}
        for p in np.ndindex(ho, wo):
            for q in np.ndindex(ho, wo):
                total = 0.0
                for di in range(k):
                    for dj in range(k):
                        a = (p[0] + di - r, p[1] + dj - r)
                        b = (q[0] + di - r, q[1] + dj - r)
                        if 0 <= min(a + b) and max(a[0], b[0]) < hi and max(a[1], b[1]) < wi:
                            total += mat[(a, b)]
                out[(p, q)] = total / (k * k)
        return out

    def shrink(hi, wi):
        return (hi, wi) if padding == "same" else (hi - k + 1, wi - k + 1)

    grids = {}  # (which, which') → covariance over pixel pairs, for xx, xy, yy
    for name, (u, v) in {"xy": (x, y), "xx": (x, x), "yy": (y, y)}.items():
        grids[name] = {(p, q): float(u[:, p[0], p[1]] @ v[:, q[0], q[1]]) / c
                       for p in np.ndindex(h, w) for q in np.ndindex(h, w)}
    hi, wi = h, w
    sig, theta = {}, {}
    for name in grids:
        ho, wo = shrink(hi, wi)
        sig[name] = {key: sw * sw * v + sb * sb for key, v in window(grids[name], hi, wi, ho,
                                                                      wo).items()}
        theta[name] = dict(sig[name])
    hi, wi = shrink(hi, wi)
    for _ in range(depth - 2):
        ho, wo = shrink(hi, wi)
        new_sig, new_theta = {}, {}
        for name, (a, b) in {"xy": ("xx", "yy"), "xx": ("xx", "xx"), "yy": ("yy", "yy")}.items():
            e, ed = {}, {}
            for (p, q), v in sig[name].items():
                e[(p, q)], d = relu_expectations(sig[a][(p, p)], v, sig[b][(q, q)])
                ed[(p, q)] = d * theta[name][(p, q)]
            branch = {key: sw * sw * v + sb * sb for key, v in window(e, hi, wi, ho, wo).items()}
            branch_t = {key: sw * sw * v + branch[key]
                        for key, v in window(ed, hi, wi, ho, wo).items()}
            if architecture == "resnet":
                new_sig[name] = {key: sig[name][key] + branch[key] for key in branch}
                new_theta[name] = {key: theta[name][key] + branch_t[key] for key in branch}
            else:
                new_sig[name], new_theta[name] = branch, branch_t
        sig, theta = new_sig, new_theta
        hi, wi = ho, wo
    pairs = [(p, p) for p in np.ndindex(hi, wi)] if readout == "flatten" else list(sig["xy"])
    e_mean = ed_mean = 0.0
    for p, q in pairs:
        e, d = relu_expectations(sig["xx"][(p, p)], sig["xy"][(p, q)], sig["yy"][(q, q)])
        e_mean += e / len(pairs)
        ed_mean += d * theta["xy"][(p, q)] / len(pairs)
    out_sigma = sw * sw * e_mean + sb * sb
    return sw * sw * ed_mean + out_sigma, out_sigma


@pytest.mark.parametrize("architecture, padding, readout, depth, k", [
    ("cnn", "same", "gap", 3, 3), ("cnn", "same", "flatten", 3, 3),
    ("cnn", "valid", "flatten", 2, 3), ("cnn", "valid", "gap", 2, 3),
    ("resnet", "same", "gap", 4, 3),
    ("cnn", "same", "gap", 3, 11)])     # a window wider than twice the image: offsets ≥ 4 see 0
def test_limits_equal_a_direct_double_sum_over_pixel_pairs(architecture, padding, readout,
                                                           depth, k):
    x = RNG.normal(size=(2, 2, 4, 4))
    got = analytic_kernels(x, architecture=architecture, depth=depth, bias_std=0.1,
                           padding=padding, readout=readout, kernel_size=k)
    for i in range(2):
        for j in range(2):
            ntk, nngp = direct(x[i], x[j], architecture=architecture, depth=depth, k=k,
                               padding=padding, readout=readout)
            assert got.ntk[i, j] == pytest.approx(ntk, rel=1e-10)
            assert got.nngp[i, j] == pytest.approx(nngp, rel=1e-10)


@pytest.mark.parametrize("activation", ["relu", "erf", "tanh"])
def test_one_by_one_kernels_on_one_pixel_images_are_the_mlp(activation):
    x = RNG.normal(size=(5, 3, 1, 1))
    mlp = analytic_kernels(x.reshape(5, 3), depth=4, activation=activation, bias_std=0.2)
    for readout in ("gap", "flatten"):
        cnn = analytic_kernels(x, architecture="cnn", depth=4, kernel_size=1, readout=readout,
                               activation=activation, bias_std=0.2)
        np.testing.assert_allclose(cnn.ntk, mlp.ntk, rtol=1e-12)
        np.testing.assert_allclose(cnn.nngp, mlp.nngp, rtol=1e-12)


def test_a_valid_convolution_over_the_whole_image_is_a_dense_layer():
    """H = W = k: the one output pixel sees the whole image, a dense layer of fan-in C·k²."""
    x = RNG.normal(size=(4, 2, 3, 3))
    mlp = analytic_kernels(x.reshape(4, 18), depth=2, activation="erf", bias_std=0.3)
    for readout in ("flatten", "gap"):
        cnn = analytic_kernels(x, architecture="cnn", depth=2, kernel_size=3, padding="valid",
                               readout=readout, activation="erf", bias_std=0.3)
        np.testing.assert_allclose(cnn.ntk, mlp.ntk, rtol=1e-12)
        np.testing.assert_allclose(cnn.nngp, mlp.nngp, rtol=1e-12)


def test_a_linear_cnns_nngp_is_the_patch_covariance_average():
    """Identity activation, no bias, one convolution then the flatten readout:
    Σ = σ_w⁴ (1/P) Σ_p (1/k²) Σ_δ (1/C) Σ_c x_c(p+δ) x'_c(p+δ), zeros outside the image."""
    x = RNG.normal(size=(3, 2, 5, 5))
    sw = 1.3
    got = analytic_kernels(x, architecture="cnn", depth=2, activation="identity",
                           weight_std=sw, bias_std=0.0, readout="flatten")
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((3, 3))
    for p in np.ndindex(5, 5):
        for di in range(3):
            for dj in range(3):
                patch = padded[:, :, p[0] + di, p[1] + dj]          # (N, C)
                want += patch @ patch.T / 2 / 9 / 25
    np.testing.assert_allclose(got.nngp, sw**4 * want, rtol=1e-12)


def test_networks_are_seeded_and_check_their_arguments():
    x = torch.tensor(RNG.normal(size=(2, 3, 6, 6)))
    a = CNN(3, 8, 3, seed=4, dtype=torch.float64)(x)
    b = CNN(3, 8, 3, seed=4, dtype=torch.float32)(x.float())
    torch.testing.assert_close(a.float(), b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(a, CNN(3, 8, 3, seed=5, dtype=torch.float64)(x))
    assert ResNet(3, 8, 3, seed=1)(x.float()).shape == (2, 1)
    with pytest.raises(SpecError, match="needs image_size"):
        CNN(3, 8, 3, readout="flatten")
    with pytest.raises(SpecError, match="padding must be"):
        CNN(3, 8, 3, padding="full")
    with pytest.raises(SpecError, match="leave nothing"):
        analytic_kernels(x.numpy(), architecture="cnn", depth=4, padding="valid")
    with pytest.raises(SpecError, match="images"):
        analytic_kernels(np.ones((2, 3)), architecture="cnn", depth=2)


@pytest.mark.slow
@pytest.mark.parametrize("architecture, kw", [("cnn", {"readout": "gap"}),
                                              ("cnn", {"readout": "flatten"}),
                                              ("resnet", {})])
def test_the_mean_empirical_ntk_of_wide_networks_is_the_limit(architecture, kw):
    x = RNG.normal(size=(3, 2, 4, 4))
    depth = 4 if architecture == "resnet" else 3
    limit = analytic_kernels(x, architecture=architecture, depth=depth, bias_std=0.1, **kw)

    def net(seed):
        if architecture == "resnet":
            return ResNet(2, 256, depth, bias_std=0.1, seed=seed, dtype=torch.float64)
        return CNN(2, 256, depth, bias_std=0.1, image_size=(4, 4), seed=seed,
                   dtype=torch.float64, **kw)

    mean = np.mean([empirical_ntk(net(s), torch.tensor(x), trace=True).numpy()
                    for s in range(50)], 0)
    assert np.abs(mean - limit.ntk).max() < 0.04 * np.abs(limit.ntk).max()


def test_the_new_fields_leave_earlier_trial_ids_unchanged():
    from ntksweep.trial_spec import TrialSpec

    # as the released version (c5d7fee) identified these trials, before architecture,
    # kernel_size, padding, readout and leaky_relu_slope existed
    assert TrialSpec().trial_id == "4b1cfee7240e"
    assert TrialSpec(width=64, activation="leaky_relu", dataset="digits").trial_id == \
        "0a193a2e5cd3"
    assert TrialSpec(architecture="cnn", dataset="digits").trial_id != TrialSpec(
        dataset="digits").trial_id


def test_a_cnn_trial_measures_its_kernel_against_its_own_limit():
    from ntksweep.trial import run_trial
    from ntksweep.trial_spec import TrialSpec

    spec = TrialSpec(architecture="cnn", dataset="images", dim=5, readout="flatten", width=64,
                     depth=3, n_train=8, n_eval=6, steps=4, checkpoints=2, device="cpu",
                     dtype="float64", keep_kernels="first_last", bias_std=0.1)
    r = run_trial(spec)
    assert r.status == "completed", r.error
    from ntksweep.data import make_dataset

    data = make_dataset("images", n_train=8, n_eval=6, dim=5)
    limit = analytic_kernels(data.images(data.x_eval), architecture="cnn", depth=3,
                             bias_std=0.1, readout="flatten").ntk
    theta0 = r.kernels[0]
    assert r.records[0]["dist_inf"] == pytest.approx(
        np.linalg.norm(theta0 - limit) / np.linalg.norm(limit), rel=1e-9)
    net = CNN(1, 64, 3, readout="flatten", image_size=(5, 5), bias_std=0.1, seed=0,
              dtype=torch.float64)
    np.testing.assert_allclose(theta0, empirical_ntk(net, torch.tensor(
        data.images(data.x_eval)), method="jacobian", trace=True).numpy(), rtol=1e-10)


@pytest.mark.slow
def test_a_cnn_and_resnet_sweep_end_to_end(ray_local, tmp_path):
    import ntksweep
    from ntksweep.analysis.report import make_report
    from ntksweep.sweep import run_sweep
    from ntksweep.sweep_spec import load_sweep_spec

    spec = load_sweep_spec({"name": "conv", "output_dir": str(tmp_path / "conv"),
                            "base": {"dataset": "images", "dim": 5, "n_train": 8, "n_eval": 6,
                                     "depth": 3, "steps": 4, "checkpoints": 2,
                                     "device": "cpu"},
                            "grid": {"architecture": ["cnn", "resnet"], "width": [8, 32]}})
    summary = run_sweep(spec, quiet=True)
    assert summary.counts == {"completed": 4}
    trials, ckpts = ntksweep.load_results(summary.out_dir)
    assert sorted(trials.architecture) == ["cnn", "cnn", "resnet", "resnet"]
    assert ckpts.dist_inf.notna().all() and ckpts.gap_lin.notna().all()
    assert make_report(summary.out_dir)["figures"]


def brute_force_ntk(model, x):
    """Θ (n, n, k, k) from the full Jacobian, one autograd call per example and output."""
    params = [p for p in model.parameters()]
    rows = []
    for i in range(len(x)):
        out = model(x[i:i + 1]).reshape(-1)
        grads = [torch.autograd.grad(out[c], params, retain_graph=True, allow_unused=True)
                 for c in range(len(out))]            # σ_b = 0: the dense bias is unused
        rows.append(torch.stack([torch.cat([(torch.zeros_like(p) if g is None else g)
                                            .reshape(-1) for g, p in zip(gs, params)])
                                 for gs in grads]))
    jac = torch.stack(rows)                                                  # (n, k, P)
    return torch.einsum("icp,jdp->ijcd", jac, jac).detach()


@pytest.mark.parametrize("make, k", [
    (lambda k: CNN(2, 6, 3, out_dim=k, bias_std=0.2, seed=1, dtype=torch.float64), 1),
    (lambda k: CNN(2, 6, 3, out_dim=k, readout="flatten", image_size=(5, 5), activation="erf",
                   seed=1, dtype=torch.float64), 3),
    (lambda k: CNN(2, 6, 3, out_dim=k, padding="valid", readout="flatten", image_size=(5, 5),
                   activation="tanh", bias_std=0.1, seed=1, dtype=torch.float64), 3),
    (lambda k: CNN(2, 6, 2, out_dim=k, padding="valid", activation="gelu", seed=1,
                   dtype=torch.float64), 1),
    (lambda k: ResNet(2, 6, 4, out_dim=k, bias_std=0.3, seed=1, dtype=torch.float64), 1),
    (lambda k: ResNet(2, 6, 3, out_dim=k, activation="tanh", seed=1, dtype=torch.float64), 3),
])
def test_structured_conv_ntk_is_the_brute_force_jacobian_product(make, k):
    model = make(k)
    x = torch.tensor(RNG.normal(size=(5, 2, 5, 5)))
    want = brute_force_ntk(model, x)
    got = empirical_ntk(model, x, method="structured")          # (n, n, k, k) for any k
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    cross = empirical_ntk(model, x[:2], x[2:], method="structured")
    torch.testing.assert_close(cross, want[:2, 2:], rtol=1e-9, atol=1e-12)
    tiled = empirical_ntk(model, x, method="structured", block_size=2)
    torch.testing.assert_close(tiled, got, rtol=1e-12, atol=1e-14)
    assert empirical_ntk(model, x[:1]).shape[:2] == (1, 1)       # auto picks structured


def test_a_large_symmetric_kernel_from_gram_panels_is_the_brute_force_one():
    """From ~4 M multiply-adds a symmetric kernel's per-layer Grams are row panels on and
    above the diagonal, and the kernel is mirrored once after every layer (the dense readout
    adds its whole share): on 160 images with 2 outputs (panels of 80 of the 320 rows) it is
    the brute-force kernel, and each half of it the cross kernel."""
    model = CNN(1, 8, 3, out_dim=2, bias_std=0.2, seed=3, dtype=torch.float64)
    x = torch.tensor(RNG.normal(size=(160, 1, 6, 6)))
    want = brute_force_ntk(model, x)
    got = empirical_ntk(model, x, method="structured")
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(empirical_ntk(model, x[:80], x[80:], method="structured"),
                               want[:80, 80:], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("trace", [False, True])
@pytest.mark.parametrize("make", [
    lambda: CNN(3, 8, 3, out_dim=2, readout="flatten", image_size=(5, 5), bias_std=0.2, seed=2,
                dtype=torch.float64),
    lambda: ResNet(3, 8, 4, out_dim=2, activation="tanh", seed=2, dtype=torch.float64),
])
def test_conv_ntk_under_a_memory_budget_splits_channels_and_tiles_and_is_exact(
        make, trace, monkeypatch):
    """Under a budget the kernel comes in tiles, each tile's forward and backward passes in
    batches, and the layers' gradients a few input channels at a time; the kernel is the
    brute-force one."""
    from ntksweep import memory
    from ntksweep.kernels import tiling
    from ntksweep.kernels.layerwise import layer_shapes, plan_layerwise

    model, x = make(), torch.tensor(RNG.normal(size=(12, 3, 5, 5)))
    want = brute_force_ntk(model, x)
    want = want.diagonal(dim1=2, dim2=3).mean(-1) if trace else want
    monkeypatch.setattr(memory, "SIGNAL_BATCH", 2)         # batches smaller than the tiles
    budget = tiling.tile_bytes(model, "structured", 4, 4, 2, 8, x[:1])
    plan = plan_layerwise(model, x[:1], 8, budget)        # an off-diagonal 4 × 4 tile's
    shapes, _ = layer_shapes(model, x[:1])
    assert plan.batch < 8                                   # passes in batches …
    assert any(c < s.c_in for c, s in zip(plan.channels, shapes)), plan   # … layers in chunks
    assert plan_layerwise(model, x[:1], 8).batch == 8      # without a budget: one pass
    got = empirical_ntk(model, x, method="structured", memory_budget=budget, trace=trace)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    whole = empirical_ntk(model, x, method="structured", trace=trace)
    torch.testing.assert_close(got, whole, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("architecture, readout", [("cnn", "gap"), ("cnn", "flatten"),
                                                   ("resnet", "gap")])
def test_limits_are_shardable_and_tiled_equals_untiled(architecture, readout):
    """Rows of Θ_∞ computed apart (as shards on different machines would) and in tiny tiles
    equal the whole kernel in one tile."""
    x = RNG.normal(size=(7, 2, 5, 5))
    kw = dict(architecture=architecture, depth=3, readout=readout, bias_std=0.2)
    whole = analytic_kernels(x, memory_budget=1 << 30, **kw)
    tiny = analytic_kernels(x, memory_budget=1, **kw)                 # one image pair a tile
    shards = [analytic_kernels(x[rows], x, **kw) for rows in (slice(0, 3), slice(3, 7))]
    for k in ("ntk", "nngp"):
        np.testing.assert_allclose(getattr(tiny, k), getattr(whole, k), rtol=1e-13)
        np.testing.assert_allclose(np.concatenate([getattr(s, k) for s in shards]),
                                   getattr(whole, k), rtol=1e-13)


def test_the_conv_limit_runs_on_a_named_device_and_the_mlp_says_where_it_runs():
    x = RNG.normal(size=(4, 1, 5, 5))
    here = analytic_kernels(x, architecture="resnet", depth=3, activation="tanh")
    there = analytic_kernels(x, architecture="resnet", depth=3, activation="tanh",
                             device="cpu")
    np.testing.assert_array_equal(here.ntk, there.ntk)
    with pytest.raises(ValueError, match="the MLP recursion runs on the CPU"):
        analytic_kernels(x.reshape(4, -1), depth=3, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_conv_limit_on_a_gpu_equals_the_cpus():
    x = RNG.normal(size=(12, 2, 6, 6))
    for activation in ("relu", "tanh"):        # a closed form and a quadrature
        kw = dict(architecture="cnn", depth=4, activation=activation, bias_std=0.1)
        cpu = analytic_kernels(x, **kw)
        gpu = analytic_kernels(x, device="cuda", **kw)
        np.testing.assert_allclose(gpu.ntk, cpu.ntk, rtol=1e-10)
        np.testing.assert_allclose(gpu.nngp, cpu.nngp, rtol=1e-10)
