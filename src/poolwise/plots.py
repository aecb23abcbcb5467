"""Matplotlib figures of finished results: they arrange numbers, they compute none.

Each figure is drawn from a data-returning helper (:func:`comparison_data`,
:func:`pooling_factor_data`, :func:`shrinkage_data`, :func:`ppc_data`, :func:`loo_data`,
:func:`diagnostics_data`, …) so that whatever a figure shows is also available as numbers, and
tests check the numbers drawn.  Figures are built on :class:`matplotlib.figure.Figure` directly,
outside pyplot's global state: nothing here picks a backend, opens a window or calls
``plt.show()``.  Every function takes optional axes to draw into and returns the Figure, which
saves as PNG, SVG or PDF with ``fig.savefig(path)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .compare import POOLINGS, Comparison
from .errors import SpecError
from .fit import Fit
from .path import PoolingPath

if TYPE_CHECKING:  # pragma: no cover - imported for the type checker only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["comparison_data", "plot_comparison", "pooling_factor_data", "plot_pooling_factors", "pooling_path_data",
           "plot_pooling_path", "prior_predictive_data", "plot_prior_predictive", "shrinkage_data", "plot_shrinkage",
           "ppc_data", "plot_ppc", "loo_data", "plot_loo", "diagnostics_data", "plot_diagnostics"]

_TITLES = {
    "pooled": "pooled: one estimate for all (τ = 0)",
    "unpooled": "unpooled: each group alone (τ fixed, wide)",
    "hierarchical": "hierarchical: partial pooling (τ learned)",
}
_COLORS = {"pooled": "#1f77b4", "unpooled": "#d62728", "hierarchical": "#2ca02c"}
_POP_COLOR = "#7f7f7f"
_MAX_TICKS = 10


# --------------------------------------------------------------------------------------------
# the three-panel comparison
# --------------------------------------------------------------------------------------------


def comparison_data(cmp: Comparison, *, max_groups: int | None = None, prob: float = 0.95,
                    term: str | None = None) -> dict[str, Any]:
    """The numbers :func:`plot_comparison` draws for one group term.

    Parameters
    ----------
    cmp
        A :class:`~poolwise.compare.Comparison`.
    max_groups
        Keep at most this many groups, evenly spread over the groups ordered by size (the
        smallest and the largest always kept).  ``None`` keeps all.
    prob
        Mass of the intervals (as :meth:`Comparison.table`).
    term
        The group term (one of ``cmp.terms``, or a name :meth:`Comparison.table` reads);
        default the first grouping factor's first term.

    Returns
    -------
    dict
        ``poolings``: for each of ``"pooled"``, ``"unpooled"``, ``"hierarchical"`` a dict of
        ``groups`` (labels, ordered by size), ``n``, ``mean``, ``lo`` and ``hi`` (NumPy arrays),
        taken from ``cmp.table(prob, term=term)``; ``population``: ``mean`` and ``tau`` of the
        hierarchical model's population distribution N(mean, tau) of the term
        (``cmp.population(term)``); ``regression``: the population value of each shown group
        (the table's ``regression`` column: the same for every group unless the model has
        group-level predictors, listed in ``group_level``); ``pooled_estimate``: the pooled
        model's estimate of the first shown group (the same for every group without
        group-level predictors); ``n_groups`` (all groups), ``n_shown``; ``term`` (its
        variable name, ``"1|g"``), ``expr`` (``"Intercept"`` or the slope's name), ``link``
        (the family's link: the scale of the estimates); ``group_column``, ``outcome``,
        ``prob``.

    Examples
    --------
    >>> import poolwise as pw
    >>> cmp = pw.compare("reaction ~ 1 + (1 | driver)", pw.datasets.drivers(seed=2), draws=200)
    >>> d = comparison_data(cmp)
    >>> list(d["poolings"]), d["n_shown"] == d["n_groups"]
    (['pooled', 'unpooled', 'hierarchical'], True)
    """
    table = cmp.table(prob, term=term)  # ordered by size
    name = str(table.attrs["term"])
    block = next(b for b in cmp.hierarchical.bound.blocks for e in b.exprs if b.term.value_name(e) == name)
    expr = next(e for e in block.exprs if block.term.value_name(e) == name)
    n_groups = len(table)
    if max_groups is not None:
        if int(max_groups) < 1:
            raise ValueError(f"max_groups must be a positive integer, got {max_groups!r}.")
        if n_groups > max_groups:
            keep = np.unique(np.round(np.linspace(0, n_groups - 1, int(max_groups))).astype(int))
            table = table.iloc[keep]
    groups = [str(g) for g in table.index]
    n = table["n"].to_numpy()
    poolings: dict[str, dict[str, Any]] = {}
    for pooling in POOLINGS:
        poolings[pooling] = {
            "groups": list(groups),
            "n": n.copy(),
            "mean": table[f"{pooling}_mean"].to_numpy(dtype=float),
            "lo": table[f"{pooling}_lo"].to_numpy(dtype=float),
            "hi": table[f"{pooling}_hi"].to_numpy(dtype=float),
        }
    pop = cmp.population(name)
    return {
        "poolings": poolings,
        "population": {"mean": float(pop["mean"]), "tau": float(pop.get("tau", 0.0))},
        "regression": table["regression"].to_numpy(dtype=float),
        "group_level": list(table.attrs.get("group_level", [])),
        "pooled_estimate": float(table["pooled_mean"].iloc[0]),
        "n_groups": n_groups,
        "n_shown": len(groups),
        "term": name,
        "expr": expr,
        "link": cmp.hierarchical.spec.fam.link,
        "group_column": block.factor,
        "outcome": cmp.hierarchical.spec.outcome,
        "prob": prob,
    }


def plot_comparison(cmp: Comparison, *, axes: Sequence[Axes] | Any | None = None, max_groups: int = 60,
                    terms: str | Sequence[str] | None = None) -> Figure:
    """The three panels side by side: pooled, unpooled and hierarchical group estimates.

    Each panel shows every group's coefficient of a group term (for the intercept: the
    outcome's expected value in that group when the predictors are 0, on the link scale for
    non-gaussian families) as a point with its 95% interval, groups ordered by size along x
    and the estimates on a y-axis shared by the three panels.  A dashed line marks the pooled
    estimate in every panel; the hierarchical panel also shows the learned population
    distribution N(mean, τ): a band mean ± 2τ and its density at the right edge.  With
    group-level predictors the population value differs by group: the band is then drawn
    around each group's regression value (regression ± 2τ) and the pooled estimates are
    marked group by group.  A model with several group terms (varying slopes, several
    grouping factors) gets one row of three panels per term.

    Parameters
    ----------
    cmp
        A :class:`~poolwise.compare.Comparison`.
    axes
        Axes to draw into, three per term (pooled, unpooled, hierarchical): a sequence of 3
        for one term, or of 3 × the number of terms, flat or one row of 3 per term; a new
        figure by default.
    max_groups
        With more groups than this, a subset evenly spread over sizes is drawn (and the title
        says so).
    terms
        The group terms to draw, one row each (names as in ``cmp.terms``); default all.

    Returns
    -------
    matplotlib.figure.Figure

    See Also
    --------
    comparison_data : the numbers drawn.
    """
    names = list(cmp.terms) if terms is None else [terms] if isinstance(terms, str) else list(terms)
    if not names:
        raise ValueError("plot_comparison needs at least one term.")
    rows = [comparison_data(cmp, max_groups=max_groups, term=t) for t in names]
    k_max = max(d["n_shown"] for d in rows)
    fig, grid = _axes_grid(axes, len(rows), k_max)
    handles: list[Any] = []
    labels: list[str] = []
    for axs, d in zip(grid, rows):
        _draw_row(axs, d)
        for ax in axs:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
    if axes is None:
        ncol = len(labels) if len(rows) == 1 else min(len(labels), 6)
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False)
    else:
        grid[0][0].legend(handles, labels, loc="best", fontsize=7.5)

    formula = cmp.hierarchical.spec.formula
    if len(rows) == 1:
        d = rows[0]
        subset = ""
        if d["n_shown"] < d["n_groups"]:
            subset = f"; showing {d['n_shown']} of {d['n_groups']} groups, evenly spread over sizes"
        if d["expr"] == "Intercept":
            what = f"Each point is one {d['group_column']}'s intercept (the outcome at predictors = 0)"
        else:
            what = f"Each point is one {d['group_column']}'s slope of {d['expr']}"
        if _varies(d["regression"]):
            if d["expr"] == "Intercept":
                what = (f"Each point is one {d['group_column']}'s intercept (the outcome at its "
                        f"{', '.join(d['group_level'])} and the other predictors = 0)")
            pop_text = (f"\nthe grey bars are the learned population around the regression on "
                        f"{', '.join(d['group_level'])}: regression ± 2τ.")
        else:
            pop_text = " the grey curve is the learned population distribution N(mean, τ)."
        fig.suptitle(
            f"{formula}: {d['n_groups']} groups, three ways of pooling{subset}\n"
            f"{what}, smallest groups on the left;{pop_text}",
            fontsize=10)
    else:
        subset = ""
        if any(d["n_shown"] < d["n_groups"] for d in rows):
            subset = f"; at most {max_groups} groups a row, evenly spread over sizes"
        fig.suptitle(
            f"{formula}: three ways of pooling, one row per group term ({', '.join(names)}){subset}\n"
            "Each point is one group's coefficient of the row's term, smallest groups on the left; grey: the "
            "learned population distribution (mean or regression ± 2τ).",
            fontsize=10)
    return fig


def _varies(v: np.ndarray) -> bool:
    """Whether the per-group values differ (group-level predictors), beyond rounding."""
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    return v.size > 1 and float(np.ptp(v)) > 1e-9 * max(1.0, float(np.abs(v).max()))


_SCALES = {"identity": "", "logit": " (logit scale)", "log": " (log scale)"}


def _draw_row(axs: Sequence[Axes], d: dict[str, Any]) -> None:
    """One row of three panels (pooled, unpooled, hierarchical) for one term."""
    pop = d["population"]
    m, tau = pop["mean"], pop["tau"]
    reg = np.asarray(d["regression"], dtype=float)
    by_group = _varies(reg)
    pooled_all = d["poolings"]["pooled"]["mean"]
    pooled_varies = _varies(pooled_all)
    pooled = d["pooled_estimate"]

    lows = [d["poolings"][k]["lo"] for k in POOLINGS]
    highs = [d["poolings"][k]["hi"] for k in POOLINGS]
    ymin = float(min(np.nanmin(v) for v in lows))
    ymax = float(max(np.nanmax(v) for v in highs))
    if math.isfinite(tau) and tau > 0:
        if by_group:
            ymin, ymax = min(ymin, float(np.nanmin(reg)) - 3 * tau), max(ymax, float(np.nanmax(reg)) + 3 * tau)
        else:
            ymin, ymax = min(ymin, m - 3 * tau), max(ymax, m + 3 * tau)
    pad = 0.04 * (ymax - ymin or 1.0)
    ylim = (ymin - pad, ymax + pad)

    k = d["n_shown"]
    x = np.arange(k)
    ticks, ticklabels = _size_ticks(d["poolings"]["pooled"]["n"])
    for ax, name in zip(axs, POOLINGS):
        p = d["poolings"][name]
        color = _COLORS[name]
        if name == "hierarchical" and math.isfinite(tau) and tau > 0:
            if by_group:
                ax.bar(x, 4 * tau, bottom=reg - 2 * tau, width=0.9, color=_POP_COLOR, alpha=0.15, lw=0,
                       label="population: regression ± 2τ")
                ax.scatter(x, reg, marker="_", s=80, color="#444444", lw=1.5, zorder=2,
                           label=f"regression on {', '.join(d['group_level'])}")
            else:
                ax.fill_between([-1, k], m - 2 * tau, m + 2 * tau, color=_POP_COLOR, alpha=0.15, lw=0,
                                label="population: mean ± 2τ")
                ax.plot([-1, k], [m, m], color=_POP_COLOR, lw=1.0, label="population mean")
                _side_density(ax, m, tau, k, ylim)
        if pooled_varies:
            ax.scatter(x, pooled_all, marker="_", s=60, color="black", lw=1.0, zorder=1, label="pooled estimate")
        else:
            ax.axhline(pooled, color="black", ls="--", lw=1.0, label="pooled estimate", zorder=1)
        ax.errorbar(x, p["mean"], yerr=[p["mean"] - p["lo"], p["hi"] - p["mean"]], fmt="o", ms=3.5,
                    color=color, ecolor=color, elinewidth=0.8, alpha=0.9, capsize=0, zorder=3,
                    label=f"{d['group_column']}: posterior mean, {d['prob']:.0%} interval")
        title = _TITLES[name]
        if name == "hierarchical" and math.isfinite(tau):
            if by_group:
                title += f"\nregression on {', '.join(d['group_level'])}, τ = {tau:.3g}"
            else:
                title += f"\npopulation mean {m:.3g}, τ = {tau:.3g}"
        elif name == "pooled":
            title += ("\nregression on " + ", ".join(d["group_level"])) if pooled_varies else f"\nestimate {pooled:.3g}"
        else:
            title += "\nno information shared"
        ax.set_title(title, fontsize=10)
        ax.set_xticks(ticks)
        ax.set_xticklabels(ticklabels, fontsize=8)
        ax.set_xlabel(f"{d['group_column']}, ordered by size (tick: n rows)", fontsize=9)
        ax.set_ylim(*ylim)
        if name != "hierarchical" or by_group:
            ax.set_xlim(-1, k)
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="y", labelsize=8)
    what = "group intercept" if d["expr"] == "Intercept" else f"group slope of {d['expr']}"
    scale = _SCALES.get(d["link"], f" ({d['link']} scale)")
    axs[0].set_ylabel(f"{d['outcome']}: {what}{scale}", fontsize=9)
    for ax in axs[1:]:
        ax.tick_params(axis="y", labelleft=False)


def _axes_grid(axes: Sequence[Axes] | Any | None, n_rows: int, k: int) -> tuple[Figure, list[list[Axes]]]:
    """The figure and one list of three axes (pooled, unpooled, hierarchical) per term."""
    if axes is not None:
        flat = list(np.asarray(axes, dtype=object).ravel())
        if len(flat) != 3 * n_rows:
            raise ValueError(f"plot_comparison needs {3 * n_rows} axes (pooled, unpooled, hierarchical for each of "
                             f"{n_rows} term{'s' if n_rows > 1 else ''}), got {len(flat)}.")
        fig = flat[0].get_figure()
        assert fig is not None
        return fig, [flat[3 * r:3 * r + 3] for r in range(n_rows)]
    from matplotlib.figure import Figure

    width = min(18.0, max(11.0, 6.0 + 0.14 * k))
    height = 6.0 if n_rows == 1 else 1.4 + 4.3 * n_rows
    fig = Figure(figsize=(width, height), layout="constrained")
    grid = fig.subplots(n_rows, 3, sharey="row", squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1.2]})
    return fig, [list(row) for row in grid]


def _size_ticks(n: np.ndarray) -> tuple[list[int], list[str]]:
    """At most ~10 x ticks, at positions where the group size changes, labelled with the size."""
    n = np.asarray(n)
    if n.size == 0:
        return [], []
    starts = [0] + [i for i in range(1, n.size) if n[i] != n[i - 1]]
    gap = max(1.0, n.size / _MAX_TICKS)
    kept = [0]
    for i in starts[1:]:
        if i - kept[-1] >= gap:
            kept.append(i)
    if kept[-1] != starts[-1]:  # always label the largest size, dropping a neighbour too close
        if starts[-1] - kept[-1] < gap and len(kept) > 1:
            kept.pop()
        kept.append(starts[-1])
    starts = kept
    return starts, [str(int(n[i])) for i in starts]


def _side_density(ax: Axes, m: float, tau: float, k: int, ylim: tuple[float, float]) -> None:
    """Draw the N(m, τ) density sideways in a margin to the right of the groups."""
    width = max(3.0, 0.18 * k)
    left = k + 0.5
    ys = np.linspace(ylim[0], ylim[1], 200)
    dens = np.exp(-0.5 * ((ys - m) / tau) ** 2)  # scaled so its peak is 1
    ys, dens = ys[dens > 1e-3], dens[dens > 1e-3]
    ax.fill_betweenx(ys, left, left + width * dens, color=_POP_COLOR, alpha=0.35, lw=0)
    ax.plot(left + width * dens, ys, color=_POP_COLOR, lw=1.0, label="population density N(mean, τ)")
    ax.axvline(left - 0.25, color=_POP_COLOR, lw=0.5, alpha=0.5)
    ax.text(left + 0.5 * width, ylim[0], "N(mean, τ)", ha="center", va="bottom", fontsize=7, color="#444444")
    ax.set_xlim(-1, left + 1.1 * width)


# --------------------------------------------------------------------------------------------
# pooling factors
# --------------------------------------------------------------------------------------------


def pooling_factor_data(fit_or_cmp: Fit | Comparison, *, prob: float = 0.95) -> dict[str, Any]:
    """The numbers :func:`plot_pooling_factors` draws.

    Parameters
    ----------
    fit_or_cmp
        A :class:`~poolwise.fit.Fit`, or a :class:`~poolwise.compare.Comparison` (its
        hierarchical fit is used).
    prob
        Mass of the intervals.

    Returns
    -------
    dict
        ``groups``, ``n``, ``lambda``, ``lo``, ``hi`` (ordered by size, from
        ``Fit.pooling_factors(prob)``), ``batch`` (Gelman & Pardoe's batch pooling factor),
        ``group_column``, ``pooling``, ``prob``.
    """
    f = fit_or_cmp.hierarchical if isinstance(fit_or_cmp, Comparison) else fit_or_cmp
    pf: pd.DataFrame = f.pooling_factors(prob)
    batch = pf.attrs.get("batch")
    pf = pf.sort_values("n", kind="stable")
    return {
        "groups": [str(g) for g in pf.index],
        "n": pf["n"].to_numpy(),
        "lambda": pf["lambda"].to_numpy(dtype=float),
        "lo": pf["lambda_lo"].to_numpy(dtype=float),
        "hi": pf["lambda_hi"].to_numpy(dtype=float),
        "batch": None if batch is None else float(batch),
        "group_column": f.group_column,
        "pooling": f.pooling,
        "prob": prob,
    }


def plot_pooling_factors(fit_or_cmp: Fit | Comparison, *, ax: Axes | None = None) -> Figure:
    """Pooling factor λ_j of each group against its size (log scale), with intervals.

    λ = 0: the group keeps its own estimate (unpooled); λ = 1: it takes the population mean
    (pooled).  Small groups are pooled more.

    Parameters
    ----------
    fit_or_cmp
        A :class:`~poolwise.fit.Fit`, or a :class:`~poolwise.compare.Comparison`.
    ax
        Axes to draw into; a new figure by default.

    Returns
    -------
    matplotlib.figure.Figure

    See Also
    --------
    pooling_factor_data : the numbers drawn.
    """
    d = pooling_factor_data(fit_or_cmp)
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.5, 4.2), layout="constrained")
        ax = fig.add_subplot()
    else:
        got = ax.get_figure()
        assert got is not None
        fig = got  # type: ignore[assignment]
    n = np.asarray(d["n"], dtype=float)
    lam = d["lambda"]
    ax.errorbar(n, lam, yerr=[lam - d["lo"], d["hi"] - lam], fmt="o", ms=4, color=_COLORS["hierarchical"],
                elinewidth=0.8, alpha=0.8, capsize=0, label=f"group (bars: {d['prob']:.0%} interval)")
    if d["batch"] is not None and math.isfinite(d["batch"]):
        ax.axhline(d["batch"], color="black", ls="--", lw=1.0, label=f"batch pooling factor {d['batch']:.2f}")
    ax.set_xscale("log")
    from matplotlib.ticker import ScalarFormatter

    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_ylim(-0.03, 1.03)
    ax.axhline(0, color=_POP_COLOR, lw=0.5)
    ax.axhline(1, color=_POP_COLOR, lw=0.5)
    ax.set_xlabel(f"{d['group_column']} size (rows, log scale)")
    ax.set_ylabel("pooling factor λ  (0 = unpooled, 1 = pooled)")
    ax.set_title(f"Pooling factors ({d['pooling']})", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return fig


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


# --------------------------------------------------------------------------------------------
# shrinkage: unpooled → hierarchical, per group
# --------------------------------------------------------------------------------------------


def shrinkage_data(cmp: Comparison, *, term: str | None = None, max_groups: int | None = None,
                   prob: float = 0.95) -> dict[str, Any]:
    """The numbers :func:`plot_shrinkage` draws for one group term.

    Parameters
    ----------
    cmp
        A :class:`~poolwise.compare.Comparison`.
    term
        The group term (as :meth:`Comparison.table` reads it); default the first.
    max_groups
        Keep at most this many groups, evenly spread over sizes (``None``: all).
    prob
        Mass of the intervals of the table the estimates come from.

    Returns
    -------
    dict
        ``groups`` (labels, ordered by size), ``n``; ``start`` (each group's unpooled estimate,
        the table's ``unpooled_mean``) and ``end`` (its hierarchical estimate,
        ``hierarchical_mean``): the arrows; ``x``: where each arrow is drawn, the group size
        spread a little within ties so that groups of equal size do not hide each other;
        ``log_x`` (whether the x axis is logarithmic: sizes spanning a factor of 10 or more);
        ``regression`` (the population value of each group, the table's ``regression``
        column), ``by_group`` (whether it varies: group-level predictors, listed in
        ``group_level``), ``population`` (``mean``, ``tau``), ``pooled`` (the pooled
        estimates), ``lambda``, ``term``, ``expr``, ``group_column``, ``outcome``, ``link``,
        ``n_groups``, ``n_shown``.

    Raises
    ------
    SpecError
        For ``max_groups`` below 1, or a term that is not a group term of the model.

    Examples
    --------
    >>> import poolwise as pw
    >>> cmp = pw.compare("reaction ~ 1 + (1 | driver)", pw.datasets.drivers(seed=2), draws=200)
    >>> d = shrinkage_data(cmp)
    >>> bool((d["start"] == cmp.table()["unpooled_mean"].to_numpy()).all())
    True
    """
    table = cmp.table(prob, term=term)
    name = str(table.attrs["term"])
    block = next(b for b in cmp.hierarchical.bound.blocks for e in b.exprs if b.term.value_name(e) == name)
    expr = next(e for e in block.exprs if block.term.value_name(e) == name)
    n_groups = len(table)
    if max_groups is not None:
        if int(max_groups) < 1:
            raise SpecError(f"max_groups must be a positive integer, got {max_groups!r}.", option="max_groups",
                            hint="Pass a whole number of at least 1, or None for all groups.")
        if n_groups > max_groups:
            table = table.iloc[np.unique(np.round(np.linspace(0, n_groups - 1, int(max_groups))).astype(int))]
    n = table["n"].to_numpy()
    nf = n.astype(float)
    log_x = bool(nf.size and nf.min() > 0 and nf.max() / nf.min() >= 10)
    x = _spread_ties(nf, log_x)
    reg = table["regression"].to_numpy(dtype=float)
    pop = cmp.population(name)
    return {
        "groups": [str(g) for g in table.index],
        "n": n,
        "x": x,
        "log_x": log_x,
        "start": table["unpooled_mean"].to_numpy(dtype=float),
        "end": table["hierarchical_mean"].to_numpy(dtype=float),
        "pooled": table["pooled_mean"].to_numpy(dtype=float),
        "regression": reg,
        "by_group": _varies(reg),
        "group_level": list(table.attrs.get("group_level", [])),
        "population": {"mean": float(pop["mean"]), "tau": float(pop.get("tau", 0.0))},
        "lambda": table["lambda"].to_numpy(dtype=float),
        "term": name,
        "expr": expr,
        "group_column": block.factor,
        "outcome": cmp.hierarchical.spec.outcome,
        "link": cmp.hierarchical.spec.fam.link,
        "n_groups": n_groups,
        "n_shown": len(table),
    }


def _spread_ties(n: np.ndarray, log_x: bool, width: float = 0.3) -> np.ndarray:
    """Positions for groups of sizes ``n``: each size, with ties spread evenly over ±width/2 of
    the gap to the next size (a factor on a log axis, an offset on a linear one)."""
    x = np.asarray(n, dtype=float).copy()
    sizes = np.unique(x)
    if log_x:
        gap = float(np.median(np.diff(np.log(sizes)))) if sizes.size > 1 else 1.0
    else:
        gap = float(np.median(np.diff(sizes))) if sizes.size > 1 else 1.0
    half = 0.5 * width * gap
    for s in sizes:
        idx = np.flatnonzero(x == s)
        if idx.size < 2:
            continue
        offs = np.linspace(-half, half, idx.size)
        x[idx] = s * np.exp(offs) if log_x else s + offs
    return x


def plot_shrinkage(cmp: Comparison, *, ax: Axes | None = None, term: str | None = None,
                   max_groups: int | None = 200) -> Figure:
    """Shrinkage: per group an arrow from its unpooled to its hierarchical estimate, against size.

    Each arrow starts at the group's own (unpooled) estimate and ends at its partially pooled
    (hierarchical) one, drawn at the group's size on the x axis (logarithmic when sizes vary
    widely).  The arrows point toward the population mean (grey line) or, with group-level
    predictors, toward each group's regression value (grey ticks); small groups move far, large
    ones hardly.

    Parameters
    ----------
    cmp
        A :class:`~poolwise.compare.Comparison`.
    ax
        Axes to draw into; a new figure by default.
    term
        The group term; default the first.
    max_groups
        With more groups, a subset evenly spread over sizes is drawn.

    Returns
    -------
    matplotlib.figure.Figure

    See Also
    --------
    shrinkage_data : the numbers drawn.
    """
    d = shrinkage_data(cmp, term=term, max_groups=max_groups)
    fig, ax = _figure_and_axes(ax, (7.5, 4.6))
    x, start, end = d["x"], d["start"], d["end"]
    if d["by_group"]:
        ax.scatter(x, d["regression"], marker="_", s=70, color=_POP_COLOR, lw=1.6, zorder=1,
                   label=f"population value (regression on {', '.join(d['group_level'])})")
    else:
        ax.axhline(d["population"]["mean"], color=_POP_COLOR, lw=1.2, zorder=1,
                   label=f"population mean {d['population']['mean']:.3g}")
    for xi, s, e in zip(x, start, end):
        ax.annotate("", xy=(xi, e), xytext=(xi, s), zorder=3,
                    arrowprops={"arrowstyle": "-|>", "color": "#555555", "lw": 0.9, "shrinkA": 0, "shrinkB": 0,
                                "mutation_scale": 7})
    ax.scatter(x, start, s=16, facecolors="none", edgecolors=_COLORS["unpooled"], lw=1.0, zorder=4,
               label="unpooled estimate (start)")
    ax.scatter(x, end, s=14, color=_COLORS["hierarchical"], zorder=5, label="hierarchical estimate (end)")
    if d["log_x"]:
        from matplotlib.ticker import ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
    what = "group intercept" if d["expr"] == "Intercept" else f"group slope of {d['expr']}"
    scale = _SCALES.get(d["link"], f" ({d['link']} scale)")
    ax.set_ylabel(f"{d['outcome']}: {what}{scale}", fontsize=9)
    ax.set_xlabel(f"{d['group_column']} size (rows{', log scale' if d['log_x'] else ''})", fontsize=9)
    subset = f"; {d['n_shown']} of {d['n_groups']} groups shown" if d["n_shown"] < d["n_groups"] else ""
    target = "their regression values" if d["by_group"] else "the population mean"
    ax.set_title(f"Shrinkage of {d['term']}: unpooled → hierarchical estimate per {d['group_column']}{subset}\n"
                 f"small groups are pulled toward {target}, large ones keep their own", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def _figure_and_axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    """The figure of ``ax``, or a new figure with one axes."""
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=size, layout="constrained")
        return fig, fig.add_subplot()
    got = ax.get_figure()
    assert got is not None
    return got, ax  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# posterior predictive check
# --------------------------------------------------------------------------------------------


def ppc_data(cmp: Comparison, *, n_draws: int = 50, max_rows: int = 10_000, bins: int = 30,
             seed: int = 0) -> dict[str, Any]:
    """The numbers :func:`plot_ppc` draws: the outcome's histogram against replicated ones.

    Parameters
    ----------
    cmp
        A :class:`~poolwise.compare.Comparison`.
    n_draws
        Replicated data sets per pooling (posterior draws, evenly spaced).
    max_rows
        With more rows, a random subset of this many (the same for every pooling).
    bins
        Histogram bins over the shared range (whole numbers get one bin each when there are
        few of them).
    seed
        Seed of the row subset (see :func:`poolwise.compare.predictive_sample`).

    Returns
    -------
    dict
        ``poolings``: for each pooling ``observed_density`` (bins,), ``replicated_density``
        (draws, bins), ``observed_mean`` and ``replicated_mean`` (draws,) (the mean of the
        outcome and of each replicated data set); ``edges`` (shared by all panels), ``rows``
        (rows used), ``n_obs`` (rows in the data), ``discrete``, ``outcome``, ``formula``.
    """
    from .compare import predictive_sample

    samples = {name: predictive_sample(f, n_draws=n_draws, max_rows=max_rows, seed=seed)
               for name, f in cmp.fits.items()}
    y = next(iter(samples.values()))[1]
    reps = np.concatenate([s[2].ravel() for s in samples.values()])
    reps = reps[np.isfinite(reps)]
    lo, hi = float(y.min()), float(y.max())
    if reps.size:
        q_lo, q_hi = np.quantile(reps, [0.005, 0.995])
        lo, hi = min(lo, float(q_lo)), max(hi, float(q_hi))
    discrete = cmp.hierarchical.spec.fam.support in ("binary", "count", "trials")
    if discrete and hi - lo <= 60:
        edges = np.arange(math.floor(lo), math.floor(hi) + 2) - 0.5
    else:
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, int(bins) + 1)
    width = np.diff(edges)
    out: dict[str, dict[str, Any]] = {}
    for name, (rows, yo, yrep) in samples.items():
        obs, _ = np.histogram(yo, bins=edges)
        rep = np.stack([np.histogram(r, bins=edges)[0] for r in yrep])
        out[name] = {
            "observed_density": obs / (yo.size * width),
            "replicated_density": rep / (yrep.shape[1] * width),  # share of all rows: mass outside is lost
            "observed_mean": float(yo.mean()),
            "replicated_mean": yrep.mean(axis=1),
        }
    return {"poolings": out, "edges": edges, "rows": int(y.size), "n_obs": int(cmp.hierarchical.bound.n_obs),
            "discrete": discrete, "outcome": cmp.hierarchical.spec.outcome, "formula": cmp.hierarchical.spec.formula}


def plot_ppc(cmp: Comparison, *, axes: Sequence[Axes] | Any | None = None, n_draws: int = 50,
             max_rows: int = 10_000, seed: int = 0) -> Figure:
    """Posterior predictive check of each pooling: the outcome against replicated data sets.

    One panel per pooling: the observed outcome's histogram (filled) and, as thin lines (through
    the bin centres; steps for whole numbers), the histograms of ``n_draws`` data sets replicated from the fit's posterior predictive, on bins
    shared by all panels.  A model that fits draws replicated data like the observed.

    Parameters
    ----------
    cmp
        A :class:`~poolwise.compare.Comparison`.
    axes
        One axes per pooling (pooled, unpooled, hierarchical); a new figure by default.
    n_draws, max_rows, seed
        As for :func:`ppc_data`.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    SpecError
        When ``axes`` holds the wrong number of axes.

    See Also
    --------
    ppc_data : the numbers drawn.
    """
    d = ppc_data(cmp, n_draws=n_draws, max_rows=max_rows, seed=seed)
    names = list(d["poolings"])
    if axes is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.0 * len(names), 3.6), layout="constrained")
        axs = list(fig.subplots(1, len(names), sharey=True, squeeze=False)[0])
    else:
        axs = list(np.asarray(axes, dtype=object).ravel())
        if len(axs) != len(names):
            raise SpecError(f"plot_ppc needs {len(names)} axes (one per pooling), got {len(axs)}.", option="axes",
                            hint="Pass one axes per pooling, or none for a new figure.")
        got = axs[0].get_figure()
        assert got is not None
        fig = got
    edges = d["edges"]
    for ax, name in zip(axs, names):
        p = d["poolings"][name]
        ax.stairs(p["observed_density"], edges, fill=True, color=_POP_COLOR, alpha=0.45, label="observed")
        k = len(p["replicated_density"])
        color = _COLORS.get(name, "#1f77b4")
        centers = 0.5 * (edges[1:] + edges[:-1])
        for i, dens in enumerate(p["replicated_density"]):
            label = f"replicated ({k} draws)" if i == 0 else None
            if d["discrete"]:
                ax.stairs(dens, edges, color=color, alpha=0.2, lw=0.7, label=label)
            else:  # a line through the bin centres: 50 of them stay readable
                ax.plot(centers, dens, color=color, alpha=0.18, lw=0.8, label=label)
        ax.set_title(f"{name}", fontsize=10)
        ax.set_xlabel(d["outcome"], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper right")
    axs[0].set_ylabel("density", fontsize=9)
    rows = f"; {d['rows']} of {d['n_obs']} rows (random subset)" if d["rows"] < d["n_obs"] else ""
    fig.suptitle(f"Posterior predictive check of {d['formula']}{rows}", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------
# LOO comparison
# --------------------------------------------------------------------------------------------

_CRITERIA = {"loo": ("elpd_loo", "PSIS-LOO: predicting a new observation of a known group"),
             "logo": ("elpd_logo", "leave-one-group-out: predicting a new group")}


def loo_data(cmp: Comparison, *, criterion: str = "loo") -> dict[str, Any]:
    """The numbers :func:`plot_loo` draws, from :meth:`Comparison.loo` (or :meth:`Comparison.logo`).

    Parameters
    ----------
    cmp
        A :class:`~poolwise.compare.Comparison`.
    criterion
        ``"loo"`` (PSIS-LOO over observations) or ``"logo"`` (leave-one-group-out).

    Returns
    -------
    dict
        ``poolings`` (best first), ``elpd``, ``se``, ``elpd_diff``, ``dse`` (NumPy arrays in that
        order, the table's numbers), ``diff_at`` (where each difference is drawn: the best ELPD
        minus the difference, as ``arviz.plot_compare`` does), ``best``, ``best_elpd``,
        ``criterion``, ``column``, ``title``.

    Raises
    ------
    SpecError
        For a criterion other than ``"loo"`` and ``"logo"``.
    """
    if criterion not in _CRITERIA:
        raise SpecError(f"The criterion must be 'loo' or 'logo', got {criterion!r} instead.", option="criterion",
                        hint="Use 'loo' (a new observation of a known group) or 'logo' (a new group).")
    column, title = _CRITERIA[criterion]
    t = cmp.loo() if criterion == "loo" else cmp.logo()
    elpd = t[column].to_numpy(dtype=float)
    diff = t["elpd_diff"].to_numpy(dtype=float)
    best = str(t.index[0])
    return {
        "poolings": [str(i) for i in t.index], "elpd": elpd, "se": t["se"].to_numpy(dtype=float),
        "elpd_diff": diff, "dse": t["dse"].to_numpy(dtype=float), "diff_at": float(elpd[0]) - diff,
        "best": best, "best_elpd": float(elpd[0]), "criterion": criterion, "column": column, "title": title,
    }


def plot_loo(cmp: Comparison, *, axes: Sequence[Axes] | Any | None = None,
             criteria: str | Sequence[str] = ("loo",)) -> Figure:
    """Predictive comparison of the poolings, as ``arviz.plot_compare`` draws it.

    One panel per criterion, one row per pooling (best on top): the ELPD with ± 1 SE (open
    circle, black bar) and, for the others, the difference to the best with ± 1 SE of the
    difference (grey triangle and bar, drawn at best ELPD − ΔELPD); the dashed line marks the
    best ELPD.  Higher is better.

    Parameters
    ----------
    cmp
        A :class:`~poolwise.compare.Comparison`.
    axes
        One axes per criterion; a new figure by default.
    criteria
        ``"loo"``, ``"logo"`` or both, one panel each.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    SpecError
        When ``axes`` holds the wrong number of axes, or for an unknown criterion.

    See Also
    --------
    loo_data : the numbers drawn.
    """
    names = [criteria] if isinstance(criteria, str) else list(criteria)
    data = [loo_data(cmp, criterion=c) for c in names]
    if axes is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.0 * len(data), 2.6), layout="constrained")
        axs = list(fig.subplots(1, len(data), squeeze=False)[0])
    else:
        axs = list(np.asarray(axes, dtype=object).ravel())
        if len(axs) != len(data):
            raise SpecError(f"plot_loo needs {len(data)} axes (one per criterion), got {len(axs)}.", option="axes",
                            hint="Pass one axes per criterion, or none for a new figure.")
        got = axs[0].get_figure()
        assert got is not None
        fig = got
    for ax, d in zip(axs, data):
        k = len(d["poolings"])
        y = -np.arange(k, dtype=float)
        ax.axvline(d["best_elpd"], color=_POP_COLOR, ls="--", lw=1.0)
        ax.errorbar(d["elpd"], y, xerr=d["se"], fmt="o", mfc="none", mec="black", color="black", ms=6,
                    capsize=0, lw=1.2, label="ELPD ± SE")
        if k > 1:
            ax.errorbar(d["diff_at"][1:], y[1:] + 0.25, xerr=d["dse"][1:], fmt="^", color=_POP_COLOR, ms=5,
                        capsize=0, lw=1.2, label="ΔELPD vs best ± SE")
        ax.set_yticks(y)
        ax.set_yticklabels(d["poolings"])
        ax.set_ylim(y[-1] - 0.6, 0.6)
        ax.set_xlabel(f"{d['column']} (log score, higher is better)", fontsize=9)
        ax.set_title(d["title"], fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7.5, loc="best")
    return fig


# --------------------------------------------------------------------------------------------
# sampling diagnostics
# --------------------------------------------------------------------------------------------

_RHAT_OK = 1.01


def diagnostics_data(cmp: Comparison) -> dict[str, Any]:
    """The numbers :func:`plot_diagnostics` draws, from :meth:`Comparison.diagnostics`.

    Returns
    -------
    dict
        ``labels`` (``"pooling: parameter"``; group variables as ``"pooling: 1|g (J groups, worst)"``),
        ``pooling``, ``r_hat``, ``ess_bulk``, ``ess_tail`` (arrays, one entry per row of
        :meth:`Comparison.diagnostics` whose draws were sampled), ``not_sampled`` (labels of
        the rest: point estimates), ``fits`` (per pooling: method, sampler, chains, draws,
        divergences, divergences_text), ``ess_target`` (100 per chain), ``r_hat_target`` (1.01),
        ``table`` (the whole DataFrame).
    """
    t = cmp.diagnostics()
    fits = t.attrs["fits"]
    labels = [f"{r.pooling}: {r.parameter}" + (f" ({r.n} groups, worst)" if r.kind == "group values" else "")
              for r in t.itertuples()]
    sampled = t["sampled"].to_numpy(dtype=bool)
    chains = max(int(v["chains"]) for v in fits.values())
    return {
        "labels": [lab for lab, s in zip(labels, sampled) if s],
        "pooling": t["pooling"].to_numpy()[sampled],
        "r_hat": t["r_hat"].to_numpy(dtype=float)[sampled],
        "ess_bulk": t["ess_bulk"].to_numpy(dtype=float)[sampled],
        "ess_tail": t["ess_tail"].to_numpy(dtype=float)[sampled],
        "not_sampled": [lab for lab, s in zip(labels, sampled) if not s],
        "fits": fits,
        "ess_target": 100.0 * chains,
        "r_hat_target": _RHAT_OK,
        "table": t,
    }


def plot_diagnostics(cmp: Comparison, *, axes: Sequence[Axes] | Any | None = None) -> Figure:
    """R-hat and bulk/tail ESS of each fit's parameters, and its divergences.

    Left: R-hat of each parameter of each fit (group values: the worst over the groups), with
    the 1.01 line; right: bulk and tail ESS (the smallest over the groups), with the line at
    100 per chain.  The
    title gives each fit's divergences, or why there can be none (the exact path draws its
    hyperparameters by independence MH and the rest exactly; empirical fits are not sampled).

    Parameters
    ----------
    cmp
        A :class:`~poolwise.compare.Comparison`.
    axes
        Two axes (R-hat, ESS); a new figure by default.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    SpecError
        When ``axes`` holds the wrong number of axes.

    See Also
    --------
    diagnostics_data : the numbers drawn.
    """
    d = diagnostics_data(cmp)
    k = len(d["labels"])
    if axes is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10.0, 1.6 + 0.24 * max(k, 3)), layout="constrained")
        left, right = fig.subplots(1, 2, sharey=True)
    else:
        flat = list(np.asarray(axes, dtype=object).ravel())
        if len(flat) != 2:
            raise SpecError(f"plot_diagnostics needs 2 axes (R-hat, ESS), got {len(flat)}.", option="axes",
                            hint="Pass two axes, or none for a new figure.")
        left, right = flat
        got = left.get_figure()
        assert got is not None
        fig = got
    y = -np.arange(k, dtype=float)
    colors = [_COLORS.get(str(p), "black") for p in d["pooling"]]
    rhat = np.where(np.isfinite(d["r_hat"]), d["r_hat"], np.nan)
    left.scatter(rhat, y, c=colors, s=18, zorder=3)
    left.axvline(1.0, color=_POP_COLOR, lw=0.8)
    left.axvline(d["r_hat_target"], color="#d62728", ls="--", lw=0.9, label=f"R-hat {d['r_hat_target']}")
    left.set_xlabel("R-hat (rank-normalized)", fontsize=9)
    left.set_yticks(y)
    left.set_yticklabels(d["labels"], fontsize=7.5)
    finite = rhat[np.isfinite(rhat)]
    hi = max(float(finite.max()) if finite.size else 1.0, d["r_hat_target"])
    left.set_xlim(min(0.995, float(finite.min()) if finite.size else 0.995), hi + 0.005)
    from matplotlib.ticker import MaxNLocator

    left.xaxis.set_major_locator(MaxNLocator(4))
    right.scatter(d["ess_bulk"], y + 0.15, marker="o", s=16, c=colors, label="bulk ESS", zorder=3)
    right.scatter(d["ess_tail"], y - 0.15, marker="s", s=14, facecolors="none", edgecolors=colors, label="tail ESS",
                  zorder=3)
    right.axvline(d["ess_target"], color="#d62728", ls="--", lw=0.9, label=f"{d['ess_target']:.0f} (100 per chain)")
    ess = np.concatenate([d["ess_bulk"], d["ess_tail"], [d["ess_target"]]])
    right.set_xlim(0, 1.08 * float(np.nanmax(ess)))
    right.set_xlabel("effective sample size (bulk: dots, tail: squares)", fontsize=9)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower right")
        if k:
            ax.set_ylim(y[-1] - 0.6, 0.6)
    lines = [f"{name}: {info['method']}, {info['chains']}×{info['draws']} draws; divergences: "
             f"{info['divergences_text']}" for name, info in d["fits"].items()]
    if d["not_sampled"]:
        lines.append("not sampled (point estimates): " + ", ".join(d["not_sampled"]))
    fig.suptitle("Sampling diagnostics\n" + "\n".join(lines), fontsize=8.5)
    return fig
