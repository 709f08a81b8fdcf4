"""The members table: an ensemble trial's networks (``records.Members``), one row each —
its member index, seed, dist_inf and Θ_0 on the eval set per logit, the M(M+1)/2 entries of
its upper triangle (row-major, the diagonal included; the kernel is symmetric). One file per
trial beside its checkpoints file, written before its trials row like them: thousands of
seeds per cell are thousands of rows, not thousands of files or MLflow runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..records import TrialOutcome
from .location import _Location, _write_table
from .scan import partition_file

__all__ = ["MEMBERS_SCHEMA", "write_members", "member_kernels"]

MEMBERS_SCHEMA = pa.schema([
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("sweep_id", pa.string()),
    pa.field("member", pa.int64()),
    pa.field("seed", pa.int64()),
    pa.field("dist_inf", pa.float64()),
    pa.field("kernel", pa.list_(pa.float64())),
], metadata={b"ntksweep_schema": b"1"})


def write_members(loc: _Location, sweep_id: str, spec: dict[str, Any],
                  outcome: TrialOutcome) -> None:
    """The trial's members file (``outcome.members``: S kernels (S, M, M))."""
    members = outcome.members
    s, m = members.kernels.shape[:2]
    upper = np.triu_indices(m)
    entries = np.ascontiguousarray(members.kernels[:, upper[0], upper[1]]).ravel()
    offsets = np.arange(s + 1, dtype=np.int32) * len(upper[0])
    table = pa.table({
        "trial_id": pa.array([outcome.trial_id] * s, pa.string()),
        "sweep_id": pa.array([sweep_id] * s, pa.string()),
        "member": pa.array(np.arange(s, dtype=np.int64)),
        "seed": pa.array(members.seeds.astype(np.int64)),
        "dist_inf": pa.array(members.dist_inf.astype(np.float64)),
        "kernel": pa.ListArray.from_arrays(pa.array(offsets), pa.array(entries)),
    }, schema=MEMBERS_SCHEMA)
    _write_table(table, loc, partition_file("members", spec, outcome.trial_id))


def member_kernels(rows: pd.DataFrame) -> np.ndarray:
    """The rows' Θ_0 as full symmetric matrices (S, M, M), from their upper triangles."""
    entries = np.stack(rows["kernel"].to_numpy())                     # (S, M(M+1)/2)
    m = int((np.sqrt(8 * entries.shape[1] + 1) - 1) / 2)
    out = np.empty((len(entries), m, m))
    i, j = np.triu_indices(m)
    out[:, i, j] = entries
    out[:, j, i] = entries
    return out
