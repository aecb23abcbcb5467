"""Accuracy of the exact (collapsed Gaussian) path, ``poolwise.infer.exact``.

Every check compares with a reference computed here independently of poolwise's algebra:

* :func:`log_marginal` against a dense multivariate-normal log density (SciPy);
* with σ and τ both fixed (known standard errors, numeric pooling) the posterior of (β, b) is
  one Gaussian; its mean and covariance by dense linear algebra against the exact path's
  ``conditional_moments`` (to rounding) and its draws (to Monte Carlo error);
* the one-dimensional posterior of τ for the eight schools by numerical quadrature against the
  exact path's draws of τ (mean, sd, Kolmogorov–Smirnov).

Tolerances on draws are derived from their Monte Carlo standard error (derivations in comments).
"""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

import poolwise as pw
from poolwise.infer.exact import HyperPrior, conditional_moments, log_marginal
from poolwise.priors import parse_prior
from poolwise.reduce import reduce, reduce_arrays

# ------------------------------------------------------------------------------------------------
# helpers


def _dense_log_marginal(y, X, w, group, J, m0, s0, sigma, tau):
    """log N(y | X m0, diag(σ²/w) + τ² ZZ' + X S0 X'), built densely from the rows."""
    Z = np.zeros((y.size, J))
    Z[np.arange(y.size), group] = 1.0
    cov = np.diag(sigma**2 / w) + tau**2 * Z @ Z.T + X @ np.diag(s0**2) @ X.T
    return stats.multivariate_normal(mean=X @ m0, cov=cov).logpdf(y)


def _random_problem(rng, *, weighted, p):
    sizes = np.array([1, 2, 3, 5, 4])  # includes groups of 1 and 2 rows
    J = sizes.size
    group = np.repeat(np.arange(J), sizes)
    rng.shuffle(group)  # rows of a group need not be contiguous
    n = group.size
    X = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))]) if p else np.zeros((n, 0))
    y = rng.normal(size=n) * 2.0 + 1.0
    w = rng.uniform(0.2, 3.0, size=n) if weighted else np.ones(n)
    m0 = rng.normal(size=p)
    s0 = rng.uniform(0.5, 4.0, size=p)
    return y, X, w, group, J, m0, s0


# ------------------------------------------------------------------------------------------------
# 1. log_marginal against the dense multivariate normal


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("p", [0, 1, 3])
def test_log_marginal_matches_dense_mvn(weighted, p):
    rng = np.random.default_rng(10 * p + weighted)
    y, X, w, group, J, m0, s0 = _random_problem(rng, weighted=weighted, p=p)
    red = reduce_arrays(y, X, w, group, J)
    hp = HyperPrior(m0=m0, s0=s0, sigma=None, tau=None)
    sigmas = np.array([0.3, 1.0, 2.5, 1.7, 0.8, 4.0])
    taus = np.array([0.0, 0.0, 0.7, 3.0, 1e-4, 25.0])  # τ = 0 (pooled) included
    got = log_marginal(red, hp, sigmas, taus)
    want = np.array([_dense_log_marginal(y, X, w, group, J, m0, s0, s, t) for s, t in zip(sigmas, taus)])
    # both are exact formulas in float64: only rounding separates them
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)
    # scalar arguments give the same numbers
    assert float(log_marginal(red, hp, 2.5, 0.7)[0]) == pytest.approx(want[2], rel=1e-12)


def test_log_marginal_is_not_blind_to_the_data():
    """The comparison above can fail: a changed outcome or τ changes the value."""
    rng = np.random.default_rng(0)
    y, X, w, group, J, m0, s0 = _random_problem(rng, weighted=True, p=2)
    hp = HyperPrior(m0=m0, s0=s0, sigma=None, tau=None)
    base = log_marginal(reduce_arrays(y, X, w, group, J), hp, 1.0, 0.5)[0]
    y2 = y.copy()
    y2[0] += 0.1
    assert abs(log_marginal(reduce_arrays(y2, X, w, group, J), hp, 1.0, 0.5)[0] - base) > 1e-6
    assert abs(log_marginal(reduce_arrays(y, X, w, group, J), hp, 1.0, 0.6)[0] - base) > 1e-6


# ------------------------------------------------------------------------------------------------
# 2. σ and τ fixed: the posterior of (β, b) is one Gaussian

_TAU_FIXED = 1.3
_FIXED_PRIORS = {"Intercept": "normal(0.5, 2)", "x": "normal(-1, 1.5)"}


@pytest.fixture(scope="module")
def fixed_problem():
    rng = np.random.default_rng(2024)
    sizes = np.array([1, 2, 4, 3, 6])
    J = sizes.size
    labels = [f"g{j}" for j in range(J)]  # sorted order = index order
    g = np.repeat(np.arange(J), sizes)
    n = g.size
    x = rng.normal(size=n)
    se = rng.uniform(0.5, 2.0, size=n)
    b_true = rng.normal(scale=_TAU_FIXED, size=J)
    y = 0.3 + 0.8 * x + b_true[g] + se * rng.normal(size=n)
    df = pd.DataFrame({"y": y, "x": x, "se": se, "g": [labels[j] for j in g]})
    # independent dense posterior of θ = (β, b)
    Xd = np.column_stack([np.ones(n), x])
    Z = np.zeros((n, J))
    Z[np.arange(n), g] = 1.0
    D = np.hstack([Xd, Z])
    m0 = np.array([0.5, -1.0])
    s0 = np.array([2.0, 1.5])
    prior_prec = np.diag(np.concatenate([1 / s0**2, np.full(J, 1 / _TAU_FIXED**2)]))
    prior_mean = np.concatenate([m0, np.zeros(J)])
    W = np.diag(1 / se**2)
    P = prior_prec + D.T @ W @ D
    cov = np.linalg.inv(P)
    mean = cov @ (prior_prec @ prior_mean + D.T @ W @ y)
    return {"df": df, "mean": mean, "cov": cov, "m0": m0, "s0": s0, "J": J, "labels": labels}


def _fit_fixed(df, *, seed=0, chains=4, draws=2000):
    return pw.fit("y | se(se) ~ 1 + x + (1 | g)", df, pooling=_TAU_FIXED, priors=_FIXED_PRIORS,
                  method="exact", seed=seed, chains=chains, draws=draws)


def test_fixed_hyper_setup_is_what_the_reference_assumes(fixed_problem):
    f = _fit_fixed(fixed_problem["df"], draws=10)
    b = f.bound
    assert b.coef_names == ["Intercept", "x"]
    assert b.levels == fixed_problem["labels"]
    assert b.tau == _TAU_FIXED and not b.has_sigma
    for name, text in _FIXED_PRIORS.items():
        assert b.priors[name] == parse_prior(text)
    hp = HyperPrior.from_bound(b)
    np.testing.assert_array_equal(hp.m0, fixed_problem["m0"])
    np.testing.assert_array_equal(hp.s0, fixed_problem["s0"])
    assert f.draws.sigma is None and f.draws.tau is None  # no hyperparameters were sampled


def test_conditional_moments_equal_dense_posterior(fixed_problem):
    f = _fit_fixed(fixed_problem["df"], draws=10)
    red = reduce(f.bound)  # taken about the data's means: β* = Mβ − c_y e₀ (poolwise.reduce.Shift)
    hp = HyperPrior.from_bound(f.bound, red.shift)
    mean_s, L, k, s2 = conditional_moments(red, hp, np.array([1.0]), np.array([_TAU_FIXED]))
    p = 2
    # E[b | y] = k (sy − u'E[β* | y]) because b | β* is linear in β*
    bmean = k[0] * (red.sy - red.u @ mean_s[0])
    mean_b = red.shift.unshift(mean_s)
    got_mean = np.concatenate([mean_b[0], bmean])
    np.testing.assert_allclose(got_mean, fixed_problem["mean"], rtol=1e-10, atol=1e-12)
    # Cov(β* | y) = (L L')⁻¹, Cov(β) = M⁻¹Cov(β*)M⁻ᵀ; Cov(b | y) = diag(σ² k) + K U Cov(β*) U' K;
    # Cov(b, β) = −K U Cov(β*) M⁻ᵀ
    Minv = red.shift.back_matrix(p)
    cov_s = np.linalg.inv(L[0] @ L[0].T)
    cov_beta = Minv @ cov_s @ Minv.T
    KU = k[0][:, None] * red.u
    cov_b = np.diag(s2[0] * k[0]) + KU @ cov_s @ KU.T
    cov_bbeta = -KU @ cov_s @ Minv.T
    ref = fixed_problem["cov"]
    np.testing.assert_allclose(cov_beta, ref[:p, :p], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(cov_b, ref[p:, p:], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(cov_bbeta, ref[p:, :p], rtol=1e-10, atol=1e-13)


def test_fixed_hyper_draws_match_dense_posterior(fixed_problem):
    f = _fit_fixed(fixed_problem["df"], seed=3, chains=4, draws=2000)
    theta = np.concatenate([f.draws.beta, f.draws.b], axis=-1).reshape(-1, 2 + fixed_problem["J"])
    n, d = theta.shape
    mean, cov = fixed_problem["mean"], fixed_problem["cov"]
    sd = np.sqrt(np.diag(cov))
    # With no hyperparameters the draws are iid Gaussian, so mcse(mean_i) = sd_i/√n exactly.
    # |error| < 4 mcse fails for a correct sampler with probability 2Φ(−4) ≈ 6e-5 per
    # coordinate, < 1e-3 over all d = 7.
    np.testing.assert_array_less(np.abs(theta.mean(axis=0) - mean), 4 * sd / math.sqrt(n))
    # Sample covariance: for Gaussian draws Var(S_ij) ≈ (Σ_ii Σ_jj + Σ_ij²)/n. Each of the
    # d(d+1)/2 = 28 entries within 5 of its standard errors fails with probability ≈ 6e-7 each,
    # < 2e-5 in all (the entries are correlated; Bonferroni bounds it).
    S = np.cov(theta, rowvar=False)
    se_S = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    z = np.abs(S - cov) / se_S
    assert z.max() < 5.0, f"sample covariance off by {z.max():.1f} standard errors"
    # Whole-distribution check: whitened draws e = L⁻¹(θ − m) with LL' = Σ give ‖e‖² ~ χ²_d,
    # so mean(‖e‖²) has mean d and sd √(2d/n).
    Lc = np.linalg.cholesky(cov)
    e = np.linalg.solve(Lc, (theta - mean).T)
    q = (e * e).sum(axis=0)
    assert abs(q.mean() - d) < 4 * math.sqrt(2 * d / n)
    # and the χ²_d law itself (draws are independent, so KS applies exactly)
    assert stats.kstest(q, stats.chi2(d).cdf).pvalue > 1e-3


def test_fixed_hyper_draws_detect_a_wrong_tau(fixed_problem):
    """Negative control: draws at another τ are caught by the same covariance check."""
    df = fixed_problem["df"]
    f = pw.fit("y | se(se) ~ 1 + x + (1 | g)", df, pooling=_TAU_FIXED * 2, priors=_FIXED_PRIORS,
               method="exact", seed=3, chains=4, draws=2000)
    theta = np.concatenate([f.draws.beta, f.draws.b], axis=-1).reshape(-1, 2 + fixed_problem["J"])
    cov = fixed_problem["cov"]
    se_S = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / theta.shape[0])
    assert (np.abs(np.cov(theta, rowvar=False) - cov) / se_S).max() > 5.0


# ------------------------------------------------------------------------------------------------
# 3. eight schools: the posterior of τ by quadrature

_ES_FORMULA = "y | se(sigma) ~ 1 + (1 | school)"
_ES_PRIORS = {"Intercept": "normal(0, 5)", "sd(Intercept|school)": "half_cauchy(5)"}


@pytest.fixture(scope="module")
def tau_quadrature():
    """p(τ | y) ∝ p(y | τ) p(τ) on a fine grid of τ, with log p(y | τ) from ``log_marginal``
    (validated against the dense normal above) and p(τ) the half-Cauchy(5) density written here.

    Tail: p(y | τ) decays like τ⁻⁸ and p(τ) like τ⁻², so the mass beyond τ = 500 is ~1e-17 of
    the total; the grid step 0.005 makes Simpson's error negligible next to any Monte Carlo error.
    """
    f = pw.fit(_ES_FORMULA, pw.datasets.eight_schools(), priors=_ES_PRIORS, method="exact", draws=10, chains=1)
    red = reduce(f.bound)
    hp = HyperPrior.from_bound(f.bound)
    tau = np.linspace(0.0, 500.0, 100_001)
    logp = log_marginal(red, hp, np.ones_like(tau), tau) + np.log(2 / (math.pi * 5)) - np.log1p((tau / 5) ** 2)
    dens = np.exp(logp - logp.max())
    dens /= integrate.simpson(dens, x=tau)
    mean = integrate.simpson(tau * dens, x=tau)
    sd = math.sqrt(integrate.simpson((tau - mean) ** 2 * dens, x=tau))
    cdf = integrate.cumulative_trapezoid(dens, tau, initial=0.0)
    cdf /= cdf[-1]
    return {"mean": mean, "sd": sd, "cdf": lambda t: np.interp(t, tau, cdf)}


def test_eight_schools_tau_matches_quadrature(tau_quadrature):
    f = pw.fit(_ES_FORMULA, pw.datasets.eight_schools(), priors=_ES_PRIORS, method="exact", seed=11,
               chains=4, draws=2500)
    draws = f.param("sd(Intercept|school)")
    # MCSE from ArviZ (ESS-based, so the few repeats of the independence Metropolis step count)
    mcse_mean = float(az.mcse(draws, method="mean"))
    mcse_sd = float(az.mcse(draws, method="sd"))
    assert float(az.ess(draws)) > 0.5 * draws.size  # nearly independent, as documented
    # |estimate − truth| < 4 mcse: a correct sampler fails with probability ≈ 6e-5 per check
    assert abs(draws.mean() - tau_quadrature["mean"]) < 4 * mcse_mean
    assert abs(draws.std() - tau_quadrature["sd"]) < 4 * mcse_sd
    # the whole law: KS against the quadrature CDF (draws ~independent; threshold 1e-3)
    assert stats.kstest(draws.ravel(), tau_quadrature["cdf"]).pvalue > 1e-3


def test_quadrature_check_can_fail(tau_quadrature):
    """Negative control: τ draws under another prior (half-Cauchy(1)) fail the same checks."""
    priors = dict(_ES_PRIORS, **{"sd(Intercept|school)": "half_cauchy(1)"})
    f = pw.fit(_ES_FORMULA, pw.datasets.eight_schools(), priors=priors, method="exact", seed=11,
               chains=4, draws=2500)
    draws = f.param("sd(Intercept|school)")
    assert abs(draws.mean() - tau_quadrature["mean"]) > 4 * float(az.mcse(draws, method="mean"))
    assert stats.kstest(draws.ravel(), tau_quadrature["cdf"]).pvalue < 1e-3


# ------------------------------------------------------------------------------------------------
# 4. seeds


def test_same_seed_same_draws_different_seed_different_draws():
    df = pw.datasets.eight_schools()
    a = pw.fit(_ES_FORMULA, df, priors=_ES_PRIORS, method="exact", seed=5, chains=2, draws=200)
    b = pw.fit(_ES_FORMULA, df, priors=_ES_PRIORS, method="exact", seed=5, chains=2, draws=200)
    c = pw.fit(_ES_FORMULA, df, priors=_ES_PRIORS, method="exact", seed=6, chains=2, draws=200)
    for name in ("Intercept", "sd(Intercept|school)"):
        np.testing.assert_array_equal(a.param(name), b.param(name))
        assert not np.array_equal(a.param(name), c.param(name))
    np.testing.assert_array_equal(a.draws.b, b.draws.b)
    assert not np.array_equal(a.draws.b, c.draws.b)
    # chains are different streams, not copies of one another
    assert not np.array_equal(a.param("Intercept")[0], a.param("Intercept")[1])


@pytest.mark.parametrize("method", ["exact", "empirical"])
@pytest.mark.parametrize("formula", ["y ~ x + {off} + (1 | g)", "y ~ x + {off} + (1 + x | g)"])
def test_gaussian_offset_is_subtracted_from_the_outcome(method: str, formula: str) -> None:
    """y ~ x + offset(o) is the model of y − o without the offset: same statistics, same draws."""
    rng = np.random.default_rng(11)
    n, J = 300, 12
    g = rng.integers(0, J, n)
    x = rng.normal(size=n)
    o = rng.normal(3.0, 1.0, size=n)
    y = 1.0 + 0.5 * x + o + rng.normal(0, 0.4, J)[g] + rng.normal(size=n)
    df = pd.DataFrame({"y": y, "y2": y - o, "x": x, "o": o, "g": [f"g{i}" for i in g]})
    priors = {"Intercept": "normal(0, 10)", "x": "normal(0, 10)", "sigma": "exponential(1)",
              "sd(Intercept|g)": "half_normal(2)"}  # the defaults scale with the outcome: fix them
    if "1 + x" in formula:
        priors.update({"sd(x|g)": "half_normal(2)", "cor(g)": "lkj(2)"})
    a = pw.fit(formula.format(off="offset(o)"), df, method=method, seed=3, draws=200, priors=priors)
    b = pw.fit(formula.format(off="1").replace("y ~", "y2 ~"), df, method=method, seed=3, draws=200,
               priors=priors)
    ra, rb = reduce(a.bound), reduce(b.bound)
    for name in ("a", "sy", "u", "sy2", "XtWX", "XtWy", "yWy"):
        np.testing.assert_allclose(getattr(ra, name), getattr(rb, name), rtol=1e-12, atol=1e-9)
    if method == "empirical" or "1 + x" in formula:  # (the simple exact path's grid follows the data scale)
        np.testing.assert_allclose(a.draws.beta, b.draws.beta, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(a.param("sigma"), b.param("sigma"), rtol=1e-8)
    else:
        assert abs(float(a.param("sigma").mean()) - float(b.param("sigma").mean())) < 0.02
