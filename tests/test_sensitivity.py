"""Power-scaling prior sensitivity and compare_priors (src/poolwise/sensitivity.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate

import poolwise as pw
from poolwise.errors import SpecError
from poolwise.sensitivity import cjs_distance, lkj_logpdf, log_prior_draws

L2 = math.log(2)


# -- the distance -------------------------------------------------------------------------------
def _hand_cjs(P: list[float], Q: list[float], widths: list[float]) -> float:
    """sqrt((CJS(P||Q) + CJS(Q||P)) / (∫P + ∫Q)) written out term by term."""
    p_int = sum(w * p for w, p in zip(widths, P))
    q_int = sum(w * q for w, q in zip(widths, Q))
    pq = sum(w * p * math.log2(p / (0.5 * p + 0.5 * q)) for w, p, q in zip(widths, P, Q)) + (q_int - p_int) / (2 * L2)
    qp = sum(w * q * math.log2(q / (0.5 * q + 0.5 * p)) for w, p, q in zip(widths, P, Q)) + (p_int - q_int) / (2 * L2)
    return math.sqrt((pq + qp) / (p_int + q_int))


def test_cjs_matches_a_hand_computation() -> None:
    x = np.array([0.0, 1.0, 2.0])
    q = np.array([0.5, 0.25, 0.25])
    # CDFs at the steps 0 and 1 (widths 1, 1): P = (1/3, 2/3), Q = (1/2, 3/4)
    signed = _hand_cjs([1 / 3, 2 / 3], [1 / 2, 3 / 4], [1.0, 1.0])
    # of -x: sorted (-2, -1, 0) with q reversed: P = (1/3, 2/3), Q = (1/4, 1/2)
    mirrored = _hand_cjs([1 / 3, 2 / 3], [1 / 4, 1 / 2], [1.0, 1.0])
    assert cjs_distance(x, None, q, unsigned=False) == pytest.approx(signed, rel=1e-12)
    assert cjs_distance(x, None, q) == pytest.approx(max(signed, mirrored), rel=1e-12)
    # the order of the draws does not matter, nor the scale of the weights
    perm = np.array([2, 0, 1])
    assert cjs_distance(x[perm], np.ones(3)[perm] * 7, q[perm] * 3) == pytest.approx(max(signed, mirrored))
    # unequal widths: x = (0, 1, 3), P = (1/2, 1/2 + 1/4), Q = (1/4, 1/2)
    y = np.array([0.0, 1.0, 3.0])
    got = cjs_distance(y, np.array([0.5, 0.25, 0.25]), np.array([0.25, 0.25, 0.5]), unsigned=False)
    assert got == pytest.approx(_hand_cjs([0.5, 0.75], [0.25, 0.5], [1.0, 2.0]), rel=1e-12)


def test_cjs_of_a_distribution_with_itself_is_zero_and_bounded() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=500)
    w = rng.uniform(size=500)
    assert cjs_distance(x, w, w) == pytest.approx(0.0, abs=1e-12)
    assert cjs_distance(x) == 0.0
    # all mass on opposite ends: the distance is large but at most 1
    far = cjs_distance(np.arange(10.0), np.r_[1.0, np.zeros(9)], np.r_[np.zeros(9), 1.0])
    assert 0.5 < far <= 1.0


def test_lkj_density_integrates_to_one() -> None:
    for eta in (0.5, 1.0, 2.0, 4.0):
        def dens(r: float, eta: float = eta) -> float:
            return float(np.exp(lkj_logpdf(np.array([[1.0, r], [r, 1.0]]), eta)))
        total, _ = integrate.quad(dens, -1, 1)
        assert total == pytest.approx(1.0, abs=1e-6)
    # LKJ(1) in 3-D is uniform on the elliptope, whose volume is π²/2
    assert float(lkj_logpdf(np.eye(3), 1.0)) == pytest.approx(-math.log(math.pi ** 2 / 2), rel=1e-12)


# -- the diagnostic -------------------------------------------------------------------------------
def _small_data(seed: int = 0, J: int = 5, n: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat([f"g{j}" for j in range(J)], n)
    mu = 10 + rng.normal(0, 1, J)
    return pd.DataFrame({"y": np.repeat(mu, n) + rng.normal(0, 1, len(g)), "g": g})


def test_a_conflicting_prior_is_flagged_and_a_weak_one_is_not() -> None:
    df = _small_data()
    conflict = pw.fit("y ~ 1 + (1 | g)", df, pooling="pooled", priors={"Intercept": "normal(-10, 0.5)"},
                      method="exact", draws=1000, seed=1)
    s = pw.sensitivity(conflict)
    assert list(s.columns) == ["kind", "prior", "likelihood", "diagnosis", "pareto_k"]
    assert s.loc["Intercept", "diagnosis"] == "prior-data conflict"
    assert s.loc["Intercept", "prior"] > 0.1 and s.loc["Intercept", "likelihood"] > 0.05
    weak = pw.fit("y ~ 1 + (1 | g)", df, pooling="pooled", priors={"Intercept": "normal(0, 100)"},
                  method="exact", draws=1000, seed=1)
    w = pw.sensitivity(weak)
    assert w.loc["Intercept", "diagnosis"] == "-"
    assert w.loc["Intercept", "prior"] < 0.02
    assert (s["pareto_k"] < 0.7).all() and (w["pareto_k"] < 0.7).all()


def test_hierarchical_fit_rows_and_prior_sensitivity() -> None:
    df = _small_data()
    strong = pw.fit("y ~ 1 + (1 | g)", df, priors={"Intercept": "normal(-10, 0.5)"}, method="exact",
                    draws=1000, seed=1)
    s = pw.sensitivity(strong)
    groups = [f"Intercept[g=g{j}]" for j in range(5)]
    assert list(s.index) == ["Intercept", "sigma", "sd(Intercept|g)"] + groups
    assert (s.loc[groups, "kind"] == "group").all()
    # the group values absorb the conflict, so the likelihood barely moves the population mean:
    # the prior dominates it
    assert s.loc["Intercept", "diagnosis"] != "-"
    assert s.loc["Intercept", "prior"] > 0.05
    weak = pw.sensitivity(pw.fit("y ~ 1 + (1 | g)", df, priors={"Intercept": "normal(0, 100)"}, method="exact",
                                 draws=1000, seed=1))
    assert weak.loc["Intercept", "diagnosis"] == "-"
    assert weak.loc[groups, "diagnosis"].eq("-").all()


def test_log_prior_sums_the_listed_priors() -> None:
    df = _small_data()
    f = pw.fit("y ~ 1 + (1 | g)", df, method="exact", draws=200, seed=0)
    expect = sum(f.bound.priors[k].logpdf(f.param(k)) for k in f.bound.priors)
    np.testing.assert_allclose(log_prior_draws(f), expect)


def test_sensitivity_checks_its_options() -> None:
    f = pw.fit("y ~ 1 + (1 | g)", _small_data(), method="exact", draws=100, seed=0)
    with pytest.raises(SpecError, match="alphas"):
        pw.sensitivity(f, alphas=(1.01, 0.99))
    with pytest.raises(SpecError, match="threshold"):
        pw.sensitivity(f, threshold=0)


# -- several priors -------------------------------------------------------------------------------
def test_compare_priors_side_by_side_and_the_informative_prior_pulls_small_groups() -> None:
    rng = np.random.default_rng(3)
    sizes = [2, 2, 2, 30, 30, 30]
    g = np.repeat([f"g{j}" for j in range(len(sizes))], sizes)
    mu = np.array([12.0, 8.0, 11.0, 9.0, 10.5, 10.0])
    df = pd.DataFrame({"y": np.repeat(mu, sizes) + rng.normal(0, 1, len(g)), "g": g})
    sets = [{"Intercept": "normal(0, 100)"}, {"Intercept": "normal(10, 0.5)", "sd(Intercept|g)": "half_normal(0.5)"}]
    t = pw.compare_priors("y ~ 1 + (1 | g)", df, sets, method="exact", draws=1000, seed=0)
    labels = ["Intercept ~ normal(0, 100)", "Intercept ~ normal(10, 0.5); sd(Intercept|g) ~ half_normal(0.5)"]
    assert t.columns.get_level_values(0).unique().tolist() == labels
    assert t.columns.get_level_values(1).tolist() == ["mean", "lo", "hi"] * 2
    assert list(t.index[:3]) == ["Intercept", "sigma", "sd(Intercept|g)"]
    assert set(t.attrs["priors"]) == set(labels)
    weak, strong = (t[lab]["mean"] for lab in labels)
    small = [f"Intercept[g=g{j}]" for j in range(3)]
    large = [f"Intercept[g=g{j}]" for j in range(3, 6)]
    # the informative prior moves the small groups toward its mean 10, more than the large ones
    pull = (weak - 10).abs() - (strong - 10).abs()
    assert (pull[small] > 0).all()
    assert pull[small].mean() > 2 * pull[large].abs().mean()
    assert strong["sd(Intercept|g)"] < weak["sd(Intercept|g)"]
    width = t.xs("hi", axis=1, level=1) - t.xs("lo", axis=1, level=1)
    assert (width.loc[small, labels[1]] < width.loc[small, labels[0]]).all()
    # custom labels; bad labels are refused
    t2 = pw.compare_priors("y ~ 1 + (1 | g)", df, [{}, sets[1]], labels=["default", "informative"],
                           method="exact", draws=200, seed=0)
    assert t2.columns.get_level_values(0).unique().tolist() == ["default", "informative"]
    with pytest.raises(SpecError, match="labels"):
        pw.compare_priors("y ~ 1 + (1 | g)", df, sets, labels=["a", "a"], method="exact", draws=100)
    with pytest.raises(SpecError):
        pw.compare_priors("y ~ 1 + (1 | g)", df, [], method="exact", draws=100)
