"""A kernel job's tiles (``ntksweep.gram``): one ``.npz`` file per tile, written atomically
(a hidden name renamed into place; an object store's PUT), holding its arrays and a SHA-256
of their bytes, so that a tile that does not read back whole or does not match its checksum
counts as missing and is computed again."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from .location import _locate, _write_stream

__all__ = ["write_tile", "read_tile", "tile_names", "subfolders"]


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_tile(out: str | Path, rel: str, arrays: dict[str, np.ndarray]) -> None:
    """``rel`` (e.g. ``tiles/train/0_128.npz``) with ``arrays`` and their checksum."""
    payload = {**arrays, "sha256": np.array(_digest(arrays))}
    _write_stream(_locate(out), rel, lambda f: np.savez(f, **payload))


def read_tile(out: str | Path, rel: str) -> dict[str, np.ndarray] | None:
    """The tile's arrays, or None when it is missing, unreadable or fails its checksum."""
    loc = _locate(out)
    try:
        with loc.fs.open_input_stream(loc.path(rel)) as f:
            data = np.load(io.BytesIO(f.read()), allow_pickle=False)
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
    digest = arrays.pop("sha256", None)
    if digest is None or str(digest) != _digest(arrays):
        return None
    return arrays


def _entries(out: str | Path, folder: str) -> list:
    """What ``folder`` (relative to ``out``) holds, one level; nothing if it is absent."""
    loc = _locate(out)
    path = loc.path(folder)
    if loc.fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return loc.fs.get_file_info(pafs.FileSelector(path))


def subfolders(out: str | Path, folder: str) -> list[str]:
    """The names of the folders in ``folder`` (relative to ``out``), sorted."""
    return sorted(i.base_name for i in _entries(out, folder)
                  if i.type == pafs.FileType.Directory)


def tile_names(out: str | Path, folder: str) -> set[str]:
    """The visible tile files in ``folder`` (relative to ``out``), by name."""
    return {i.base_name for i in _entries(out, folder) if i.type == pafs.FileType.File
            and i.base_name.endswith(".npz") and not i.base_name.startswith(".")}
