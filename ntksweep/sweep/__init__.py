"""Everything that talks to Ray lives in this package (docs/ARCHITECTURE.md: one adapter per
external system)."""

import importlib

__all__ = ["RayTileExecutor", "local_tile_executor", "SweepSummary", "plan_sweep",
           "check_output_dir", "run_sweep", "sweep_id_of"]

# imported when asked for: an actor process that loads ``sweep.worker`` needs neither the
# driver's planning (pandas, pyarrow) nor the tile executor's kernels (torch, at its own time)
_WHERE = {"RayTileExecutor": ".shard", "local_tile_executor": ".shard",
          "SweepSummary": ".run", "run_sweep": ".run",
          "plan_sweep": "..plan", "check_output_dir": "..plan",
          "sweep_id_of": "..sweep_spec"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
