"""Check a sweep against its spec's "Expected:" lines, and print its fitted exponents.

    python experiments/analyze.py experiments/digits.yaml            # the spec's output dir
    python experiments/analyze.py experiments/digits.yaml --smoke    # its -smoke output dir
    python experiments/analyze.py ntksweep-out/digits                # an output dir: no checks
    python experiments/analyze.py SPEC --report                      # also rebuild report.html

Each "# Expected:" comment line of a spec is a check, written

    Expected: STAT(COLUMN) in [LO, HI] [where KEY=VALUE, ...]

over the finished trials (``ntksweep.load_results``; completed and diverged, as every
summary) that match every KEY=VALUE, in each
group of them (every field the sweep varies there but width and the seeds, as the report's
tables): the check passes when every group's value is in the interval.

- ``slope``: the log-log slope of COLUMN against width (the width exponent), fitted from 3
  widths or more (SKIP below: two points always fit a line);
- ``two_point_slope``: log(m₂/m₁)/log(n₂/n₁) between the seed means m at the narrowest and
  the widest width n — for sweeps of two widths by design (Jacot et al.'s 500 and 10,000);
- ``spread``, ``spread_slope``: the seed-to-seed coefficient of variation of COLUMN
  (std / |mean| over 3 seeds or more) at each width — its mean over the widths, and its
  log-log slope against width (3 widths or more);
- ``mean``, ``min``, ``max``: of COLUMN over a group's trials;
- ``shift_exponent``, ``fluctuation_exponent``: for sweeps of ensembles, the exponents a
  (mean shift m ∝ n^a) and b (fluctuation s ∝ n^b) of Θ_0's entries COLUMN (all, diagonal,
  off_diagonal) per group (``ntksweep.analysis.ensembles``);
- ``widest``: for circle sweeps, a check of the Jacot et al. figures at the widest width —
  ``max_rel_gap_theta0`` (Fig. 1: seed-mean Θ_0 against Θ_∞ over γ), ``spread_ratio`` and
  ``median_inside_inf_band`` (Fig. 2: the trained nets' band against the limit's).

Prints PASS/FAIL per line and exits 1 if any check fails (SKIP: nothing to check it on).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

import ntksweep
from ntksweep import analysis, store
from ntksweep.analysis import ensembles, jacot
from ntksweep.analysis.report import make_report
from ntksweep.records import Status
from ntksweep.sweep_spec import load_sweep_spec

EXPECTED = re.compile(r"#\s*Expected:\s*(?P<stat>\w+)\((?P<col>\w+)\)\s+in\s+"
                      r"\[(?P<lo>[-+.\deE]+),\s*(?P<hi>[-+.\deE]+)\]"
                      r"(?:\s+where\s+(?P<where>.+))?\s*$")
STATS = ("slope", "two_point_slope", "spread", "spread_slope", "mean", "min", "max",
         "widest", "shift_exponent", "fluctuation_exponent")
EXPONENTS = {"shift_exponent": "a", "fluctuation_exponent": "b"}   # ensembles' (of parts)


def expected_lines(spec_text: str) -> list[dict]:
    """The machine-checkable "Expected:" lines of a spec, parsed."""
    checks = []
    for line in spec_text.splitlines():
        m = EXPECTED.match(line.strip())
        if m and m["stat"] in STATS:
            where = dict(kv.strip().split("=", 1) for kv in (m["where"] or "").split(",")
                         if "=" in kv)
            checks.append({"text": line.strip().lstrip("# "), "stat": m["stat"],
                           "col": m["col"], "lo": float(m["lo"]), "hi": float(m["hi"]),
                           "where": where})
    return checks


def figure_checks(trials, ckpts, out) -> dict[int, dict]:
    """Per width of a circle sweep: the Fig. 1 and Fig. 2 comparisons with the limit."""
    checks: dict[int, dict] = {}
    circle = (ckpts.dataset == "circle").any() if len(ckpts) else False
    if circle and ckpts.kernel_path.notna().any():
        rows = jacot.circle_kernel_rows(ckpts, out, "first")
        for width, g in rows.groupby("width"):
            mean = g.groupby("gamma").theta.mean()
            spec = store.spec_from_row(trials[trials.width == width].iloc[0])
            limit = jacot.circle_limit(spec, mean.index.to_numpy())
            checks[int(width)] = {
                "max_rel_gap_theta0": float(np.max(np.abs(mean.values - limit) / np.abs(limit))),
                "dist_init_T": float(trials[trials.width == width].final_dist_init.mean())}
    if circle and ckpts.outputs_path.notna().any():
        for width, b in jacot.fig2_bands(trials, ckpts, out).groupby("width"):
            checks.setdefault(int(width), {}).update({
                "median_inside_inf_band": float(np.mean((b.net_q50 >= b.inf_q10)
                                                        & (b.net_q50 <= b.inf_q90))),
                "spread_ratio": float(np.mean(b.net_q90 - b.net_q10)
                                      / np.mean(b.inf_q90 - b.inf_q10))})
    return checks


def _statistic(stat: str, col: str, rows) -> float:
    """One group's value of a check's statistic (NaN: not defined on these rows)."""
    if stat == "slope":
        if rows.width.nunique() < analysis.MIN_WIDTHS:
            return np.nan
        return analysis.fit_power_law(rows.width, rows[col]).slope
    if stat in ("spread", "spread_slope"):
        return _spread(stat, col, rows)
    if stat == "two_point_slope":
        means = rows.groupby("width")[col].mean()
        if len(means) < 2:
            return np.nan
        return float(np.log(means.iloc[-1] / means.iloc[0])
                     / np.log(means.index[-1] / means.index[0]))
    return float(getattr(rows[col], stat)())


def _spread(stat: str, col: str, rows) -> float:
    """The seed-to-seed spread of ``col``: at each width its coefficient of variation
    std/|mean| over the seeds (at least 3); ``spread`` their mean over widths,
    ``spread_slope`` their log-log slope against width (from ``MIN_WIDTHS`` widths)."""
    by_width = rows.groupby("width")[col]
    cv = (by_width.std() / by_width.mean().abs())[by_width.count() >= 3].dropna()
    if stat == "spread":
        return float(cv.mean()) if len(cv) else np.nan
    if len(cv) < analysis.MIN_WIDTHS:
        return np.nan
    return analysis.fit_power_law(cv.index.to_numpy(), cv.to_numpy()).slope


def evaluate_groups(check: dict, done, figures: dict[int, dict], corrections=None
                    ) -> list[tuple[str, float]]:
    """(group, value) for each group of the trials the check's ``where`` selects
    (``corrections``: the sweep's ``SweepCorrections``, for the ensembles' exponents)."""
    if check["stat"] == "widest":
        return [("widest", figures[max(figures)].get(check["col"], np.nan) if figures
                 else np.nan)]
    rows = done
    if check["stat"] in EXPONENTS:   # one row per group and part: the group's exponents
        if corrections is None or corrections.exponents.empty:
            return []
        rows = corrections.exponents
        rows = rows[rows.part == check["col"]]
    for key, value in check["where"].items():
        if key not in rows.columns:
            return []
        rows = rows[rows[key].astype(str) == value]
    if check["stat"] in EXPONENTS:
        by = [c for c in corrections.by if c in rows.columns]
        return [(analysis.group_label(by, key, ", "), float(g[EXPONENTS[check["stat"]]].iloc[0]))
                for key, g in analysis.groups(rows, by)]
    if check["col"] not in rows.columns or rows.empty:
        return []
    by = analysis.group_columns(rows)
    return [(analysis.group_label(by, key, ", "), _statistic(check["stat"], check["col"], g))
            for key, g in analysis.groups(rows, by)]


def evaluate(check: dict, done, figures: dict[int, dict], corrections=None) -> float:
    """The check's deciding value: of the groups' finite values, the one farthest outside
    [lo, hi] (or nearest its edge, when all are inside); NaN when none is finite."""
    values = [v for _, v in evaluate_groups(check, done, figures, corrections)
              if np.isfinite(v)]
    if not values:
        return np.nan
    mid, half = (check["lo"] + check["hi"]) / 2, (check["hi"] - check["lo"]) / 2
    return max(values, key=lambda v: abs(v - mid) - half)


def run(target: str, *, smoke: bool = False, out: str | None = None,
        report: bool = False) -> dict:
    """Check the sweep of ``target`` (a spec file or an output dir); returns the results."""
    path = Path(target)
    checks = []
    if path.suffix in (".yaml", ".yml") and path.is_file():
        out = out or load_sweep_spec(path, smoke=smoke).output_dir
        checks = expected_lines(path.read_text())
    out = out or target
    trials, ckpts = ntksweep.load_results(out)
    if trials.empty:
        raise SystemExit(f"{out}: no trials yet; run the sweep first")
    done = trials[trials.status.map(lambda s: Status(s).done)]   # completed and diverged
    result = {"out": out, "report": make_report(out) if report else None}
    if report:
        print(f"report: {result['report']['html']}")
    if done.width.nunique() >= 2:
        exps = analysis.width_exponents(done, "init_dist_inf")
        print(exps.to_string(index=False, float_format="%.3f"))
    result["figures"] = figures = figure_checks(done, ckpts, out)
    for width, c in sorted(figures.items()):
        print(f"n={width}: " + ", ".join(f"{k} {v:.3g}" for k, v in c.items()))
    corrections = None
    if (done.ensemble > 1).any():
        corrections = ensembles.sweep_corrections(out)
        print(corrections.exponents.to_string(index=False, float_format="%.3f"))
    result["expected"] = []
    for check in checks:
        value = evaluate(check, done, figures, corrections)
        verdict = "SKIP" if not np.isfinite(value) else \
            "PASS" if check["lo"] <= value <= check["hi"] else "FAIL"
        per_group = evaluate_groups(check, done, figures, corrections)
        result["expected"].append({**check, "value": value, "verdict": verdict,
                                   "groups": per_group})
        shown = "; ".join(f"{g} {v:.3g}" for g, v in per_group) if len(per_group) > 1 \
            else f"{value:.3g}"
        print(f"{verdict}: {check['text']}  (measured {shown})")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="an experiment spec (YAML) or a sweep's output dir")
    p.add_argument("--smoke", action="store_true", help="check the spec's --smoke run")
    p.add_argument("--out", help="the output dir, if not the spec's")
    p.add_argument("--report", action="store_true", help="also rebuild the HTML report")
    args = p.parse_args(argv)
    result = run(args.target, smoke=args.smoke, out=args.out, report=args.report)
    return 1 if any(c["verdict"] == "FAIL" for c in result["expected"]) else 0


if __name__ == "__main__":
    sys.exit(main())
