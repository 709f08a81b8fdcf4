"""The network hyperparameter rules, stated once: ``TrialSpec``, the networks of
``models`` and ``analytic_kernels`` all check their arguments here."""

from __future__ import annotations

import math
import re
from typing import Any

from .choices import ACTIVATIONS, ARCHITECTURES, MYRTLE_STAGES, PADDINGS, READOUTS
from .errors import SpecError
from .parametrizations import PARAMETRIZATIONS, kernel_is_ntk_limit

__all__ = ["PARAMETRIZATIONS", "RULES", "problem", "depth_problem", "check_network",
           "check_conv", "is_custom_architecture"]

def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# field → (predicate, what a valid value is)
RULES = {
    "depth": (lambda v: is_int(v) and v >= 1,
              "must be an integer >= 1 (the number of weight matrices)"),
    "width": (lambda v: is_int(v) and v >= 1, "must be an integer >= 1"),
    "weight_std": (lambda v: is_finite(v) and v > 0, "must be a finite number > 0"),
    "bias_std": (lambda v: is_finite(v) and v >= 0, "must be a finite number >= 0"),
    "parametrization": (lambda v: v in PARAMETRIZATIONS,
                        f"must be one of {', '.join(PARAMETRIZATIONS)}"),
    "activation": (lambda v: isinstance(v, str) and v in ACTIVATIONS,
                   f"must be one of {', '.join(sorted(ACTIVATIONS))}"),
    "leaky_relu_slope": (is_finite, "must be a finite number (leaky ReLU's negative slope)"),
}


def problem(field: str, value: Any) -> str | None:
    """What is wrong with ``value`` for ``field`` by its rule, or None."""
    ok, text = RULES[field]
    return None if ok(value) else text


def check_network(*, depth, activation, weight_std, bias_std, parametrization,
                  width=None, leaky_relu_slope=0.01) -> None:
    """Raise ``SpecError`` ('depth must be …; got 0') for the first invalid argument."""
    if (text := problem("activation", activation)) is not None:
        raise SpecError(f"unknown activation {activation!r}; {text.replace('must be', 'choose')}")
    for field, value in (("depth", depth), ("weight_std", weight_std), ("bias_std", bias_std),
                         ("parametrization", parametrization),
                         ("leaky_relu_slope", leaky_relu_slope)):
        if (text := problem(field, value)) is not None:
            raise SpecError(f"{field} {text}; got {value!r}")
    if parametrization == "standard" and not (is_int(width) and width >= 1):
        raise SpecError("parametrization='standard' needs width=<hidden width> (its NTK scales "
                        "with width)")
    if (text := depth_problem(parametrization, depth)) is not None:
        raise SpecError(text)


def depth_problem(parametrization: str, depth: int) -> str | None:
    """What is wrong with ``depth`` for ``parametrization`` (a μP net needs a hidden layer;
    mean-field is defined for two layers), or None."""
    if parametrization == "mean_field" and depth != 2:
        return (f"parametrization 'mean_field' is defined for two-layer networks (depth 2); "
                f"got depth {depth} — for deeper ones use 'mup'")
    if parametrization == "mup" and depth < 2:
        return f"parametrization 'mup' needs a hidden layer (depth >= 2); got depth {depth}"
    return None




_CUSTOM = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_custom_architecture(architecture: Any) -> bool:
    """Whether ``architecture`` names a user's function, "package.module:function"
    (``trial.custom``)."""
    return isinstance(architecture, str) and _CUSTOM.match(architecture) is not None


def check_conv(*, architecture, depth, kernel_size, padding, readout,
               parametrization=None, image_size: tuple[int, int] | None = None) -> None:
    """The convolutional networks' own rules (after ``check_network``); with a
    ``parametrization``, also that their limit exists in it (networks need not); with an
    ``image_size`` (H, W), that a cnn's valid convolutions leave at least one pixel."""
    if is_custom_architecture(architecture):
        return                       # the user's network: checked by building it
    if architecture not in ARCHITECTURES:
        raise SpecError(f"architecture must be one of {', '.join(ARCHITECTURES)} or your "
                        f"own 'package.module:function'; got {architecture!r}")
    if not (is_int(kernel_size) and kernel_size >= 1 and kernel_size % 2 == 1):
        raise SpecError(f"kernel_size must be an odd integer >= 1 (a centred window); got "
                        f"{kernel_size!r}")
    if padding not in PADDINGS:
        raise SpecError(f"padding must be one of {', '.join(PADDINGS)}; got {padding!r}")
    if readout not in READOUTS:
        raise SpecError(f"readout must be one of {', '.join(READOUTS)}; got {readout!r}")
    if architecture == "myrtle":
        _check_myrtle(depth, kernel_size, padding, readout, image_size)
    if architecture == "transformer":
        _check_transformer(depth, kernel_size, padding, readout, parametrization)
        return
    if architecture == "resnet" and (depth < 2 or padding != "same" or readout != "gap"):
        raise SpecError("a resnet has depth >= 2 (a stem and a readout), padding 'same' and "
                        "readout 'gap'")
    if image_size is not None and architecture == "cnn" and padding == "valid":
        left = min(image_size) - (depth - 1) * (kernel_size - 1)
        if left < 1:
            raise SpecError(f"{depth - 1} valid {kernel_size}×{kernel_size} convolutions leave "
                            f"nothing of a {image_size[0]}×{image_size[1]} image (each takes "
                            f"{kernel_size - 1} pixels off its side); use padding 'same', a "
                            "smaller kernel_size or a smaller depth")
    if parametrization is not None and architecture != "mlp" \
            and not kernel_is_ntk_limit(parametrization):
        raise SpecError(f"the {architecture} limit is implemented for the parametrizations "
                        "whose kernel tends to the NTK one's (ntk, mup, mean_field); got "
                        f"{parametrization!r}")


def _check_myrtle(depth, kernel_size, padding, readout, image_size) -> None:
    """A Myrtle net's shape is its depth's: 3×3 'same' convolutions, two 2×2 pools, a global
    average readout; its images must survive both pools."""
    if depth not in MYRTLE_STAGES:
        raise SpecError(f"myrtle depth must be one of {', '.join(map(str, MYRTLE_STAGES))}; "
                        f"got {depth!r}")
    if (kernel_size, padding, readout) != (3, "same", "gap"):
        raise SpecError("a myrtle net has 3×3 'same' convolutions and a global-average "
                        "readout: leave kernel_size, padding and readout at 3, same, gap")
    if image_size is not None and min(image_size) < 4:
        raise SpecError(f"a myrtle net pools twice by 2×2: its images need at least 4×4 "
                        f"pixels; got {image_size[0]}×{image_size[1]}")


def _check_transformer(depth, kernel_size, padding, readout, parametrization) -> None:
    """A transformer: an embedding, depth − 2 blocks and a readout; no convolution fields;
    its attention is built in the NTK parametrization (``layers.attention``)."""
    if not (is_int(depth) and depth >= 3):
        raise SpecError(f"a transformer has depth >= 3 (an embedding, depth − 2 blocks, a "
                        f"readout); got {depth!r}")
    if (kernel_size, padding, readout) != (3, "same", "gap"):
        raise SpecError("a transformer has no convolutions: leave kernel_size, padding and "
                        "readout at 3, same, gap")
    if parametrization not in (None, "ntk"):
        raise SpecError(f"a transformer's attention is built in the NTK parametrization only;"
                        f" got {parametrization!r}")
