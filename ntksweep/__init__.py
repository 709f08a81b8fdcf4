"""ntksweep: how far are finite networks from their infinite-width NTK limit?"""

from .activations import ACTIVATIONS, get_activation
from .kernels import AnalyticKernels, analytic_kernels, empirical_ntk
from .models import MLP

__version__ = "0.1.0"


def load_results(out, filters=None):
    """(trials, checkpoints) pandas DataFrames of a sweep's output dir; see ntksweep.store."""
    from .store import load_results as _load

    return _load(out, filters)


__all__ = ["ACTIVATIONS", "MLP", "AnalyticKernels", "analytic_kernels", "empirical_ntk",
           "get_activation", "load_results", "__version__"]
