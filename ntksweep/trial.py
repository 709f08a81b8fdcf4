"""One trial end to end: build data and network, train, and measure the NTK against Θ_∞ and
Θ_0 at every checkpoint. Pure: no Ray, MLflow or Parquet here — records are plain dicts
streamed to ``on_checkpoint`` as they are produced and returned in a ``TrialResult``."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import TrialSpec
from .data import Dataset, make_dataset
from .kernels import analytic_kernels, empirical_ntk
from .kernels.metrics import alignment, kernel_flow_prediction, rel_frobenius, top_eigenvalues
from .models import MLP
from .train import loss_value, train

__all__ = ["TrialResult", "TrialCache", "run_trial", "warm_up", "dataset_for", "resolve_device",
           "N_EIGS", "RECORD_COLUMNS"]

N_EIGS = 3
Record = dict[str, Any]
# the columns of every checkpoint record, in order (the store's schema is built from these)
RECORD_COLUMNS = ("step", "t", "train_loss", "eval_loss", "dist_inf", "dist_init", "align_inf",
                  "align_init", *[f"eig{i}{s}" for i in range(1, N_EIGS + 1) for s in ("", "_inf")],
                  "f_change", "gap_inf", "gap_lin", "dist_nngp", "train_seconds", "kernel_seconds")


@dataclass(frozen=True)
class TrialResult:
    """status: completed | diverged | failed. ``records``: one flat dict per checkpoint.
    ``kernels``: step → Θ_t on the eval set (M, M) float64, for the kept checkpoints;
    ``outputs``: step → f_t on the eval set (M, k) float64, likewise."""

    trial_id: str
    spec: TrialSpec
    status: str
    records: list[Record]
    kernels: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    outputs: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    error: str | None = None
    device: str = "cpu"
    wall_seconds: float = 0.0
    train_seconds: float = 0.0
    kernel_seconds: float = 0.0

    @property
    def final(self) -> Record:
        return self.records[-1] if self.records else {}


class TrialCache:
    """Per-process caches (a long-lived actor keeps one): data sets and analytic kernels,
    keyed by everything they depend on."""

    def __init__(self, max_items: int = 64):
        self._items: dict[tuple, Any] = {}
        self.max_items = max_items
        self.hits = 0

    def get(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key in self._items:
            self.hits += 1
            return self._items[key]
        if len(self._items) >= self.max_items:
            self._items.pop(next(iter(self._items)))
        value = self._items[key] = make()
        return value


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but this process sees no CUDA GPU")
    return device


def _data(spec: TrialSpec, cache: TrialCache) -> Dataset:
    key = ("data", *_data_key(spec))
    return cache.get(key, lambda: dataset_for(spec))


def _data_key(spec: TrialSpec) -> tuple:
    return (spec.dataset, spec.n_train, spec.n_eval, spec.data_seed, spec.dim, spec.teacher,
            spec.data_path, spec.train_inputs)


def dataset_for(spec: TrialSpec) -> Dataset:
    """The trial's data set, rebuilt deterministically from its spec."""
    return make_dataset(spec.dataset, n_train=spec.n_train, n_eval=spec.n_eval,
                        seed=spec.data_seed, dim=spec.dim, teacher=spec.teacher,
                        path=spec.data_path, train_inputs=spec.train_inputs)


def _limits(spec: TrialSpec, data: Dataset, cache: TrialCache):
    """Θ_∞ and Σ^(L) on [eval; train] (M+N, M+N), computed once per data × architecture."""
    key = ("limit", *_data_key(spec), spec.depth, spec.activation, spec.weight_std,
           spec.bias_std, spec.parametrization,
           spec.width if spec.parametrization == "standard" else None)
    x = np.concatenate([data.x_eval, data.x_train])
    return cache.get(key, lambda: analytic_kernels(
        x, depth=spec.depth, activation=spec.activation, weight_std=spec.weight_std,
        bias_std=spec.bias_std, parametrization=spec.parametrization, width=spec.width))


def run_trial(spec: TrialSpec, on_checkpoint: Callable[[Record], None] | None = None,
              cache: TrialCache | None = None) -> TrialResult:
    """Train one network and measure its NTK at every checkpoint (see DESIGN.md).

    A trial that raises returns status 'failed' with the traceback and every record made
    before the error; a diverging one returns 'diverged' with its records up to then.
    """
    cache = cache or TrialCache()
    started = time.perf_counter()
    records: list[Record] = []
    kernels: dict[int, np.ndarray] = {}
    outputs: dict[int, np.ndarray] = {}
    timers = {"train": 0.0, "kernel": 0.0}
    device = "cpu"
    try:
        device = resolve_device(spec.device)
        status = _run(spec, cache, device, records, (kernels, outputs), timers, on_checkpoint)
        error = None
    except Exception:  # a trial's failure is data, not a crash of the sweep
        status, error = "failed", traceback.format_exc()
    return TrialResult(spec.trial_id, spec, status, records, kernels, outputs, error, device,
                       time.perf_counter() - started, timers["train"], timers["kernel"])


def warm_up(device: str = "cpu") -> TrialResult:
    """Run a tiny trial on ``device`` so that a process's one-off costs are paid here and not
    inside its first real trial's wall time: torch.optim's first optimizer imports
    torch._dynamo (2.2–2.5 s on one core of this project's CPU VM, torch 2.13: a 2 s trial
    measured 4.3 s when it came first), and on a GPU the CUDA context starts (seconds)."""
    return run_trial(TrialSpec(n_train=2, n_eval=2, width=2, depth=2, steps=1, checkpoints=1,
                               device=device))


def _keep(policy: str, step: int, last: int) -> bool:
    return policy == "all" or (policy == "first_last" and step in (0, last))


def _run(spec, cache, device, records, kept, timers, on_checkpoint) -> str:
    kernels, kept_outputs = kept
    dtype = getattr(torch, spec.dtype)
    data = _data(spec, cache)
    limit = _limits(spec, data, cache)
    m = data.x_eval.shape[0]
    out_dim = 10 if spec.loss == "cross_entropy" else data.out_dim
    model = MLP(data.in_dim, spec.width, spec.depth, activation=spec.activation,
                weight_std=spec.weight_std, bias_std=spec.bias_std, out_dim=out_dim,
                parametrization=spec.parametrization, seed=spec.seed, dtype=dtype, device=device)
    as_t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    x_tr, y_tr, x_ev, y_ev = map(as_t, (data.x_train, data.y_train, data.x_eval, data.y_eval))
    lab_tr = lab_ev = None
    if data.labels_train is not None:
        lab_tr = torch.as_tensor(data.labels_train, device=device)
        lab_ev = torch.as_tensor(data.labels_eval, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    ntk_kw = dict(method=spec.ntk_method, memory_budget=spec.memory_budget, trace=True)

    theta_inf = limit.ntk[:m, :m]
    eig_inf = top_eigenvalues(theta_inf, N_EIGS)
    state: dict[str, Any] = {}
    mse = spec.loss == "mse"

    def outputs(x):
        with torch.no_grad():
            return model(x).double().cpu().numpy()

    def measure(step: int) -> None:
        sync()
        t0 = time.perf_counter()
        timers["train"] += t0 - state.get("resume", t0)
        f_ev, f_tr = outputs(x_ev), outputs(x_tr)
        with torch.no_grad():
            train_loss = loss_value(spec, torch.as_tensor(f_tr), y_tr.double().cpu(),
                                    None if lab_tr is None else lab_tr.cpu()).item()
            eval_loss = loss_value(spec, torch.as_tensor(f_ev), y_ev.double().cpu(),
                                   None if lab_ev is None else lab_ev.cpu()).item()
        if step == 0:  # Θ_0 on [eval; train]: the linearised network's kernel
            theta0_all = empirical_ntk(model, torch.cat([x_ev, x_tr]), **ntk_kw).double().cpu()
            state["theta0_all"] = theta0_all.numpy()
            state["f0_ev"], state["f0_tr"] = f_ev, f_tr
            theta = state["theta0_all"][:m, :m]
        else:
            theta = empirical_ntk(model, x_ev, **ntk_kw).double().cpu().numpy()
        theta0 = state["theta0_all"][:m, :m]
        finite = bool(np.isfinite(theta).all())
        t = spec.lr * step
        rec: Record = {"step": step, "t": t, "train_loss": train_loss, "eval_loss": eval_loss}
        rec["dist_inf"] = rel_frobenius(theta, theta_inf) if finite else float("nan")
        rec["dist_init"] = rel_frobenius(theta, theta0) if finite else float("nan")
        rec["align_inf"] = alignment(theta, theta_inf) if finite else float("nan")
        rec["align_init"] = alignment(theta, theta0) if finite else float("nan")
        eig = top_eigenvalues(theta, N_EIGS) if finite else np.full(N_EIGS, np.nan)
        for i in range(N_EIGS):
            rec[f"eig{i + 1}"] = float(eig[i]) if i < len(eig) else float("nan")
            rec[f"eig{i + 1}_inf"] = float(eig_inf[i]) if i < len(eig_inf) else float("nan")
        rec["f_change"] = float(np.sqrt(np.mean((f_ev - state["f0_ev"]) ** 2)))
        rec["gap_inf"] = rec["gap_lin"] = float("nan")
        if mse:
            pred_inf = kernel_flow_prediction(limit.ntk[:m, m:], limit.ntk[m:, m:], state["f0_ev"],
                                              state["f0_tr"], data.y_train, t)
            t0_all = state["theta0_all"]
            pred_lin = kernel_flow_prediction(t0_all[:m, m:], t0_all[m:, m:], state["f0_ev"],
                                              state["f0_tr"], data.y_train, t)
            rec["gap_inf"] = float(np.sqrt(np.mean((f_ev - pred_inf) ** 2)))
            rec["gap_lin"] = float(np.sqrt(np.mean((f_ev - pred_lin) ** 2)))
        rec["dist_nngp"] = float("nan")
        if step == 0 and out_dim >= 2:  # the k logits are k samples of the GP Σ^(L)
            sigma0 = f_ev @ f_ev.T / out_dim
            rec["dist_nngp"] = rel_frobenius(sigma0, limit.nngp[:m, :m])
        if _keep(spec.keep_kernels, step, spec.steps):
            kernels[step] = theta.copy()
        if _keep(spec.keep_outputs, step, spec.steps):
            kept_outputs[step] = f_ev.copy()
        sync()
        now = time.perf_counter()
        timers["kernel"] += now - t0
        rec["train_seconds"], rec["kernel_seconds"] = timers["train"], timers["kernel"]
        records.append(rec)
        if on_checkpoint is not None:
            on_checkpoint(rec)
        state["resume"] = time.perf_counter()

    return train(model, spec, x_tr, y_tr, lab_tr, measure)
