"""Dataset-scale infinite-width kernels: a kernel job (``ntksweep kernel SPEC``) computes
the NNGP and NTK Gram matrices of a network's limit on a data set in tiles written as they
finish and resumed where it stopped (``job``), reads them back lazily (``matrix``) and
regresses with them (``regression``).
Names load on first use: the command line's parser imports ``gram.command`` without
torch."""

import importlib

__all__ = ["GramSpec", "load_gram_spec", "run_gram", "GramRun", "GramProgress",
           "LimitTiles", "GramMatrix", "GramFit", "fit_gram"]

_WHERE = {"GramSpec": ".spec", "load_gram_spec": ".spec", "run_gram": ".job",
          "GramRun": ".job", "GramProgress": ".job", "LimitTiles": ".job",
          "GramMatrix": ".matrix", "GramFit": ".regression", "fit_gram": ".regression"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
