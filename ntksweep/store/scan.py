"""Reading a table's Parquet files: which files it has, which of them read back, and all of
them as one DataFrame, a chunk of files at a time (the layout: ``store`` package doc)."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..records import Status
from .location import _Location

__all__ = ["PARTITIONS", "partition_file", "full_schema", "table_files", "unreadable_files",
           "CHUNK_FILES", "scan"]

PARTITIONS = ("width", "depth")
_PARTITIONING = ds.partitioning(pa.schema([(p, pa.int64()) for p in PARTITIONS]), flavor="hive")


def partition_file(table: str, spec: dict[str, Any], trial_id: str) -> str:
    return f"{table}/width={int(spec['width'])}/depth={int(spec['depth'])}/{trial_id}.parquet"


def full_schema(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field("width", pa.int64())).append(pa.field("depth", pa.int64()))


def table_files(loc: _Location, table: str) -> list[str]:
    """The visible Parquet files of a table (hidden ``.tmp-…`` files are half-written)."""
    path = loc.path(table)
    if loc.fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = loc.fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File
                  and i.path.endswith(".parquet")
                  and not any(p.startswith((".", "_")) for p in i.path[len(path):].split("/")))


def unreadable_files(loc: _Location, table: str, schema: pa.Schema,
                     files: list[str] | None = None) -> list[str]:
    """The table's files (or those of ``files``) that do not read back whole under its
    schema."""
    bad = []
    for path in table_files(loc, table) if files is None else files:
        try:
            pq.read_table(path, filesystem=loc.fs, schema=schema)
        except (pa.ArrowException, OSError, ValueError):
            bad.append(path)
    return bad


# Files read as one dataset at a time: each file comes back as its own small batch of ~170
# columns (hundreds of KiB of buffers and metadata per file), so a table of 10⁵ files is
# read in chunks of this many, each combined into one contiguous table of the selected
# columns before the next is read (benchmarks/bench_store_scale.py)
CHUNK_FILES = 128


def scan(loc: _Location, table: str, schema: pa.Schema, filters=None,
         columns: list[str] | None = None, sort: list[str] | None = None
         ) -> tuple[pd.DataFrame, list[str]]:
    """(the table's readable rows — ``columns`` of them, all by default, sorted by ``sort``
    before they become pandas — and its unreadable files), read ``CHUNK_FILES`` files at a
    time; a chunk that fails is read file by file. Partition filters (width, depth) choose
    the files by path before any is opened."""
    full = full_schema(schema)
    path = loc.path(table)
    files = [f for f in table_files(loc, table) if _in_partitions(f[len(path):], filters)]
    if columns is not None and table == "trials":    # what the status check reads
        columns = list(dict.fromkeys([*columns, "trial_id", "status", *PARTITIONS]))
    expr = None
    for key, value in (filters or {}).items():
        values = value if isinstance(value, (list, tuple, set)) else [value]
        term = ds.field(key).isin(list(values))
        expr = term if expr is None else expr & term

    def read(paths) -> pa.Table:  # one batch per file: combined, so chunks do not add up
        return ds.dataset(paths, filesystem=loc.fs, format="parquet", schema=full,
                          partitioning=_PARTITIONING, partition_base_dir=path,
                          exclude_invalid_files=False).to_table(
            columns=columns, filter=expr).combine_chunks()

    parts, bad = [], []
    for i in range(0, len(files), CHUNK_FILES):
        chunk = files[i:i + CHUNK_FILES]
        try:
            parts.append(read(chunk))
        except (pa.ArrowException, OSError, ValueError):
            broken = unreadable_files(loc, table, schema, chunk)
            bad += broken
            if len(broken) < len(chunk):
                parts.append(read([f for f in chunk if f not in broken]))
    empty = full.empty_table() if columns is None else full.empty_table().select(columns)
    combined = pa.concat_tables([empty, *parts])
    if sort:
        combined = combined.sort_by([(key, "ascending") for key in sort])
    parts.clear()             # the combined table holds the only reference to the buffers:
    rows = combined.to_pandas(self_destruct=True, split_blocks=True)   # freed as converted
    del combined
    if table == "trials":   # a row no version writes (a status that is none of ours)
        odd = ~rows["status"].isin([s.value for s in Status])
        if odd.any():
            bad += [loc.path(partition_file("trials", row, row["trial_id"]))
                    for _, row in rows[odd].iterrows()]
            rows = rows[~odd]
    return rows, bad


def _in_partitions(relative: str, filters) -> bool:
    """Whether a file's ``/width=…/depth=…/`` path lies in the filters' partitions."""
    for key in PARTITIONS:
        if filters and key in filters:
            wanted = filters[key] if isinstance(filters[key], (list, tuple, set)) \
                else [filters[key]]
            found = re.search(rf"/{key}=(-?\d+)/", relative)
            if found and int(found[1]) not in {int(v) for v in wanted}:
                return False
    return True
