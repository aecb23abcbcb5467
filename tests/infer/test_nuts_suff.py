"""NUTS's gaussian likelihood from sufficient statistics against the rows' likelihood.

The statistics model (``nuts._suff_data``, used by default for gaussian models with at most one
grouping factor that is not pooled) must have the rows' model's log density at every point, not
only at the posterior mode: both are evaluated by NumPyro's ``log_density`` at parameter values
drawn from the prior, for intercepts, correlated slopes, known standard errors, offsets, pooled
and fixed-Σ fits.  The reference is the plain sum of normal log densities over the rows.  The
tolerance is float64 round-off relative to the size of the terms (the outcome sits far from 0 on
purpose: y ≈ 1000 with σ ≈ 1, where an uncentered y'y would lose every digit of the residuals).
"""

from __future__ import annotations

import arviz as az
import jax
import numpy as np
import pandas as pd
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density

import poolwise.data
from poolwise.infer import nuts
from poolwise.spec import ModelSpec


def _frame(shift: float = 1000.0) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    J, n = 15, 400
    g = rng.integers(0, J, n)
    x = rng.normal(size=n)
    e = rng.uniform(0.5, 2.0, n)
    s = rng.uniform(0.5, 1.5, n)
    y = shift + 0.5 * x + rng.normal(0, 0.8, J)[g] + rng.normal(0, 0.3, J)[g] * x + rng.normal(size=n) * s
    return pd.DataFrame({"y": y, "x": x, "z": rng.uniform(-1, 1, n), "g": [f"g{j:02d}" for j in g], "s": s,
                         "e": e, "h": rng.integers(0, 4, n)})


CASES = [
    ("y ~ x + (1 | g)", "hierarchical"),
    ("y ~ x + z + (1 + x | g)", "hierarchical"),
    ("y ~ x + (x || g)", "hierarchical"),
    ("y | se(s) ~ x + (1 | g)", "hierarchical"),
    ("y ~ x + offset(log(e)) + (1 | g)", "hierarchical"),
    ("y ~ x + (1 | g)", "pooled"),
    ("y ~ x + (1 | g)", 0.4),
    ("y ~ 0 + x + (1 | g)", "hierarchical"),
]


@pytest.mark.parametrize("formula,pooling", CASES)
def test_statistics_give_the_rows_log_density(formula: str, pooling: str | float) -> None:
    bound = ModelSpec(formula, pooling=pooling).bind(poolwise.data.read_table(_frame()))
    assert nuts.uses_statistics(bound)
    rows_model = nuts._structural_model(nuts._structure(bound))
    suff_model = nuts._structural_model(nuts._structure(bound, suff=True))
    rows_data, suff_data = nuts._sample_data(bound, False), nuts._sample_data(bound, True)
    y = rows_data.pop("y")
    suff_data.pop("y")
    assert "X" not in suff_data and all("Z" not in b for b in suff_data["blocks"])
    fixed = nuts.fixed_sites(bound)
    for k in range(5):
        tr = handlers.trace(handlers.seed(handlers.condition(rows_model, fixed), jax.random.PRNGKey(k))).get_trace(
            rows_data, y=y)
        params = {n: s["value"] for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}
        if "sigma" in params:  # a σ of the data's size: the prior's draws can be huge or tiny
            params["sigma"] = np.asarray(0.5 + 0.2 * k)
        lp_rows, tr_rows = log_density(handlers.condition(rows_model, fixed), (rows_data,), {"y": y}, params)
        lp_suff, _ = log_density(handlers.condition(suff_model, fixed), (suff_data,), {}, params)
        # the rows' likelihood by hand: the reference for both
        eta = np.asarray(tr_rows["y"]["fn"].loc)
        scale = np.asarray(tr_rows["y"]["fn"].scale)
        ll_hand = float(np.sum(-0.5 * np.log(2 * np.pi) - np.log(scale) - 0.5 * ((np.asarray(y) - eta) / scale) ** 2))
        ll_rows = float(np.sum(tr_rows["y"]["fn"].log_prob(y)))
        assert ll_rows == pytest.approx(ll_hand, rel=1e-12, abs=1e-8)
        size = float(np.sum(((np.asarray(y) - eta) / scale) ** 2)) + abs(ll_hand)
        assert float(lp_suff) == pytest.approx(float(lp_rows), abs=1e-9 * size), (k, float(lp_suff), float(lp_rows))


def test_two_factors_and_other_families_use_the_rows() -> None:
    df = _frame(0.0)
    df["yb"] = (df["y"] > 0).astype(int)
    read = poolwise.data.read_table(df)
    assert not nuts.uses_statistics(ModelSpec("y ~ x + (1 | g) + (1 | h)").bind(read))
    assert nuts.uses_statistics(ModelSpec("y ~ x + (1 | g) + (1 | h)", pooling="pooled").bind(read))
    assert not nuts.uses_statistics(ModelSpec("yb ~ x + (1 | g)", family="bernoulli").bind(read))
    assert not nuts.uses_statistics(ModelSpec("y ~ x + (1 | g)", family="student_t").bind(read))
    with pytest.raises(ValueError, match="sufficient statistics"):
        nuts.sample(ModelSpec("y ~ x + (1 | g) + (1 | h)").bind(read), seed=0, chains=1, draws=5, warmup=5,
                    statistics=True)


def test_statistics_and_rows_sample_the_same_posterior() -> None:
    """Both programs at the same settings: posterior means within 4 combined Monte Carlo standard
    errors (ArviZ's mcse of each run), on data far from 0 (y ≈ 1000)."""
    bound = ModelSpec("y ~ x + (1 | g)").bind(poolwise.data.read_table(_frame()))
    a = nuts.sample(bound, seed=3, chains=4, draws=500, warmup=500, statistics=True)
    b = nuts.sample(bound, seed=3, chains=4, draws=500, warmup=500, statistics=False)
    assert a.info["likelihood"] == "sufficient statistics" and b.info["likelihood"] == "rows"
    pairs = {"Intercept": (a.beta[..., 0], b.beta[..., 0]), "x": (a.beta[..., 1], b.beta[..., 1]),
             "sigma": (a.sigma, b.sigma), "tau": (a.tau, b.tau), "b0": (a.b[..., 0], b.b[..., 0])}
    for name, (x, y) in pairs.items():
        mx = float(az.mcse(az.convert_to_dataset({"v": np.asarray(x)}))["v"])
        my = float(az.mcse(az.convert_to_dataset({"v": np.asarray(y)}))["v"])
        tol = 4.0 * np.hypot(mx, my)
        assert tol < float(np.std(y)), name  # the check has power: the tolerance is inside the posterior SD
        assert abs(float(np.mean(x)) - float(np.mean(y))) < tol, name


@pytest.mark.parametrize("formula", ["y ~ x + (1 | g)", "y ~ x + z + (1 + x | g)", "y ~ x + (x || g)"])
def test_centered_is_the_non_centered_density_moved_by_its_jacobian(formula: str) -> None:
    """u_j = diag(s) L z_j: log p_centered(u) = log p_noncentered(z) − J Σ_k log(s_k L_kk)."""
    bound = ModelSpec(formula).bind(poolwise.data.read_table(_frame()))
    nc = nuts._structural_model(nuts._structure(bound, suff=True))
    c = nuts._structural_model(nuts._structure(bound, suff=True, centered=True))
    assert nuts._structure(bound, suff=True, centered=True).centered
    data = nuts._sample_data(bound, True)
    data.pop("y")
    factor = bound.blocks[0].factor
    for k in range(3):
        tr = handlers.trace(handlers.seed(nc, jax.random.PRNGKey(k))).get_trace(data)
        params = {n: s["value"] for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}
        params["sigma"] = np.asarray(0.7)
        lp_nc, tr_nc = log_density(nc, (data,), {}, params)
        u = tr_nc[f"u({factor})"]["value"]
        sd = np.array([float(params[n]) for n in nuts.site_names(bound.blocks[0]).sd])
        chol = np.asarray(params.get(f"L({factor})", np.eye(sd.size)))
        c_params = {n: v for n, v in params.items() if n != f"z({factor})"} | {f"u({factor})": u}
        lp_c, _ = log_density(c, (data,), {}, c_params)
        log_jac = bound.blocks[0].n_groups * float(np.sum(np.log(sd * np.diag(chol))))
        assert float(lp_c) == pytest.approx(float(lp_nc) - log_jac, rel=1e-10, abs=1e-8)


def test_centered_when_groups_hold_much_data() -> None:
    """Many rows per group and τ ≫ σ/√n: centered; one or two rows per group and τ ≪ σ: not."""
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(30), 50)
    rich = pd.DataFrame({"y": rng.normal(0, 1.0, 30)[g] + rng.normal(size=g.size), "g": g})
    g2 = np.repeat(np.arange(300), 2)
    poor = pd.DataFrame({"y": rng.normal(0, 0.1, 300)[g2] + rng.normal(size=g2.size), "g": g2})
    assert nuts.prefers_centered(ModelSpec("y ~ 1 + (1 | g)").bind(poolwise.data.read_table(rich)))
    assert not nuts.prefers_centered(ModelSpec("y ~ 1 + (1 | g)").bind(poolwise.data.read_table(poor)))
    assert not nuts.prefers_centered(ModelSpec("y ~ 1 + (1 | g)", pooling="pooled").bind(poolwise.data.read_table(rich)))
