"""Data sets for trials, deterministic from a seed. All arrays float64 numpy.

- ``circle``: Jacot et al. (2018) Fig. 1–2: training inputs N(0, I₂) (or uniform on the
  circle, ``train_inputs='circle'``), target f*(x) = x1·x2; evaluation inputs on the unit
  circle x = (cos γ, sin γ), γ on a grid in [0, 2π).
- ``sphere``: d-dim inputs on the sphere of radius √d (so x·x/d = 1) with a teacher:
  'quadratic' (x1·x2), 'linear' (a fixed random direction) or 'network' (a fixed random
  width-64 ReLU network).
- ``digits``: scikit-learn's bundled 8×8 digits (nothing downloaded), features standardised,
  labels one-hot minus their mean (regression targets) or class ids (cross-entropy).
- ``images``: synthetic one-channel ``dim``×``dim`` images (smoothed noise) with a
  translation-invariant teacher (``_images``), for convolutional networks.
- ``file``: the user's arrays — .npz of plain numeric arrays X, y (optional X_eval, y_eval;
  never unpickled; X of shape (N, C, H, W) is an image set), or Parquet with feature columns
  and a ``y`` column (read by pandas).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataFileError, SpecError

__all__ = ["Dataset", "DATASETS", "IMAGE_DATASETS", "make_dataset"]

DATASETS = ("circle", "sphere", "digits", "images", "file")
IMAGE_DATASETS = ("digits", "images", "file")   # what a cnn or resnet can read
TEACHERS = ("quadratic", "linear", "network")


@dataclass(frozen=True)
class Dataset:
    """x_train (N, d), y_train (N, k), x_eval (M, d), y_eval (M, k). ``labels_*`` hold class
    ids for classification sets; ``eval_coords`` is γ for the circle; ``image_shape``
    (C, H, W) for image sets, whose rows are the images flattened (d = C·H·W)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    labels_train: np.ndarray | None = None
    labels_eval: np.ndarray | None = None
    eval_coords: np.ndarray | None = field(default=None, repr=False)
    image_shape: tuple[int, int, int] | None = None

    def images(self, x: np.ndarray) -> np.ndarray:
        """Rows (n, C·H·W) as images (n, C, H, W)."""
        if self.image_shape is None:
            raise SpecError(f"data set {self.name!r} holds vectors, not images: a cnn or "
                            f"resnet needs {', '.join(IMAGE_DATASETS)} (a file of (N, C, H, "
                            "W) arrays)")
        return x.reshape(len(x), *self.image_shape)

    @property
    def in_dim(self) -> int:
        return self.x_train.shape[1]

    @property
    def out_dim(self) -> int:
        return self.y_train.shape[1]


def _circle(n_train: int, n_eval: int, seed: int, train_inputs: str = "gaussian") -> Dataset:
    rng = np.random.default_rng(seed)
    if train_inputs == "circle":  # Jacot Fig. 2: the training points lie on the circle too
        angle = rng.uniform(0, 2 * np.pi, n_train)
        x = np.stack([np.cos(angle), np.sin(angle)], 1)
    else:
        x = rng.standard_normal((n_train, 2))
    gamma = np.linspace(0.0, 2 * np.pi, n_eval, endpoint=False)
    xe = np.stack([np.cos(gamma), np.sin(gamma)], 1)
    return Dataset("circle", x, (x[:, 0] * x[:, 1])[:, None], xe, (xe[:, 0] * xe[:, 1])[:, None],
                   eval_coords=gamma)


def _sphere(n_train: int, n_eval: int, seed: int, dim: int, teacher: str) -> Dataset:
    if teacher not in TEACHERS:
        raise SpecError(f"unknown teacher {teacher!r}; choose one of: {', '.join(TEACHERS)}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_train + n_eval, dim))
    x *= np.sqrt(dim) / np.linalg.norm(x, axis=1, keepdims=True)
    if teacher == "quadratic":
        y = x[:, 0] * x[:, 1 % dim]
    elif teacher == "linear":
        y = x @ rng.standard_normal(dim) / np.sqrt(dim)
    else:
        w1 = rng.standard_normal((dim, 64)) / np.sqrt(dim)
        w2 = rng.standard_normal(64) / np.sqrt(64)
        y = np.maximum(x @ w1, 0.0) @ w2 * np.sqrt(2.0)
    y = y[:, None]
    return Dataset("sphere", x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def _digits(n_train: int, n_eval: int, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, labels = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    if n_train + n_eval > len(x):
        raise SpecError(f"digits has {len(x)} images; n_train + n_eval = {n_train + n_eval}")
    order = np.random.default_rng(seed).permutation(len(x))
    tr, ev = order[:n_train], order[n_train:n_train + n_eval]
    mean, std = x[tr].mean(0), x[tr].std(0)
    x = (x - mean) / np.where(std > 0, std, 1.0)          # constant pixels stay 0
    onehot = np.eye(10)[labels] - 0.1                      # zero-mean regression targets
    return Dataset("digits", x[tr], onehot[tr], x[ev], onehot[ev], labels[tr], labels[ev],
                   image_shape=(1, 8, 8))


def _images(n_train: int, n_eval: int, seed: int, side: int) -> Dataset:
    """Synthetic one-channel side×side images: white noise smoothed by a 3×3 box (periodic)
    and scaled to unit variance per pixel, with a translation-invariant teacher, the mean
    product of horizontally neighbouring pixels f*(x) = (1/P) Σ_p x(p) x(p + (0, 1))."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n_train + n_eval, side, side))
    x = sum(np.roll(noise, (di, dj), axis=(1, 2)) for di in (-1, 0, 1) for dj in (-1, 0, 1))
    x /= 3.0                                               # 9 independent terms: variance 1
    y = (x * np.roll(x, -1, axis=2)).mean((1, 2))[:, None]
    x = x.reshape(len(x), -1)
    return Dataset("images", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                   image_shape=(1, side, side))


def _load_file(path: str | None, n_train: int, n_eval: int, seed: int) -> Dataset:
    if not path:
        raise SpecError("dataset 'file' needs data_path=<.npz or .parquet file>")
    p = Path(path)
    if not p.is_file():
        raise DataFileError(f"data file {path!r} does not exist")
    if p.suffix == ".parquet":
        import pandas as pd

        df = pd.read_parquet(p)
        if "y" not in df.columns:
            raise DataFileError(f"{path}: Parquet data needs a 'y' column beside the feature "
                                "columns")
        arrays = {"X": df.drop(columns=["y"]).to_numpy(np.float64), "y": df["y"].to_numpy()}
    elif p.suffix == ".npz":
        try:  # plain arrays only: a pickled object in a data file could run code on load
            with np.load(p, allow_pickle=False) as loaded:
                arrays = {k: loaded[k] for k in loaded.files}
        except ValueError as e:
            raise DataFileError(f"{path}: holds pickled objects, which are never loaded (they "
                                f"can run code): save plain numeric arrays ({e})") from None
    elif p.suffix == ".npy":
        raise DataFileError(f"{path}: a data file must hold a dict of plain arrays X and y "
                            "(optional X_eval, y_eval), and a .npy file holds one array (a "
                            "pickled dict is never loaded: it can run code); save with "
                            "np.savez(path, X=..., y=...)")
    else:
        raise DataFileError(f"{path}: unsupported data file type {p.suffix!r}; use .npz or "
                            ".parquet")
    for key in ("X", "y"):
        if key not in arrays:
            raise DataFileError(f"{path}: missing array {key!r} (found: {', '.join(arrays)})")

    def checked(x, y, which):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        x = x.reshape(len(x), -1)
        y = y.reshape(len(y), -1)
        if len(x) != len(y):
            raise DataFileError(f"{path}: {which} has {len(x)} inputs but {len(y)} labels")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise DataFileError(f"{path}: {which} contains NaN or inf")
        return x, y

    shape = tuple(np.shape(arrays["X"])[1:])
    image_shape = shape if len(shape) == 3 else None     # (N, C, H, W): images
    x, y = checked(arrays["X"], arrays["y"], "X/y")
    if "X_eval" in arrays:
        xe, ye = checked(arrays["X_eval"], arrays.get("y_eval", np.zeros(len(arrays["X_eval"]))),
                         "X_eval/y_eval")
        if xe.shape[1] != x.shape[1] or ye.shape[1] != y.shape[1]:
            raise DataFileError(f"{path}: X_eval/y_eval have {xe.shape[1]} features/"
                                f"{ye.shape[1]} outputs but X/y have {x.shape[1]}/{y.shape[1]}")
        return Dataset(p.name, x[:n_train], y[:n_train], xe[:n_eval], ye[:n_eval],
                       image_shape=image_shape)
    if n_train + n_eval > len(x):
        raise DataFileError(f"{path}: {len(x)} points, fewer than n_train + n_eval = "
                            f"{n_train + n_eval}")
    order = np.random.default_rng(seed).permutation(len(x))
    tr, ev = order[:n_train], order[n_train:n_train + n_eval]
    return Dataset(p.name, x[tr], y[tr], x[ev], y[ev], image_shape=image_shape)


def make_dataset(name: str, *, n_train: int, n_eval: int, seed: int = 0, dim: int = 8,
                 teacher: str = "quadratic", path: str | None = None,
                 train_inputs: str = "gaussian") -> Dataset:
    """Build a data set by name; same arguments → identical arrays."""
    if n_train < 1 or n_eval < 1:
        raise SpecError(f"n_train and n_eval must be >= 1; got {n_train}, {n_eval}")
    if name == "circle":
        return _circle(n_train, n_eval, seed, train_inputs)
    if name == "sphere":
        return _sphere(n_train, n_eval, seed, dim, teacher)
    if name == "digits":
        return _digits(n_train, n_eval, seed)
    if name == "images":
        return _images(n_train, n_eval, seed, dim)
    if name == "file":
        return _load_file(path, n_train, n_eval, seed)
    raise SpecError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
