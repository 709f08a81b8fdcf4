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
- ``tokens``: sequences of ``tokens`` tokens of ``dim`` features (``_tokens``): find the
  marked token and read its content — a task where attention matters.
- ``file``: the user's arrays — .npz of plain numeric arrays X, y (optional X_eval,
  y_eval, X_test, y_test; never unpickled; X of shape (N, C, H, W) is an image set, (N, T,
  d) a sequence set), or Parquet with feature columns and a ``y`` column (read by pandas).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data_files import checked, class_targets, given_split, read_arrays
from .errors import DataFileError, SpecError

__all__ = ["Dataset", "DataShape", "DATASETS", "IMAGE_DATASETS", "SEQUENCE_DATASETS",
           "DIGITS_IMAGES",
           "make_dataset", "data_shape"]

DATASETS = ("circle", "sphere", "digits", "images", "tokens", "file")
DIGITS_IMAGES = 1797    # scikit-learn's bundled 8×8 digits (a test reads the set to check it)
IMAGE_DATASETS = ("digits", "images", "file")   # what a cnn or resnet can read
SEQUENCE_DATASETS = ("tokens", "file")          # what a transformer can read
TEACHERS = ("quadratic", "linear", "network")


@dataclass(frozen=True)
class DataShape:
    """One point of a data set: ``in_dim`` features, as an image (C, H, W) where it is one
    (``image_shape``, else None) or a sequence (T, d) (``sequence_shape``), and ``out_dim``
    targets; ``classes``: whether its points carry class ids (the targets are then one per
    class)."""

    in_dim: int
    image_shape: tuple[int, int, int] | None
    out_dim: int
    sequence_shape: tuple[int, int] | None = None
    classes: bool = False


@dataclass(frozen=True)
class Dataset:
    """x_train (N, d), y_train (N, k), x_eval (M, d), y_eval (M, k), and a held-out test set
    x_test (T, d), y_test (T, k) (T = 0 unless asked for; drawn after the others, so asking
    for it changes no other array). ``labels_*`` hold class ids for classification sets;
    ``eval_coords`` is γ for the circle; ``image_shape`` (C, H, W) for image sets, whose rows
    are the images flattened (d = C·H·W)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray
    labels_train: np.ndarray | None = None
    labels_eval: np.ndarray | None = None
    eval_coords: np.ndarray | None = field(default=None, repr=False)
    image_shape: tuple[int, int, int] | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    labels_test: np.ndarray | None = None
    sequence_shape: tuple[int, int] | None = None     # (T, d) for sequence sets

    def __post_init__(self):
        if self.x_test is None:  # no test set: empty arrays of the right widths
            object.__setattr__(self, "x_test", self.x_train[:0])
            object.__setattr__(self, "y_test", self.y_train[:0])

    def images(self, x: np.ndarray) -> np.ndarray:
        """Rows (n, C·H·W) as images (n, C, H, W)."""
        if self.image_shape is None:
            raise SpecError(f"data set {self.name!r} holds vectors, not images: a cnn or "
                            f"resnet needs {', '.join(IMAGE_DATASETS)} (a file of (N, C, H, "
                            "W) arrays)")
        return x.reshape(len(x), *self.image_shape)

    def sequences(self, x: np.ndarray) -> np.ndarray:
        """Rows (n, T·d) as sequences (n, T, d)."""
        if self.sequence_shape is None:
            raise SpecError(f"data set {self.name!r} holds no sequences: a transformer needs "
                            f"{', '.join(SEQUENCE_DATASETS)} (a file of (N, T, d) arrays)")
        return x.reshape(len(x), *self.sequence_shape)

    @property
    def in_dim(self) -> int:
        return self.x_train.shape[1]

    @property
    def shape(self) -> DataShape:
        return DataShape(self.in_dim, self.image_shape, self.out_dim, self.sequence_shape,
                         self.labels_train is not None)

    @property
    def out_dim(self) -> int:
        return self.y_train.shape[1]


def _circle(n_train: int, n_eval: int, seed: int, train_inputs: str = "gaussian",
            n_test: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)

    def draw(n):  # the training distribution (the test set is drawn from it too)
        if train_inputs == "circle":  # Jacot Fig. 2: the training points lie on the circle
            angle = rng.uniform(0, 2 * np.pi, n)
            return np.stack([np.cos(angle), np.sin(angle)], 1)
        return rng.standard_normal((n, 2))

    x = draw(n_train)
    gamma = np.linspace(0.0, 2 * np.pi, n_eval, endpoint=False)
    xe = np.stack([np.cos(gamma), np.sin(gamma)], 1)
    xt = draw(n_test)
    target = lambda a: (a[:, 0] * a[:, 1])[:, None]  # noqa: E731
    return Dataset("circle", x, target(x), xe, target(xe), eval_coords=gamma, x_test=xt,
                   y_test=target(xt))


def _sphere(n_train: int, n_eval: int, seed: int, dim: int, teacher: str,
            n_test: int = 0) -> Dataset:
    if teacher not in TEACHERS:
        raise SpecError(f"unknown teacher {teacher!r}; choose one of: {', '.join(TEACHERS)}")
    rng = np.random.default_rng(seed)

    def draw(n):
        x = rng.standard_normal((n, dim))
        return x * (np.sqrt(dim) / np.linalg.norm(x, axis=1, keepdims=True))

    x = draw(n_train + n_eval)
    if teacher == "quadratic":
        f = lambda a: a[:, 0] * a[:, 1 % dim]  # noqa: E731
    elif teacher == "linear":
        w = rng.standard_normal(dim) / np.sqrt(dim)
        f = lambda a: a @ w  # noqa: E731
    else:
        w1 = rng.standard_normal((dim, 64)) / np.sqrt(dim)
        w2 = rng.standard_normal(64) / np.sqrt(64)
        f = lambda a: np.maximum(a @ w1, 0.0) @ w2 * np.sqrt(2.0)  # noqa: E731
    xt = draw(n_test)                                      # after the teacher's draws
    y = f(x)[:, None]
    return Dataset("sphere", x[:n_train], y[:n_train], x[n_train:], y[n_train:], x_test=xt,
                   y_test=f(xt)[:, None])


def _digits(n_train: int, n_eval: int, seed: int, n_test: int = 0) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, labels = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    if n_train + n_eval + n_test > len(x):
        raise SpecError(_too_many_digits(n_train + n_eval + n_test))
    order = np.random.default_rng(seed).permutation(len(x))
    tr, ev = order[:n_train], order[n_train:n_train + n_eval]
    te = order[n_train + n_eval:n_train + n_eval + n_test]
    mean, std = x[tr].mean(0), x[tr].std(0)
    x = (x - mean) / np.where(std > 0, std, 1.0)          # constant pixels stay 0
    onehot = np.eye(10)[labels] - 0.1                      # zero-mean regression targets
    return Dataset("digits", x[tr], onehot[tr], x[ev], onehot[ev], labels[tr], labels[ev],
                   image_shape=(1, 8, 8), x_test=x[te], y_test=onehot[te],
                   labels_test=labels[te])


def _too_many_digits(wanted: int) -> str:
    return (f"digits has {DIGITS_IMAGES} images but n_train + n_eval + n_test = {wanted}; "
            "ask for fewer")


def _images(n_train: int, n_eval: int, seed: int, side: int, n_test: int = 0) -> Dataset:
    """Synthetic one-channel side×side images: white noise smoothed by a 3×3 box (periodic)
    and scaled to unit variance per pixel, with a translation-invariant teacher, the mean
    product of horizontally neighbouring pixels f*(x) = (1/P) Σ_p x(p) x(p + (0, 1))."""
    rng = np.random.default_rng(seed)

    def draw(n):
        noise = rng.standard_normal((n, side, side))
        x = sum(np.roll(noise, (di, dj), axis=(1, 2)) for di in (-1, 0, 1) for dj in (-1, 0, 1))
        x /= 3.0                                           # 9 independent terms: variance 1
        return x.reshape(n, side * side), (x * np.roll(x, -1, axis=2)).mean((1, 2))[:, None]

    (x, y), (xt, yt) = draw(n_train + n_eval), draw(n_test)
    return Dataset("images", x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                   image_shape=(1, side, side), x_test=xt, y_test=yt)


def _tokens(n_train: int, n_eval: int, seed: int, tokens: int, dim: int,
            n_test: int = 0) -> Dataset:
    """Sequences of T = ``tokens`` tokens of d = ``dim`` features: d − 1 content features
    N(0, 1) and a marker feature, √d on one token at a uniformly random position and 0
    elsewhere; the target is a fixed random direction of the marked token's content,
    y = ⟨w, c_m⟩/√(d − 1). The position varies, so a network must find the token before it
    reads it: a mean over tokens sees c_m diluted T-fold among T − 1 distractors, attention
    can weigh it up (the marker raises its similarity with itself)."""
    if dim < 2:
        raise SpecError(f"dataset 'tokens' needs dim >= 2 (content and a marker); got {dim}")
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(dim - 1)

    def draw(n):
        x = np.zeros((n, tokens, dim))
        x[..., :-1] = rng.standard_normal((n, tokens, dim - 1))
        marked = rng.integers(0, tokens, n)
        x[np.arange(n), marked, -1] = np.sqrt(dim)
        y = x[np.arange(n), marked, :-1] @ w / np.sqrt(dim - 1)
        return x.reshape(n, tokens * dim), y[:, None]

    (xr, yr), (xe, ye), (xt, yt) = draw(n_train), draw(n_eval), draw(n_test)
    return Dataset("tokens", xr, yr, xe, ye, x_test=xt, y_test=yt,
                   sequence_shape=(tokens, dim))


def _load_file(path: str | None, n_train: int, n_eval: int, seed: int,
               n_test: int = 0) -> Dataset:
    arrays = class_targets(path, read_arrays(path))
    name = Path(path).name
    shape = tuple(np.shape(arrays["X"])[1:])
    image_shape = shape if len(shape) == 3 else None     # (N, C, H, W): images
    sequence_shape = shape if len(shape) == 2 else None  # (N, T, d): sequences
    x, y = checked(path, arrays["X"], arrays["y"], "X/y")
    labels = arrays.get("labels")                        # class ids, where the file has them
    given = [part for part in ("eval", "test") if f"X_{part}" in arrays]
    drawn = {"eval": n_eval, "test": n_test}
    need = n_train + sum(n for part, n in drawn.items() if part not in given)
    if need > len(x):
        raise DataFileError(f"{path}: {len(x)} points in X, fewer than the {need} that "
                            f"n_train, n_eval and n_test draw from it")
    # files with their own eval set keep their row order; the others are shuffled
    order = np.arange(len(x)) if "eval" in given else \
        np.random.default_rng(seed).permutation(len(x))

    def rows(idx):
        return x[idx], y[idx], None if labels is None else labels[idx]

    parts, start = {"train": rows(order[:n_train])}, n_train
    for part, n in drawn.items():
        if part in given:
            xs, ys = given_split(path, arrays, part, x, y)
            ids = arrays.get(f"labels_{part}")
            parts[part] = xs[:n], ys[:n], None if ids is None else ids[:n]
        else:
            parts[part] = rows(order[start:start + n])
            start += n
    (xr, yr, lr), (xe, ye, le), (xt, yt, lt) = parts["train"], parts["eval"], parts["test"]
    return Dataset(name, xr, yr, xe, ye, lr, le, image_shape=image_shape, x_test=xt,
                   y_test=yt, labels_test=lt, sequence_shape=sequence_shape)


def make_dataset(name: str, *, n_train: int, n_eval: int, seed: int = 0, dim: int = 8,
                 teacher: str = "quadratic", path: str | None = None,
                 train_inputs: str = "gaussian", n_test: int = 0,
                 tokens: int = 8) -> Dataset:
    """Build a data set by name; same arguments → identical arrays (and the train and eval
    arrays do not depend on ``n_test``)."""
    if n_train < 1 or n_eval < 1 or n_test < 0:
        raise SpecError(f"n_train and n_eval must be >= 1 and n_test >= 0; got {n_train}, "
                        f"{n_eval}, {n_test}")
    if name == "circle":
        return _circle(n_train, n_eval, seed, train_inputs, n_test)
    if name == "sphere":
        return _sphere(n_train, n_eval, seed, dim, teacher, n_test)
    if name == "digits":
        return _digits(n_train, n_eval, seed, n_test)
    if name == "images":
        return _images(n_train, n_eval, seed, dim, n_test)
    if name == "tokens":
        return _tokens(n_train, n_eval, seed, tokens, dim, n_test)
    if name == "file":
        return _load_file(path, n_train, n_eval, seed, n_test)
    raise SpecError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def data_shape(name: str, *, n_train: int, n_eval: int, seed: int = 0, dim: int = 8,
               teacher: str = "quadratic", path: str | None = None,
               train_inputs: str = "gaussian", n_test: int = 0, tokens: int = 8) -> DataShape:
    """The shape of a data set's points (``make_dataset``'s arguments) without drawing it:
    from the name for the built-in sets; a file is read and checked whole (once: a missing or
    malformed one fails here, before anything runs)."""
    if name == "digits" and n_train + n_eval + n_test > DIGITS_IMAGES:
        raise SpecError(_too_many_digits(n_train + n_eval + n_test))
    builtin = {"circle": DataShape(2, None, 1), "sphere": DataShape(dim, None, 1),
               "digits": DataShape(64, (1, 8, 8), 10, classes=True),
               "images": DataShape(dim * dim, (1, dim, dim), 1),
               "tokens": DataShape(tokens * dim, None, 1, (tokens, dim))}
    if name in builtin:
        return builtin[name]
    return make_dataset(name, n_train=n_train, n_eval=n_eval, seed=seed, dim=dim,
                        teacher=teacher, path=path, train_inputs=train_inputs,
                        n_test=n_test, tokens=tokens).shape
