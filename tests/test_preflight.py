"""Specs that cannot run are refused before anything runs — by `--dry-run` and by `run`
alike, as one line (exit 2), with no output dir created and no Ray started — and `ntksweep
trial` says the same in one line; values that can run are not refused."""

import numpy as np
import pytest
import torch
import yaml

from ntksweep import cli
from ntksweep.data import DIGITS_IMAGES
from ntksweep.memory import network_shapes
from ntksweep.trial import build_model, dataset_for, inputs
from ntksweep.trial_spec import TrialSpec

CNN = {"dataset": "digits", "architecture": "cnn", "width": 8}


def _flat_file(tmp_path):
    path = tmp_path / "flat.npz"
    np.savez(path, X=np.random.default_rng(0).normal(size=(40, 12)), y=np.zeros(40))
    return path


def _image_file(tmp_path):
    path = tmp_path / "images.npz"
    np.savez(path, X=np.random.default_rng(0).normal(size=(40, 1, 5, 5)), y=np.zeros(40))
    return path


# (name, base fields, a phrase of the one line); {tmp} is the test's directory
REFUSED = [
    ("valid convolutions eat an 8×8 digit", {**CNN, "padding": "valid", "depth": 5},
     "leave nothing of a 8×8 image"),
    ("a 9×9 valid kernel on an 8×8 digit", {**CNN, "padding": "valid", "kernel_size": 9,
                                             "depth": 2}, "leave nothing of a 8×8 image"),
    ("valid convolutions eat a 4×4 image", {**CNN, "dataset": "images", "dim": 4,
                                             "padding": "valid", "depth": 3},
     "leave nothing of a 4×4 image"),
    ("a flatten readout after valid convolutions", {**CNN, "padding": "valid",
                                                     "readout": "flatten", "depth": 6},
     "leave nothing of a 8×8 image"),
    ("a 5×5 valid kernel on 6×6 images", {**CNN, "dataset": "images", "dim": 6,
                                           "padding": "valid", "kernel_size": 5, "depth": 3},
     "leave nothing of a 6×6 image"),
    ("valid convolutions eat a file's 5×5 images", {**CNN, "dataset": "file",
                                                     "data_path": "{tmp}/images.npz",
                                                     "padding": "valid", "kernel_size": 7,
                                                     "depth": 2, "n_train": 8, "n_eval": 8},
     "leave nothing of a 5×5 image"),
    ("mean-field at depth 4", {"parametrization": "mean_field", "depth": 4},
     "defined for two-layer networks"),
    ("mean-field at depth 3", {"parametrization": "mean_field", "depth": 3},
     "defined for two-layer networks"),
    ("mean-field at depth 1", {"parametrization": "mean_field", "depth": 1},
     "defined for two-layer networks"),
    ("μP at depth 1", {"parametrization": "mup", "depth": 1}, "needs a hidden layer"),
    ("more digits than there are", {"dataset": "digits", "n_train": 1700, "n_eval": 100},
     f"digits has {DIGITS_IMAGES} images"),
    ("a test set past the digits", {"dataset": "digits", "n_train": 800, "n_test": 1000},
     f"digits has {DIGITS_IMAGES} images"),
    ("a cnn on a file of vectors", {**CNN, "dataset": "file", "data_path": "{tmp}/flat.npz",
                                    "n_train": 8, "n_eval": 8}, "holds vectors of 12 features"),
    ("a budget of one byte", {"memory_budget": 1}, "memory_budget=1 bytes is too small"),
    ("a GPU no worker sees", {"device": "cuda:99"}, "cuda:99"),
]


def _spec(tmp_path, base: dict) -> str:
    base = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in base.items()}
    _flat_file(tmp_path), _image_file(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "refused", "output_dir": str(tmp_path / "out"),
                                    "base": {"steps": 2, "checkpoints": 2, **base},
                                    "grid": {"seed": [0, 1]}}))
    return str(path)


@pytest.mark.parametrize("name, base, phrase", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_spec_that_cannot_run_is_one_line_before_anything_runs(tmp_path, capsys, name,
                                                                 base, phrase):
    spec = _spec(tmp_path, base)
    for extra in (["--dry-run"], []):
        assert cli.main(["run", spec, *extra]) == 2, (name, extra)
        err = capsys.readouterr().err
        assert err.startswith("ntksweep: error: ") and err.count("\n") == 1, err
        assert phrase in err, err
        assert not (tmp_path / "out").exists()            # nothing written, nothing started


def test_the_trial_command_refuses_in_one_line(capsys):
    for args in (["--parametrization", "mean_field", "--depth", "4"],
                 ["--device", "cuda:99"],
                 ["--dataset", "digits", "--architecture", "cnn", "--padding", "valid",
                  "--depth", "6"]):
        assert cli.main(["trial", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("ntksweep: error: ") and err.count("\n") == 1, err


def test_whole_numbers_written_as_floats_are_accepted(tmp_path, capsys):
    spec = _spec(tmp_path, {})
    assert cli.main(["run", spec, "--dry-run", "--set", "memory_budget=1e9"]) == 0
    assert TrialSpec.from_dict({"memory_budget": "1e9", "steps": 2.0e2}).memory_budget == 10**9
    assert cli.main(["run", spec, "--dry-run", "--set", "steps=1.5"]) == 2
    assert "steps: must be an integer" in capsys.readouterr().err


def test_the_digits_count_is_scikit_learns():
    from sklearn.datasets import load_digits

    assert len(load_digits().data) == DIGITS_IMAGES


@pytest.mark.parametrize("fields", [
    dict(dataset="sphere", dim=5, depth=4),
    dict(dataset="digits", depth=3),
    dict(**CNN, depth=4), dict(**CNN, depth=3, padding="valid", readout="flatten"),
    dict(**CNN, depth=2, padding="valid", kernel_size=5),
    dict(dataset="images", dim=6, architecture="resnet", width=8, depth=4),
    dict(dataset="images", dim=9, architecture="myrtle", width=8, depth=7),
    dict(dataset="digits", architecture="myrtle", depth=10),
    dict(dataset="tokens", architecture="transformer", depth=4, heads=4, width=18),
    dict(dataset="tokens", architecture="transformer", depth=3, attention_scaling="sqrt"),
    dict(dataset="digits", architecture="transformer", depth=3, patch=4)])
def test_the_planned_layer_shapes_are_the_built_networks(fields):
    """The memory estimate plans from shapes alone (without torch): they must be the real
    network's, as its layers report them and as its modules run."""
    from ntksweep.kernels.layerwise import layer_shapes
    from ntksweep.layers import preset
    from ntksweep.memory import network_input_shape

    spec = TrialSpec(**{"width": 16, **fields})
    data = dataset_for(spec.replace(n_train=2, n_eval=2))
    model = build_model(spec, data, data.out_dim, torch.float64, "cpu")
    x = torch.as_tensor(inputs(spec, data, data.x_train[:1]))
    in_shape = network_input_shape(spec.architecture, data.shape, spec.patch)
    planned = network_shapes(spec.architecture, in_shape, spec.width, spec.depth,
                             data.out_dim, kernel_size=spec.kernel_size, padding=spec.padding,
                             readout=spec.readout, heads=spec.heads,
                             attention_scaling=spec.attention_scaling)
    assert planned == layer_shapes(model, x)[0]
    conv = dict(kernel_size=spec.kernel_size, padding=spec.padding, readout=spec.readout) \
        if spec.architecture == "cnn" else \
        dict(kernel_size=spec.kernel_size) if spec.architecture == "resnet" else {}
    net = preset(spec.architecture, width=spec.width, depth=spec.depth, out_dim=data.out_dim,
                 **conv, **dict(spec.network_options()))
    assert planned == net.shapes(in_shape)
