"""The Parquet store: the only pyarrow code (DESIGN.md).

Layout of an output dir::

    trials/width=256/depth=3/<trial_id>.parquet       one row per trial (spec, status, finals)
    checkpoints/width=256/depth=3/<trial_id>.parquet  one row per trial × checkpoint
    kernels/<trial_id>/step_<step>.npy                kept Θ_t matrices (M, M) float64
    outputs/<trial_id>/step_<step>.npy                kept f_t on the eval set (M, k) float64

One explicit, versioned schema per table (built from ``TrialSpec`` and ``RECORD_COLUMNS``),
hive partitions typed int64, every file written under a hidden name and renamed atomically:
readers never see half a file, and rewriting a trial replaces it (never duplicates it).
The checkpoints file is written before the trials file, so a trials row means complete.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .config import TRIAL_FIELDS
from .trial import RECORD_COLUMNS

__all__ = ["SCHEMA_VERSION", "TRIALS_SCHEMA", "CHECKPOINTS_SCHEMA", "write_trial", "save_array",
           "load_results", "finished_trials", "plain_value", "DONE_STATUSES"]

SCHEMA_VERSION = "1"
PARTITIONS = ("width", "depth")
DONE_STATUSES = ("completed", "diverged")  # deterministic outcomes: resume skips them
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


def _partition_dir(root: Path, table: str, spec: dict[str, Any]) -> Path:
    return root / table / f"width={int(spec['width'])}" / f"depth={int(spec['depth'])}"


def _atomic_write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def save_array(out: str | Path, kind: str, trial_id: str, step: int, matrix: np.ndarray) -> str:
    """Write a kept array ('kernels': Θ_t, 'outputs': f_t) as .npy, atomically; returns its
    path relative to ``out``."""
    rel = Path(kind) / trial_id / f"step_{int(step)}.npy"
    path = Path(out) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}.npy")
    np.save(tmp, np.asarray(matrix))
    os.replace(tmp, path)
    return str(rel)


def write_trial(out: str | Path, *, trial_id: str, sweep_id: str, spec: dict[str, Any],
                status: str, records: list[dict[str, Any]], attempts: int = 1,
                error: str | None = None, device: str = "", host: str = "",
                wall_seconds: float = float("nan"),
                kernel_paths: dict[int, str] | None = None,
                output_paths: dict[int, str] | None = None) -> None:
    """Write one trial's checkpoints file, then its trials row (the completion marker)."""
    root = Path(out)
    values = _spec_values(spec)
    kernel_paths, output_paths = kernel_paths or {}, output_paths or {}
    cols: dict[str, list] = {f.name: [] for f in CHECKPOINTS_SCHEMA}
    for rec in records:
        row = {"trial_id": trial_id, "sweep_id": sweep_id, **values,
               "kernel_path": kernel_paths.get(int(rec["step"])),
               "outputs_path": output_paths.get(int(rec["step"]))}
        row.update({c: rec.get(c) for c in RECORD_COLUMNS})
        for name in cols:
            cols[name].append(row[name])
    _atomic_write(pa.table(cols, schema=CHECKPOINTS_SCHEMA),
                  _partition_dir(root, "checkpoints", spec) / f"{trial_id}.parquet")
    final = records[-1] if records else {}
    first = records[0] if records else {}
    row = {"trial_id": trial_id, "sweep_id": sweep_id, "status": status, "attempts": attempts,
           "error": error, "run_device": device, "host": host, "wall_seconds": wall_seconds,
           "n_checkpoints": len(records), "final_step": final.get("step"),
           "final_t": final.get("t"), "init_dist_inf": first.get("dist_inf"),
           "init_dist_nngp": first.get("dist_nngp"), **values}
    row.update({f"final_{c}": final.get(c) for c in FINAL_COLUMNS})
    table = pa.table({f.name: [row[f.name]] for f in TRIALS_SCHEMA}, schema=TRIALS_SCHEMA)
    _atomic_write(table, _partition_dir(root, "trials", spec) / f"{trial_id}.parquet")


def _read(root: Path, table: str, schema: pa.Schema, filters) -> pd.DataFrame:
    full = schema.append(pa.field("width", pa.int64())).append(pa.field("depth", pa.int64()))
    path = root / table
    if not path.is_dir():
        return full.empty_table().to_pandas()
    dataset = ds.dataset(path, format="parquet", partitioning=_PARTITIONING, schema=full,
                         exclude_invalid_files=False, ignore_prefixes=[".", "_"])
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
    matching files). Sorted by width, depth, seed (and step)."""
    root = Path(out)
    trials = _read(root, "trials", TRIALS_SCHEMA, filters)
    ckpts = _read(root, "checkpoints", CHECKPOINTS_SCHEMA, filters)
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


def finished_trials(out: str | Path) -> dict[str, str]:
    """trial_id → status of every trial with a trials row (what resume consults)."""
    trials = _read(Path(out), "trials", TRIALS_SCHEMA, None)
    return dict(zip(trials["trial_id"], trials["status"]))

