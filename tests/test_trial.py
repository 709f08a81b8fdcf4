"""Trials: the kernel-flow prediction against the ODE and exact linear models; the physics
of wide networks; data sets; divergence; reproducibility; bad inputs."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.linalg import expm

from ntksweep.data import make_dataset
from ntksweep.kernels.metrics import alignment, kernel_flow_prediction, rel_frobenius
from ntksweep.trial import run_trial
from ntksweep.trial.train import checkpoint_schedule
from ntksweep.trial_spec import SpecError, TrialSpec

SMALL = dict(n_train=16, n_eval=16, steps=40, checkpoints=5, device="cpu")


def _random_problem(n=6, m=4, k=2, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n + m, 9))
    theta = feats @ feats.T                       # a PSD kernel on [train; test]
    f0 = rng.normal(size=(n + m, k))
    y = rng.normal(size=(n, k))
    return theta, f0, y, n


def test_kernel_flow_on_training_points_is_the_matrix_exponential():
    theta, f0, y, n = _random_problem()
    t = 0.7
    pred = kernel_flow_prediction(theta[:n, :n], theta[:n, :n], f0[:n], f0[:n], y, t)
    expected = y + expm(-2 * t / n * theta[:n, :n]) @ (f0[:n] - y)
    np.testing.assert_allclose(pred, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(kernel_flow_prediction(theta[n:, :n], theta[:n, :n], f0[n:],
                                                      f0[:n], y, 0.0), f0[n:], atol=1e-14)


def test_kernel_flow_solves_its_ode():
    # d f_t(x)/dt = −(2/N) Θ(x, X) (f_t(X) − Y), checked by central differences
    theta, f0, y, n = _random_problem(seed=1)
    t, h = 0.3, 1e-5
    at = lambda s: kernel_flow_prediction(theta[:, :n], theta[:n, :n], f0, f0[:n], y, s)  # noqa
    deriv = (at(t + h) - at(t - h)) / (2 * h)
    rhs = -(2 / n) * theta[:, :n] @ (at(t)[:n] - y)
    np.testing.assert_allclose(deriv, rhs, rtol=1e-6, atol=1e-8)
    # a vector of times gives the stacked predictions
    np.testing.assert_allclose(at(np.array([0.1, t]))[1], at(t), rtol=1e-12)


def test_kernel_flow_full_kernel_equals_per_logit_for_kron_identity():
    theta, f0, y, n = _random_problem(seed=2, k=3)
    full = np.einsum("ij,ab->ijab", theta, np.eye(3))
    a = kernel_flow_prediction(theta[n:, :n], theta[:n, :n], f0[n:], f0[:n], y, 1.3)
    b = kernel_flow_prediction(full[n:, :n], full[:n, :n], f0[n:], f0[:n], y, 1.3)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_gradient_descent_on_a_linear_model_follows_the_prediction():
    # f(x) = φ(x)·w is linear in w: its NTK φφᵀ is exactly constant, so small-step GD
    # must follow the kernel-flow prediction at t = lr × steps.
    rng = np.random.default_rng(3)
    phi = torch.tensor(rng.normal(size=(12, 30)))
    y = torch.tensor(rng.normal(size=(8, 1)))
    w = torch.tensor(rng.normal(size=(30, 1)) * 0.1, requires_grad=True)
    f0 = (phi @ w).detach().numpy()
    lr, steps, n = 1e-3, 2000, 8
    opt = torch.optim.SGD([w], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        ((phi[:n] @ w - y) ** 2).sum(1).mean().backward()
        opt.step()
    kern = (phi @ phi.T).numpy()
    pred = kernel_flow_prediction(kern[:, :n], kern[:n, :n], f0, f0[:n], y.numpy(), lr * steps)
    got = (phi @ w).detach().numpy()
    assert np.abs(got - pred).max() < 2e-2 * np.abs(pred).max()


def test_metrics_are_the_named_formulas():
    a, b = np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 1.0]])
    assert rel_frobenius(a, b) == pytest.approx(1 / np.sqrt(2))
    assert alignment(a, b) == pytest.approx(3 / (np.sqrt(5) * np.sqrt(2)))
    assert alignment(a, 3 * a) == pytest.approx(1.0)


def test_circle_is_jacots_setup():
    d = make_dataset("circle", n_train=4000, n_eval=12, seed=0)
    assert d.x_train.shape == (4000, 2) and d.y_train.shape == (4000, 1)
    assert abs(d.x_train.mean()) < 0.05 and abs(d.x_train.std() - 1) < 0.05
    np.testing.assert_allclose(d.y_train[:, 0], d.x_train[:, 0] * d.x_train[:, 1])
    np.testing.assert_allclose(np.linalg.norm(d.x_eval, axis=1), 1.0)
    np.testing.assert_allclose(d.x_eval, np.stack([np.cos(d.eval_coords),
                                                   np.sin(d.eval_coords)], 1))
    assert make_dataset("circle", n_train=5, n_eval=3, seed=1).x_train.tolist() != \
        make_dataset("circle", n_train=5, n_eval=3, seed=2).x_train.tolist()


def test_sphere_and_digits():
    s = make_dataset("sphere", n_train=10, n_eval=5, dim=6, teacher="network", seed=0)
    np.testing.assert_allclose((s.x_train ** 2).sum(1), 6.0)
    dg = make_dataset("digits", n_train=100, n_eval=50, seed=0)
    assert dg.x_train.shape == (100, 64) and dg.y_train.shape == (100, 10)
    np.testing.assert_array_equal(dg.y_train.argmax(1), dg.labels_train)


def _wide_vs_narrow(metric, widths, seeds=2, **kw):
    out = []
    for w in widths:
        vals = [run_trial(TrialSpec(width=w, seed=s, **{**SMALL, **kw})).final[metric]
                for s in range(seeds)]
        out.append(float(np.mean(vals)))
    return out


def test_dist_init_shrinks_with_width():
    d = _wide_vs_narrow("dist_init", [32, 256, 1024], lr=1.0, depth=3)
    assert d[0] > d[1] > d[2], d


def test_wide_network_follows_the_infinite_width_prediction():
    gaps = _wide_vs_narrow("gap_inf", [32, 1024], lr=0.5, depth=3, steps=30)
    assert gaps[1] < 0.5 * gaps[0], gaps


def test_diverging_learning_rate_is_reported_not_raised():
    r = run_trial(TrialSpec(width=64, lr=500.0, **SMALL))
    assert r.status == "diverged"
    assert r.error is None and len(r.records) >= 1 and r.records[0]["step"] == 0


def test_same_spec_same_records():
    spec = TrialSpec(width=64, **SMALL)
    strip = lambda recs: [{k: ("nan" if v != v else v) for k, v in r.items()  # noqa: E731
                           if not k.endswith("seconds")} for r in recs]
    a, b = strip(run_trial(spec).records), strip(run_trial(spec).records)
    assert a == b
    c = strip(run_trial(spec.replace(seed=1)).records)
    assert a != c


_FIRST_TRIAL = """
import sys
from ntksweep.trial_spec import TrialSpec
from ntksweep.trial import run_trial, warm_up
if sys.argv[1] == "warm":
    assert warm_up().status == "completed"
before = set(sys.modules)
r = run_trial(TrialSpec.from_dict({"n_train": 8, "n_eval": 8, "width": 16, "depth": 3,
                                   "steps": 3, "checkpoints": 2, "device": "cpu"}))
assert r.status == "completed", r.error
print(" ".join(sorted(set(sys.modules) - before)))
"""


@pytest.mark.parametrize("warm", [True, False])
def test_after_warm_up_a_first_trial_imports_nothing(warm):
    """An actor warms up before its first trial, so that trial's wall time holds no one-off
    imports (torch 2.13's first optimizer imports torch._dynamo: seconds). Without the
    warm-up, the same first trial in a fresh process does import (the check is not vacuous)."""
    out = subprocess.run([sys.executable, "-c", _FIRST_TRIAL, "warm" if warm else "cold"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    imported = out.stdout.split()
    assert (imported == []) if warm else (imported != []), imported


def test_records_are_flat_and_streamed():
    seen = []
    spec = TrialSpec(width=32, keep_kernels="first_last", **SMALL)
    r = run_trial(spec, on_checkpoint=seen.append)
    assert r.status == "completed" and seen == r.records
    assert [rec["step"] for rec in r.records] == checkpoint_schedule(spec)
    for rec in r.records:
        assert all(isinstance(v, (int, float)) for v in rec.values())
    assert set(r.kernels) == {0, SMALL["steps"]} and r.kernels[0].shape == (16, 16)
    assert r.records[0]["dist_init"] == 0.0 and r.records[0]["t"] == 0.0


def test_classification_sgd_and_nngp_distance():
    r = run_trial(TrialSpec(dataset="digits", loss="cross_entropy", optimizer="sgd",
                            batch_size=8, width=64, lr=0.5, **SMALL))
    assert r.status == "completed", r.error
    assert np.isfinite(r.records[0]["dist_nngp"])      # the last features' Gram vs Σ^(L)
    assert np.isnan(r.records[0]["gap_inf"])          # the MSE flow does not apply


def test_a_linear_model_is_its_own_discrete_linearisation():
    # depth 1: f = (σ_w/√n0) W x + σ_b b is linear in its parameters and its NTK is Θ_∞ itself,
    # so GD at any step size is the linear model's GD exactly (the flow only as lr → 0)
    r = run_trial(TrialSpec(depth=1, width=1, lr=1.0, steps=20, checkpoints=5,
                            dtype="float64", **{k: v for k, v in SMALL.items()
                                                if k not in ("steps", "checkpoints")}))
    assert r.status == "completed", r.error
    for rec in r.records[1:]:
        assert rec["gap_lin"] < 1e-10 and rec["gap_inf"] < 1e-10, rec
        assert rec["gap_lin_flow"] > 1e-4                # the time-step error at lr = 1
    assert max(rec["dist_nngp"] for rec in r.records) < 1e-12   # Σ̂ = σ_w² x·x'/n0 + σ_b²


def test_first_checkpoint_gap_falls_with_width_and_so_does_the_nngp_distance():
    """At the first step the discrete linearisation's gap is the network's own nonlinearity,
    which shrinks with width (the continuous flow's gap would carry a width-independent
    time-step error); the empirical NNGP's distance to Σ^(L) falls like n^(−1/2)."""
    from ntksweep import analysis

    rows = []
    for w in (64, 256, 1024, 4096):
        for seed in range(5):
            r = run_trial(TrialSpec(width=w, seed=seed, depth=3, lr=1.0, steps=1, checkpoints=2,
                                    **{k: v for k, v in SMALL.items()
                                       if k not in ("steps", "checkpoints")}))
            rows.append((w, r.records[1]["gap_lin"], r.records[0]["dist_nngp"]))
    w, gap, nngp = map(np.array, zip(*rows))
    assert analysis.fit_power_law(w, gap).slope <= -0.4
    assert -0.65 < analysis.fit_power_law(w, nngp).slope < -0.35


def test_checkpoint_schedules():
    assert checkpoint_schedule(TrialSpec(steps=100, checkpoints=5, checkpoint_spacing="linear")) \
        == [0, 25, 50, 75, 100]
    log = checkpoint_schedule(TrialSpec(steps=1000, checkpoints=5))
    assert log[0] == 0 and log[-1] == 1000 and log == sorted(set(log))
    assert checkpoint_schedule(TrialSpec(steps=10, checkpoint_steps=[3, 7])) == [0, 3, 7, 10]


def test_bad_data_files_name_the_file_and_problem(tmp_path):
    def fails(path, match):
        r = run_trial(TrialSpec(dataset="file", data_path=str(path), **SMALL))
        assert r.status == "failed" and str(path) in r.error, r.error
        assert match in r.error, r.error

    fails(tmp_path / "missing.npz", "does not exist")
    np.savez(tmp_path / "mismatch.npz", X=np.ones((40, 3)), y=np.ones(39))
    fails(tmp_path / "mismatch.npz", "40 inputs but 39 labels")
    x = np.ones((40, 3))
    x[5, 1] = np.nan
    np.savez(tmp_path / "nan.npz", X=x, y=np.ones(40))
    fails(tmp_path / "nan.npz", "NaN or inf")
    np.savez(tmp_path / "nokey.npz", inputs=np.ones((40, 3)), y=np.ones(40))
    fails(tmp_path / "nokey.npz", "holds X and either y (regression targets) or labels")
    np.savez(tmp_path / "both.npz", X=np.ones((40, 3)), y=np.ones(40), labels=np.ones(40, int))
    fails(tmp_path / "both.npz", "either y (regression targets) or labels (class ids)")
    for bad, match in ((np.linspace(0, 2, 40), "must be class ids"),
                       (-np.ones(40, int), "must be class ids"),
                       (np.ones((40, 2), int), "shape (N,)"),
                       (np.zeros(40, int), "labels name 1 class")):
        np.savez(tmp_path / "labels.npz", X=np.ones((40, 3)), labels=bad)
        fails(tmp_path / "labels.npz", match)
    np.save(tmp_path / "plain.npy", np.ones((40, 3)))
    fails(tmp_path / "plain.npy", "must hold a dict")
    (tmp_path / "data.csv").write_text("1,2\n")
    fails(tmp_path / "data.csv", "unsupported data file type")
    np.savez(tmp_path / "small.npz", X=np.ones((10, 3)), y=np.ones(10))
    fails(tmp_path / "small.npz", "n_train, n_eval and n_test draw")
    np.savez(tmp_path / "ok.npz", X=np.random.default_rng(0).normal(size=(40, 3)),
             y=np.ones(40))
    ok = run_trial(TrialSpec(dataset="file", data_path=str(tmp_path / "ok.npz"), width=16,
                             **SMALL))
    assert ok.status == "completed", ok.error


def test_a_file_of_class_ids_is_a_classification_set(tmp_path):
    """`labels` instead of `y`: targets e_label − 1/k (k = the largest id + 1, over every
    split), each point's id kept beside it through the shuffle and the file's own splits,
    so that the net and kernel regression are scored by accuracy too; a file of y with its
    own eval set without y_eval gets zero targets of y's width."""
    from ntksweep.data import make_dataset

    rng = np.random.default_rng(1)
    x, ids = rng.normal(size=(30, 4)), rng.integers(0, 3, size=30)
    x_test, ids_test = rng.normal(size=(6, 4)), np.array([0, 1, 2, 3, 3, 0])
    np.savez(tmp_path / "c.npz", X=x, labels=ids, X_test=x_test, labels_test=ids_test)
    d = make_dataset("file", path=str(tmp_path / "c.npz"), n_train=20, n_eval=10, n_test=6)
    k = 4                                                  # labels_test holds a 3
    for xs, ys, labels, source_x, source_ids in (
            (d.x_train, d.y_train, d.labels_train, x, ids),
            (d.x_eval, d.y_eval, d.labels_eval, x, ids),
            (d.x_test, d.y_test, d.labels_test, x_test, ids_test)):
        for point, target, label in zip(xs, ys, labels):
            row = np.flatnonzero((source_x == point).all(1))[0]     # where it came from
            assert label == source_ids[row]
            np.testing.assert_array_equal(target, np.eye(k)[label] - 1 / k)
    assert sorted(np.concatenate([d.labels_train, d.labels_eval])) == sorted(ids)
    trial = run_trial(TrialSpec(dataset="file", data_path=str(tmp_path / "c.npz"), n_train=20,
                                n_eval=10, n_test=6, width=16, steps=3, checkpoints=2))
    assert trial.status == "completed" and 0 <= trial.records[-1]["test_acc"] <= 1
    np.savez(tmp_path / "y.npz", X=x, y=rng.normal(size=(30, 2)), X_eval=x[:5])
    given = make_dataset("file", path=str(tmp_path / "y.npz"), n_train=20, n_eval=5)
    assert given.y_eval.shape == (5, 2) and not given.y_eval.any()


def test_cross_entropy_trains_on_a_file_of_class_ids_and_is_refused_on_one_of_y(tmp_path):
    """loss cross_entropy on a file of labels (3 separable classes): one logit per class,
    the loss at step 0 that of untrained logits (under 3 ln k) at least halved by training;
    on a file of y, refused before anything runs, naming the way out."""
    from ntksweep.plan import check_trials

    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 5)) * 3
    ids = rng.integers(0, 3, size=48)
    np.savez(tmp_path / "c.npz", X=centres[ids] + rng.normal(size=(48, 5)), labels=ids)
    spec = TrialSpec(dataset="file", data_path=str(tmp_path / "c.npz"), loss="cross_entropy",
                     n_train=32, n_eval=16, width=64, steps=60, lr=1.0, checkpoints=3)
    check_trials([spec])
    result = run_trial(spec)
    assert result.status == "completed", result.error
    first, last = result.records[0]["train_loss"], result.records[-1]["train_loss"]
    assert last < 0.5 * first and first < 3 * np.log(3)
    np.savez(tmp_path / "y.npz", X=rng.normal(size=(48, 5)), y=ids)
    with pytest.raises(SpecError, match="cross_entropy needs class ids.*save its classes as "
                                        "labels="):
        check_trials([spec.replace(data_path=str(tmp_path / "y.npz"))])


def test_spec_validation_and_identity():
    with pytest.raises(SpecError, match="unknown field 'widht'.*did you mean 'width'"):
        TrialSpec.from_dict({"widht": 3})
    with pytest.raises(SpecError, match="depth: must be an integer >= 1"):
        TrialSpec(depth=0)
    with pytest.raises(SpecError, match="activation: must be one of"):
        TrialSpec(activation="swish")
    with pytest.raises(SpecError, match="lr: cannot read 'fast'"):
        TrialSpec.from_dict({"lr": "fast"})
    a = TrialSpec.from_dict({"width": 128, "lr": 1})
    assert a.lr == 1.0 and a.trial_id == TrialSpec(width=128, lr=1.0).trial_id
    assert a.trial_id != a.replace(seed=1).trial_id
    assert a.trial_id == a.replace(device="cuda").trial_id   # same measurement elsewhere


def test_infinite_width_output_law_matches_monte_carlo():
    # f_0 ~ N(0, Σ) on [test; train], pushed through the Θ flow: the sample mean and
    # variance of f_t(x) must match the closed-form Gaussian law.
    from ntksweep.kernels.metrics import kernel_flow_gaussian

    rng = np.random.default_rng(5)
    n, m, samples = 5, 4, 40000
    a = rng.normal(size=(n + m, 7))
    theta = a @ a.T
    b = rng.normal(size=(n + m, n + m))
    sigma = b @ b.T / (n + m)
    y = rng.normal(size=(n, 1))
    t = 0.8
    f0 = rng.multivariate_normal(np.zeros(n + m), sigma, size=samples).T    # (n+m, S)
    ft = kernel_flow_prediction(theta[n:, :n], theta[:n, :n], f0[n:], f0[:n],
                                np.repeat(y, samples, 1), t)                 # (m, S)
    mean, var = kernel_flow_gaussian(theta[n:, :n], theta[:n, :n], np.diag(sigma)[n:],
                                     sigma[n:, :n], sigma[:n, :n], y, t)
    se = np.sqrt(var / samples)
    assert np.all(np.abs(ft.mean(1) - mean[:, 0]) < 5 * se)
    np.testing.assert_allclose(ft.var(1), var, rtol=0.05)


def test_a_workers_cached_limit_is_keyed_by_how_the_net_reads_the_data():
    """A transformer on images reads p×p patches as tokens: trials that differ in the patch
    only have different limits, and one worker's cache must not hand one the other's."""
    from ntksweep.trial import TrialCache
    from ntksweep.trial.builders import cached_data, cached_limits

    cache = TrialCache()
    common = dict(dataset="images", dim=4, n_train=4, n_eval=2, architecture="transformer",
                  depth=3, width=8, steps=0)
    first, second = TrialSpec(patch=2, **common), TrialSpec(patch=4, **common)
    cached_limits(first, cached_data(first, cache), cache, "cpu")
    shared = cached_limits(second, cached_data(second, cache), cache, "cpu")
    alone = cached_limits(second, cached_data(second, TrialCache()), TrialCache(), "cpu")
    np.testing.assert_array_equal(shared.ntk, alone.ntk)


def test_one_process_runs_trials_of_different_data_sets_on_their_own_data():
    """A worker's cache keys data and limits by the data set's name too: a digits trial
    and a sphere trial with the same sizes and seed get different data."""
    from ntksweep.trial import TrialCache

    cache = TrialCache()
    common = dict(n_train=16, n_eval=8, width=8, depth=2, steps=1, checkpoints=2, dim=8)
    digits = run_trial(TrialSpec(dataset="digits", **common), cache=cache)
    sphere = run_trial(TrialSpec(dataset="sphere", **common), cache=cache)
    alone = run_trial(TrialSpec(dataset="sphere", **common))
    assert digits.records[0]["train_loss"] != sphere.records[0]["train_loss"]
    assert sphere.records[0]["train_loss"] == alone.records[0]["train_loss"]
    assert sphere.records[0]["dist_inf"] == alone.records[0]["dist_inf"]
