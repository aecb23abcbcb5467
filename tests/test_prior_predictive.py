"""Fit.prior_predictive and its figure: shapes, and moments against the priors in closed form."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import poolwise as pw
from poolwise.errors import SpecError
from poolwise.fit import Fit
from poolwise.infer import BlockDraws, Draws
from poolwise.spec import ModelSpec

N_DRAWS = 4000


def _frame(n_groups: int = 6, per_group: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat([f"g{j}" for j in range(n_groups)], per_group)
    return pd.DataFrame({"g": g, "x": rng.normal(size=g.size), "y": rng.normal(size=g.size)})


def _unfitted(spec: ModelSpec, df: pd.DataFrame) -> Fit:
    """A Fit with placeholder draws: the prior predictive reads the bound model only."""
    from poolwise import data as _data

    bound = spec.bind(_data.read_table(df))
    blocks = []
    for blk in bound.blocks:
        sd = None if blk.Sigma is not None else np.ones((1, 2, blk.q))
        values = None if blk.pooled else np.zeros((1, 2, blk.n_groups, blk.q))
        corr = np.broadcast_to(np.eye(blk.q), (1, 2, blk.q, blk.q)).copy() if (blk.Sigma is None and blk.q > 1
                                                                             and blk.term.correlated) else None
        blocks.append(BlockDraws(sd=sd, corr=corr, values=values))
    aux = {name: np.ones((1, 2)) for name in ("nu", "phi") if name in spec.fam.params}
    draws = Draws(beta=np.zeros((1, 2, len(bound.coef_names))), sigma=np.ones((1, 2)) if bound.has_sigma else None,
                  tau=None, b=None, aux=aux, blocks=tuple(blocks))
    return Fit(bound, draws)


def test_shapes_and_seed() -> None:
    df = pw.datasets.drivers(seed=1)
    f = pw.fit("reaction ~ night + (1 | driver)", df, draws=100, seed=0)
    a = f.prior_predictive(draws=30, seed=5)
    assert a.shape == (30, len(df)) and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, f.prior_predictive(draws=30, seed=5))
    assert not np.array_equal(a, f.prior_predictive(draws=30, seed=6))


@pytest.mark.parametrize("formula, family", [
    ("y ~ x + (1 + x | g)", "gaussian"),        # LKJ(2) on the correlation
    ("y ~ x + (1 + x || g)", "gaussian"),       # uncorrelated
    ("c ~ x + (1 + x | g)", "poisson"),
    ("c ~ x + (1 | g)", "negative_binomial"),
    ("b ~ 1 + (1 | g)", "bernoulli"),
    ("y ~ 1 + (1 | g)", "student_t"),
])
def test_families_and_terms(formula: str, family: str) -> None:
    df = _frame()
    df["c"] = np.arange(len(df)) % 4
    df["b"] = np.arange(len(df)) % 2
    f = _unfitted(ModelSpec(formula, family=family), df)
    a = f.prior_predictive(draws=50, seed=1)
    assert a.shape == (50, len(df))
    if family in ("poisson", "negative_binomial"):
        assert np.all(a >= 0) and np.all(a == np.floor(a))
    if family == "bernoulli":
        assert set(np.unique(a)) <= {0.0, 1.0}


def test_intercept_only_matches_prior() -> None:
    """Pooled, Intercept ~ normal(3, 2), σ tiny: y_i ≈ Intercept, so mean 3 and sd 2 (+ σ)."""
    spec = ModelSpec("y ~ 1 + (1 | g)", pooling="pooled", priors={"Intercept": "normal(3, 2)",
                                                                  "sigma": "exponential(1000)"})
    a = _unfitted(spec, _frame()).prior_predictive(draws=N_DRAWS, seed=2)
    col = a[:, 0]
    sd = math.sqrt(4 + 2e-6)  # Var = 2² + E[σ²] with σ ~ exponential(1000)
    assert abs(col.mean() - 3.0) < 4 * sd / math.sqrt(N_DRAWS)
    assert abs(col.std() / sd - 1) < 4 / math.sqrt(2 * N_DRAWS)
    # every row of a draw shares the intercept (σ is tiny)
    assert float(np.abs(a - a[:, :1]).max()) < 0.05


def test_hierarchical_covariance_matches_prior() -> None:
    """y = Intercept + b_g + e: Var = 2² + E[τ²] + E[σ²]; rows of one group share b_g, of two groups only
    the intercept (τ ~ half_normal(1): E[τ²] = 1)."""
    spec = ModelSpec("y ~ 1 + (1 | g)", priors={"Intercept": "normal(0, 2)", "sigma": "exponential(1000)",
                                                "sd(Intercept|g)": "half_normal(1)"})
    df = _frame()
    a = _unfitted(spec, df).prior_predictive(draws=N_DRAWS, seed=3)
    same = (df["g"] == "g0").to_numpy().nonzero()[0][:2]
    other = (df["g"] == "g1").to_numpy().nonzero()[0][0]
    cov = np.cov(a[:, [same[0], same[1], other]].T)
    # the Monte Carlo SD of these sample covariances at N = 4000 is about 0.1 (0.08 for the
    # difference), measured over 20 seeds; the bounds are 4 of them
    assert cov[0, 0] == pytest.approx(5.0, abs=0.4)
    assert cov[0, 1] == pytest.approx(5.0, abs=0.4)  # same group: 4 + 1
    assert cov[0, 2] == pytest.approx(4.0, abs=0.4)  # different groups: 4
    assert cov[0, 1] - cov[0, 2] == pytest.approx(1.0, abs=0.32)  # E[τ²]


@pytest.mark.parametrize("eta", [1.0, 4.0])
def test_lkj_correlations(eta: float) -> None:
    """(1 + x + z | g) with SDs ≈ 1 and no noise: each group's rows give b0, b0 + b1, b0 + b2.
    Under LKJ(η) in q = 3 dimensions each correlation r has E[r] = 0 and E[r²] = 1/(2η + q − 1),
    so E[b_k² b_l²] = 1 + 2 E[r²] (Isserlis) for unit SDs."""
    df = _frame(n_groups=40, per_group=3)
    df["x"] = np.tile([0.0, 1.0, 0.0], 40)
    df["z"] = np.tile([0.0, 0.0, 1.0], 40)
    near_one = "gamma(10000, 10000)"
    spec = ModelSpec("y ~ 0 + x + z + (1 + x + z | g)", priors={
        "x": "normal(0, 1e-6)", "z": "normal(0, 1e-6)", "sigma": "exponential(1e6)", "sd(Intercept|g)": near_one,
        "sd(x|g)": near_one, "sd(z|g)": near_one, "cor(g)": f"lkj({eta})"})
    a = _unfitted(spec, df).prior_predictive(draws=2000, seed=5).reshape(2000, 40, 3)
    b = np.stack([a[..., 0], a[..., 1] - a[..., 0], a[..., 2] - a[..., 0]], axis=-1).reshape(-1, 3)
    want = 1 + 2 / (2 * eta + 2)
    for k, m in ((0, 1), (0, 2), (1, 2)):
        prod = b[:, k] * b[:, m]
        # draws of one prior draw share the correlation matrix: the MC error uses the 2000 draws' means
        se2 = (prod**2).reshape(2000, 40).mean(axis=1).std() / math.sqrt(2000)
        se1 = prod.reshape(2000, 40).mean(axis=1).std() / math.sqrt(2000)
        assert abs(prod.mean()) < 4 * se1
        assert abs((prod**2).mean() - want) < 4 * se2, ((prod**2).mean(), want)


def test_known_standard_errors() -> None:
    """Eight schools, μ ~ N(0, 5²), τ ~ half_normal(5): Var(y_j) = 25 + E[τ²] + σ_j² = 50 + σ_j²."""
    df = pw.datasets.eight_schools()
    spec = ModelSpec("y | se(sigma) ~ 1 + (1 | school)", priors={"Intercept": "normal(0, 5)",
                                                                 "sd(Intercept|school)": "half_normal(5)"})
    a = _unfitted(spec, df).prior_predictive(draws=N_DRAWS, seed=4)
    var = 50 + df["sigma"].to_numpy() ** 2
    np.testing.assert_allclose(a.var(axis=0) / var, 1.0, atol=4 * 1.5 * math.sqrt(2 / N_DRAWS))
    assert np.abs(a.mean(axis=0)).max() < 4 * math.sqrt(var.max() / N_DRAWS)


def test_bad_draws_and_budget() -> None:
    f = _unfitted(ModelSpec("y ~ 1 + (1 | g)"), _frame())
    with pytest.raises(SpecError, match="draws"):
        f.prior_predictive(draws=0)
    f.memory_budget = 100
    with pytest.raises(SpecError, match="memory budget"):
        f.prior_predictive(draws=500)


def test_plot_data_and_figure() -> None:
    from poolwise.plots import plot_prior_predictive, prior_predictive_data

    df = pw.datasets.drivers(seed=1)
    f = pw.fit("reaction ~ night + (1 | driver)", df, draws=100, seed=0)
    d = prior_predictive_data(f, draws=200, seed=1)
    np.testing.assert_array_equal(d["observed"], df["reaction"].to_numpy())
    np.testing.assert_array_equal(d["predicted"], f.prior_predictive(draws=200, seed=1))
    lo, hi = d["observed_range"]
    assert (lo, hi) == (df["reaction"].min(), df["reaction"].max())
    assert d["fraction_within"] == pytest.approx(float(np.mean((d["predicted"] >= lo) & (d["predicted"] <= hi))))
    assert d["predicted_density"].shape == (50, d["edges"].size - 1)
    np.testing.assert_allclose((d["observed_density"] * np.diff(d["edges"])).sum(), 1.0)
    fig = plot_prior_predictive(f, draws=200, seed=1)
    assert f"{d['fraction_within']:.0%}" in fig.axes[0].get_title()
