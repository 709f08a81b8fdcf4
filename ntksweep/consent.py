"""Which packages a spec's ``architecture: "package.module:function"`` may import: the
user's consent, given on the command line (``--allow-import``) or in
``NTKSWEEP_ALLOW_IMPORT`` (comma-separated), never by a spec. The process that was given it
hands it to the Ray actors it starts (``granted`` into their constructors): a worker on a
cluster node does not share the driver's environment, and without it would refuse the
network the driver checked. Torch-free."""

from __future__ import annotations

import os
from collections.abc import Iterable

from .choices import ALLOW_IMPORT_ENV

__all__ = ["ALLOW_IMPORT_ENV", "grant_imports", "granted", "allowed"]


def _grants() -> list[str]:
    return [g.strip() for g in os.environ.get(ALLOW_IMPORT_ENV, "").split(",") if g.strip()]


def grant_imports(packages: Iterable[str] | str | None) -> None:
    """Allow this process (and the processes it starts) to import ``packages`` (an iterable,
    or a comma-separated string as ``granted`` returns)."""
    new = packages.split(",") if isinstance(packages, str) else list(packages or [])
    given = _grants()
    given += [p.strip() for p in new if p.strip() and p.strip() not in given]
    if given:
        os.environ[ALLOW_IMPORT_ENV] = ",".join(given)


def granted() -> str:
    """This process's consent, to hand to a worker (``grant_imports`` there)."""
    return ",".join(_grants())


def allowed(architecture: str) -> bool:
    """Whether the user allowed importing this function's module (a package allows its
    modules)."""
    module = architecture.partition(":")[0]
    return any(module == g or module.startswith(g + ".") for g in _grants())
