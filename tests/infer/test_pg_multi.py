"""Pólya-Gamma Gibbs for bernoulli and binomial models with several grouping factors
(``infer.pg_multi``): its cross-products against the library's, its draws against a long NUTS run,
what it covers and what it hands to NUTS.  Its SBC is in tests/test_sbc_pg.py."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pytest

import poolwise as pw
from poolwise.data import read_table
from poolwise.errors import SpecError
from poolwise.infer import pg_multi
from poolwise.reduce import sparse_stats
from poolwise.spec import ModelSpec

FORMULA = "y | trials(n) ~ x + (1 | a) + (1 | b)"


def _crossed(seed: int = 3, A: int = 20, B: int = 12) -> pd.DataFrame:
    """Binomial rows on an unbalanced crossed design: 70 % of the (a, b) cells hold 1 to 3 rows of 1 to 7
    trials; logit P = −0.3 + 0.6 x + a_i + b_j, sd(a) = 0.8, sd(b) = 0.5."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 0.8, A), rng.normal(0, 0.5, B)
    rows = []
    for i in range(A):
        for j in range(B):
            if rng.uniform() < 0.7:
                for _ in range(rng.integers(1, 4)):
                    x = rng.normal()
                    n = int(rng.integers(1, 8))
                    eta = -0.3 + 0.6 * x + a[i] + b[j]
                    rows.append({"a": f"a{i}", "b": f"b{j}", "x": x, "n": n,
                                 "y": rng.binomial(n, 1 / (1 + np.exp(-eta)))})
    return pd.DataFrame(rows)


#: The posterior of ``_crossed()`` under FORMULA (poolwise's default priors) by poolwise's NUTS, long run:
#: ``pw.fit(FORMULA, _crossed(), family="binomial", method="nuts", seed=1, chains=4, warmup=2000, draws=5000,
#: target_accept=0.95)`` (no divergences, R-hat <= 1.0011): the posterior mean, ArviZ's MCSE of the mean
#: and the bulk ESS of each quantity (group values: levels 0 and 3 of each factor, in sorted label order).
NUTS_REF = {
    "Intercept": (-0.295299, 0.005398, 3018),
    "x": (0.674408, 0.00054, 19123),
    "sd(Intercept|a)": (1.138264, 0.003404, 4448),
    "sd(Intercept|b)": (0.418612, 0.001632, 6757),
    "1|a[0]": (2.026854, 0.005208, 6217),
    "1|a[3]": (0.009867, 0.005351, 5623),
    "1|b[0]": (0.361528, 0.002097, 13664),
    "1|b[3]": (-0.275023, 0.001929, 13129),
}


def test_cross_products_equal_the_librarys() -> None:
    """The per-sweep statistics of the pseudo-outcomes u = κ/ω − offset with weights ω equal
    ``reduce.sparse_stats`` of the same rows (one pattern per row; an offset and prior weights on)."""
    df = _crossed(1, 6, 5).assign(o=lambda d: 0.1 * np.arange(len(d)) % 0.7, w=lambda d: 1 + (np.arange(len(d)) % 3))
    bound = ModelSpec("y | trials(n) ~ x + offset(o) + (1 + x | a) + (1 | b)", family="binomial",
                      weights="w").bind(read_table(df))
    rows = pg_multi._Rows(bound, merge=False)
    omega = np.random.default_rng(0).uniform(0.1, 2.0, rows.m)
    got = rows.stats(omega)
    u = rows.kappa / omega - rows.offset
    ref = sparse_stats(u, rows.X, omega, [(Z, g, J) for Z, g, J in zip(rows.Z, rows.g, rows.J)])
    for a, b in [*zip(got.ZtWZ, ref.ZtWZ), *zip(got.ZtWX, ref.ZtWX), *zip(got.ZtWy, ref.ZtWy),
                 (got.XtWX, ref.XtWX), (got.XtWy, ref.XtWy)]:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert got.yWy == pytest.approx(ref.yWy, rel=1e-12)
    assert got.pairs.keys() == ref.pairs.keys()
    for key, pr in got.pairs.items():
        np.testing.assert_array_equal(pr.a, ref.pairs[key].a)
        np.testing.assert_array_equal(pr.b, ref.pairs[key].b)
        np.testing.assert_allclose(pr.ZtWZ, ref.pairs[key].ZtWZ, rtol=1e-12, atol=1e-12)
    # merged rows: the same totals of the Pólya-Gamma shapes and of κ
    merged = pg_multi._Rows(bound)
    assert merged.m <= rows.m
    assert merged.h.sum() == pytest.approx(rows.h.sum()) and merged.kappa.sum() == pytest.approx(rows.kappa.sum())


def test_crossed_binomial_matches_long_nuts() -> None:
    fit = pw.fit(FORMULA, _crossed(), family="binomial", seed=0)
    assert fit.method == "exact" and fit.draws.info["sampler"] == "polya-gamma gibbs"
    assert "several" not in " ".join(fit.notes())
    draws = {name: fit.param(name) for name in ("Intercept", "x", "sd(Intercept|a)", "sd(Intercept|b)")}
    for var in ("1|a", "1|b"):
        for j in (0, 3):
            draws[f"{var}[{j}]"] = fit.idata.posterior[var].values[..., j]
    for name, v in draws.items():
        mean, mcse, _ = NUTS_REF[name]
        tol = 4 * np.hypot(float(az.mcse(v)), mcse)
        assert abs(v.mean() - mean) < tol, (name, v.mean(), mean, tol)
        assert float(az.rhat(v)) < 1.01, name


def test_large_designs_go_to_nuts_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pg_multi, "MAX_FLOPS", 10.0)
    df = _crossed(2, 5, 4)
    fit = pw.fit(FORMULA, df, family="binomial", seed=0, chains=2, draws=100, warmup=100)
    assert fit.draws.method == "nuts"
    assert any("fitted this model with NUTS" in n and "group values" in n for n in fit.notes())


def test_refuses_what_it_does_not_cover() -> None:
    df = _crossed(2, 5, 4)
    bound = ModelSpec("y ~ x + (1 | a) + (1 | b)", family="poisson").bind(read_table(df))
    with pytest.raises(SpecError, match="poisson family"):
        pg_multi.sample(bound, seed=0)
    bound = ModelSpec(FORMULA, family="binomial").bind(read_table(df))
    with pytest.raises(SpecError, match="theta_steps"):
        pg_multi.sample(bound, seed=0, theta_steps=0)
    assert pg_multi.unsupported(ModelSpec("y ~ x + (1 | a)", family="bernoulli")) is not None
