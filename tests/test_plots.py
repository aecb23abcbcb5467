"""Figures are tested through the numbers they draw, then saved to check they render."""

from __future__ import annotations

import numpy as np
import pytest

import poolwise as pw
from poolwise import plots
from poolwise.compare import POOLINGS


@pytest.fixture(scope="module")
def cmp() -> pw.Comparison:
    df = pw.datasets.drivers(40, seed=1)
    return pw.compare("reaction ~ night + (1 | driver)", df, seed=0, draws=200)


@pytest.fixture(scope="module")
def big_cmp() -> pw.Comparison:
    df = pw.datasets.drivers(90, seed=2)
    return pw.compare("reaction ~ 1 + (1 | driver)", df, seed=0, draws=100, chains=2)


def test_comparison_data_is_the_table(cmp: pw.Comparison) -> None:
    table = cmp.table()
    d = plots.comparison_data(cmp)
    assert list(d["poolings"]) == list(POOLINGS)
    assert d["n_groups"] == d["n_shown"] == len(table)
    assert np.all(np.diff(table["n"].to_numpy()) >= 0)  # ordered by size
    for name in POOLINGS:
        p = d["poolings"][name]
        assert p["groups"] == [str(g) for g in table.index]
        np.testing.assert_array_equal(p["n"], table["n"].to_numpy())
        for col in ("mean", "lo", "hi"):
            np.testing.assert_array_equal(p[col], table[f"{name}_{col}"].to_numpy())
    pop = cmp.population()
    assert d["population"] == {"mean": pop["mean"], "tau": pop["tau"]}
    assert d["pooled_estimate"] == table["pooled_mean"].iloc[0]


def test_figure_has_three_panels_on_one_scale(cmp: pw.Comparison) -> None:
    fig = plots.plot_comparison(cmp)
    axes = fig.get_axes()
    assert len(axes) == 3
    assert axes[0].get_ylim() == axes[1].get_ylim() == axes[2].get_ylim()
    assert [ax.get_title().split(":")[0] for ax in axes] == list(POOLINGS)
    # every group's interval lies inside the shared limits
    lo, hi = axes[0].get_ylim()
    t = cmp.table()
    for name in POOLINGS:
        assert t[f"{name}_lo"].min() >= lo and t[f"{name}_hi"].max() <= hi


def test_comparison_plot_method_and_given_axes(cmp: pw.Comparison) -> None:
    from matplotlib.figure import Figure

    fig = cmp.plot()
    assert isinstance(fig, Figure)
    own = Figure()
    axs = own.subplots(1, 3)
    assert plots.plot_comparison(cmp, axes=axs) is own
    with pytest.raises(ValueError):
        plots.plot_comparison(cmp, axes=axs[:2])


@pytest.mark.parametrize("ext", ["png", "svg"])
def test_figures_save(cmp: pw.Comparison, tmp_path, ext: str) -> None:
    for name, fig in (("cmp", plots.plot_comparison(cmp)), ("pf", plots.plot_pooling_factors(cmp))):
        path = tmp_path / f"{name}.{ext}"
        fig.savefig(path)
        assert path.stat().st_size > 1000


def test_max_groups_subset(big_cmp: pw.Comparison) -> None:
    table = big_cmp.table()
    assert len(table) == 90
    d = plots.comparison_data(big_cmp, max_groups=30)
    assert d["n_shown"] == 30 and d["n_groups"] == 90
    groups = d["poolings"]["hierarchical"]["groups"]
    assert groups[0] == str(table.index[0]) and groups[-1] == str(table.index[-1])  # both extremes
    sub = table.loc[groups]
    np.testing.assert_array_equal(d["poolings"]["unpooled"]["mean"], sub["unpooled_mean"].to_numpy())
    assert np.all(np.diff(d["poolings"]["pooled"]["n"]) >= 0)
    fig = plots.plot_comparison(big_cmp, max_groups=30)
    assert "showing 30 of 90 groups" in fig.get_suptitle()
    assert "showing" not in plots.plot_comparison(big_cmp, max_groups=100).get_suptitle()


def test_pooling_factor_data(cmp: pw.Comparison) -> None:
    pf = cmp.hierarchical.pooling_factors().sort_values("n", kind="stable")
    for obj in (cmp, cmp.hierarchical):
        d = plots.pooling_factor_data(obj)
        np.testing.assert_array_equal(d["lambda"], pf["lambda"].to_numpy())
        np.testing.assert_array_equal(d["lo"], pf["lambda_lo"].to_numpy())
        np.testing.assert_array_equal(d["n"], pf["n"].to_numpy())
    fig = plots.plot_pooling_factors(cmp.hierarchical)
    (ax,) = fig.get_axes()
    assert ax.get_xscale() == "log"
