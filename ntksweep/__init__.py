"""ntksweep: how far are finite networks from their infinite-width NTK limit?"""

from .activations import ACTIVATIONS, get_activation
from .kernels import AnalyticKernels, analytic_kernels, empirical_ntk
from .models import MLP

__version__ = "0.1.0"

__all__ = ["ACTIVATIONS", "MLP", "AnalyticKernels", "analytic_kernels", "empirical_ntk",
           "get_activation", "__version__"]
