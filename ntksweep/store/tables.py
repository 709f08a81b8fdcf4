"""The trials and checkpoints tables: one explicit, versioned schema each, one Parquet file
per trial and table, hive-partitioned by width and depth."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import OutputDirError
from ..records import (
    EMBEDDED_STORE,
    ENSEMBLE_COLUMNS,
    FINAL_COLUMNS,
    INIT_COLUMNS,
    RECORD_COLUMNS,
    Status,
    SweepMeta,
    TrialOutcome,
)
from ..trial_spec import ADDED_LATER, TRIAL_FIELDS, TrialSpec
from .location import _locate, _Location, _write_table, read_text, save_array, write_text
from .members import MEMBERS_SCHEMA, write_members
from .scan import PARTITIONS, partition_file, scan

SCHEMA_VERSION = "1"
def _arrow_type(annotation) -> pa.DataType:
    text = str(annotation)
    if text.startswith("tuple"):
        return pa.string()  # explicit checkpoint steps, as JSON
    if text.startswith("int"):
        return pa.int64()
    if text.startswith("float"):
        return pa.float64()
    return pa.string()


_SPEC_FIELDS = [pa.field(name, _arrow_type(f.type)) for name, f in TRIAL_FIELDS.items()
                if name not in PARTITIONS]
_META = {b"ntksweep_schema": SCHEMA_VERSION.encode()}
_INT_RECORD = {"step"}

TRIALS_SCHEMA = pa.schema([
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("sweep_id", pa.string()),
    pa.field("status", pa.string()),
    pa.field("attempts", pa.int64()),
    pa.field("execution", pa.string()),   # this attempt's id, also its MLflow run's tag
    pa.field("error", pa.string()),
    pa.field("run_device", pa.string()),  # where it ran (the spec.device column is what was asked)
    pa.field("host", pa.string()),
    pa.field("wall_seconds", pa.float64()),
    pa.field("n_checkpoints", pa.int64()),
    pa.field("final_step", pa.int64()),
    pa.field("final_t", pa.float64()),
    *[pa.field(f"final_{c}", pa.float64()) for c in FINAL_COLUMNS],
    *[pa.field(f"init_{c}", pa.float64()) for c in INIT_COLUMNS],
    *[pa.field(c, pa.float64()) for c in ENSEMBLE_COLUMNS],
    *_SPEC_FIELDS,
], metadata=_META)

CHECKPOINTS_SCHEMA = pa.schema([
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("sweep_id", pa.string()),
    *[pa.field(c, pa.int64() if c in _INT_RECORD else pa.float64()) for c in RECORD_COLUMNS],
    pa.field("kernel_path", pa.string()),
    pa.field("outputs_path", pa.string()),
    *_SPEC_FIELDS,
], metadata=_META)


def _spec_values(spec: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for f in _SPEC_FIELDS:
        v = spec.get(f.name)
        out[f.name] = json.dumps(list(v)) if isinstance(v, (list, tuple)) else v
    return out


# -- where an output dir lives --------------------------------------------------------------


def write_trial(out: str | Path, sweep_id: str, spec: TrialSpec, outcome: TrialOutcome, *,
                attempts: int = 1, host: str = "", execution: str | None = None,
                commit_guard=None) -> None:
    """Write one trial attempt's outcome: its kept arrays, its checkpoints file, then its
    trials row (the completion marker). ``execution``: the id the attempt's MLflow run is
    tagged with (``ntksweep.execution``), so that ``sync`` completes only that run.
    ``commit_guard()`` is called just before the trials row appears (a driver's lock)."""
    loc = _locate(out)
    spec_dict = spec.to_dict()
    values = _spec_values(spec_dict)
    paths = {kind: {int(step): save_array(out, kind, outcome.trial_id, step, a)
                    for step, a in kept.items()}
             for kind, kept in (("kernels", outcome.kernels), ("outputs", outcome.outputs))}
    records = outcome.records
    cols: dict[str, list] = {f.name: [] for f in CHECKPOINTS_SCHEMA}
    for rec in records:
        row = {"trial_id": outcome.trial_id, "sweep_id": sweep_id, **values,
               "kernel_path": paths["kernels"].get(int(rec["step"])),
               "outputs_path": paths["outputs"].get(int(rec["step"]))}
        row.update({c: rec.get(c) for c in RECORD_COLUMNS})
        for name in cols:
            cols[name].append(row[name])
    _write_table(pa.table(cols, schema=CHECKPOINTS_SCHEMA), loc,
                 partition_file("checkpoints", spec_dict, outcome.trial_id))
    if outcome.members is not None:
        write_members(loc, sweep_id, spec_dict, outcome)
    final = outcome.final
    row = {"trial_id": outcome.trial_id, "sweep_id": sweep_id, "status": str(outcome.status),
           "attempts": attempts, "execution": execution, "error": outcome.error,
           "run_device": outcome.device,
           "host": host, "wall_seconds": outcome.wall_seconds, "n_checkpoints": len(records),
           "final_step": final.get("step"), "final_t": final.get("t"),
           **outcome.summary, **values}
    table = pa.table({f.name: [row[f.name]] for f in TRIALS_SCHEMA}, schema=TRIALS_SCHEMA)
    _write_table(table, loc, partition_file("trials", spec_dict, outcome.trial_id),
                 commit_guard)


def trial_written(out: str | Path, spec: TrialSpec) -> bool:
    """Whether the trial's row is in the store now (one file lookup)."""
    loc = _locate(out)
    info = loc.fs.get_file_info(loc.path(partition_file("trials", spec.to_dict(),
                                                          spec.trial_id)))
    return info.type != pafs.FileType.NotFound
_ORDER = {"trials": ["width", "depth", "trial_id"],
          "checkpoints": ["width", "depth", "trial_id", "step"],
          "members": ["width", "depth", "trial_id", "member"]}


def _read(loc: _Location, table: str, schema: pa.Schema, filters,
          columns: list[str] | None = None) -> pd.DataFrame:
    """One table as a DataFrame, in ``_ORDER``. A file that cannot be read is skipped with a
    warning that names it (a resumed sweep moves it aside and runs its trial again:
    ``repair``)."""
    rows, bad = scan(loc, table, schema, filters, columns, sort=_ORDER[table])
    if bad:
        warnings.warn(f"{len(bad)} unreadable file(s) in {loc.path(table)} skipped: "
                      f"{', '.join(bad)}; resuming the sweep moves them aside and runs their "
                      "trials again", stacklevel=3)
    return rows


def load_results(out: str | Path, filters: dict[str, Any] | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, checkpoints) DataFrames of an output dir, optionally filtered, e.g.
    ``filters={"width": [256, 1024], "depth": 3}`` (partition filters read only the
    matching files). Sorted by width, depth, trial_id (and step)."""
    trials, superseded = _current_trials(out, filters)
    ckpts = _read(_locate(out), "checkpoints", CHECKPOINTS_SCHEMA, filters)
    if superseded:
        ckpts = ckpts[~ckpts.trial_id.isin(superseded)].reset_index(drop=True)
    if ckpts.trial_id.nunique() < len(ckpts.drop_duplicates(["trial_id", "width", "depth"])):
        keys = trials[["trial_id", "width", "depth"]]      # the kept copies' rows, in order
        ckpts = ckpts.merge(keys).sort_values(_ORDER["checkpoints"], ignore_index=True)
    return trials, _with_defaults(ckpts)


def load_members(out: str | Path, filters: dict[str, Any] | None = None,
                 columns: list[str] | None = None) -> pd.DataFrame:
    """The ensemble trials' members (``store.members``): one row per network, with its
    trial's width and depth, sorted by width, depth, trial and member; ``columns``: only
    these (and trial_id, member, width and depth — the kernels are the bulk of the table).
    ``member_kernels`` turns rows into (S, M, M) matrices."""
    if columns is not None:
        columns = list(dict.fromkeys(["trial_id", "member", *columns, *PARTITIONS]))
    rows = _read(_locate(out), "members", MEMBERS_SCHEMA, filters, columns)
    current = _current_trials(out, filters, ["trial_id"])[0].trial_id
    return rows[rows.trial_id.isin(current)].reset_index(drop=True)


def load_trials(out: str | Path, filters: dict[str, Any] | None = None,
                columns: list[str] | None = None) -> pd.DataFrame:
    """The trials table alone (``load_results``' first frame), without reading checkpoints;
    ``columns``: only these (and trial_id, status, width, depth)."""
    return _current_trials(out, filters, columns)[0]


def _current_trials(out, filters, columns=None) -> tuple[pd.DataFrame, set[str]]:
    """The trials table, and the ids left out of it: failed or killed trials of an earlier
    sweep the dir held (before a ``--force`` run of another) — the current one superseded
    them. Completed trials of any sweep stay: they are measurements."""
    if columns is not None:
        columns = list(dict.fromkeys([*columns, "sweep_id", *ADDED_LATER]))
    trials = _unique(_read(_locate(out), "trials", TRIALS_SCHEMA, filters, columns))
    meta = read_meta(out)
    gone: set[str] = set()
    if meta is not None and not trials.empty:
        unfinished = ~trials.status.isin([s.value for s in Status if s.done])
        superseded = unfinished & (trials.sweep_id != meta.sweep_id)
        if superseded.any():
            gone, trials = set(trials.trial_id[superseded]), trials[~superseded]
    return _with_defaults(trials.reset_index(drop=True)), gone


def _unique(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per trial id: a trial's file copied into another partition (by hand, a
    sync tool) reads as a second row there, with that partition's width or depth; the row
    whose spec hashes to its id is the trial's (a resume moves the other aside)."""
    twice = trials.trial_id.duplicated(keep=False)
    if not twice.any():
        return trials
    if not set(TRIAL_FIELDS) <= set(trials.columns):   # a few columns asked for: any copy
        return trials.drop_duplicates("trial_id", ignore_index=True)
    keep = [i for i, row in trials[twice].iterrows()
            if spec_from_row(row).trial_id == row["trial_id"]]
    kept = pd.concat([trials[~twice], trials.loc[keep]]).drop_duplicates("trial_id")
    return kept.sort_values(_ORDER["trials"], ignore_index=True)


def _with_defaults(table: pd.DataFrame) -> pd.DataFrame:
    """Files written before a field existed: its default."""
    for name, default in ADDED_LATER.items():
        table[name] = table[name].fillna(default).astype(type(default))
    return table


def plain_value(v):
    """A value read back from a table as plain Python: numpy scalars unwrapped, NaN → None."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and np.isnan(v):
        return None
    return v


def spec_from_row(row) -> TrialSpec:
    """The ``TrialSpec`` of a trials or checkpoints row (a pandas Series or a dict): the
    inverse of the spec columns written by ``write_trial``. A column that is null (or that a
    store written before the field existed lacks) takes the field's default."""
    values = {}
    for name in TRIAL_FIELDS:
        v = plain_value(row[name]) if name in row else None
        if v is None:
            continue
        values[name] = json.loads(v) if name == "checkpoint_steps" else v
    return TrialSpec.from_dict(values)


def finished_trials(out: str | Path) -> dict[str, Status]:
    """trial_id → status of every trial with a readable trials row."""
    return trial_states(out)[0]


def trial_states(out: str | Path) -> tuple[dict[str, Status], dict[str, int]]:
    """(trial_id → status, trial_id → attempt number) from one read of the trials table: what
    resume consults (failed trials run again, as their next attempt; ``repair`` deals with
    unreadable rows)."""
    trials, _ = scan(_locate(out), "trials", TRIALS_SCHEMA,
                     columns=["trial_id", "status", "attempts"])
    ids = trials["trial_id"]
    return ({tid: Status(s) for tid, s in zip(ids, trials["status"])},
            {tid: int(a) for tid, a in zip(ids, trials["attempts"])})


def read_meta(out: str | Path) -> SweepMeta | None:
    """The output dir's ``sweep.json``, or None where there is none (not an ntksweep dir). A
    damaged one (a torn write, a disk that filled) is rebuilt from what the dir holds —
    the sweep's id from its Parquet rows, its name from its sweep.yaml, the embedded MLflow
    store if its file is there — and written back, with a warning; where those are missing
    too, an ``OutputDirError`` says what to run."""
    try:
        text = read_text(out, "sweep.json")
        return None if text is None else SweepMeta.from_json(text)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        meta = _rebuilt_meta(out)
        if meta is None:
            raise OutputDirError(
                f"{out}/sweep.json is damaged ({type(e).__name__}) and the dir holds no "
                "finished trial to rebuild it from: run the sweep again (ntksweep run SPEC "
                "--out OUT) to rewrite it") from None
        write_meta(out, meta)
        warnings.warn(f"{out}/sweep.json was damaged ({type(e).__name__}: {e}); rebuilt it "
                      f"from the dir's Parquet rows and sweep.yaml: {meta.to_json()}",
                      stacklevel=2)
        return meta


def _rebuilt_meta(out: str | Path) -> SweepMeta | None:
    """sweep.json from the rest of the dir: the sweep id most of its trial rows carry, the
    name in its sweep.yaml (else the dir's), the embedded store where mlflow.db is there."""
    import yaml

    rows, _ = scan(_locate(out), "trials", TRIALS_SCHEMA)
    if rows.empty:
        return None
    sweep_id = str(rows["sweep_id"].mode().iloc[0])
    try:
        name = (yaml.safe_load(read_text(out, "sweep.yaml") or "") or {}).get("name")
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError):
        name = None
    loc = _locate(out)
    embedded = loc.fs.get_file_info(loc.path("mlflow.db")).type == pafs.FileType.File
    return SweepMeta(sweep_id, str(name or Path(str(out).rstrip("/")).name),
                     EMBEDDED_STORE if embedded else "")


def write_meta(out: str | Path, meta: SweepMeta) -> None:
    write_text(out, "sweep.json", meta.to_json())
