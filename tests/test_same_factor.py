"""Several group terms on one grouping factor are independent, as in lme4.

lme4 makes separate terms with the same grouping factor independent (Σ block-diagonal across the
terms): ``(1 | Subject) + (0 + Days | Subject)`` is the model ``(Days || Subject)`` abbreviates.
poolwise used to merge them into one correlated block, i.e. fit ``(Days | Subject)``.  poolwise
now reads them as one block with a diagonal Σ — the very term ``(Days || Subject)`` gives — so
every method and engine fits the two spellings by one code path.

1. The formula: the two spellings give equal group terms; overlapping terms on one factor
   (``(1 | g) + (1 | g)``) and a correlated block beside another term on its factor are refused.
2. REML and ML equal lme4's (measured with Rscript, lme4 1.1-31, recorded below) and equal
   poolwise's own ``(Days || Subject)``.
3. The exact posterior is the ``(Days || Subject)`` fit's draw for draw (same seed, same path).
4. A CSV fit reduced inside DuckDB equals the in-memory fit.

lme4 reference script (R 4, lme4 1.1-31)::

    m <- lmer(Reaction ~ Days + (1|Subject) + (0+Days|Subject), sleepstudy, REML = reml,
              control = lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12)))
    logLik(m); fixef(m); as.data.frame(VarCorr(m))
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
    ("y ~ (1 + x | g) + (0 + z | g)", ["(1 + x | g)", "several correlated blocks", "'g'"]),
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


def test_pooling_names_the_merged_term(sleep: pd.DataFrame) -> None:
    fit = pw.fit(SEPARATE, sleep, method="empirical", pooling={"Subject": 10.0}, draws=10, chains=1)
    assert fit.varcorr().loc["sd(Days|Subject)", "fixed"]
    with pytest.raises(SpecError, match="1 \\+ Days\\|\\|Subject"):  # one of the merged terms alone
        pw.fit(SEPARATE, sleep, method="empirical", pooling={"1|Subject": "pooled"}, draws=10, chains=1)
