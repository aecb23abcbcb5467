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


# -- shrinkage, posterior predictive check, LOO, diagnostics ----------------------------------


def test_shrinkage_arrows_go_from_unpooled_to_hierarchical(cmp: pw.Comparison) -> None:
    from matplotlib.text import Annotation

    t = cmp.table()
    d = plots.shrinkage_data(cmp)
    np.testing.assert_array_equal(d["start"], t["unpooled_mean"].to_numpy())
    np.testing.assert_array_equal(d["end"], t["hierarchical_mean"].to_numpy())
    np.testing.assert_array_equal(d["n"], t["n"].to_numpy())
    assert d["groups"] == [str(g) for g in t.index]
    assert d["log_x"] == (t["n"].max() / t["n"].min() >= 10)
    # the x position is the group size, ties spread a little (less than halfway to a neighbour size)
    assert np.all(np.abs(np.log(d["x"]) - np.log(d["n"])) < 0.35)
    assert not d["by_group"] and d["population"]["mean"] == cmp.population()["mean"]
    fig = plots.plot_shrinkage(cmp)
    (ax,) = fig.get_axes()
    arrows = [a for a in ax.texts if isinstance(a, Annotation)]
    assert len(arrows) == len(t)
    np.testing.assert_allclose([a.xyann for a in arrows], np.column_stack([d["x"], d["start"]]))  # tails
    np.testing.assert_allclose([a.xy for a in arrows], np.column_stack([d["x"], d["end"]]))  # heads
    assert ax.get_xscale() == ("log" if d["log_x"] else "linear")
    mean_lines = [ln for ln in ax.get_lines() if np.allclose(ln.get_ydata(), d["population"]["mean"])]
    assert mean_lines, "a horizontal line at the population mean"
    # a subset, evenly spread over sizes
    few = plots.shrinkage_data(cmp, max_groups=5)
    assert few["n_shown"] == 5 and few["groups"][0] == d["groups"][0] and few["groups"][-1] == d["groups"][-1]
    with pytest.raises(pw.errors.SpecError, match="max_groups"):
        plots.shrinkage_data(cmp, max_groups=0)


def test_shrinkage_toward_the_regression_with_group_level_predictors() -> None:
    cmp = hand_comparison("y ~ x + u + (1 | g)", _frame(2))
    t = cmp.table()
    d = plots.shrinkage_data(cmp)
    assert d["by_group"] and d["group_level"] == ["u"]
    np.testing.assert_array_equal(d["regression"], t["regression"].to_numpy())
    (ax,) = plots.plot_shrinkage(cmp).get_axes()
    reg = [c for c in ax.collections if "regression on u" in str(c.get_label())]
    assert len(reg) == 1
    np.testing.assert_allclose(reg[0].get_offsets(), np.column_stack([d["x"], d["regression"]]))
    assert "regression values" in ax.get_title()
    # a slope term: its own table column
    slopes = hand_comparison("y ~ x + (1 + x | g)", _frame(1))
    ds = plots.shrinkage_data(slopes, term="x|g")
    np.testing.assert_array_equal(ds["end"], slopes.table(term="x|g")["hierarchical_mean"].to_numpy())
    assert "slope of x" in plots.plot_shrinkage(slopes, term="x|g").get_axes()[0].get_ylabel()


def test_ppc_one_panel_per_pooling(cmp: pw.Comparison) -> None:
    d = plots.ppc_data(cmp)
    assert list(d["poolings"]) == list(POOLINGS)
    edges, width = d["edges"], np.diff(d["edges"])
    y = cmp.hierarchical.bound.y
    assert d["rows"] == d["n_obs"] == y.size and not d["discrete"]
    for name, p in d["poolings"].items():
        assert p["replicated_density"].shape == (50, edges.size - 1)
        assert np.sum(p["observed_density"] * width) == pytest.approx(1.0)  # the bins cover the data
        assert p["observed_mean"] == pytest.approx(float(y.mean()))
    fig = plots.plot_ppc(cmp)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == list(POOLINGS)
    for ax, name in zip(axes, POOLINGS):
        lines = ax.get_lines()
        assert len(lines) == 50
        np.testing.assert_allclose(lines[0].get_ydata(), d["poolings"][name]["replicated_density"][0])
    with pytest.raises(pw.errors.SpecError, match="3 axes"):
        from matplotlib.figure import Figure

        plots.plot_ppc(cmp, axes=Figure().subplots(1, 2))


def test_predictive_sample_reads_the_fit(cmp: pw.Comparison) -> None:
    from poolwise.compare import predictive_sample
    from poolwise.fit import Fit

    f = cmp.hierarchical
    stored = f.idata.posterior_predictive[f.spec.outcome].values.reshape(f.n_samples, -1)  # now stored
    rows, y, rep = predictive_sample(f, n_draws=50)
    step = f.n_samples // 50
    np.testing.assert_array_equal(rep, stored[: 50 * step : step])
    np.testing.assert_array_equal(y, f.bound.y)
    # huge data: a sorted random subset of rows, the same rows for every pooling
    rows, y, rep = predictive_sample(f, n_draws=10, max_rows=40)
    assert rows.size == 40 and np.all(np.diff(rows) > 0) and rep.shape == (10, 40)
    np.testing.assert_array_equal(y, f.bound.y[rows])
    assert np.array_equal(rows, predictive_sample(cmp.fits["pooled"], n_draws=10, max_rows=40)[0])
    # without stored draws (over the memory budget): drawn on demand for those rows only
    lean = Fit(f.bound, f.draws, memory_budget=1)
    assert "posterior_predictive" not in lean.idata.groups()
    rows, y, rep = predictive_sample(lean, n_draws=50)
    assert rep.shape == (50, f.bound.n_obs)
    assert abs(rep.mean() - stored.mean()) < 0.03


def test_loo_plot_draws_the_loo_table(cmp: pw.Comparison) -> None:
    t = cmp.loo()
    d = plots.loo_data(cmp)
    assert d["poolings"] == list(t.index) and d["best"] == t.index[0]
    for key, col in (("elpd", "elpd_loo"), ("se", "se"), ("elpd_diff", "elpd_diff"), ("dse", "dse")):
        np.testing.assert_array_equal(d[key], t[col].to_numpy())
    np.testing.assert_allclose(d["diff_at"], t["elpd_loo"].iloc[0] + t["elpd_diff"].to_numpy())
    (ax,) = plots.plot_loo(cmp).get_axes()
    circles, triangles = ax.containers
    x, ypos = circles.lines[0].get_data()
    np.testing.assert_array_equal(x, t["elpd_loo"].to_numpy())
    np.testing.assert_array_equal(triangles.lines[0].get_xdata(), d["diff_at"][1:])
    assert [lab.get_text() for lab in ax.get_yticklabels()] == list(t.index)  # best on top
    best = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert best and np.allclose(best[0].get_xdata(), t["elpd_loo"].iloc[0])
    with pytest.raises(pw.errors.SpecError, match="'loo' or 'logo'"):
        plots.loo_data(cmp, criterion="waic")


def test_diagnostics_match_arviz(cmp: pw.Comparison) -> None:
    import arviz as az

    t = cmp.diagnostics()
    assert list(dict.fromkeys(t["pooling"])) == list(POOLINGS)
    for name, f in cmp.fits.items():
        s = az.summary(f.idata, kind="diagnostics", round_to="none")
        rows = t[t["pooling"] == name].set_index("parameter")
        assert set(rows.index) == set(f.idata.posterior.data_vars)
        for param, r in rows.iterrows():
            if r["kind"] == "group values":
                sel = s.loc[[i for i in s.index if str(i).startswith(f"{param}[")]]
                assert r["n"] == len(sel) == f.bound.n_groups
                assert r["r_hat"] == pytest.approx(sel["r_hat"].max())
                assert r["ess_bulk"] == pytest.approx(sel["ess_bulk"].min())
                assert r["ess_tail"] == pytest.approx(sel["ess_tail"].min())
            else:
                assert r["r_hat"] == pytest.approx(s.loc[param, "r_hat"])
                assert r["ess_bulk"] == pytest.approx(s.loc[param, "ess_bulk"])
        info = t.attrs["fits"][name]
        assert info["method"] == "exact" and info["divergences"] is None
        assert info["divergences_text"].startswith("none possible")
    assert "1|driver" in set(t[t["pooling"] == "hierarchical"]["parameter"])
    d = plots.diagnostics_data(cmp)
    assert len(d["labels"]) == len(t) and not d["not_sampled"]
    fig = plots.plot_diagnostics(cmp)
    left, right = fig.get_axes()
    np.testing.assert_allclose(left.collections[0].get_offsets()[:, 0], t["r_hat"].to_numpy())
    assert [lab.get_text() for lab in left.get_yticklabels()] == d["labels"]
    assert "none possible" in fig.get_suptitle()


def test_diagnostics_count_divergences_of_nuts() -> None:
    import dataclasses

    from poolwise.compare import diagnostics
    from poolwise.fit import Fit

    hand = hand_comparison("y ~ x + (1 | g)", _frame(3))
    f = hand.hierarchical
    div = np.zeros((C, D), dtype=bool)
    div[0, :3] = True
    nuts = Fit(f.bound, dataclasses.replace(f.draws, sample_stats={"diverging": div}))
    info = diagnostics(nuts).attrs["fit"]
    assert info["divergences"] == 3 and info["divergences_text"] == f"3 of {C * D} transitions diverged"
    cmp = Comparison({**hand.fits, "hierarchical": nuts})
    assert "3 of 60 transitions diverged" in plots.plot_diagnostics(cmp).get_suptitle()


def test_diagnostics_of_empirical_fits_say_not_sampled() -> None:
    df = pw.datasets.drivers(15, seed=4)
    cmp = pw.compare("reaction ~ night + (1 | driver)", df, method="empirical", draws=100, chains=2)
    t = cmp.diagnostics()
    hier = t[t["pooling"] == "hierarchical"].set_index("parameter")
    assert not hier.loc["sd(Intercept|driver)", "sampled"] and not hier.loc["sigma", "sampled"]
    assert hier.loc["Intercept", "sampled"] and hier.loc["1|driver", "sampled"]
    info = t.attrs["fits"]["hierarchical"]
    assert info["divergences"] is None and info["divergences_text"].startswith("not applicable")
    d = plots.diagnostics_data(cmp)
    assert "hierarchical: sd(Intercept|driver)" in d["not_sampled"]
    assert all(np.isfinite(d["r_hat"]))
    fig = plots.plot_diagnostics(cmp)
    assert "not sampled (point estimates)" in fig.get_suptitle() and "not applicable" in fig.get_suptitle()
