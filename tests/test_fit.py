"""Fit: names and shape of the results, pooling factors, predictions, memory budget, inputs."""

from __future__ import annotations

from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest

import poolwise as pw
from poolwise.compare import loo
from poolwise.errors import DataError, SpecError


@pytest.fixture(scope="module")
def drivers() -> pd.DataFrame:
    return pw.datasets.drivers(seed=3)


@pytest.fixture(scope="module")
def hfit(drivers: pd.DataFrame) -> pw.Fit:
    return pw.fit("reaction ~ night + (1 | driver)", drivers, seed=1)


def test_result_names_and_groups(hfit: pw.Fit, drivers: pd.DataFrame) -> None:
    post = hfit.idata.posterior
    assert set(post.data_vars) == {"Intercept", "night", "sigma", "sd(Intercept|driver)", "1|driver"}
    assert list(post["1|driver"].coords["driver"].values) == sorted(drivers["driver"].unique())
    assert post.sizes["chain"] == 4 and post.sizes["draw"] == 1000
    for group in ("posterior", "log_likelihood", "posterior_predictive", "observed_data", "sample_stats"):
        assert group in hfit.idata.groups(), group
    assert hfit.idata.log_likelihood["reaction"].shape == (4, 1000, len(drivers))
    s = hfit.summary()
    for col in ("mean", "sd", "ess_bulk", "ess_tail", "r_hat"):
        assert col in s.columns
    assert "1|driver[D01]" in s.index
    assert set(s.attrs["priors"].index) >= {"Intercept", "night", "sigma", "sd(Intercept|driver)"}
    assert (s["r_hat"] < 1.01).all()


def test_truth_recovered(hfit: pw.Fit, drivers: pd.DataFrame) -> None:
    truth = drivers.attrs["truth"]
    s = hfit.summary(groups=False)
    # each true value inside its 99.9% posterior interval (fails with prob ~0.4% if calibrated)
    for name, key in (("Intercept", "mu"), ("night", "beta_night"), ("sigma", "sigma"),
                      ("sd(Intercept|driver)", "tau")):
        d = hfit.param(name).ravel()
        lo, hi = np.quantile(d, [0.0005, 0.9995])
        assert lo < truth[key] < hi, (name, lo, truth[key], hi)
    assert s.loc["sigma", "mean"] > 0


def test_pooling_factor_is_the_shrinkage_with_fixed_sds() -> None:
    """With σ known (se) and τ fixed, E[θ_j] = λ_j E[μ] + (1 − λ_j) ȳ_j exactly."""
    rng = np.random.default_rng(0)
    J = 10
    n = np.arange(1, J + 1)
    g = np.repeat(np.arange(J), n)
    s = 0.8
    y = rng.normal(size=g.size) + rng.normal(0, 0.5, J)[g]
    df = pd.DataFrame({"y": y, "s": s, "g": [f"g{k:02d}" for k in g]})
    f = pw.fit("y | se(s) ~ 1 + (1 | g)", df, pooling=0.5, seed=0, draws=2000)
    pf = f.pooling_factors()
    lam = (s**2 / n) / (s**2 / n + 0.25)
    np.testing.assert_allclose(pf["lambda"].to_numpy(), lam, rtol=1e-12)
    ybar = np.bincount(g, weights=y) / n
    mu = f.param("Intercept").ravel()
    theta = f.group_intercepts().reshape(-1, J)
    # θ_j − [λ_j μ + (1 − λ_j) ȳ_j] has mean 0; 5 MC standard errors
    resid = theta - (lam[None] * mu[:, None] + (1 - lam[None]) * ybar[None])
    se = resid.std(axis=0) / np.sqrt(resid.shape[0])
    assert np.all(np.abs(resid.mean(axis=0)) < 5 * se)


def test_pooled_and_unpooled_limits(drivers: pd.DataFrame) -> None:
    pooled = pw.fit("reaction ~ night + (1 | driver)", drivers, pooling="pooled", draws=500)
    unpooled = pw.fit("reaction ~ night + (1 | driver)", drivers, pooling="unpooled", draws=500)
    assert "1|driver" not in pooled.idata.posterior and "sd(Intercept|driver)" not in pooled.idata.posterior
    assert (pooled.pooling_factors()["lambda"] == 1).all()
    assert (unpooled.pooling_factors()["lambda"] < 0.01).all()
    assert unpooled.priors.loc["sd(Intercept|driver)", "source"] == "pooling"


def test_predict_known_and_new_groups(hfit: pw.Fit) -> None:
    new = pd.DataFrame({"driver": ["D05", "NEW"], "night": [1, 0]})
    pm = hfit.predict(new, kind="mean")
    assert list(pm["new_group"]) == [False, True]
    d5 = list(hfit.bound.levels).index("D05")
    expect = (hfit.param("Intercept") + hfit.param("night") + hfit.draws.b[..., d5]).mean()
    assert pm["mean"].iloc[0] == pytest.approx(float(expect), rel=1e-12)
    # a new group's mean is Intercept + b_new with b_new ~ N(0, τ²): variance adds E[τ²]
    tau2 = float((hfit.param("sd(Intercept|driver)") ** 2).mean())
    var_new = pm["sd"].iloc[1] ** 2
    var_expect = float(hfit.param("Intercept").var()) + tau2
    assert var_new == pytest.approx(var_expect, rel=0.1)  # 4000 draws: SE of a variance ≈ 2.2%
    pr = hfit.predict(new, kind="response")
    sig2 = float((hfit.param("sigma") ** 2).mean())
    assert pr["sd"].iloc[1] ** 2 == pytest.approx(var_expect + sig2, rel=0.1)
    with pytest.raises(SpecError):
        hfit.predict(new, kind="median")
    with pytest.raises(DataError):
        hfit.predict(pd.DataFrame({"driver": ["D05"]}))


def test_memory_budget_makes_pointwise_lazy(drivers: pd.DataFrame) -> None:
    small = pw.fit("reaction ~ night + (1 | driver)", drivers, seed=4, memory_budget=10_000)
    big = pw.fit("reaction ~ night + (1 | driver)", drivers, seed=4)
    assert "log_likelihood" not in small.idata.groups()
    with pytest.raises(SpecError, match="memory budget"):
        small.log_likelihood()
    np.testing.assert_array_equal(small.draws.beta, big.draws.beta)
    ours = loo(small)
    ref = az.loo(big.idata, pointwise=True)
    assert ours["elpd_loo"] == pytest.approx(float(ref.elpd_loo), abs=1e-6)
    assert ours["se"] == pytest.approx(float(ref.se), rel=1e-6)
    np.testing.assert_allclose(ours["pareto_k"], np.asarray(ref.pareto_k), atol=1e-8)


def test_reproducible(drivers: pd.DataFrame) -> None:
    a = pw.fit("reaction ~ night + (1 | driver)", drivers, seed=7, draws=300)
    b = pw.fit("reaction ~ night + (1 | driver)", drivers, seed=7, draws=300)
    c = pw.fit("reaction ~ night + (1 | driver)", drivers, seed=8, draws=300)
    np.testing.assert_array_equal(a.draws.b, b.draws.b)
    np.testing.assert_array_equal(a.draws.sigma, b.draws.sigma)
    assert not np.array_equal(a.draws.sigma, c.draws.sigma)


def test_inputs_agree(drivers: pd.DataFrame, tmp_path: Path) -> None:
    import polars as pl
    import pyarrow as pa

    csv = tmp_path / "d.csv"
    pq = tmp_path / "d.parquet"
    drivers.to_csv(csv, index=False)
    drivers.to_parquet(pq)
    ref = pw.fit("reaction ~ night + (1 | driver)", drivers, seed=2, draws=200)
    for src in (pl.from_pandas(drivers), pa.Table.from_pandas(drivers), str(csv), pq):
        f = pw.fit("reaction ~ night + (1 | driver)", src, seed=2, draws=200)
        np.testing.assert_allclose(f.draws.beta, ref.draws.beta, rtol=1e-10)


def test_netcdf_round_trip_and_no_overwrite(hfit: pw.Fit, tmp_path: Path) -> None:
    path = tmp_path / "fit.nc"
    hfit.to_netcdf(path)
    back = az.from_netcdf(path)
    np.testing.assert_array_equal(back.posterior["sigma"].values, hfit.idata.posterior["sigma"].values)
    size = path.stat().st_size
    with pytest.raises(DataError, match="exists"):
        hfit.to_netcdf(path)
    assert path.stat().st_size == size


def test_group_values_are_thinned_past_the_group_budget(tmp_path: Path) -> None:
    """Past group_budget the group values keep an evenly thinned subset of draws; the rest keeps all."""
    rng = np.random.default_rng(5)
    n, J = 6000, 500
    g = rng.integers(0, J, n)
    df = pd.DataFrame({"y": rng.normal(size=n) + rng.normal(0, 0.5, J)[g], "x": rng.normal(size=n),
                       "g": [f"g{i:03d}" for i in g]})
    full = pw.fit("y ~ x + (1 | g)", df, seed=2, draws=400)
    thin = pw.fit("y ~ x + (1 | g)", df, seed=2, draws=400, group_budget=4 * 60 * J * 8)
    assert full.value_draws is None
    vd = thin.value_draws
    assert vd is not None and vd.size == 60 and vd[0] == 0 and vd[-1] == 399
    assert thin.draws.b is not None and thin.draws.b.shape == (4, 60, J)
    np.testing.assert_array_equal(thin.draws.beta, full.draws.beta)  # hyperparameters and β: every draw
    np.testing.assert_array_equal(thin.param("sd(Intercept|g)"), full.param("sd(Intercept|g)"))
    pd.testing.assert_frame_equal(thin.pooling_factors(), full.pooling_factors())
    a, b = full.group_estimates(), thin.group_estimates()  # draws; Rao-Blackwellized moments
    se = a["sd"] / np.sqrt(1600)  # the Monte Carlo error of the draws' means (near-independent draws)
    assert float(((a["mean"] - b["mean"]).abs() / se).max()) < 5.0
    assert float((b["sd"] / a["sd"]).sub(1).abs().max()) < 5 * np.sqrt(1 / (2 * 1600)) * 1.5  # SD's MC error
    np.testing.assert_allclose(b["hi"] - b["mean"], 1.959964 * b["sd"], rtol=1e-6)
    s = thin.summary()
    assert "1|g[g000]" in s.index and "sigma" in s.index
    assert any("kept for 60 of 400 draws" in note for note in thin.notes())
    assert thin.predict(df.head(4)).shape == (4, 5)
    thin.to_netcdf(tmp_path / "thin.nc")
    back = az.from_netcdf(tmp_path / "thin.nc")
    assert "group_values" in back.groups() and back["group_values"]["1|g"].shape == (4, 60, J)


def test_group_moments_equal_the_per_draw_average() -> None:
    """Rao-Blackwellized moments by size classes equal the direct average over draws and groups."""
    from poolwise.infer.exact import group_moments
    from poolwise.reduce import reduce_arrays

    rng = np.random.default_rng(9)
    n, J, D = 400, 30, 50
    g = rng.integers(0, J, n)
    X = np.c_[np.ones(n), rng.normal(size=n)]
    y = X @ np.array([1.0, 0.3]) + rng.normal(0, 0.5, J)[g] + rng.normal(size=n)
    red = reduce_arrays(y, X, np.ones(n), g, J)
    sigma, tau = rng.uniform(0.8, 1.2, D), rng.uniform(0.3, 0.7, D)
    beta = rng.normal([1.0, 0.3], 0.1, size=(D, 2))
    mean, sd = group_moments(red, sigma, tau, beta, 0)
    rho = tau**2 / sigma**2
    k = rho[:, None] / (1 + red.a[None, :] * rho[:, None])  # (D, J)
    m = beta[:, :1] + k * (red.sy[None, :] - beta @ red.u.T)
    v = sigma[:, None] ** 2 * k
    np.testing.assert_allclose(mean, m.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sd, np.sqrt(v.mean(0) + m.var(0)), rtol=1e-10)
