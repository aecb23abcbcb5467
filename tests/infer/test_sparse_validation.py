"""Statistical validation of the exact path for crossed factors (:mod:`poolwise.infer.sparse`).

* Penicillin (lme4), ``diameter ~ 1 + (1|plate) + (1|sample)``: poolwise's ``method="exact"``
  (independence MH on the collapsed marginal, then β and every group value exactly) against a long
  hand-written non-centred NUTS run of the same model under the same priors
  (``tests/data/make_penicillin_nuts.py``; its summary stored in ``tests/data/penicillin_nuts.json``
  for ``make test``, rerun live under ``make validate``).  Posterior means agree within 4 combined
  Monte Carlo standard errors (a two-sided z-test at 4 SE fails a correct sampler with probability
  6e-5 per quantity, 7e-4 over the 11 compared).  Both are also checked against the posterior
  means by quadrature in closed form (Penicillin is balanced: the marginal likelihood of the
  hyperparameters comes from the ANOVA sums of squares), which needs no sampler at all.
* The exact fit's own convergence check: R-hat ≤ 1.01 and no "Not converged" note.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import arviz as az
import numpy as np
import pytest
from scipy import special

import poolwise as pw

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REFERENCE = ROOT / "tests" / "data" / "penicillin_nuts.json"
Z = 4.0  # |difference| < 4 combined MCSE


def _hand() -> ModuleType:
    """tests/data/make_penicillin_nuts.py, the hand model (imported by path: tests/data is no package)."""
    spec = importlib.util.spec_from_file_location("make_penicillin_nuts", ROOT / "tests" / "data" /
                                                  "make_penicillin_nuts.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


HAND = _hand()


@pytest.fixture(scope="module")
def penicillin() -> Any:
    return HAND.data()


@pytest.fixture(scope="module")
def exact_fit(penicillin: Any) -> pw.Fit:
    return pw.fit(HAND.FORMULA, penicillin, method="exact", seed=3, chains=4, draws=500)


def _ours(fit: pw.Fit) -> dict[str, np.ndarray]:
    """The compared quantities' draws (chain, draw) from a poolwise fit."""
    post = fit.idata.posterior
    out = {}
    for name in HAND.QUANTITIES:
        if "[" in name:
            var, label = name[:-1].split("[")
            out[name] = post[var].sel({post[var].dims[2]: label}).values
        else:
            out[name] = fit.param(name)
    return out


def _compare(ours: dict[str, np.ndarray], ref: dict[str, dict[str, float]]) -> list[str]:
    bad = []
    for name, x in ours.items():
        se = float(np.hypot(float(az.mcse(x)), ref[name]["mcse"]))
        diff = float(x.mean()) - ref[name]["mean"]
        if not abs(diff) < Z * se:
            bad.append(f"{name}: exact {x.mean():.4f}, NUTS {ref[name]['mean']:.4f}, difference {diff:+.4f} = "
                       f"{diff / se:+.1f} combined MCSE")
    return bad


def _half_t_logpdf(s: np.ndarray, df: float, scale: float) -> np.ndarray:
    z = s / scale
    return (np.log(2.0) + special.gammaln((df + 1) / 2) - special.gammaln(df / 2) - 0.5 * np.log(df * np.pi)
            - (df + 1) / 2 * np.log1p(z * z / df) - np.log(scale))


def penicillin_quadrature(df: Any, priors: dict[str, tuple[str, tuple[float, ...]]], n: int = 64
                          ) -> dict[str, float]:
    """Posterior means of the compared quantities by quadrature, in closed form (no poolwise code).

    Penicillin is balanced (24 plates × 6 samples, one row per cell), so V = σ²I + s_p²Z_pZ_p' +
    s_s²Z_sZ_s' + s0²11' (the intercept's prior integrated) has the ANOVA eigenspaces: the grand mean
    (eigenvalue σ² + 6s_p² + 24s_s² + 144s0²), 23 plate contrasts (σ² + 6s_p²), 5 sample contrasts
    (σ² + 24s_s²) and 115 residual dimensions (σ²), with the sums of squares of y in each.  Given
    θ = (σ, s_p, s_s), E[β | y, θ] = m0 + 144 s0²(ȳ − m0)/λ_mean, E[u_j | y, θ] = 6s_p²[(ȳ − m0)/λ_mean +
    (ȳ_j − ȳ)/λ_plate], E[v_k | y, θ] = 24s_s²[(ȳ − m0)/λ_mean + (ȳ_k − ȳ)/λ_sample].  These are
    averaged over p(θ | y) on an n³ grid in log θ (trapezoid rule, which converges fast for this
    smooth, rapidly decaying integrand: 48³ and 64³ agree to 1e-6)."""
    y = df["diameter"].to_numpy(dtype=float)
    plate, sample = df["plate"].astype(str).to_numpy(), df["sample"].astype(str).to_numpy()
    plates, samples = sorted(set(plate)), sorted(set(sample))
    assert len(y) == 144 and len(plates) == 24 and len(samples) == 6 and len(set(zip(plate, sample))) == 144
    ybar = y.mean()
    yp = np.array([y[plate == p].mean() for p in plates])
    ys = np.array([y[sample == s].mean() for s in samples])
    res = y - yp[[plates.index(p) for p in plate]] - ys[[samples.index(s) for s in sample]] + ybar
    (_, (m0, s0)), (_, (rate,)) = priors["Intercept"], priors["sigma"]
    (_, (dfp, scp)), (_, (dfs, scs)) = priors["sd(Intercept|plate)"], priors["sd(Intercept|sample)"]
    grids = [np.linspace(np.log(0.3), np.log(1.0), n), np.linspace(np.log(0.1), np.log(5.0), n),
             np.linspace(np.log(0.1), np.log(300.0), n)]
    ls, lp, lss = np.meshgrid(*grids, indexing="ij")
    s2, p2, q2 = np.exp(2 * ls), np.exp(2 * lp), np.exp(2 * lss)
    lam_mean, lam_p, lam_s = s2 + 6 * p2 + 24 * q2 + 144 * s0**2, s2 + 6 * p2, s2 + 24 * q2
    ss_mean, ss_p, ss_s = 144 * (ybar - m0) ** 2, 6 * np.sum((yp - ybar) ** 2), 24 * np.sum((ys - ybar) ** 2)
    loglik = -0.5 * (np.log(lam_mean) + ss_mean / lam_mean + 23 * np.log(lam_p) + ss_p / lam_p
                     + 5 * np.log(lam_s) + ss_s / lam_s + 115 * np.log(s2) + float(res @ res) / s2)
    logprior = (np.log(rate) - rate * np.exp(ls) + ls + _half_t_logpdf(np.exp(lp), dfp, scp) + lp
                + _half_t_logpdf(np.exp(lss), dfs, scs) + lss)  # + log-scale Jacobians
    lw = loglik + logprior
    w = np.exp(lw - lw.max())
    for axis in range(3):  # the grid reaches far enough: no mass at its faces
        assert np.moveaxis(w, axis, 0)[[0, -1]].max() < 1e-6
    w /= w.sum()
    shrink = (ybar - m0) / lam_mean
    out = {"Intercept": m0 + 144 * s0**2 * shrink, "sigma": np.exp(ls), "sd(Intercept|plate)": np.exp(lp),
           "sd(Intercept|sample)": np.exp(lss)}
    for p in HAND.PLATES:
        out[f"1|plate[{p}]"] = 6 * p2 * (shrink + (yp[plates.index(p)] - ybar) / lam_p)
    for s in HAND.SAMPLES:
        out[f"1|sample[{s}]"] = 24 * q2 * (shrink + (ys[samples.index(s)] - ybar) / lam_s)
    return {k: float(np.sum(w * v)) for k, v in out.items()}


def _vs_quadrature(ours: dict[str, np.ndarray], want: dict[str, float]) -> list[str]:
    bad = []
    for name, x in ours.items():
        se = float(az.mcse(x))
        if not abs(x.mean() - want[name]) < Z * se:
            z = (x.mean() - want[name]) / se
            bad.append(f"{name}: exact {x.mean():.4f}, quadrature {want[name]:.4f} ({z:+.1f} MCSE)")
    return bad


def test_quadrature_converged(penicillin: Any) -> None:
    pri = HAND.priors(penicillin)
    a, b = penicillin_quadrature(penicillin, pri, 48), penicillin_quadrature(penicillin, pri, 64)
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k


def test_penicillin_exact_matches_quadrature(penicillin: Any, exact_fit: pw.Fit) -> None:
    """Every compared posterior mean within 4 MCSE of the exact fit of the quadrature's."""
    want = penicillin_quadrature(penicillin, HAND.priors(penicillin))
    ours = _ours(exact_fit)
    for name, x in ours.items():  # the check has power
        assert Z * float(az.mcse(x)) < 0.2 * x.std(), name
    assert _vs_quadrature(ours, want) == []


def test_stored_nuts_matches_quadrature(penicillin: Any) -> None:
    """The hand NUTS reference itself agrees with the quadrature (within 4 of its MCSE)."""
    ref = json.loads(REFERENCE.read_text())["quantities"]
    want = penicillin_quadrature(penicillin, HAND.priors(penicillin))
    for name, s in ref.items():
        assert abs(s["mean"] - want[name]) < Z * s["mcse"], (name, s["mean"], want[name], s["mcse"])


def test_stored_reference_is_this_model(penicillin: Any) -> None:
    """The stored NUTS run used the priors poolwise binds today, and it ran cleanly."""
    ref = json.loads(REFERENCE.read_text())
    assert {k: (d, tuple(a)) for k, (d, a) in ref["priors"].items()} == HAND.priors(penicillin)
    assert ref["model"] == HAND.FORMULA
    assert ref["divergences"] <= 0.001 * ref["chains"] * ref["draws"]
    for name, s in ref["quantities"].items():
        assert s["r_hat"] < 1.01 and s["ess_bulk"] > 1000, name


def test_penicillin_exact_matches_stored_nuts(exact_fit: pw.Fit) -> None:
    ref = json.loads(REFERENCE.read_text())["quantities"]
    ours = _ours(exact_fit)
    assert set(ours) == set(ref)
    for name, x in ours.items():  # the check has power: 4 combined MCSE is a small part of the posterior SD
        assert Z * np.hypot(float(az.mcse(x)), ref[name]["mcse"]) < 0.2 * ref[name]["sd"], name
    assert _compare(ours, ref) == []


def test_the_comparisons_can_fail(penicillin: Any, exact_fit: pw.Fit) -> None:
    """A plate SD 5 % too large (a small bias: 0.3 posterior SD) is flagged by both references."""
    ref = json.loads(REFERENCE.read_text())["quantities"]
    ours = _ours(exact_fit)
    ours["sd(Intercept|plate)"] = ours["sd(Intercept|plate)"] * 1.05
    assert [b.split(":")[0] for b in _compare(ours, ref)] == ["sd(Intercept|plate)"]
    want = penicillin_quadrature(penicillin, HAND.priors(penicillin))
    assert [b.split(":")[0] for b in _vs_quadrature(ours, want)] == ["sd(Intercept|plate)"]


def test_penicillin_exact_reports_converged_chains(exact_fit: pw.Fit) -> None:
    """The independence sampler's chains are judged by the fit's own rule: R-hat ≤ 1.01 for σ, both
    SDs, the intercept and the group values checked, and no "Not converged" note."""
    info = exact_fit.draws.info
    assert info["hyper_sampler"].startswith("independence MH")
    assert info["hyper_rhat"] <= 1.01
    diag = exact_fit.diagnostics()
    for name in ("Intercept", "sigma", "sd(Intercept|plate)", "sd(Intercept|sample)"):
        assert name in diag.index
    assert (diag["r_hat"] <= 1.01).all(), diag[diag["r_hat"] > 1.01]
    assert (diag["ess_bulk"] >= 100 * exact_fit.draws.n_chains).all()
    assert (diag["flag"] == "").all()
    assert not [n for n in exact_fit.notes() if n.startswith("Not converged")]


@pytest.mark.validate
def test_penicillin_exact_matches_live_nuts(penicillin: Any) -> None:
    """The hand model run live (4 × 4000 after 2000 warmup, about 4 min) against a long exact fit."""
    ref = HAND.run()
    assert ref["divergences"] <= 0.001 * ref["chains"] * ref["draws"]
    fit = pw.fit(HAND.FORMULA, penicillin, method="exact", seed=11, chains=4, draws=2000)
    assert _compare(_ours(fit), ref["quantities"]) == []
