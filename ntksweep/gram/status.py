"""``ntksweep status OUT`` on a kernel job's output dir: per block, its shape and the tiles
written of all (by name; ``run_gram`` verifies them when it resumes) — and on a sweep's, the
same for each of its shared limits (``sweep.limits``)."""

from __future__ import annotations

from pathlib import Path

from ..kernels.tiles import plan_tiles
from ..store.tiles import subfolders, tile_names
from .spec import read_manifest, tile_path

__all__ = ["job_status_lines", "shared_limit_lines"]


def job_status_lines(out: str | Path) -> list[str]:
    manifest = read_manifest(out)
    spec = manifest["spec"]
    dtype = spec.get("dtype", "float64")
    return [f"kernel job {spec['name']!r} in {out}: {_network(spec)}, tiles of {spec['tile']}, "
            f"{dtype}", *_blocks(out, manifest, "resume with ntksweep kernel SPEC")]


def shared_limit_lines(out: str | Path, shared: str) -> list[str]:
    """The sweep's shared limits in ``OUT/<shared>/``, one job each; none: no lines."""
    lines = []
    for name in subfolders(out, shared):
        job = f"{str(out).rstrip('/')}/{shared}/{name}"
        if (manifest := read_manifest(job)) is not None:
            lines += [f"shared limit {name}: {_network(manifest['spec'])}",
                      *_blocks(job, manifest, "resumes when the sweep runs again")]
    return lines


def _network(spec: dict) -> str:
    net = spec["network"]
    return f"{net['architecture']} depth {net['depth']} on {net['dataset']}"


def _blocks(out: str | Path, manifest: dict, resume: str) -> list[str]:
    lines = []
    for block, (n1, n2) in manifest["shapes"].items():
        tiles = plan_tiles(n1, n2, manifest["spec"]["tile"], symmetric=block == "train")
        names = tile_names(out, f"tiles/{block}")
        done = sum(tile_path(block, t).rsplit("/", 1)[1] in names for t in tiles)
        state = "complete" if done == len(tiles) else resume
        lines.append(f"  {block}: {n1} × {n2}, {done}/{len(tiles)} tiles written ({state})"
                     f"{_precision_note(manifest, block)}")
    return lines


def _precision_note(manifest: dict, block: str) -> str:
    """A float32 job's measured precision of ``block`` (``job._precision``), or nothing."""
    measured = manifest.get("precision", {}).get(block)
    if not measured:
        return ""
    return (f"; float32 within {measured['ntk']:.1e} (Θ) and {measured['nngp']:.1e} (Σ) of "
            "float64, relative, on a sample")
