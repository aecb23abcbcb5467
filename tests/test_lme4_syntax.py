"""lme4's syntax and habits: cbind() outcomes, prior weights, predictions without the group values,
``--method``/``--reml``/``--ml`` on the command line, the note on integer-coded factors, and output
that shows the user's formula and family as given.

The lme4 figures were measured with lme4 1.1 in R on the same data (sleepstudy with weights
w = 1 + Days %% 3; cbpp with w = 1 + as.integer(herd) %% 3), with bobyqa at rhoend = 1e-10:

    lmer(Reaction ~ Days + (Days | Subject), sleepstudy, weights = w, REML = TRUE / FALSE)
    lmer(Reaction ~ Days + (1 | Subject), sleepstudy, weights = w)
    glmer(incidence ~ period + (1 | herd), cbpp, family = poisson, weights = w)
    glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family = binomial)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import poolwise as pw
from poolwise.cli import app
from poolwise.errors import DataError, FormulaError, SpecError

CBIND = "cbind(incidence, size - incidence) ~ period + (1 | herd)"

#: lmer(Reaction ~ Days + (Days | Subject), weights = w): REML, then ML
SLEEP_W = {
    True: dict(beta=[249.9507015059, 10.6773686366], se=[7.06843459689, 1.67061280973],
               sd=[26.3265542116017, 6.5528492372676], cor=-0.0994900911066, sigma=31.8060456819137,
               loglik=-866.771773233),
    False: dict(beta=[249.9507015059, 10.6773686366], se=[6.86928499044, 1.62354372022],
                sd=[25.3599096713352, 6.3363144085694], cor=-0.0893256823005, sigma=31.8060451767515,
                loglik=-871.020485938),
}
#: lmer(Reaction ~ Days + (1 | Subject), weights = w), REML
SLEEP_W_INTERCEPT = dict(beta=[249.9507015059, 10.6773686366], sd=37.4584294156, sigma=40.4991695110,
                         loglik=-894.058534147)
#: glmer(incidence ~ period + (1 | herd), family = poisson, weights = w)
CBPP_POISSON_W = dict(beta=[1.26712039529, -1.06635430653, -1.21588599213, -1.99035850452], sd=0.554668138906,
                      loglik=-193.882874556)
#: glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), family = binomial)
CBPP_CBIND = dict(beta=[-1.398331704974, -0.991923689016, -1.128214096304, -1.579750114067], sd=0.642064354255,
                  loglik=-92.0265663874)
# lme4's Laplace optimum is reached to about 1e-4 relative (poolwise's log-likelihood is the higher
# at its own optimum: lme4's bobyqa stops short), so the GLM figures are compared to 1e-3 as the
# other lme4 anchors of the empirical path are; the Gaussian REML/ML optimum is sharp (1e-6).
GLM_RTOL = 1e-3
LMM_RTOL = 1e-6


@pytest.fixture(scope="module")
def cbpp() -> pd.DataFrame:
    return pw.datasets.cbpp()


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    df = pw.datasets.sleepstudy()
    return df.assign(w=1.0 + df["Days"] % 3)


def _est(f: pw.Fit) -> dict:
    return f.draws.info["estimates"]


def run(*args: object):  # noqa: ANN201 - click's Result
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


# -- cbind(successes, failures) ------------------------------------------------------------------

def test_cbind_equals_trials_form_and_lme4(cbpp: pd.DataFrame) -> None:
    a = pw.fit(CBIND, cbpp, method="empirical")  # family defaults to binomial for cbind()
    b = pw.fit("incidence | trials(size) ~ period + (1 | herd)", cbpp, family="binomial", method="empirical")
    assert a.spec.fam.name == "binomial"
    np.testing.assert_allclose(_est(a)["beta"], _est(b)["beta"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_est(a)["sd"], _est(b)["sd"], rtol=1e-10)
    assert a.draws.info["loglik"] == pytest.approx(b.draws.info["loglik"], rel=1e-10)
    np.testing.assert_array_equal(a.bound.trials, cbpp["size"].to_numpy(float))
    np.testing.assert_allclose(_est(a)["beta"], CBPP_CBIND["beta"], rtol=GLM_RTOL)
    assert _est(a)["sd"][0] == pytest.approx(CBPP_CBIND["sd"], rel=GLM_RTOL)
    assert a.draws.info["loglik"] >= CBPP_CBIND["loglik"] - 1e-6  # at least lme4's maximum
    assert "cbind(incidence, size - incidence)" in repr(a)


def test_cbind_from_a_file_shows_the_formula_as_given(cbpp: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "cbpp.csv"
    cbpp.to_csv(path, index=False)  # (period is read back as integers)
    f = pw.fit(CBIND, str(path), method="empirical")  # merged into counts inside DuckDB
    m = pw.fit(CBIND, cbpp.assign(period=cbpp["period"].astype(int)), method="empirical")
    np.testing.assert_allclose(_est(f)["beta"], _est(m)["beta"], rtol=1e-6)
    text = repr(f) + " ".join(f.notes()) + " ".join(str(v) for v in f.idata.posterior.attrs.values())
    assert "pw_" not in text and CBIND in repr(f) and "family=binomial" in repr(f)
    assert "merged" not in " ".join(f.notes())  # 56 rows stay 56: nothing to say


def test_cbind_refusals(cbpp: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(FormulaError, match="does not fit"):
        pw.fit(CBIND, cbpp, family="poisson", method="empirical")
    with pytest.raises(FormulaError, match="failures"):
        pw.fit("cbind(incidence, os.system(1)) ~ period + (1 | herd)", cbpp)
    r = int(np.flatnonzero(cbpp["incidence"].to_numpy() > 0)[1])
    bad = cbpp.assign(size=cbpp["size"].where(cbpp.index != r, cbpp["incidence"] - 1))  # size < incidence
    with pytest.raises(DataError, match=rf"failures size - incidence .*\(row {r}\)") as err:
        pw.fit(CBIND, bad, method="empirical")
    assert err.value.rows == [r]
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(DataError, match=rf"failures size - incidence .*\(row {r}\)"):
        pw.fit(CBIND, str(path), method="empirical")
    empty = cbpp.assign(incidence=0, size=cbpp["size"].where(cbpp.index != 5, 0))
    with pytest.raises(DataError, match=r"no trials .*\(row 5\)"):
        pw.fit(CBIND, empty, method="empirical")


# -- weights= ----------------------------------------------------------------------------------

@pytest.mark.parametrize("reml", [True, False])
def test_weights_gaussian_equal_lme4(sleep: pd.DataFrame, reml: bool) -> None:
    ref = SLEEP_W[reml]
    f = pw.fit("Reaction ~ Days + (Days | Subject)", sleep, weights="w", method="empirical", reml=reml)
    e = _est(f)
    np.testing.assert_allclose(e["beta"], ref["beta"], rtol=LMM_RTOL)
    np.testing.assert_allclose(e["sd"], ref["sd"], rtol=1e-5)
    assert np.asarray(e["corr"])[0, 1] == pytest.approx(ref["cor"], abs=1e-5)
    assert e["sigma"] == pytest.approx(ref["sigma"], rel=LMM_RTOL)
    assert f.draws.info["loglik"] == pytest.approx(ref["loglik"], abs=1e-6)
    assert "family=gaussian weights=w " in repr(f)


def test_weights_gaussian_from_a_file_equal_lme4(sleep: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "sleep.csv"
    sleep.to_csv(path, index=False)
    ref = SLEEP_W_INTERCEPT
    for data in (sleep, str(path)):  # in memory; reduced inside DuckDB with the weights
        f = pw.fit("Reaction ~ Days + (1 | Subject)", data, weights="w", method="empirical")
        e = _est(f)
        np.testing.assert_allclose(e["beta"], ref["beta"], rtol=LMM_RTOL)
        assert e["sd"][0] == pytest.approx(ref["sd"], rel=1e-6)
        assert e["sigma"] == pytest.approx(ref["sigma"], rel=LMM_RTOL)
        assert f.draws.info["loglik"] == pytest.approx(ref["loglik"], abs=1e-6)
    f = pw.fit("Reaction ~ Days + (Days | Subject)", str(path), weights="w", method="empirical")
    np.testing.assert_allclose(_est(f)["sd"], SLEEP_W[True]["sd"], rtol=1e-5)
    # responses of new rows: residual SD sigma / sqrt(w), so the weights column is needed
    new = sleep.iloc[:2]
    with pytest.raises(DataError, match="weights='w' needs that column"):
        f.predict(new.drop(columns=["w"]))
    v_mean = f.predict(new.assign(w=4.0), kind="mean", return_draws=True)[..., 0].var()
    v_resp = f.predict(new.assign(w=4.0), seed=1, return_draws=True)[..., 0].var()
    # Var(response) = Var(mean) + sigma²/w; from 4000 draws the difference has an SD of about 3.5 %
    # (2σ⁴/w²/N + 4 Var(mean) σ²/w/N), so 10 % is three SDs
    assert v_resp - v_mean == pytest.approx(_est(f)["sigma"] ** 2 / 4.0, rel=0.1)


def test_weights_pooled_equal_statsmodels_wls(sleep: pd.DataFrame) -> None:
    sm = pytest.importorskip("statsmodels.api")
    X = sm.add_constant(sleep["Days"].to_numpy(float))
    wls = sm.WLS(sleep["Reaction"].to_numpy(float), X, weights=sleep["w"].to_numpy(float)).fit()
    f = pw.fit("Reaction ~ Days + (1 | Subject)", sleep, weights="w", method="empirical", pooling="pooled")
    np.testing.assert_allclose(_est(f)["beta"], wls.params, rtol=1e-10)
    assert _est(f)["sigma"] == pytest.approx(np.sqrt(wls.scale), rel=1e-7)  # REML σ² = Σ w r² / (n − p)
    ml = pw.fit("Reaction ~ Days + (1 | Subject)", sleep, weights="w", method="empirical", pooling="pooled",
                reml=False)
    assert ml.draws.info["loglik"] == pytest.approx(wls.llf, rel=1e-9)


def test_weights_glm_equal_replicated_rows_and_lme4(cbpp: pd.DataFrame) -> None:
    df = cbpp.assign(w=1 + cbpp["herd"].astype(int) % 3)
    f = pw.fit("incidence ~ period + (1 | herd)", df, family="poisson", weights="w", method="empirical")
    rep = df.loc[df.index.repeat(df["w"])].reset_index(drop=True)  # w copies of each row
    g = pw.fit("incidence ~ period + (1 | herd)", rep, family="poisson", method="empirical")
    np.testing.assert_allclose(_est(f)["beta"], _est(g)["beta"], rtol=1e-7)
    np.testing.assert_allclose(_est(f)["sd"], _est(g)["sd"], rtol=1e-7)
    np.testing.assert_allclose(_est(f)["beta"], CBPP_POISSON_W["beta"], rtol=GLM_RTOL)
    assert _est(f)["sd"][0] == pytest.approx(CBPP_POISSON_W["sd"], rel=GLM_RTOL)
    assert f.draws.info["loglik"] >= CBPP_POISSON_W["loglik"] - 1e-6


def test_weights_in_the_nuts_likelihood(cbpp: pd.DataFrame) -> None:
    """The NUTS model scales each row's log-likelihood by its weight: the observed site's log
    density equals Σ w_i log p(y_i | η_i) of the families module at the same η."""
    import jax.numpy as jnp
    from numpyro import handlers

    from poolwise.data import read_table
    from poolwise.infer.nuts import build_model

    df = cbpp.assign(w=1.0 + cbpp["herd"].astype(int) % 3)
    bound = pw.ModelSpec("incidence ~ period + (1 | herd)", family="poisson", weights="w").bind(read_table(df))
    y = jnp.asarray(bound.y)
    tr = handlers.trace(handlers.seed(build_model(bound), 0)).get_trace(y=y)
    site = tr["y"]
    ll = float(jnp.sum(site["fn"].log_prob(site["value"]) * site["scale"]))
    eta = np.log(np.asarray(site["fn"].rate))
    ref = float(np.sum(bound.spec.fam.log_likelihood(bound.y, eta, weights=df["w"].to_numpy())))
    assert ll == pytest.approx(ref, rel=1e-10)
    plain = pw.ModelSpec("incidence ~ period + (1 | herd)", family="poisson").bind(read_table(df))
    assert handlers.trace(handlers.seed(build_model(plain), 0)).get_trace(y=y)["y"]["scale"] is None


def test_weights_refused(sleep: pd.DataFrame, tmp_path: Path) -> None:
    bad = sleep.assign(w=sleep["w"].where(~sleep.index.isin([4, 9]), -1.0))
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    for data in (bad, str(path)):
        with pytest.raises(DataError, match=r"'w' must be positive.*rows 4, 9"):
            pw.fit("Reaction ~ Days + (1 | Subject)", data, weights="w", method="empirical")
    with pytest.raises(DataError, match=r"'w' has 1 missing value \(row 7\)"):
        pw.fit("Reaction ~ Days + (1 | Subject)", sleep.assign(w=sleep["w"].where(sleep.index != 7)),
               weights="w", method="empirical")
    with pytest.raises(DataError, match="Unknown weights column 'ww'") as err:
        pw.fit("Reaction ~ Days + (1 | Subject)", sleep, weights="ww")
    assert "Did you mean 'w'" in err.value.hint
    with pytest.raises(SpecError, match="both set"):
        pw.fit("Reaction | se(w) ~ Days + (1 | Subject)", sleep, weights="w")


# -- predict(groups="none") ----------------------------------------------------------------------

def test_predict_without_group_values_is_x_beta_plus_offset(sleep: pd.DataFrame) -> None:
    df = sleep.assign(base=np.log1p(sleep["Days"]))
    f = pw.fit("Reaction ~ Days + offset(base) + (Days | Subject)", df, method="empirical", draws=100, chains=2)
    new = df.iloc[[0, 15, 42]].drop(columns=["Subject"])  # no group column needed
    got = f.predict(new, kind="link", groups="none", return_draws=True)
    X = np.column_stack([np.ones(3), new["Days"].to_numpy(float)])
    want = np.einsum("cdp,np->cdn", f._thin(f.draws.beta), X) + new["base"].to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # the point estimate: X β̂ + offset (β's conditional mean), within the Monte Carlo error of the
    # mean of the independent draws
    mean = f.predict(new, kind="link", groups="none")["mean"].to_numpy()
    beta_hat = np.asarray(_est(f)["beta"])
    se = got.reshape(-1, 3).std(axis=0) / np.sqrt(got[..., 0].size)
    assert np.all(np.abs(mean - (X @ beta_hat + new["base"].to_numpy())) < 5 * se)
    # the default still uses the group values (a known subject's own line)
    known = f.predict(df.iloc[[0]], kind="link")["mean"].to_numpy()
    assert abs(known[0] - mean[0]) > 1.0
    with pytest.raises(SpecError, match="'groups' option"):
        f.predict(new, groups="some")


def test_predict_of_counts_merged_from_a_file(cbpp: pd.DataFrame, tmp_path: Path) -> None:
    """A poisson fit whose rows were merged into counts inside DuckDB predicts new rows from the
    user's columns (the offset log(size) as written), never asking for the merged table's own."""
    path = tmp_path / "cbpp.csv"
    cbpp.to_csv(path, index=False)
    f = pw.fit("incidence ~ period + offset(log(size)) + (1 | herd)", str(path), family="poisson",
               method="empirical", draws=50, chains=2)
    new = cbpp.head(3)
    got = f.predict(new, kind="link", groups="none", return_draws=True)
    X = np.column_stack([np.ones(3), new["period"].astype(int)])
    want = np.einsum("cdp,np->cdn", f._thin(f.draws.beta), X) + np.log(new["size"].to_numpy(float))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert f.predict(new, kind="response").shape[0] == 3
    with pytest.raises(DataError, match="'size'") as err:
        f.predict(new.drop(columns=["size"]))
    assert "pw_" not in str(err.value)


# -- the note on integer codes ----------------------------------------------------------------

def test_note_on_integer_columns(cbpp: pd.DataFrame, tmp_path: Path) -> None:
    df = cbpp.assign(period=cbpp["period"].astype(int), flag=cbpp["herd"].astype(int) % 2)
    note = "period is an integer column with 4 distinct values, fitted as one numeric slope; write C(period)"
    f = pw.fit(CBIND, df, method="empirical")
    assert any(n.startswith(note) for n in f.notes())
    path = tmp_path / "cbpp.csv"
    df.to_csv(path, index=False)
    assert any(n.startswith(note) for n in pw.fit(CBIND, str(path), method="empirical").notes())
    quiet = pw.fit("cbind(incidence, size - incidence) ~ C(period) + flag + (1 | herd)", df, method="empirical")
    assert not any("integer column" in n for n in quiet.notes())  # C() given; a 0/1 column is a slope either way


def test_note_on_integer_columns_of_a_gaussian_file(sleep: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "sleep.csv"
    sleep.to_csv(path, index=False)
    f = pw.fit("Reaction ~ Days + (1 | Subject)", str(path), method="empirical")  # reduced inside DuckDB
    assert "Days is an integer column with 10 distinct values, fitted as one numeric slope; write C(Days) to make " \
           "it a factor." in f.notes()
    for data in (sleep, str(path)):  # a varying slope says the user means a number
        g = pw.fit("Reaction ~ Days + (Days | Subject)", data, method="empirical")
        assert not any("integer column" in n for n in g.notes())


# -- the command line --------------------------------------------------------------------------

def test_cli_help_lists_every_method_and_reml() -> None:
    from poolwise.infer import METHODS

    r = run("fit", "--help")
    assert r.exit_code == 0
    for m in METHODS:
        assert f"{m}: " in r.stdout, m
    assert "--reml" in r.stdout and "--ml" in r.stdout and "--weights" in r.stdout


def test_cli_reml_ml_and_weights(sleep: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "sleep.csv"
    sleep.to_csv(path, index=False)
    f = "Reaction ~ Days + (Days | Subject)"
    for flag, reml in (("--reml", True), ("--ml", False)):
        r = run("fit", path, "-f", f, flag, "--weights", "w", "--draws", "100", "--chains", "2")
        assert r.exit_code == 0, r.output
        assert "method=empirical" in r.stdout
        assert f"{SLEEP_W[reml]['sigma']:.4g}"[:5] in r.stdout or "31.8" in r.stdout
    lib = pw.fit(f, str(path), method="empirical", reml=False, weights="w")
    assert lib.draws.info["loglik"] == pytest.approx(SLEEP_W[False]["loglik"], abs=1e-6)
    for args, words in ((("--ml", "--method", "nuts"), "--method nuts"),
                        (("--reml", "--method", "exact"), "--method exact")):
        r = run("fit", path, "-f", f, *args)
        assert r.exit_code == 2 and words in r.stderr and "Traceback" not in r.output


def test_cli_file_fit_shows_no_internal_names(cbpp: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "cbpp.csv"
    cbpp.assign(period=cbpp["period"].astype(int)).to_csv(path, index=False)
    r = run("fit", path, "-f", CBIND, "--ml", "--draws", "100", "--chains", "2")
    assert r.exit_code == 0, r.output
    assert "pw_" not in r.stdout and CBIND in r.stdout and "family=binomial" in r.stdout
    assert "period is an integer column with 4 distinct values" in r.stdout
    r = run("fit", path, "-f", CBIND, "--reml")
    assert r.exit_code == 2 and "--reml applies to the gaussian family" in r.stderr
    rng = np.random.default_rng(1)
    bern = pd.DataFrame({"g": np.repeat(list("abcdef"), 20), "x": rng.normal(size=120),
                         "y": (rng.random(120) < 0.4).astype(int)})
    bpath = tmp_path / "bern.csv"
    bern.to_csv(bpath, index=False)
    r = run("fit", bpath, "-f", "y ~ x + (1 | g)", "--family", "bernoulli", "--ml", "--draws", "100", "--chains", "2")
    assert r.exit_code == 0, r.output
    assert "family=bernoulli" in r.stdout and "pw_" not in r.stdout and "merged" not in r.stdout


def test_caret_is_r_power_and_crossing() -> None:
    """R's ^ means what formulae's ** does: a power inside I(...), crossing up to an order outside."""
    from poolwise.formula import parse_formula

    caret = parse_formula("y ~ (a + b)^2 + I(x^2) + (1 | g)")
    stars = parse_formula("y ~ (a + b)**2 + I(x**2) + (1 | g)")
    assert caret == stars
    assert caret.common == "(a + b)**2 + I(x**2)"
    with pytest.raises(FormulaError):
        parse_formula("y ~ x ^ + (1 | g)")
