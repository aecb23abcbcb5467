"""The collapsed exact path for q correlated group terms (poolwise.infer.collapsed).

1. The collapsed marginal equals the dense multivariate normal density of y (β and b integrated
   out by hand), and, for q = 1, poolwise.infer.exact's marginal.
2. The conditional moments of (β, b) given (σ, Σ) equal the dense Gaussian posterior, and the
   direct draws (nothing to sample) match them within Monte Carlo error.
3. sleepstudy with correlated intercepts and slopes: no divergences, posterior means near lme4's
   REML fit, and the same posterior as a plain non-centered NumPyro NUTS of the full model.
4. Same seed, same draws.
5. The compile-free hyperparameter sampler (independence MH with an adapted t proposal): its
   NumPy log posterior equals NumPyro's potential, its LKJ-Cholesky density and CorrCholesky
   map equal NumPyro's, it agrees with NUTS on sleepstudy, falls back to NUTS when the proposal
   fails, and passes simulation-based calibration (with a wrong-prior negative control).
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
    assert fit["info"]["hyper_sampler"] == "independence MH (t proposal)"  # the default, no fallback
    assert fit["info"]["divergences"] == 0
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


@pytest.mark.validate  # full-model NUTS, 85 s; make test keeps poolwise's exact-vs-nuts on sleepstudy
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



# ----------------------------------------------------------------------------------------------
# the compile-free hyperparameter sampler (independence MH)


def _jax_model(st: collapsed.BlockStats, pr: dict[str, Any], *, Lam_fixed: np.ndarray | None = None,
               correlated: bool = True, has_sigma: bool = True) -> Any:
    js = collapsed._to_jax(st)
    m0, s0 = jnp.asarray(pr["m0"]), jnp.asarray(pr["s0"])
    return collapsed._hyper_model(lambda sig, lam: collapsed._pieces(js, m0, s0, sig, lam).ll, st.q,
                                  sigma_prior=pr["sigma_prior"] if has_sigma else None,
                                  sd_priors=None if Lam_fixed is not None else pr["sd_priors"],
                                  lkj_eta=pr["lkj_eta"],
                                  Lam_fixed=None if Lam_fixed is None else jnp.asarray(Lam_fixed),
                                  correlated=correlated)


@pytest.mark.parametrize("case", ["sleep", "q3", "q3_indep", "q5", "sigma_only", "sd_only"])
def test_numpy_log_posterior_equals_numpyro_potential(case: str) -> None:
    from numpyro.infer.util import potential_energy

    if case == "sleep":
        s = _sleep()
        st = collapsed.block_stats(s["y"], s["X"], s["X"], None, s["g"], s["J"])
        pr = dict(s["priors"])
    else:
        q = {"q5": 5, "sigma_only": 2}.get(case, 3)
        rng = np.random.default_rng(q)
        n, J = 90, 7
        X = np.c_[np.ones(n), rng.normal(size=(n, 2))]
        Z = np.c_[np.ones(n), rng.normal(size=(n, q - 1))]
        w = rng.uniform(0.5, 2.0, n) if case == "sd_only" else None
        st = collapsed.block_stats(rng.normal(size=n) * 2, X, Z, w, rng.integers(0, J, n), J)
        pr = {"m0": M0, "s0": S0, "sigma_prior": Prior("half_normal", (3.0,)),
              "sd_priors": [Prior("half_student_t", (3.0, 2.0)), Prior("gamma", (2.0, 1.5))]
              + [Prior("exponential", (0.7,))] * (q - 2),
              "lkj_eta": 0.7 if case == "q3" else 2.5}
    has_sigma = case != "sd_only"
    correlated = case != "q3_indep"
    Lam_fixed = _lambda(st.q, False) if case == "sigma_only" else None
    model = _jax_model(st, pr, Lam_fixed=Lam_fixed, correlated=correlated, has_sigma=has_sigma)
    target = collapsed._HyperTarget(st, pr["m0"], pr["s0"], sigma_prior=pr["sigma_prior"] if has_sigma else None,
                                    sd_priors=None if Lam_fixed is not None else pr["sd_priors"],
                                    lkj_eta=pr["lkj_eta"], Lam_fixed=Lam_fixed, correlated=correlated)
    rng = np.random.default_rng(1)
    theta = target.center()[None] + rng.normal(size=(7, target.dim)) * 0.8
    got = target(theta)
    for k in range(theta.shape[0]):
        i, u = 0, {}
        if has_sigma:
            u["sigma"] = jnp.asarray(theta[k, 0])
            i = 1
        if Lam_fixed is None:
            u["sd"] = jnp.asarray(theta[k, i:i + st.q])
            if target.n_corr:
                u["L"] = jnp.asarray(theta[k, i + st.q:])
        ref = -float(potential_energy(model, (), {}, u))
        assert abs(got[k] - ref) < 1e-10 * max(1.0, abs(ref)), (k, got[k], ref)


@pytest.mark.parametrize("q", [2, 3, 4, 6])
@pytest.mark.parametrize("eta", [0.5, 1.0, 2.5])
def test_lkj_cholesky_density_and_map_equal_numpyro(q: int, eta: float) -> None:
    from numpyro.distributions.transforms import CorrCholeskyTransform

    rng = np.random.default_rng(q)
    x = rng.normal(size=(5, q * (q - 1) // 2)) * 1.5
    L, logjac = collapsed._corr_cholesky(x, q)
    tr = CorrCholeskyTransform()
    Lj = np.asarray(tr(jnp.asarray(x)))
    np.testing.assert_allclose(L, Lj, rtol=0, atol=1e-13)
    np.testing.assert_allclose(logjac, np.asarray(tr.log_abs_det_jacobian(jnp.asarray(x), jnp.asarray(Lj))),
                               rtol=1e-12, atol=1e-12)
    ref = np.asarray(dist.LKJCholesky(q, eta).log_prob(jnp.asarray(L)))
    np.testing.assert_allclose(collapsed._lkj_cholesky_logpdf(L, eta), ref, rtol=1e-12, atol=1e-12)


@functools.cache
def _nuts_fit(seed: int = 0) -> dict[str, Any]:
    s = _sleep()
    st = collapsed.block_stats(s["y"], s["X"], s["X"], None, s["g"], s["J"])
    return collapsed.sample(st, has_sigma=True, seed=seed, chains=CHAINS, draws=DRAWS, warmup=WARMUP, hyper="nuts",
                            **s["priors"])


def test_imh_matches_nuts_on_sleepstudy() -> None:
    imh, nuts = _collapsed_fit(), _nuts_fit()
    assert imh["info"]["hyper_sampler"] == "independence MH (t proposal)"
    assert nuts["info"]["hyper_sampler"] == "NUTS on the collapsed marginal"
    assert imh["info"]["acceptance_rate"] > 0.5
    assert imh["sample_stats"]["accepted"].shape == imh["sample_stats"]["lp"].shape == (CHAINS, DRAWS)
    a = _quantities(imh["beta"], imh["sigma"], imh["sd"], imh["corr"][..., 0, 1])
    b = _quantities(nuts["beta"], nuts["sigma"], nuts["sd"], nuts["corr"][..., 0, 1])
    for name in a:
        tol = 4.0 * np.hypot(_mcse(a[name]), _mcse(b[name]))
        assert tol < 0.25 * a[name].std(), name
        assert abs(a[name].mean() - b[name].mean()) < tol, (name, a[name].mean(), b[name].mean(), tol)
    # lp is the same density in both (NumPyro's potential = −lp): equal distributions of lp
    assert abs(imh["sample_stats"]["lp"].mean() - nuts["sample_stats"]["lp"].mean()) < \
        4.0 * np.hypot(_mcse(imh["sample_stats"]["lp"]), _mcse(nuts["sample_stats"]["lp"]))


def test_imh_falls_back_to_nuts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collapsed, "IMH_MIN_ACCEPT", 1.01)  # no acceptance rate is good enough
    d = _data(2, False, seed=7)
    st = collapsed.block_stats(d["y"], d["X"], d["Z"], None, d["g"], d["J"])
    out = collapsed.sample(st, m0=M0, s0=S0, sigma_prior=Prior("half_normal", (2.0,)),
                           sd_priors=[Prior("half_normal", (1.0,))] * 2, lkj_eta=2.0, has_sigma=True, seed=0,
                           chains=2, draws=100, warmup=100)
    assert out["info"]["hyper_sampler"] == "NUTS on the collapsed marginal"
    assert "acceptance rate" in out["info"]["hyper_fallback"]
    assert out["sigma"].shape == (2, 100) and np.all(np.isfinite(out["beta"]))


# simulation-based calibration (Talts et al., 2018) of the IMH path, q = 2, 8 groups

SBC_REPS, SBC_KEEP, SBC_THIN, SBC_BINS = 60, 99, 3, 10
SBC_TRUE = {"m0": np.zeros(2), "s0": np.ones(2), "sigma_prior": Prior("exponential", (1.0,)),
            "sd_priors": [Prior("half_normal", (1.0,))] * 2, "lkj_eta": 2.0}


def _sbc_pvalues(fit_priors: dict[str, Any], seed: int) -> tuple[dict[str, float], list[str]]:
    from scipy.stats import chisquare

    rng = np.random.default_rng(seed)
    J, n_per = 8, 5
    g = np.repeat(np.arange(J), n_per)
    ranks: dict[str, list[int]] = {k: [] for k in ("sigma", "sd0", "sd1", "corr", "beta0", "beta1")}
    samplers = []
    for rep in range(SBC_REPS):
        x = rng.normal(size=g.size)
        X = np.c_[np.ones(g.size), x]
        beta = rng.normal(SBC_TRUE["m0"], SBC_TRUE["s0"])
        sigma = rng.exponential(1.0)
        sd = np.abs(rng.normal(size=2))
        rho = 2.0 * rng.beta(2.0, 2.0) - 1.0  # LKJ(2) for q = 2
        Lr = np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]]))
        b = rng.normal(size=(J, 2)) @ (sd[:, None] * Lr).T
        y = X @ beta + np.sum(X * b[g], axis=1) + sigma * rng.normal(size=g.size)
        st = collapsed.block_stats(y, X, X, None, g, J)
        out = collapsed.sample(st, has_sigma=True, seed=rep, chains=1, draws=SBC_KEEP * SBC_THIN, **fit_priors)
        samplers.append(out["info"]["hyper_sampler"])
        th = slice(SBC_THIN - 1, None, SBC_THIN)
        draws = {"sigma": out["sigma"][0, th], "sd0": out["sd"][0, th, 0], "sd1": out["sd"][0, th, 1],
                 "corr": out["corr"][0, th, 0, 1], "beta0": out["beta"][0, th, 0], "beta1": out["beta"][0, th, 1]}
        truth = {"sigma": sigma, "sd0": sd[0], "sd1": sd[1], "corr": rho, "beta0": beta[0], "beta1": beta[1]}
        for k in ranks:
            ranks[k].append(int(np.sum(draws[k] < truth[k])))
    pvals = {}
    for k, r in ranks.items():  # ranks 0..99 in 10 bins of 10
        counts = np.bincount(np.asarray(r) * SBC_BINS // (SBC_KEEP + 1), minlength=SBC_BINS)
        pvals[k] = float(chisquare(counts).pvalue)
    return pvals, samplers


def test_sbc_imh_calibrated_and_negative_control_flagged() -> None:
    alpha = 0.001 / 6  # Bonferroni over the six quantities
    pvals, samplers = _sbc_pvalues(SBC_TRUE, seed=2024)
    assert samplers.count("independence MH (t proposal)") >= 55, samplers
    assert min(pvals.values()) > alpha, pvals
    # negative control: the fit uses SD priors 5 times too narrow; the ranks must flag it
    wrong = dict(SBC_TRUE, sd_priors=[Prior("half_normal", (0.2,))] * 2)
    pvals_wrong, _ = _sbc_pvalues(wrong, seed=2024)
    assert min(pvals_wrong.values()) < alpha, pvals_wrong
