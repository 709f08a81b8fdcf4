"""How a sweep looks in the MLflow UI: readable run names from the grid axes, the axes as
tags (searchable, and columns in the runs table), and the experiment's kind, which MLflow 3
reads to open an experiment in its model-training view rather than its GenAI one."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

__all__ = ["EXPERIMENT_KIND", "run_name", "axis_tags", "git_commit"]

EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# short prefixes for the common axes; a string-valued axis (activation, dataset) is its value
_SHORT = {"width": "w", "depth": "d", "seed": "s", "lr": "lr", "steps": "T",
          "n_train": "N", "bias_std": "b", "weight_std": "sw", "data_seed": "ds"}


def run_name(trial_id: str, attempt: int, spec: dict[str, Any], axes: tuple[str, ...]) -> str:
    """'w2048-d3-s1' from the trial's values of the sweep's axes (the trial id without axes),
    '-a2' for a second attempt."""
    parts = []
    for axis in axes:
        value = spec.get(axis)
        if isinstance(value, str):
            parts.append(value)
        else:
            parts.append(f"{_SHORT.get(axis, axis + '=')}{value:g}"
                         if isinstance(value, float) else f"{_SHORT.get(axis, axis + '=')}"
                         f"{value}")
    name = "-".join(parts) or trial_id
    return name if attempt == 1 else f"{name}-a{attempt}"


def axis_tags(spec: dict[str, Any], axes: tuple[str, ...]) -> dict[str, str]:
    return {axis: str(spec.get(axis)) for axis in axes}


def git_commit() -> str | None:
    """The commit of the ntksweep checkout that runs (a sweep's parent-run tag); None when it
    is not a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
