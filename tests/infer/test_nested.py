"""Nested varying intercepts on the exact path: the marginal against dense algebra, draws against NUTS."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy.stats import multivariate_normal

import poolwise as pw
from poolwise.data import read_table
from poolwise.infer import nested
from poolwise.spec import ModelSpec


def _data(seed: int = 0, n_outer: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_outer):
        a = rng.normal(0, 0.8)
        for c in range(rng.integers(2, 5)):
            cc = rng.normal(0, 0.5)
            for _ in range(rng.integers(1, 6)):
                x = rng.normal()
                rows.append({"region": f"r{r}", "county": f"c{c}", "x": x,
                             "y": 1.0 + 0.5 * x + a + cc + rng.normal(0, 0.7)})
    return pd.DataFrame(rows)


def test_log_marginal_matches_dense() -> None:
    df = _data(1)
    bound = ModelSpec("y ~ x + (1 | region/county)").bind(read_table(df))
    outer, inner, parent = nested.nesting(bound)  # type: ignore[misc]
    assert outer.factor == "region" and inner.factor == "region:county"
    X = bound.X
    m0 = np.array([bound.priors[c].args[0] for c in bound.coef_names])
    S0 = np.diag([bound.priors[c].args[1] ** 2 for c in bound.coef_names])
    Za = np.eye(outer.n_groups)[outer.group]
    Zc = np.eye(inner.n_groups)[inner.group]
    for s, ta, tc in [(0.7, 0.8, 0.5), (1.3, 0.0, 2.0), (0.5, 3.0, 0.0)]:
        cov = s**2 * np.eye(len(df)) + ta**2 * Za @ Za.T + tc**2 * Zc @ Zc.T + X @ S0 @ X.T
        ref = multivariate_normal(X @ m0, cov).logpdf(bound.y)
        got = nested.log_marginal(bound, np.array([s]), np.array([ta]), np.array([tc]))[0]
        assert got == pytest.approx(ref, rel=1e-10)


@pytest.mark.slow
def test_exact_agrees_with_nuts() -> None:
    df = _data(2, n_outer=8)
    f = "y ~ x + (1 | region/county)"
    ex = pw.fit(f, df, method="exact", seed=0)
    assert ex.draws.info["hyper_sampler"].startswith("independence MH")
    assert not any("NUTS" in n for n in ex.notes())
    nu = pw.fit(f, df, method="nuts", seed=1)
    for name in ("Intercept", "x", "sigma", "sd(Intercept|region)", "sd(Intercept|region:county)"):
        a, b = ex.param(name), nu.param(name)
        tol = 4 * np.hypot(float(az.mcse(a)), float(az.mcse(b)))
        assert abs(a.mean() - b.mean()) < tol, (name, a.mean(), b.mean(), tol)
    for var in ("1|region", "1|region:county"):
        ea, na = ex.idata.posterior[var].values, nu.idata.posterior[var].values
        for j in (0, 3):
            tol = 4 * np.hypot(float(az.mcse(ea[..., j])), float(az.mcse(na[..., j])))
            assert abs(ea[..., j].mean() - na[..., j].mean()) < tol, (var, j)


def test_crossed_falls_back_with_a_note() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.integers(0, 4, 60).astype(str), "b": rng.integers(0, 5, 60).astype(str)})
    df["y"] = rng.normal(size=60)
    bound = ModelSpec("y ~ 1 + (1 | a) + (1 | b)").bind(read_table(df))
    assert nested.nesting(bound) is None
