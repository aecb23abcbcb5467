"""Matplotlib figures of finished results: they arrange numbers, they compute none.

Each figure is drawn from a data-returning helper (:func:`comparison_data`,
:func:`pooling_factor_data`, :func:`shrinkage_data`, :func:`ppc_data`, :func:`loo_data`,
:func:`diagnostics_data`, …) so that whatever a figure shows is also available as numbers, and
tests check the numbers drawn.  Figures are built on :class:`matplotlib.figure.Figure` directly,
outside pyplot's global state: nothing here picks a backend, opens a window or calls
``plt.show()``.  Every function takes optional axes to draw into and returns the Figure, which
saves as PNG, SVG or PDF with ``fig.savefig(path)``.  In a Jupyter notebook a returned figure
shows inline, once (:func:`poolwise.plots._inline.show_inline`, run when this package is imported).
"""

from .checks import diagnostics_data, loo_data, plot_diagnostics, plot_loo, plot_ppc, ppc_data
from .estimates import (comparison_data, plot_comparison, plot_pooling_factors, plot_shrinkage, pooling_factor_data,
                        shrinkage_data)
from .hyper import plot_pooling_path, plot_prior_predictive, pooling_path_data, prior_predictive_data
from ._inline import show_inline

__all__ = ["comparison_data", "plot_comparison", "pooling_factor_data", "plot_pooling_factors", "pooling_path_data",
           "plot_pooling_path", "prior_predictive_data", "plot_prior_predictive", "shrinkage_data", "plot_shrinkage",
           "ppc_data", "plot_ppc", "loo_data", "plot_loo", "diagnostics_data", "plot_diagnostics"]

show_inline()  # in a Jupyter kernel: returned figures display as images
