"""Everything that talks to Ray lives in this package (docs/ARCHITECTURE.md: one adapter per
external system)."""

from .driver import SweepSummary, check_output_dir, plan_sweep, run_sweep, sweep_id_of
from .shard import RayTileExecutor

__all__ = ["RayTileExecutor", "SweepSummary", "plan_sweep", "check_output_dir", "run_sweep",
           "sweep_id_of"]
