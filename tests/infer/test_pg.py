"""The exact path of bernoulli and binomial models: Pólya-Gamma Gibbs sampling (``infer.pg``).

References: the collapsed target against the dense Gaussian density it stands for (to 1e-8);
posterior means against long NUTS runs of the same model and priors (cbpp, a simulated logistic
slopes design; stored below with their Monte Carlo standard errors, recomputed live by the
``validate`` tests); a pooled model against its posterior by quadrature; the counts reduction
against the row-level sampler.  Sampling tolerances are 4 combined MCSE (ArviZ's ``mcse`` of the
mean of each run; for a stored reference its own), so a correct sampler fails a check with
probability about 6e-5, while a wrong weight, offset or prior moves a mean by many MCSE.
"""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import poolwise as pw
import poolwise.data
from poolwise.errors import SpecError
from poolwise.infer import Draws, default_method, pg
from poolwise.spec import BoundSpec, ModelSpec

CBPP = "incidence | trials(size) ~ period + (1 | herd)"
SLOPES = "y ~ x + (1 + x | g)"


def _bind(formula: str, df: pd.DataFrame, family: str, **kw: object) -> BoundSpec:
    return ModelSpec(formula, family=family, **kw).bind(poolwise.data.read_table(df))  # type: ignore[arg-type]


def slopes_data(n_rows: int = 2000, n_groups: int = 50, seed: int = 20261203) -> pd.DataFrame:
    """Logistic ``y ~ x + (1 + x | g)``: β = (−0.5, 0.7), SDs (0.8, 0.4), correlation 0.5."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, n_groups, size=n_rows)
    g[:n_groups] = np.arange(n_groups)
    chol = np.linalg.cholesky(np.array([[1.0, 0.5], [0.5, 1.0]]))
    ab = (rng.normal(size=(n_groups, 2)) @ chol.T) * np.array([0.8, 0.4])
    x = rng.normal(size=n_rows)
    eta = -0.5 + 0.7 * x + ab[g, 0] + ab[g, 1] * x
    y = (rng.random(n_rows) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int64)
    return pd.DataFrame({"y": y, "x": x, "g": np.char.add("g", g.astype(str))})


def _scalars(bound: BoundSpec, d: Draws) -> dict[str, np.ndarray]:
    """β, the group SDs and the first correlation, each (chain, draw)."""
    out = {n: d.beta[..., i] for i, n in enumerate(bound.coef_names)}
    blk, bd = bound.blocks[0], d.blocks[0]
    assert bd.sd is not None
    out.update({n: bd.sd[..., k] for k, n in enumerate(blk.sd_names)})
    if bd.corr is not None:
        out[blk.cor_names[0]] = bd.corr[..., 1, 0]
    return out


def _mean_mcse(draws: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """Posterior mean and its Monte Carlo standard error, sd / √(bulk ESS), per quantity."""
    ess = az.ess(az.from_dict(posterior=draws), method="bulk")
    return {n: (float(v.mean()), float(v.std()) / math.sqrt(float(ess[n]))) for n, v in draws.items()}


def _agree(got: dict[str, tuple[float, float]], want: dict[str, tuple[float, float]]) -> None:
    for n, (m_ref, se_ref) in want.items():
        m, se = got[n]
        tol = 4.0 * math.hypot(se, se_ref)
        assert abs(m - m_ref) < tol, f"{n}: {m:.4f} vs NUTS {m_ref:.4f} (4 combined MCSE = {tol:.4f})"


# ----------------------------------------------------------------------------------------------
# the collapsed target, in closed form


def _dense_log_density(pat: pg.Patterns, omega: np.ndarray, Sigma: np.ndarray | None, m0: np.ndarray,
                       s0: np.ndarray) -> float:
    u = pat.kappa / omega - pat.offset
    cov = np.diag(1.0 / omega) + pat.X @ np.diag(s0**2) @ pat.X.T
    if Sigma is not None:
        same = pat.group[:, None] == pat.group[None, :]
        cov = cov + same * (pat.Z @ Sigma @ pat.Z.T)
    return float(stats.multivariate_normal(pat.X @ m0, cov).logpdf(u))


@pytest.mark.parametrize("q", [0, 1, 2])
def test_collapsed_target_equals_the_dense_gaussian_density(q: int) -> None:
    rng = np.random.default_rng(q)
    n, J = 11, 3
    group = np.sort(rng.integers(0, J, size=n))
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    Z = np.column_stack([np.ones(n), X[:, 1]])[:, :q]
    trials = rng.integers(1, 6, size=n).astype(float)
    y = rng.binomial(trials.astype(int), 0.4).astype(float)
    offset = rng.normal(0, 0.3, size=n)
    weights = rng.uniform(0.5, 2.0, size=n)
    pat = pg.merge_rows(y, trials, X, Z, group, offset, weights, merge=False)
    omega = rng.gamma(2.0, 0.3, size=n)
    A = rng.normal(size=(q, q))
    Sigma = A @ A.T + 0.3 * np.eye(q) if q else None
    m0, s0 = np.array([0.2, -0.1]), np.array([1.5, 0.7])
    got = pg.collapsed_log_target(pat, J, omega, Sigma, m0, s0)
    want = _dense_log_density(pat, omega, Sigma, m0, s0)
    assert got == pytest.approx(want, abs=1e-8, rel=0)


def test_rows_merge_into_patterns_with_summed_shapes() -> None:
    y = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    X = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    group = np.array([0, 0, 0, 1, 1])
    w = np.array([1.0, 1.0, 2.0, 1.0, 1.0])
    pat = pg.merge_rows(y, None, X, np.ones((5, 1)), group, np.zeros(5), w)
    assert pat.m == 4 and pat.n_rows == 5
    assert list(pat.group) == [0, 0, 1, 1]
    first = (pat.group == 0) & (pat.X[:, 1] == 0)
    assert pat.h[first][0] == 2.0 and pat.kappa[first][0] == 0.0  # rows 0 and 1: 1 − ½ + 0 − ½
    assert pat.h[(pat.group == 0) & (pat.X[:, 1] == 1)][0] == 2.0  # weight 2 × one trial


# ----------------------------------------------------------------------------------------------
# posteriors


def test_pooled_intercept_matches_quadrature() -> None:
    """y ~ 1, pooled: p(β | y) ∝ N(β; m0, s0²) Π Binomial(y_i | n_i, logit⁻¹ β), by quadrature."""
    df = pd.DataFrame({"k": [3, 7, 1, 9, 4], "n": [10, 12, 5, 20, 9], "g": list("abcde")})
    b = _bind("k | trials(n) ~ 1 + (1 | g)", df, "binomial", pooling="pooled")
    d = pg.sample(b, seed=3, chains=4, draws=1500, warmup=200)
    m0, s0 = b.priors["Intercept"].mean_sd()
    grid = np.linspace(m0 - 12 * s0, m0 + 12 * s0, 20001)
    k, n = df["k"].to_numpy()[:, None], df["n"].to_numpy()[:, None]
    logp = stats.norm(m0, s0).logpdf(grid) + np.sum(k * grid - n * np.logaddexp(0.0, grid), axis=0)
    w = np.exp(logp - logp.max())
    mean = float(np.sum(w * grid) / w.sum())
    sd = math.sqrt(float(np.sum(w * grid**2) / w.sum()) - mean**2)
    got = _mean_mcse({"Intercept": d.beta[..., 0]})["Intercept"]
    assert abs(got[0] - mean) < 4 * got[1], (got, mean)
    assert float(d.beta.std()) == pytest.approx(sd, rel=0.1)
    assert d.blocks[0].values is None and d.blocks[0].sd is None and "acceptance_rate" not in d.sample_stats


#: NUTS (``infer.nuts.sample``), 4 × (1000 + 5000), seed 123, the default priors
#: (:data:`CBPP_PRIORS`): posterior mean and MCSE (sd / √ bulk ESS); recomputed by the validate test
CBPP_NUTS = {
    "Intercept": (-1.42387, 0.00265), "period[2]": (-0.99165, 0.00212), "period[3]": (-1.13357, 0.00226),
    "period[4]": (-1.61867, 0.00305), "sd(Intercept|herd)": (0.76001, 0.00285),
}
CBPP_PRIORS = {"Intercept": "normal(-2.016, 3.508)", "period[2]": "normal(0, 5.774)", "period[3]": "normal(0, 5.774)",
               "period[4]": "normal(0, 5.921)", "sd(Intercept|herd)": "half_student_t(3, 2.5)"}
#: NUTS, 4 × (1000 + 3000), seed 123, the default priors (:data:`SLOPES_PRIORS`), on slopes_data()
SLOPES_NUTS = {
    "Intercept": (-0.32510, 0.00263), "x": (0.61190, 0.00084), "sd(Intercept|g)": (0.93612, 0.00182),
    "sd(x|g)": (0.37784, 0.00139), "cor(Intercept,x|g)": (0.43809, 0.00206),
}
SLOPES_PRIORS = {"Intercept": "normal(-0.31, 2.501)", "x": "normal(0, 2.502)", "sd(Intercept|g)": "half_student_t(3, 2.5)",
                 "sd(x|g)": "half_student_t(3, 2.502)", "cor(g)": "lkj(2)"}


def test_cbpp_matches_nuts() -> None:
    b = _bind(CBPP, pw.datasets.cbpp(), "binomial")
    assert {k: str(v) for k, v in b.priors.items()} == CBPP_PRIORS  # the reference's priors
    d = pg.sample(b, seed=0, chains=4, draws=1000, warmup=500)
    _agree(_mean_mcse(_scalars(b, d)), CBPP_NUTS)
    assert 0.15 < d.info["acceptance_rate"] < 0.6


def test_logistic_slopes_match_nuts() -> None:
    b = _bind(SLOPES, slopes_data(), "bernoulli")
    assert {k: str(v) for k, v in b.priors.items()} == SLOPES_PRIORS
    d = pg.sample(b, seed=0, chains=4, draws=600, warmup=300, theta_steps=4)  # fewer steps than the default: cheaper
    _agree(_mean_mcse(_scalars(b, d)), SLOPES_NUTS)
    assert d.info["patterns"] == 2000  # a continuous predictor: nothing to merge


def test_counts_reduction_gives_the_row_level_posterior() -> None:
    rng = np.random.default_rng(5)
    n, J = 400, 20
    g = rng.integers(0, J, size=n)
    x = rng.integers(0, 3, size=n).astype(float)
    a = rng.normal(0, 0.7, size=J)
    y = (rng.random(n) < 1 / (1 + np.exp(-(-0.3 + 0.5 * x + a[g])))).astype(int)
    b = _bind("y ~ x + (1 | g)", pd.DataFrame({"y": y, "x": x, "g": g.astype(str)}), "bernoulli")
    merged = pg.sample(b, seed=1, chains=4, draws=600, warmup=200, theta_steps=2)
    rows = pg.sample(b, seed=2, chains=4, draws=600, warmup=200, merge=False, theta_steps=2)
    assert merged.info["patterns"] <= 3 * J and rows.info["patterns"] == n
    _agree(_mean_mcse(_scalars(b, merged)), _mean_mcse(_scalars(b, rows)))


def test_chains_start_dispersed_and_r_hat_is_computed() -> None:
    b = _bind(CBPP, pw.datasets.cbpp(), "binomial")
    d = pg.sample(b, seed=0, chains=4, draws=5, warmup=0)
    sd = d.blocks[0].sd
    assert sd is not None and np.ptp(sd[:, 0, 0]) > 0.05  # different starts, not one point
    f = pw.fit(CBPP, pw.datasets.cbpp(), family="binomial", seed=0, draws=200, warmup=200)
    assert f.method == "exact" and "Pólya-Gamma" in f.info["hyper_sampler"]
    diag = f.diagnostics()
    assert diag["r_hat"].max() < 1.05


# ----------------------------------------------------------------------------------------------
# what it covers, the default, and refusals


def test_default_method() -> None:
    assert default_method(ModelSpec("y ~ x + (1 + x | g)", family="bernoulli")) == "exact"
    assert default_method(ModelSpec(CBPP, family="binomial")) == "exact"
    assert default_method(ModelSpec("y ~ x", family="bernoulli")) == "exact"
    assert default_method(ModelSpec("y ~ x + (1 | g)", family="gaussian")) == "exact"
    assert default_method(ModelSpec("y ~ x + (1 | g)", family="poisson")) == "nuts"
    # several grouping factors: Pólya-Gamma Gibbs on the sparse machinery (tests/infer/test_pg_multi.py)
    assert default_method(ModelSpec("y ~ x + (1 | g) + (1 | h)", family="bernoulli")) == "exact"
    assert default_method(ModelSpec("y ~ x + (1 | g) + (1 | h)", family="poisson")) == "nuts"


@pytest.mark.parametrize("formula, family, words", [
    ("y ~ x + (1 | g)", "poisson", "poisson family"),
    ("y ~ x + (1 | g) + (1 | h)", "poisson", "poisson family"),
])
def test_exact_refuses_what_it_does_not_cover(formula: str, family: str, words: str) -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"y": rng.integers(0, 2, 60), "x": rng.normal(size=60), "g": rng.integers(0, 6, 60).astype(str),
                       "h": rng.integers(0, 4, 60).astype(str)})
    with pytest.raises(SpecError, match=words) as err:
        pw.fit(formula, df, family=family, method="exact")
    assert "method='nuts'" in str(err.value)


def test_unpooled_and_fixed_sd_fits() -> None:
    df = pw.datasets.cbpp()
    for pooling in ("unpooled", 0.5):
        f = pw.fit(CBPP, df, family="binomial", pooling=pooling, seed=1, draws=200, warmup=100)
        assert f.method == "exact"
        bd = f.block_draws[0]
        assert bd.sd is None and bd.values is not None and bd.values.shape == (4, 200, 15, 1)


def test_a_prior_weight_of_two_is_a_duplicated_row() -> None:
    """w · log p(y | η) with w = 2 is the log-likelihood of the row twice: the same patterns."""
    rng = np.random.default_rng(4)
    n = 30
    X = np.column_stack([np.ones(n), rng.integers(0, 3, n)])
    g = rng.integers(0, 4, n)
    y, t = rng.integers(0, 4, n).astype(float), np.full(n, 3.0)
    w = np.where(np.arange(n) % 3 == 0, 2.0, 1.0)
    a = pg.merge_rows(y, t, X, np.ones((n, 1)), g, np.zeros(n), w)
    dup = np.concatenate([np.arange(n), np.flatnonzero(w == 2.0)])
    b = pg.merge_rows(y[dup], t[dup], X[dup], np.ones((dup.size, 1)), g[dup], np.zeros(dup.size), np.ones(dup.size))
    for field in ("X", "Z", "group", "offset", "h", "kappa"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_independent_slopes_have_no_correlation() -> None:
    b = _bind("y ~ x + (1 + x || g)", slopes_data(n_rows=400, n_groups=12), "bernoulli")
    d = pg.sample(b, seed=0, chains=2, draws=50, warmup=50)
    bd = d.blocks[0]
    assert bd.corr is None and bd.sd is not None and bd.sd.shape == (2, 50, 2)
    assert bd.values is not None and bd.values.shape == (2, 50, 12, 2)


@pytest.mark.validate
@pytest.mark.parametrize("case", ["cbpp", "slopes"])
def test_stored_nuts_references_hold(case: str) -> None:
    """The stored references above, recomputed by a long NUTS run (another seed) within 4 combined MCSE."""
    from poolwise.infer import nuts

    if case == "cbpp":
        b, want, draws = _bind(CBPP, pw.datasets.cbpp(), "binomial"), CBPP_NUTS, 5000
    else:
        b, want, draws = _bind(SLOPES, slopes_data(), "bernoulli"), SLOPES_NUTS, 3000
    d = nuts.sample(b, seed=7, chains=4, warmup=1000, draws=draws)
    _agree(_mean_mcse(_scalars(b, d)), want)


@pytest.mark.validate
def test_logistic_slopes_match_nuts_long() -> None:
    b = _bind(SLOPES, slopes_data(), "bernoulli")
    d = pg.sample(b, seed=11, chains=4, draws=3000, warmup=1000)
    _agree(_mean_mcse(_scalars(b, d)), SLOPES_NUTS)
