"""Figures inline in a Jupyter notebook, shown once.

poolwise's figures are plain :class:`~matplotlib.figure.Figure` objects, outside pyplot (see
:mod:`poolwise.plots`), so the inline backend's end-of-cell display, which shows pyplot's
figures, never shows them, and IPython shows a returned Figure as an image only once
matplotlib's inline support has registered its figure formatter, which it does when pyplot is
first imported.  Before that, a figure returned from a cell reads ``<Figure size 1160x600 with 3
Axes>``.  :func:`show_inline` registers the same formatter (IPython's own
``select_figure_formats``, with the inline backend's configured formats, PNG by default), in a
Jupyter kernel only and only when no figure formatter is registered yet, so the user's choice
(``%config InlineBackend.figure_formats``, ``%matplotlib widget``, an earlier ``import
matplotlib.pyplot``) stands.  A returned figure is then displayed once, by its formatter.

IPython is never imported here: it is looked up among the modules already loaded.
"""

from __future__ import annotations

import sys
from typing import Any

from matplotlib.figure import Figure

__all__ = ["show_inline"]

_FIGURE_MIMES = ("image/png", "image/svg+xml", "image/jpeg", "application/pdf")


def _kernel_shell() -> Any:
    """The running IPython shell when it is a Jupyter kernel's, else ``None``."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    return shell if getattr(shell, "kernel", None) is not None else None


def show_inline() -> bool:
    """Let a Jupyter kernel display returned figures as images; ``True`` when this registered them.

    Does nothing (``False``) outside a Jupyter kernel, or when some image formatter for figures is
    already registered there."""
    shell = _kernel_shell()
    if shell is None:
        return False
    formatters = shell.display_formatter.formatters
    for mime in _FIGURE_MIMES:
        if mime in formatters:
            try:
                formatters[mime].lookup_by_type(Figure)
            except KeyError:
                continue
            return False
    from IPython.core.pylabtools import select_figure_formats

    formats: Any = {"png"}
    kwargs: dict[str, Any] = {}
    try:  # the inline backend's settings, when matplotlib-inline is there (it is with ipykernel)
        from matplotlib_inline.config import InlineBackend

        config = InlineBackend.instance(parent=shell)
        formats, kwargs = set(config.figure_formats), dict(config.print_figure_kwargs)
    except Exception:  # noqa: BLE001 - the defaults above are IPython's own
        pass
    select_figure_formats(shell, formats, **kwargs)
    return True
