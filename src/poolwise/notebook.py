"""How results show in a Jupyter notebook: the HTML behind ``_repr_html_``.

IPython displays the last value of a cell with its ``_repr_html_`` when it has one.
:class:`~poolwise.fit.Fit`, :class:`~poolwise.compare.Comparison`,
:class:`~poolwise.compare.Recommendation` and :class:`~poolwise.path.PoolingPath` define it as a
one-line convenience that calls :func:`fit_html`, :func:`comparison_html`,
:func:`recommendation_html` or :func:`path_html` here (as
``Comparison.plot`` calls :mod:`poolwise.plots`); tables returned as DataFrames render as pandas
renders them.

What is shown is what the object already holds or a summary computes: a fit's facts, its
parameter summary (not the group values) and notes; a comparison's pooling factors, population
estimates and per-group table; the recommendation only once :meth:`Comparison.recommend` has
made it.  Nothing here runs PSIS-LOO, leave-one-group-out or refits, or builds the pointwise
(draws × rows) arrays.  Every piece of text that comes from the data or the user (formula,
column names, group labels, notes) is escaped with :func:`html.escape`: input is data, never
markup.  Numbers are shown as the CLI shows them (:func:`poolwise.output.number`); the frames
keep every digit.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .output import number

if TYPE_CHECKING:  # pragma: no cover - imported for the type checker only
    from .compare import Comparison, Recommendation
    from .fit import Fit
    from .path import PoolingPath

__all__ = ["fit_html", "comparison_html", "recommendation_html", "path_html", "table_html", "SHOWN_GROUPS"]

#: groups listed per grouping factor in a comparison's table (the smallest first)
SHOWN_GROUPS = 20

_POOLINGS = ("pooled", "unpooled", "hierarchical")
_CELL = "padding:0.15em 0.6em;"
_NUM = f"text-align:right;{_CELL}"
_TEXT = f"text-align:left;{_CELL}"


def _e(value: Any) -> str:
    """``value`` as text, escaped for HTML (quotes included)."""
    return html.escape(str(value), quote=True)


def _heading(text: str, level: int = 4) -> str:
    return f'<h{level} style="margin:0.8em 0 0.3em">{_e(text)}</h{level}>'


def _text(value: Any, digits: int) -> tuple[str, bool]:
    """One cell's text and whether it reads as a number: numbers to ``digits`` significant digits
    (0: an integer), an interval such as ``1.2 [0.9, 1.5]`` as given, anything else as text."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)), False
    if isinstance(value, (int, float, np.integer, np.floating)):
        if digits == 0 and np.isfinite(value):
            return str(int(round(float(value)))), True
        return number(value, digits or 4), True
    text = str(value)
    return text, text[:1].isdigit() or text[:2].lstrip("-−–")[:1].isdigit() or text == "–"


def table_html(frame: pd.DataFrame, *, index_name: str | None = None, digits: Mapping[str, int] | None = None,
               max_rows: int | None = None) -> str:
    """``frame`` as an HTML table: numbers to 4 significant digits (per column ``digits``; 0 for
    integers), text escaped; the index as the first column, headed ``index_name``.  A column whose
    shown cells all read as numbers is aligned right, its header too; others left.

    With ``max_rows``, only the first rows are shown (the caller says how many there are)."""
    digits = digits or {}
    shown = frame if max_rows is None else frame.head(max_rows)
    columns = []
    for i, c in enumerate(frame.columns):
        cells = [_text(v, digits.get(str(c), 4)) for v in shown.iloc[:, i]]
        columns.append((_NUM if all(num for _, num in cells) else _TEXT, [t for t, _ in cells]))
    name = index_name if index_name is not None else (frame.index.name or "")
    head = f'<th style="{_TEXT}">{_e(name)}</th>' + "".join(
        f'<th style="{style}">{_e(c)}</th>' for c, (style, _) in zip(frame.columns, columns))
    rows = []
    for r, label in enumerate(shown.index):
        label_text = " / ".join(str(x) for x in label) if isinstance(label, tuple) else label
        cells = "".join(f'<td style="{style}">{_e(texts[r])}</td>' for style, texts in columns)
        rows.append(f'<tr><th style="{_TEXT}">{_e(label_text)}</th>{cells}</tr>')
    return (f'<table class="dataframe poolwise-table" style="border-collapse:collapse">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _facts(pairs: Iterable[tuple[str, str]]) -> str:
    """Key facts as a two-column table, labels on the left."""
    rows = "".join(f'<tr><th style="{_TEXT}">{_e(k)}</th><td style="{_TEXT}">{_e(v)}</td></tr>' for k, v in pairs)
    return f'<table class="poolwise-facts" style="border-collapse:collapse"><tbody>{rows}</tbody></table>'


def _list(items: Sequence[str]) -> str:
    return "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in items) + "</ul>"


def _wrap(parts: Sequence[str]) -> str:
    return '<div class="poolwise">' + "".join(parts) + "</div>"


def _groups_text(f: Fit) -> str:
    """The grouping factors and their numbers of groups: ``40`` or ``s: 24, d: 6``."""
    seen: dict[str, int] = {}
    for blk in f.bound.blocks:
        seen.setdefault(str(blk.factor), int(blk.n_groups))
    if len(seen) == 1:
        ((factor, n),) = seen.items()
        return f"{n} ({factor})"
    return ", ".join(f"{k}: {v}" for k, v in seen.items())


def _method_text(f: Fit) -> str:
    est = f.info.get("method") if f.method == "empirical" else None
    return f"{f.method} ({est})" if est else f.method


def _model_facts(f: Fit) -> list[tuple[str, str]]:
    """Formula, family, pooling, method, rows, groups, draws: read from the fit, making nothing
    (an empirical fit's draws stay unmade)."""
    draws = f"{f.n_chains} chains × {f.n_draws}"
    if f.method == "empirical":
        draws += " (of β and the group values given the estimates, made when first used)"
    return [("formula", str(f.spec.formula)), ("family", str(f.spec.fam.name)),
            ("pooling", str(f.spec.pooling_text)), ("method", _method_text(f)),
            ("rows", f"{int(f.bound.n_obs):,}"), ("groups", _groups_text(f)), ("draws", draws)]


def _summary_section(summary: pd.DataFrame) -> str:
    """The parameter summary as the CLI shows it: MCSE columns left to the frame, ``hdi_`` dropped
    from the interval's column names, the flag column only when a row fails a check."""
    s = summary.drop(columns=[c for c in summary.columns if str(c).startswith("mcse")])
    if "flag" in s.columns and not s["flag"].astype(str).str.strip().any():
        s = s.drop(columns="flag")
    s = s.rename(columns=lambda c: str(c).removeprefix("hdi_"))
    title = str(summary.attrs.get("title") or "Posterior summary")
    digits = {"ess_bulk": 0, "ess_tail": 0, "r_hat": 4}
    return _heading(title) + table_html(s, index_name="parameter", digits=digits)


def fit_html(f: Fit) -> str:
    """A fit in a notebook: the model and its key facts (formula, family, pooling, method, rows,
    groups, draws), the summary of the parameters (:meth:`Fit.summary` without the group
    values), the priors (folded) and the notes.  Computes nothing beyond the summary."""
    summary = f.summary(groups=False)
    parts = [_heading("poolwise.Fit", 3), _facts(_model_facts(f)), _summary_section(summary)]
    priors = summary.attrs.get("priors")
    if isinstance(priors, pd.DataFrame) and not priors.empty:
        parts.append(f"<details><summary>Priors ({len(priors)})</summary>"
                     f"{table_html(priors, index_name='parameter')}</details>")
    notes = summary.attrs.get("notes")
    if notes is None:
        notes = f.notes()
    if notes:
        parts += [_heading("Notes"), _list([str(n) for n in notes])]
    parts.append('<p style="color:#5f6368">Group values: <code>fit.summary()</code>, '
                 "<code>fit.group_estimates()</code>.</p>")
    return _wrap(parts)


def _interval(pop: Mapping[str, float], key: str) -> str:
    return f"{number(pop[key])} [{number(pop[f'{key}_lo'])}, {number(pop[f'{key}_hi'])}]"


def _pooling_section(cmp: Comparison) -> str:
    """Per grouping factor (its first term): the hierarchical fit's pooling factors (range, median,
    Gelman & Pardoe's batch factor) and population mean, τ and σ with 95% intervals."""
    hier = cmp.hierarchical
    rows = []
    for term in cmp.factor_terms:
        pf = hier.pooling_factors(term=term)
        lam = pf["lambda"].to_numpy(dtype=float)
        pop = cmp.population(term)
        row: dict[str, Any] = {
            "groups": int(lam.size),
            "λ min": float(np.nanmin(lam)) if lam.size else float("nan"),
            "λ median": float(np.nanmedian(lam)) if lam.size else float("nan"),
            "λ max": float(np.nanmax(lam)) if lam.size else float("nan"),
            "batch λ": pf.attrs.get("batch", float("nan")),
            "mean [95%]": _interval(pop, "mean"), "τ [95%]": _interval(pop, "tau"),
        }
        if "sigma" in pop:
            row["σ [95%]"] = _interval(pop, "sigma")
        rows.append(pd.Series(row, name=term))
    frame = pd.DataFrame(rows)
    return (_heading("Pooling factors (hierarchical)")
            + '<p style="color:#5f6368">λ: 0 = the group keeps its own estimate (unpooled), '
              "1 = it takes the population value (pooled); batch λ: Gelman &amp; Pardoe (2006).</p>"
            + table_html(frame, index_name="term", digits={"groups": 0, "λ min": 2, "λ median": 2, "λ max": 2,
                                                          "batch λ": 2}))


def _factor_frames(cmp: Comparison, table: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(factor, term, its rows) of :meth:`Comparison.table`: one per grouping factor."""
    if isinstance(table.index, pd.MultiIndex):
        return [(str(fac), str(frame["term"].iloc[0]), frame.droplevel("factor"))
                for fac, frame in table.groupby(level="factor", sort=False)]
    return [(str(cmp.group_column), str(table.attrs.get("term", "")), table)]


def _groups_section(cmp: Comparison) -> str:
    """Each factor's first term per group under each pooling: mean [95% interval], and λ."""
    scale = {"logit": " (logit scale)", "log": " (log scale)"}.get(cmp.hierarchical.spec.fam.link, "")
    parts = []
    several = len(cmp.factors) > 1
    for factor, term, frame in _factor_frames(cmp, cmp.table()):
        expr = term.partition("|")[0]
        what = "Group intercepts" if expr == "1" else f"Group slopes of {expr}"
        by = f" by {factor}" if several else ""
        shown = pd.DataFrame({"n": frame["n"]}, index=frame.index)
        for p in _POOLINGS:
            shown[p] = [f"{number(m)} [{number(lo)}, {number(hi)}]" for m, lo, hi in
                        zip(frame[f"{p}_mean"], frame[f"{p}_lo"], frame[f"{p}_hi"])]
        shown["λ"] = frame["lambda"]
        parts.append(_heading(f"{what}{by}{scale}: mean [95% interval]"))
        parts.append(table_html(shown, index_name=factor, digits={"n": 0, "λ": 2}, max_rows=SHOWN_GROUPS))
        if len(frame) > SHOWN_GROUPS:
            of = f"{factor} groups" if several else "groups"
            parts.append(f'<p style="color:#5f6368">The {SHOWN_GROUPS} smallest of {len(frame)} {_e(of)} shown; '
                         "<code>cmp.table()</code> has them all.</p>")
    return "".join(parts)


def _recommendation_body(rec: Recommendation) -> list[str]:
    head = (f"Recommendation: {rec.choice}" if rec.choice != "indistinguishable" else
            f"Recommendation: the models are indistinguishable (leaning to {rec.preferred})")
    parts = [f'<p style="font-size:1.1em;font-weight:600;margin:0.3em 0">{_e(head)}</p>', _list(rec.reasons)]
    if isinstance(rec.table, pd.DataFrame) and not rec.table.empty:
        parts.append("<details><summary>Evidence: ELPD by observation (LOO) and by group (LOGO)</summary>"
                     f"{table_html(rec.table, index_name='pooling')}</details>")
    return parts


def recommendation_html(rec: Recommendation) -> str:
    """A recommendation in a notebook: the choice, its reasons and the evidence table."""
    return _wrap(_recommendation_body(rec))


def comparison_html(cmp: Comparison) -> str:
    """A comparison in a notebook: the model, the pooling factors and population estimates, the
    recommendation once made (:meth:`Comparison.recommend`: it runs PSIS-LOO and leave-one-group-out,
    which this display never starts), the per-group table (the smallest groups) and each fit's notes."""
    hier = cmp.hierarchical
    facts = [(k, v) for k, v in _model_facts(hier) if k != "pooling"]
    facts.insert(2, ("poolings", ", ".join(cmp.fits)))
    parts = [_heading("poolwise.Comparison", 3), _facts(facts), _pooling_section(cmp), _heading("Recommendation")]
    rec = cmp.recommendation
    if rec is not None:
        parts += _recommendation_body(rec)
    else:
        parts.append('<p style="color:#5f6368">Not made yet: <code>cmp.recommend()</code> compares the poolings by '
                     "PSIS-LOO and leave-one-group-out (with refits: seconds to minutes) and then shows here.</p>")
    parts.append(_groups_section(cmp))
    notes = [f"{name}: {n}" for name, f in cmp.fits.items() for n in f.notes()]
    if notes:
        parts += [_heading("Notes"), _list(notes)]
    return _wrap(parts)


def path_html(path: PoolingPath) -> str:
    """A pooling path in a notebook: the model and grid, p(τ | y)'s mean and SD, and each group's
    estimate at τ = 0 (pooled, when on the grid), at the grid point nearest the posterior mean of τ
    and at the largest τ (unpooled), the smallest groups first; the notes."""
    tau = path.tau_posterior().attrs
    facts = [("formula", str(path.formula)), ("term", str(path.term)), ("method", str(path.method)),
             ("groups", f"{path.n_groups} ({path.group_column})"),
             ("grid", f"{path.grid.size} values of τ from {number(path.grid[0])} to {number(path.grid[-1])}")]
    if np.isfinite(tau.get("mean", float("nan"))):
        facts.append(("τ | y", f"mean {number(tau['mean'])}, sd {number(tau['sd'])}"))
    cols = [0] if path.grid[0] == 0 else []
    if np.isfinite(tau.get("mean", float("nan"))):
        cols.append(int(np.argmin(np.abs(path.grid - tau["mean"]))))
    cols.append(path.grid.size - 1)
    cols = sorted(set(cols))
    order = np.argsort(path.n, kind="stable")
    frame = pd.DataFrame({"n": path.n[order]}, index=pd.Index([str(path.groups[j]) for j in order]))
    for g in cols:
        frame[f"τ = {number(path.grid[g])}"] = [f"{number(path.mean[g, j])} [{number(path.lo[g, j])}, "
                                                f"{number(path.hi[g, j])}]" for j in order]
    parts = [_heading("poolwise.PoolingPath", 3), _facts(facts),
             _heading(f"Group estimates along the path: mean [{path.prob:.0%} interval]"),
             table_html(frame, index_name=str(path.group_column), digits={"n": 0}, max_rows=SHOWN_GROUPS)]
    if path.n_groups > SHOWN_GROUPS:
        parts.append(f'<p style="color:#5f6368">The {SHOWN_GROUPS} smallest of {path.n_groups} groups shown; '
                     "<code>path.table()</code> has every group at every τ.</p>")
    if path.notes:
        parts += [_heading("Notes"), _list([str(n) for n in path.notes])]
    return _wrap(parts)
