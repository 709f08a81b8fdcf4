"""A user's module as the empirical NTK reads it: f(x) → a (N, k) tensor. Models take
constant keyword arguments (``attention_mask=None``, ``return_dict=False``) and return dicts,
tuples or output objects (``out.logits``); the adapter calls the model with the arguments
and picks the tensor, so every NTK method, tile and executor sees a plain x ↦ f(x)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from ..errors import UserError

__all__ = ["Adapted", "adapt"]

Selector = str | int | Callable[[Any], Tensor] | None


def _pick(out: Any, output: Selector) -> Tensor:
    if callable(output):
        return output(out)
    if isinstance(out, Mapping):
        return out[output]
    if isinstance(output, str):
        return getattr(out, output)
    return out[output]


class Adapted(nn.Module):
    """f(x) = output(model(x, **model_kwargs)); the model's parameters are this module's."""

    def __init__(self, model: nn.Module, model_kwargs: dict | None, output: Selector):
        super().__init__()
        self.model = model
        self.model_kwargs = dict(model_kwargs or {})
        self.output = output

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x, **self.model_kwargs)
        return out if self.output is None else _pick(out, self.output)


def _describe(out: Any) -> str:
    if isinstance(out, Mapping):
        return f"a {type(out).__name__} with keys {list(out)}"
    return f"a {type(out).__name__}"


def adapt(model: nn.Module, model_kwargs: dict | None, output: Selector,
          probe: Tensor) -> tuple[nn.Module, Tensor]:
    """(``model`` itself when it maps x to a tensor with no arguments, else the ``Adapted``
    module; its output on one example ``probe`` (1, …)), checked, with one line saying what
    to pass."""
    wrapped = model if model_kwargs is None and output is None \
        else Adapted(model, model_kwargs, output)
    try:
        out = wrapped(probe)
    except (KeyError, AttributeError, IndexError, TypeError) as e:
        raise UserError(f"calling the model on one example with model_kwargs="
                        f"{model_kwargs!r} and output={output!r} failed: {type(e).__name__}: "
                        f"{e}") from None
    if not isinstance(out, Tensor):
        raise UserError(f"the model returns {_describe(out)}, not a tensor: pass output= its "
                        "key or attribute (output='logits') or a function of it "
                        "(output=lambda out: out[0])")
    if not out.is_floating_point():
        raise UserError(f"the model's output is {out.dtype}: the NTK needs a floating-point "
                        "output (logits, not labels)")
    return wrapped, out
