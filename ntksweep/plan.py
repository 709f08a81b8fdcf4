"""Planning a sweep, Ray-free: its identity in an output dir, and every check that can fail
before Ray starts or a file is written (``preflight``; ``plan_sweep`` is the dry run). The
sweep package runs what this plans."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

import yaml

from . import store
from .data import make_dataset
from .errors import OutputDirError, SpecError, TrackingError, UserError
from .lock import check_unlocked
from .records import Status
from .sweep_spec import SweepSpec, load_sweep_spec
from .tracking.uri import resolve_tracking_uri
from .trial_spec import TRIAL_FIELDS, TrialSpec

__all__ = ["Preflight", "preflight", "plan_sweep", "sweep_id_of", "check_output_dir"]


def sweep_id_of(spec: SweepSpec) -> str:
    """A sweep's identity: its name and base fields — what every trial shares. Axis values
    and seeds can be added to a sweep (it grows in place: same id, same MLflow parent run);
    a changed base field makes another sweep. How it runs (resources, retries) is not part
    of it."""
    blob = json.dumps({"name": spec.name, "base": spec.base}, sort_keys=True, default=list)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _earlier_sweep_id(spec: SweepSpec) -> str:
    """The id versions before 0.2 gave the same spec (its axes included): an output dir they
    wrote keeps its id, and so its MLflow parent run."""
    blob = json.dumps({"name": spec.name, "base": spec.base, "grid": spec.grid, "zip": spec.zip},
                      sort_keys=True, default=list)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def check_output_dir(spec: SweepSpec, force: bool = False) -> tuple[str, str]:
    """(the output dir, the sweep's id in it). Refuse an output dir (a path or an ``s3://``
    URI) that holds a different sweep — another name or other base fields than the
    sweep.yaml it was run with — unless ``force``; reads only. The same sweep keeps the id
    it has there (one written by an earlier version included: its MLflow parent run is
    found by it)."""
    out, sid = spec.out_dir, sweep_id_of(spec)
    held = store.read_meta(out)
    if held is None or held.sweep_id == sid:
        return out, sid
    before = _held_spec(out)
    same = (before.name, before.base) == (spec.name, spec.base) if before is not None \
        else held.sweep_id == _earlier_sweep_id(spec)
    if same:
        return out, held.sweep_id
    if not force:
        raise OutputDirError(f"output dir {out!r} holds a different sweep ({held.name!r}, id "
                             f"{held.sweep_id}){_differences(before, spec)}; adding axis "
                             "values or seeds grows a sweep in place, but a changed name or "
                             "base field is another sweep: use another output dir, or "
                             "--force to add to it anyway")
    return out, sid


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


def preflight(spec: SweepSpec, *, tracking_uri: str | None = None, tracking: bool = True,
              force: bool = False) -> Preflight:
    """Every check that can fail before Ray starts or a file is written: the tracking URI,
    the output dir (another sweep, another driver, writability — without creating it) and
    the data files the trials read."""
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
    _check_trials(trials, force)
    store.check_writable(out, create=False)
    return Preflight(out, sid, uri, explicit, trials, *store.trial_states(out))


def _check_trials(trials: list[TrialSpec], force: bool) -> None:
    """Load every distinct user data file once, so that a missing or malformed one is refused
    before anything runs (not as a failed trial per grid point), and refuse a trial whose
    memory estimate exceeds this machine's memory (``force``: warn and go on)."""
    in_dims: dict[tuple, int] = {}
    need, worst = 0, trials[0]
    for t in trials:
        key = (t.dataset, *t.data_args().values())
        if key not in in_dims:
            in_dims[key] = _in_dim(t)
        if (bytes_ := t.memory_bytes(in_dims[key])) > need:
            need, worst = bytes_, t
    budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > 0.8 * budget:
        msg = (f"trial {worst.trial_id} (width {worst.width}, depth {worst.depth}, n_train "
               f"{worst.n_train}, n_eval {worst.n_eval}) needs about {need / 2**30:.1f} GiB, "
               f"more than this machine's {budget / 2**30:.1f} GiB; use smaller values")
        if not force:
            raise SpecError(msg + " (or --force, if the workers have more memory)")
        warnings.warn(msg, stacklevel=3)


def _in_dim(t: TrialSpec) -> int:
    if t.dataset != "file":
        return {"circle": 2, "sphere": t.dim, "digits": 64, "images": t.dim * t.dim}[t.dataset]
    try:
        return make_dataset("file", **t.data_args()).in_dim
    except UserError as e:
        raise SpecError(f"trial {t.trial_id} (data_path {t.data_path!r}): {e}") from None


def plan_sweep(spec: SweepSpec, **checks) -> dict[str, Any]:
    """What a run would do, after the same checks (``preflight``; keyword arguments as
    there), creating nothing: every trial with its id and whether it is already done."""
    pre = preflight(spec, **checks)
    rows = [{"trial_id": t.trial_id, **{k: getattr(t, k) for k in spec.axes()},
             "state": _plan_state(pre.done.get(t.trial_id))} for t in pre.trials]
    return {"sweep_id": pre.sweep_id, "out_dir": pre.out, "trials": rows,
            "axes": {k: list(v) for k, v in spec.axes().items()}}
