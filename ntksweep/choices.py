"""Every named choice a trial spec makes, stated once and torch-free, so that reading,
validating and planning a spec imports no torch. The modules that implement each choice
assert at import that they implement exactly these (``activations``, ``train``,
``kernels.ntk_methods``, ``data``)."""

from __future__ import annotations

__all__ = ["ACTIVATIONS", "LEAKY_RELU_SLOPE", "BIAS_STD", "OPTIMIZERS", "LOSSES", "KEEP_POLICIES",
           "NTK_METHODS", "CHECKPOINT_SPACINGS", "DTYPES", "ARCHITECTURES", "MYRTLE_STAGES",
           "ATTENTIONS", "ATTENTION_SCALINGS", "PADDINGS", "READOUTS", "TRAIN_INPUTS",
           "ALLOW_IMPORT_ENV",
           "check_implemented"]

# σ of ``activations.ACTIVATIONS``; their kernels come from ``kernels.duals``
ACTIVATIONS = ("relu", "leaky_relu", "erf", "tanh", "gelu", "identity", "sigmoid", "softplus",
               "sin")
LEAKY_RELU_SLOPE = 0.01      # leaky ReLU's default negative slope (torch's)
# σ_b, one default for trials, networks and limits alike: Jacot et al.'s β = 0.1, the
# conventions' check values; trial ids hash it, so the trials' default cannot move, and a
# network or limit built without it is the trial's
BIAS_STD = 0.1
OPTIMIZERS = ("gd", "sgd", "adam")                 # train.make_optimizer
LOSSES = ("mse", "cross_entropy")                  # train.loss_value
KEEP_POLICIES = ("none", "first_last", "all")      # which Θ_t / f_t a trial keeps as arrays
NTK_METHODS = ("auto", "structured", "jacobian", "ntk_vps")   # kernels.empirical_ntk
CHECKPOINT_SPACINGS = ("log", "linear")            # train.checkpoint_schedule
DTYPES = ("float32", "float64")
ARCHITECTURES = ("mlp", "cnn", "resnet", "myrtle", "transformer")   # layers.presets
ATTENTIONS = ("softmax", "identity", "relu", "abs")    # layers.attention's mechanisms
ATTENTION_SCALINGS = ("linear", "sqrt")                # logits / (C d) or / (C √d)
# Myrtle depth → the 3×3 convolutions of its three stages, a 2×2 average pool between them
# (Shankar et al. 2020); depth counts the weight tensors: a + b + c + the readout
MYRTLE_STAGES = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}
PADDINGS = ("same", "valid")
READOUTS = ("gap", "flatten")
TRAIN_INPUTS = ("gaussian", "circle")              # the circle data set's training inputs
# packages whose modules a spec's "package.module:function" architecture may import
ALLOW_IMPORT_ENV = "NTKSWEEP_ALLOW_IMPORT"


def check_implemented(what: str, names, implemented) -> None:
    """Fail at import if a module implements other choices than these (a choice added in
    one place only)."""
    if set(names) != set(implemented):
        raise ImportError(f"{what}: the choices {sorted(names)} and the implemented "
                          f"{sorted(implemented)} differ; keep ntksweep/choices.py in step")
