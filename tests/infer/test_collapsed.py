"""The collapsed exact path for q correlated group terms (poolwise.infer.collapsed).

1. The collapsed marginal equals the dense multivariate normal density of y (β and b integrated
   out by hand), and, for q = 1, poolwise.infer.exact's marginal.
2. The conditional moments of (β, b) given (σ, Σ) equal the dense Gaussian posterior, and the
   direct draws (nothing to sample) match them within Monte Carlo error.
3. sleepstudy with correlated intercepts and slopes: no divergences, posterior means near lme4's
   REML fit, and the same posterior as a plain non-centered NumPyro NUTS of the full model.
4. Same seed, same draws.
"""

from __future__ import annotations

import functools
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS, init_to_median
from scipy.stats import multivariate_normal

import poolwise.datasets
from poolwise.infer import collapsed, exact
from poolwise.priors import Prior
from poolwise.reduce import reduce_arrays


def _data(q: int, weighted: bool, seed: int = 0, n: int = 70, J: int = 9) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 10 * q + int(weighted))
    g = rng.integers(0, J - 1, n)  # the last group has no rows
    X = np.c_[np.ones(n), rng.normal(size=(n, 2))]
    Z = np.c_[np.ones(n), rng.normal(size=(n, q - 1))] if q > 1 else np.ones((n, 1))
    y = X @ np.array([1.0, 0.5, -0.3]) + rng.normal(size=n) * 0.8
    w = rng.uniform(0.3, 3.0, n) if weighted else None
    return {"y": y, "X": X, "Z": Z, "w": w, "g": g, "J": J}


def _lambda(q: int, zero_sd: bool) -> np.ndarray:
    rng = np.random.default_rng(q)
    A = rng.normal(size=(q, q))
    Cv = A @ A.T + 0.5 * np.eye(q)
    R = Cv / np.sqrt(np.outer(np.diag(Cv), np.diag(Cv)))
    s = np.linspace(1.3, 0.4, q)
    if zero_sd:
        s[-1] = 0.0
    Lam: np.ndarray = s[:, None] * np.linalg.cholesky(R)
    return Lam


def _zblock(Z: np.ndarray, g: np.ndarray, J: int) -> np.ndarray:
    n, q = Z.shape
    out = np.zeros((n, J * q))
    for i in range(n):
        out[i, g[i] * q:(g[i] + 1) * q] = Z[i]
    return out


M0 = np.array([0.2, -0.1, 0.3])
S0 = np.array([2.0, 1.5, 0.7])


@pytest.mark.parametrize("q", [1, 2, 3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("zero_sd", [False, True])
def test_log_marginal_matches_dense(q: int, weighted: bool, zero_sd: bool) -> None:
    d = _data(q, weighted)
    st = collapsed.block_stats(d["y"], d["X"], d["Z"], d["w"], d["g"], d["J"])
    sigma = 0.9
    Lam = _lambda(q, zero_sd)
    n = d["y"].size
    w = np.ones(n) if d["w"] is None else d["w"]
    Zb = _zblock(d["Z"], d["g"], d["J"])
    cov = (np.diag(sigma**2 / w) + Zb @ np.kron(np.eye(d["J"]), Lam @ Lam.T) @ Zb.T
           + d["X"] @ np.diag(S0**2) @ d["X"].T)
    dense = multivariate_normal(d["X"] @ M0, cov).logpdf(d["y"])
    got = float(collapsed.log_marginal(st, M0, S0, sigma, Lam))
    assert got == pytest.approx(dense, rel=1e-9)
    # the same on the LAPACK branch (used for q > 4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(collapsed, "_UNROLL_MAX_Q", 0)
        assert float(collapsed.log_marginal(st, M0, S0, sigma, Lam)) == pytest.approx(dense, rel=1e-9)


@pytest.mark.parametrize("weighted", [False, True])
def test_q1_matches_exact_path(weighted: bool) -> None:
    d = _data(1, weighted)
    w = np.ones(d["y"].size) if d["w"] is None else d["w"]
    st = collapsed.block_stats(d["y"], d["X"], d["Z"], d["w"], d["g"], d["J"])
    red = reduce_arrays(d["y"], d["X"], w, d["g"], d["J"])
    hp = exact.HyperPrior(M0, S0, None, None)
    for sigma, tau in [(0.9, 0.6), (1.7, 0.05), (0.4, 3.0), (1.0, 0.0)]:
        ref = float(exact.log_marginal(red, hp, sigma, tau)[0])
        got = float(collapsed.log_marginal(st, M0, S0, sigma, np.array([[tau]])))
        assert got == pytest.approx(ref, rel=1e-9)


def _dense_posterior(d: dict[str, Any], sigma: float, Lam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and covariance of θ = (β, b_1, …, b_J) by dense linear algebra."""
    n = d["y"].size
    w = np.ones(n) if d["w"] is None else d["w"]
    J, q = d["J"], Lam.shape[0]
    F = np.c_[d["X"], _zblock(d["Z"], d["g"], J)]
    prior_cov = np.zeros((F.shape[1],) * 2)
    prior_cov[:3, :3] = np.diag(S0**2)
    prior_cov[3:, 3:] = np.kron(np.eye(J), Lam @ Lam.T)
    prior_mean = np.r_[M0, np.zeros(J * q)]
    # posterior in covariance form (valid for a singular prior): θ | y ~ N(m + K(y − Fm), C − K F C)
    Vy = F @ prior_cov @ F.T + np.diag(sigma**2 / w)
    K = prior_cov @ F.T @ np.linalg.inv(Vy)
    return prior_mean + K @ (d["y"] - F @ prior_mean), prior_cov - K @ F @ prior_cov


def _joint_from_conditionals(st: collapsed.BlockStats, sigma: float, Lam: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
    """(β, b) moments implied by β ~ N(mβ, Vβ) and b_j | β ~ N(K_j(ZtWy_j − ZtWX_j β)/σ², K_j)."""
    mb, Vb, K = collapsed.conditional_moments(st, M0, S0, sigma, Lam)
    J, q = K.shape[0], K.shape[1]
    H = -np.einsum("jab,jbk->jak", K, st.ZtWX) / sigma**2  # ∂E[b_j|β]/∂β
    c = np.einsum("jab,jb->ja", K, st.ZtWy) / sigma**2
    mean = np.r_[mb, (c + H @ mb).ravel()]
    Hs = H.reshape(J * q, -1)
    cov = np.zeros((3 + J * q,) * 2)
    cov[:3, :3] = Vb
    cov[3:, :3] = Hs @ Vb
    cov[:3, 3:] = cov[3:, :3].T
    cov[3:, 3:] = Hs @ Vb @ Hs.T
    for j in range(J):
        cov[3 + j * q:3 + (j + 1) * q, 3 + j * q:3 + (j + 1) * q] += K[j]
    return mean, cov


@pytest.mark.parametrize("q,weighted,zero_sd", [(1, False, False), (2, True, False), (3, False, True),
                                                (3, True, False)])
def test_conditional_moments_match_dense(q: int, weighted: bool, zero_sd: bool) -> None:
    d = _data(q, weighted, seed=3)
    st = collapsed.block_stats(d["y"], d["X"], d["Z"], d["w"], d["g"], d["J"])
    sigma, Lam = 0.8, _lambda(q, zero_sd)
    mean, cov = _joint_from_conditionals(st, sigma, Lam)
    dmean, dcov = _dense_posterior(d, sigma, Lam)
    np.testing.assert_allclose(mean, dmean, rtol=0, atol=1e-8 * max(1.0, float(np.max(np.abs(dmean)))))
    np.testing.assert_allclose(cov, dcov, atol=1e-8 * float(np.max(np.abs(dcov))))


def test_direct_draws_match_dense() -> None:
    """Known standard errors and a fixed Σ leave nothing to sample: the draws are the exact conditionals."""
    q = 2
    d = _data(q, True, seed=5)
    st = collapsed.block_stats(d["y"], d["X"], d["Z"], d["w"], d["g"], d["J"])
    Lam = _lambda(q, False)
    out = collapsed.sample(st, m0=M0, s0=S0, sigma_prior=None, sd_priors=None, lkj_eta=1.0, has_sigma=False,
                           Sigma_fixed=Lam @ Lam.T, seed=1, chains=2, draws=4000)
    assert out["sigma"] is None and out["sd"] is None and out["corr"] is None
    theta = np.c_[out["beta"].reshape(-1, 3), out["b"].reshape(8000, -1)]
    dmean, dcov = _dense_posterior(d, 1.0, Lam)
    se = np.sqrt(np.diag(dcov) / theta.shape[0])  # independent draws
    assert np.all(np.abs(theta.mean(0) - dmean) < 4.5 * se)
    sd_ratio = theta.std(0) / np.sqrt(np.diag(dcov))
    assert np.all(np.abs(sd_ratio - 1.0) < 0.06)  # SE of an SD ratio with 8000 draws ≈ 0.008
    # the pooled model: Σ = 0 gives b ≡ 0
    pooled = collapsed.sample(st, m0=M0, s0=S0, sigma_prior=None, sd_priors=None, lkj_eta=1.0, has_sigma=False,
                              Sigma_fixed=np.zeros((q, q)), seed=1, chains=1, draws=10)
    assert np.all(pooled["b"] == 0.0)


# ----------------------------------------------------------------------------------------------
# sleepstudy

CHAINS, WARMUP, DRAWS = 4, 500, 1000
# lme4::lmer(Reaction ~ Days + (Days | Subject), sleepstudy) (REML)
LME4 = {"beta": (251.405, 10.467), "sd": (24.741, 5.922), "sigma": 25.592, "corr": 0.066}


@functools.cache
def _sleep() -> dict[str, Any]:
    df = poolwise.datasets.sleepstudy()
    y = df["Reaction"].to_numpy(float)
    days = df["Days"].to_numpy(float)
    g = df["Subject"].astype("category").cat.codes.to_numpy()
    X = np.c_[np.ones(y.size), days]
    sy = float(y.std(ddof=1))
    priors = {
        "m0": np.array([y.mean(), 0.0]),
        "s0": np.array([10.0 * sy, 2.5 * sy / days.std(ddof=1)]),
        "sigma_prior": Prior("exponential", (1.0 / sy,)),
        "sd_priors": [Prior("half_student_t", (3.0, 2.5 * sy))] * 2,
        "lkj_eta": 2.0,
    }
    return {"y": y, "X": X, "g": g, "J": int(g.max()) + 1, "priors": priors}


@functools.cache
def _collapsed_fit(seed: int = 0) -> dict[str, Any]:
    s = _sleep()
    st = collapsed.block_stats(s["y"], s["X"], s["X"], None, s["g"], s["J"])
    return collapsed.sample(st, has_sigma=True, seed=seed, chains=CHAINS, draws=DRAWS, warmup=WARMUP, **s["priors"])


def _quantities(beta: np.ndarray, sigma: np.ndarray, sd: np.ndarray, corr: np.ndarray) -> dict[str, np.ndarray]:
    return {"beta0": beta[..., 0], "beta1": beta[..., 1], "sigma": sigma, "sd0": sd[..., 0], "sd1": sd[..., 1],
            "corr": corr}


def _mcse(a: np.ndarray) -> float:
    return float(az.mcse(az.convert_to_dataset({"v": a}), method="mean")["v"])


def test_sleepstudy_near_lme4() -> None:
    fit = _collapsed_fit()
    assert fit["sample_stats"]["diverging"].sum() == 0
    beta, sd, sigma, corr = fit["beta"], fit["sd"], fit["sigma"], fit["corr"][..., 0, 1]
    # β's posterior mean is the GLS estimate at (close to) the REML variance components, up to the
    # averaging over them: within half a posterior SD (posterior SDs ≈ 7.4 and 1.7, lme4 SEs 6.8, 1.5).
    for k in range(2):
        assert abs(beta[..., k].mean() - LME4["beta"][k]) < 0.5 * beta[..., k].std()
    # The SD posteriors are right-skewed (18 subjects), so their means exceed the REML estimates
    # (which are near the posterior modes); by how much is set by the skew: at most 25 %.
    for k in range(2):
        ratio = sd[..., k].mean() / LME4["sd"][k]
        assert 1.0 < ratio < 1.25, ratio
    # σ is informed by 144 residual degrees of freedom: within 5 %.
    assert abs(sigma.mean() / LME4["sigma"] - 1.0) < 0.05
    # the correlation is poorly identified (posterior SD ≈ 0.27) and shrunk to 0 by LKJ(2)
    assert abs(corr.mean() - LME4["corr"]) < 0.5 * corr.std()
    # the varying slopes: a subject with a steep slope (lme4's BLUP for 308 is +9.2 ms/day)
    b = fit["b"]
    assert b.shape == (CHAINS, DRAWS, 18, 2)
    assert abs(b[..., 0, 1].mean() - 9.2) < 1.0


def _full_model(X: jax.Array, g: jax.Array, J: int, pr: dict[str, Any], y: jax.Array) -> None:
    beta = numpyro.sample("beta", dist.Normal(jnp.asarray(pr["m0"]), jnp.asarray(pr["s0"])).to_event(1))
    sigma = numpyro.sample("sigma", dist.Exponential(pr["sigma_prior"].kwargs["rate"]))
    t = pr["sd_priors"][0].kwargs
    sd = numpyro.sample("sd", dist.FoldedDistribution(dist.StudentT(t["df"], 0.0, t["sigma"])).expand([2])
                        .to_event(1))
    L = numpyro.sample("L", dist.LKJCholesky(2, pr["lkj_eta"]))
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([J, 2]).to_event(2))
    b = z @ (sd[:, None] * L).T  # b_j = diag(sd) L z_j
    mu = X @ beta + jnp.sum(X * b[g], axis=1)
    numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_sleepstudy_matches_full_nuts() -> None:
    s = _sleep()
    kernel = NUTS(_full_model, target_accept_prob=0.95, init_strategy=init_to_median)
    mcmc = MCMC(kernel, num_warmup=WARMUP, num_samples=DRAWS, num_chains=CHAINS, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(1), jnp.asarray(s["X"]), jnp.asarray(s["g"]), s["J"], s["priors"],
             jnp.asarray(s["y"]), extra_fields=("diverging",))
    smp = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    full = _quantities(smp["beta"], smp["sigma"], smp["sd"], smp["L"][..., 1, 0])
    fit = _collapsed_fit()
    ours = _quantities(fit["beta"], fit["sigma"], fit["sd"], fit["corr"][..., 0, 1])
    assert int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum()) <= 5  # the full model's funnel
    for name in ours:
        tol = 4.0 * np.hypot(_mcse(ours[name]), _mcse(full[name]))
        assert tol < 0.25 * ours[name].std(), name  # the check has power
        assert abs(ours[name].mean() - full[name].mean()) < tol, (name, ours[name].mean(), full[name].mean(), tol)


def test_same_seed_same_draws() -> None:
    s = _sleep()
    st = collapsed.block_stats(s["y"], s["X"], s["X"], None, s["g"], s["J"])
    again = collapsed.sample(st, has_sigma=True, seed=0, chains=CHAINS, draws=DRAWS, warmup=WARMUP, **s["priors"])
    first = _collapsed_fit(0)
    for key in ("sigma", "sd", "corr", "beta", "b"):
        np.testing.assert_array_equal(first[key], again[key])
    np.testing.assert_array_equal(first["sample_stats"]["lp"], again["sample_stats"]["lp"])
    assert first["corr"].shape == (CHAINS, DRAWS, 2, 2) and np.allclose(first["corr"][..., 0, 0], 1.0)
    # a different seed, different draws (on the cheap direct path: nothing to sample)
    direct: dict[str, Any] = dict(m0=s["priors"]["m0"], s0=s["priors"]["s0"], sigma_prior=None, sd_priors=None,
                                  lkj_eta=1.0, has_sigma=False, Sigma_fixed=np.eye(2), chains=1, draws=5)
    assert not np.array_equal(collapsed.sample(st, seed=1, **direct)["b"], collapsed.sample(st, seed=2, **direct)["b"])
