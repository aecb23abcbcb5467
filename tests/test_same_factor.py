"""Several group terms on one grouping factor are independent, as in lme4.

lme4 makes separate terms with the same grouping factor independent (Σ block-diagonal across the
terms): ``(1 | Subject) + (0 + Days | Subject)`` is the model ``(Days || Subject)`` abbreviates.
poolwise used to merge them into one correlated block, i.e. fit ``(Days | Subject)``.  poolwise
now reads them as one block with a diagonal Σ — the very term ``(Days || Subject)`` gives — so
every method and engine fits the two spellings by one code path.

A correlated term beside another term on its factor (``(1 + x | g) + (0 + z | g)``) is a block
of its own: two blocks on ``g``, fitted by the sparse path that fits any number of blocks
(the same path as two factors with the same levels).

1. The formula: the two spellings give equal group terms; overlapping terms on one factor
   (``(1 | g) + (1 | g)``) are refused.
2. REML and ML equal lme4's (measured with Rscript, lme4 1.1-31, recorded below) and equal
   poolwise's own ``(Days || Subject)``; two blocks on one factor equal lme4 too (REML, ML and
   the conditional modes, on tests/data/same_factor_mixed.csv).
3. The exact posterior is the ``(Days || Subject)`` fit's draw for draw (same seed, same path);
   that of two blocks on ``g`` is the posterior with the second block on a copy of ``g``.
4. A CSV fit reduced inside DuckDB equals the in-memory fit.
5. Pooling per block; a factor of several blocks names all of them.

lme4 reference script (R 4, lme4 1.1-31)::

    m <- lmer(Reaction ~ Days + (1|Subject) + (0+Days|Subject), sleepstudy, REML = reml,
              control = lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12)))
    logLik(m); fixef(m); as.data.frame(VarCorr(m))
    d <- read.csv("tests/data/same_factor_mixed.csv")
    m <- lmer(y ~ x + z + (1+x|g) + (0+z|g), d, REML = reml, control = <as above>)
    logLik(m); fixef(m); as.data.frame(VarCorr(m)); head(ranef(m)$g, 3)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import poolwise as pw
from poolwise.errors import FormulaError, SpecError
from poolwise.formula import parse_formula

SEPARATE = "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)"
DOUBLE_BAR = "Reaction ~ Days + (Days || Subject)"

#: lme4: logLik, fixef (Intercept, Days), sd(Intercept|Subject), sd(Days|Subject), sigma
LME4 = {
    True: (-871.834646790656, (251.4051048484829, 10.4672859595959), 25.05132963993020, 5.98817182291708,
           25.56528515282851),
    False: (-876.001627569941, (251.4051048484834, 10.4672859595965), 24.17126655293847, 5.79940859193807,
            25.55613454817713),
}
MIXED = "y ~ x + z + (1 + x | g) + (0 + z | g)"
#: lme4 on the mixed data: logLik, fixef, sd(Intercept|g), sd(x|g), cor(Intercept,x|g), sd(z|g), sigma
LME4_MIXED = {
    True: (-648.742808177225, (1.479538064987201, 0.670784867787877, -0.102229700236685),
           (1.731374155949062, 0.751428984443926, 0.613801557238756, 0.717815246919726, 0.921162719284845)),
    False: (-646.290304372094, (1.479644355464154, 0.670360777765636, -0.102150836769530),
            (1.701014773257970, 0.736911806466319, 0.616015939007879, 0.703791725486045, 0.921143376350764)),
}
#: lme4's REML conditional modes, ranef(m)$g for g0, g1, g10 (columns Intercept, x, z)
LME4_MIXED_RANEF = {"g0": (-1.962981217732647, -0.327949795474426, 0.191430379286051972),
                    "g1": (0.779569059471624, 0.309608742941598, 0.091419069221740326),
                    "g10": (1.231485673758994, 0.425547492476392, 0.000678025201506213)}
MIXED_CSV = Path(__file__).parent / "data" / "same_factor_mixed.csv"

#: lme4's optimum is found to rhoend 1e-12 in θ; poolwise's Newton polish to ~1e-8 in θ: 1e-5
#: relative in the SDs is the brief's tolerance and 10× above the differences measured (≤ 2e-7)
RTOL = 1e-5


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    return pw.datasets.sleepstudy()


def test_separate_terms_on_one_factor_are_the_double_bar_term() -> None:
    sep, dbl = parse_formula(SEPARATE).group_terms, parse_formula(DOUBLE_BAR).group_terms
    assert sep == dbl
    (t,) = sep
    assert (t.exprs, t.factor, t.correlated) == (("Intercept", "Days"), "Subject", False)
    assert [t.sd_name(e) for e in t.exprs] == ["sd(Intercept|Subject)", "sd(Days|Subject)"]
    assert [t.value_name(e) for e in t.exprs] == ["1|Subject", "Days|Subject"]
    # three single terms; a || term beside a single one; nested factors keep their own terms
    (t,) = parse_formula("y ~ (1 | g) + (0 + x | g) + (0 + z | g)").group_terms
    assert (t.exprs, t.correlated) == (("Intercept", "x", "z"), False)
    (t,) = parse_formula("y ~ (x || g) + (0 + z | g)").group_terms
    assert (t.exprs, t.correlated) == (("Intercept", "x", "z"), False)
    a, ab = parse_formula("y ~ (1 | a/b) + (0 + x | a:b)").group_terms
    assert (a.factor, a.exprs) == ("a", ("Intercept",))
    assert (ab.factor, ab.exprs, ab.correlated) == ("a:b", ("Intercept", "x"), False)
    # one term per factor is unchanged
    (t,) = parse_formula("y ~ (1 + x | g) + (1 | h)").group_terms[:1]
    assert t.correlated


@pytest.mark.parametrize("formula, words", [
    ("y ~ (1 | g) + (1 | g)", ["(1 | g)", "'1'", "not be identifiable"]),
    ("y ~ (x | g) + (1 | g)", ["(x | g)", "(1 | g)", "'1'"]),
    ("y ~ (1 + x | g) + (0 + x | g)", ["'x'", "not be identifiable"]),
    ("y ~ (1 + x | g) + (x || g)", ["(x || g)", "not be identifiable"]),
])
def test_overlapping_or_mixed_terms_on_one_factor_are_refused(formula: str, words: list[str]) -> None:
    with pytest.raises(FormulaError) as err:
        parse_formula(formula)
    text = str(err.value)
    assert all(w in text for w in words), text
    assert err.value.hint and "|" in err.value.hint
    with pytest.raises(FormulaError):  # before any data is touched
        pw.fit(formula, pd.DataFrame({"y": [1.0, 2.0], "x": [0.0, 1.0], "z": [1.0, 0.0], "g": ["a", "b"]}))


@pytest.mark.parametrize("reml", [True, False])
def test_reml_and_ml_equal_lme4_and_the_double_bar_fit(sleep: pd.DataFrame, reml: bool) -> None:
    fit = pw.fit(SEPARATE, sleep, method="empirical", reml=reml, draws=10, chains=1)
    ll, beta, sd0, sd1, sigma = LME4[reml]
    assert float(fit.loglik()) == pytest.approx(ll, rel=1e-9, abs=1e-6)  # criterion: lme4 converged to 1e-12
    np.testing.assert_allclose(fit.fixef().to_numpy(), beta, rtol=RTOL)
    vc = fit.varcorr()
    assert list(vc.index) == ["sd(Intercept|Subject)", "sd(Days|Subject)", "sigma"]  # no correlation
    np.testing.assert_allclose(vc["sd_cor"].to_numpy(), [sd0, sd1, sigma], rtol=RTOL)
    assert fit.loglik().df == 5  # lme4's df: 2 β + 2 SDs + σ
    # the correlated model is another one: lme4's (Days | Subject) REML logLik is -871.8141
    assert abs(fit.loglik() - (-871.814135980 if reml else -875.969672232)) > 1e-3
    dbl = pw.fit(DOUBLE_BAR, sleep, method="empirical", reml=reml, draws=10, chains=1)
    assert fit.loglik() == dbl.loglik()
    pd.testing.assert_frame_equal(fit.varcorr(), dbl.varcorr())
    re = fit.ranef()
    assert list(re) == ["Subject"] and list(re["Subject"].columns) == ["Intercept", "Days"]
    pd.testing.assert_frame_equal(re["Subject"], dbl.ranef()["Subject"])


def test_exact_posterior_is_the_double_bar_posterior(sleep: pd.DataFrame) -> None:
    kw = dict(seed=3, chains=2, draws=300)
    a, b = pw.fit(SEPARATE, sleep, **kw), pw.fit(DOUBLE_BAR, sleep, **kw)
    sa, sb = a.summary(), b.summary()
    assert "sd(Days|Subject)" in sa.index and "1|Subject[308]" in sa.index and "Days|Subject[308]" in sa.index
    assert not any(i.startswith("cor(") for i in sa.index)
    pd.testing.assert_frame_equal(sa, sb)  # one code path, one seed: the same draws


def test_a_csv_fit_through_duckdb_equals_the_in_memory_fit(sleep: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "sleep.csv"
    sleep.to_csv(path, index=False)
    for reml in (True, False):
        f = pw.fit(SEPARATE, str(path), method="empirical", reml=reml, draws=10, chains=1)
        m = pw.fit(SEPARATE, sleep, method="empirical", reml=reml, draws=10, chains=1)
        assert f.bound.y.size == 0  # reduced inside DuckDB: no rows held
        assert f.loglik() == pytest.approx(m.loglik(), rel=1e-12, abs=1e-9)
        np.testing.assert_allclose(f.varcorr()["sd_cor"], m.varcorr()["sd_cor"], rtol=1e-8)
        np.testing.assert_allclose(f.fixef(), m.fixef(), rtol=1e-10)
        np.testing.assert_allclose(f.varcorr()["sd_cor"], LME4[reml][2:], rtol=RTOL)


def test_pooling_names_the_block_or_one_of_its_terms(sleep: pd.DataFrame) -> None:
    kw = dict(method="empirical", draws=10, chains=1)
    fit = pw.fit(SEPARATE, sleep, pooling={"Subject": 10.0}, **kw)
    assert fit.varcorr().loc["sd(Days|Subject)", "fixed"] and len(fit.bound.blocks) == 1
    # a key naming one term of the independent block splits it into one block per term (the same
    # model: Σ diagonal either way), each with its own setting
    split = pw.fit(SEPARATE, sleep, pooling={"1|Subject": "hierarchical", "Days|Subject": "hierarchical"}, **kw)
    assert [b.exprs for b in split.bound.blocks] == [("Intercept",), ("Days",)]
    assert float(split.loglik()) == pytest.approx(LME4[True][0], rel=1e-9, abs=1e-6)
    np.testing.assert_allclose(split.varcorr()["sd_cor"].to_numpy(), LME4[True][2:], rtol=RTOL)
    pd.testing.assert_frame_equal(split.ranef()["Subject"], pw.fit(SEPARATE, sleep, **kw).ranef()["Subject"],
                                  check_exact=False, rtol=1e-5, atol=1e-6)
    for key in ("0 + Days | Subject", "Days|Subject"):  # a pooled term's fit is the fit without it
        pooled = pw.fit(SEPARATE, sleep, pooling={key: "pooled"}, **kw)
        alone = pw.fit("Reaction ~ Days + (1 | Subject)", sleep, **kw)
        assert float(pooled.loglik()) == pytest.approx(float(alone.loglik()), rel=1e-10)
    with pytest.raises(SpecError, match="no group term"):
        pw.fit(SEPARATE, sleep, pooling={"Daze|Subject": "pooled"}, **kw)


@pytest.fixture(scope="module")
def mixed() -> pd.DataFrame:
    return pd.read_csv(MIXED_CSV)


def test_a_correlated_term_beside_another_is_a_block_of_its_own() -> None:
    a, b = parse_formula(MIXED).group_terms
    assert (a.exprs, a.factor, a.correlated, a.site) == (("Intercept", "x"), "g", True, "g")
    assert (b.exprs, b.factor, b.site) == (("z",), "g", "g#1")
    a2, b2 = parse_formula("y ~ x + z + (0 + z | g) + (1 + x | g)").group_terms  # intercept's block first
    assert (a2.exprs, b2.exprs) == (("Intercept", "x"), ("z",))
    a, b = parse_formula("y ~ (1 + x | g) + (0 + z | g) + (0 + w | g)").group_terms  # singles: one || block
    assert (b.exprs, b.correlated) == (("z", "w"), False)
    a, b = parse_formula("y ~ (1 + x | g) + (0 + z + w | g)").group_terms  # a second correlated block
    assert (b.exprs, b.correlated) == (("z", "w"), True)


@pytest.mark.parametrize("reml", [True, False])
def test_two_blocks_on_one_factor_equal_lme4(mixed: pd.DataFrame, reml: bool) -> None:
    fit = pw.fit(MIXED, mixed, method="empirical", reml=reml, draws=10, chains=1)
    ll, beta, vc = LME4_MIXED[reml]
    assert float(fit.loglik()) == pytest.approx(ll, rel=1e-9, abs=1e-6)
    assert fit.loglik().df == 8
    np.testing.assert_allclose(fit.fixef().to_numpy(), beta, rtol=RTOL)
    got = fit.varcorr()
    assert list(got.index) == ["sd(Intercept|g)", "sd(x|g)", "cor(Intercept,x|g)", "sd(z|g)", "sigma"]
    np.testing.assert_allclose(got["sd_cor"].to_numpy(), vc, rtol=RTOL)
    re = fit.ranef()
    assert list(re) == ["g"] and list(re["g"].columns) == ["Intercept", "x", "z"]
    assert re["g"].attrs["condcov"].shape == (30, 3, 3) and re["g"].attrs["condsd"].shape == (30, 3)
    if reml:
        for level, want in LME4_MIXED_RANEF.items():
            np.testing.assert_allclose(re["g"].loc[level].to_numpy(), want, rtol=1e-4, atol=1e-6)
    assert list(fit.coef()["g"].columns) == ["Intercept", "x", "z"]
    assert "groups=30 " in repr(fit)  # one factor, listed once


def test_two_blocks_on_one_factor_are_two_factors_of_the_same_levels(mixed: pd.DataFrame) -> None:
    """The second block on a copy of the grouping column is the same model: the same posterior
    (the sparse path fits blocks, whatever their factors) and the same REML fit."""
    copy = mixed.assign(g2=mixed["g"])
    other = "y ~ x + z + (1 + x | g) + (0 + z | g2)"
    kw = dict(seed=5, chains=2, draws=300)
    a, b = pw.fit(MIXED, copy, **kw), pw.fit(other, copy, **kw)
    sa, sb = a.summary(), b.summary()
    sb.index = sb.index.str.replace("|g2", "|g", regex=False)
    pd.testing.assert_frame_equal(sa, sb)
    ra, rb = (pw.fit(f, copy, method="empirical", draws=10, chains=1) for f in (MIXED, other))
    assert float(ra.loglik()) == pytest.approx(float(rb.loglik()), rel=1e-12)


@pytest.mark.parametrize("which", ["one block", "two blocks"])
def test_a_csv_fit_of_either_form_equals_the_in_memory_fit(which: str, sleep: pd.DataFrame, mixed: pd.DataFrame,
                                                           tmp_path: Path) -> None:
    formula, frame = (SEPARATE, sleep) if which == "one block" else (MIXED, mixed)
    path = tmp_path / "rows.csv"
    frame.to_csv(path, index=False)
    f = pw.fit(formula, str(path), method="empirical", draws=10, chains=1)
    m = pw.fit(formula, frame, method="empirical", draws=10, chains=1)
    assert f.bound.y.size == 0  # reduced inside DuckDB
    assert float(f.loglik()) == pytest.approx(float(m.loglik()), rel=1e-12, abs=1e-9)
    # the statistics agree to ~1e-12, and so does the criterion; at its maximum the estimates are
    # fixed only to about √(the optimizer's criterion tolerance) (3e-8 relative measured): 1e-6
    np.testing.assert_allclose(f.varcorr()["sd_cor"], m.varcorr()["sd_cor"], rtol=1e-6)
    pd.testing.assert_frame_equal(f.ranef()[m.bound.blocks[0].factor], m.ranef()[m.bound.blocks[0].factor],
                                  check_exact=False, rtol=1e-6, atol=1e-8)


def test_pooling_per_block_and_by_factor(mixed: pd.DataFrame) -> None:
    kw = dict(method="empirical", draws=10, chains=1)
    for key in ("z|g", "0 + z | g"):  # a pooled block's fit is the fit without it
        pooled = pw.fit(MIXED, mixed, pooling={key: "pooled"}, **kw)
        alone = pw.fit("y ~ x + z + (1 + x | g)", mixed, **kw)
        assert float(pooled.loglik()) == pytest.approx(float(alone.loglik()), rel=1e-10)
        assert list(pooled.varcorr().index) == ["sd(Intercept|g)", "sd(x|g)", "cor(Intercept,x|g)", "sigma"]
    everything = pw.fit(MIXED, mixed, pooling={"g": "pooled"}, **kw)  # the factor: all its blocks
    assert everything.spec.pooling == "pooled"
    with pytest.raises(SpecError, match="several group terms") as err:
        pw.pooling_path(MIXED, mixed, factor="g")
    assert "'1 + x|g'" in err.value.hint and "'z|g'" in err.value.hint


#: lme4's confint(m, oldNames = FALSE) (profile; on the ML deviance) for the mixed REML fit
LME4_MIXED_PROFILE = {
    "sd(Intercept|g)": (1.3340957764, 2.2578885401), "cor(Intercept,x|g)": (0.2961766956, 0.8135352828),
    "sd(x|g)": (0.5533046277, 1.0090145805), "sd(z|g)": (0.5264292699, 0.9632592763),
    "sigma": (0.8533293181, 0.9984160679), "Intercept": (0.8421734600, 2.1189481153),
    "x": (0.3752467054, 0.9689541422), "z": (-0.3872068528, 0.1795166861),
}


def test_profile_intervals_of_two_blocks_equal_lme4(mixed: pd.DataFrame) -> None:
    """lme4 interpolates its profile with splines between grid points, poolwise finds the roots:
    tests/test_estimates.py measured 2e-4 relative between the two (5e-4 there, the same here)."""
    ci = pw.fit(MIXED, mixed, method="empirical", draws=10, chains=1).confint()
    assert set(ci.index) == set(LME4_MIXED_PROFILE)
    for name, want in LME4_MIXED_PROFILE.items():
        np.testing.assert_allclose(ci.loc[name].to_numpy(float), want, rtol=5e-4,
                                   atol=1e-4 if name.startswith("cor") else 0, err_msg=name)


def test_glmm_two_blocks_on_one_factor_are_two_factors_of_the_same_levels() -> None:
    """Laplace (glmer's two stages) for a bernoulli model with two blocks on one factor: the fit of
    the second block on a copy of the factor (the crossed-factor path, checked against glmer on
    grouseticks elsewhere) is the same model, to the optimizer's precision."""
    rng = np.random.default_rng(7)
    J, n = 30, 600
    g = rng.integers(0, J, n)
    x, z = rng.normal(size=n), rng.normal(size=n)
    b0 = rng.normal(size=J) * 0.8
    b1, c = 0.5 * b0 + rng.normal(size=J) * 0.4, rng.normal(size=J) * 0.6
    eta = -0.3 + 0.5 * x + 0.2 * z + b0[g] + b1[g] * x + c[g] * z
    df = pd.DataFrame({"y": (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int), "x": x, "z": z,
                       "g": [f"g{i}" for i in g]}).assign(g2=lambda d: d["g"])
    kw = dict(family="bernoulli", method="empirical", draws=10, chains=1)
    a = pw.fit(MIXED, df, **kw)
    b = pw.fit("y ~ x + z + (1 + x | g) + (0 + z | g2)", df, **kw)
    assert float(a.loglik()) == pytest.approx(float(b.loglik()), rel=1e-9)
    assert a.loglik().df == 7
    np.testing.assert_allclose(a.varcorr()["sd_cor"].to_numpy(), b.varcorr()["sd_cor"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(a.fixef().to_numpy(), b.fixef().to_numpy(), rtol=1e-6)
    re = a.ranef()["g"]
    assert list(re.columns) == ["Intercept", "x", "z"]
    np.testing.assert_allclose(re["z"].to_numpy(), b.ranef()["g2"]["z"].to_numpy(), rtol=1e-5, atol=1e-7)
