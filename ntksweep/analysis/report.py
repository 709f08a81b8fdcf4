"""``ntksweep report OUT``: the standard figures and tables of any sweep, as PNG/SVG files
and one self-contained HTML page (figures embedded), from the Parquet store only."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ..console import duration_text, stability_notes
from ..errors import UserError
from ..records import Status
from ..store import is_uri, load_results, read_text
from . import ensembles, jacot, regimes, stats
from . import figures as figs

__all__ = ["default_report_dir", "make_report"]


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _dir_name(out_dir: str | Path) -> str:
    """The last component of a path or URI (``s3://b/sweeps/x?opt=1`` → ``x``)."""
    return Path(str(out_dir).split("?")[0]).name


def default_report_dir(out_dir: str | Path) -> Path:
    """OUT itself for a local sweep; for an object-store sweep a local ./<name>-report."""
    return Path(f"{_dir_name(out_dir)}-report") if is_uri(out_dir) else Path(out_dir)


def make_report(out_dir: str | Path, dest: str | Path | None = None) -> dict:
    """Write figures to DEST/report/ and DEST/report.html (DEST: see ``default_report_dir``);
    returns {'html': path, 'figures': [PNG paths], 'captions': {figure name: caption},
    'exponents': DataFrame}."""
    out = out_dir
    trials, ckpts = load_results(out)
    if trials.empty:
        raise UserError(f"{out} has no finished trials to report on; run the sweep first")
    dest = Path(dest) if dest is not None else default_report_dir(out)
    ok = trials[trials.status.map(lambda s: Status(s).done)]
    figures, tables, exps = _figures_and_tables(out, ok, ckpts, dest / "report")
    status = trials.status.value_counts().rename_axis("status").reset_index(name="trials")
    name = html.escape(_dir_name(out))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>ntksweep report: {name}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "img{max-width:100%} table{border-collapse:collapse} td,th{border:1px solid #ccc;"
        "padding:2px 6px;font-size:13px} .meta td{border:none}</style></head><body>",
        f"<h1>ntksweep report: {name}</h1>", _header(out, trials),
        "<h2>Trials</h2>", status.to_html(index=False),
    ]
    if notes := stability_notes(trials):
        parts += ["<h2>Near the edge of stability</h2><p>These groups train with a step size "
                  "near or past gradient descent's edge (2ηλ_max(Θ₀)/N = 2): their kernels "
                  "move because of the step size, not only the width.</p><ul>",
                  *[f"<li>{html.escape(n.strip())}</li>" for n in notes], "</ul>"]
    for title, table in tables:
        parts += [f"<h2>{html.escape(title)}</h2>",
                  table.to_html(index=False, float_format="%.3f", na_rep="")]
    parts.append("<h2>Figures</h2>")
    parts += [f"<figure>{_img(p)}<figcaption>{html.escape(caption)} <small>({p.name})"
              f"</small></figcaption></figure>" for p, caption in figures]
    spec_text = read_text(out, "sweep.yaml") or ""
    parts += ["<h2>Sweep spec</h2>", f"<pre>{html.escape(spec_text)}</pre>", "</body></html>"]
    dest.mkdir(parents=True, exist_ok=True)
    page = dest / "report.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return {"html": page, "figures": [p for p, _ in figures],
            "captions": {p.stem: caption for p, caption in figures}, "exponents": exps}


def _figures_and_tables(out, ok: pd.DataFrame, ckpts: pd.DataFrame, figdir: Path):
    """The figures (PNG path, caption: what is plotted and what to look for) and titled
    tables a sweep's columns allow."""
    figures: list[tuple[Path, str]] = []
    tables = []

    def add(fig, name, caption):
        figures.extend((p, caption) for p in figs.save_figure(fig, figdir, name)
                       if p.suffix == ".png")

    exps = pd.DataFrame()
    done = ckpts[ckpts.trial_id.isin(ok.trial_id)]
    trained = ok[ok.steps > 0]           # init-only trials (steps 0) have no training
    if ok.width.nunique() >= 2:
        _width_figures(ok, trained, add)
        exps = pd.concat([stats.width_exponents(ok, "init_dist_inf"),
                          *([stats.width_exponents(trained, "final_dist_init")]
                            if len(trained) else [])], ignore_index=True)
        tables.append(("Width exponents (log-log slope, 95 % CI)", exps))
        if done.eig1.notna().any():
            add(figs.fig_eigenvalues_vs_width(done), "eigenvalues_vs_width", CAPTIONS["eigs"])
    if ok.final_test_loss.notna().any():
        score = regimes.test_score(ok)
        add(regimes.fig_test_scores(ok), f"test_{score}", CAPTIONS["test"])
        tables.append((f"Test {score}: trained nets (seed mean, 95 % CI), the Θ∞ linear model "
                       "after the same steps (gd_inf), and kernel regression with Θ∞, the "
                       "NNGP Σ, Θ₀ and Θ_T", regimes.test_table(ok)))
    coords = trained[trained.final_coord_readout_change.notna()]   # (older files lack them)
    if coords.width.nunique() >= 2:
        add(regimes.fig_coord_check(coords), "coord_check", CAPTIONS["coord"])
    if ok.depth.nunique() >= 2:
        add(figs.fig_depth_width_heatmap(ok), "depth_width_heatmap", CAPTIONS["heatmap"])
    if not (trend := stats.depth_trend(ok)).empty:
        tables.append(("Depth trend at fixed width (slope of log dist_inf vs log L, 95 % CI)",
                       trend))
    if len(done) and (done.step > 0).any():
        _time_figures(done, add)
    if (ok.ensemble > 1).any():
        _ensemble_section(out, figdir.parent, add, tables)
    if ckpts.kernel_path.notna().any() and (ckpts.dataset == "circle").any():
        add(jacot.fig_jacot_fig1(ckpts, out), "jacot_fig1", CAPTIONS["jacot1"])
    if ckpts.outputs_path.notna().any() and (ckpts.dataset == "circle").any():
        add(jacot.fig_jacot_fig2(ok, done, out), "jacot_fig2", CAPTIONS["jacot2"])
    return figures, tables, exps


# what each figure plots and what to look for
CAPTIONS = {
    "dist_inf": "Distance of the initial empirical NTK from its infinite-width limit, "
                "‖Θ₀ − Θ∞‖/‖Θ∞‖, against width (log-log; seed mean, 95 % band; dotted: the "
                "fitted power law, its slope in the legend). Jacot et al.: it falls like "
                "n^−½ — look for slopes near −0.5.",
    "dist_init": "How far the kernel moves during training, ‖Θ_T − Θ₀‖/‖Θ₀‖ at the last "
                 "step, against width. The lazy regime: it falls with width (like n^−½ or "
                 "faster in the NTK parametrization; flat in μP, whose kernel keeps moving).",
    "gaps": "The trained network against its two linear models at the last step: RMS "
            "distance to the model with Θ∞ (gap_inf) and with its own Θ₀ (gap_lin), "
            "against width. Both shrink with width; gap_lin is the smaller — the network "
            "follows its own linearisation before it follows the limit's.",
    "eigs": "The top eigenvalues of the initial empirical NTK against width (seed mean, "
            "95 % band), with the limit Θ∞'s as dashed lines: the finite nets' spectra "
            "converge to the limit's from above or below as n grows.",
    "test": "Test scores of the trained networks and of the kernel predictors (Θ∞ linear "
            "model, kernel regression with Θ∞, Σ, Θ₀, Θ_T) against width: where the "
            "trained nets meet the kernel predictors, training is kernel regression.",
    "coord": "The coordinate check: RMS of each layer role's pre-activations and of their "
             "change since initialisation, against width. In μP every role's change stays "
             "order one; in the NTK parametrization it falls with width.",
    "heatmap": "Seed mean of ‖Θ₀ − Θ∞‖/‖Θ∞‖ on the depth × width grid (log colour scale): "
               "it grows with depth at fixed width (Hanin & Nica: with depth/width) and "
               "falls with width at fixed depth.",
    "dist_init_t": "How the kernel moves over training, ‖Θ_t − Θ₀‖/‖Θ₀‖ against training "
                   "time t = lr × step, one line per width: wider nets' kernels move less "
                   "(the NTK stays constant as n → ∞).",
    "dist_inf_t": "The empirical NTK's distance from the limit over training, "
                  "‖Θ_t − Θ∞‖/‖Θ∞‖, one line per width: at large width it starts small and "
                  "stays there; at small width it starts larger and drifts.",
    "loss_t": "Training loss over training time, one line per width: with the NTK "
              "parametrization's lr the wide nets' curves coincide (they train as their "
              "common limit does).",
    "corrections": "The ensembles' finite-width corrections against width (log-log, 95 % "
                   "CIs, dotted: the fitted power laws): the mean shift ‖E Θ₀ − Θ∞‖/‖Θ∞‖ "
                   "(its finite-seed bias removed) and the seed-to-seed fluctuation. The 1/n "
                   "expansion predicts slopes −1 and −½; a mean shift within its noise has "
                   "error bars down to the axis.",
    "jacot1": "Jacot et al.'s Figure 1: the empirical NTK on the circle at init and after "
              "training, for the sweep's widths, against the limit Θ∞ (black): wider nets' "
              "kernels lie on the limit and move less.",
    "jacot2": "Jacot et al.'s Figure 2: the trained networks' outputs on the circle against "
              "the Θ∞ kernel-flow prediction, per width: the wide nets follow the kernel "
              "prediction.",
}


def _width_figures(ok: pd.DataFrame, trained: pd.DataFrame, add) -> None:
    add(figs.fig_dist_vs_width(ok), "dist_inf_vs_width", CAPTIONS["dist_inf"])
    if trained.width.nunique() < 2:
        return
    add(figs.fig_dist_vs_width(trained, "final_dist_init", "‖Θ_T − Θ₀‖ / ‖Θ₀‖ after "
                               "training"), "dist_init_vs_width", CAPTIONS["dist_init"])
    values = ["final_gap_inf", "final_gap_lin"]
    gaps = trained.melt(id_vars=[c for c in trained.columns if c not in values],
                        value_vars=values, var_name="gap", value_name="final_gap")
    if gaps.final_gap.notna().any():
        gaps["gap"] = gaps.gap.str.removeprefix("final_")
        add(figs.fig_dist_vs_width(gaps, "final_gap", "RMS gap to the linear model at the "
                                   "last step", series=("gap",)),
            "gaps_vs_width", CAPTIONS["gaps"])


def _ensemble_section(out, dest: Path, add, tables: list) -> None:
    """The ensembles' finite-width corrections (``analysis.ensembles``): the figure, the
    exponents, the depth law, the extrapolation's check; the fits kept in DEST/finite_width."""
    result = ensembles.sweep_corrections(out)
    if result.table.empty:
        return
    ensembles.save_limits(result, dest)
    add(figs.fig_corrections(result.table, result.exponents, result.by), "corrections_vs_width",
        CAPTIONS["corrections"])
    tables.append(("Finite-width exponents per part of Θ₀: mean shift m ∝ n^a, fluctuation "
                   "s ∝ n^b (95 % CI; reference: the closed-form Θ∞ or Θ̂∞ extrapolated "
                   "over the widths)", result.exponents))
    law = result.table[result.table.part.isin(["all", "diagonal"])].pivot_table(
        index=[*result.by, "part"], columns="width", values="n_fluctuation_sq").reset_index()
    tables.append(("The depth law: n·s² per width (flat in n where s ∝ n^−½; its growth "
                   "with depth is the Hanin & Nica effect)", law))
    if not result.checks.empty:
        tables.append(("Θ̂∞ extrapolated over the widths against the closed form: its error "
                       "beside the widest width's seed mean's (ratio > 1: the fit is closer)",
                       result.checks))


def _time_figures(done: pd.DataFrame, add) -> None:
    add(figs.fig_over_time(done), "dist_init_over_time", CAPTIONS["dist_init_t"])
    if done.dist_inf.notna().any():
        add(figs.fig_over_time(done, "dist_inf", "‖Θ_t − Θ∞‖ / ‖Θ∞‖"), "dist_inf_over_time",
            CAPTIONS["dist_inf_t"])
    add(figs.fig_over_time(done, "train_loss", "training loss"), "loss_over_time",
        CAPTIONS["loss_t"])


def _header(out, trials: pd.DataFrame) -> str:
    """When, on what and with which version the numbers were made, and where MLflow has them."""
    from .. import __version__
    from ..store import read_meta

    meta = read_meta(out)
    devices = ", ".join(f"{d} ({n})" for d, n in trials.run_device.value_counts().items())
    hosts = ", ".join(sorted(trials.host.dropna().unique()))
    wall = trials.wall_seconds.sum()
    rows = [("written", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
            ("ntksweep", __version__),
            ("compute", f"{duration_text(wall)} in {len(trials)} trials "
                        f"(median {duration_text(trials.wall_seconds.median())})"),
            ("hardware", f"{devices} on {hosts}"),
            ("MLflow", _mlflow_link(out, meta.tracking_uri if meta else ""))]
    cells = "".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in rows)
    return f"<table class='meta'>{cells}</table>"


def _mlflow_link(out, uri: str) -> str:
    from ..tracking.uri import is_embedded

    if not uri:
        return "not tracked"
    if is_embedded(uri):
        return (f"the SQLite store in the output dir — open it with <code>ntksweep ui "
                f"{html.escape(str(out))}</code>")
    if uri.startswith(("http://", "https://")):
        return f"<a href='{html.escape(uri)}'>{html.escape(uri)}</a>"
    return (f"{html.escape(uri)} — open it with <code>ntksweep ui {html.escape(str(out))}"
            "</code>")
