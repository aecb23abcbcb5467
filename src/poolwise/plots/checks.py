"""Figures that check the fits: posterior predictive checks, the LOO comparison and sampling
diagnostics (see :mod:`poolwise.plots`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..compare import Comparison
from ..errors import SpecError

if TYPE_CHECKING:  # pragma: no cover - imported for the type checker only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
from .estimates import _COLORS, _POP_COLOR

__all__ = ["ppc_data", "plot_ppc", "loo_data", "plot_loo", "diagnostics_data", "plot_diagnostics"]


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
    from ..compare import predictive_sample

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
        order, the table's numbers; ``elpd_diff`` is each pooling's ELPD minus the best's, ≤ 0),
        ``diff_at`` (where each difference is drawn: the best ELPD plus the difference, as
        ``arviz.plot_compare`` places it), ``best``, ``best_elpd``,
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
        "elpd_diff": diff, "dse": t["dse"].to_numpy(dtype=float), "diff_at": float(elpd[0]) + diff,
        "best": best, "best_elpd": float(elpd[0]), "criterion": criterion, "column": column, "title": title,
    }


def plot_loo(cmp: Comparison, *, axes: Sequence[Axes] | Any | None = None,
             criteria: str | Sequence[str] = ("loo",)) -> Figure:
    """Predictive comparison of the poolings, as ``arviz.plot_compare`` draws it.

    One panel per criterion, one row per pooling (best on top): the ELPD with ± 1 SE (open
    circle, black bar) and, for the others, the difference to the best with ± 1 SE of the
    difference (grey triangle and bar, drawn at best ELPD + ΔELPD, ΔELPD ≤ 0); the dashed line marks the
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


def divergence_lines(fits: dict[str, dict[str, Any]]) -> list[str]:
    """What to say about divergent transitions, from :func:`diagnostics_data`'s ``fits``: each
    fit with divergences, by name; the reason none can occur (or none apply), once for the
    fits it is true of; nothing for a count of 0."""
    out = [f"{name}: {info['divergences_text']}" for name, info in fits.items() if info.get("divergences")]
    why: dict[str, list[str]] = {}
    for name, info in fits.items():
        if info.get("divergences") is None:
            why.setdefault(str(info["divergences_text"]), []).append(name)
    out += [f"divergences ({', '.join(names)}): {text}" for text, names in why.items()]
    return out


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
    lines = [f"{name}: {info['method']}, {info['chains']}×{info['draws']} draws" for name, info in d["fits"].items()]
    lines += divergence_lines(d["fits"])
    if d["not_sampled"]:
        lines.append("not sampled (point estimates): " + ", ".join(d["not_sampled"]))
    fig.suptitle("Sampling diagnostics\n" + "\n".join(lines), fontsize=8.5)
    return fig
