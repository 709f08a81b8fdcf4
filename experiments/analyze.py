"""Turn any sweep's Parquet into its figures, fitted exponents and HTML report.

    python experiments/analyze.py OUT_DIR

Prints the width exponents (log-log slope with 95 % CI) and, for circle sweeps with kept
kernels, the Jacot Fig. 1 check: the largest relative gap between the seed-mean Θ_0(x0, x(γ))
and Θ_∞ over γ, per width, and each width's mean dist_init(T).
"""

import sys

import numpy as np

import ntksweep
from ntksweep import analysis, store
from ntksweep.report import make_report


def run(out: str) -> dict:
    res = make_report(out)
    print(f"report: {res['html']}")
    if len(res["exponents"]):
        print(res["exponents"].to_string(index=False, float_format="%.3f"))
    trials, ckpts = ntksweep.load_results(out)
    checks = {}
    if ckpts.kernel_path.notna().any() and (ckpts.dataset == "circle").any():
        rows = analysis.circle_kernel_rows(ckpts, out, "first")
        for width, g in rows.groupby("width"):
            mean = g.groupby("gamma").theta.mean()
            spec = store.spec_from_row(trials[trials.width == width].iloc[0])
            limit = analysis.circle_limit(spec, mean.index.to_numpy())
            gap = float(np.max(np.abs(mean.values - limit) / np.abs(limit)))
            moved = float(trials[trials.width == width].final_dist_init.mean())
            checks[int(width)] = {"max_rel_gap_theta0": gap, "dist_init_T": moved}
            print(f"n={width}: seed-mean Θ_0 within {100 * gap:.1f} % of Θ_∞ at every γ; "
                  f"mean dist_init(T) = {moved:.4f}")
    movement = {}
    done = trials[trials.status == "completed"]
    if done.width.nunique() >= 2:
        fit = analysis.fit_power_law(done.width, done.final_dist_init)
        # lazy training: the kernel moves O(1/n) (Dyer & Gur-Ari 2019); measured −0.8 … −0.92
        ok = -1.1 <= fit.slope <= -0.6
        movement = {"slope": fit.slope, "lo": fit.slope_lo, "hi": fit.slope_hi, "pass": ok}
        ratio = (done.width.max() / done.width.min()) ** -fit.slope
        print(f"{'PASS' if ok else 'FAIL'}: dist_init(T) ∝ n^{fit.slope:.2f} "
              f"[{fit.slope_lo:.2f}, {fit.slope_hi:.2f}] (expected −1.1 … −0.6, O(1/n)): "
              f"n={done.width.min()} moves {ratio:.1f}× more than n={done.width.max()}")
    if ckpts.outputs_path.notna().any() and (ckpts.dataset == "circle").any():
        bands = analysis.fig2_bands(trials[trials.status == "completed"], ckpts, out)
        for width, b in bands.groupby("width"):
            inside = np.mean((b.net_q50 >= b.inf_q10) & (b.net_q50 <= b.inf_q90))
            spread = float(np.mean(b.net_q90 - b.net_q10) / np.mean(b.inf_q90 - b.inf_q10))
            checks.setdefault(int(width), {}).update(
                {"median_inside_inf_band": float(inside), "spread_ratio": spread})
            print(f"n={width}: network median inside the n→∞ 10–90 % band at "
                  f"{100 * inside:.0f} % of γ; spread ratio network/n→∞ {spread:.2f}")
    return {"report": res, "checks": checks, "movement": movement}


if __name__ == "__main__":
    run(sys.argv[1])
