"""End to end through pw.fit / pw.compare: varying slopes on both paths, a GLM compared three ways."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pytest

import poolwise as pw


def _mcse(x: np.ndarray) -> float:
    return float(az.mcse(np.asarray(x)[None] if x.ndim == 1 else x))


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    return pw.datasets.sleepstudy()


@pytest.mark.slow
def test_sleepstudy_exact_and_nuts_agree(sleep: pd.DataFrame) -> None:
    formula = "Reaction ~ Days + (Days | Subject)"
    ex = pw.fit(formula, sleep, method="exact", seed=1)
    nu = pw.fit(formula, sleep, method="nuts", seed=2)
    assert ex.notes() == [] or "0 divergent" in ex.notes()[0]
    names = ["Intercept", "Days", "sigma", "sd(Intercept|Subject)", "sd(Days|Subject)",
             "cor(Intercept,Days|Subject)"]
    for name in names:
        a, b = ex.param(name), nu.param(name)
        # difference of two independent MC estimates: 4 combined MC standard errors
        tol = 4 * np.hypot(_mcse(a), _mcse(b))
        assert abs(a.mean() - b.mean()) < tol, (name, a.mean(), b.mean(), tol)
        # posterior SDs: 10% relative (ESS ≥ 1000 gives an SD estimate to ~3%)
        assert abs(a.std() - b.std()) < 0.1 * b.std(), (name, a.std(), b.std())
    for term in ("1|Subject", "Days|Subject"):
        ea = ex.idata.posterior[term].values
        na = nu.idata.posterior[term].values
        for j in (0, 7, 17):
            tol = 4 * np.hypot(_mcse(ea[..., j]), _mcse(na[..., j]))
            assert abs(ea[..., j].mean() - na[..., j].mean()) < tol, (term, j)


@pytest.mark.slow
def test_cbpp_compared_three_ways() -> None:
    cbpp = pw.datasets.cbpp()
    cmp = pw.compare("incidence | trials(size) ~ period + (1 | herd)", cbpp, family="binomial", seed=0,
                     draws=500, warmup=500)
    t = cmp.table()
    assert len(t) == 15 and t["lambda"].between(0, 1).all()
    # the unpooled herd intercepts spread more than the hierarchical ones (shrinkage)
    assert t["unpooled_mean"].std() > t["hierarchical_mean"].std()
    loo = cmp.loo(max_refits=0)  # the table, not the refits (NUTS refits take minutes here)
    assert set(loo.index) == {"pooled", "unpooled", "hierarchical"}
    fig = cmp.plot()
    assert "logit" in fig.axes[0].get_ylabel()
    h = cmp.hierarchical
    new = pd.DataFrame({"herd": ["1", "99"], "period": ["1", "1"], "size": [10, 10]})
    p = h.predict(new, kind="mean")
    assert list(p["new_group"]) == [False, True]
    assert ((p["mean"] > 0) & (p["mean"] < 1)).all()
    # a new herd is less certain than a known one
    assert p["sd"].iloc[1] > p["sd"].iloc[0]
