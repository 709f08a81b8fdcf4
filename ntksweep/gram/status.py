"""``ntksweep status OUT`` on a kernel job's output dir: per block, its shape and the tiles
written of all (by name; ``run_gram`` verifies them when it resumes)."""

from __future__ import annotations

from pathlib import Path

from ..kernels.tiles import plan_tiles
from ..store.tiles import tile_names
from .spec import read_manifest, tile_path

__all__ = ["job_status_lines"]


def job_status_lines(out: str | Path) -> list[str]:
    manifest = read_manifest(out)
    spec = manifest["spec"]
    lines = [f"kernel job {spec['name']!r} in {out}: {spec['network']['architecture']} depth "
             f"{spec['network']['depth']} on {spec['network']['dataset']}, tiles of "
             f"{spec['tile']}"]
    for block, (n1, n2) in manifest["shapes"].items():
        tiles = plan_tiles(n1, n2, spec["tile"], symmetric=block == "train")
        names = tile_names(out, f"tiles/{block}")
        done = sum(tile_path(block, t).rsplit("/", 1)[1] in names for t in tiles)
        state = "complete" if done == len(tiles) else "resume with ntksweep kernel SPEC"
        lines.append(f"  {block}: {n1} × {n2}, {done}/{len(tiles)} tiles written ({state})")
    return lines
