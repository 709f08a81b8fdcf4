"""What a resumed sweep does with files it cannot trust: a Parquet file that does not read
back, or a trial whose checkpoints file disagrees with its trials row (a truncated write on
a full disk, a copy cut short). They are moved aside, never deleted, and their trials run
again."""

from __future__ import annotations

import time
import warnings
from collections import Counter
from pathlib import Path

from .location import _locate
from .tables import CHECKPOINTS_SCHEMA, TRIALS_SCHEMA, scan, table_files

__all__ = ["repair", "quarantined_trials", "QUARANTINE"]

QUARANTINE = "_quarantine"   # under the output dir; "_" keeps every reader out of it


def repair(out: str | Path) -> list[str]:
    """Move aside (to ``OUT/_quarantine/<time>/…``) every unreadable table file and both
    files of every trial whose checkpoint rows do not number its trials row's
    ``n_checkpoints``; returns the moved files' paths relative to ``out``."""
    loc = _locate(out)
    trials, bad_trials = scan(loc, "trials", TRIALS_SCHEMA)
    ckpts, bad_ckpts = scan(loc, "checkpoints", CHECKPOINTS_SCHEMA)
    rows = Counter(ckpts["trial_id"])
    suspect = {tid for tid, n in zip(trials["trial_id"], trials["n_checkpoints"])
               if rows.get(tid, 0) != n}          # inconsistent: both files go
    suspect |= {f.rsplit("/", 1)[1].removesuffix(".parquet") for f in bad_ckpts + bad_trials}
    bad = set(bad_trials) | set(bad_ckpts)
    bad |= {f for table in ("trials", "checkpoints") for f in table_files(loc, table)
            if f.rsplit("/", 1)[1].removesuffix(".parquet") in suspect}
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
