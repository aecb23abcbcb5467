"""Figures are tested through the numbers they draw, then saved to check they render."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import _hand
import poolwise as pw
from poolwise import plots
from poolwise.compare import POOLINGS, Comparison


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


# -- any model: hand-made draws (no sampler runs) ---------------------------------------------

C, D = 2, 30


def _frame(seed: int = 0, J: int = 6, per: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    levels = [f"g{j}" for j in range(J)]
    g = np.repeat(levels, np.arange(per, per + J))
    u = dict(zip(levels, rng.normal(size=J)))
    x = rng.normal(size=g.size)
    return pd.DataFrame({"y": rng.normal(size=g.size) + x, "x": x, "g": g, "u": [u[v] for v in g],
                         "yb": rng.integers(0, 2, g.size), "c": rng.poisson(2.0, g.size)})


def hand_comparison(formula: str, df: pd.DataFrame, family: str = "gaussian", seed: int = 0) -> Comparison:
    """Three Fits of ``formula`` from synthetic draws (see ``_hand.hand_comparison``)."""
    return _hand.hand_comparison(formula, df, family, seed, C=C, D=D)


@pytest.fixture(scope="module")
def slopes() -> Comparison:
    return hand_comparison("y ~ x + (1 + x | g)", _frame(1))


def test_one_row_of_three_panels_per_term(slopes: Comparison) -> None:
    for term in slopes.terms:
        t = slopes.table(term=term)
        d = plots.comparison_data(slopes, term=term)
        assert d["term"] == term and d["group_column"] == "g"
        for name in POOLINGS:
            np.testing.assert_array_equal(d["poolings"][name]["mean"], t[f"{name}_mean"].to_numpy())
        np.testing.assert_array_equal(d["regression"], t["regression"].to_numpy())
        pop = slopes.population(term)
        assert d["population"] == {"mean": pop["mean"], "tau": pop["tau"]}
    fig = plots.plot_comparison(slopes)
    axes = fig.get_axes()
    assert len(axes) == 6
    assert [ax.get_title().split(":")[0] for ax in axes] == list(POOLINGS) * 2
    assert axes[0].get_ylim() == axes[1].get_ylim() == axes[2].get_ylim()
    assert axes[3].get_ylim() == axes[4].get_ylim() == axes[5].get_ylim()
    assert axes[0].get_ylabel() == "y: group intercept"
    assert axes[3].get_ylabel() == "y: group slope of x"
    lo, hi = axes[3].get_ylim()
    t = slopes.table(term="x|g")
    assert t["unpooled_lo"].min() >= lo and t["unpooled_hi"].max() <= hi
    # one term only: the one-row figure
    assert len(plots.plot_comparison(slopes, terms="x|g").get_axes()) == 3
    # given axes: a 2 × 3 grid or a flat list of 6
    from matplotlib.figure import Figure

    own = Figure()
    assert plots.plot_comparison(slopes, axes=own.subplots(2, 3)) is own
    with pytest.raises(ValueError, match="needs 6 axes"):
        plots.plot_comparison(slopes, axes=Figure().subplots(1, 3))
    path_fig = plots.plot_comparison(slopes, max_groups=3)
    assert "at most 3 groups a row" in path_fig.get_suptitle()


def test_group_level_predictor_band_around_the_regression() -> None:
    cmp = hand_comparison("y ~ x + u + (1 | g)", _frame(2))
    t = cmp.table()
    d = plots.comparison_data(cmp)
    assert d["group_level"] == ["u"]
    np.testing.assert_array_equal(d["regression"], t["regression"].to_numpy())
    assert np.ptp(d["regression"]) > 0
    fig = plots.plot_comparison(cmp)
    pooled_ax, _, hier_ax = fig.get_axes()
    labels = hier_ax.get_legend_handles_labels()[1]
    assert "population: regression ± 2τ" in labels and "population mean" not in labels
    tau = d["population"]["tau"]
    from matplotlib.patches import Rectangle

    bottoms = sorted(float(p.get_y()) for p in hier_ax.patches if isinstance(p, Rectangle))  # regression − 2τ
    np.testing.assert_allclose(bottoms, np.sort(d["regression"] - 2 * tau))
    assert "regression on u" in hier_ax.get_title()
    assert "regression on u" in fig.get_suptitle()
    # the pooled estimates differ by group: marked group by group, not one dashed line
    assert "regression on u" in pooled_ax.get_title()


@pytest.mark.parametrize(("family", "formula", "scale"), [
    ("bernoulli", "yb ~ x + (1 | g)", "(logit scale)"),
    ("poisson", "c ~ x + (1 | g)", "(log scale)"),
])
def test_non_gaussian_axis_says_the_scale(family: str, formula: str, scale: str) -> None:
    cmp = hand_comparison(formula, _frame(3), family=family)
    d = plots.comparison_data(cmp)
    assert d["link"] in ("logit", "log")
    fig = plots.plot_comparison(cmp)
    assert fig.get_axes()[0].get_ylabel() == f"{formula.split(' ')[0]}: group intercept {scale}"
