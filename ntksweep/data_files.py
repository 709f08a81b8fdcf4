"""The user's data files (``dataset: file``), read as plain data and checked: .npz of plain
numeric arrays X and y — regression targets — or labels — class ids, scored by accuracy too
(optional X_eval, y_eval or labels_eval, X_test, y_test or labels_test) — never unpickled,
their sizes read from the arrays' headers before any is decompressed, or Parquet with
feature columns and a ``y`` or ``labels`` column (read by pandas). Every refusal is one
``DataFileError`` line."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from .errors import DataFileError, SpecError

__all__ = ["read_arrays", "checked", "class_targets", "given_split", "provide", "provided",
           "MAX_DATA_BYTES"]

# The most a data file may decompress to (an .npz is a zip: 8 MB on disk can hold 8 GB of
# zeros); the environment may raise it for data sets larger than this
MAX_DATA_BYTES = int(os.environ.get("NTKSWEEP_MAX_DATA_BYTES", 4 << 30))

# path → arrays, in a Ray worker: a file's arrays as the sweep's driver read them
_PROVIDED: dict[str, dict[str, np.ndarray]] = {}


def provide(path: str, arrays: dict[str, np.ndarray]) -> None:
    """This process reads ``path`` as ``arrays`` (read and checked by the process that sent
    them: ``sweep.files``), not from its own filesystem."""
    # copies: arrays that came through Ray's object store are read-only
    _PROVIDED[path] = {k: np.array(v) for k, v in arrays.items()}


def provided(path: str) -> bool:
    return path in _PROVIDED


def read_arrays(path: str | None) -> dict[str, np.ndarray]:
    """A data file's arrays (X, y or labels, and optional X_eval, y_eval or labels_eval,
    X_test, y_test or labels_test), read as plain data: Parquet through pandas, .npz never
    unpickled and its arrays' sizes read from their headers before any is decompressed;
    in a worker given them (``provide``), the arrays the driver read."""
    if not path:
        raise SpecError("dataset 'file' needs data_path=<.npz or .parquet file>")
    if path in _PROVIDED:
        return dict(_PROVIDED[path])
    p = Path(path)
    if not p.is_file():
        raise DataFileError(f"data file {path!r} does not exist")
    if p.suffix == ".parquet":
        arrays = _read_parquet(p)
    elif p.suffix == ".npz":
        arrays = _read_npz(p)
    elif p.suffix == ".npy":
        raise DataFileError(f"{path}: a data file must hold a dict of plain arrays X and y "
                            "(optional X_eval, y_eval), and a .npy file holds one array (a "
                            "pickled dict is never loaded: it can run code); save with "
                            "np.savez(path, X=..., y=...)")
    else:
        raise DataFileError(f"{path}: unsupported data file type {p.suffix!r}; use .npz or "
                            ".parquet")
    if "X" not in arrays or ("y" in arrays) == ("labels" in arrays):
        raise DataFileError(f"{path}: a data file holds X and either y (regression targets) "
                            f"or labels (class ids); found: {', '.join(arrays)}")
    for key, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise DataFileError(f"{path}: array {key!r} holds {a.dtype} values; data must be "
                                "real numbers (bool, int or float)")
    return arrays


def _read_npz(p: Path) -> dict[str, np.ndarray]:
    """An .npz's arrays after checking, from each member's .npy header, that they are plain
    (no pickled objects: they could run code) and decompress to at most ``MAX_DATA_BYTES``."""
    try:
        with zipfile.ZipFile(p) as z:
            total = 0
            for name in z.namelist():
                with z.open(name) as f:   # versions 2 and 3 differ only in the header's text
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                        else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                if dtype.hasobject:
                    raise DataFileError(f"{p}: {name} holds pickled objects, which are never "
                                        "loaded (they can run code): save plain numeric arrays")
                total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if total > MAX_DATA_BYTES:
                raise DataFileError(f"{p}: its arrays decompress to {total / 2**30:.1f} GiB, "
                                    f"more than the {MAX_DATA_BYTES / 2**30:.1f} GiB a data file "
                                    "may hold (NTKSWEEP_MAX_DATA_BYTES raises it)")
        with np.load(p, allow_pickle=False) as loaded:
            return {k: loaded[k] for k in loaded.files}
    except DataFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise DataFileError(f"{p}: not a readable .npz of plain arrays ({type(e).__name__}: "
                            f"{str(e)[:200]}); save with np.savez(path, X=..., y=...)") from None


def _read_parquet(p: Path) -> dict[str, np.ndarray]:
    """Feature columns and a ``y`` column of plain numbers, read by pandas."""
    import pandas as pd

    try:
        df = pd.read_parquet(p)
    except Exception as e:  # noqa: BLE001  (pyarrow's many ways to refuse a file)
        raise DataFileError(f"{p}: not a readable Parquet file ({type(e).__name__}: "
                            f"{str(e)[:200]})") from None
    target = [c for c in ("y", "labels") if c in df.columns]
    if len(target) != 1:
        raise DataFileError(f"{p}: Parquet data needs a 'y' column (regression targets) or a "
                            "'labels' column (class ids) beside the feature columns")
    bad = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])
           or pd.api.types.is_complex_dtype(df[c])]
    if bad:
        raise DataFileError(f"{p}: column(s) {', '.join(map(str, bad[:5]))} are not real "
                            "numbers; a data file holds numeric features and a numeric 'y'")
    try:
        return {"X": df.drop(columns=target).to_numpy(np.float64),
                target[0]: df[target[0]].to_numpy()}
    except (TypeError, ValueError) as e:
        raise DataFileError(f"{p}: its columns do not read as numbers ({e})") from None


def checked(path, x, y, which: str) -> tuple[np.ndarray, np.ndarray]:
    """A file's inputs and labels as float64 (n, features) and (n, outputs), or one line
    saying what is wrong with them."""
    if np.ndim(x) == 0 or np.ndim(y) == 0:
        raise DataFileError(f"{path}: {which} must be arrays of points (a first axis); "
                            f"got shapes {np.shape(x)}, {np.shape(y)}")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x = x.reshape(len(x), -1)
    y = y.reshape(len(y), -1)
    if x.shape[1] == 0 or y.shape[1] == 0:
        raise DataFileError(f"{path}: {which} has no features or no targets (shapes "
                            f"{x.shape}, {y.shape})")
    if len(x) != len(y):
        raise DataFileError(f"{path}: {which} has {len(x)} inputs but {len(y)} labels")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DataFileError(f"{path}: {which} contains NaN or inf")
    return x, y


def class_targets(path, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A file of class ids (``labels``, and ``labels_eval``, ``labels_test`` for its own
    splits): the arrays with the targets a regression on k classes reads, y = e_label −
    1/k (one-hot, zero mean: as the digits set's), k = the largest id + 1. A file of y:
    as it is."""
    if "labels" not in arrays:
        return arrays
    parts = [k for k in ("labels", "labels_eval", "labels_test") if k in arrays]
    for key in parts:
        ids = arrays[key]
        if ids.dtype.kind not in "iu" or ids.ndim != 1 or (ids.size and ids.min() < 0):
            raise DataFileError(f"{path}: {key} must be class ids, non-negative integers, one "
                                f"per point (shape (N,)); got {ids.dtype} of shape {ids.shape}")
    k = 1 + max(int(arrays[key].max()) for key in parts if arrays[key].size)
    if k < 2:
        raise DataFileError(f"{path}: labels name {k} class; a classification needs 2 or more")
    out = dict(arrays)
    for key in parts:
        out[key.replace("labels", "y")] = np.eye(k)[arrays[key]] - 1.0 / k
    return out


def given_split(path, arrays, part: str, x: np.ndarray, y: np.ndarray):
    """The file's own X_<part>/y_<part>, shaped as X/y (x, y: the checked main arrays;
    without y_<part>, zero targets)."""
    xs, ys = checked(path, arrays[f"X_{part}"],
                      arrays.get(f"y_{part}", np.zeros((len(arrays[f"X_{part}"]), y.shape[1]))),
                      f"X_{part}/y_{part}")
    if xs.shape[1] != x.shape[1] or ys.shape[1] != y.shape[1]:
        raise DataFileError(f"{path}: X_{part}/y_{part} have {xs.shape[1]} features/"
                            f"{ys.shape[1]} outputs but X/y have {x.shape[1]}/{y.shape[1]}")
    return xs, ys
