"""How a sweep looks in the MLflow UI: readable run names from the grid axes, the axes as
tags (searchable, and columns in the runs table), the experiment's kind, which MLflow 3
reads to open an experiment in its model-training view rather than its GenAI one, and the
sweep's view of its runs (``sweep_view``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["EXPERIMENT_KIND", "VIEW_PREFIX", "KEY_METRICS", "view_key", "sweep_view",
           "run_name", "axis_tags", "git_commit"]

EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# MLflow's shared views: an experiment tag VIEW_PREFIX + key holds a runs page's state (JSON),
# which a link with ?viewStateShareKey=key opens
VIEW_PREFIX = "mlflow.sharedViewState."
# the runs table's metric columns: each trial's summary (its run-level metrics)
KEY_METRICS = ("init_dist_inf", "final_dist_inf", "final_dist_init", "final_train_loss",
               "final_test_loss")
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


def view_key(sweep_id: str) -> str:
    return f"ntksweep-{sweep_id}"


def sweep_view(axes: tuple[str, ...]) -> str:
    """The state of the runs page a sweep's link opens: its trials grouped by the axes other
    than the seed (a width sweep: one row and one chart line per width, the line the mean
    over seeds with their range as a band), every run shown in the table and the charts
    (MLflow shows the first 10 and hides the rest — a width sweep's widest nets), the axes
    and ``KEY_METRICS`` as columns."""
    columns = [f"params.`{a}`" for a in axes] + [f"metrics.`{m}`" for m in KEY_METRICS]
    keys = [{"mode": "param", "groupByData": a} for a in axes if a != "seed"]
    group = {"aggregateFunction": "average", "groupByKeys": keys} if keys else None
    return json.dumps({"runsHiddenMode": "SHOW_ALL", "selectedColumns": columns,
                       "groupBy": group})


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
