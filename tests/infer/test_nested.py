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


NESTED_FORMULA = "y ~ x + (1 | region/county)"

#: The posterior of ``_data(2, n_outer=8)`` under NESTED_FORMULA by poolwise's NUTS, long run:
#: ``pw.fit(NESTED_FORMULA, _data(2, n_outer=8), method="nuts", seed=1, chains=4, warmup=2000,
#: draws=5000, target_accept=0.95)`` (no divergences; R-hat <= 1.0015), per quantity the posterior
#: mean, ArviZ's MCSE of the mean and bulk ESS.  ``test_exact_agrees_with_nuts_live`` reruns NUTS under
#: ``make validate``.
NESTED_NUTS = {
    "Intercept": (0.849509, 0.005059, 6771),
    "x": (0.317099, 0.00072, 17701),
    "sigma": (0.669506, 0.000838, 8306),
    "sd(Intercept|region)": (1.062407, 0.005139, 6012),
    "sd(Intercept|region:county)": (0.460167, 0.003463, 3926),
    "1|region[0]": (0.552496, 0.005927, 8869),
    "1|region[3]": (-0.858223, 0.006086, 8292),
    "1|region:county[0]": (-0.017771, 0.003127, 16332),
    "1|region:county[3]": (-0.234373, 0.003464, 12320),
}


def _nested_draws(fit: pw.Fit) -> dict[str, np.ndarray]:
    """The quantities of NESTED_NUTS, as (chain, draw) arrays of a fit."""
    out = {name: fit.param(name) for name in ("Intercept", "x", "sigma", "sd(Intercept|region)",
                                              "sd(Intercept|region:county)")}
    for var in ("1|region", "1|region:county"):
        for j in (0, 3):
            out[f"{var}[{j}]"] = fit.idata.posterior[var].values[..., j]
    return out


def test_exact_agrees_with_nuts() -> None:
    """The exact path against the stored long NUTS run, within 4 combined MCSE."""
    ex = pw.fit(NESTED_FORMULA, _data(2, n_outer=8), method="exact", seed=0)
    assert ex.draws.info["hyper_sampler"].startswith("independence MH")
    assert not any("NUTS" in n for n in ex.notes())
    for name, a in _nested_draws(ex).items():
        mean, mcse, _ = NESTED_NUTS[name]
        tol = 4 * np.hypot(float(az.mcse(a)), mcse)
        assert abs(a.mean() - mean) < tol, (name, a.mean(), mean, tol)


@pytest.mark.validate
def test_exact_agrees_with_nuts_live() -> None:
    df = _data(2, n_outer=8)
    ex = pw.fit(NESTED_FORMULA, df, method="exact", seed=0)
    nu = pw.fit(NESTED_FORMULA, df, method="nuts", seed=1)
    b = _nested_draws(nu)
    for name, a in _nested_draws(ex).items():
        tol = 4 * np.hypot(float(az.mcse(a)), float(az.mcse(b[name])))
        assert abs(a.mean() - b[name].mean()) < tol, (name, a.mean(), b[name].mean(), tol)


def test_crossed_falls_back_with_a_note() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.integers(0, 4, 60).astype(str), "b": rng.integers(0, 5, 60).astype(str)})
    df["y"] = rng.normal(size=60)
    bound = ModelSpec("y ~ 1 + (1 | a) + (1 | b)").bind(read_table(df))
    assert nested.nesting(bound) is None
