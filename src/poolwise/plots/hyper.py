"""Figures of the hyperparameters: the pooling path (every group's estimate as τ grows, with τ's
posterior) and the prior predictive (see :mod:`poolwise.plots`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..fit import Fit
from ..path import PoolingPath

if TYPE_CHECKING:  # pragma: no cover - imported for the type checker only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
from .estimates import _COLORS, _POP_COLOR, readable_log_axis

__all__ = ["pooling_path_data", "plot_pooling_path", "prior_predictive_data", "plot_prior_predictive"]


# --------------------------------------------------------------------------------------------
# the pooling path
# --------------------------------------------------------------------------------------------


def pooling_path_data(path: PoolingPath, *, groups: Sequence[str] | None = None, highlight: int = 2) -> dict[str, Any]:
    """The numbers :func:`plot_pooling_path` draws.

    Parameters
    ----------
    path
        A :class:`~poolwise.path.PoolingPath`.
    groups
        Labels of the groups to draw (default all).
    highlight
        How many of the smallest and of the largest drawn groups get their interval shaded
        (groups of equal size ordered by their unpooled estimate).

    Returns
    -------
    dict
        ``tau`` (the positive grid points: the x axis is logarithmic), ``groups``, ``n``,
        ``mean``, ``lo``, ``hi`` (each (len(tau), groups) for the arrays), ``highlight`` (labels
        of the shaded groups), ``pooled`` (the estimate at τ = 0, ``None`` when the grid has no
        0), ``unpooled`` (the estimates at the largest τ), ``unpooled_tau``, ``density_log``
        (p(τ | y)·τ: the posterior density per unit log τ, so that areas under the log axis are
        probabilities), ``tau_mean``, ``tau_sd``, and ``formula``, ``group_column``,
        ``outcome``, ``term``, ``prob``, ``method``, ``notes``.

    Examples
    --------
    >>> import poolwise as pw
    >>> d = pooling_path_data(pw.pooling_path("y | se(sigma) ~ 1 + (1 | school)", pw.datasets.eight_schools()))
    >>> d["mean"].shape, d["pooled"] is not None
    ((100, 8), True)
    """
    labels = list(path.groups)
    if groups is None:
        cols = np.arange(len(labels))
    else:
        pos = {g: i for i, g in enumerate(labels)}
        missing = [str(g) for g in groups if str(g) not in pos]
        if missing:
            raise ValueError(f"Unknown group(s) {', '.join(repr(m) for m in missing)} in the pooling path; "
                             f"groups are {', '.join(labels[:10])}{', …' if len(labels) > 10 else ''}.")
        cols = np.array([pos[str(g)] for g in groups], dtype=int)
    tau = np.asarray(path.grid, dtype=float)
    rows = tau > 0
    n = np.asarray(path.n)[cols]
    # by size; groups of equal size (all, for the eight schools) by their unpooled estimate
    order = np.lexsort((path.mean[-1, cols], n))
    k = max(0, int(highlight))
    picked = list(order[:k]) + [i for i in order[::-1][:k] if i not in order[:k]]
    tp = path.tau_posterior()
    return {
        "tau": tau[rows],
        "groups": [labels[i] for i in cols],
        "n": n,
        "mean": path.mean[rows][:, cols],
        "lo": path.lo[rows][:, cols],
        "hi": path.hi[rows][:, cols],
        "highlight": [labels[cols[i]] for i in picked],
        "pooled": float(path.mean[0, cols].mean()) if tau[0] == 0 else None,
        "unpooled": path.mean[-1, cols],
        "unpooled_tau": float(tau[-1]),
        "density_log": tp["density_log"].to_numpy(dtype=float)[rows],
        "tau_mean": float(tp.attrs["mean"]),
        "tau_sd": float(tp.attrs["sd"]),
        "formula": path.formula,
        "group_column": path.group_column,
        "outcome": path.outcome,
        "term": path.term,
        "prob": path.prob,
        "method": path.method,
        "notes": list(path.notes),
    }


def plot_pooling_path(path: PoolingPath, *, ax: Sequence[Axes] | Any | None = None,
                      groups: Sequence[str] | None = None) -> Figure:
    """Each group's estimate as the population SD τ grows, with p(τ | y) underneath (BDA3 Fig. 5.6).

    The top panel draws every group's posterior mean against τ (log axis): at the left the
    groups meet at the pooled estimate (τ = 0, dashed), at the right they reach their own
    (unpooled) estimates, marked with dots.  The intervals of the smallest and the largest
    groups are shaded.  The bottom panel, sharing the τ axis, draws the marginal posterior
    density of τ (per unit log τ), which says which part of the path the data support.

    Parameters
    ----------
    path
        A :class:`~poolwise.path.PoolingPath`.
    ax
        Two axes to draw into (path, density), sharing x; a new figure by default.
    groups
        Labels of the groups to draw (default all).

    Returns
    -------
    matplotlib.figure.Figure

    See Also
    --------
    pooling_path_data : the numbers drawn.
    """
    d = pooling_path_data(path, groups=groups)
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8.0, 6.5), layout="constrained")
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    else:
        flat = list(np.asarray(ax, dtype=object).ravel())
        if len(flat) != 2:
            raise ValueError(f"plot_pooling_path needs 2 axes (path, density), got {len(flat)}.")
        top, bottom = flat
        got = top.get_figure()
        assert got is not None
        fig = got
    tau = d["tau"]
    shaded = set(d["highlight"])
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    c = 0
    for j, g in enumerate(d["groups"]):
        if g in shaded:
            color = palette[c % len(palette)]
            c += 1
            top.fill_between(tau, d["lo"][:, j], d["hi"][:, j], color=color, alpha=0.15, lw=0)
            top.plot(tau, d["mean"][:, j], color=color, lw=1.6, label=f"{g} (n = {int(d['n'][j])})", zorder=3)
        else:
            top.plot(tau, d["mean"][:, j], color=_POP_COLOR, lw=0.7, alpha=0.6, zorder=2)
    if d["pooled"] is not None:
        top.axhline(d["pooled"], color="black", ls="--", lw=1.0, label=f"pooled (τ = 0): {d['pooled']:.3g}")
    top.scatter(np.full(len(d["groups"]), tau[-1]), d["unpooled"], s=10, color="black", zorder=4,
                label=f"unpooled (τ = {d['unpooled_tau']:.3g})")
    top.set_xscale("log")
    readable_log_axis(top.xaxis)
    what = "group intercept" if d["term"].startswith("1|") else f"group coefficient {d['term']}"
    top.set_ylabel(f"{d['outcome']}: {what}")
    top.set_title(f"Pooling path of {d['formula']}\nposterior mean of each {d['group_column']} given τ; shaded: "
                  f"{d['prob']:.0%} intervals of the smallest and largest groups", fontsize=10)
    top.grid(alpha=0.3)
    top.legend(fontsize=7.5, loc="best")
    dens = d["density_log"]
    if np.isfinite(dens).any():
        bottom.fill_between(tau, 0.0, np.nan_to_num(dens), color=_COLORS["hierarchical"], alpha=0.35, lw=0)
        bottom.plot(tau, dens, color=_COLORS["hierarchical"], lw=1.2)
        if math.isfinite(d["tau_mean"]):
            bottom.axvline(d["tau_mean"], color="black", lw=0.8, ls=":",
                           label=f"posterior mean τ = {d['tau_mean']:.3g}")
            bottom.legend(fontsize=7.5, loc="upper right")
    bottom.set_xscale("log")
    readable_log_axis(bottom.xaxis)
    bottom.set_ylim(bottom=0)
    bottom.set_ylabel("p(log τ | y)")
    bottom.set_xlabel(f"τ: population SD of the {d['group_column']} effects (log scale)")
    bottom.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------------------------
# the prior predictive
# --------------------------------------------------------------------------------------------


def prior_predictive_data(fit: Fit, *, draws: int = 500, seed: int = 0, n_lines: int = 50,
                          bins: int = 40) -> dict[str, Any]:
    """The numbers :func:`plot_prior_predictive` draws.

    Parameters
    ----------
    fit
        A :class:`~poolwise.fit.Fit`; its priors are what is checked.
    draws, seed
        Passed to :meth:`Fit.prior_predictive`.
    n_lines
        How many prior predictive draws get their own histogram line.
    bins
        Number of histogram bins over the plotted range.

    Returns
    -------
    dict
        ``observed`` (the outcome, (n_obs,)), ``predicted`` (the prior predictive draws,
        (draws, n_obs)), ``observed_range`` (min, max of the outcome), ``fraction_within``
        (the fraction of all predicted values inside the observed range), ``edges`` (bin
        edges over the union of the observed range and the predicted values' 1–99% range),
        ``observed_density`` (the outcome's histogram as a density), ``predicted_density``
        ((n_lines, bins): histograms of the first ``n_lines`` draws), ``outcome``,
        ``formula``, ``priors`` (the priors table).
    """
    y = np.asarray(fit.bound.y, dtype=float)
    pred = fit.prior_predictive(draws=draws, seed=seed)
    finite = pred[np.isfinite(pred)]
    y_lo, y_hi = float(y.min()), float(y.max())
    within = float(np.mean((finite >= y_lo) & (finite <= y_hi))) if finite.size else math.nan
    q_lo, q_hi = (np.quantile(finite, [0.01, 0.99]) if finite.size else (y_lo, y_hi))
    lo, hi = min(y_lo, float(q_lo)), max(y_hi, float(q_hi))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, int(bins) + 1)
    obs_density, _ = np.histogram(y, bins=edges, density=True)
    k = min(int(n_lines), pred.shape[0])
    width = np.diff(edges)
    pred_density = np.empty((k, edges.size - 1))
    for i in range(k):
        counts, _ = np.histogram(pred[i], bins=edges)
        pred_density[i] = counts / (pred.shape[1] * width)  # share of all rows: mass outside the range is lost
    return {
        "observed": y,
        "predicted": pred,
        "observed_range": (y_lo, y_hi),
        "fraction_within": within,
        "edges": edges,
        "observed_density": obs_density,
        "predicted_density": pred_density,
        "outcome": fit.spec.outcome,
        "formula": fit.spec.formula,
        "priors": fit.priors,
    }


def plot_prior_predictive(fit: Fit, *, ax: Axes | None = None, draws: int = 500, seed: int = 0) -> Figure:
    """The observed outcome against outcomes drawn from the prior predictive distribution.

    A filled histogram of the observed outcome and, as thin lines, the histograms of 50 prior
    predictive draws (each a whole replicated data set) on the same bins; the title says
    what fraction of the prior predictive mass lies inside the observed range.  A sensible
    prior puts draws on the scale of the data (not orders of magnitude wider, nor far off).

    Parameters
    ----------
    fit
        A :class:`~poolwise.fit.Fit`.
    ax
        Axes to draw into; a new figure by default.
    draws, seed
        Passed to :meth:`Fit.prior_predictive`.

    Returns
    -------
    matplotlib.figure.Figure

    See Also
    --------
    prior_predictive_data : the numbers drawn.
    """
    d = prior_predictive_data(fit, draws=draws, seed=seed)
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7.0, 4.2), layout="constrained")
        ax = fig.add_subplot()
    else:
        got = ax.get_figure()
        assert got is not None
        fig = got  # type: ignore[assignment]
    edges = d["edges"]
    ax.stairs(d["observed_density"], edges, fill=True, color=_POP_COLOR, alpha=0.45, label="observed")
    for i, dens in enumerate(d["predicted_density"]):
        ax.stairs(dens, edges, color=_COLORS["pooled"], alpha=0.25, lw=0.7,
                  label=f"prior predictive ({len(d['predicted_density'])} draws)" if i == 0 else None)
    lo, hi = d["observed_range"]
    ax.axvline(lo, color="black", lw=0.8, ls=":")
    ax.axvline(hi, color="black", lw=0.8, ls=":", label="observed range")
    ax.set_xlabel(d["outcome"])
    ax.set_ylabel("density")
    ax.set_title(f"Prior predictive check of {d['formula']}\n{d['fraction_within']:.0%} of the prior predictive "
                 f"mass lies within the observed range [{lo:.3g}, {hi:.3g}]", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    return fig
