"""The Parquet store: the only pyarrow code (docs/ARCHITECTURE.md: one adapter per system).

``location``: where an output dir lives and atomic writes; ``tables``: the schemas, writing a
trial, reading the tables; ``repair``: files that cannot be read, moved aside.

An output dir is a local path, a shared mount, or an object-store URI (``s3://bucket/prefix``
through pyarrow's filesystems; any other fsspec scheme through fsspec). Layout::

    trials/width=256/depth=3/<trial_id>.parquet       one row per trial (spec, status, finals)
    checkpoints/width=256/depth=3/<trial_id>.parquet  one row per trial × checkpoint
    members/width=256/depth=3/<trial_id>.parquet      an ensemble trial's: one row per network
    kernels/<trial_id>/step_<step>.npy                kept Θ_t matrices (M, M) float64
    outputs/<trial_id>/step_<step>.npy                kept f_t on the eval set (M, k) float64

One explicit, versioned schema per table (built from ``TrialSpec`` and ``RECORD_COLUMNS``),
hive partitions typed int64, every file written under a hidden name and renamed atomically:
readers never see half a file, and rewriting a trial replaces it (never duplicates it).
On an object store there is no rename, but none is needed: a PUT (or a completed multipart
upload) is atomic — readers see the whole object or nothing. The checkpoints file is written
before the trials file, so a trials row means complete.
"""

from .location import (
    check_writable,
    delete_text,
    forget_filesystems,
    is_uri,
    load_array,
    read_text,
    save_array,
    write_text,
)
from .members import MEMBERS_SCHEMA, member_kernels
from .repair import quarantined_trials, repair
from .tables import (
    CHECKPOINTS_SCHEMA,
    SCHEMA_VERSION,
    TRIALS_SCHEMA,
    finished_trials,
    load_members,
    load_results,
    load_trials,
    plain_value,
    read_meta,
    spec_from_row,
    trial_states,
    trial_written,
    write_meta,
    write_trial,
)

__all__ = ["SCHEMA_VERSION", "TRIALS_SCHEMA", "CHECKPOINTS_SCHEMA", "MEMBERS_SCHEMA",
           "write_trial", "load_members", "member_kernels", "save_array",
           "load_array", "load_results", "load_trials", "finished_trials", "trial_states",
           "plain_value", "trial_written",
           "spec_from_row", "is_uri", "check_writable", "write_text", "read_text",
           "delete_text", "read_meta", "write_meta", "repair", "quarantined_trials",
           "forget_filesystems"]
