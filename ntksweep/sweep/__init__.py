"""Everything that talks to Ray lives in this package (DESIGN.md: one adapter per system)."""

from .shard import RayTileExecutor

__all__ = ["RayTileExecutor"]
