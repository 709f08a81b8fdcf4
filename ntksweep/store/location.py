"""Where an output dir lives (a local path, a shared mount, or an object store through
pyarrow's filesystems or fsspec) and atomic writes of its files."""

from __future__ import annotations

import functools
import io
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import OutputDirError

__all__ = ["is_uri", "write_text", "read_text", "delete_text", "check_writable", "save_array",
           "load_array"]


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


def forget_filesystems() -> None:
    """Drop the object-store filesystems built so far: the next use builds them from the
    credentials and endpoint in the environment now (after a notebook changes them)."""
    _locate_uri.cache_clear()


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


def _write_atomic(loc: _Location, rel: str, write, commit_guard=None) -> None:
    """Call ``write(path)`` so that readers of ``rel`` never see a partial file.
    ``commit_guard()`` is called just before the file appears (the rename; an object
    store's PUT), and when it raises nothing appears: a driver's lock is checked at the
    commit, not a whole write earlier."""
    dest = loc.path(rel)
    parent, name = dest.rsplit("/", 1)
    loc.make_dirs(parent)
    guard = commit_guard or (lambda: None)
    if not loc.local:
        guard()
        write(dest)  # an object PUT is atomic
        return
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}"  # hidden: dataset readers skip it
    write(tmp)
    try:
        guard()
    except BaseException:
        loc.fs.delete_file(tmp)
        raise
    loc.fs.move(tmp, dest)


def _write_stream(loc: _Location, rel: str, fill) -> None:
    """``fill(stream)`` writes the file's content; atomically, as ``_write_atomic``."""
    def write(path):
        with loc.fs.open_output_stream(path) as f:
            fill(f)

    _write_atomic(loc, rel, write)


def _write_table(table: pa.Table, loc: _Location, rel: str, commit_guard=None) -> None:
    _write_atomic(loc, rel, lambda path: pq.write_table(table, path, filesystem=loc.fs),
                  commit_guard)


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
