"""``ntksweep kernel SPEC``: a kernel job from the command line, with its progress (tiles,
entries per second, ETA) on stderr — a line per tile at most every few seconds, so that a
log without a terminal shows it too."""

from __future__ import annotations

import sys
import time
from dataclasses import replace

from ..consent import grant_imports
from ..errors import UserError
from .spec import job_experiment, load_gram_spec

__all__ = ["add_kernel", "cmd_kernel", "progress_lines"]

PROGRESS_EVERY_S = 2.0


def progress_lines(run=None):
    """Progress lines on stderr, and the job's MLflow run's metrics (``run``: a JobRun)."""
    last = [0.0]

    def report(p) -> None:      # a job.GramProgress
        if run is not None:
            run.log(p.done, {f"{p.block}_tiles_done": p.done, "entries": p.entries,
                             "entries_per_second": p.entries / max(p.seconds, 1e-9),
                             f"{p.block}_tile_seconds": p.tile_seconds})
        now = time.monotonic()
        if now - last[0] < PROGRESS_EVERY_S and p.done < p.total:
            return
        last[0] = now
        eta = "" if p.eta_seconds != p.eta_seconds else f", ETA {p.eta_seconds:.0f} s"
        print(f"kernel {p.block}: {p.done}/{p.total} tiles, "
              f"{p.entries / max(p.seconds, 1e-9):,.0f} entries/s{eta}", file=sys.stderr,
              flush=True)

    return report


def cmd_kernel(args) -> int:
    from ..phases import quiet_start
    from ..sweep_spec import parse_overrides

    quiet_start()
    grant_imports(args.allow_import)                # the user's consent (``consent``)
    spec = load_gram_spec(args.spec, parse_overrides(args.set or []))
    if args.out:
        spec = replace(spec, output_dir=args.out)
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: give 1 (this process) or more")
    if args.dry_run:
        return _dry_run(spec, args)
    from .job import PRECISION_SAMPLE, check_job, run_gram

    checked = check_job(spec)                       # the data, the network, the dir
    executor, where = _executor(args)               # a device it does not have: refused here
    print(_job_line(spec, where), file=sys.stderr)
    tracked = _job_run(spec, args)
    try:
        run = run_gram(spec, executor, on_progress=progress_lines(tracked), checked=checked)
    except BaseException:
        if tracked is not None:
            tracked.end("KILLED")
        raise
    if tracked is not None:
        devices = sorted(set(executor.devices))
        precision = {f"{block}_{kernel}_float32_error": error
                     for block, errors in run.precision.items() for kernel, error in errors.items()}
        tracked.end("FINISHED", {"tiles_computed": run.computed, "tiles_kept": run.kept,
                                 "seconds": run.seconds,
                                 "entries_per_second": run.entries_per_second, **precision},
                    {"devices": ", ".join(devices)})
    print(f"done: {run.computed} tiles computed, {run.kept} kept from before, "
          f"{run.entries:,} entries in {run.seconds:.1f} s "
          f"({run.entries_per_second:,.0f} entries/s)\n"
          f"  numpy:  from ntksweep.gram import GramMatrix; "
          f"K = GramMatrix({spec.output_dir!r}, 'train', 'ntk')[:, :]")
    for block, errors in run.precision.items():
        print(f"float32 precision, {block}: within {errors['ntk']:.1e} (Θ) and "
              f"{errors['nngp']:.1e} (Σ) of float64, relative to the largest entry, on its "
              f"first {PRECISION_SAMPLE} rows × columns")
    if args.ridge is not None and spec.network.n_test:
        from .regression import fit_gram

        for kernel in ("ntk", "nngp"):
            fit = fit_gram(spec.output_dir, kernel=kernel, ridge=args.ridge)
            accuracy = "" if fit.test_accuracy != fit.test_accuracy else \
                f", accuracy {fit.test_accuracy:.4f}"
            print(f"kernel regression with {kernel} (ridge {args.ridge:g}, {fit.method}): "
                  f"test MSE {fit.test_mse:.4g}{accuracy}")
    return 0


def _job_line(spec, where: str) -> str:
    net = spec.network
    return (f"kernel job {spec.name!r} → {spec.output_dir}: {net.architecture} depth "
            f"{net.depth} on {net.dataset} ({net.n_train} train, {net.n_test} test), tiles of "
            f"{spec.tile}, {spec.dtype}, on {where}")


def _dry_run(spec, args) -> int:
    """``--dry-run``: every check a run makes before it starts, then the plan (``plan``),
    its pace timed on one sample tile in this process; nothing written, no Ray started."""
    from ..store import check_writable
    from .plan import plan_gram, plan_lines

    check_writable(spec.output_dir, create=False)
    device = _this_device(args.device)
    remote = args.workers > 1 or args.address
    plan = plan_gram(spec, device)
    print(_job_line(spec, f"{args.workers} Ray workers" if remote else device))
    print("\n".join(plan_lines(plan, args.workers, args.ridge)))
    print("nothing computed or written (--dry-run)")
    return 0


def _this_device(device: str | None) -> str:
    """``--device``, or this process's GPU where it has one, else its CPU; a CUDA device
    on a machine without one is refused."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this machine has no CUDA GPU (torch "
                        f"{torch.__version__}); use --device cpu")
    return device


def _executor(args):
    """(executor, where it computes, in words): Ray tile actors (``--workers`` > 1 or
    ``--address``: GPUs where the cluster has them), or this process, on ``--device``
    (default: its GPU where it has one); the executor's ``devices`` name where tiles ran."""
    if args.workers > 1 or args.address:
        from ..sweep import local_tile_executor

        executor = local_tile_executor(args.workers, args.address, args.gpus_per_worker)
        gpus = executor.options["num_gpus"]
        each = f"{gpus:g} GPU" if gpus else "1 CPU"
        return executor, f"{args.workers} Ray workers of {each} each"
    from ..kernels.tiling import SerialExecutor

    executor = SerialExecutor(_this_device(args.device))
    return executor, executor.devices[0]


def _job_run(spec, args):
    """The job's MLflow run (None with --no-tracking), in the store ``--tracking-uri`` or
    $MLFLOW_TRACKING_URI names, else SQLite inside the output dir."""
    if args.no_tracking:
        return None
    from ..store import check_writable
    from ..tracking.jobs import JobRun
    from ..tracking.uri import resolve_tracking_uri

    check_writable(spec.output_dir)
    uri, _ = resolve_tracking_uri(args.tracking_uri, out_dir=spec.output_dir)
    params = {"tile": spec.tile, "dtype": spec.dtype, **spec.network.to_dict()}
    return JobRun(uri, job_experiment(spec.name), spec.name, params)


def add_kernel(sub) -> None:
    k = sub.add_parser("kernel", help="compute a network's infinite-width Gram matrices on a "
                       "data set, in resumable tiles",
                       description="Compute the NNGP and NTK Gram matrices (train × train, "
                       "test × train) of a network's limit on a data set, tile by tile into "
                       "the output dir; run it again to resume (finished tiles are kept, "
                       "damaged ones computed again).")
    k.add_argument("spec", help="kernel spec YAML (name, output_dir, network, tile, dtype)")
    k.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override the spec: a key (tile=256, dtype=float32) or a network "
                   "field (n_train=5000, depth=7); values are read as YAML")
    k.add_argument("--out", help="output dir (default: the spec's output_dir)")
    k.add_argument("--workers", type=int, default=1,
                   help="tile workers: 1 computes in this process; N > 1 starts N Ray actors")
    k.add_argument("--address", help="Ray cluster address for the workers")
    k.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per tile worker (default: 1 where the Ray cluster has GPUs, "
                   "else 0; a fraction shares a GPU)")
    k.add_argument("--device", help="where this process computes when it is the only "
                   "worker: cpu, cuda, cuda:1 … (default: its GPU where it has one)")
    k.add_argument("--tracking-uri", help="MLflow tracking URI (default: "
                   "$MLFLOW_TRACKING_URI, or SQLite inside the output dir)")
    k.add_argument("--no-tracking", action="store_true", help="no MLflow run")
    k.add_argument("--dry-run", action="store_true", help="check everything and print the "
                   "plan: tiles done and left, the disk, the time left at a pace timed here on "
                   "one sample tile; nothing is written")
    k.add_argument("--ridge", type=float, help="then kernel regression on the test set with "
                   "the NTK and the NNGP, λ = RIDGE · tr K/N (exact in memory, else "
                   "conjugate gradients over the tiles)")
    from ..cli import add_allow_import

    add_allow_import(k)
    k.set_defaults(func=cmd_kernel)
