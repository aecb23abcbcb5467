"""Fit for every family and any group structure, from hand-made draws with known values.

The draws are synthetic (no sampler runs): each test builds a :class:`~poolwise.infer.Draws`
for a bound spec and checks what :class:`~poolwise.fit.Fit` makes of it against formulas
written out here and scipy.stats.
"""

from __future__ import annotations

from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

import poolwise as pw
from poolwise.errors import DataError, SpecError
from poolwise.families import FAMILIES
from poolwise.fit import Fit
from poolwise.infer import BlockDraws, Draws
from poolwise.spec import BoundSpec, ModelSpec

C, D = 2, 50


def _bind(formula: str, df: pd.DataFrame, **kw: object) -> BoundSpec:
    return ModelSpec(formula, **kw).bind(pw.data.read_table(df))  # type: ignore[arg-type]


def _frame(seed: int = 0, J: int = 6, per: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = J * per
    g = np.repeat([f"g{j}" for j in range(J)], per)
    x = rng.normal(size=n)
    a = np.tile(["a0", "a1", "a2"], n // 3 + 1)[:n]
    b = np.tile(["b0", "b1", "b2", "b3"], n // 4 + 1)[:n]
    trials = rng.integers(1, 12, size=n)
    expo = rng.uniform(0.5, 3.0, size=n)
    return pd.DataFrame({
        "y": rng.normal(size=n) + x, "x": x, "g": g, "a": a, "b": b,
        "k": rng.binomial(trials, 0.4), "n": trials, "c": rng.poisson(2.0 * expo), "e": expo,
        "t": rng.standard_t(4, size=n),
    })


def _lkj2(rho: np.ndarray) -> np.ndarray:
    R = np.empty(rho.shape + (2, 2))
    R[..., 0, 0] = R[..., 1, 1] = 1.0
    R[..., 0, 1] = R[..., 1, 0] = rho
    return R


# -- families against scipy.stats ---------------------------------------------------------------

def test_family_log_likelihood_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    eta = rng.normal(size=(3, 7))
    n = rng.integers(1, 20, size=7).astype(float)
    sig, nu, phi = 1.7, 4.5, 2.3
    cases = {
        "gaussian": (rng.normal(size=7), {"sigma": sig}, lambda y: stats.norm.logpdf(y, eta, sig)),
        "student_t": (rng.normal(size=7), {"sigma": sig, "nu": nu}, lambda y: stats.t.logpdf(y, nu, eta, sig)),
        "bernoulli": (rng.integers(0, 2, 7).astype(float), {}, lambda y: stats.bernoulli.logpmf(y, special.expit(eta))),
        "binomial": (np.floor(n / 2), {"trials": n}, lambda y: stats.binom.logpmf(y, n, special.expit(eta))),
        "poisson": (rng.poisson(2, 7).astype(float), {}, lambda y: stats.poisson.logpmf(y, np.exp(eta))),
        "negative_binomial": (rng.poisson(3, 7).astype(float), {"phi": phi},
                              lambda y: stats.nbinom.logpmf(y, phi, phi / (phi + np.exp(eta)))),
    }
    assert set(cases) == set(FAMILIES)
    for name, (y, kw, ref) in cases.items():
        got = FAMILIES[name].log_likelihood(y, eta, **kw)  # type: ignore[arg-type]
        np.testing.assert_allclose(got, ref(y), rtol=1e-10, atol=1e-12, err_msg=name)
    # precision weights scale the gaussian SD: Normal(η, σ/√w)
    w = rng.uniform(0.5, 4, size=7)
    y = rng.normal(size=7)
    np.testing.assert_allclose(FAMILIES["gaussian"].log_likelihood(y, eta, sigma=sig, weights=w),
                               stats.norm.logpdf(y, eta, sig / np.sqrt(w)), rtol=1e-12)
    # stable far in the tails
    big = np.array([-800.0, 800.0])
    assert np.all(np.isfinite(FAMILIES["bernoulli"].log_likelihood(np.array([0.0, 1.0]), big)))
    assert np.all(np.isfinite(FAMILIES["negative_binomial"].log_likelihood(np.array([1.0, 1e6]),
                                                                         np.array([-50.0, 14.0]), phi=0.5)))


def test_family_sample_moments() -> None:
    rng = np.random.default_rng(2)
    S = 200_000
    eta = np.full(S, 0.7)
    checks = {
        "gaussian": ({"sigma": 2.0}, 0.7, 4.0),
        "student_t": ({"sigma": 1.5, "nu": 6.0}, 0.7, 1.5**2 * 6 / 4),
        "bernoulli": ({}, special.expit(0.7), special.expit(0.7) * (1 - special.expit(0.7))),
        "binomial": ({"trials": np.full(S, 9)}, 9 * special.expit(0.7),
                     9 * special.expit(0.7) * (1 - special.expit(0.7))),
        "poisson": ({}, np.exp(0.7), np.exp(0.7)),
        "negative_binomial": ({"phi": 3.0}, np.exp(0.7), np.exp(0.7) + np.exp(1.4) / 3.0),
    }
    for name, (kw, mean, var) in checks.items():
        y = FAMILIES[name].sample(rng, eta, **kw)  # type: ignore[arg-type]
        assert y.shape == eta.shape
        se_mean = np.sqrt(var / S)
        assert abs(y.mean() - mean) < 5 * se_mean, name
        assert y.var() == pytest.approx(var, rel=0.05), name
        if FAMILIES[name].support != "real":
            assert np.all(y == np.floor(y)) and np.all(y >= 0), name
    assert FAMILIES["poisson"].inverse_link(np.log(np.array([2.0])))[0] == pytest.approx(2.0)
    assert FAMILIES["binomial"].inverse_link(np.array([0.0]))[0] == 0.5


# -- varying slopes ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slopes() -> Fit:
    df = _frame(0)
    bound = _bind("y ~ x + (1 + x | g)", df)
    rng = np.random.default_rng(3)
    J = bound.blocks[0].n_groups
    sd = np.abs(rng.normal(1.0, 0.1, (C, D, 2)))
    rho = rng.uniform(-0.5, 0.5, (C, D))
    draws = Draws(beta=rng.normal([1.0, 2.0], 0.1, (C, D, 2)), sigma=np.abs(rng.normal(1.0, 0.05, (C, D))),
                  tau=None, b=None, blocks=(BlockDraws(sd=sd, corr=_lkj2(rho), values=rng.normal(size=(C, D, J, 2))),),
                  method="nuts", info={"divergences": [0], "target_accept": 0.8})
    return Fit(bound, draws)


def test_slopes_names_dims_coords(slopes: Fit) -> None:
    post = slopes.idata.posterior
    assert set(post.data_vars) == {"Intercept", "x", "sigma", "sd(Intercept|g)", "sd(x|g)",
                                   "cor(Intercept,x|g)", "1|g", "x|g"}
    assert post["x|g"].dims == ("chain", "draw", "g")
    assert list(post["x|g"].coords["g"].values) == slopes.bound.blocks[0].levels
    np.testing.assert_array_equal(post["x|g"].values, slopes.block_draws[0].values[..., 1])  # type: ignore[index]
    np.testing.assert_array_equal(post["cor(Intercept,x|g)"].values, slopes.block_draws[0].corr[..., 0, 1])  # type: ignore[index]
    assert slopes.group_var == "1|g" and slopes.group_vars == ["1|g", "x|g"]
    np.testing.assert_array_equal(slopes.param("sd(x|g)"), slopes.block_draws[0].sd[..., 1])  # type: ignore[index]
    np.testing.assert_array_equal(slopes.param("cor(x,Intercept|g)"), slopes.param("cor(Intercept,x|g)"))
    with pytest.raises(KeyError):
        slopes.param("sd(z|g)")
    s = slopes.summary()
    assert {"sd(x|g)", "cor(Intercept,x|g)", "x|g[g3]", "1|g[g0]"} <= set(s.index)
    assert not any("|g[" in str(i) for i in slopes.summary(groups=False).index)
    # (2 chains × 50 draws also fail the ESS rule: a note of its own; no divergence: nothing said of it)
    assert [n for n in s.attrs["notes"] if not n.startswith("Not converged")] == []
    assert s.attrs["priors"].loc["cor(g)", "prior"] == "lkj(2)"


def test_slopes_log_likelihood_by_hand(slopes: Fit) -> None:
    b, d = slopes.bound, slopes.draws
    vals = slopes.block_draws[0].values
    assert vals is not None
    ll = slopes.idata.log_likelihood["y"].values
    for i in (0, 7, 40):
        j = b.blocks[0].group[i]
        x = b.X[i, 1]
        eta = d.beta[..., 0] + d.beta[..., 1] * x + vals[..., j, 0] + vals[..., j, 1] * x
        np.testing.assert_allclose(ll[..., i], stats.norm.logpdf(b.y[i], eta, d.sigma), rtol=1e-10)
    # the lazy chunks agree with the stored array
    np.testing.assert_allclose(np.concatenate([c for _, c in slopes.log_likelihood_chunks(5)], axis=-1), ll)


def test_slopes_predict_known_and_new(slopes: Fit) -> None:
    d = slopes.draws
    vals = slopes.block_draws[0].values
    assert vals is not None
    new = pd.DataFrame({"g": ["g2", "NEW", "NEW", "OTHER"], "x": [0.5, 0.0, 1.0, 0.0]})
    out = slopes.predict(new, kind="link", return_draws=True)
    assert isinstance(out, np.ndarray) and out.shape == (C, D, 4)
    j = slopes.bound.blocks[0].levels.index("g2")
    expect = d.beta[..., 0] + 0.5 * d.beta[..., 1] + vals[..., j, 0] + 0.5 * vals[..., j, 1]
    np.testing.assert_allclose(out[..., 0], expect, rtol=1e-12)
    # rows of the same new group share its draw: the x = 1 row differs from the x = 0 row by β_x + b_x
    base = d.beta[..., 0]
    b0 = out[..., 1] - base
    bx = out[..., 2] - base - d.beta[..., 1] - b0
    # (b0, bx) ~ MVN(0, Σ) per draw: standardized by the draw's Cholesky factor they are N(0, I)
    sd, corr = slopes.block_draws[0].sd, slopes.block_draws[0].corr
    assert sd is not None and corr is not None
    L = sd[..., :, None] * np.linalg.cholesky(corr)
    z = np.linalg.solve(L, np.stack([b0, bx], axis=-1)[..., None])[..., 0].reshape(-1, 2)
    S = z.shape[0]
    assert abs(z.mean()) < 5 / np.sqrt(2 * S)
    assert np.mean(z**2) == pytest.approx(1.0, abs=5 * np.sqrt(2 / (2 * S)))
    # a different new group draws independently
    assert not np.allclose(out[..., 3], out[..., 1])
    pm = slopes.predict(new, kind="mean")
    assert list(pm["new_group"]) == [False, True, True, True]
    assert list(pm.columns) == ["mean", "sd", "lo", "hi", "new_group"]


def test_slopes_pooling_factor_by_hand(slopes: Fit) -> None:
    b, d = slopes.bound, slopes.draws
    block = b.blocks[0]
    sd, corr = slopes.block_draws[0].sd, slopes.block_draws[0].corr
    assert sd is not None and corr is not None
    Sig = (sd[..., :, None] * corr * sd[..., None, :]).reshape(-1, 2, 2)
    s2 = (d.sigma**2).reshape(-1)  # type: ignore[union-attr]
    pf = slopes.pooling_factors(term="x|g")
    assert pf.attrs["term"] == "x|g" and list(pf.index) == block.levels
    for j in (0, 3):
        Zj = block.Z[block.group == j]
        lam = [np.linalg.inv(np.linalg.inv(Sig[s]) + Zj.T @ Zj / s2[s])[1, 1] / Sig[s, 1, 1] for s in range(C * D)]
        assert pf["lambda"].iloc[j] == pytest.approx(np.mean(lam), rel=1e-9)
    assert pf["lambda"].between(0, 1).all()
    vx = slopes.block_draws[0].values[..., 1].reshape(-1, block.n_groups)  # type: ignore[index]
    assert pf.attrs["batch"] == pytest.approx(1 - vx.mean(axis=0).var() / vx.var(axis=1).mean())
    assert slopes.pooling_factors(term="x").attrs["term"] == "x|g"
    with pytest.raises(SpecError, match="not a group term"):
        slopes.pooling_factors(term="z|g")
    est = slopes.group_estimates(term="x|g")
    np.testing.assert_allclose(est["mean"], (d.beta[..., 1:2] + slopes.block_draws[0].values[..., 1])  # type: ignore[index]
                               .reshape(-1, block.n_groups).mean(axis=0))


# -- crossed and nested factors ------------------------------------------------------------

@pytest.fixture(scope="module")
def crossed() -> Fit:
    df = _frame(1)
    bound = _bind("y ~ 1 + (1 | a) + (1 | b)", df)
    rng = np.random.default_rng(4)
    blocks = tuple(BlockDraws(sd=np.abs(rng.normal(s, 0.05, (C, D, 1))), corr=None,
                              values=rng.normal(0, s, (C, D, blk.n_groups, 1)))
                   for s, blk in zip((0.5, 2.0), bound.blocks))
    draws = Draws(beta=rng.normal(1.0, 0.1, (C, D, 1)), sigma=np.abs(rng.normal(1.0, 0.05, (C, D))), tau=None,
                  b=None, blocks=blocks, method="nuts", info={"divergences": [12, 0], "target_accept": 0.95})
    return Fit(bound, draws)


def test_crossed_names_and_log_likelihood(crossed: Fit) -> None:
    post = crossed.idata.posterior
    assert set(post.data_vars) == {"Intercept", "sigma", "sd(Intercept|a)", "sd(Intercept|b)", "1|a", "1|b"}
    assert list(post["1|a"].coords["a"].values) == ["a0", "a1", "a2"]
    assert list(post["1|b"].coords["b"].values) == ["b0", "b1", "b2", "b3"]
    b, d = crossed.bound, crossed.draws
    va, vb = (bd.values for bd in crossed.block_draws)
    assert va is not None and vb is not None
    ll = crossed.log_likelihood()
    for i in (0, 5, 11):
        eta = d.beta[..., 0] + va[..., b.blocks[0].group[i], 0] + vb[..., b.blocks[1].group[i], 0]
        np.testing.assert_allclose(ll[..., i], stats.norm.logpdf(b.y[i], eta, d.sigma), rtol=1e-10)
    # (2 chains × 50 synthetic draws: every parameter also fails the ESS rule, a note of its own)
    notes = [n for n in crossed.summary(groups=False).attrs["notes"] if not n.startswith("Not converged")]
    assert notes == ["12 divergent transitions; refit at 0.95: 0"]
    d2 = Draws(beta=d.beta, sigma=d.sigma, tau=None, b=None, blocks=d.blocks, method="nuts",
               info={"divergences": [12, 0], "target_accept": 0.95, "target_accepts": [0.8, 0.95]})
    notes = [n for n in Fit(b, d2, memory_budget=0).notes() if not n.startswith("Not converged")]
    assert notes == ["12 divergent transitions at target_accept=0.8; refit at 0.95: 0"]


def test_crossed_predict_new_level_of_one_factor(crossed: Fit) -> None:
    d = crossed.draws
    va = crossed.block_draws[0].values
    sdb = crossed.block_draws[1].sd
    assert va is not None and sdb is not None
    new = pd.DataFrame({"a": ["a1", "a1"], "b": ["b2", "bNEW"]})
    pm = crossed.predict(new, kind="mean")
    assert list(pm["new_group"]) == [False, True]
    out = crossed.predict(new, kind="link", return_draws=True)
    assert isinstance(out, np.ndarray)
    known_a = d.beta[..., 0] + va[..., 1, 0]
    z = ((out[..., 1] - known_a) / sdb[..., 0]).ravel()  # the new b level ~ N(0, sd_b²) per draw
    assert abs(z.mean()) < 5 / np.sqrt(z.size)
    assert np.mean(z**2) == pytest.approx(1.0, abs=5 * np.sqrt(2 / z.size))
    # without the b column every row is a new b group of its own
    pm2 = crossed.predict(pd.DataFrame({"a": ["a0", "a0"]}), kind="mean")
    assert pm2["new_group"].all()


def test_nested_factor_dims_and_netcdf(tmp_path: Path) -> None:
    df = _frame(2)
    bound = _bind("y ~ 1 + (1 | a/b)", df)
    factors = [blk.factor for blk in bound.blocks]
    assert "a:b" in factors
    rng = np.random.default_rng(5)
    blocks = tuple(BlockDraws(sd=np.abs(rng.normal(1, 0.1, (C, D, 1))), corr=None,
                              values=rng.normal(size=(C, D, blk.n_groups, 1))) for blk in bound.blocks)
    f = Fit(bound, Draws(beta=rng.normal(size=(C, D, 1)), sigma=np.ones((C, D)), tau=None, b=None, blocks=blocks))
    post = f.idata.posterior
    assert "1|a:b" in post and post["1|a:b"].dims == ("chain", "draw", "a:b")
    assert "sd(Intercept|a:b)" in post
    path = f.to_netcdf(tmp_path / "nested.nc")
    back = az.from_netcdf(path)
    np.testing.assert_array_equal(back.posterior["1|a:b"].values, post["1|a:b"].values)
    pm = f.predict(pd.DataFrame({"a": ["a0", "a0"], "b": ["b0", "b1"]}), kind="mean")
    nested = bound.blocks[factors.index("a:b")]
    assert list(pm["new_group"]) == [("a0:b0" not in nested.levels), ("a0:b1" not in nested.levels)]


def test_priors_list_fixed_sigma_for_every_block() -> None:
    df = _frame(3)
    unpooled = _bind("y ~ x + (1 + x | g) + (1 | a)", df, pooling="unpooled")
    rng = np.random.default_rng(6)
    blocks = tuple(BlockDraws(sd=None, corr=None, values=rng.normal(size=(C, D, blk.n_groups, blk.q)))
                   for blk in unpooled.blocks)
    f = Fit(unpooled, Draws(beta=rng.normal(size=(C, D, 2)), sigma=np.ones((C, D)), tau=None, b=None,
                            blocks=blocks))
    pr = f.priors
    for name in ("sd(Intercept|g)", "sd(x|g)", "cor(g)", "sd(Intercept|a)"):
        assert pr.loc[name, "source"] == "pooling", name
    assert "unpooled" in pr.loc["sd(x|g)", "prior"]
    assert f.param("sd(Intercept|a)")[0, 0] == pytest.approx(float(np.sqrt(unpooled.blocks[1].Sigma[0, 0])))  # type: ignore[index]
    assert "sd(x|g)" not in f.idata.posterior  # fixed settings are not posterior variables
    pooled = _bind("y ~ x + (1 + x | g) + (1 | a)", df, pooling="pooled")
    fp = Fit(pooled, Draws(beta=rng.normal(size=(C, D, 2)), sigma=np.ones((C, D)), tau=None, b=None,
                           blocks=tuple(BlockDraws(None, None, None) for _ in pooled.blocks)))
    assert set(fp.idata.posterior.data_vars) == {"Intercept", "x", "sigma"}
    assert fp.priors.loc["sd(x|g)", "prior"].startswith("0 (pooled")
    assert (fp.pooling_factors(term="x|g")["lambda"] == 1).all()
    pm = fp.predict(pd.DataFrame({"x": [1.0], "g": ["NEW"], "a": ["a0"]}), kind="mean")
    assert bool(pm["new_group"].iloc[0])


# -- other families ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def binomial() -> Fit:
    df = _frame(4)
    bound = _bind("k | trials(n) ~ x + (1 | g)", df, family="binomial")
    rng = np.random.default_rng(7)
    tau = np.abs(rng.normal(0.8, 0.05, (C, D)))
    draws = Draws(beta=rng.normal([-0.4, 0.3], 0.05, (C, D, 2)), sigma=None, tau=tau,
                  b=rng.normal(size=(C, D, bound.n_groups)) * tau[..., None], method="nuts",
                  info={"divergences": [0], "target_accept": 0.8})
    return Fit(bound, draws)


def test_binomial_log_likelihood_and_predict(binomial: Fit) -> None:
    b, d = binomial.bound, binomial.draws
    assert d.b is not None and b.trials is not None
    assert set(binomial.idata.posterior.data_vars) == {"Intercept", "x", "sd(Intercept|g)", "1|g"}
    ll = binomial.idata.log_likelihood["k"].values
    for i in (0, 9, 30):
        eta = d.beta[..., 0] + d.beta[..., 1] * b.X[i, 1] + d.b[..., b.group[i]]
        np.testing.assert_allclose(ll[..., i], stats.binom.logpmf(b.y[i], b.trials[i], special.expit(eta)),
                                   rtol=1e-10)
    pp = binomial.idata.posterior_predictive["k"].values
    assert np.all((pp >= 0) & (pp <= b.trials) & (pp == np.floor(pp)))
    assert "sigma" not in binomial.priors.index
    new = pd.DataFrame({"g": ["g1", "NEW"], "x": [0.2, 0.2]})
    with pytest.raises(DataError, match="trials column 'n'"):
        binomial.predict(new)
    pm = binomial.predict(new, kind="mean")
    j = b.levels.index("g1")
    expect = special.expit(d.beta[..., 0] + 0.2 * d.beta[..., 1] + d.b[..., j]).mean()
    assert pm["mean"].iloc[0] == pytest.approx(float(expect), rel=1e-12)
    assert pm["mean"].between(0, 1).all()
    pr = binomial.predict(new.assign(n=[10, 10]), kind="response", return_draws=True)
    assert isinstance(pr, np.ndarray) and np.all((pr >= 0) & (pr <= 10) & (pr == np.floor(pr)))


def test_binomial_pooling_factor_by_hand(binomial: Fit) -> None:
    b, d = binomial.bound, binomial.draws
    assert d.b is not None and b.trials is not None and d.tau is not None
    eta = d.beta[..., 0:1] + d.beta[..., 1:2] * b.X[:, 1] + d.b[..., b.group]
    w = b.trials * special.expit(eta) * (1 - special.expit(eta))
    info = np.stack([w[..., b.group == j].sum(axis=-1) for j in range(b.n_groups)], axis=-1)
    lam = 1.0 / (1.0 + d.tau[..., None] ** 2 * info)
    pf = binomial.pooling_factors()
    np.testing.assert_allclose(pf["lambda"], lam.reshape(-1, b.n_groups).mean(axis=0), rtol=1e-9)
    lo, hi = np.quantile(lam.reshape(-1, b.n_groups), [0.025, 0.975], axis=0)
    np.testing.assert_allclose(pf["lambda_lo"], lo, rtol=1e-9)
    # the chunked information (small budget) gives the same
    small = Fit(b, d, memory_budget=4096)
    np.testing.assert_allclose(small.pooling_factors()["lambda"], pf["lambda"], rtol=1e-10)


def test_poisson_with_offset() -> None:
    df = _frame(5)
    bound = _bind("c ~ x + offset(log(e)) + (1 | g)", df, family="poisson")
    rng = np.random.default_rng(8)
    tau = np.full((C, D), 0.3)
    d = Draws(beta=rng.normal([0.6, 0.1], 0.05, (C, D, 2)), sigma=None, tau=tau,
              b=rng.normal(0, 0.3, (C, D, bound.n_groups)))
    f = Fit(bound, d)
    assert d.b is not None
    ll = f.idata.log_likelihood["c"].values
    for i in (1, 20):
        eta = d.beta[..., 0] + d.beta[..., 1] * bound.X[i, 1] + np.log(df["e"].iloc[i]) + d.b[..., bound.group[i]]
        np.testing.assert_allclose(ll[..., i], stats.poisson.logpmf(bound.y[i], np.exp(eta)), rtol=1e-10)
    new = pd.DataFrame({"g": ["g0"], "x": [0.0], "e": [2.0]})
    pm = f.predict(new, kind="mean")
    expect = np.exp(d.beta[..., 0] + np.log(2.0) + d.b[..., 0]).mean()
    assert pm["mean"].iloc[0] == pytest.approx(float(expect), rel=1e-12)
    with pytest.raises(DataError):
        f.predict(pd.DataFrame({"g": ["g0"], "x": [0.0]}))
    pr = f.predict(new, kind="response", return_draws=True)
    assert isinstance(pr, np.ndarray) and np.all(pr == np.floor(pr))
    # new group: Var(η) adds E[τ²] on the link scale
    link = f.predict(pd.DataFrame({"g": ["NEW"] * 1, "x": [0.0], "e": [1.0]}), kind="link", return_draws=True)
    assert isinstance(link, np.ndarray)
    z = ((link[..., 0] - d.beta[..., 0]) / tau).ravel()
    assert np.mean(z**2) == pytest.approx(1.0, abs=5 * np.sqrt(2 / z.size))


def test_negative_binomial_and_student_t_aux() -> None:
    df = _frame(6)
    rng = np.random.default_rng(9)
    nb = _bind("c ~ 1 + (1 | g)", df, family="negative_binomial")
    phi = np.abs(rng.normal(2.0, 0.1, (C, D)))
    d = Draws(beta=rng.normal(0.5, 0.05, (C, D, 1)), sigma=None, tau=np.abs(rng.normal(0.4, 0.02, (C, D))),
              b=rng.normal(0, 0.4, (C, D, nb.n_groups)), aux={"phi": phi})
    f = Fit(nb, d)
    assert d.b is not None
    assert "phi" in f.idata.posterior and "phi" in f.summary(groups=False).index
    np.testing.assert_array_equal(f.param("phi"), phi)
    i = 3
    mu = np.exp(d.beta[..., 0] + d.b[..., nb.group[i]])
    np.testing.assert_allclose(f.idata.log_likelihood["c"].values[..., i],
                               stats.nbinom.logpmf(nb.y[i], phi, phi / (phi + mu)), rtol=1e-10)
    tt = _bind("t ~ 1 + (1 | g)", df, family="student_t")
    nu = np.abs(rng.normal(5.0, 0.2, (C, D)))
    sig = np.abs(rng.normal(1.0, 0.05, (C, D)))
    d2 = Draws(beta=rng.normal(0.0, 0.05, (C, D, 1)), sigma=sig, tau=np.full((C, D), 0.3),
               b=rng.normal(0, 0.3, (C, D, tt.n_groups)), aux={"nu": nu})
    f2 = Fit(tt, d2)
    assert d2.b is not None
    eta = d2.beta[..., 0] + d2.b[..., tt.group[i]]
    np.testing.assert_allclose(f2.idata.log_likelihood["t"].values[..., i],
                               stats.t.logpdf(tt.y[i], nu, eta, sig), rtol=1e-10)
    assert {"nu", "sigma"} <= set(f2.idata.posterior.data_vars)
    # student-t information per row is (ν + 1) / ((ν + 3) σ²)
    n_j = tt.group_sizes()
    inf = (nu + 1) / ((nu + 3) * sig**2)
    lam = 1 / (1 + 0.09 * inf[..., None] * n_j)
    np.testing.assert_allclose(f2.pooling_factors()["lambda"], lam.reshape(-1, tt.n_groups).mean(axis=0),
                               rtol=1e-10)


def test_simple_gaussian_pooling_factor_is_the_formula() -> None:
    df = _frame(7)
    bound = _bind("y ~ x + (1 | g)", df)
    rng = np.random.default_rng(10)
    sigma = np.abs(rng.normal(1.0, 0.1, (C, D)))
    tau = np.abs(rng.normal(0.5, 0.1, (C, D)))
    d = Draws(beta=rng.normal(size=(C, D, 2)), sigma=sigma, tau=tau, b=rng.normal(size=(C, D, bound.n_groups)))
    f = Fit(bound, d)
    n = bound.group_sizes()
    noise = sigma[..., None] ** 2 / n
    lam = noise / (noise + tau[..., None] ** 2)
    pf = f.pooling_factors()
    np.testing.assert_allclose(pf["lambda"], lam.reshape(-1, bound.n_groups).mean(axis=0), rtol=1e-12)
    assert pf.attrs["term"] == "1|g"
    # the same fit with its draws given as blocks gives the same results
    d2 = Draws(beta=d.beta, sigma=sigma, tau=None, b=None,
               blocks=(BlockDraws(sd=tau[..., None], corr=None, values=d.b[..., None]),))  # type: ignore[index]
    f2 = Fit(bound, d2)
    np.testing.assert_allclose(f2.pooling_factors()["lambda"], pf["lambda"], rtol=1e-12)
    np.testing.assert_allclose(f2.log_likelihood(), f.log_likelihood(), rtol=1e-12)
    assert set(f2.idata.posterior.data_vars) == set(f.idata.posterior.data_vars)
