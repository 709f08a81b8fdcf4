"""A kernel job's spec: which network's infinite-width kernels, on which data, in which
tiles, written where. YAML (read safely, as sweep specs are)::

    name: digits-myrtle
    output_dir: ntksweep-out/digits-myrtle-kernel     # default ntksweep-out/<name>-kernel
    network:               # trial fields: the data set and the architecture of the limit
      dataset: digits
      n_train: 1000        # the train × train Gram (its upper triangle, mirrored)
      n_test: 500          # and test × train (0: none)
      architecture: myrtle
      depth: 5
    tile: 128              # rows (and columns) per tile
    dtype: float64         # or float32: half the time and the disk; each block's precision
                           # is then measured on a sample against float64

The data set draws an eval split too (``n_eval``, 1 here unless given): a kernel job does
not use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..choices import DTYPES
from ..errors import SpecError
from ..store import read_text
from ..trial_spec import TRIAL_FIELDS, TrialSpec, suggest
from ..yaml_input import load_yaml, read_spec_text

__all__ = ["GramSpec", "load_gram_spec", "MANIFEST", "read_manifest", "tile_path",
           "job_experiment"]

_FIELDS = ("name", "output_dir", "network", "tile", "dtype")
MANIFEST = "gram.json"     # in the output dir: the job's spec and its blocks' shapes


def read_manifest(out: str | Path) -> dict[str, Any] | None:
    """The output dir's manifest ({"spec": the job's fields but its dir, "shapes": block →
    [n1, n2], "limit": its digest, and for float32 "precision": block → kernel → the
    largest error on a sample}), or None where the dir holds no kernel job."""
    text = read_text(out, MANIFEST)
    return None if text is None else json.loads(text)


def job_experiment(name: str) -> str:
    """The MLflow experiment a kernel job's runs go to."""
    return f"{name}-kernel"


def tile_path(block: str, tile) -> str:
    """Where a block's tile (a ``kernels.tiles.Tile``) lies in the output dir."""
    return f"tiles/{block}/{tile.r0}_{tile.c0}.npz"


@dataclass(frozen=True)
class GramSpec:
    """The job: ``network`` (a trial spec: its data and its limit's fields), ``tile`` rows
    per tile, ``output_dir``; ``eval_rows``: the train block's points are the eval points,
    then the training points (the kernels a sweep's trials read: ``sweep.limits``);
    ``dtype``: what the limit is computed and stored in (``kernels.tiles.limit_dtype``)."""

    name: str
    output_dir: str
    network: TrialSpec
    tile: int = 128
    eval_rows: bool = False
    dtype: str = "float64"

    def blocks(self) -> dict[str, tuple[str, str]]:
        """Each Gram block's (rows' set, columns' set): train × train, and test × train
        where the data has a test set."""
        out = {"train": ("train", "train")}
        if self.network.n_test:
            out["test"] = ("test", "train")
        return out

    def to_json(self) -> str:
        fields = {"name": self.name, "output_dir": self.output_dir,
                  "network": self.network.to_dict(), "tile": self.tile}
        if self.eval_rows:          # only where set: earlier jobs' manifests stay the same
            fields["eval_rows"] = True
        if self.dtype != "float64":
            fields["dtype"] = self.dtype
        return json.dumps(fields, sort_keys=True, indent=1)


def load_gram_spec(source: str | Path | dict[str, Any],
                   overrides: dict[str, Any] | None = None) -> GramSpec:
    """A ``GramSpec`` from a YAML file or a dict, with ``overrides`` (``--set``: a spec key,
    or a trial field of the network, also as ``network.<field>``); ``SpecError`` with what
    to change."""
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"{path}: no such kernel spec file")
        raw, _ = load_yaml(read_spec_text(path, "kernel spec"), str(path))
    if not isinstance(raw, dict):
        raise SpecError("a kernel spec is a mapping with name, network and tile")
    if overrides:
        raw = _overridden(raw, overrides)
    for key in raw:
        if key not in _FIELDS:
            raise SpecError(f"unknown key {key!r}{suggest(key, _FIELDS)} in the kernel spec; "
                            f"it takes {', '.join(_FIELDS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("name: the kernel spec needs a name (a string)")
    network = raw.get("network")
    if not isinstance(network, dict):
        raise SpecError("network: a mapping of trial fields (dataset, n_train, architecture, …)")
    tile = raw.get("tile", 128)
    if not isinstance(tile, int) or isinstance(tile, bool) or tile < 1:
        raise SpecError(f"tile: rows per tile, an integer >= 1 (got {tile!r})")
    dtype = raw.get("dtype", "float64")
    if dtype not in DTYPES:
        raise SpecError(f"dtype: float64 (the default) or float32; got {dtype!r}")
    spec = TrialSpec.from_dict({"n_eval": 1, "steps": 0, **network})
    out = raw.get("output_dir") or f"ntksweep-out/{name}-kernel"
    return GramSpec(name, str(out), spec, tile, dtype=dtype)


def _overridden(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    raw = dict(raw)
    network = dict(raw.get("network") or {}) if isinstance(raw.get("network"), dict) else {}
    for key, value in overrides.items():
        field = key.removeprefix("network.")
        if key in _FIELDS and key != "network":
            raw[key] = value
        elif field in TRIAL_FIELDS:
            network[field] = value
        else:
            raise SpecError(f"--set {key}: unknown field"
                            f"{suggest(field, [*_FIELDS, *TRIAL_FIELDS])}; a kernel spec "
                            f"takes {', '.join(f for f in _FIELDS if f != 'network')} and the "
                            "network's trial fields")
    return {**raw, "network": network}
