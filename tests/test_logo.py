"""Leave-one-group-out on the exact path equals an explicit refit without that group."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import poolwise as pw
from poolwise.compare import logo


def _data(seed: int = 3, J: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = rng.integers(2, 7, size=J)
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=g.size)
    y = 1.0 + 0.5 * x + rng.normal(0, 0.7, size=J)[g] + rng.normal(0, 1.0, size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{k}" for k in g]})


def _explicit(f: pw.Fit, df: pd.DataFrame, label: str, seed: int) -> float:
    """Refit without the group (same priors: the full data's), then the dense joint density of its rows."""
    spec = f.spec.replace(priors=dict(f.bound.priors))
    rest, held = df[df["g"] != label], df[df["g"] == label]
    rf = pw.fit(spec, rest, seed=seed, chains=4, draws=250)
    X = np.column_stack([np.ones(len(held)), held["x"].to_numpy()])
    beta = rf.draws.beta.reshape(-1, 2)
    sigma = rf.param("sigma").ravel()
    tau = rf.param("sd(Intercept|g)").ravel() if f.pooling != "pooled" else np.zeros_like(sigma)
    yj = held["y"].to_numpy()
    lp = np.array([multivariate_normal(X @ b, s**2 * np.eye(len(yj)) + t**2 * np.ones((len(yj), len(yj)))).logpdf(yj)
                   for b, s, t in zip(beta, sigma, tau)])
    return float(logsumexp(lp) - np.log(lp.size))


@pytest.mark.parametrize("pooling", ["hierarchical", "pooled", "unpooled"])
def test_logo_equals_explicit_refit(pooling: str) -> None:
    df = _data()
    f = pw.fit("y ~ x + (1 | g)", df, pooling=pooling, draws=250, seed=0)
    res = logo(f)
    assert res["n_refits"] == f.bound.blocks[0].n_groups
    assert np.isnan(res["pareto_k"]).all()
    for j in (0, 5):
        label = f.bound.blocks[0].levels[j]
        # the same seed as logo's own refit (1000 + j), and another: equal within Monte Carlo error
        # (4 × 250 draws; the MC SD of elpd_j is ~0.02 nats here; tolerance 0.15 nats)
        for seed in (1000 + j, 77):
            assert res["pointwise"][label] == pytest.approx(_explicit(f, df, label, seed=seed), abs=0.15)
    assert res["elpd_logo"] == pytest.approx(res["pointwise"].sum())


def test_logo_kfold_and_comparison_table() -> None:
    df = _data(J=12)
    cmp = pw.compare("y ~ x + (1 | g)", df, draws=250, seed=0)
    t = cmp.logo()
    assert set(t.index) == {"pooled", "unpooled", "hierarchical"}
    assert t["elpd_diff"].iloc[0] == pytest.approx(0.0)
    assert set(t.attrs["pointwise"]) == set(t.index)
    assert cmp.logo() is t  # cached
    kf = logo(cmp.hierarchical, max_groups=5, folds=3)
    assert kf["n_refits"] == 3 and "3-fold" in kf["how"]
    assert np.isfinite(kf["pointwise"]).all()


def test_logo_psis_path_for_non_exact_methods() -> None:
    df = _data(J=10)
    f = pw.fit("y ~ x + (1 | g)", df, draws=250, seed=0)
    # the PSIS branch, exercised on the exact fit's draws by calling it with another method label
    from dataclasses import replace
    g = pw.Fit(f.bound, replace(f.draws, method="laplace"))
    res = logo(g, max_refits=2)
    assert np.isfinite(res["pareto_k"]).all()
    assert res["n_refits"] <= 2
    exact = logo(f)
    # PSIS over groups approximates the exact LOGO (loosely: few draws, few rows per group)
    assert abs(res["elpd_logo"] - exact["elpd_logo"]) < 0.1 * abs(exact["elpd_logo"]) + 5
