"""Everything that talks to Ray lives in this package (docs/ARCHITECTURE.md: one adapter per
external system)."""

from ..plan import check_output_dir, plan_sweep
from ..sweep_spec import sweep_id_of
from .run import SweepSummary, run_sweep

__all__ = ["RayTileExecutor", "SweepSummary", "plan_sweep", "check_output_dir", "run_sweep",
           "sweep_id_of"]


def __getattr__(name: str):
    # the tile executor reads the kernels (torch): imported when asked for, so that running
    # a sweep's driver never imports torch (its actors do)
    if name == "RayTileExecutor":
        from .shard import RayTileExecutor

        return RayTileExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
