"""The Parquet store: the only pyarrow code (docs/ARCHITECTURE.md: one adapter per system).

An output dir is a local path, a shared mount, or an object-store URI (``s3://bucket/prefix``
through pyarrow's filesystems; any other fsspec scheme through fsspec). Layout::

    trials/width=256/depth=3/<trial_id>.parquet       one row per trial (spec, status, finals)
    checkpoints/width=256/depth=3/<trial_id>.parquet  one row per trial × checkpoint
    kernels/<trial_id>/step_<step>.npy                kept Θ_t matrices (M, M) float64
    outputs/<trial_id>/step_<step>.npy                kept f_t on the eval set (M, k) float64

One explicit, versioned schema per table (built from ``TrialSpec`` and ``RECORD_COLUMNS``),
hive partitions typed int64, every file written under a hidden name and renamed atomically:
readers never see half a file, and rewriting a trial replaces it (never duplicates it).
On an object store there is no rename, but none is needed: a PUT (or a completed multipart
upload) is atomic — readers see the whole object or nothing. The checkpoints file is written
before the trials file, so a trials row means complete.
"""

from __future__ import annotations

import functools
import io
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import OutputDirError
from .records import RECORD_COLUMNS, Status, SweepMeta, TrialOutcome
from .trial_spec import TRIAL_FIELDS, TrialSpec

__all__ = ["SCHEMA_VERSION", "TRIALS_SCHEMA", "CHECKPOINTS_SCHEMA", "write_trial", "save_array",
           "load_array", "load_results", "finished_trials", "plain_value", "spec_from_row",
           "is_uri", "check_writable", "write_text", "read_text", "delete_text", "read_meta",
           "write_meta",
           "attempts_made"]

SCHEMA_VERSION = "1"
PARTITIONS = ("width", "depth")
_PARTITIONING = ds.partitioning(pa.schema([(p, pa.int64()) for p in PARTITIONS]), flavor="hive")


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
FINAL_COLUMNS = [c for c in RECORD_COLUMNS if c not in ("step", "t")]

TRIALS_SCHEMA = pa.schema([
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("sweep_id", pa.string()),
    pa.field("status", pa.string()),
    pa.field("attempts", pa.int64()),
    pa.field("error", pa.string()),
    pa.field("run_device", pa.string()),  # where it ran (the spec.device column is what was asked)
    pa.field("host", pa.string()),
    pa.field("wall_seconds", pa.float64()),
    pa.field("n_checkpoints", pa.int64()),
    pa.field("final_step", pa.int64()),
    pa.field("final_t", pa.float64()),
    *[pa.field(f"final_{c}", pa.float64()) for c in FINAL_COLUMNS],
    pa.field("init_dist_inf", pa.float64()),
    pa.field("init_dist_nngp", pa.float64()),
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
def is_uri(out: str | Path) -> bool:
    """``s3://…``-style output dirs (object stores); everything else is a local path."""
    return "://" in str(out)


@dataclass(frozen=True)
class _Location:
    fs: pafs.FileSystem
    root: str      # the output dir inside ``fs``
    local: bool    # rename is atomic here (and only here)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def make_dirs(self, path: str) -> None:
        # object stores have no directories: their "markers" would only be extra objects
        if self.fs.type_name not in ("s3", "gcs"):
            self.fs.create_dir(path, recursive=True)


def _locate(out: str | Path) -> _Location:
    if not is_uri(out):
        return _Location(pafs.LocalFileSystem(), str(Path(out).resolve()), True)
    return _locate_uri(str(out))


@functools.lru_cache(maxsize=16)
def _locate_uri(uri: str) -> _Location:
    # s3:// credentials and endpoint come from the usual AWS settings (AWS_ENDPOINT_URL for
    # MinIO/moto, AWS_PROFILE, …) or from query options: s3://b/p?endpoint_override=host:9000
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as arrow_error:
        try:  # a scheme pyarrow does not build in (memory://, gcs via gcsfs, …): fsspec's
            import fsspec

            spec_fs, root = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as e:
            raise OutputDirError(f"output dir {uri!r}: no filesystem handles this URI "
                                 f"({arrow_error}; fsspec: {e}); use a local path or "
                                 "s3://bucket/prefix") from None
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(spec_fs))
    return _Location(fs, root.rstrip("/"), isinstance(fs, pafs.LocalFileSystem))


def _write_atomic(loc: _Location, rel: str, write) -> None:
    """Call ``write(path)`` so that readers of ``rel`` never see a partial file."""
    dest = loc.path(rel)
    parent, name = dest.rsplit("/", 1)
    loc.make_dirs(parent)
    if not loc.local:
        write(dest)  # an object PUT is atomic
        return
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}"  # hidden: dataset readers skip it
    write(tmp)
    loc.fs.move(tmp, dest)


def _write_stream(loc: _Location, rel: str, fill) -> None:
    """``fill(stream)`` writes the file's content; atomically, as ``_write_atomic``."""
    def write(path):
        with loc.fs.open_output_stream(path) as f:
            fill(f)

    _write_atomic(loc, rel, write)


def _write_table(table: pa.Table, loc: _Location, rel: str) -> None:
    _write_atomic(loc, rel, lambda path: pq.write_table(table, path, filesystem=loc.fs))


def write_text(out: str | Path, name: str, text: str) -> None:
    """A small text file (sweep.yaml, sweep.json) in the output dir, atomically."""
    _write_stream(_locate(out), name, lambda f: f.write(text.encode()))


def read_text(out: str | Path, name: str) -> str | None:
    """A text file of the output dir, or None if it does not exist."""
    loc = _locate(out)
    try:
        with loc.fs.open_input_stream(loc.path(name)) as f:
            return f.read().decode()
    except (FileNotFoundError, NotADirectoryError):
        return None


def delete_text(out: str | Path, name: str) -> None:
    """Remove a small file of the output dir; a missing one is fine."""
    loc = _locate(out)
    try:
        loc.fs.delete_file(loc.path(name))
    except (FileNotFoundError, NotADirectoryError):
        pass


def check_writable(out: str | Path, *, create: bool = True) -> None:
    """Prove we can write to the output dir before any trial runs: create it and write and
    delete a probe file; with ``create=False`` (a dry run) a local dir that does not exist
    yet is not made, its nearest existing parent must be writable instead."""
    try:
        loc = _locate(out)
        if not create and loc.local and not Path(loc.root).exists():
            parent = Path(loc.root)
            while not parent.exists():
                parent = parent.parent
            if not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
                raise PermissionError(f"cannot create directories in {str(parent)!r}")
            return
        loc.make_dirs(loc.root)
        probe = loc.path(f".probe-{uuid.uuid4().hex}")
        with loc.fs.open_output_stream(probe) as f:
            f.write(b"")
        loc.fs.delete_file(probe)
    except OSError as e:
        raise OutputDirError(f"output dir {str(out)!r} is not writable ({e}); choose another "
                             "with output_dir: or --out (for s3:// check the bucket exists and "
                             "the AWS credentials/AWS_ENDPOINT_URL)") from None


def save_array(out: str | Path, kind: str, trial_id: str, step: int, matrix: np.ndarray) -> str:
    """Write a kept array ('kernels': Θ_t, 'outputs': f_t) as .npy, atomically; returns its
    path relative to ``out``."""
    rel = f"{kind}/{trial_id}/step_{int(step)}.npy"
    # streamed: an N × N kernel is never held twice in memory
    _write_stream(_locate(out), rel, lambda f: np.save(f, np.asarray(matrix)))
    return rel


def load_array(out: str | Path, rel: str) -> np.ndarray:
    """A kept array by the relative path stored in a checkpoint row."""
    loc = _locate(out)
    if loc.local:
        return np.load(loc.path(rel))
    with loc.fs.open_input_stream(loc.path(rel)) as f:
        return np.load(io.BytesIO(f.read()))


def write_trial(out: str | Path, sweep_id: str, spec: TrialSpec, outcome: TrialOutcome, *,
                attempts: int = 1, host: str = "") -> None:
    """Write one trial attempt's outcome: its kept arrays, its checkpoints file, then its
    trials row (the completion marker)."""
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
                 _partition_file("checkpoints", spec_dict, outcome.trial_id))
    final, first = outcome.final, outcome.first
    row = {"trial_id": outcome.trial_id, "sweep_id": sweep_id, "status": str(outcome.status),
           "attempts": attempts, "error": outcome.error, "run_device": outcome.device,
           "host": host, "wall_seconds": outcome.wall_seconds, "n_checkpoints": len(records),
           "final_step": final.get("step"), "final_t": final.get("t"),
           "init_dist_inf": first.get("dist_inf"), "init_dist_nngp": first.get("dist_nngp"),
           **values}
    row.update({f"final_{c}": final.get(c) for c in FINAL_COLUMNS})
    table = pa.table({f.name: [row[f.name]] for f in TRIALS_SCHEMA}, schema=TRIALS_SCHEMA)
    _write_table(table, loc, _partition_file("trials", spec_dict, outcome.trial_id))


def _partition_file(table: str, spec: dict[str, Any], trial_id: str) -> str:
    return f"{table}/width={int(spec['width'])}/depth={int(spec['depth'])}/{trial_id}.parquet"


def _read(loc: _Location, table: str, schema: pa.Schema, filters) -> pd.DataFrame:
    full = schema.append(pa.field("width", pa.int64())).append(pa.field("depth", pa.int64()))
    path = loc.path(table)
    if loc.fs.get_file_info(path).type != pafs.FileType.Directory:
        return full.empty_table().to_pandas()
    dataset = ds.dataset(path, filesystem=loc.fs, format="parquet", partitioning=_PARTITIONING,
                         schema=full, exclude_invalid_files=False, ignore_prefixes=[".", "_"])
    expr = None
    for key, value in (filters or {}).items():
        values = value if isinstance(value, (list, tuple, set)) else [value]
        term = ds.field(key).isin(list(values))
        expr = term if expr is None else expr & term
    return dataset.to_table(filter=expr).to_pandas()


def load_results(out: str | Path, filters: dict[str, Any] | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, checkpoints) DataFrames of an output dir, optionally filtered, e.g.
    ``filters={"width": [256, 1024], "depth": 3}`` (partition filters read only the
    matching files). Sorted by width, depth, trial_id (and step)."""
    loc = _locate(out)
    trials = _read(loc, "trials", TRIALS_SCHEMA, filters)
    ckpts = _read(loc, "checkpoints", CHECKPOINTS_SCHEMA, filters)
    trials = trials.sort_values(["width", "depth", "trial_id"], ignore_index=True)
    ckpts = ckpts.sort_values(["width", "depth", "trial_id", "step"], ignore_index=True)
    return trials, ckpts


def plain_value(v):
    """A value read back from a table as plain Python: numpy scalars unwrapped, NaN → None."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and np.isnan(v):
        return None
    return v


def spec_from_row(row) -> TrialSpec:
    """The ``TrialSpec`` of a trials or checkpoints row (a pandas Series or a dict): the
    inverse of the spec columns written by ``write_trial``."""
    values = {}
    for name in TRIAL_FIELDS:
        if name in row:
            v = plain_value(row[name])
            if name == "checkpoint_steps" and isinstance(v, str):
                v = json.loads(v)
            values[name] = v
    return TrialSpec.from_dict(values)


def finished_trials(out: str | Path) -> dict[str, Status]:
    """trial_id → status of every trial with a trials row (what resume consults)."""
    trials = _read(_locate(out), "trials", TRIALS_SCHEMA, None)
    return {tid: Status(s) for tid, s in zip(trials["trial_id"], trials["status"])}


def attempts_made(out: str | Path) -> dict[str, int]:
    """trial_id → the attempt number its trials row records (failed trials run again)."""
    trials = _read(_locate(out), "trials", TRIALS_SCHEMA, None)
    return {tid: int(a) for tid, a in zip(trials["trial_id"], trials["attempts"])}


def read_meta(out: str | Path) -> SweepMeta | None:
    """The output dir's ``sweep.json``, or None where there is none (not an ntksweep dir)."""
    text = read_text(out, "sweep.json")
    return None if text is None else SweepMeta.from_json(text)


def write_meta(out: str | Path, meta: SweepMeta) -> None:
    write_text(out, "sweep.json", meta.to_json())

