"""poolwise: pooled, unpooled and hierarchical models of grouped data, side by side."""

from . import errors
from .anova import anova
from .compare import Comparison, compare
from .fit import Fit, fit
from .path import PoolingPath, pooling_path
from .sensitivity import compare_priors, sensitivity
from .spec import ModelSpec

__all__ = ["fit", "compare", "anova", "pooling_path", "sensitivity", "compare_priors", "ModelSpec", "Fit", "Comparison",
           "PoolingPath", "datasets", "errors"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """Load ``poolwise.datasets`` on first use (it is not needed to fit)."""
    if name == "datasets":
        import importlib

        return importlib.import_module(".datasets", __name__)
    raise AttributeError(f"module 'poolwise' has no attribute {name!r}")
