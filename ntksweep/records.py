"""What a trial produces, owned in one place and free of torch, Ray, MLflow and pyarrow.

- ``RECORD_COLUMNS``: the columns of every checkpoint record, in order; the Parquet schema
  and the MLflow metrics are built from them.
- ``Status``: a trial's outcome; the done ones are skipped on resume.
- ``TrialOutcome``: what ``run_trial`` returns; it travels unchanged from the worker to the
  store (``store.write_trial``) and the tracker.
- ``SweepMeta``: the sweep's identity in its output dir (``sweep.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from .parametrizations import ROLES

__all__ = ["N_EIGS", "KR_KERNELS", "INIT_ONLY", "COORD_COLUMNS", "TEST_COLUMNS",
           "RECORD_COLUMNS", "FINAL_COLUMNS", "INIT_COLUMNS", "ENSEMBLE_COLUMNS",
           "SUMMARY_COLUMNS", "Members", "Record",
           "Status", "TrialOutcome", "SweepMeta", "EMBEDDED_STORE"]

N_EIGS = 3
# kernel regression baselines on the test set (trial/held_out.py): Θ_∞, the NNGP Σ, Θ_0 (the
# linearised net) and Θ_t (the kernel at the last checkpoint, the "after kernel")
KR_KERNELS = ("inf", "nngp", "init", "t")
Record = dict[str, Any]
# step 0 only: stored as the trials table's init_<column>, never as a final value
INIT_ONLY = ("lr_sharpness",)
# the coordinate check's (trial/diagnostics.py): per layer role, the RMS of its
# pre-activations and of their change since step 0
COORD_COLUMNS = tuple(f"coord_{r}{s}" for s in ("", "_change") for r in ROLES)
# the held-out test set's (trial/held_out.py): the net, the Θ_∞ linear model after the same
# steps, and kernel regression with each of KR_KERNELS
TEST_COLUMNS = ("test_loss", "test_acc", "test_loss_gd_inf", "test_acc_gd_inf",
                *[f"test_{m}_kr_{k}" for k in KR_KERNELS for m in ("loss", "acc")])
RECORD_COLUMNS = ("step", "t", "train_loss", "eval_loss", "dist_inf", "dist_init", "align_inf",
                  "align_init", *[f"eig{i}{s}" for i in range(1, N_EIGS + 1) for s in ("", "_inf")],
                  "f_change", "gap_inf", "gap_lin", "gap_inf_flow", "gap_lin_flow", "dist_nngp",
                  "lr_sharpness", "kernel_velocity", "target_align", *COORD_COLUMNS,
                  *TEST_COLUMNS, "train_seconds", "kernel_seconds")


class Status(str, Enum):
    """A trial attempt's status, as stored in Parquet and tagged on its MLflow run (its value;
    the run's own MLflow status is the tracker's: ``tracking.runs.RUN_STATUS``)."""

    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"     # the loss blew up: a deterministic, finished measurement
    FAILED = "failed"         # the trial raised, or its worker died too often
    KILLED = "killed"         # stopped by Ctrl-C / SIGTERM / a failing driver

    def __str__(self) -> str:
        return self.value

    @property
    def done(self) -> bool:
        """Deterministic outcomes: resume skips them (failed and killed trials run again)."""
        return self in DONE_STATUSES


DONE_STATUSES = frozenset({Status.COMPLETED, Status.DIVERGED})


# a trial's summary: its first record's INIT_COLUMNS as init_<column>, its last record's
# FINAL_COLUMNS as final_<column> — the trials table's columns and its MLflow run's metrics
FINAL_COLUMNS = tuple(c for c in RECORD_COLUMNS if c not in ("step", "t", *INIT_ONLY))
INIT_COLUMNS = ("dist_inf", "dist_nngp", *INIT_ONLY)
# an ensemble trial's members together (``Members``): their mean dist_inf, and the mean
# shift m² and fluctuation s of their Θ_0 around Θ_∞ (``kernels.metrics``)
ENSEMBLE_COLUMNS = ("ensemble_dist_inf", "ensemble_mean_shift_sq", "ensemble_fluctuation")
SUMMARY_COLUMNS = (*(f"init_{c}" for c in INIT_COLUMNS), *(f"final_{c}" for c in FINAL_COLUMNS),
                   *ENSEMBLE_COLUMNS)


@dataclass(frozen=True)
class Members:
    """An ensemble trial's S networks at initialisation (``TrialSpec.member``): their seeds
    (S,), their Θ_0 on the eval set per logit (S, M, M) float64, and each one's dist_inf
    (S,) (NaN without a limit); ``shift_sq`` and ``fluctuation``: m² and s of the S kernels
    around Θ_∞ (NaN without one)."""

    seeds: np.ndarray
    kernels: np.ndarray = field(repr=False)
    dist_inf: np.ndarray = field(repr=False)
    shift_sq: float = float("nan")
    fluctuation: float = float("nan")

    def summary(self) -> dict[str, float]:
        """``ENSEMBLE_COLUMNS``' values."""
        return {"ensemble_dist_inf": float(np.mean(self.dist_inf)),
                "ensemble_mean_shift_sq": self.shift_sq,
                "ensemble_fluctuation": self.fluctuation}


@dataclass(frozen=True)
class TrialOutcome:
    """One trial attempt's result. ``records``: one flat dict per checkpoint (keys
    ``RECORD_COLUMNS``). ``kernels``: step → Θ_t on the eval set (M, M) float64 for the kept
    checkpoints; ``outputs``: step → f_t on the eval set (M, k) float64, likewise."""

    trial_id: str
    status: Status
    records: list[Record] = field(default_factory=list)
    kernels: dict[int, Any] = field(default_factory=dict, repr=False)
    outputs: dict[int, Any] = field(default_factory=dict, repr=False)
    error: str | None = None
    device: str = "cpu"
    wall_seconds: float = float("nan")
    train_seconds: float = float("nan")
    kernel_seconds: float = float("nan")
    members: Members | None = field(default=None, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "status", Status(self.status))

    @property
    def final(self) -> Record:
        return self.records[-1] if self.records else {}

    @property
    def first(self) -> Record:
        return self.records[0] if self.records else {}

    @property
    def summary(self) -> dict[str, Any]:
        """``SUMMARY_COLUMNS``: init_<c> of the first record, final_<c> of the last (None
        where absent)."""
        first, final = self.first, self.final
        ensemble = dict.fromkeys(ENSEMBLE_COLUMNS) if self.members is None \
            else self.members.summary()
        return {**{f"init_{c}": first.get(c) for c in INIT_COLUMNS},
                **{f"final_{c}": final.get(c) for c in FINAL_COLUMNS}, **ensemble}


# sweep.json's tracking_uri for the embedded default: SQLite inside the output dir, wherever
# the dir is now (a copied or moved dir keeps its own store)
EMBEDDED_STORE = "embedded"


@dataclass(frozen=True)
class SweepMeta:
    """``sweep.json``: which sweep an output dir holds, and where it is tracked
    (``tracking_uri``: ``EMBEDDED_STORE``, a URI without credentials, or "" when it names
    none)."""

    sweep_id: str
    name: str
    tracking_uri: str = ""

    def to_json(self) -> str:
        return json.dumps({"sweep_id": self.sweep_id, "name": self.name,
                           "tracking_uri": self.tracking_uri}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SweepMeta:
        d = json.loads(text)
        return cls(str(d["sweep_id"]), str(d["name"]), str(d.get("tracking_uri") or ""))
