"""Everything that talks to Ray lives in this package (docs/ARCHITECTURE.md: one adapter per
external system)."""

from ..plan import check_output_dir, plan_sweep
from ..sweep_spec import sweep_id_of
from .run import SweepSummary, run_sweep
from .shard import RayTileExecutor

__all__ = ["RayTileExecutor", "SweepSummary", "plan_sweep", "check_output_dir", "run_sweep",
           "sweep_id_of"]
