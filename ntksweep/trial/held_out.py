"""A trial's held-out test set: the trained net's loss and accuracy there, beside what the
kernels predict — the Θ_∞ linear model after the same GD steps, and kernel regression
(``kernels.regression``) with Θ_∞, the NNGP Σ, Θ_0 and Θ_T.

Θ_∞ and Σ predict the mean over the initial GP (f_0 = 0); Θ_0 starts from this net's f_0
(the linearised net trained to convergence); Θ_T, the "after kernel", is measured at the
last checkpoint only. With k > 1 outputs the measured kernels are the full (·, ·, k, k)
ones, whose output pairs couple at finite width: the regression of the linearised network
itself, not of its per-logit mean kernel. The fixed kernels' solves are done once, at
step 0. Kernel losses are the MSE on y; accuracies need class labels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..data import Dataset
from ..kernels import AnalyticKernels
from ..kernels.metrics import KernelDynamics
from ..kernels.regression import SingularKernelError, regression_weights
from ..parametrizations import has_nngp_limit
from ..records import TEST_COLUMNS, Record
from ..trial_spec import TrialSpec
from .builders import kernel_flow, limit_key

__all__ = ["HeldOut", "HeldOutLimits", "NetKernel", "TEST_COLUMNS"]

_NAMES = {"inf": "Θ_∞", "nngp": "the NNGP Σ", "init": "Θ_0", "t": "Θ_t"}


@dataclass(frozen=True)
class NetKernel:
    """How the held-out set reads the net's kernel Θ_η — the one its linearised network
    trains with (per logit for one output, full (n1, n2, k, k) for k): ``kernel(x)`` on x
    × x, and ``times(x1, x2, α)`` = Θ(x1, x2) α (n1, k) for α (n2, k), without forming
    Θ(x1, x2) (numpy in, numpy out)."""

    kernel: Callable[[torch.Tensor], np.ndarray]
    times: Callable[[torch.Tensor, torch.Tensor, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class HeldOutLimits:
    """The trial's limit kernels the held-out set needs: Θ_∞ and Σ on the training points
    (N, N) each, both between the test and the training points (``test``, (T, N)), and Θ_∞'s
    eigendecomposition on the training points (a callable: computed once, shared with the
    trial's linear models)."""

    ntk_train: np.ndarray
    nngp_train: np.ndarray
    test: AnalyticKernels
    ntk_train_eig: Callable[[], tuple[np.ndarray, np.ndarray]]


class HeldOut:
    """The test-set columns of one trial's checkpoints. x_test (T, …) and x_train (N, …) are
    the inputs as the net reads them; ``limits`` the limit kernels (``HeldOutLimits``; None
    for a network without a limit: only the net's own kernels' columns are filled);
    ``net`` reads the net's kernel (``NetKernel``). The limits' regressions do not depend on
    the net: ``memo(key, make)`` (a worker's cache) keeps them per data, limit and ridge, so
    each is solved once per worker."""

    def __init__(self, spec: TrialSpec, data: Dataset, *, x_test: torch.Tensor,
                 x_train: torch.Tensor, limits: HeldOutLimits | None, net: NetKernel,
                 memo: Callable[[tuple, Callable], Record] | None = None):
        self.spec, self.data, self.x_te, self.x_tr = spec, data, x_test, x_train
        self.limits, self.net = limits, net
        self.memo = memo or (lambda _key, make: make())
        self.limit_key = (*limit_key(spec), spec.ridge)
        self.baselines: Record = {}
        self.linear: KernelDynamics | None = None

    def record(self, step: int, f_te: np.ndarray, loss: float,
               init: dict[str, np.ndarray]) -> Record:
        """The checkpoint's test columns from the net's test outputs f_te (T, k) and loss;
        ``init``: Θ_0 on the training points ('theta0_tr', as ``ntk`` measures it), its
        eigendecomposition ('eig', a callable: shared with the trial) and f_0 there
        ('f_tr')."""
        rec = {"test_loss": loss, "test_acc": self._accuracy(f_te)}
        if step == 0:
            self._fixed_baselines(f_te, init)
        rec.update(self.baselines)
        if self.linear is not None:
            rec.update(self._scores("gd_inf", self.linear.gd(self.spec.lr, step)))
        if step == self.spec.steps:  # the "after kernel" Θ_T, from a zero start
            rec.update(self._regression("t", self._measured, self.net.kernel(self.x_tr),
                                        None, None))
        return {c: rec.get(c, float("nan")) for c in TEST_COLUMNS}

    def _fixed_baselines(self, f0_te: np.ndarray, init: dict[str, np.ndarray]) -> None:
        fixed = {"init": (self._measured, init["theta0_tr"], f0_te, init["f_tr"],
                          init["eig"])}
        if self.limits is not None:
            lim, ntk_tr = self.limits.test, self.limits.ntk_train
            fixed["inf"] = (lim.ntk, ntk_tr, None, None, self.limits.ntk_train_eig)
            if has_nngp_limit(self.spec.parametrization):   # else Σ = σ_b²: nothing to regress
                fixed["nngp"] = (lim.nngp, self.limits.nngp_train, None, None)
        for name, args in fixed.items():
            solve = functools.partial(self._regression, name, *args)
            self.baselines.update(solve() if name == "init" else
                                  self.memo(("kr", name, *self.limit_key), solve))
        if kernel_flow(self.spec) and self.limits is not None:
            self.linear = KernelDynamics(lim.ntk, ntk_tr, f0_te, init["f_tr"],
                                         self.data.y_train, eig=self.limits.ntk_train_eig())

    def _measured(self, alpha: np.ndarray) -> np.ndarray:
        """Θ_η(x_te, X) α (T, k) of the net as it is now."""
        return self.net.times(self.x_te, self.x_tr, alpha)

    def _regression(self, name: str, k_te, k_tr, f0_te, f0_tr, eig=None) -> Record:
        """Kernel regression's test scores, f_0 + K(x_te, X) α: K(x_te, X) a limit's (T, N)
        matrix, or the net's product (``_measured``). A singular limit kernel (duplicate
        inputs) is the user's to fix (ridge) and fails the trial with that advice; a singular
        measured one (a net whose units died) is a measurement: NaN."""
        y = self.data.y_train
        try:
            alpha = regression_weights(k_tr, y, ridge=self.spec.ridge, f0_X=f0_tr,
                                       name=_NAMES[name], eig=None if eig is None else eig())
        except SingularKernelError:
            if name in ("inf", "nngp"):
                raise
            return self._scores(f"kr_{name}", np.full((len(self.x_te), y.shape[1]), np.nan))
        pred = k_te(alpha) if callable(k_te) else k_te @ alpha
        return self._scores(f"kr_{name}", pred if f0_te is None else f0_te + pred)

    def _scores(self, suffix: str, pred: np.ndarray) -> Record:
        """MSE on y and accuracy of test-set predictions (T, k)."""
        with np.errstate(over="ignore", invalid="ignore"):
            mse = float(((pred - self.data.y_test) ** 2).sum(1).mean())
        return {f"test_loss_{suffix}": mse, f"test_acc_{suffix}": self._accuracy(pred)}

    def _accuracy(self, f: np.ndarray) -> float:
        labels = self.data.labels_test
        if labels is None or not np.isfinite(f).all():
            return float("nan")
        return float((f.argmax(1) == labels).mean())
