"""compare(): three fits from one spec, the per-group table, PSIS-LOO."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import poolwise as pw


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
    assert (table["elpd_diff"] >= 0).all()
    assert (table["se"] > 0).all()
