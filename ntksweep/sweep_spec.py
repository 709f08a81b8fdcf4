"""Sweep specs: a YAML file of base trial fields plus grid axes, expanded into trials.

    name: quickstart                 # experiment name (MLflow) and default output dir
    output_dir: ntksweep-out/quickstart
    base: {dataset: circle, depth: 3, steps: 100}     # any TrialSpec field
    grid: {width: [64, 256, 1024], seed: [0, 1, 2]}   # Cartesian product
    zip:                                              # axes that vary together
      - {lr: [1.0, 0.5], steps: [100, 200]}
    resources: {gpus_per_trial: auto, cpus_per_trial: 1, max_workers: null}  # null: fill the
                                     # cluster as it is; N: request N actors (autoscaling)
    retries: 2                       # re-runs of a trial whose worker process died
    tracking_uri: null               # MLflow; default: SQLite inside output_dir
    smoke: {base: {steps: 3}, grid: {width: [8, 16]}}   # tiny CPU version (--smoke)

Everything is validated before anything runs; errors name the field, the YAML line when
known, and the nearest valid name.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError
from .trial_spec import TRIAL_FIELDS, TrialSpec, suggest
from .yaml_input import MAX_SPEC_BYTES, load_yaml, read_spec_text

__all__ = ["SweepSpec", "Resources", "load_sweep_spec", "parse_overrides", "spec_yaml",
           "sweep_id_of", "SpecError"]

TOP_LEVEL = ("name", "output_dir", "base", "grid", "zip", "resources", "retries", "tracking_uri",
             "description", "smoke")
# what each top-level key must be (None: may be left out or null)
_TOP_TYPES = {"name": (str,), "output_dir": (str, type(None)), "base": (dict, type(None)),
              "grid": (dict, type(None)), "zip": (list, type(None)),
              "resources": (dict, type(None)), "retries": (int,),
              "tracking_uri": (str, type(None)), "description": (str, type(None)),
              "smoke": (dict, type(None))}
_TYPE_NAMES = {str: "a string", dict: "a mapping", list: "a list", int: "an integer",
               type(None): "null"}
MAX_TRIALS = 100_000   # a bound that a typo (an axis of 10⁶ values) cannot slip past
RESOURCE_KEYS = ("gpus_per_trial", "cpus_per_trial", "max_workers")


@dataclass(frozen=True)
class Resources:
    gpus_per_trial: float | str = "auto"   # auto: 1 when the cluster has GPUs, else 0
    cpus_per_trial: float = 1.0
    max_workers: int | None = None


@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: dict[str, Any]
    grid: tuple[tuple[str, tuple], ...] = ()
    zip: tuple[tuple[tuple[str, tuple], ...], ...] = ()
    output_dir: str | None = None
    resources: Resources = field(default_factory=Resources)
    retries: int = 2
    tracking_uri: str | None = None
    description: str = ""
    source: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def out_dir(self) -> str:
        """A local path or an object-store URI (``s3://bucket/prefix``): kept as a string."""
        return self.output_dir or str(Path("ntksweep-out") / self.name)

    @property
    def sweep_id(self) -> str:
        """A sweep's identity: its name and base fields — what every trial shares. Axis values
        and seeds can be added to a sweep (it grows in place: same id, same MLflow parent run);
        a changed base field makes another sweep. How it runs (resources, retries) is not part
        of it."""
        return _hash({"name": self.name, "base": self.base})

    @property
    def earlier_sweep_id(self) -> str:
        """The id versions before 0.2 gave the same spec (its axes included): an output dir
        they wrote keeps its id, and so its MLflow parent run."""
        return _hash({"name": self.name, "base": self.base, "grid": self.grid, "zip": self.zip})

    def axes(self) -> dict[str, tuple]:
        axes = dict(self.grid)
        for group in self.zip:
            axes.update(dict(group))
        return axes

    def trials(self) -> list[TrialSpec]:
        """The expanded trials in a stable order, each validated; duplicates removed."""
        grid_names = [k for k, _ in self.grid]
        grid_values = [v for _, v in self.grid]
        zip_rows = [[dict(zip([k for k, _ in g], row)) for row in zip(*[v for _, v in g])]
                    for g in self.zip]
        out, seen = [], set()
        for point in itertools.product(*grid_values):
            for rows in itertools.product(*zip_rows) if zip_rows else [()]:
                fields = {**self.base, **dict(zip(grid_names, point))}
                for row in rows:
                    fields.update(row)
                try:
                    spec = TrialSpec.from_dict(fields)
                except SpecError as e:
                    varying = {k: fields[k] for k in self.axes()}
                    raise SpecError(f"trial {varying}: {e}") from None
                if spec.trial_id not in seen:
                    seen.add(spec.trial_id)
                    out.append(spec)
        return out


def _hash(blob: dict) -> str:
    return hashlib.sha1(json.dumps(blob, sort_keys=True, default=list).encode()).hexdigest()[:12]


def sweep_id_of(spec: SweepSpec) -> str:
    """``spec.sweep_id``."""
    return spec.sweep_id


def _line_of(node: yaml.Node | None, *path: str) -> str:
    """' (line N)' for a key path in the composed YAML, or ''."""
    for key in path:
        if not isinstance(node, yaml.MappingNode):
            return ""
        match = [(k, v) for k, v in node.value if getattr(k, "value", None) == key]
        if not match:
            return ""
        knode, node = match[0]
    return f" (line {knode.start_mark.line + 1})" if path else ""


class _Where:
    """Errors that name the spec file and, when known, the YAML line of a key path."""

    def __init__(self, where: str, node: yaml.Node | None):
        self.where, self.node = where, node

    def __call__(self, msg: str, *path: str) -> SpecError:
        return SpecError(f"{self.where}{_line_of(self.node, *path)}: {msg}")


def _read(source: str | Path | dict) -> tuple[dict, _Where]:
    if isinstance(source, dict):
        return dict(source), _Where("spec", None)
    path = Path(source)
    if not path.is_file():
        raise SpecError(f"sweep spec {str(source)!r} does not exist")
    if path.stat().st_size > MAX_SPEC_BYTES:      # before reading it: a spec is a page
        raise SpecError(f"{path}: {path.stat().st_size} bytes; a spec is at most "
                        f"{MAX_SPEC_BYTES} bytes")
    raw, node = load_yaml(read_spec_text(path), str(path))
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a sweep spec is a mapping with keys {', '.join(TOP_LEVEL)}")
    return dict(raw), _Where(str(path), node)


def _check_types(raw: dict, where: _Where) -> None:
    for key, value in raw.items():
        types = _TOP_TYPES.get(key, (object,))
        if not isinstance(value, types) or (int in types and isinstance(value, bool)):
            want = " or ".join(_TYPE_NAMES[t] for t in types)
            raise where(f"{key} must be {want} (got {type(value).__name__} {value!r:.60})",
                        key)


def _apply_smoke(raw: dict, where: _Where) -> None:
    """The spec's ``smoke:`` block: its base and grid entries replace the spec's, its other
    keys the top-level ones; the output goes to ``<output_dir>-smoke``."""
    block = raw.get("smoke") or {}
    if not isinstance(block, dict):
        raise where("smoke must be a mapping like the spec itself", "smoke")
    for key, value in block.items():
        if key in ("base", "grid") and isinstance(value, dict):
            raw[key] = {**(raw.get(key) or {}), **value}
        else:
            raw[key] = value
    raw["output_dir"] = str(raw.get("output_dir") or Path("ntksweep-out") / str(
        raw.get("name", "sweep"))).rstrip("/") + "-smoke"


def _apply_overrides(raw: dict, base: dict, overrides: dict[str, Any]) -> None:
    """``--set`` values: a base field (replacing a grid axis of that name), a top-level key,
    one grid axis (``grid.width``) or one resource (``resources.max_workers``)."""
    for key, value in overrides.items():
        section, _, sub = key.partition(".")
        if section in ("resources", "grid") and sub:
            raw[section] = {**(raw.get(section) or {}), sub: value}
        elif key == "resources" and isinstance(value, dict):
            raw[key] = {**(raw.get(key) or {}), **value}
        elif key in TOP_LEVEL and key not in ("base", "grid", "zip", "resources"):
            raw[key] = value
        elif key in TRIAL_FIELDS:
            if isinstance(value, list) and key != "checkpoint_steps":
                raise SpecError(f"--set {key}={value}: one value for every trial; to sweep "
                                f"{key} over these values write --set grid.{key}={value}")
            base[key] = value
            raw.setdefault("grid", {})
            if isinstance(raw["grid"], dict):
                raw["grid"] = {k: v for k, v in raw["grid"].items() if k != key}
        else:
            hint = suggest(key, [*TRIAL_FIELDS, *TOP_LEVEL])
            raise SpecError(f"--set {key}: unknown field{hint}")


def _axes(mapping, where: _Where, *path: str) -> tuple[tuple[str, tuple], ...]:
    label = ".".join(path)
    if not isinstance(mapping, dict):
        raise where(f"{label} must map field names to lists of values", *path)
    out = []
    for key, values in mapping.items():
        if key not in TRIAL_FIELDS:
            raise where(f"{label}: unknown field {key!r}{suggest(key, TRIAL_FIELDS)}",
                        *path, key)
        if not isinstance(values, list):
            raise where(f"{label}.{key} must be a list of values (got {values!r})", *path, key)
        if not values:
            raise where(f"{label}.{key} is empty: give at least one value", *path, key)
        out.append((key, tuple(tuple(v) if isinstance(v, list) else v for v in values)))
    return tuple(out)


def _grid_and_zips(raw: dict, where: _Where):
    grid = _axes(raw.get("grid") or {}, where, "grid")
    zips = []
    for i, group in enumerate(raw.get("zip") or []):
        group_axes = _axes(group, where, "zip")
        if len({len(v) for _, v in group_axes}) > 1:
            raise where(f"zip group {i}: all axes must have the same length (got "
                        f"{', '.join(f'{k}: {len(v)}' for k, v in group_axes)})", "zip")
        zips.append(group_axes)
    names = [k for k, _ in grid] + [k for g in zips for k, _ in g]
    if dup := {k for k in names if names.count(k) > 1}:
        raise where(f"axis {sorted(dup)[0]!r} appears more than once in grid/zip", "grid")
    return grid, tuple(zips)


def _resources(raw: dict, where: _Where) -> Resources:
    res = raw.get("resources") or {}
    for key in res:
        if key not in RESOURCE_KEYS:
            raise where(f"resources: unknown key {key!r}{suggest(key, RESOURCE_KEYS)}",
                        "resources", key)
    gpus = res.get("gpus_per_trial", "auto")
    if not (gpus == "auto" or (isinstance(gpus, (int, float)) and gpus >= 0)):
        raise where(f"resources.gpus_per_trial must be 'auto' or a number >= 0 (got {gpus!r})",
                    "resources", "gpus_per_trial")
    cpus = res.get("cpus_per_trial", 1)
    if not (isinstance(cpus, (int, float)) and cpus > 0):
        raise where(f"resources.cpus_per_trial must be a number > 0 (got {cpus!r})",
                    "resources", "cpus_per_trial")
    max_workers = res.get("max_workers")
    if max_workers is not None and not (isinstance(max_workers, int) and max_workers >= 1):
        raise where(f"resources.max_workers must be an integer >= 1 (got {max_workers!r})",
                    "resources", "max_workers")
    return Resources(gpus, float(cpus), max_workers)


def load_sweep_spec(source: str | Path | dict, overrides: dict[str, Any] | None = None,
                    *, smoke: bool = False) -> SweepSpec:
    """Read and validate a sweep spec from a YAML path or a dict; ``overrides`` (from
    ``--set key=value``) replace base fields (or top-level keys such as retries);
    ``smoke`` applies the spec's ``smoke:`` block (its base and grid entries replace the
    spec's, its other keys the top-level ones) and writes to ``<output_dir>-smoke``."""
    raw, where = _read(source)
    if smoke:
        _apply_smoke(raw, where)
    raw.pop("smoke", None)
    for key in raw:
        if key not in TOP_LEVEL:
            hint = suggest(key, TOP_LEVEL)
            if key in TRIAL_FIELDS:
                hint = " (trial fields go under 'base:' or 'grid:')"
            raise where(f"unknown key {key!r}{hint}", key)
    _check_types(raw, where)
    base = dict(raw.get("base") or {})
    _apply_overrides(raw, base, overrides or {})
    _check_types(raw, where)
    for key in base:
        if key not in TRIAL_FIELDS:
            raise where(f"base: unknown field {key!r}{suggest(key, TRIAL_FIELDS)}", "base", key)
    grid, zips = _grid_and_zips(raw, where)
    n_trials = math.prod(len(v) for _, v in grid) * math.prod(len(g[0][1]) if g else 1
                                                           for g in zips)
    if n_trials > MAX_TRIALS:
        raise where(f"the grid expands to {n_trials:,} trials, more than {MAX_TRIALS:,}: split "
                    "it into several sweeps (or check an axis for a typo)", "grid")
    retries = raw.get("retries", 2)
    if not (isinstance(retries, int) and retries >= 0):
        raise where(f"retries must be an integer >= 0 (got {retries!r})", "retries")
    name = raw.get("name") or (Path(source).stem if not isinstance(source, dict) else "sweep")
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise where(f"name must be letters, digits, - and _ (got {name!r})", "name")
    spec = SweepSpec(name=name, base=base, grid=grid, zip=zips,
                     output_dir=raw.get("output_dir"), resources=_resources(raw, where),
                     retries=retries, tracking_uri=raw.get("tracking_uri"),
                     description=str(raw.get("description") or ""),
                     source={**raw, "base": base})
    try:
        trials = spec.trials()
    except SpecError as e:
        raise where(str(e)) from None
    if not trials:
        raise where("the grid expands to no trials")
    return spec


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as YAML (numbers, lists, null)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = load_yaml(value, f"--set {item}")[0]
    return out


def spec_yaml(spec: SweepSpec) -> str:
    """The spec as written to the output dir and MLflow (``sweep.yaml``): its source, with a
    tracking URI's credentials removed (they belong in MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD, never in a file)."""
    from .tracking.uri import redact

    source = dict(spec.source)
    if isinstance(source.get("tracking_uri"), str):
        source["tracking_uri"] = redact(source["tracking_uri"])
    return yaml.safe_dump(source, sort_keys=False, allow_unicode=True)
