"""One self-contained HTML report of a :class:`~poolwise.compare.Comparison`.

:func:`write_report` lays out what the comparison already holds: the recommendation with its
reasons and numbers at the top, the figures of :mod:`poolwise.plots` inline as SVG, the per-group, LOO
and leave-one-group-out tables, the population estimates, the model, the priors of each fit, a
summary of the data and the sampling diagnostics.  It computes nothing the Comparison lacks.
The file loads nothing: no scripts, no remote fonts, style sheets or images; all text is
escaped; it fits a laptop screen (a centred column, figures scaled to its width) and prints
cleanly (figures and tables are not split across pages).
"""

from __future__ import annotations

import html
import io
import math
import os
import re
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import plots
from .compare import POOLINGS, Comparison
from .plots.checks import divergence_lines
from .errors import DataError
from .output import check_output, number, write_text

if TYPE_CHECKING:  # pragma: no cover - imported for the type checker only
    from matplotlib.figure import Figure

__all__ = ["write_report", "render_report"]

#: groups listed in the report's per-group table (the smallest first); the rest are summarized
MAX_GROUP_ROWS = 60

_CSS = """
:root { --ink: #1d1d1f; --muted: #5f6368; --line: #d9dce1; --band: #f5f6f8; --accent: #2ca02c; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; color: var(--ink); background: #fff;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 1.2rem 1.2rem 3rem; }
h1 { font-size: 1.45rem; margin: 0.2rem 0 0.3rem; }
h2 { font-size: 1.18rem; margin: 2rem 0 0.6rem; padding-bottom: 0.2rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin: 1.2rem 0 0.4rem; }
p, li { max-width: 80ch; }
.muted { color: var(--muted); }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.92em;
       background: var(--band); padding: 0 0.25em; border-radius: 3px; }
nav { font-size: 0.9rem; margin: 0.4rem 0 1rem; }
nav a { color: var(--muted); margin-right: 0.9rem; text-decoration: none; white-space: nowrap; }
nav a:hover { text-decoration: underline; }
#recommendation { border: 2px solid var(--accent); border-radius: 8px; padding: 0.8rem 1.1rem;
                  background: #f3faf3; margin: 0.8rem 0 1rem; }
#recommendation .choice { font-size: 1.25rem; font-weight: 650; margin: 0 0 0.4rem; }
#recommendation ul { margin: 0.3rem 0 0.6rem; padding-left: 1.2rem; }
figure { margin: 1rem 0; }
figure svg { display: block; width: 100%; height: auto; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 0.88rem; margin-top: 0.3rem; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.86rem; margin: 0.4rem 0 0.6rem; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 0.2rem 0; }
th, td { padding: 0.22rem 0.55rem; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--band); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fbfbfc; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 0 1.5rem; }
footer { margin-top: 2.5rem; color: var(--muted); font-size: 0.82rem; }
@media print {
  @page { size: A4; margin: 14mm; }
  body { font-size: 10pt; }
  main { max-width: none; padding: 0; }
  nav { display: none; }
  h2 { break-after: avoid; page-break-after: avoid; }
  figure, table, .keep, #recommendation { break-inside: avoid; page-break-inside: avoid; }
  .scroll { overflow: visible; }
  tbody tr:nth-child(even) td { background: none; }
  a { color: inherit; text-decoration: none; }
}
"""


def write_report(cmp: Comparison, path: str | os.PathLike[str], *, overwrite: bool = False,
                 max_groups: int = MAX_GROUP_ROWS) -> str:
    """Write a self-contained HTML report of a comparison.

    Parameters
    ----------
    cmp
        A :class:`~poolwise.compare.Comparison`.
    path
        The HTML file to write (its folder is created when missing).
    overwrite
        Replace the file when it exists already.
    max_groups
        Groups listed in the per-group tables (the smallest first; the report says how many
        are left out).

    Returns
    -------
    str
        The path written.

    Raises
    ------
    DataError
        When ``path`` exists and ``overwrite`` is not set, or is a folder.

    See Also
    --------
    render_report : the HTML text itself.

    Examples
    --------
    >>> import poolwise as pw, tempfile, os
    >>> cmp = pw.compare("reaction ~ 1 + (1 | driver)", pw.datasets.drivers(8, seed=2), draws=100)
    >>> out = write_report(cmp, os.path.join(tempfile.mkdtemp(), "report.html"))
    >>> open(out).read(15)
    '<!DOCTYPE html>'
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DataError(f"'{path}' is a folder, not a file.", hint="Give the report a file name such as report.html.")
    check_output(path, overwrite=overwrite)  # before the work of rendering
    return write_text(path, render_report(cmp, max_groups=max_groups), overwrite=overwrite)


def render_report(cmp: Comparison, *, max_groups: int = MAX_GROUP_ROWS) -> str:
    """The report of :func:`write_report` as one HTML string."""
    from . import __version__

    hier = cmp.hierarchical
    rec = cmp.recommend()
    title = f"poolwise report: {hier.spec.formula}"
    sections = [
        ("model-figure", "Three ways of pooling", _section_comparison(cmp)),
        ("groups", "Per-group estimates", _section_groups(cmp, max_groups)),
        ("prediction", "Predictive comparison", _section_prediction(cmp)),
        ("ppc", "Posterior predictive check", _section_ppc(cmp)),
        ("population", "Population estimates", _section_population(cmp)),
        ("model", "Model", _section_model(cmp)),
        ("priors", "Priors", _section_priors(cmp)),
        ("data", "Data", _section_data(cmp)),
        ("diagnostics", "Diagnostics", _section_diagnostics(cmp)),
    ]
    nav = "".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name, _ in sections)
    body = "\n".join(f'<section id="{sid}">\n<h2>{_e(name)}</h2>\n{content}\n</section>'
                     for sid, name, content in sections)
    summary = cmp.data_summary()
    groups = ", ".join(f"{g['n_groups']} {g['factor']} groups" for g in summary["groups"])
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<header>
<h1>{_e(title)}</h1>
<p class="muted">{_e(hier.spec.fam.name)} family, {summary['n_obs']} rows, {_e(groups)}; pooled, unpooled and
hierarchical fits compared (method {_e(hier.method)}).</p>
</header>
{_section_recommendation(rec)}
<nav aria-label="sections">{nav}</nav>
{body}
<footer>Written by poolwise {_e(__version__)}. A self-contained file: it loads nothing from elsewhere.</footer>
</main>
</body>
</html>
"""


# -- sections ---------------------------------------------------------------------------------


def _section_recommendation(rec: Any) -> str:
    head = str(rec).splitlines()[0]
    reasons = "".join(f"<li>{_e(r)}</li>" for r in rec.reasons)
    t = rec.table.copy()
    t["ruled_out"] = t["ruled_out"].map({True: "yes", False: "no"})
    t = t.rename(columns={"d_loo": "ΔELPD loo", "dse_loo": "SE Δ loo", "d_logo": "ΔELPD logo",
                          "dse_logo": "SE Δ logo", "ruled_out": "ruled out"})
    table = _frame_html(t, index_name="pooling", caption="The evidence: ELPD and ΔELPD, each pooling's ELPD minus "
                        "the best's with its SE (higher ELPD is better; Δ is 0 for the best, negative for the others)")
    return (f'<section id="recommendation" class="keep">\n<p class="choice">{_e(head)}</p>\n<ul>{reasons}</ul>\n'
            f'<div class="scroll">{table}</div>\n</section>')


def _section_comparison(cmp: Comparison) -> str:
    parts = [_figure(cmp.plot(), "Each group's estimate under each pooling, with its 95% interval; the hierarchical "
                     "panel shows the learned population distribution.")]
    for term in cmp.terms:
        parts.append(_figure(plots.plot_shrinkage(cmp, term=term),
                             f"Shrinkage of {term}: each arrow goes from a group's unpooled estimate to its "
                             "hierarchical one, placed by the group's size (by group when all sizes are equal)."))
    several = len(cmp.factors) > 1
    parts.append(_figure(plots.plot_pooling_factors(cmp),
                         "Pooling factor λ of each group against its size"
                         + (", one panel per grouping factor" if several else "")
                         + ": 0 keeps the group's own estimate, 1 takes the population value; the dashed line is "
                         "the batch pooling factor (Gelman & Pardoe)."))
    return "\n".join(parts)


def _section_groups(cmp: Comparison, max_groups: int) -> str:
    parts = []
    for term in cmp.terms:
        t = cmp.table(term=term)
        n_all = len(t)
        shown = t.head(max(1, int(max_groups)))
        cols: dict[str, list[str]] = {"n": [str(int(v)) for v in shown["n"]]}
        for p in POOLINGS:
            cols[p] = [f"{number(m)} [{number(lo)}, {number(hi)}]" for m, lo, hi in
                       zip(shown[f"{p}_mean"], shown[f"{p}_lo"], shown[f"{p}_hi"])]
        cols["λ [95%]"] = [f"{number(m, 2)} [{number(lo, 2)}, {number(hi, 2)}]" for m, lo, hi in
                          zip(shown["lambda"], shown["lambda_lo"], shown["lambda_hi"])]
        cols["shrinkage"] = [number(v, 2) for v in shown["shrinkage"]]
        if t.attrs.get("group_level"):
            cols["regression"] = [number(v) for v in shown["regression"]]
        frame = pd.DataFrame(cols, index=shown.index)
        note = (f"The {len(shown)} smallest of {n_all} groups; all of them in <code>cmp.table()</code> "
                "(CLI: <code>--out DIR</code> writes table.csv)." if len(shown) < n_all
                else f"All {n_all} groups, smallest first.")
        batch = t.attrs.get("batch_pooling")
        batch_text = f" Batch pooling factor (Gelman &amp; Pardoe): {_e(number(batch, 2))}." if batch is not None else ""
        parts.append(f"<h3>{_e(term)}</h3>\n<p class=\"muted\">Posterior mean [95% interval] of each group's "
                     f"coefficient; λ is the hierarchical pooling factor, shrinkage the observed fraction of the "
                     f"way from the unpooled to the pooled estimate. {note}{batch_text}</p>\n"
                     f'<div class="scroll">{_frame_html(frame, index_name=str(t.index.name or "group"), raw=True)}'
                     "</div>")
    return "\n".join(parts)


def _section_prediction(cmp: Comparison) -> str:
    loo = cmp.loo()
    logo = cmp.logo()
    how = logo.attrs.get("how", {})
    logo_shown = logo.copy()
    parts = [
        _figure(plots.plot_loo(cmp, criteria=("loo", "logo")),
                "ELPD ± SE of each pooling (circles) and the difference to the best ± its SE (triangles); higher "
                "is better."),
        '<div class="scroll">' + _frame_html(loo, index_name="pooling", caption="PSIS-LOO over observations "
                                             "(best first): predicting a new observation of a known group",
                                             digits={"n_bad_k": 0, "n_refits": 0, "pareto_k_max": 3}) + "</div>",
        '<div class="scroll">' + _frame_html(logo_shown, index_name="pooling", caption="Leave-one-group-out "
                                             "(best first): predicting a group the model has not seen",
                                             digits={"n_bad_k": 0, "n_refits": 0, "pareto_k_max": 3}) + "</div>",
    ]
    if how:
        said = (_e(next(iter(how.values()))) + " (each pooling)" if len(set(how.values())) == 1
                else "; ".join(f"{_e(k)}: {_e(v)}" for k, v in how.items()))
        parts.append(f"<p class=\"muted\">How leave-one-group-out was computed: {said}.</p>")
    return "\n".join(parts)


def _section_ppc(cmp: Comparison) -> str:
    return _figure(plots.plot_ppc(cmp), "The observed outcome (grey) against 50 data sets replicated from each "
                   "fit's posterior predictive distribution.")


def _section_population(cmp: Comparison) -> str:
    rows = []
    for term in cmp.terms:
        pop = cmp.population(term)
        for key in ("mean", "tau", "sigma"):
            if key in pop:
                rows.append({"term": term, "quantity": {"mean": "population mean", "tau": "population SD τ",
                                                        "sigma": "within-group SD σ"}[key],
                             "mean": pop[key], "2.5%": pop[f"{key}_lo"], "97.5%": pop[f"{key}_hi"]})
    frame = pd.DataFrame(rows).set_index("term") if rows else pd.DataFrame()
    note = ("<p class=\"muted\">The hierarchical model's population distribution of each group term: posterior "
            "means with 95% intervals. With group-level predictors the mean is the term's value where they are 0 "
            "(each group's population value is its regression column above).</p>")
    return note + '<div class="scroll">' + _frame_html(frame, index_name="term") + "</div>"


def _section_model(cmp: Comparison) -> str:
    hier = cmp.hierarchical
    info = [("formula", hier.spec.formula), ("family", str(hier.spec.fam)), ("group terms", ", ".join(cmp.terms))]
    dl = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in info)
    rows = []
    diag = cmp.diagnostics().attrs["fits"]
    for name, f in cmp.fits.items():
        settings = f.priors[f.priors["source"] == "pooling"]
        sigma = "; ".join(f"{k} = {v}" for k, v in settings["prior"].items()) or "learned (priors below)"
        rows.append({"pooling": name, "method": f.method, "draws": f"{f.n_chains} × {f.n_draws}",
                     "sampler": diag[name]["sampler"], "group SDs": sigma})
    table = _frame_html(pd.DataFrame(rows).set_index("pooling"), index_name="pooling", raw=False,
                        caption="The three fits: one model, the population SD τ set three ways")
    return (f'<div class="scroll"><table class="keep"><tbody>{dl}</tbody></table></div>\n'
            f'<div class="scroll">{table}</div>')


def _section_priors(cmp: Comparison) -> str:
    cols: dict[str, dict[str, str]] = {}
    for name, f in cmp.fits.items():
        cols[name] = {str(k): f"{row['prior']} ({row['source']})" for k, row in f.priors.iterrows()}
    params = list(dict.fromkeys(k for c in cols.values() for k in c))
    frame = pd.DataFrame({name: [c.get(k, "–") for k in params] for name, c in cols.items()},
                         index=pd.Index(params, name="parameter"))
    return ("<p class=\"muted\">Every prior used by each fit (<code>fit.priors</code>), with its source in brackets: "
            "<code>default</code> (weakly informative, scaled to the data) or <code>user</code>; settings fixed by the "
            "pooling have the source <code>pooling</code>.</p>\n"
            + '<div class="scroll">' + _frame_html(frame, index_name="parameter") + "</div>")


def _section_data(cmp: Comparison) -> str:
    s = cmp.data_summary()
    groups = pd.DataFrame(s["groups"]).set_index("factor").rename(columns={
        "n_groups": "groups", "size_min": "size min", "size_median": "size median", "size_max": "size max"})
    outcome = pd.DataFrame([s["outcome_summary"]], index=pd.Index([s["outcome"]], name="outcome"))
    return (f"<p>{s['n_obs']} rows.</p>\n"
            + '<div class="grid2"><div class="scroll">'
            + _frame_html(groups, index_name="grouping factor", caption="Groups and group sizes (rows)",
                          digits={"groups": 0, "size min": 0, "size max": 0})
            + '</div><div class="scroll">'
            + _frame_html(outcome, index_name="outcome", caption="The outcome") + "</div></div>")


def _section_diagnostics(cmp: Comparison) -> str:
    t = cmp.diagnostics()
    fits = t.attrs["fits"]
    # divergent transitions only where there are some; why none can occur, once
    lines = "".join(f"<li>{_e(line)}.</li>" for line in divergence_lines(fits))
    notes = "".join(f"<li><b>{_e(name)}</b>: {_e(n)}</li>" for name, f in cmp.fits.items() for n in f.notes())
    frame = t.copy()
    frame["sampled"] = frame["sampled"].map({True: "yes", False: "no (point estimate)"})
    frame = frame.set_index("pooling")
    table = _frame_html(frame, index_name="pooling", caption="R-hat and ESS per parameter (group values: the "
                        "largest R-hat and smallest ESS over the groups)",
                        digits={"n": 0, "ess_bulk": 0, "ess_tail": 0})
    return (_figure(plots.plot_diagnostics(cmp), "R-hat (should be below 1.01) and bulk/tail ESS of each "
                    "parameter of each fit.")
            + (f"\n<ul>{lines}</ul>\n" if lines else "\n")
            + (f"<h3>Notes of the fits</h3><ul>{notes}</ul>\n" if notes else "")
            + f'<div class="scroll">{table}</div>')


# -- pieces -----------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """Escaped text."""
    return html.escape(str(value), quote=True)


_NUM = ' class="num"'


def _frame_html(frame: pd.DataFrame, *, index_name: str, caption: str | None = None, raw: bool = False,
                digits: dict[str, int] | None = None) -> str:
    """A table of ``frame``: numbers right-aligned and rounded, every cell escaped.  ``raw``:
    the cells are strings already (still escaped)."""
    cols = [str(c) for c in frame.columns]
    right = [raw or _numeric(frame[c]) for c in frame.columns]
    head = f'<th scope="col">{_e(index_name)}</th>' + "".join(
        f'<th scope="col"{_NUM if r else ""}>{_e(c)}</th>' for c, r in zip(cols, right))
    body = []
    for idx, row in zip(frame.index, frame.itertuples(index=False)):
        cells = [f'<th scope="row">{_e(idx)}</th>']
        for c, v, r in zip(cols, row, right):
            numeric = not raw and isinstance(v, (int, float)) and not isinstance(v, bool)
            d = (digits or {}).get(c, 4)
            if numeric:
                text = str(int(v)) if d == 0 and math.isfinite(float(v)) else number(v, d)
                cells.append(f'<td class="num">{_e(text)}</td>')
            else:
                cells.append(f"<td{_NUM if r else ''}>{_e(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    return f'<table>{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _numeric(col: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col))


def _figure(fig: Figure, caption: str) -> str:
    """A ``<figure>`` with the figure inline as SVG and its caption."""
    return f'<figure class="keep">{_svg_text(fig)}<figcaption>{_e(caption)}</figcaption></figure>'


def _svg_text(fig: Figure) -> str:
    """The figure as an inline ``<svg>`` element: no XML prolog, comments or metadata, and its
    ids (clip paths, glyphs) prefixed by a hash of the figure so that several figures can share
    one document."""
    import hashlib

    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "poolwise", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    prefix = "f" + hashlib.sha1(text.encode()).hexdigest()[:8] + "-"
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m.group(1)})", text)
    text = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}{m.group(1)}"', text)
    text = re.sub(r"\n\s*\n", "\n", text)
    # scaled to the column's width, never past the figure's own size (1 pt = 4/3 CSS px)
    m = re.match(r'<svg[^>]*\bwidth="([0-9.]+)pt"', text)
    if m:
        text = text.replace("<svg", f'<svg style="max-width: {float(m.group(1)) * 4 / 3:.0f}px"', 1)
    return text.strip()

