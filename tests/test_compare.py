"""compare(): three fits from one spec, the per-group table, PSIS-LOO."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import _hand
import poolwise as pw
from poolwise.compare import Comparison
from poolwise.errors import SpecError
from poolwise.spec import ModelSpec


@pytest.fixture(scope="module")
def cmp() -> pw.Comparison:
    return pw.compare("reaction ~ 1 + (1 | driver)", pw.datasets.drivers(seed=5), seed=0, draws=500)


def test_three_fits_differ_only_in_pooling(cmp: pw.Comparison) -> None:
    assert list(cmp.fits) == ["pooled", "unpooled", "hierarchical"]
    specs = [f.spec for f in cmp.fits.values()]
    assert {s.formula for s in specs} == {"reaction ~ 1 + (1 | driver)"}
    assert [f.bound.tau is None for f in cmp.fits.values()] == [False, False, True]


def test_table(cmp: pw.Comparison) -> None:
    t = cmp.table()
    assert list(t["n"]) == sorted(t["n"])
    for p in ("pooled", "unpooled", "hierarchical"):
        assert {f"{p}_mean", f"{p}_lo", f"{p}_hi"} <= set(t.columns)
    assert (t["lambda"].between(0, 1)).all()
    # pooled is one value for every group; unpooled is the group's own mean (λ ≈ 0)
    assert t["pooled_mean"].nunique() == 1
    df = cmp.hierarchical.bound
    ybar = pd.Series(np.bincount(df.group, weights=df.y) / df.group_sizes(), index=df.levels)
    np.testing.assert_allclose(t["unpooled_mean"], ybar[t.index], atol=0.02)
    # the hierarchical estimate lies between the two (shrinkage in [0, 1]) up to MC error
    assert (t["shrinkage"].between(-0.05, 1.05)).mean() > 0.9
    # small groups are pooled more than large ones
    assert t["lambda"].iloc[0] > t["lambda"].iloc[-1]


def test_loo(cmp: pw.Comparison) -> None:
    table = cmp.loo()
    assert set(table.index) == {"pooled", "unpooled", "hierarchical"}
    assert table["elpd_diff"].iloc[0] == 0
    assert (table["elpd_diff"] <= 0).all()  # each ELPD minus the best's
    assert (table["se"] > 0).all()


# -- any model: hand-made draws (no sampler runs) ---------------------------------------------

C, D = 2, 40


def _frame(seed: int = 0, J: int = 6, per: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat([f"g{j}" for j in range(J)], np.arange(per, per + J))  # sizes differ
    u = rng.normal(size=J)
    n = g.size
    x = rng.normal(size=n)
    return pd.DataFrame({"y": rng.normal(size=n) + x, "x": x, "g": g,
                         "u": u[np.searchsorted([f"g{j}" for j in range(J)], g)],
                         "yb": rng.integers(0, 2, n), "c": rng.poisson(2.0, n)})


def hand_comparison(formula: str, df: pd.DataFrame, family: str = "gaussian", seed: int = 0) -> Comparison:
    """Three Fits of ``formula`` from synthetic draws (see ``_hand.hand_comparison``)."""
    return _hand.hand_comparison(formula, df, family, seed, C=C, D=D)


@pytest.fixture(scope="module")
def slopes() -> Comparison:
    return hand_comparison("y ~ x + (1 + x | g)", _frame(1))


def test_table_per_term_of_a_slope_model(slopes: Comparison) -> None:
    hier = slopes.hierarchical
    assert slopes.terms == ["1|g", "x|g"]
    for term, coef in (("1|g", "Intercept"), ("x|g", "x")):
        t = slopes.table(term=term)
        assert t.attrs["term"] == term and t.attrs["group_level"] == []
        assert list(t["n"]) == sorted(t["n"])
        for pooling, f in slopes.fits.items():
            est = f.group_estimates(term=term).loc[t.index]
            np.testing.assert_array_equal(t[f"{pooling}_mean"], est["mean"])
            np.testing.assert_array_equal(t[f"{pooling}_lo"], est["lo"])
        pf = hier.pooling_factors(term=term).loc[t.index]
        np.testing.assert_array_equal(t["lambda"], pf["lambda"])
        assert t["pooled_mean"].nunique() == 1
        np.testing.assert_allclose(t["regression"], hier.param(coef).mean())
        pop = slopes.population(term)
        assert pop["mean"] == pytest.approx(float(hier.param(coef).mean()))
        assert pop["tau"] == pytest.approx(float(hier.param(f"sd({coef}|g)").mean()))
    # a term's short name, and the default (the first term)
    pd.testing.assert_frame_equal(slopes.table(term="x"), slopes.table(term="x|g"))
    pd.testing.assert_frame_equal(slopes.table(), slopes.table(term="1|g"))
    assert slopes.population() == slopes.population("1|g")
    with pytest.raises(SpecError, match="not a group term"):
        slopes.table(term="z|g")


def test_term_without_common_coefficient() -> None:
    cmp = hand_comparison("y ~ 1 + (1 + x | g)", _frame(2))
    pop = cmp.population("x|g")
    assert pop["mean"] == pop["mean_lo"] == 0.0
    t = cmp.table(term="x|g")
    np.testing.assert_array_equal(t["regression"], 0.0)
    np.testing.assert_allclose(t["pooled_mean"], 0.0)


def test_group_level_predictor_regression_by_hand() -> None:
    df = _frame(3)
    cmp = hand_comparison("y ~ x + u + (1 | g)", df)
    t = cmp.table()
    assert t.attrs["group_level"] == ["u"]  # x varies within groups: not group-level
    hier = cmp.hierarchical
    u = df.groupby("g")["u"].first().loc[t.index].to_numpy()
    a, bu = hier.param("Intercept"), hier.param("u")
    np.testing.assert_allclose(t["regression"], a.mean() + bu.mean() * u)
    # each group's estimate is its mean around the regression line: Intercept + β_u u_j + b_j
    vals = hier.block_draws[0].values
    assert vals is not None
    j = [hier.bound.levels.index(g) for g in t.index]
    draws = a[..., None] + bu[..., None] * u + vals[..., j, 0]
    np.testing.assert_allclose(t["hierarchical_mean"], draws.reshape(-1, len(j)).mean(axis=0))
    pooled = cmp.fits["pooled"]
    np.testing.assert_allclose(t["pooled_mean"], pooled.param("Intercept").mean() + pooled.param("u").mean() * u)
    np.testing.assert_array_equal(t["lambda"], hier.pooling_factors().loc[t.index, "lambda"])


def test_cross_level_interaction_is_group_level_for_the_slope() -> None:
    df = _frame(4)
    cmp = hand_comparison("y ~ x * u + (1 + x | g)", df)
    hier = cmp.hierarchical
    assert "x:u" in hier.bound.coef_names
    t = cmp.table(term="x|g")
    assert t.attrs["group_level"] == ["x:u"]
    u = df.groupby("g")["u"].first().loc[t.index].to_numpy()
    np.testing.assert_allclose(t["regression"], hier.param("x").mean() + hier.param("x:u").mean() * u)
    assert cmp.table(term="1|g").attrs["group_level"] == ["u"]


def test_compare_passes_family_and_gives_sd_cor_priors_to_hierarchical(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    compare_module = importlib.import_module("poolwise.compare")  # the package's `compare` is the function
    seen: dict[object, ModelSpec] = {}

    def fake_fit(spec: ModelSpec, table: object, **kw: object) -> ModelSpec:
        seen[spec.pooling] = spec
        return spec

    monkeypatch.setattr(compare_module, "fit", fake_fit)
    priors = {"sd(x|g)": "half_normal(1)", "cor(g)": "lkj(4)", "x": "normal(0, 2)"}
    pw.compare("c ~ x + (1 + x | g)", _frame(5), family="poisson", priors=priors)
    assert {s.fam.name for s in seen.values()} == {"poisson"}
    assert set(seen["hierarchical"].priors) == set(priors)
    assert set(seen["pooled"].priors) == set(seen["unpooled"].priors) == {"x"}
