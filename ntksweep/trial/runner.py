"""One trial end to end: build data and network, train, and measure the NTK against Θ_∞ and
Θ_0 at every checkpoint. Pure: no Ray, MLflow or Parquet here — records are plain dicts
(``records.RECORD_COLUMNS``) streamed to ``on_checkpoint`` as they are produced and returned
in a ``records.TrialOutcome``."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..kernels import empirical_ntk
from ..kernels.metrics import (
    KernelDynamics,
    alignment,
    eigendecompose,
    flat_kernel,
    per_logit,
    rel_frobenius,
    top_eigenvalues,
)
from ..kernels.ntk_methods import ntk_times
from ..parametrizations import has_nngp_limit
from ..records import N_EIGS, Members, Record, Status, TrialOutcome
from ..trial_spec import TrialSpec
from .builders import (
    TrialCache,
    build_model,
    cached_data,
    cached_limits,
    cached_test_limits,
    inputs,
    kernel_flow,
    limit_key,
    resolve_device,
)
from .diagnostics import coordinate_check, forward_pass, kernel_velocity, target_alignment
from .ensemble import measure_members
from .held_out import TEST_COLUMNS, HeldOut, HeldOutLimits, NetKernel
from .train import loss_value, train

__all__ = ["run_trial", "warm_up", "TrialRun"]


def run_trial(spec: TrialSpec, on_checkpoint: Callable[[Record], None] | None = None,
              cache: TrialCache | None = None) -> TrialOutcome:
    """Train one network and measure its NTK at every checkpoint (docs/ARCHITECTURE.md,
    "A trial").

    A trial that raises returns status 'failed' with the traceback and every record made
    before the error; a diverging one returns 'diverged' with its records up to then.
    """
    cache = cache or TrialCache()
    started = time.perf_counter()
    run = None
    device, status, error = "cpu", Status.FAILED, None
    try:
        device = resolve_device(spec.device)
        run = TrialRun(spec, cache, device, on_checkpoint)
        status = Status(run.train())
        if spec.ensemble > 1:
            run.measure_members()
    except Exception:  # a trial's failure is data, not a crash of the sweep
        error = traceback.format_exc()
    records, kernels, outputs, timers = ([], {}, {}, {}) if run is None else \
        (run.records, run.kernels, run.outputs, run.timers)
    return TrialOutcome(spec.trial_id, status, records, kernels, outputs, error, device,
                        time.perf_counter() - started, timers.get("train", 0.0),
                        timers.get("kernel", 0.0), None if run is None else run.members)


def warm_up(device: str = "cpu") -> TrialOutcome:
    """Run a tiny trial on ``device`` so that a process's one-off costs (torch.optim's first
    optimizer imports torch._dynamo; on a GPU the CUDA context starts) are paid here and not
    inside its first real trial's wall time."""
    return run_trial(TrialSpec(n_train=2, n_eval=2, width=2, depth=2, steps=1, checkpoints=1,
                               device=device))


def _keep(policy: str, step: int, last: int) -> bool:
    return policy == "all" or (policy == "first_last" and step in (0, last))


@dataclass(frozen=True)
class _Tensors:
    """The data on the trial's device and dtype: x (N, d) / (M, d) / (T, d), y (N, k) /
    (M, k) / (T, k) for the train, eval and test sets; class labels (N,) / (M,) / (T,) or
    None."""

    x_tr: torch.Tensor
    y_tr: torch.Tensor
    x_ev: torch.Tensor
    y_ev: torch.Tensor
    x_te: torch.Tensor
    y_te: torch.Tensor
    lab_tr: torch.Tensor | None
    lab_ev: torch.Tensor | None
    lab_te: torch.Tensor | None


class TrialRun:
    """One trial: its network, data and limit (built by ``builders``), its training, and its
    checkpoint measurements (``measure``)."""

    def __init__(self, spec: TrialSpec, cache: TrialCache, device: str, on_checkpoint):
        self.spec, self.device, self.on_checkpoint = spec, device, on_checkpoint
        self.cache = cache
        self.data = data = cached_data(spec, cache)
        self.limit = cached_limits(spec, data, cache, device)
        self.m = data.x_eval.shape[0]
        self.out_dim = data.out_dim
        self.model = build_model(spec, data, self.out_dim, getattr(torch, spec.dtype), device)
        self.t = self._tensors()
        self.limit_key = limit_key(spec)
        self.held_out = self._held_out() if spec.n_test else None
        # no limit (attention with 1/√d scaling): the columns against it are NaN
        self.theta_inf = None if self.limit is None else self.limit.ntk[:self.m, :self.m]
        self.eig_inf = np.full(N_EIGS, np.nan) if self.limit is None \
            else top_eigenvalues(self.theta_inf, N_EIGS)
        self.records: list[Record] = []
        self.kernels: dict[int, np.ndarray] = {}
        self.outputs: dict[int, np.ndarray] = {}
        self.timers = {"train": 0.0, "kernel": 0.0}
        self._resume: float | None = None
        self.init: dict[str, np.ndarray] = {}   # Θ_0 (eval × eval; [eval; train] × train), f_0
        self.linear: dict[str, KernelDynamics] = {}   # the linear models, from step 0 on
        self.eig_lin: tuple[np.ndarray, np.ndarray] | None = None   # of Θ_0(X, X)
        self.previous: tuple[float, np.ndarray] | None = None   # (t, Θ_t) last checkpoint
        self.z_init: list = []        # every layer's pre-activations on eval at step 0
        self.members: Members | None = None   # an ensemble's (``measure_members``)

    def _tensors(self) -> _Tensors:
        """The data on the trial's device and dtype, inputs shaped as the net reads them."""
        spec, data, device = self.spec, self.data, self.device
        dtype = getattr(torch, spec.dtype)
        as_t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        shaped = lambda a: as_t(inputs(spec, data, a))  # noqa: E731
        labels = lambda a: None if a is None else torch.as_tensor(a, device=device)  # noqa: E731
        return _Tensors(shaped(data.x_train), as_t(data.y_train), shaped(data.x_eval),
                        as_t(data.y_eval), shaped(data.x_test), as_t(data.y_test),
                        labels(data.labels_train), labels(data.labels_eval),
                        labels(data.labels_test))

    def _held_out(self) -> HeldOut:
        m = self.m
        limits = None if self.limit is None else HeldOutLimits(
            ntk_train=self.limit.ntk[m:, m:], nngp_train=self.limit.nngp[m:, m:],
            test=cached_test_limits(self.spec, self.data, self.cache, self.device),
            ntk_train_eig=self._inf_eig)
        return HeldOut(self.spec, self.data, x_test=self.t.x_te, x_train=self.t.x_tr,
                       limits=limits, net=NetKernel(self._ntk_lin, self._ntk_times),
                       memo=self.cache.get)

    def train(self) -> str:
        t = self.t
        return train(self.model, self.spec, t.x_tr, t.y_tr, t.lab_tr, self.measure)

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _inf_eig(self) -> tuple[np.ndarray, np.ndarray]:
        """Θ_∞ on the training points, eigendecomposed once per worker and (data, limit):
        the linear models on the eval and test sets and Θ_∞'s regression share it."""
        m = self.m
        return self.cache.get(("eig_inf", *self.limit_key),
                              lambda: eigendecompose(self.limit.ntk[m:, m:]))

    def _outputs(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.model(x).double().cpu().numpy()

    def _loss(self, f: np.ndarray, y: torch.Tensor, labels: torch.Tensor | None) -> float:
        with torch.no_grad():
            return loss_value(self.spec, torch.as_tensor(f), y.double().cpu(),
                              None if labels is None else labels.cpu()).item()

    def _ntk(self, x: torch.Tensor, x2: torch.Tensor | None = None, *,
             trace: bool = True) -> np.ndarray:
        """The net's Θ_η (n1, n2) per logit, or with ``trace=False`` (n1, n2, k, k) (n1, n2
        for one output), float64 numpy."""
        return empirical_ntk(self.model, x, x2, method=self.spec.ntk_method,
                             memory_budget=self.spec.memory_budget,
                             trace=trace).double().cpu().numpy()

    def _ntk_lin(self, x: torch.Tensor, x2: torch.Tensor | None = None) -> np.ndarray:
        """The kernel the linearised network trains with: with k > 1 outputs the full
        (n1, n2, k, k) Θ_η, whose output pairs couple at finite width (its per-logit mean
        would be another linear model); (n1, n2) for one output."""
        return self._ntk(x, x2, trace=self.out_dim == 1)

    def _ntk_times(self, x: torch.Tensor, x2: torch.Tensor, alpha: np.ndarray) -> np.ndarray:
        """Θ_η(x, x2) α (n, k) for α (n2, k), float64 numpy, without forming Θ_η(x, x2)."""
        v = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
        return ntk_times(self.model, x, x2, v).double().cpu().numpy()

    def measure(self, step: int) -> None:
        """The checkpoint record at ``step`` (before that step's update)."""
        self._sync()
        t0 = time.perf_counter()
        self.timers["train"] += t0 - (self._resume or t0)
        t = self.t
        ev = forward_pass(self.model, t.x_ev)
        f_ev, f_tr = ev.output, self._outputs(t.x_tr)
        if step == 0:
            self._initial_kernels(f_ev, f_tr)
            theta = self.init["theta0"]
        else:
            theta = self._ntk(t.x_ev)
        rec: Record = {"step": step, "t": self.spec.lr * step,
                       "train_loss": self._loss(f_tr, t.y_tr, t.lab_tr),
                       "eval_loss": self._loss(f_ev, t.y_ev, t.lab_ev)}
        rec.update(self._kernel_metrics(theta))
        rec.update(self._function_metrics(step, f_ev, ev.features))
        rec.update(self._feature_metrics(step, theta, ev.preactivations))
        rec.update(self._test_metrics(step))
        if _keep(self.spec.keep_kernels, step, self.spec.steps):
            self.kernels[step] = theta.copy()
        if _keep(self.spec.keep_outputs, step, self.spec.steps):
            self.outputs[step] = f_ev.copy()
        self._sync()
        self.timers["kernel"] += time.perf_counter() - t0
        rec["train_seconds"], rec["kernel_seconds"] = self.timers["train"], self.timers["kernel"]
        self.records.append(rec)
        if self.on_checkpoint is not None:
            self.on_checkpoint(rec)
        self._resume = time.perf_counter()

    def measure_members(self) -> None:
        """The ensemble's members at initialisation (``ensemble``); member 0 is this
        trial's own network, measured at step 0."""
        t0 = time.perf_counter()
        self.members = measure_members(self.spec, self.data, self.out_dim, self.t.x_ev,
                                       self.init["theta0"], self.theta_inf)
        self._sync()
        self.timers["kernel"] += time.perf_counter() - t0

    def _initial_kernels(self, f_ev: np.ndarray, f_tr: np.ndarray) -> None:
        """Θ_0 on [eval; train] in one pass: per logit on the eval set (M, M) for the
        distances, and the linearised network's kernel (``_ntk_lin``) between [eval; train]
        and train (M + N, N[, k, k]) for its linear models, its test-set regression and its
        step-size sharpness."""
        m = self.m
        both = torch.cat([self.t.x_ev, self.t.x_tr])
        lin = self._ntk(both, trace=self.out_dim == 1)        # (M+N, M+N) or (…, …, k, k)
        theta0 = lin[:m, :m] if lin.ndim == 2 else per_logit(lin[:m, :m])
        self.init = {"theta0": np.ascontiguousarray(theta0), "f_ev": f_ev, "f_tr": f_tr,
                     "lin_xX": lin[:m, m:].copy(), "lin_XX": lin[m:, m:].copy()}

    def _lin_eig(self) -> tuple[np.ndarray, np.ndarray]:
        """Θ_0(X, X)'s eigendecomposition ((N k, N k) flat for k outputs), once per trial:
        the eval set's and the test set's linear models and the sharpness share it."""
        if self.eig_lin is None:
            xx = self.init["lin_XX"]
            self.eig_lin = eigendecompose(xx if xx.ndim == 2 else flat_kernel(xx))
        return self.eig_lin

    def _lr_sharpness(self) -> float:
        """η · 2λ_max(Θ_0(X, X))/N: the step size against the sharpness of the linearised
        net's MSE loss at init (its Gauss–Newton curvature is (2/N) Θ); gradient descent on it
        diverges above 2 (the edge of stability, Cohen et al. 2021). NaN where the net does not
        train by MSE gradient descent (Adam's steps, cross-entropy's curvature differ)."""
        if not kernel_flow(self.spec):
            return float("nan")
        return 2 * self.spec.lr * float(self._lin_eig()[0].max()) / self.data.x_train.shape[0]

    def _kernel_metrics(self, theta: np.ndarray) -> Record:
        """Θ_t (M, M) against Θ_∞ and Θ_0: distances, alignments, top eigenvalues."""
        theta0 = self.init["theta0"]
        nan = float("nan")
        finite = bool(np.isfinite(theta).all())
        limit = finite and self.theta_inf is not None
        rec = {"dist_inf": rel_frobenius(theta, self.theta_inf) if limit else nan,
               "dist_init": rel_frobenius(theta, theta0) if finite else nan,
               "align_inf": alignment(theta, self.theta_inf) if limit else nan,
               "align_init": alignment(theta, theta0) if finite else nan}
        eig = top_eigenvalues(theta, N_EIGS) if finite else np.full(N_EIGS, np.nan)
        for i in range(N_EIGS):
            rec[f"eig{i + 1}"] = float(eig[i]) if i < len(eig) else nan
            rec[f"eig{i + 1}_inf"] = float(self.eig_inf[i]) if i < len(self.eig_inf) else nan
        return rec

    def _function_metrics(self, step: int, f_ev: np.ndarray, features: np.ndarray
                          ) -> Record:
        """f_t on the eval set (M, k) against f_0 and against the linear models' predictions:
        ``gap_*`` after the same number of full-batch GD steps with Θ_∞ / Θ_0 (the discrete
        dynamics a linearised network follows exactly; for SGD, the full-batch GD its steps
        follow in expectation), ``gap_*_flow`` the continuous gradient flow at t = lr·step;
        ``dist_nngp`` from the readout's input ``features`` (M, F), where the
        parametrization has an NNGP limit (NaN otherwise: ``_nngp_distance``);
        ``lr_sharpness`` at step 0."""
        spec, nan = self.spec, float("nan")
        rec = {"f_change": float(np.sqrt(np.mean((f_ev - self.init["f_ev"]) ** 2))),
               "gap_inf": nan, "gap_lin": nan, "gap_inf_flow": nan, "gap_lin_flow": nan,
               "lr_sharpness": self._lr_sharpness() if step == 0 else nan}
        if kernel_flow(self.spec):
            for name, model in self._linear_models().items():
                for suffix, pred in (("", model.gd(spec.lr, step)),
                                     ("_flow", model.flow(spec.lr * step))):
                    with np.errstate(over="ignore", invalid="ignore"):  # a diverging model
                        gap = np.sqrt(np.mean((f_ev - pred) ** 2))
                    rec[f"gap_{name}{suffix}"] = float(gap)
        rec["dist_nngp"] = self._nngp_distance(features)
        return rec

    def _nngp_distance(self, features: np.ndarray) -> float:
        """‖Σ_n − Σ^(L)‖_F / ‖Σ^(L)‖_F on the eval set. NaN under μP and mean-field: their
        readout's prior variance vanishes with width, so Σ^(L) is the bias's σ_b² alone and
        the distance would measure only a readout term that vanishes like 1/n (or divide by
        zero at σ_b = 0)."""
        if self.limit is None or not has_nngp_limit(self.spec.parametrization):
            return float("nan")
        return rel_frobenius(self._nngp(features), self.limit.nngp[:self.m, :self.m])

    def _linear_models(self) -> dict[str, KernelDynamics]:
        """The linear models with Θ_∞ and Θ_0 from this trial's f_0, built once (their
        eigendecompositions are the costly part) and read at every checkpoint."""
        if not self.linear:
            m, init, y = self.m, self.init, self.data.y_train
            self.linear = {"lin": KernelDynamics(init["lin_xX"], init["lin_XX"], init["f_ev"],
                                                 init["f_tr"], y, eig=self._lin_eig())}
            if self.limit is not None:
                self.linear["inf"] = KernelDynamics(
                    self.limit.ntk[:m, m:], self.limit.ntk[m:, m:], init["f_ev"],
                    init["f_tr"], y, eig=self._inf_eig())
        return self.linear

    def _feature_metrics(self, step: int, theta: np.ndarray, z: list) -> Record:
        """Kernel velocity since the last checkpoint, kernel-target alignment, and the
        coordinate check of the eval set's pre-activations z against step 0
        (``diagnostics``)."""
        t = self.spec.lr * step
        if step == 0:
            self.z_init = z
        finite = bool(np.isfinite(theta).all())
        rec = {"kernel_velocity": float("nan"),
               "target_align": target_alignment(theta, self.data.y_eval) if finite
               else float("nan"), **coordinate_check(z, self.z_init)}
        if self.previous is not None and finite and t > self.previous[0]:
            rec["kernel_velocity"] = kernel_velocity(theta, self.previous[1],
                                                     t - self.previous[0])
        self.previous = (t, theta)
        return rec

    def _test_metrics(self, step: int) -> Record:
        """The held-out test set's columns (``held_out``; NaN without one)."""
        if self.held_out is None:
            return {c: float("nan") for c in TEST_COLUMNS}
        t = self.t
        f_te = self._outputs(t.x_te)
        init = {"theta0_tr": self.init["lin_XX"], "f_tr": self.init["f_tr"],
                "eig": self._lin_eig}
        return self.held_out.record(step, f_te, self._loss(f_te, t.y_te, t.lab_te), init)

    def _nngp(self, a: np.ndarray) -> np.ndarray:
        """The empirical NNGP on the eval set (M, M): the covariance of an output given the
        features A (M, F) the readout layer sees, v_W A Aᵀ + v_b with v the prior variances
        of one readout weight and bias ((σ_w²/F, σ_b²) in the NTK parametrization) — the
        same for every output, and Σ^(L)'s finite-width estimate."""
        v_w, v_b = self.model.readout.prior
        return v_w * (a @ a.T) + v_b
