"""``ntksweep`` command line: thin wrappers over importable functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from pathlib import Path

from . import phases  # first: its clock starts with the command
from .consent import grant_imports
from .errors import UserError
from .records import Status

DEFAULT_SPEC = "quickstart (embedded)"


def _default_spec_path() -> Path:
    return Path(str(resources.files("ntksweep") / "specs" / "quickstart.yaml"))


def _table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = ".4g") -> str:
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def fmt(v):
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


# --------------------------------------------------------------------------- run
def cmd_run(args) -> int:
    from .sweep_spec import load_sweep_spec, parse_overrides

    overrides = parse_overrides(args.set or [])
    if args.out:
        overrides["output_dir"] = args.out
    grant_imports(args.allow_import)   # the user's consent (``consent``)
    spec_path = args.spec or _default_spec_path()
    spec = load_sweep_spec(spec_path, overrides, smoke=args.smoke)
    if args.dry_run:
        _print_plan(spec, args)
        return 0
    from .sweep import run_sweep

    if not args.verbose:
        phases.quiet_start()
    summary = run_sweep(spec, address=args.address, tracking_uri=args.tracking_uri,
                        force=args.force, quiet=args.quiet, num_cpus=args.num_cpus,
                        tracking=not args.no_tracking)
    _print_summary(spec, summary)
    if summary.disk_full:
        print(f"Stopped: {summary.disk_full}. Finished trials are saved.", file=sys.stderr)
        return 1
    if summary.interrupted:
        print("Interrupted: finished trials are saved; run the same command again to resume.")
        return 130
    if args.report:
        _report(summary.out_dir, summary.tracking_uri)
    return 0 if not summary.counts.get(Status.FAILED.value) else 1


def _print_plan(spec, args) -> None:
    """``run --dry-run``: what would run, what is done, and each trial's state."""
    from .plan import plan_sweep

    plan = plan_sweep(spec, tracking_uri=args.tracking_uri, tracking=not args.no_tracking,
                      force=args.force, address=args.address)
    states = [r["state"] for r in plan["trials"]]
    done = {s.value for s in Status if s.done}
    print(f"sweep {spec.name!r} (id {plan['sweep_id']}) → {plan['out_dir']}")
    print(f"{len(states)} trials: {states.count('todo')} to run, "
          f"{sum(s in done for s in states)} already done, "
          f"{sum(s.startswith('rerun') for s in states)} to re-run")
    for note in plan["notes"]:
        print(f"note: {note}")
    print("axes:")
    for k, v in plan["axes"].items():
        print(f"  {k}: {v}")
    print(_table(plan["trials"]))


def _print_summary(spec, summary) -> None:
    """After a sweep: its counts, notes, and where its results are and how to load them."""
    out = summary.out_dir
    parts = [f"{v} {k}" for k, v in sorted(summary.counts.items())]
    parts += [f"{summary.skipped} already done"] if summary.skipped else []
    parts += [f"{summary.retried} retried"] if summary.retried else []
    print(f"\nsweep {spec.name!r} (id {summary.sweep_id}): {summary.total} trials — "
          f"{', '.join(parts) or 'none finished'} in {summary.wall_seconds:.1f} s")
    _closing_notes(out, spec, summary)
    if summary.tracking_degraded:
        print(f"MLflow tracking stopped mid-sweep ({summary.tracking_degraded}); Parquet is "
              f"complete. Push the rest later with: ntksweep sync {out}")
    print(f"\nResults in {out}")
    print(f"  pandas:    import ntksweep; trials, ckpts = ntksweep.load_results({str(out)!r})")
    if any(t.ensemble > 1 for t in spec.trials()):
        print(f"  networks:  ntksweep.load_members({str(out)!r})   (one row per network)")
    if summary.tracking_uri:
        print(f"  MLflow UI: ntksweep ui {out}    (tracking URI {summary.tracking_uri})")
    else:
        print(f"  MLflow:    not tracked (--no-tracking); push the runs with: ntksweep sync {out}")


def _closing_notes(out: str, spec, summary) -> None:
    """The failures (with where their tracebacks are) and the headline result."""
    from .console import failures, headline, stability_notes
    from .store import load_trials

    trials = load_trials(out)
    if summary.counts.get(Status.FAILED.value):
        print("\nfailed trials (tracebacks: the 'error' column of load_results, or each "
              "run's 'error' tag in MLflow):")
        print("\n".join(failures(trials, list(spec.axes()))))
    if lines := headline(trials):
        print("\nheadline: " + "\n".join(lines))
    if notes := stability_notes(trials):
        print("\nnear the edge of stability:\n" + "\n".join(notes))


# --------------------------------------------------------------------------- trial
def cmd_trial(args) -> int:
    from .plan import check_trials
    from .sweep_spec import parse_overrides
    from .trial import resolve_device, run_trial
    from .trial_spec import TRIAL_FIELDS, TrialSpec
    from .yaml_input import load_yaml, read_spec_text

    fields = {}
    if args.spec:
        if not Path(args.spec).is_file():
            raise UserError(f"trial spec {args.spec!r} does not exist")
        fields = load_yaml(read_spec_text(Path(args.spec), "trial spec"), args.spec)[0] or {}
        if not isinstance(fields, dict):
            raise UserError(f"{args.spec}: a trial spec is a mapping of trial fields")
    fields.update(parse_overrides(args.set or []))
    grant_imports(args.allow_import)   # the user's consent (``consent``)
    # per-field flags are parsed like --set values (YAML scalars: 1e-3, null, [1, 2])
    fields.update({name: load_yaml(getattr(args, name), f"--{name}")[0] for name in TRIAL_FIELDS
                   if getattr(args, name, None) is not None})
    spec = TrialSpec.from_dict(fields)
    check_trials([spec])                      # the data, the network, the budget
    resolve_device(spec.device)               # this process runs it: its devices
    print(f"trial {spec.trial_id}: width={spec.width} depth={spec.depth} "
          f"activation={spec.activation} dataset={spec.dataset} lr={spec.lr} steps={spec.steps}")
    result = run_trial(spec)
    cols = ["step", "t", "train_loss", "eval_loss", "dist_inf", "dist_init", "align_inf",
            "f_change", "gap_inf", "gap_lin"]
    print(_table(result.records, cols))
    print(f"status: {result.status} on {result.device}; wall {result.wall_seconds:.2f} s "
          f"(train {result.train_seconds:.2f} s, kernels {result.kernel_seconds:.2f} s)")
    if result.error:
        print(result.error, file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result.records, indent=1))
    return 0 if result.status != Status.FAILED else 1


# --------------------------------------------------------------------------- report
def _report(out: str, tracking_uri: str, dest: str | None = None) -> None:
    """Write the report; with a ``tracking_uri`` its figures and page also become artifacts
    of the sweep's parent run ("": an untracked sweep, nothing goes to MLflow)."""
    from .analysis.report import make_report
    from .console import exponent_lines

    res = make_report(out, dest)
    print("\n".join(exponent_lines(res["exponents"])))
    print(f"report: {res['html']} ({len(res['figures'])} figures in "
          f"{Path(res['html']).parent / 'report'})")
    if tracking_uri:
        from .tracking.tracker import open_tracker

        meta = _sweep_meta(out)       # files only: a live sweep's runs stay as they are
        tracker = open_tracker(tracking_uri, meta.name, meta.sweep_id, role="artifacts")
        for path in [res["html"], *res["figures"]]:
            tracker.log_sweep_artifact(path)
        tracker.close("FINISHED")


def cmd_report(args) -> int:
    meta = _sweep_meta(args.out)
    uri = _tracking_uri(args, meta) if (args.tracking_uri or meta.tracking_uri) else ""
    _report(args.out, uri, args.html_dir)
    return 0


# --------------------------------------------------------------------------- ui / sync
def _sweep_meta(out: str):
    from .gram.spec import read_manifest
    from .store import read_meta

    meta = read_meta(out)
    if meta is None and read_manifest(out) is not None:
        raise UserError(f"{out!r} holds a kernel job, not a sweep: `ntksweep status {out}` "
                        f"shows its tiles, `ntksweep ui {out}` its MLflow runs, and "
                        f"ntksweep.gram.GramMatrix({str(out)!r}, 'train', 'ntk') reads it")
    if meta is None:
        raise UserError(f"{out!r} is not an ntksweep output dir (no sweep.json)")
    return meta


def _tracking_uri(args, meta) -> str:
    """--tracking-uri, $MLFLOW_TRACKING_URI, or the store the sweep ran with."""
    from .tracking.uri import resolve_tracking_uri

    return resolve_tracking_uri(args.tracking_uri, recorded=meta.tracking_uri,
                                out_dir=args.out)[0]


def cmd_ui(args) -> int:
    from .gram.spec import job_experiment, read_manifest
    from .tracking.ui import serve_ui

    if (manifest := read_manifest(args.out)) is not None:      # a kernel job's dir
        return serve_ui(_job_tracking_uri(args), job_experiment(manifest["spec"]["name"]),
                        args.host, args.port, what="kernel job")
    meta = _sweep_meta(args.out)
    return serve_ui(_tracking_uri(args, meta), meta.name, args.host, args.port,
                    sweep_id=meta.sweep_id)


def _job_tracking_uri(args) -> str:
    """A kernel job's store, as ``ntksweep kernel`` chose it: --tracking-uri,
    $MLFLOW_TRACKING_URI, else the SQLite file in its output dir, which must be there."""
    from .tracking.uri import resolve_tracking_uri

    uri, explicit = resolve_tracking_uri(args.tracking_uri, out_dir=args.out)
    if not explicit and not (Path(args.out) / "mlflow.db").is_file():
        raise UserError(f"{args.out!r} holds a kernel job without an MLflow store (it ran with "
                        "--no-tracking or with a --tracking-uri: give that one here)")
    return uri


def cmd_sync(args) -> int:
    from .store import read_text
    from .sync import sync_from_store
    from .tracking.uri import redact

    meta = _sweep_meta(args.out)
    uri = _tracking_uri(args, meta)
    spec_yaml = read_text(args.out, "sweep.yaml") or ""
    res = sync_from_store(args.out, uri, meta.name, meta.sweep_id, spec_yaml)
    print(f"synced {args.out} → {redact(uri)}: {res['pushed']} trials pushed, "
          f"{res['already_there']} already there")
    return 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ntksweep",
        description="Measure how far finite networks' NTKs are from their infinite-width "
                    "limit, over sweeps on Ray, tracked in MLflow, stored in Parquet.")
    p.add_argument("--version", action="version", version=f"ntksweep {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    from .gram.command import add_kernel  # no torch until the command runs

    for add in (_add_run, _add_trial, _add_status, _add_ui, _add_report, _add_sync,
                add_kernel):
        add(sub)
    return p


def _add_run(sub) -> None:
    r = sub.add_parser("run", help="run a sweep spec (YAML) on Ray",
                       description="Run every trial of a sweep spec not already done in its "
                       "output dir (re-running resumes). Without SPEC, runs the embedded "
                       "quick-start sweep.")
    r.add_argument("spec", nargs="?", help=f"sweep spec YAML (default: {DEFAULT_SPEC})")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a base field, a top-level key, a grid axis or a resource, "
                   "e.g. --set steps=50 --set grid.width=[4096,8192] "
                   "--set resources.gpus_per_trial=1")
    r.add_argument("--out", help="output dir: a path, a shared mount or s3://bucket/prefix "
                   "(default: the spec's output_dir)")
    r.add_argument("--address", help="Ray cluster address ('auto' inside a cluster); "
                   "default: start a local Ray")
    r.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: the spec's "
                   "tracking_uri, $MLFLOW_TRACKING_URI, or SQLite inside the output dir); "
                   "credentials go in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
    r.add_argument("--no-tracking", action="store_true",
                   help="write Parquet only, no MLflow runs; push them later with `ntksweep "
                   "sync OUT`. For sweeps of very many short trials, whose pace MLflow's "
                   "SQL store (tens of ms of CPU per run) would otherwise set")
    r.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    r.add_argument("--force", action="store_true",
                   help="use an output dir that holds a different sweep")
    r.add_argument("--quiet", action="store_true", help="no progress bar or worker logs")
    r.add_argument("--verbose", action="store_true",
                   help="show Ray's and MLflow's own start-up messages")
    r.add_argument("--smoke", action="store_true",
                   help="run the spec's tiny 'smoke:' version (into <output_dir>-smoke)")
    r.add_argument("--report", action="store_true", help="write the report when done")
    add_allow_import(r)
    r.set_defaults(func=cmd_run)


def add_allow_import(parser) -> None:
    parser.add_argument("--allow-import", action="append", metavar="PACKAGE",
                        help="let an architecture 'PACKAGE.module:function' import and run "
                        "your code (a spec alone never does); repeatable")


def _add_trial(sub) -> None:
    t = sub.add_parser("trial", help="run one trial and print its checkpoint records",
                       description="Run one trial in this process (no Ray, MLflow or Parquet) "
                       "and print its records as a table.")
    t.add_argument("--spec", help="a YAML mapping of trial fields")
    t.add_argument("--set", action="append", metavar="KEY=VALUE")
    t.add_argument("--json", help="also write the records to this JSON file")
    add_allow_import(t)
    from .trial_spec import TRIAL_FIELDS  # here: `ntksweep` itself imports no torch

    for name, f in TRIAL_FIELDS.items():
        t.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar=name.upper(),
                       help=f"(default: {f.default!r})")
    t.set_defaults(func=cmd_trial)


def cmd_status(args) -> int:
    from .console import status_lines
    from .gram.spec import read_manifest

    if read_manifest(args.out) is not None:     # a kernel job's dir
        from .gram.status import job_status_lines

        print("\n".join(job_status_lines(args.out)))
    elif _sweep_meta(args.out) is not None:
        from .store.tiles import subfolders
        from .sweep.limits import SHARED_DIR

        print("\n".join(status_lines(args.out)))
        if subfolders(args.out, SHARED_DIR):       # the tile plans import torch: only here
            from .gram.status import shared_limit_lines

            print("\n".join(shared_limit_lines(args.out, SHARED_DIR)))
    return 0


def _add_status(sub) -> None:
    s = sub.add_parser("status", help="a sweep's trials by status, and whether it is running "
                       "(a kernel job's tiles done)",
                       description="Read a sweep's output dir: its trials by status (from "
                       "the Parquet store) and whether a driver is running it now.")
    s.add_argument("out", help="the sweep's output dir (a path or s3://bucket/prefix)")
    s.set_defaults(func=cmd_status)


def _add_ui(sub) -> None:
    u = sub.add_parser("ui", help="serve the MLflow UI on a sweep's tracking store",
                       description="Serve the MLflow UI on the store a sweep (or a kernel "
                       "job) was tracked in (its SQLite file in the output dir by default).")
    u.add_argument("out", help="the sweep's (or the kernel job's) output dir")
    u.add_argument("--port", type=int, default=5000, help="port to serve on (default 5000)")
    u.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    u.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the store the "
                   "sweep was run with")
    u.set_defaults(func=cmd_ui)


def _add_report(sub) -> None:
    rp = sub.add_parser("report", help="figures, fitted exponents and an HTML report of a sweep",
                        description="Read a sweep's Parquet and write OUT/report.html and "
                        "OUT/report/*.png|svg (for an s3:// OUT: ./<name>-report/); also log "
                        "them to the sweep's MLflow parent run.")
    rp.add_argument("out", help="the sweep's output dir (a path or s3://bucket/prefix)")
    rp.add_argument("--html-dir", help="write the page and figures here instead")
    rp.add_argument("--tracking-uri", help="default: the URI the sweep was run with")
    rp.set_defaults(func=cmd_report)


def _add_sync(sub) -> None:
    s = sub.add_parser("sync", help="push to MLflow what a sweep's Parquet has and MLflow lacks",
                       description="Push to MLflow every trial of a sweep's Parquet store that "
                       "has no run with its status there (after --no-tracking, or a tracking "
                       "outage). Running it twice pushes nothing the second time.")
    s.add_argument("out", help="the sweep's output dir")
    s.add_argument("--tracking-uri", help="default: the URI the sweep was run with")
    s.set_defaults(func=cmd_sync)


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `ntksweep` alone: what it can do
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except UserError as e:  # anything else is a bug: it keeps its traceback
        print(f"ntksweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before a sweep's own handlers are in place (start-up)
        print("\nInterrupted: finished trials are saved; run the same command again to "
              "resume.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ntksweep status OUT | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
