"""Training: full-batch gradient descent (Jacot's), minibatch SGD or Adam, each layer at the
learning rate its parametrization gives it (``parametrizations.lr_factors``), with a
checkpoint schedule and divergence detection. Time t = lr × step (Jacot's continuous time)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .. import choices
from ..models.layers import affine_layers
from ..parametrizations import ROLES, lr_factors
from ..records import Status
from ..trial_spec import TrialSpec

__all__ = ["checkpoint_schedule", "loss_value", "train", "make_optimizer"]


def checkpoint_schedule(spec: TrialSpec) -> list[int]:
    """Sorted unique steps; always step 0 and the last step (one and the same at steps 0)."""
    if spec.steps == 0:
        return [0]
    if spec.checkpoint_steps is not None:
        steps = set(spec.checkpoint_steps)
    elif spec.checkpoint_spacing == "linear":
        steps = set(np.linspace(0, spec.steps, spec.checkpoints).round().astype(int).tolist())
    else:  # log: 0, then geometric from 1 to steps
        steps = {0, *np.unique(np.geomspace(1, spec.steps, max(spec.checkpoints - 1, 1))
                                .round().astype(int)).tolist()}
    return sorted(steps | {0, spec.steps})


def make_optimizer(model: nn.Module, spec: TrialSpec) -> torch.optim.Optimizer:
    """SGD (gd, sgd) or Adam over parameter groups at lr · r, r each layer's learning-rate
    factor in the trial's parametrization for this optimizer (1 outside Dense/Conv layers)."""
    groups: dict[float, list[nn.Parameter]] = {}
    seen = set()
    for module in affine_layers(model):
        rates = (module.weight_lr, module.bias_lr) \
            if spec.optimizer != "adam" or module.role not in ROLES else \
            lr_factors(spec.parametrization, "adam", module.role, spec.width)
        for p, r in zip((module.weight, module.bias), rates):
            if p is None:                                 # a projection without a bias
                continue
            groups.setdefault(r, []).append(p)
            seen.add(id(p))
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        groups.setdefault(1.0, []).extend(rest)
    params = [{"params": ps, "lr": spec.lr * r} for r, ps in sorted(groups.items())]
    return _OPTIMIZERS[spec.optimizer](params)


# gd and sgd differ in TrialSpec.batch_rows only; the learning-rate factors come from the
# parametrization
_OPTIMIZERS = {"gd": torch.optim.SGD, "sgd": torch.optim.SGD, "adam": torch.optim.Adam}
choices.check_implemented("optimizers", choices.OPTIMIZERS, _OPTIMIZERS)


def loss_value(spec: TrialSpec, out: torch.Tensor, y: torch.Tensor,
               labels: torch.Tensor | None) -> torch.Tensor:
    """MSE C(f) = (1/N) Σ_i ‖f(x_i) − y_i‖², or mean cross-entropy on class labels."""
    if spec.loss == "cross_entropy":
        return nn.functional.cross_entropy(out, labels)
    return ((out - y) ** 2).sum(1).mean()


def train(
    model: nn.Module,
    spec: TrialSpec,
    x: torch.Tensor,
    y: torch.Tensor,
    labels: torch.Tensor | None,
    on_checkpoint: Callable[[int], None],
) -> Status:
    """Run ``spec.steps`` optimisation steps, calling ``on_checkpoint(step)`` at every
    scheduled step (before that step's update; the last one after the final update).

    Returns 'completed', or 'diverged' when the loss becomes non-finite or exceeds
    ``divergence_factor`` × its initial value (a checkpoint is then recorded at that step).
    """
    checkpoints = set(checkpoint_schedule(spec))
    opt = make_optimizer(model, spec)
    gen = torch.Generator().manual_seed(spec.seed)
    n = x.shape[0]
    batch = spec.batch_rows(n)
    first_loss = None
    model.train()
    for step in range(spec.steps + 1):
        if step in checkpoints:
            on_checkpoint(step)
        if step == spec.steps:
            return Status.COMPLETED
        idx = None if batch == n else torch.randperm(n, generator=gen)[:batch].to(x.device)
        xb, yb = (x, y) if idx is None else (x[idx], y[idx])
        lb = labels if idx is None or labels is None else labels[idx]
        loss = loss_value(spec, model(xb), yb, lb)
        value = loss.item()
        first_loss = value if first_loss is None else first_loss
        if not math.isfinite(value) or value > spec.divergence_factor * max(first_loss, 1e-12):
            if step not in checkpoints:
                on_checkpoint(step)
            return Status.DIVERGED
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return Status.COMPLETED
