"""poolwise: pooled, unpooled and hierarchical models of grouped data, side by side."""

from . import errors
from .compare import Comparison, compare
from .fit import Fit, fit
from .spec import ModelSpec

__all__ = ["fit", "compare", "ModelSpec", "Fit", "Comparison", "datasets", "errors"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """Load ``poolwise.datasets`` on first use (it is not needed to fit)."""
    if name == "datasets":
        import importlib

        return importlib.import_module(".datasets", __name__)
    raise AttributeError(f"module 'poolwise' has no attribute {name!r}")
