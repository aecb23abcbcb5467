"""Figures of the estimates: the three-panel comparison, shrinkage, pooling factors, the pooling
path and the prior predictive (see :mod:`poolwise.plots`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..compare import POOLINGS, Comparison
from ..errors import SpecError
from ..fit import Fit

if TYPE_CHECKING:  # pragma: no cover - imported for the type checker only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["comparison_data", "plot_comparison", "pooling_factor_data", "plot_pooling_factors", "shrinkage_data",
           "plot_shrinkage"]

_TITLES = {
    "pooled": "pooled: one estimate for all (τ = 0)",
    "unpooled": "unpooled: each group alone (τ fixed, wide)",
    "hierarchical": "hierarchical: partial pooling (τ learned)",
}
_COLORS = {"pooled": "#1f77b4", "unpooled": "#d62728", "hierarchical": "#2ca02c"}
_POP_COLOR = "#7f7f7f"
_MAX_TICKS = 10
#: rows (group terms) :func:`plot_comparison` draws by default
MAX_ROWS = 3


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
    table = cmp.table(prob, term=cmp.terms[0] if term is None else term)  # ordered by size
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
        The group terms to draw, one row each (names as in ``cmp.terms``); default all of them
        when there are at most :data:`MAX_ROWS`, else :data:`MAX_ROWS` of them, each grouping
        factor's first term first (the title says how many were left out).

    Returns
    -------
    matplotlib.figure.Figure

    See Also
    --------
    comparison_data : the numbers drawn.
    """
    left = ""
    if terms is None:
        names = list(cmp.terms)
        if len(names) > MAX_ROWS:  # every factor's first term first, then the others, in the formula's order
            firsts = [b.term.value_name(b.exprs[0]) for b in cmp.hierarchical.bound.blocks]
            keep = set((firsts + [t for t in names if t not in firsts])[:MAX_ROWS])
            names = [t for t in names if t in keep]
            more = len(cmp.terms) - len(names)
            left = f"; {more} more group term{'s' if more > 1 else ''} in plot_comparison(cmp, terms=[…])"
    else:
        names = [terms] if isinstance(terms, str) else list(terms)
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
        subset += left
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
            f"{formula}: three ways of pooling, one row per group term ({', '.join(names)}){subset}{left}\n"
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


def pooling_factor_data(fit_or_cmp: Fit | Comparison, *, prob: float = 0.95, term: str | None = None) -> dict[str, Any]:
    """The numbers :func:`plot_pooling_factors` draws for one group term.

    Parameters
    ----------
    fit_or_cmp
        A :class:`~poolwise.fit.Fit`, or a :class:`~poolwise.compare.Comparison` (its
        hierarchical fit is used).
    prob
        Mass of the intervals.
    term
        The group term (``"1|g"``, ``"x|g"``, as :meth:`Fit.pooling_factors` reads it); default
        the first grouping factor's first term.

    Returns
    -------
    dict
        ``groups``, ``n``, ``lambda``, ``lo``, ``hi`` (ordered by size, from
        ``Fit.pooling_factors(prob, term=term)``), ``batch`` (Gelman & Pardoe's batch pooling
        factor), ``term``, ``group_column`` (the term's grouping factor), ``pooling`` (the fit's
        pooling, as text), ``prob``.
    """
    f = fit_or_cmp.hierarchical if isinstance(fit_or_cmp, Comparison) else fit_or_cmp
    pf: pd.DataFrame = f.pooling_factors(prob, term=term)
    batch = pf.attrs.get("batch")
    pf = pf.sort_values("n", kind="stable")
    return {
        "groups": [str(g) for g in pf.index],
        "n": pf["n"].to_numpy(),
        "lambda": pf["lambda"].to_numpy(dtype=float),
        "lo": pf["lambda_lo"].to_numpy(dtype=float),
        "hi": pf["lambda_hi"].to_numpy(dtype=float),
        "batch": None if batch is None else float(batch),
        "term": str(pf.attrs.get("term", "")),
        "group_column": str(pf.index.name or f.group_column),
        "pooling": f.spec.pooling_text,
        "prob": prob,
    }


def plot_pooling_factors(fit_or_cmp: Fit | Comparison, *, ax: Axes | Sequence[Axes] | None = None,
                         terms: str | Sequence[str] | None = None) -> Figure:
    """Pooling factor λ_j of each group against its size (log scale), with intervals; one panel
    per grouping factor.

    λ = 0: the group keeps its own estimate (unpooled); λ = 1: it takes the population mean
    (pooled).  Small groups are pooled more.  The dashed line is the factor's batch pooling
    factor (Gelman & Pardoe).

    Parameters
    ----------
    fit_or_cmp
        A :class:`~poolwise.fit.Fit`, or a :class:`~poolwise.compare.Comparison`.
    ax
        Axes to draw into: one per term drawn (a single axes draws the first term only, unless
        ``terms`` names one); a new figure by default.
    terms
        The group terms, one panel each; default the first term of every grouping factor.

    Returns
    -------
    matplotlib.figure.Figure

    See Also
    --------
    pooling_factor_data : the numbers drawn.
    """
    f = fit_or_cmp.hierarchical if isinstance(fit_or_cmp, Comparison) else fit_or_cmp
    if terms is None:
        names = [b.term.value_name(b.exprs[0]) for b in f.bound.blocks]
        if ax is not None and not isinstance(ax, (list, tuple, np.ndarray)):
            names = names[:1]
    else:
        names = [terms] if isinstance(terms, str) else list(terms)
    if not names:
        raise ValueError("plot_pooling_factors needs at least one term.")
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.5 if len(names) == 1 else min(18.0, 5.0 * len(names)), 4.2), layout="constrained")
        axs = list(np.atleast_1d(fig.subplots(1, len(names), sharey=True, squeeze=False)[0]))
    else:
        axs = list(np.asarray(ax, dtype=object).ravel())
        if len(axs) != len(names):
            raise ValueError(f"plot_pooling_factors needs {len(names)} axes (one per term), got {len(axs)}.")
        got = axs[0].get_figure()
        assert got is not None
        fig = got
    for i, (a, name) in enumerate(zip(axs, names)):
        _draw_pooling_factors(a, pooling_factor_data(fit_or_cmp, term=name), several=len(names) > 1, first=i == 0)
    return fig  # type: ignore[no-any-return]


def _draw_pooling_factors(ax: Axes, d: dict[str, Any], *, several: bool, first: bool = True) -> None:
    n = np.asarray(d["n"], dtype=float)
    lam = d["lambda"]
    ax.errorbar(n, lam, yerr=[lam - d["lo"], d["hi"] - lam], fmt="o", ms=4, color=_COLORS["hierarchical"],
                elinewidth=0.8, alpha=0.8, capsize=0, label=f"group (bars: {d['prob']:.0%} interval)")
    if d["batch"] is not None and math.isfinite(d["batch"]):
        ax.axhline(d["batch"], color="black", ls="--", lw=1.0, label=f"batch pooling factor {d['batch']:.2f}")
    ax.set_xscale("log")
    readable_log_axis(ax.xaxis)
    ax.set_ylim(-0.03, 1.03)
    ax.axhline(0, color=_POP_COLOR, lw=0.5)
    ax.axhline(1, color=_POP_COLOR, lw=0.5)
    ax.set_xlabel(f"{d['group_column']} size (rows, log scale)")
    if first:
        ax.set_ylabel("pooling factor λ  (0 = unpooled, 1 = pooled)")
    title = f"Pooling factors of {d['term']}" if several else f"Pooling factors ({d['pooling']})"
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")


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
        spread a little within ties so that groups of equal size do not hide each other, or,
        when every group has the same size (``categorical``), 0, 1, … one per group (the axis
        then names the groups and says their common size);
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
    table = cmp.table(prob, term=cmp.terms[0] if term is None else term)
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
    # every group the same size: the size says nothing, so one position per group (labelled)
    categorical = bool(nf.size > 1 and np.all(nf == nf[0]))
    log_x = bool(not categorical and nf.size and nf.min() > 0 and nf.max() / nf.min() >= 10)
    x = np.arange(nf.size, dtype=float) if categorical else _spread_ties(nf, log_x)
    reg = table["regression"].to_numpy(dtype=float)
    pop = cmp.population(name)
    return {
        "groups": [str(g) for g in table.index],
        "n": n,
        "x": x,
        "log_x": log_x,
        "categorical": categorical,
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
        ax.set_xscale("log")
        readable_log_axis(ax.xaxis)
    what = "group intercept" if d["expr"] == "Intercept" else f"group slope of {d['expr']}"
    scale = _SCALES.get(d["link"], f" ({d['link']} scale)")
    ax.set_ylabel(f"{d['outcome']}: {what}{scale}", fontsize=9)
    if d["categorical"]:
        ax.set_xticks(x)
        if len(x) <= 60:
            ax.set_xticklabels(d["groups"], rotation=90 if len(x) > 12 else 0, fontsize=7 if len(x) > 12 else 8)
        else:
            ax.set_xticklabels([])
        ax.set_xlim(-0.7, len(x) - 0.3)
        ax.set_xlabel(f"{d['group_column']} (every group has {int(d['n'][0])} rows)", fontsize=9)
    else:
        ax.set_xlabel(f"{d['group_column']} size (rows{', log scale' if d['log_x'] else ''})", fontsize=9)
    subset = f"; {d['n_shown']} of {d['n_groups']} groups shown" if d["n_shown"] < d["n_groups"] else ""
    target = "their regression values" if d["by_group"] else "the population mean"
    ax.set_title(f"Shrinkage of {d['term']}: unpooled → hierarchical estimate per {d['group_column']}{subset}\n"
                 f"small groups are pulled toward {target}, large ones keep their own", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def _log_ticks(vmin: float, vmax: float) -> list[float]:
    """Tick values for a log axis from ``vmin`` to ``vmax`` that read as plain numbers: powers of
    10 when they give 3 or more, else 1-3, 1-2-5 or every integer multiple per decade, else
    (a span within one decade) a few evenly spaced round numbers."""
    from matplotlib.ticker import MaxNLocator

    lo, hi = (min(vmin, vmax), max(vmin, vmax))
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= 0:
        return []
    lo = max(lo, hi * 1e-12)
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    eps = 1e-9 * hi
    for subs in ((1,), (1, 3), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [float(f"{s * 10.0 ** k:.12g}") for k in decades for s in subs if lo - eps <= s * 10.0 ** k <= hi + eps]
        if len(ticks) >= 3:
            return ticks
    lin = [float(f"{v:.12g}") for v in MaxNLocator(4).tick_values(lo, hi) if lo - eps <= v <= hi + eps and v > 0]
    return lin if len(lin) >= 2 else ticks


def readable_log_axis(axis: Any) -> None:
    """Major ticks of a log axis at :func:`_log_ticks` values, labelled as plain numbers
    ("0.3", "1", "3", "10"), no minor labels; recomputed whenever the limits change."""
    from matplotlib.ticker import FuncFormatter, Locator, NullFormatter, NullLocator

    class _Readable(Locator):
        def __call__(self) -> list[float]:
            vmin, vmax = self.axis.get_view_interval()  # type: ignore[union-attr]
            return self.tick_values(vmin, vmax)

        def tick_values(self, vmin: float, vmax: float) -> list[float]:
            return _log_ticks(vmin, vmax)

    axis.set_major_locator(_Readable())
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def _figure_and_axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    """The figure of ``ax``, or a new figure with one axes."""
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=size, layout="constrained")
        return fig, fig.add_subplot()
    got = ax.get_figure()
    assert got is not None
    return got, ax  # type: ignore[return-value]
