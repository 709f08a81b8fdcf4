"""Planning a sweep, Ray-free: its identity in an output dir, and every check that can fail
before Ray starts or a file is written (``preflight``; ``plan_sweep`` is the dry run). The
sweep package runs what this plans."""

from __future__ import annotations

import functools
import glob
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import store
from .architectures import REGISTRY
from .data import DataShape, data_shape
from .errors import OutputDirError, SpecError, TrackingError, UserError
from .hyper import check_conv, is_custom_architecture
from .memory import TrialMemory, network_input_shape, trial_memory
from .records import Status
from .store.lock import check_unlocked
from .sweep.limits import SHARED_DIR, positional
from .sweep_spec import Resources, SweepSpec, load_sweep_spec, sweep_id_of
from .tracking.sqlite import StoreDamage, check_sqlite_store
from .tracking.uri import resolve_tracking_uri
from .trial_spec import TRIAL_FIELDS, TrialSpec

__all__ = ["Preflight", "preflight", "plan_sweep", "check_output_dir",
           "check_trials", "local_gpus"]


def check_output_dir(spec: SweepSpec, force: bool = False) -> tuple[str, str]:
    """(the output dir, the sweep's id in it). Refuse an output dir (a path or an ``s3://``
    URI) that holds a different sweep — another name or other base fields than the
    sweep.yaml it was run with — unless ``force``; reads only. The same sweep keeps the id
    it has there (one written by an earlier version included: its MLflow parent run is
    found by it)."""
    out, sid = spec.out_dir, sweep_id_of(spec)
    held = store.read_meta(out)
    if held is None:
        _refuse_foreign_dir(out)
    if held is None or held.sweep_id == sid:
        return out, sid
    before = _held_spec(out)
    same = (before.name, before.base) == (spec.name, spec.base) if before is not None \
        else held.sweep_id == spec.earlier_sweep_id
    if same:
        return out, held.sweep_id
    if not force:
        raise OutputDirError(f"output dir {out!r} holds a different sweep ({held.name!r}, id "
                             f"{held.sweep_id}){_differences(before, spec)}; adding axis "
                             "values or seeds grows a sweep in place, but a changed name or "
                             "base field is another sweep: use another output dir, or "
                             "--force to add to it anyway")
    return out, sid


# what an output dir holds once a sweep has written to it (sweep.json may be the one missing)
_OURS = {"sweep.json", "sweep.yaml", "trials", "checkpoints", "mlflow.db", "mlartifacts",
         "driver.lock", "kernels", "outputs", "_quarantine", "report", "report.html"}


def _refuse_foreign_dir(out: str) -> None:
    """Refuse a local directory that holds files but no sweep (``/``, a home dir, a project):
    a sweep writes and moves files there, and some of them would be the user's."""
    path = Path(out)
    if "://" in out or not path.is_dir():
        return
    entries = {p.name for p in path.iterdir()}
    if entries and not entries & _OURS:
        shown = ", ".join(sorted(entries)[:3]) + (", …" if len(entries) > 3 else "")
        raise OutputDirError(f"output dir {out!r} is not empty ({shown}) and holds no ntksweep "
                             "sweep: choose a new or empty directory (output_dir: or --out)")


def _held_spec(out: str) -> SweepSpec | None:
    """The spec the output dir was run with (its sweep.yaml), or None if unreadable."""
    text = store.read_text(out, "sweep.yaml")
    try:
        return None if text is None else load_sweep_spec(yaml.safe_load(text) or {})
    except (UserError, yaml.YAMLError, TypeError):
        return None


def _differences(held: SweepSpec | None, spec: SweepSpec) -> str:
    """': name …; base field lr 0.5 → 1.0' between the held spec and this one."""
    if held is None:
        return ""
    changes = [f"name {held.name!r} → {spec.name!r}"] if held.name != spec.name else []
    default = {k: f.default for k, f in TRIAL_FIELDS.items()}
    for key in sorted(set(held.base) | set(spec.base)):
        before, after = (b.get(key, default.get(key)) for b in (held.base, spec.base))
        if before != after:
            changes.append(f"base field {key} {before} → {after}")
    return ": " + "; ".join(changes) if changes else ""


def _plan_state(status: Status | None) -> str:
    """'todo', a done status (skipped on resume), or 'rerun:<status>' (failed, killed)."""
    if status is None:
        return "todo"
    return str(status) if status.done else f"rerun:{status}"


@dataclass(frozen=True)
class Preflight:
    """What every check before a run established (a dry run makes the same checks)."""

    out: str
    sweep_id: str
    uri: str             # "" for an untracked sweep into an object store
    explicit: bool       # the tracking URI was named by the user
    trials: list[TrialSpec]
    done: dict[str, Status]
    attempts: dict[str, int]      # the attempt number each stored trial recorded
    damaged_store: StoreDamage | None = None   # a SQLite store with nothing to lose in it


def preflight(spec: SweepSpec, *, tracking_uri: str | None = None, tracking: bool = True,
              force: bool = False, address: str | None = None) -> Preflight:
    """Every check that can fail before Ray starts or a file is written: the tracking URI,
    the output dir (another sweep, another driver, writability — without creating it) and
    the trials (``check_trials``; ``address``: the Ray cluster, None for a local one)."""
    meta = store.read_meta(spec.out_dir)
    try:  # a resumed sweep goes on where it was tracked, unless told otherwise
        uri, explicit = resolve_tracking_uri(tracking_uri, spec_uri=spec.tracking_uri,
                                             recorded=meta.tracking_uri if meta else None,
                                             out_dir=spec.out_dir)
    except TrackingError:  # an object-store output dir: only an untracked sweep needs no server
        if tracking:
            raise
        uri, explicit = "", False
    out, sid = check_output_dir(spec, force)
    check_unlocked(out)
    trials = spec.trials()
    check_trials(trials, force=force, resources=spec.resources, local=address is None)
    store.check_writable(out, create=False)
    damage = check_sqlite_store(uri) if tracking and uri else None
    if damage is not None and damage.runs:        # runs only it has: the user's to move
        raise TrackingError(damage.advice())
    return Preflight(out, sid, uri, explicit, trials, *store.trial_states(out), damage)


def check_trials(trials: list[TrialSpec], *, force: bool = False,
                 resources: Resources | None = None, local: bool = True) -> None:
    """Everything about the trials that can be refused before anything runs, once per
    distinct data set and network: each data file read whole (a missing or malformed one is
    one error, not a failed trial per grid point), each network fitting its data (images for
    conv nets, at least one pixel after valid convolutions), each ``memory_budget`` holding
    a 1×1 NTK tile, the devices the workers will see under ``resources`` (None: the trials
    run in this process, which checks its own; ``local``: a Ray started on this machine),
    and the largest trial's memory against this machine's (``force``: a warning)."""
    shapes: dict[tuple, DataShape] = {}
    need, worst = 0, trials[0]
    for t in trials:
        key = (t.dataset, *t.data_args().values())
        if key not in shapes:
            shapes[key] = _data_shape(t)
        if (bytes_ := _network_bytes(t, shapes[key])) > need:
            need, worst = bytes_, t
    if resources is not None:
        _check_devices({t.device for t in trials}, resources, local)
    budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > 0.8 * budget:
        msg = (f"trial {worst.trial_id} (width {worst.width}, depth {worst.depth}, n_train "
               f"{worst.n_train}, n_eval {worst.n_eval}) needs about {need / 2**30:.1f} GiB, "
               f"more than this machine's {budget / 2**30:.1f} GiB; use smaller values")
        if not force:
            raise SpecError(msg + " (or --force, if the workers have more memory)")
        warnings.warn(msg, stacklevel=3)


def _data_shape(t: TrialSpec) -> DataShape:
    where = f"data_path {t.data_path!r}" if t.dataset == "file" else f"dataset {t.dataset}"
    try:
        shape = data_shape(t.dataset, **t.data_args())
    except UserError as e:
        raise SpecError(f"trial {t.trial_id} ({where}): {e}") from None
    if t.loss == "cross_entropy" and not shape.classes:
        raise SpecError(f"trial {t.trial_id} ({where}): loss cross_entropy needs class ids, "
                        "and the file holds y (regression targets): save its classes as "
                        "labels=, or use loss mse")
    return shape


def _network_bytes(t: TrialSpec, shape: DataShape) -> int:
    """The trial's estimated peak (``memory.trial_memory``), after refusing a network that
    does not fit its data or a ``memory_budget`` too small for one NTK entry. A user's own
    network is built and run on one input instead; a composition's memory is planned from
    the shapes its layers report, a plain torch module's is not estimated (0: its
    activations are unknown until it runs)."""
    if is_custom_architecture(t.architecture):
        return _checked_custom(t, shape)
    return _checked_memory(*_network_key(t, shape)).peak


@functools.lru_cache(maxsize=256)
def _checked_custom(t: TrialSpec, shape: DataShape) -> int:
    """A user's network built and run once (``custom.check``); its estimated peak."""
    from .trial import custom  # imports torch and the user's module: only for these

    in_shape = network_input_shape(t.architecture, shape)
    layers = custom.check(t, in_shape, shape.out_dim)
    return 0 if layers is None else trial_memory(t, in_shape, shape.out_dim, layers).peak


def _network_key(t: TrialSpec, shape: DataShape) -> tuple:
    """What a trial's memory and its network's checks depend on (many trials share it)."""
    fields = ("architecture", "width", "depth", "kernel_size", "padding", "readout", "dtype",
              "optimizer", "batch_size", "n_train", "n_eval", "n_test", "memory_budget",
              "ntk_method", "loss", "dataset", "data_path", "heads", "patch")
    return TrialSpec(**{f: getattr(t, f) for f in fields}), shape


@functools.lru_cache(maxsize=4096)
def _checked_memory(t: TrialSpec, shape: DataShape) -> TrialMemory:
    what = f"{t.architecture} of width {t.width}, depth {t.depth}"
    reads = REGISTRY[t.architecture].reads
    if reads == "sequences":
        if shape.sequence_shape is None and shape.image_shape is None:
            raise SpecError(f"a transformer reads sequences or images, but dataset "
                            f"{t.dataset}{f' ({t.data_path})' if t.data_path else ''} holds "
                            "vectors: use dataset tokens, images or a file's X as (N, T, d)")
        if shape.sequence_shape is None and any(s % t.patch for s in shape.image_shape[1:]):
            raise SpecError(f"{what}: {t.patch}×{t.patch} patches do not tile "
                            f"{shape.image_shape[1]}×{shape.image_shape[2]} images; choose a "
                            "patch that divides the image's sides")
    elif reads == "images":
        if shape.image_shape is None:
            raise SpecError(f"a {t.architecture} reads images, but dataset {t.dataset}"
                            f"{f' ({t.data_path})' if t.data_path else ''} holds vectors of "
                            f"{shape.in_dim} features: use images (a file's X as (N, C, H, W))"
                            " or architecture mlp")
        try:
            check_conv(architecture=t.architecture, depth=t.depth, kernel_size=t.kernel_size,
                       padding=t.padding, readout=t.readout, image_size=shape.image_shape[1:])
        except SpecError as e:
            raise SpecError(f"{what}: {e}") from None
    memory = trial_memory(t, network_input_shape(t.architecture, shape, t.patch),
                          shape.out_dim)
    if t.memory_budget is not None and memory.smallest_tile > t.memory_budget:
        raise SpecError(f"memory_budget={t.memory_budget} bytes is too small for one entry "
                        f"of the {what}'s empirical NTK (about {memory.smallest_tile} bytes); "
                        "raise it, or leave it null")
    return memory


def _check_devices(devices: set[str], resources: Resources, local: bool) -> None:
    """A worker sees only the GPUs Ray gives it, as cuda:0, cuda:1, …: ``gpus_per_trial``
    of them (one, shared, for a fraction; one for ``auto`` on a cluster with GPUs)."""
    named = sorted(d for d in devices if d.startswith("cuda"))
    if not named:
        return
    gpus = resources.gpus_per_trial
    seen = 1 if gpus == "auto" else math.ceil(gpus)
    if seen == 0:
        raise SpecError(f"device {named[0]}: resources.gpus_per_trial is 0, so the workers see "
                        "no GPU; set gpus_per_trial (or device: auto / cpu)")
    index = max(int(d.partition(":")[2] or 0) for d in named)
    if index >= seen:
        raise SpecError(f"device cuda:{index}: each worker sees only the {seen} GPU(s) Ray "
                        f"gives it, as cuda:0{f'…cuda:{seen - 1}' if seen > 1 else ''}; use "
                        "device: cuda (or auto)")
    if local and local_gpus() == 0:
        raise SpecError(f"device {named[0]}: this machine has no NVIDIA GPU (no "
                        "/dev/nvidia*, CUDA_VISIBLE_DEVICES empty); use device: auto or cpu, "
                        "or run on a cluster with GPUs (--address)")


def local_gpus() -> int:
    """NVIDIA GPUs this machine shows (``CUDA_VISIBLE_DEVICES`` if set, else its device
    files), without starting CUDA: the driver never touches a GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = []
        for part in visible.split(","):      # CUDA stops at the first invalid entry
            if not part.strip() or part.strip().startswith("-"):
                break
            ids.append(part)
        return len(ids)
    return len([d for d in glob.glob("/dev/nvidia*") if re.fullmatch(r"/dev/nvidia\d+", d)])


def plan_sweep(spec: SweepSpec, **checks) -> dict[str, Any]:
    """What a run would do, after the same checks (``preflight``; keyword arguments as
    there), creating nothing: every trial with its id and whether it is already done."""
    pre = preflight(spec, **checks)
    rows = [{"trial_id": t.trial_id, **{k: getattr(t, k) for k in spec.axes()},
             "state": _plan_state(pre.done.get(t.trial_id))} for t in pre.trials]
    notes = [f"the MLflow store {pre.damaged_store.path} is {pre.damaged_store.problem} and "
             "holds no runs: the run sets it aside and rebuilds it from Parquet"] \
        if pre.damaged_store else []
    todo = [t for t in pre.trials if not (s := pre.done.get(t.trial_id)) or not s.done]
    if shared := positional(todo):
        notes.append(f"{len(shared)} trial(s) to run read a limit over pairs of positions: "
                     f"each distinct limit is computed once, as a kernel job in "
                     f"{pre.out}/{SHARED_DIR}/, before the trials start")
    return {"sweep_id": pre.sweep_id, "out_dir": pre.out, "trials": rows,
            "axes": {k: list(v) for k, v in spec.axes().items()}, "notes": notes}
