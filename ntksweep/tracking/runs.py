"""A sweep's runs in MLflow: its experiment and parent run, found or made (a resumed sweep
continues the parent its ``ntksweep.sweep_id`` tag names), and the child runs a driver that
died left open, ended KILLED when the next one starts."""

from __future__ import annotations

import socket

from mlflow.tracking import MlflowClient

from .. import __version__
from ..records import Status
from .mlflow_api import RunKey, runs_of
from .naming import EXPERIMENT_KIND, git_commit
from .sqlite import artifact_root

__all__ = ["RUN_STATUS", "open_experiment", "find_or_create_parent", "close_stale_runs"]

# the MLflow run status of an attempt that ended so (its own status is the run's tag)
RUN_STATUS = {Status.RUNNING: "RUNNING", Status.COMPLETED: "FINISHED",
              Status.DIVERGED: "FINISHED", Status.FAILED: "FAILED", Status.KILLED: "KILLED"}


def open_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment ``name``, created with its artifacts beside the store (a SQLite
    store's ``mlartifacts/``) and tagged for MLflow's model-training view."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_root(uri),
                                        tags=EXPERIMENT_KIND)
    if not all(exp.tags.get(k) for k in EXPERIMENT_KIND):
        for key, value in EXPERIMENT_KIND.items():   # one created before the tag existed
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def find_or_create_parent(client: MlflowClient, experiment_id: str, sweep_id: str, *,
                          name: str, create: bool, axes: tuple[str, ...] = (),
                          description: str = "", sweep_yaml: str = "") -> tuple[str, bool]:
    """(the sweep's parent run id, whether it existed). A new one (only with ``create``) is
    tagged with the sweep id, ntksweep's version and commit, the host and the axes, and
    carries the sweep's YAML."""
    found = client.search_runs([experiment_id], runs_of(sweep_id, "sweep"), max_results=1)
    if found:
        return found[0].info.run_id, True
    if not create:
        raise RuntimeError(f"sweep {sweep_id} has no parent run in MLflow to add files to; "
                           "run the sweep (or `ntksweep sync`) first")
    run = client.create_run(experiment_id, run_name=name, tags={
        "ntksweep.sweep_id": sweep_id, "ntksweep.role": "sweep",
        "ntksweep.version": __version__, "ntksweep.git_commit": git_commit() or "",
        "host": socket.gethostname(), "mlflow.note.content": description,
        "ntksweep.axes": ",".join(axes)})
    if sweep_yaml:
        client.log_text(run.info.run_id, sweep_yaml, "sweep.yaml")
    return run.info.run_id, False


def close_stale_runs(client: MlflowClient, runs: list[RunKey]) -> dict[str, int]:
    """A resumed sweep's child runs still running belong to no live driver (killed with -9,
    a server outage, a full disk): end them KILLED. Returns the highest attempt each trial's
    runs hold — finished ones too (a trial whose Parquet record went to quarantine has one)
    —, so that a trial run again gets the next attempt number."""
    attempts: dict[str, int] = {}
    for run in runs:
        if run.trial_id and (run.attempt or "").isdigit():
            attempts[run.trial_id] = max(attempts.get(run.trial_id, 0), int(run.attempt))
        if run.status == Status.RUNNING.value:
            client.set_tag(run.run_id, "status", Status.KILLED.value)
            client.set_terminated(run.run_id, RUN_STATUS[Status.KILLED])
    return attempts
