"""Frozen, validated trial specs. Each trial has a stable id: a hash of its canonical spec,
the key of resume and of every output row."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import re
from dataclasses import dataclass, fields
from typing import Any

from .architectures import REGISTRY
from .choices import (
    ATTENTION_SCALINGS,
    ATTENTIONS,
    BIAS_STD,
    CHECKPOINT_SPACINGS,
    DTYPES,
    KEEP_POLICIES,
    LEAKY_RELU_SLOPE,
    LOSSES,
    NTK_METHODS,
    OPTIMIZERS,
    TRAIN_INPUTS,
)
from .data import DATASETS, DIGITS_IMAGES, IMAGE_DATASETS, SEQUENCE_DATASETS, TEACHERS
from .errors import SpecError
from .hyper import (
    RULES,
    check_conv,
    depth_problem,
    is_custom_architecture,
    is_finite,
    is_int,
    problem,
)

__all__ = ["TrialSpec", "SpecError", "TRIAL_FIELDS", "suggest"]


@dataclass(frozen=True)
class TrialSpec:
    # data
    dataset: str = "circle"
    n_train: int = 64
    n_eval: int = 64                   # where Θ_t is measured against Θ_∞ and Θ_0
    n_test: int = 0                    # a held-out test set: the net vs kernel regression
    data_seed: int = 0
    dim: int = 8                       # sphere: input dim; images: side; tokens: features
    tokens: int = 8                    # tokens: the sequence length T
    teacher: str = "quadratic"         # sphere only
    data_path: str | None = None       # file only
    train_inputs: str = "gaussian"     # circle only: gaussian (N(0, I₂)) | circle (on it)
    # model (ntksweep.layers.PRESETS)
    architecture: str = "mlp"          # mlp | cnn | resnet | myrtle | transformer
    kernel_size: int = 3               # cnn, resnet: k×k convolutions
    padding: str = "same"              # cnn: same | valid
    readout: str = "gap"               # cnn: gap (global average pooling) | flatten
    heads: int = 4                     # transformer: attention heads
    attention: str = "softmax"         # transformer: softmax | identity | relu | abs
    attention_scaling: str = "linear"  # transformer: linear (a limit) | sqrt (finite only)
    query_key_std: float = 1.0         # transformer: σ_QK, the attention logits' scale
    patch: int = 2                     # transformer on images: p×p patches are its tokens
    width: int = 256
    depth: int = 3
    activation: str = "relu"
    weight_std: float = 1.0
    bias_std: float = BIAS_STD
    parametrization: str = "ntk"
    leaky_relu_slope: float = LEAKY_RELU_SLOPE   # leaky_relu only: max(x, 0) + a·min(x, 0)
    seed: int = 0
    ensemble: int = 1                  # S networks at init (steps: 0): seeds seed·S … seed·S+S−1
    # training
    lr: float = 1.0
    steps: int = 200
    optimizer: str = "gd"              # gd: full batch (Jacot's); sgd: minibatches; adam
    batch_size: int | None = None      # sgd (default 32), adam (default: full batch)
    loss: str = "mse"                  # mse: C = (1/N) Σ ‖f(x_i) − y_i‖²; cross_entropy
    checkpoints: int = 20              # number of checkpoints (step 0 and the last included)
    checkpoint_spacing: str = "log"    # log | linear
    checkpoint_steps: tuple[int, ...] | None = None   # explicit steps (overrides the above)
    divergence_factor: float = 1e6     # loss > factor × initial loss (or non-finite): diverged
    device: str = "auto"               # auto: cuda when this process sees a GPU
    dtype: str = "float32"
    # kernels
    ntk_method: str = "auto"
    memory_budget: int | None = None   # bytes per NTK tile
    keep_kernels: str = "none"         # none | first_last | all: keep Θ_t matrices as arrays
    keep_outputs: str = "none"         # none | first_last | all: keep f_t on the eval set
    ridge: float = 0.0                 # kernel regression: λ = ridge · tr K / N (0: interpolate)

    def __post_init__(self):
        if self.checkpoint_steps is not None and not isinstance(self.checkpoint_steps, tuple):
            object.__setattr__(self, "checkpoint_steps", tuple(self.checkpoint_steps))
        self.validate()

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict[str, Any]:
        # every field is a scalar or a tuple of ints: no deep copy (dataclasses.asdict) needed
        d = {name: getattr(self, name) for name in TRIAL_FIELDS}
        if d["checkpoint_steps"] is not None:
            d["checkpoint_steps"] = list(d["checkpoint_steps"])
        return d

    @functools.cached_property  # frozen: computed once (the driver asks per event)
    def trial_id(self) -> str:
        """12 hex chars of sha1 over the canonical JSON of every field (device excluded:
        the same trial on another device is the same measurement)."""
        d = self.to_dict()
        d.pop("device")
        for name, default in ADDED_LATER.items():  # ids of earlier specs stay what they were
            if d[name] == default:
                d.pop(name)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialSpec:
        unknown = [k for k in d if k not in TRIAL_FIELDS]
        if unknown:
            raise SpecError("; ".join(f"unknown field {k!r}{suggest(k, TRIAL_FIELDS)}"
                                      for k in unknown))
        return cls(**{k: _coerce(k, v) for k, v in d.items()})

    def data_args(self) -> dict[str, Any]:
        """``make_dataset``'s keyword arguments: everything the data set depends on."""
        return {"n_train": self.n_train, "n_eval": self.n_eval, "n_test": self.n_test,
                "seed": self.data_seed,
                "dim": self.dim, "teacher": self.teacher, "path": self.data_path,
                "train_inputs": self.train_inputs, "tokens": self.tokens}

    def kernel_args(self) -> dict[str, Any]:
        """``analytic_kernels``' architecture arguments: the limit this trial is compared with
        (the standard parametrization's NTK depends on the width; the NTK one's does not)."""
        return {"depth": self.depth, "activation": self.activation,
                "weight_std": self.weight_std, "bias_std": self.bias_std,
                "parametrization": self.parametrization,
                "width": self.width if self.parametrization == "standard" else None,
                "leaky_relu_slope": self.leaky_relu_slope, "architecture": self.architecture,
                "kernel_size": self.kernel_size, "padding": self.padding,
                "readout": self.readout, "options": self.network_options()}

    def network_options(self) -> tuple[tuple[str, Any], ...]:
        """The own fields (``architectures.REGISTRY``) of an architecture without a fused
        limit, as (name, value) pairs: a transformer's attention (the fused ones' conv
        fields are ``kernel_args``' own)."""
        known = REGISTRY.get(self.architecture)
        if known is None or known.fused:
            return ()
        return tuple((name, getattr(self, name)) for name in self.own_fields())

    def batch_rows(self, n: int) -> int:
        """Rows per optimisation step out of n training points: all of them for gd (and for
        adam without a ``batch_size``), else a minibatch of ``batch_size`` (sgd: 32 when
        unset)."""
        if self.optimizer == "gd" or (self.optimizer == "adam" and self.batch_size is None):
            return n
        return min(self.batch_size or 32, n)

    def own_fields(self) -> tuple[str, ...]:
        """Its architecture's own fields (``architectures.REGISTRY``): none for a user's."""
        known = REGISTRY.get(self.architecture)
        return () if known is None else known.fields

    def member(self, j: int) -> TrialSpec:
        """The plain trial whose network is this ensemble's member j (0 ≤ j < ensemble): the
        seed seed·S + j, so that the trials of seeds 0, 1, … hold disjoint members and an
        ensemble of one is the trial itself."""
        if self.ensemble == 1:
            return self
        return dataclasses.replace(self, seed=self.seed * self.ensemble + j, ensemble=1)

    def replace(self, **changes) -> TrialSpec:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``SpecError`` naming the first field that is wrong and what it must be."""
        for check in (self._check_network, self._check_schedule, self._check_data,
                      self._check_training, self._check_execution, self._check_architecture):
            check()

    def _need(self, ok: bool, field: str, msg: str) -> None:
        if not ok:
            raise SpecError(f"{field}: {msg} (got {getattr(self, field)!r})")

    def _check_network(self) -> None:
        """The network's own rules (shared with models and analytic_kernels) and sizes."""
        need = self._need
        for name in RULES:
            text = problem(name, getattr(self, name))
            need(text is None, name, text or "")
        text = depth_problem(self.parametrization, self.depth)
        need(text is None, "depth", text or "")
        for name, most in _MOST.items():
            v = getattr(self, name)
            need(is_int(v) and 1 <= v <= most, name, f"must be an integer in [1, {most:.0e}]")

    def _check_schedule(self) -> None:
        """Steps, ensembles, the ridge, the test set, seeds."""
        need = self._need
        need(is_int(self.steps) and 0 <= self.steps <= 10**9, "steps",
             "must be an integer in [0, 1e+09] (0: measured at initialisation only)")
        need(is_int(self.ensemble) and 1 <= self.ensemble <= 10**6, "ensemble",
             "must be an integer in [1, 1e+06]")
        need(self.ensemble * self.n_eval ** 2 * 8 <= _ENSEMBLE_BYTES, "ensemble",
             f"its {self.ensemble} kernels of {self.n_eval}² entries travel and are kept as "
             f"one trial's result ({self.ensemble * self.n_eval ** 2 * 8 / 2**30:.1f} GiB; at "
             "most 1 GiB): use a smaller ensemble over more seeds")
        need(self.ensemble == 1 or self.steps == 0, "ensemble",
             f"an ensemble's members are measured at initialisation only: set steps: 0 "
             f"(got steps: {self.steps}), or ensemble: 1 to train")
        need(is_finite(self.ridge) and self.ridge >= 0, "ridge", "must be a number >= 0")
        need(is_int(self.n_test) and 0 <= self.n_test <= _MOST["n_eval"], "n_test",
             "must be an integer in [0, 1e+07]")
        for name in ("data_seed", "seed"):
            v = getattr(self, name)
            need(is_int(v) and v >= 0, name, "must be an integer >= 0")

    def _check_data(self) -> None:
        """The data set, its teacher and how many points it has."""
        need = self._need
        need(self.dataset in DATASETS, "dataset", f"must be one of {', '.join(DATASETS)}")
        need(self.teacher in TEACHERS, "teacher", f"must be one of {', '.join(TEACHERS)}")
        drawn = self.n_train + self.n_eval + self.n_test
        need(self.dataset != "digits" or drawn <= DIGITS_IMAGES, "n_train",
             f"digits has {DIGITS_IMAGES} images but n_train + n_eval + n_test = {drawn}; "
             "ask for fewer")
        need(self.dataset != "file" or bool(self.data_path), "data_path",
             "dataset 'file' needs data_path")

    def _check_training(self) -> None:
        """The optimiser, loss, checkpoints and divergence."""
        need = self._need
        need(is_finite(self.lr) and self.lr > 0, "lr", "must be a number > 0")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        need(self.batch_size is None or (isinstance(self.batch_size, int) and self.batch_size >= 1),
             "batch_size", "must be an integer >= 1 or null")
        need(self.loss in LOSSES, "loss", f"must be one of {', '.join(LOSSES)}")
        need(self.loss != "cross_entropy" or self.dataset in ("digits", "file"), "loss",
             "cross_entropy needs class ids (dataset 'digits', or a file of labels)")
        need(self.checkpoint_spacing in CHECKPOINT_SPACINGS, "checkpoint_spacing",
             f"must be one of {', '.join(CHECKPOINT_SPACINGS)}")
        if self.checkpoint_steps is not None:
            need(all(isinstance(s, int) and 0 <= s <= self.steps for s in self.checkpoint_steps),
                 "checkpoint_steps", f"must be integers in [0, steps={self.steps}]")
        need(is_finite(self.divergence_factor) and self.divergence_factor > 1, "divergence_factor",
             "must be > 1")

    def _check_execution(self) -> None:
        """Device, precision, the NTK method and memory, what is kept."""
        need = self._need
        need(isinstance(self.device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device)
             is not None, "device", "must be 'auto', 'cpu' or 'cuda[:i]'")
        need(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")
        need(self.ntk_method in NTK_METHODS, "ntk_method",
             f"must be one of {', '.join(NTK_METHODS)}")
        need(self.memory_budget is None or (isinstance(self.memory_budget, int)
                                            and self.memory_budget > 0),
             "memory_budget", "must be a positive integer (bytes) or null")
        for name in ("keep_kernels", "keep_outputs"):
            need(getattr(self, name) in KEEP_POLICIES, name,
                 f"must be one of {', '.join(KEEP_POLICIES)}")
        need(self.train_inputs in TRAIN_INPUTS, "train_inputs",
             f"must be one of {', '.join(TRAIN_INPUTS)}")

    def _check_architecture(self) -> None:
        """The architecture's limit and what data it reads; attention's fields."""
        need = self._need
        try:
            check_conv(architecture=self.architecture, depth=self.depth,
                       kernel_size=self.kernel_size, padding=self.padding,
                       readout=self.readout, parametrization=self.parametrization)  # a limit
        except SpecError as e:
            raise SpecError(f"architecture {self.architecture!r}: {e}") from None
        reads = None if is_custom_architecture(self.architecture) else \
            REGISTRY[self.architecture].reads      # a user's network reads what data holds
        if reads == "sequences":
            need(self.dataset in SEQUENCE_DATASETS + IMAGE_DATASETS, "dataset",
                 f"a {self.architecture} reads sequences (tokens, a file's X as (N, T, d)) or "
                 "images as patches (digits, images, a file's X as (N, C, H, W))")
            need(is_int(self.patch) and self.patch >= 1, "patch", "must be an integer >= 1")
        elif reads == "images":
            need(self.dataset in IMAGE_DATASETS, "dataset",
                 f"a {self.architecture} needs image data: {', '.join(IMAGE_DATASETS)}")
        if "heads" in self.own_fields():
            need(is_int(self.heads) and 1 <= self.heads <= self.width, "heads",
                 f"must be an integer in [1, width={self.width}]")
            need(self.attention in ATTENTIONS, "attention",
                 f"must be one of {', '.join(ATTENTIONS)}")
            need(self.attention_scaling in ATTENTION_SCALINGS, "attention_scaling",
                 f"must be one of {', '.join(ATTENTION_SCALINGS)}")
            need(is_finite(self.query_key_std) and self.query_key_std >= 0, "query_key_std",
                 "must be a number >= 0")
        need(is_int(self.tokens) and 1 <= self.tokens <= 10**5, "tokens",
             "must be an integer in [1, 1e+05]")


TRIAL_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in fields(TrialSpec)}

# fields added after the first release, with their defaults: a trial at the default hashes
# as it did before the field existed, so resume and stored ids keep working
ADDED_LATER = {name: TRIAL_FIELDS[name].default
               for name in ("leaky_relu_slope", "architecture", "kernel_size", "padding",
                            "readout", "n_test", "ridge", "tokens", "heads", "attention",
                            "attention_scaling", "query_key_std", "patch", "ensemble")}

# an ensemble trial's kernels (S × M² float64) travel to the driver as one result
_ENSEMBLE_BYTES = 1 << 30

# upper bounds past which a value is a typo, not a trial (memory is estimated separately)
_MOST = {"n_train": 10**7, "n_eval": 10**7, "checkpoints": 10**5, "dim": 10**7}


def suggest(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the nearest valid name (typos and prefixes), or ''."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    close = close or [c for c in choices if len(name) >= 3 and c.startswith(name)][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _whole(value: str | float) -> int | float:
    """An integer written as one ('1000000000') or as a whole float ('1e9', 1.0e9: YAML reads
    the first as a string); a fraction stays a float, for the field's rule to refuse."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            value = float(value)
    return int(value) if value.is_integer() else value


def _coerce(name: str, value):
    """YAML and ``--set`` give strings and ints where floats are meant: coerce by the
    field's declared type, and reject what cannot be coerced with the field's name."""
    declared = str(TRIAL_FIELDS[name].type)
    try:
        if declared.startswith("float") and isinstance(value, (int, str)) \
                and not isinstance(value, bool):
            return float(value)
        if declared.startswith("int") and isinstance(value, (str, float)):
            return _whole(value)
        if name == "checkpoint_steps" and value is not None:
            return tuple(int(s) for s in value)
    except (TypeError, ValueError):
        raise SpecError(f"{name}: cannot read {value!r} as {declared}") from None
    return value
