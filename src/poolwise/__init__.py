"""poolwise: pooled, unpooled and hierarchical models of grouped data, side by side."""

import os as _os


def _ask_for_cpu_devices() -> None:
    """Ask XLA for max(4, cores) virtual CPU devices, so that NUTS runs its chains in parallel, a
    device each (:func:`poolwise.infer.nuts.sample`), rather than in lockstep on one.

    Only before JAX has started its CPU backend (this must be in the environment then) and only
    when ``XLA_FLAGS`` does not already set a device count: the user's flags are kept.  Arrays
    that JAX places by default still go to the first device."""
    flags = _os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    import sys

    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None and getattr(bridge, "_backends", None):  # JAX already started: too late
        return
    count = max(4, _os.cpu_count() or 1)
    _os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


_ask_for_cpu_devices()

from . import errors  # noqa: E402
from .anova import anova  # noqa: E402
from .compare import Comparison, compare  # noqa: E402
from .fit import Fit, fit  # noqa: E402
from .path import PoolingPath, pooling_path  # noqa: E402
from .sensitivity import compare_priors, sensitivity  # noqa: E402
from .spec import ModelSpec  # noqa: E402

__all__ = ["fit", "compare", "anova", "pooling_path", "sensitivity", "compare_priors", "ModelSpec", "Fit", "Comparison",
           "PoolingPath", "datasets", "errors"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """Load ``poolwise.datasets`` on first use (it is not needed to fit)."""
    if name == "datasets":
        import importlib

        return importlib.import_module(".datasets", __name__)
    raise AttributeError(f"module 'poolwise' has no attribute {name!r}")
