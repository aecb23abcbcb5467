"""poolwise: pooled, unpooled and hierarchical models of grouped data, side by side."""

from . import datasets, errors
from .compare import Comparison, compare
from .fit import Fit, fit
from .spec import ModelSpec

__all__ = ["fit", "compare", "ModelSpec", "Fit", "Comparison", "datasets", "errors"]
__version__ = "0.1.0"
