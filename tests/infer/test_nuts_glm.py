"""NUTS beyond the Gaussian varying intercept: families, varying slopes, several factors.

References are lme4's published fits (cbpp, sleepstudy) and simulations with known truth.
Tolerances: a posterior mean against a maximum-likelihood (or REML) estimate may differ by a
fraction of the posterior SD (the Bayesian answer integrates over the group SDs instead of
plugging in their estimate, and the default priors are weak), plus four Monte Carlo standard
errors (ArviZ ``mcse``) for the noise of the draws; a simulated truth must lie inside the 99.9 %
central posterior interval.  Every check can fail: a dropped offset, a wrong link, a swapped
block or a missing slope moves a posterior by many posterior SDs.
"""

from __future__ import annotations

import functools
import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest

import poolwise.data
import poolwise.datasets
from poolwise.errors import ConvergenceWarning
from poolwise.infer import Draws
from poolwise.infer import nuts
from poolwise.spec import BoundSpec, ModelSpec

CHAINS, WARMUP, DRAWS = 4, 500, 500


def _bind(formula: str, df: pd.DataFrame, family: str = "gaussian", pooling: str | float = "hierarchical") -> BoundSpec:
    return ModelSpec(formula, family=family, pooling=pooling).bind(poolwise.data.read_table(df))


def _sample(bound: BoundSpec, seed: int = 0) -> Draws:
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # divergences must be retried away
        return nuts.sample(bound, seed=seed, chains=CHAINS, warmup=WARMUP, draws=DRAWS)


def _mcse(arr: np.ndarray) -> float:
    return float(az.mcse(az.convert_to_dataset({"v": arr}), method="mean")["v"])


def _inside(draws: np.ndarray, truth: float, name: str, prob: float = 0.999) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1 - prob) / 2, (1 + prob) / 2])
    assert lo < truth < hi, f"{name}: truth {truth:.4g} outside the {prob:.1%} interval ({lo:.4g}, {hi:.4g})"
    return float(lo), float(hi)


def _near(draws: np.ndarray, ref: float, name: str, k: float) -> None:
    """The posterior mean within k posterior SDs (+ 4 MCSE) of a reference point estimate."""
    mean, sd = float(draws.mean()), float(draws.std())
    tol = k * sd + 4 * _mcse(draws)
    print(f"{name}: mean {mean:.4f} sd {sd:.4f} ref {ref:.4f} tol {tol:.4f}")
    assert abs(mean - ref) < tol, f"{name}: posterior mean {mean:.4g} vs reference {ref:.4g} (tol {tol:.3g})"


def _no_divergences(d: Draws) -> None:
    assert d.info["divergences"][-1] == 0
    assert not d.sample_stats["diverging"].any()


# -- real data against lme4 -------------------------------------------------------------------


def test_cbpp_binomial_matches_glmer() -> None:
    """lme4's glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), binomial), Laplace.

    Fixed effects (SEs): −1.3983 (0.231), −0.9919 (0.303), −1.1282 (0.323), −1.5797 (0.422);
    herd SD 0.642.  The posterior means must lie within half a posterior SD (+ 4 MCSE) of
    glmer's estimates (a model without the trials, or with a probit link, is several SDs off).
    The herd SD's posterior is right-skewed (15 herds), which pulls its mean above the mode
    that glmer's maximum approximates; its median must lie within 0.25 of 0.642, and the
    posterior must rule out no pooling of herds (SD near 0) and a huge spread.
    """
    df = poolwise.datasets.cbpp()
    bound = _bind("incidence | trials(size) ~ period + (1 | herd)", df, family="binomial")
    d = _sample(bound)
    _no_divergences(d)
    assert bound.coef_names == ["Intercept", "period[2]", "period[3]", "period[4]"]
    for k, ref in enumerate([-1.3983, -0.9919, -1.1282, -1.5797]):
        _near(d.beta[:, :, k], ref, bound.coef_names[k], k=0.5)
    block = d.blocks[0]
    assert block.sd is not None and block.corr is None and block.values is not None
    assert block.sd.shape == (CHAINS, DRAWS, 1) and block.values.shape == (CHAINS, DRAWS, 15, 1)
    sd = block.sd[..., 0]
    print(f"herd SD: mean {sd.mean():.3f} median {np.median(sd):.3f}")
    assert abs(float(np.median(sd)) - 0.642) < 0.25
    lo, hi = np.quantile(sd, [0.025, 0.975])
    assert 0.1 < lo and hi < 1.6
    assert d.tau is None and d.b is None  # only the simple Gaussian model fills tau and b
    assert d.sigma is None and d.aux == {}


@pytest.mark.validate  # make test: tests/test_slopes_families.py checks NUTS against the exact path on sleepstudy
def test_sleepstudy_varying_slopes_match_lmer() -> None:
    """lme4's lmer(Reaction ~ Days + (Days | Subject)), REML: 251.405 (SE 6.825), 10.467 (1.546);
    SDs 24.741 and 5.922, correlation 0.066, residual SD 25.592.

    Common coefficients and residual SD within 0.5 posterior SD (+ 4 MCSE); 18 subjects leave
    the group SDs' posteriors skewed, so their medians must lie within 0.5 posterior SD of REML
    (a model that drops the slope correlation structure or the slopes is far outside).  The
    correlation's posterior is wide: its 95 % interval must contain 0.066 and be narrower than
    the LKJ(2) prior's (−0.86, 0.86).
    """
    bound = _bind("Reaction ~ Days + (Days | Subject)", poolwise.datasets.sleepstudy())
    d = _sample(bound)
    _no_divergences(d)
    _near(d.beta[:, :, 0], 251.405, "Intercept", k=0.5)
    _near(d.beta[:, :, 1], 10.467, "Days", k=0.5)
    assert d.sigma is not None
    _near(d.sigma, 25.592, "sigma", k=0.5)
    block = d.blocks[0]
    assert block.sd is not None and block.corr is not None and block.values is not None
    assert block.corr.shape == (CHAINS, DRAWS, 2, 2) and block.values.shape == (CHAINS, DRAWS, 18, 2)
    np.testing.assert_allclose(block.corr[..., 0, 0], 1.0)
    for k, ref in enumerate([24.741, 5.922]):
        s = block.sd[..., k]
        med = float(np.median(s))
        print(f"sd[{k}]: mean {s.mean():.3f} median {med:.3f} sd {s.std():.3f} ref {ref}")
        assert abs(med - ref) < 0.5 * float(s.std())
    r = block.corr[..., 0, 1]
    lo, hi = np.quantile(r, [0.025, 0.975])
    print(f"cor: mean {r.mean():.3f} 95% ({lo:.3f}, {hi:.3f})")
    assert lo < 0.066 < hi and hi - lo < 1.4


# -- simulated data with known truth ----------------------------------------------------------


def _groups(n_groups: int, n_per: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    g = np.repeat(np.arange(n_groups), n_per)
    return g, rng.normal(size=g.size), [f"g{j:02d}" for j in g]


@functools.cache
def _poisson_frame() -> pd.DataFrame:
    """y ~ Poisson(exposure · exp(−2 + 0.5 x + u_g)), u_g ~ N(0, 0.5²), 20 groups × 20 rows."""
    rng = np.random.default_rng(1)
    g, x, labels = _groups(20, 20, rng)
    exposure = np.exp(rng.normal(3.0, 0.3, g.size))
    u = rng.normal(0.0, 0.5, 20)
    y = rng.poisson(exposure * np.exp(-2.0 + 0.5 * x + u[g]))
    return pd.DataFrame({"y": y, "x": x, "g": labels, "exposure": exposure})


def test_poisson_offset_recovers_rate() -> None:
    df = _poisson_frame()
    with_off = _sample(_bind("y ~ x + offset(log(exposure)) + (1 | g)", df, family="poisson"))
    without = _sample(_bind("y ~ x + (1 | g)", df, family="poisson"))
    _no_divergences(with_off)
    for k, truth in enumerate([-2.0, 0.5]):
        b = with_off.beta[:, :, k]
        assert abs(float(b.mean()) - truth) < 4 * float(b.std()), (k, b.mean(), b.std())
    assert with_off.blocks[0].sd is not None
    _inside(with_off.blocks[0].sd[..., 0], 0.5, "sd(Intercept|g)")
    # without the offset the intercept absorbs the log exposure (≈ its mean, here 3 ± 0.3)
    shift = float(without.beta[:, :, 0].mean() - with_off.beta[:, :, 0].mean())
    mean_log = float(np.log(df["exposure"]).mean())
    print(f"intercept shift {shift:.4f}, mean log exposure {mean_log:.4f}")
    assert abs(shift - mean_log) < 0.15  # log E[e] − E[log e] = 0.3²/2 ≈ 0.05 of that is Jensen's
    assert abs(float(without.beta[:, :, 1].mean()) - 0.5) < 0.1  # x is independent of exposure


def test_negative_binomial_recovers_truth() -> None:
    """y ~ NB2(mean exp(1 + 0.4 x + u_g), φ = 3), u_g ~ N(0, 0.6²)."""
    rng = np.random.default_rng(2)
    g, x, labels = _groups(20, 20, rng)
    u = rng.normal(0.0, 0.6, 20)
    mu = np.exp(1.0 + 0.4 * x + u[g])
    y = rng.negative_binomial(3.0, 3.0 / (3.0 + mu))
    d = _sample(_bind("y ~ x + (1 | g)", pd.DataFrame({"y": y, "x": x, "g": labels}), family="negative_binomial"))
    _no_divergences(d)
    _inside(d.beta[:, :, 0], 1.0, "Intercept")
    _inside(d.beta[:, :, 1], 0.4, "x")
    assert d.blocks[0].sd is not None and set(d.aux) == {"phi"}
    _inside(d.blocks[0].sd[..., 0], 0.6, "sd(Intercept|g)")
    lo, hi = _inside(d.aux["phi"], 3.0, "phi")
    assert hi < 10  # overdispersion is seen (a Poisson-like fit would send φ up)


def test_student_t_recovers_truth() -> None:
    """y = 2 − x + u_g + 0.5 t_4, u_g ~ N(0, 1)."""
    rng = np.random.default_rng(3)
    g, x, labels = _groups(20, 20, rng)
    u = rng.normal(0.0, 1.0, 20)
    y = 2.0 - x + u[g] + 0.5 * rng.standard_t(4.0, g.size)
    d = _sample(_bind("y ~ x + (1 | g)", pd.DataFrame({"y": y, "x": x, "g": labels}), family="student_t"))
    _no_divergences(d)
    _inside(d.beta[:, :, 0], 2.0, "Intercept")
    _inside(d.beta[:, :, 1], -1.0, "x")
    assert d.sigma is not None and d.blocks[0].sd is not None and set(d.aux) == {"nu"}
    _inside(d.sigma, 0.5, "sigma")
    _inside(d.blocks[0].sd[..., 0], 1.0, "sd(Intercept|g)")
    lo, hi = _inside(d.aux["nu"], 4.0, "nu")
    assert hi < 30  # heavy tails are seen


@pytest.mark.validate  # make test: one-factor logistic slopes by Pólya-Gamma against NUTS (tests/infer/test_pg.py)
def test_bernoulli_varying_slope_recovers_truth() -> None:
    """P(y = 1) = logit⁻¹(−0.5 + x + u_g + v_g x), sd(u) = 1, sd(v) = 0.5, 30 groups × 30 rows."""
    rng = np.random.default_rng(4)
    g, x, labels = _groups(30, 30, rng)
    u, v = rng.normal(0.0, 1.0, 30), rng.normal(0.0, 0.5, 30)
    p = 1 / (1 + np.exp(-(-0.5 + x + u[g] + v[g] * x)))
    y = (rng.uniform(size=g.size) < p).astype(float)
    d = _sample(_bind("y ~ x + (1 + x | g)", pd.DataFrame({"y": y, "x": x, "g": labels}), family="bernoulli"))
    _no_divergences(d)
    _inside(d.beta[:, :, 0], -0.5, "Intercept")
    _inside(d.beta[:, :, 1], 1.0, "x")
    block = d.blocks[0]
    assert block.sd is not None and block.corr is not None
    _inside(block.sd[..., 0], 1.0, "sd(Intercept|g)")
    _inside(block.sd[..., 1], 0.5, "sd(x|g)")
    _inside(block.corr[..., 0, 1], 0.0, "cor(Intercept,x|g)")


def test_crossed_factors_recover_both_sds() -> None:
    """y = 1 + a_i + b_j + e, sd(a) = 1.0, sd(b) = 0.3, σ = 0.5, 25 × 16 crossed cells."""
    rng = np.random.default_rng(5)
    grid_a, grid_b = np.meshgrid(np.arange(25), np.arange(16), indexing="ij")
    ia, ib = grid_a.ravel(), grid_b.ravel()
    a, b = rng.normal(0.0, 1.0, 25), rng.normal(0.0, 0.3, 16)
    y = 1.0 + a[ia] + b[ib] + rng.normal(0.0, 0.5, ia.size)
    df = pd.DataFrame({"y": y, "a": [f"a{i:02d}" for i in ia], "b": [f"b{i:02d}" for i in ib]})
    d = _sample(_bind("y ~ 1 + (1 | a) + (1 | b)", df))
    _no_divergences(d)
    assert len(d.blocks) == 2 and d.tau is None and d.b is None
    sd_a, sd_b = (blk.sd[..., 0] for blk in d.blocks if blk.sd is not None)
    # each SD inside its interval and outside the other's (the blocks are not swapped)
    lo, hi = _inside(sd_a, 1.0, "sd(Intercept|a)")
    assert not lo < 0.3 < hi
    lo, hi = _inside(sd_b, 0.3, "sd(Intercept|b)")
    assert not lo < 1.0 < hi
    assert d.sigma is not None
    _inside(d.sigma, 0.5, "sigma")
    assert d.blocks[0].values is not None and d.blocks[0].values.shape == (CHAINS, DRAWS, 25, 1)


def test_nested_factors_recover_both_sds() -> None:
    """y = a_r + c_{r,c} + e: 12 regions × 6 counties × 3 rows, sd(region) = 1, sd(county) = 0.4, σ = 0.5."""
    rng = np.random.default_rng(6)
    region = np.repeat(np.arange(12), 18)
    county = np.tile(np.repeat(np.arange(6), 3), 12)  # county labels repeat across regions
    a, c = rng.normal(0.0, 1.0, 12), rng.normal(0.0, 0.4, (12, 6))
    y = a[region] + c[region, county] + rng.normal(0.0, 0.5, region.size)
    df = pd.DataFrame({"y": y, "region": [f"r{i:02d}" for i in region], "county": [f"c{i}" for i in county]})
    bound = _bind("y ~ 1 + (1 | region/county)", df)
    assert [blk.n_groups for blk in bound.blocks] == [12, 72]
    d = _sample(bound)
    _no_divergences(d)
    sd_r, sd_c = (blk.sd[..., 0] for blk in d.blocks if blk.sd is not None)
    lo, hi = _inside(sd_r, 1.0, "sd(Intercept|region)")
    assert not lo < 0.4 < hi
    lo, hi = _inside(sd_c, 0.4, "sd(Intercept|region:county)")
    assert not lo < 1.0 < hi


def test_uncorrelated_terms_have_no_correlation() -> None:
    """(1 + x || g): sd(Intercept) = 1.0, sd(x) = 0.3, σ = 0.5, 20 groups × 20 rows."""
    rng = np.random.default_rng(7)
    g, x, labels = _groups(20, 20, rng)
    u, v = rng.normal(0.0, 1.0, 20), rng.normal(0.0, 0.3, 20)
    y = 0.5 + 2.0 * x + u[g] + v[g] * x + rng.normal(0.0, 0.5, g.size)
    d = _sample(_bind("y ~ x + (1 + x || g)", pd.DataFrame({"y": y, "x": x, "g": labels})))
    _no_divergences(d)
    block = d.blocks[0]
    assert block.corr is None and block.sd is not None and block.sd.shape == (CHAINS, DRAWS, 2)
    lo, hi = _inside(block.sd[..., 0], 1.0, "sd(Intercept|g)")
    assert not lo < 0.3 < hi
    lo, hi = _inside(block.sd[..., 1], 0.3, "sd(x|g)")
    assert not lo < 1.0 < hi


# -- pooling settings of a multi-term block ---------------------------------------------------


@pytest.mark.parametrize("pooling", ["pooled", "unpooled"])
def test_fixed_sigma_blocks(pooling: str | float) -> None:
    rng = np.random.default_rng(8)
    g, x, labels = _groups(6, 10, rng)
    y = 1.0 + x + rng.normal(0.0, 1.0, 6)[g] + rng.normal(size=g.size)
    bound = _bind("y ~ x + (1 + x | g)", pd.DataFrame({"y": y, "x": x, "g": labels}), pooling=pooling)
    d = nuts.sample(bound, seed=0, chains=2, warmup=150, draws=100)
    block = d.blocks[0]
    assert block.sd is None and block.corr is None
    assert (block.values is None) == (pooling == "pooled")
    if block.values is not None:
        assert block.values.shape == (2, 100, 6, 2)
    assert d.beta.shape == (2, 100, 2) and d.sigma is not None and d.tau is None and d.b is None


def test_divergence_advice_names_the_group_sds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Still diverging at 0.99: the warning names every learned SD and advises without method="exact"."""
    rng = np.random.default_rng(9)
    g, x, labels = _groups(6, 10, rng)
    df = pd.DataFrame({"y": rng.integers(0, 5, g.size), "x": x, "g": labels})
    bound = _bind("y ~ x + (1 + x | g)", df, family="poisson")
    calls: list[float] = []

    def fake(model: object, y: object, key: object, *, chains: int, draws: int, warmup: int,
             target_accept: float, max_tree_depth: int,
             **_: object) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        calls.append(target_accept)
        ones = np.ones((chains, draws))
        div = np.zeros((chains, draws), dtype=bool)
        div.flat[:3] = True
        L = np.broadcast_to(np.eye(2), (chains, draws, 2, 2))
        samples = {"beta": np.zeros((chains, draws, 2)), "sd(Intercept|g)": ones, "sd(x|g)": ones,
                   "L(g)": L, "u(g)": np.zeros((chains, draws, 6, 2))}
        extra = {"diverging": div, "accept_prob": ones, "num_steps": ones, "energy": ones, "potential_energy": ones}
        return samples, extra

    monkeypatch.setattr(nuts, "_run_once", fake)
    with pytest.warns(ConvergenceWarning) as rec:
        d = nuts.sample(bound, seed=0, chains=2, draws=10)
    assert calls == [0.8, 0.95, 0.99] and d.info["divergences"] == [3, 3, 3]
    msg = str(rec[0].message)
    assert "3 of 20 draws diverged even at target_accept=0.99" in msg
    assert "sd(Intercept|g), sd(x|g) may be biased" in msg and "half_normal" in msg
    assert 'method="exact"' not in msg
    assert d.blocks[0].corr is not None and d.blocks[0].corr.shape == (2, 10, 2, 2)


def test_counts_and_binary_groups_rich_in_data_sample_centered() -> None:
    """The pooled GLM's per-group information (:func:`nuts.prefers_centered`): poisson groups of
    40 rows at rates near 8 with τ = 0.5 (pooling factors near 1) are centered, bernoulli groups
    of 3 rows with τ = 0.1 (near 0) are not; the cut is the median pooling factor ½."""
    rng = np.random.default_rng(2)
    g = np.repeat(np.arange(20), 40)
    x = rng.normal(size=g.size)
    rich = pd.DataFrame({"y": rng.poisson(np.exp(2.0 + 0.3 * x + rng.normal(0, 0.5, 20)[g])), "x": x, "g": g})
    g2 = np.repeat(np.arange(100), 3)
    poor = pd.DataFrame({"y": (rng.random(g2.size) < 0.5 + 0.1 * rng.normal(size=100)[g2]).astype(int), "g": g2})
    assert nuts.prefers_centered(_bind("y ~ x + (1 | g)", rich, "poisson"))
    assert nuts.prefers_centered(_bind("y ~ x + (1 | g)", rich, "negative_binomial"))
    assert not nuts.prefers_centered(_bind("y ~ 1 + (1 | g)", poor, "bernoulli"))
    assert not nuts.prefers_centered(_bind("y ~ x + (1 | g)", rich, "poisson", pooling="pooled"))
    a, score = nuts._pooled_glm_information(_bind("y ~ x + (1 | g)", rich, "poisson"))
    # at the pooled maximum-likelihood fit the scores of the intercept sum to 0; a_j = Σ μ_i
    assert abs(score.sum()) < 1e-6 * a.sum() and np.all(a > 100)
