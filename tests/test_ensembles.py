"""Ensembles: many networks' Θ_0 in one init-only trial — each member the network of the
plain trial of its seed, one Parquet row per member, one MLflow run per trial, nothing
twice on resume, an inconsistent members file moved aside and its trial run again."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import ntksweep
from ntksweep import store
from ntksweep.errors import SpecError
from ntksweep.kernels import empirical_ntk
from ntksweep.sweep import run_sweep
from ntksweep.sweep_spec import load_sweep_spec
from ntksweep.trial import run_trial
from ntksweep.trial.builders import build_model, dataset_for, inputs, limit_kernels
from ntksweep.trial_spec import TrialSpec

SMALL = dict(dataset="circle", n_train=6, n_eval=6, depth=3, width=16, steps=0,
             device="cpu", dtype="float64")


def _reference(spec: TrialSpec, seed: int) -> np.ndarray:
    """Θ_0 on the eval set of the plain trial of ``seed``, by per-example Jacobians (not the
    structured path the trial takes)."""
    plain = spec.replace(seed=seed, ensemble=1)
    data = dataset_for(plain)
    model = build_model(plain, data, 1, torch.float64, "cpu")
    return empirical_ntk(model, inputs(plain, data, data.x_eval), method="jacobian",
                         trace=True).numpy()


def _limit(spec: TrialSpec) -> np.ndarray:
    data = dataset_for(spec)
    return limit_kernels(spec, inputs(spec, data, data.x_eval)).ntk


def test_each_member_is_the_plain_trial_of_its_seed():
    spec = TrialSpec(**SMALL, seed=1, ensemble=4)
    outcome = run_trial(spec)
    assert outcome.status == "completed", outcome.error
    members = outcome.members
    assert members.seeds.tolist() == [4, 5, 6, 7]           # seed·S + j: disjoint blocks
    for j, seed in enumerate(members.seeds):
        np.testing.assert_allclose(members.kernels[j], _reference(spec, int(seed)),
                                   rtol=1e-10, atol=1e-12)
    # the trial's own checkpoint row is member 0's
    assert len(outcome.records) == 1 and outcome.records[0]["step"] == 0
    limit = _limit(spec)
    dist = [np.linalg.norm(k - limit) / np.linalg.norm(limit) for k in members.kernels]
    np.testing.assert_allclose(members.dist_inf, dist, rtol=1e-12)
    assert outcome.records[0]["dist_inf"] == pytest.approx(dist[0], rel=1e-12)
    # the trial's ensemble columns: m² and s from the members' kernels, by their definition
    k = members.kernels.reshape(4, -1)
    mean, norm2 = k.mean(0), (limit ** 2).sum()
    var = k.var(0, ddof=1).sum()
    assert members.shift_sq == pytest.approx(
        (((mean - limit.ravel()) ** 2).sum() - var / 4) / norm2, rel=1e-10)
    assert members.fluctuation == pytest.approx(np.sqrt(var / norm2), rel=1e-10)
    assert outcome.summary["ensemble_dist_inf"] == pytest.approx(np.mean(dist), rel=1e-12)


def test_an_ensemble_of_one_is_the_plain_trial():
    plain = TrialSpec(**SMALL, seed=3)
    assert plain.member(0) is plain
    assert plain.trial_id == TrialSpec(**SMALL, seed=3, ensemble=1).trial_id   # ids as before
    assert "ensemble" not in plain.to_dict() or plain.to_dict()["ensemble"] == 1
    outcome = run_trial(plain)
    assert outcome.members is None and [r["step"] for r in outcome.records] == [0]
    assert outcome.summary["ensemble_fluctuation"] is None


@pytest.mark.parametrize("changes, match", [
    ({"ensemble": 8, "steps": 10}, "ensemble: an ensemble's members are measured at "
                                   "initialisation only: set steps: 0"),
    ({"ensemble": 0}, "ensemble: must be an integer in"),
    ({"ensemble": 2.5}, "ensemble: must be an integer in"),
    ({"steps": -1}, "steps: must be an integer in [0,"),
    ({"ensemble": 40000, "n_eval": 64}, "use a smaller ensemble over more seeds"),
])
def test_bad_ensembles_are_refused_in_one_line(changes, match):
    with pytest.raises(SpecError, match=match.replace("[", r"\[")):
        TrialSpec(**{**SMALL, **changes})


def test_members_round_trip_through_the_store(tmp_path):
    spec = TrialSpec(**SMALL, ensemble=5)
    outcome = run_trial(spec)
    store.write_trial(tmp_path, "s", spec, outcome)
    rows = ntksweep.load_members(tmp_path)
    assert rows.member.tolist() == list(range(5)) and rows.seed.tolist() == list(range(5))
    # the upper triangle is stored: the kernel up to its last bit of asymmetry
    np.testing.assert_allclose(ntksweep.member_kernels(rows), outcome.members.kernels,
                               rtol=1e-14, atol=0)
    trials = store.load_trials(tmp_path)
    assert trials.ensemble_fluctuation.iloc[0] == pytest.approx(outcome.members.fluctuation)


def _ensemble_sweep(tmp_path):
    return load_sweep_spec({
        "name": "ens", "output_dir": str(tmp_path / "ens"),
        "base": {**SMALL, "ensemble": 6, "dtype": "float32"},
        "grid": {"width": [8, 32], "seed": [0, 1]}})


@pytest.mark.slow
def test_an_ensemble_sweep_writes_each_network_once(ray_local, tmp_path):
    spec = _ensemble_sweep(tmp_path)
    summary = run_sweep(spec, quiet=True)
    assert summary.counts == {"completed": 4}
    out = Path(summary.out_dir)
    rows = ntksweep.load_members(out)
    assert len(rows) == 4 * 6
    for _, group in rows.groupby("width"):   # seeds 0 and 1 hold members 0–5 and 6–11
        assert sorted(group.seed) == list(range(12))
    client = MlflowClient(summary.tracking_uri)
    exp = client.get_experiment_by_name("ens")
    runs = client.search_runs([exp.experiment_id], "tags.`ntksweep.role` = 'trial'")
    assert len(runs) == 4                        # one run per trial, not one per network
    trials = store.load_trials(out)
    for run in runs:
        tid = run.data.tags["trial_id"]
        row = trials.set_index("trial_id").loc[tid]
        assert run.data.metrics["ensemble_fluctuation"] == pytest.approx(
            row.ensemble_fluctuation)
    status = subprocess.run([sys.executable, "-m", "ntksweep.cli", "status", str(out)],
                            capture_output=True, text=True)
    assert status.returncode == 0 and "4 completed" in status.stdout, status.stdout
    # a members file cut short: resume moves the trial's files aside and runs it again
    victim = sorted((out / "members").rglob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:40])
    with pytest.warns(UserWarning, match="moved"):
        again = run_sweep(spec, quiet=True)
    assert again.counts == {"completed": 1} and again.skipped == 3
    rows_again = ntksweep.load_members(out)
    assert len(rows_again) == 4 * 6 and not rows_again.duplicated(["trial_id", "member"]).any()
    np.testing.assert_array_equal(ntksweep.member_kernels(rows_again),
                                  ntksweep.member_kernels(rows))


def _write_ensembles(out, base: dict, widths=(8, 16, 32), networks=6):
    for width in widths:
        spec = TrialSpec(**{**base, "width": width, "ensemble": networks})
        outcome = run_trial(spec)
        assert outcome.status == "completed", outcome.error
        store.write_trial(out, "s", spec, outcome)


def test_the_report_of_an_ensemble_sweep_draws_its_corrections(tmp_path):
    from ntksweep.analysis.report import make_report

    _write_ensembles(tmp_path, SMALL)
    report = make_report(tmp_path)
    names = {p.stem for p in report["figures"]}
    assert "corrections_vs_width" in names and "dist_inf_vs_width" in names
    assert not names & {"dist_init_vs_width", "gaps_vs_width", "loss_over_time"}  # untrained
    page = report["html"].read_text()
    assert "Finite-width exponents" in page and "The depth law" in page
    kept = np.load(next((tmp_path / "finite_width").glob("*.npz")))
    assert str(kept["reference"]) == "analytic"
    np.testing.assert_allclose(kept["limit"], _limit(TrialSpec(**SMALL)), rtol=1e-12)


def test_without_a_closed_form_the_reference_is_extrapolated_and_kept(tmp_path):
    from ntksweep.analysis.ensembles import save_limits, sweep_corrections
    from ntksweep.analysis.finite_width import extrapolate

    base = dict(dataset="tokens", tokens=4, dim=4, n_train=2, n_eval=3, depth=3,
                architecture="transformer", heads=1, attention_scaling="sqrt", steps=0,
                device="cpu", dtype="float64")
    _write_ensembles(tmp_path, base, networks=5)
    result = sweep_corrections(tmp_path, n_boot=20)
    assert set(result.table.reference) == {"extrapolated"} and result.checks.empty
    rows = ntksweep.load_members(tmp_path)
    by_width = {w: ntksweep.member_kernels(g) for w, g in rows.groupby("width")}
    (label, (reference, fit)), = result.fits.items()
    np.testing.assert_allclose(fit.limit, extrapolate(by_width).limit, rtol=1e-12)
    assert reference == "extrapolated" and np.isnan(rows.dist_inf).all()
    kept = np.load(save_limits(result, tmp_path)[0])
    assert str(kept["reference"]) == "extrapolated"
    np.testing.assert_array_equal(kept["limit"], fit.limit)


def test_a_network_two_ensembles_hold_counts_once(tmp_path):
    """Seed 1 of an ensemble of 4 holds networks 4–7, seed 0 of one of 8 networks 0–7:
    the analysis pools 8 networks per width, not 12."""
    from ntksweep.analysis.ensembles import sweep_corrections

    for width in (8, 16):
        for seed, networks in ((1, 4), (0, 8)):
            spec = TrialSpec(**{**SMALL, "width": width, "seed": seed, "ensemble": networks})
            store.write_trial(tmp_path, "s", spec, run_trial(spec))
    table = sweep_corrections(tmp_path, n_boot=10).table
    assert set(table.seeds) == {8}
