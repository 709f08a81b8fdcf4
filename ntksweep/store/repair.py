"""What a resumed sweep does with files it cannot trust: a Parquet file that does not read
back, or a trial whose checkpoints (or members) file disagrees with its trials row (a
truncated write on a full disk, a copy cut short). They are moved aside, never deleted, and
their trials run again."""

from __future__ import annotations

import time
import warnings
from collections import Counter
from pathlib import Path

from .location import _locate
from .members import MEMBERS_SCHEMA
from .scan import scan, table_files
from .tables import CHECKPOINTS_SCHEMA, TRIALS_SCHEMA

__all__ = ["repair", "quarantined_trials", "QUARANTINE"]

_TABLES = ("trials", "checkpoints", "members")
QUARANTINE = "_quarantine"   # under the output dir; "_" keeps every reader out of it


def repair(out: str | Path) -> list[str]:
    """Move aside (to ``OUT/_quarantine/<time>/…``) every unreadable table file and all the
    files of every trial whose checkpoint rows do not number its trials row's
    ``n_checkpoints`` (or whose member rows its ``ensemble``); returns the moved files'
    paths relative to ``out``."""
    loc = _locate(out)
    trials, bad_trials = scan(loc, "trials", TRIALS_SCHEMA)
    ckpts, bad_ckpts = scan(loc, "checkpoints", CHECKPOINTS_SCHEMA)
    members, bad_members = scan(loc, "members", MEMBERS_SCHEMA, columns=["trial_id"])
    rows, networks = Counter(ckpts["trial_id"]), Counter(members["trial_id"])
    ensemble = trials["ensemble"].fillna(1).astype(int)       # absent before ensembles
    suspect = {tid for tid, n, s in zip(trials["trial_id"], trials["n_checkpoints"], ensemble)
               if rows.get(tid, 0) != n or (s > 1 and networks.get(tid, 0) != s)}
    bad = set(bad_trials) | set(bad_ckpts) | set(bad_members)
    suspect |= {f.rsplit("/", 1)[1].removesuffix(".parquet") for f in bad}
    bad |= {f for table in _TABLES for f in table_files(loc, table)      # inconsistent: all
            if f.rsplit("/", 1)[1].removesuffix(".parquet") in suspect}   # its files go
    if not bad:
        return []
    stamp = time.strftime("%Y%m%dT%H%M%S")
    moved = []
    for f in sorted(bad):
        rel = f[len(loc.root) + 1:]
        dest = loc.path(QUARANTINE, stamp, rel)
        loc.make_dirs(dest.rsplit("/", 1)[0])
        loc.fs.move(f, dest)
        moved.append(rel)
    warnings.warn(f"moved {len(moved)} unreadable or inconsistent file(s) of {out} to "
                  f"{QUARANTINE}/{stamp}/ (their trials run again): {', '.join(moved)}",
                  stacklevel=2)
    return moved


def quarantined_trials(moved: list[str]) -> dict[str, str]:
    """trial_id → the quarantined files of that trial (as ``repair`` returns them), joined."""
    out: dict[str, list[str]] = {}
    for rel in moved:
        out.setdefault(rel.rsplit("/", 1)[1].removesuffix(".parquet"), []).append(rel)
    return {tid: ", ".join(files) for tid, files in out.items()}
