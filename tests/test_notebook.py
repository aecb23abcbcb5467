"""poolwise in a Jupyter notebook: ``_repr_html_`` of Fit, Comparison and Recommendation, and
figures shown inline once.

The HTML is parsed back (its tags must nest, so no text from the data was taken as markup) and
its numbers compared with the frames they show.  ``tests/notebooks/quickstart.ipynb`` is run in
a real kernel (nbclient, ipykernel) started from this interpreter with this copy of poolwise.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import poolwise as pw
from poolwise.output import number

NOTEBOOK = Path(__file__).parent / "notebooks" / "quickstart.ipynb"
FORMULA = "reaction ~ night + (1 | driver)"
_VOID = {"br", "hr", "img", "meta", "link", "input", "col", "wbr"}


class _Page(HTMLParser):
    """Headings, tables (rows of cell texts) and list items of an HTML fragment; fails on tags
    that do not nest."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.headings: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.items: list[str] = []
        self.tags: list[str] = []
        self._text: list[str] | None = None
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed tags: {self.stack}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in _VOID:
            return
        self.stack.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        if tag in ("h3", "h4", "td", "th", "li"):
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if tag in ("h3", "h4", "td", "th", "li") and self._text is not None:
            text = "".join(self._text).strip()
            if tag in ("h3", "h4"):
                self.headings.append(text)
            elif tag == "li":
                self.items.append(text)
            else:
                self.tables[-1][-1].append(text)
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


def _table(page: _Page, first_header: str, *, after: int = 0) -> list[list[str]]:
    """The ``after``-th table whose header row starts with ``first_header``."""
    found = [t for t in page.tables if t and t[0] and t[0][0] == first_header]
    assert len(found) > after, f"no table headed {first_header!r}: {[t[0] for t in page.tables if t]}"
    return found[after]


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return pw.datasets.drivers(n_drivers=12, seed=1)


@pytest.fixture(scope="module")
def cmp(data: pd.DataFrame) -> pw.Comparison:
    return pw.compare(FORMULA, data, method="exact", chains=2, draws=200, seed=0)


def test_fit_html_shows_facts_and_summary(cmp: pw.Comparison) -> None:
    f = cmp.hierarchical
    page = _Page(f._repr_html_())
    assert page.headings[:2] == ["poolwise.Fit", "Posterior summary"]
    facts = {row[0]: row[1] for row in page.tables[0]}
    assert facts["formula"] == FORMULA
    assert facts["family"] == "gaussian" and facts["pooling"] == "hierarchical" and facts["method"] == "exact"
    assert facts["rows"] == f"{f.bound.n_obs:,}" and facts["groups"] == "12 (driver)"
    assert facts["draws"] == "2 chains × 200"
    summary = f.summary(groups=False)
    table = _table(page, "parameter")
    header, rows = table[0], {r[0]: r[1:] for r in table[1:]}
    assert list(rows) == list(summary.index)  # the parameters, not the group values
    assert not any("[" in name for name in rows)
    for name, cells in rows.items():
        shown = dict(zip(header[1:], cells))
        assert shown["mean"] == number(summary.loc[name, "mean"])
        assert shown["sd"] == number(summary.loc[name, "sd"])
        assert shown["2.5%"] == number(summary.loc[name, "hdi_2.5%"])
        assert shown["97.5%"] == number(summary.loc[name, "hdi_97.5%"])
        assert shown["ess_bulk"] == str(int(round(summary.loc[name, "ess_bulk"])))
        assert not any(h.startswith("mcse") for h in header)
    priors = _table(page, "parameter", after=1)  # folded under <details>
    assert [r[0] for r in priors[1:]] == list(f.priors.index)
    assert page.items == [str(n) for n in f.notes()]
    assert not f._pointwise_added  # no arrays of draws × rows were built to show it


def test_empirical_fit_html_names_the_estimator(data: pd.DataFrame) -> None:
    f = pw.fit(FORMULA, data, method="empirical")
    page = _Page(f._repr_html_())
    facts = dict(r for r in page.tables[0])
    assert facts["method"] == "empirical (REML)"
    assert facts["draws"].startswith("4 chains × 1000 (") and "made when first used" in facts["draws"]
    assert not f._pointwise_added


def test_empirical_fit_html_makes_nothing_its_summary_does_not(data: pd.DataFrame) -> None:
    """An empirical fit's draws are made on first use: showing the fit makes them only if its
    summary does (it shows the estimates), and builds no InferenceData the summary does not."""
    from poolwise.infer import DeferredDraws

    summarized = pw.fit(FORMULA, data, method="empirical")
    summarized.summary(groups=False)
    shown = pw.fit(FORMULA, data, method="empirical")
    assert isinstance(shown._draws, DeferredDraws)
    shown._repr_html_()
    assert isinstance(shown._draws, DeferredDraws) == isinstance(summarized._draws, DeferredDraws)
    assert (shown._idata is None) == (summarized._idata is None)
    assert not shown._pointwise_added


def test_comparison_html_is_cheap_and_shows_the_recommendation_once_made(cmp: pw.Comparison) -> None:
    before = dict(cmp._loo), dict(cmp._logo)
    page = _Page(cmp._repr_html_())
    assert (cmp._loo, cmp._logo) == before  # no PSIS-LOO, no leave-one-group-out started by the display
    assert not any(f._pointwise_added for f in cmp.fits.values())  # nor arrays of draws × rows
    assert page.headings[0] == "poolwise.Comparison"
    assert "Pooling factors (hierarchical)" in page.headings and "Recommendation" in page.headings
    pf = cmp.pooling_factors()
    lam = pf["lambda"].to_numpy()
    head = _table(page, "term")
    row = dict(zip(head[0], head[1]))
    assert row["term"] == "1|driver" and row["groups"] == "12"
    assert row["λ min"] == number(lam.min(), 2) and row["λ max"] == number(lam.max(), 2)
    assert row["batch λ"] == number(pf.attrs["batch"]["1|driver"], 2)
    pop = cmp.population()
    assert row["τ [95%]"] == f"{number(pop['tau'])} [{number(pop['tau_lo'])}, {number(pop['tau_hi'])}]"
    groups = _table(page, "driver")
    table = cmp.table()
    assert groups[0] == ["driver", "n", "pooled", "unpooled", "hierarchical", "λ"]
    assert [r[0] for r in groups[1:]] == [str(x) for x in table.index]  # 12 groups: all shown, smallest first
    for r in groups[1:]:
        t = table.loc[r[0]]
        assert r[1] == str(int(t["n"]))
        hier = f"{number(t['hierarchical_mean'])} [{number(t['hierarchical_lo'])}, {number(t['hierarchical_hi'])}]"
        assert r[4] == hier
        assert r[5] == number(t["lambda"], 2)

    rec = cmp.recommend()
    page = _Page(cmp._repr_html_())
    assert cmp.recommendation is rec
    text = " ".join(page.items)
    for reason in rec.reasons:
        assert reason in text
    alone = _Page(rec._repr_html_())
    assert alone.items == rec.reasons
    assert [r[0] for r in _table(alone, "pooling")[1:]] == list(rec.table.index)


def test_html_escapes_what_comes_from_the_data(data: pd.DataFrame) -> None:
    bad = data.copy()
    labels = {lab: f'<script>alert("{lab}")</script>&amp;<b>' for lab in sorted(bad["driver"].unique())[:3]}
    bad["driver"] = bad["driver"].map(lambda x: labels.get(x, x))
    bad = bad.rename(columns={"driver": "dr<i>", "night": "<b>night&day"})
    c = pw.compare("reaction ~ `<b>night&day` + (1 | `dr<i>`)", bad, method="exact", chains=2, draws=100, seed=0)
    for html in (c._repr_html_(), c.hierarchical._repr_html_()):
        page = _Page(html)  # tags nest: nothing from the data became a tag
        assert not {"script", "b", "i"} & set(page.tags)
        assert "<script>" not in html
    page = _Page(c._repr_html_())
    groups = _table(page, "dr<i>")  # column names and labels read back exactly as given
    assert set(labels.values()) <= {r[0] for r in groups[1:]}
    page = _Page(c.hierarchical._repr_html_())
    assert "<b>night&day" in [r[0] for r in _table(page, "parameter")]
    assert dict(r for r in page.tables[0])["groups"] == "12 (dr<i>)"


def test_path_html_shows_the_groups_along_the_path(data: pd.DataFrame) -> None:
    path = pw.pooling_path(FORMULA, data)
    page = _Page(path._repr_html_())
    assert page.headings[0] == "poolwise.PoolingPath"
    facts = {row[0]: row[1] for row in page.tables[0]}
    tau = path.tau_posterior().attrs
    assert facts["τ | y"] == f"mean {number(tau['mean'])}, sd {number(tau['sd'])}"
    g = int(abs(path.grid - tau["mean"]).argmin())
    table = _table(page, "driver")
    assert table[0] == ["driver", "n", "τ = 0", f"τ = {number(path.grid[g])}", f"τ = {number(path.grid[-1])}"]
    sizes = [int(r[1]) for r in table[1:]]
    assert sizes == sorted(sizes) and len(sizes) == path.n_groups  # 12 groups: all, the smallest first
    for r in table[1:]:
        j = path.groups.index(r[0])
        assert int(path.n[j]) == int(r[1])
        for cell, k in zip(r[2:], (0, g, path.grid.size - 1)):
            assert cell == f"{number(path.mean[k, j])} [{number(path.lo[k, j])}, {number(path.hi[k, j])}]"
    assert page.items == list(path.notes)


def test_show_inline_does_nothing_outside_a_kernel() -> None:
    from poolwise.plots._inline import show_inline

    assert show_inline() is False


def _png_size(b64: str) -> tuple[int, int]:
    raw = base64.b64decode(b64)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", raw[16:24])
    return width, height


def _kernel(tmp_path: Path) -> Any:
    """A kernel manager for this interpreter, with this copy of poolwise first on its path; its
    kernel spec, connection file and IPython profile in ``tmp_path`` (nothing written elsewhere)."""
    pytest.importorskip("ipykernel")
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    src = str(Path(pw.__file__).resolve().parents[1])
    path = os.pathsep.join([src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    spec = tmp_path / "kernels" / "poolwise-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "poolwise test", "language": "python",
        "env": {"PYTHONPATH": path, "IPYTHONDIR": str(tmp_path / "ipython"),
                "MPLBACKEND": "module://matplotlib_inline.backend_inline"},
    }))
    return KernelManager(kernel_name="poolwise-test", connection_file=str(tmp_path / "connection.json"),
                         kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))


def test_quickstart_notebook_runs_and_shows_html_and_figures(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, km=_kernel(tmp_path), timeout=300, startup_timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    for c in code:
        assert not [o for o in c.outputs if o.output_type == "error"]
        assert not [o for o in c.outputs if o.output_type == "stream" and o.name == "stderr"
                    and "Traceback" in o.text]

    def outputs(has: str) -> list[Any]:
        (cell,) = [c for c in code if has in c.source or c.source == has.strip("=")]
        return cell.outputs

    def html_of(has: str) -> tuple[_Page, str]:
        out = [o for o in outputs(has) if "text/html" in o.get("data", {})]
        assert len(out) == 1, outputs(has)
        return _Page(out[0]["data"]["text/html"]), out[0]["data"]["text/html"]

    def images_of(has: str) -> list[tuple[int, int]]:
        return [_png_size(o["data"]["image/png"]) for o in outputs(has) if "image/png" in o.get("data", {})]

    page, _ = html_of("pw.fit(")
    assert page.headings[:2] == ["poolwise.Fit", "Posterior summary"]
    assert [r[0] for r in _table(page, "parameter")[1:]] == ["Intercept", "night", "sigma", "sd(Intercept|driver)"]
    assert html_of("fit.pooling_factors()")[0].tables  # a DataFrame renders as pandas renders it
    page, text = html_of("pw.compare(")
    assert page.headings[0] == "poolwise.Comparison"
    assert {"Pooling factors (hierarchical)", "Recommendation"} <= set(page.headings)
    assert any(h.startswith("Group intercepts") for h in page.headings)
    assert "Not made yet" in text
    # each figure once: the returned Figure by its formatter, nothing more at the cell's end
    (size,) = images_of("cmp.plot()")
    assert size[0] > 400 and size[1] > 200
    assert len(images_of("plots.plot_shrinkage(cmp)")) == 1  # pyplot imported: still once
    rec, _ = html_of("cmp.recommend()")
    assert rec.items and not rec.headings
    again, text = html_of("=cmp=")  # the cell that is only ``cmp``, after recommend()
    assert set(rec.items) <= set(again.items) and "Not made yet" not in text
