"""Diagnostics that speak (issue 13, item 8).

1. The sampler's own R-hat and ESS (NumPy, inside the independence MH) are ArviZ's.
2. The independence MH notices a chain that sticks and falls back before returning it: on a
   target whose proposal misses a wide component, and on a small slopes model whose exact-path
   chain stuck (one point repeated for 77 of 250 draws, R-hat 1.11, bulk ESS 25 before the
   fix); after the fallback the chains pass the convergence rule and the posterior means agree
   with an importance-sampling reference within Monte Carlo error.
3. A fit that fails the rule (R-hat > 1.01 or bulk / tail ESS < 100 per chain) says so in
   notes(), in the summary's flag column and in the CLI; one that passes does not.
4. Separation of a bernoulli outcome is found from the data and noted whatever the method;
   method='empirical' (no prior on the coefficients) refuses it; under unpooled, groups whose
   outcomes are all 0 are named.
"""

from __future__ import annotations

from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy import special
from typer.testing import CliRunner

import poolwise as pw
from poolwise.cli import app
from poolwise.errors import SpecError
from poolwise.families import separation
from poolwise.fit import DIAGNOSTIC_GROUP_VALUES, ESS_PER_CHAIN, RHAT_MAX, Fit
from poolwise.infer import BlockDraws, Draws, collapsed, imh
from poolwise.reduce import bound_block_stats
from poolwise.spec import ModelSpec

HYPER = ["sigma", "sd(Intercept|g)", "sd(x|g)", "cor(Intercept,x|g)"]


def _rule_ok(idata: az.InferenceData, names: list[str], chains: int) -> None:
    s = az.summary(idata, var_names=names, kind="diagnostics", round_to="none")
    assert (s["r_hat"] <= RHAT_MAX).all(), s
    assert (s[["ess_bulk", "ess_tail"]] >= ESS_PER_CHAIN * chains).all().all(), s


# -- 1. the sampler's diagnostics ---------------------------------------------------------------

def test_chain_diagnostics_equal_arviz() -> None:
    rng = np.random.default_rng(1)
    walk = rng.normal(size=(4, 300)).cumsum(axis=1) * 0.1 + rng.normal(size=(4, 300))
    stuck = walk.copy()
    stuck[1, 50:150] = stuck[1, 50]
    heavy = rng.standard_t(2, size=(3, 101))
    for x in (walk, stuck, heavy):
        r, bulk, tail = imh.chain_diagnostics(x)
        assert r == pytest.approx(float(az.rhat(x)), rel=1e-10)
        assert bulk == pytest.approx(float(az.ess(x, method="bulk")), rel=1e-8)
        assert tail == pytest.approx(float(az.ess(x, method="tail")), rel=1e-8)


# -- 2. the independence MH falls back before returning a stuck chain ---------------------------

class _WideMixture:
    """0.9·N(0, I₂) + 0.1·N(0, 10²I₂): the Laplace proposal at the mode sees only the narrow part."""

    dim = 2
    W = 10.0

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        r = np.sum(np.atleast_2d(theta) ** 2, axis=1)
        return np.logaddexp(np.log(0.9) - 0.5 * r, np.log(0.1) - 0.5 * r / self.W**2 - 2.0 * np.log(self.W))

    def center(self) -> np.ndarray:
        return np.full(2, 0.3)


def test_imh_retries_a_proposal_that_misses_a_wide_component() -> None:
    res = imh._imh(_WideMixture(), 4, 1000, np.random.default_rng(3))
    assert not isinstance(res, str)
    assert "stuck" in res.info["imh_retry"]  # the first proposal's chains failed the rule, and it said so
    x = res.theta[..., 0]
    idata = az.from_dict(posterior={"x": x, "x2": x**2})
    _rule_ok(idata, ["x", "x2"], 4)
    # E x = 0, E x² = 0.9 + 0.1·100 = 10.9, within 4 Monte Carlo standard errors
    mcse = az.mcse(idata)
    assert abs(float(x.mean())) < 4 * float(mcse["x"])
    assert abs(float((x**2).mean()) - 10.9) < 4 * float(mcse["x2"])


def _stuck_data() -> pd.DataFrame:
    """5 groups of 4 rows, heavy-tailed noise: the posterior of log sd(x|g) has a long left tail."""
    rng = np.random.default_rng(75)
    J, n = int(rng.integers(3, 7)), int(rng.integers(3, 8))
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=g.size)
    tau = rng.choice([0.0, 0.1, 1.0])
    y = 1 + 0.5 * x + tau * rng.normal(size=J)[g] + tau * rng.normal(size=J)[g] * x + rng.standard_t(2, size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})


def _reference_means(f: pw.Fit, n: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means of (σ, s₀, s₁, ρ) and their standard errors by self-normalized importance
    sampling from a wide t₃ around the mode, on the exact collapsed log density (independent of
    the Markov chains)."""
    b = f.bound
    blk = b.blocks[0]
    target = collapsed._HyperTarget(
        bound_block_stats(b), np.array([b.priors[c].mean_sd()[0] for c in b.coef_names]),
        np.array([b.priors[c].mean_sd()[1] for c in b.coef_names]), sigma_prior=b.priors["sigma"],
        sd_priors=[b.priors[s] for s in blk.sd_names], lkj_eta=float(b.priors[f"cor({blk.factor})"].args[0]),
        Lam_fixed=None, correlated=True)
    mode, _, H, _ = imh._newton_mode(lambda t: -target(t), target.center())
    assert H is not None
    chol = np.linalg.cholesky(9.0 * np.linalg.inv(H))
    rng = np.random.default_rng(12345)
    th = imh._t_draws(rng, mode, chol, n, df=3.0)
    lw = target(th) - imh._t_logpdf(th, mode, chol, df=3.0)
    w = np.exp(lw - lw.max())
    w /= w.sum()
    assert 1.0 / np.sum(w**2) > 0.05 * n  # the reference itself is sound
    sigma, sd, L, _, _ = target.unpack(th)
    assert sd is not None and L is not None
    q = np.c_[sigma, sd, L[:, 1, 0]]
    mean = w @ q
    se = np.sqrt(np.sum((w[:, None] * (q - mean)) ** 2, axis=0))
    return mean, se


def test_stuck_exact_chain_falls_back_and_matches_the_reference() -> None:
    f = pw.fit("y ~ x + (1 + x | g)", _stuck_data(), method="exact", draws=250, seed=75)
    _rule_ok(f.idata, HYPER, 4)
    assert not any(n.startswith("Not converged") for n in f.notes())
    ref, se = _reference_means(f)
    mcse = az.mcse(f.idata, var_names=HYPER)
    for k, name in enumerate(HYPER):
        got = float(f.idata.posterior[name].mean())
        assert abs(got - ref[k]) < 4.0 * np.hypot(float(mcse[name]), se[k]), (name, got, ref[k])


# -- 3. a fit that fails the rule says so ---------------------------------------------------------

@pytest.fixture(scope="module")
def schools_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("schools") / "schools.csv"
    pw.datasets.eight_schools().to_csv(path, index=False)
    return path


FORMULA = "y | se(sigma) ~ 1 + (1 | school)"


def test_short_run_says_so_in_notes_summary_and_cli(schools_csv: Path) -> None:
    f = pw.fit(FORMULA, pw.datasets.eight_schools(), draws=20, seed=1)
    notes = [n for n in f.notes() if n.startswith("Not converged")]
    assert len(notes) == 1
    assert f"ESS < {ESS_PER_CHAIN * 4}" in notes[0]
    s = f.summary()
    assert "flag" in s.columns and s.attrs["notes"] == f.notes()
    diag = az.summary(f.idata, kind="diagnostics", round_to="none")
    bad = (diag["r_hat"] > RHAT_MAX) | (diag[["ess_bulk", "ess_tail"]].min(axis=1) < ESS_PER_CHAIN * 4)
    assert bad.any()
    assert ((s.loc[diag.index, "flag"] != "") == bad).all()
    assert f"{int(bad.sum())} of {len(diag)} parameters" in notes[0]
    assert any(f"{name} (R-hat" in notes[0] for name in diag.index[bad])
    out = CliRunner().invoke(app, ["fit", str(schools_csv), "--formula", FORMULA, "--draws", "20", "--seed", "1"],
                             env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "note: Not converged" in out.output
    assert "flag" in out.output and "ESS" in out.output


def test_long_enough_run_has_no_convergence_note() -> None:
    f = pw.fit(FORMULA, pw.datasets.eight_schools(), seed=1)
    assert not any(n.startswith("Not converged") for n in f.notes())
    assert (f.summary()["flag"] == "").all()


def test_recommendation_says_which_fits_have_not_converged() -> None:
    """A comparison built on draws that fail the rule says so in its reasons, fit by fit."""
    short = pw.compare(FORMULA, pw.datasets.eight_schools(), draws=20, seed=1).recommend(max_refits=0, max_seconds=0)
    said = [r for r in short.reasons if "has not converged" in r]
    assert said and all(r.split()[1] in ("pooled", "unpooled", "hierarchical") for r in said)
    long = pw.compare(FORMULA, pw.datasets.eight_schools(), seed=1).recommend()
    assert not any("has not converged" in r for r in long.reasons)


# -- 4. separation of a binary outcome --------------------------------------------------------------

def _binary(separated: bool) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(6), 10)
    x = rng.normal(size=g.size)
    y = (x > 0.2) if separated else (rng.random(g.size) < special.expit(0.5 * x))
    return pd.DataFrame({"y": y.astype(int), "x": x, "g": [f"g{j}" for j in g]})


def _fit_with_draws(df: pd.DataFrame, method: str, pooling: str = "hierarchical") -> Fit:
    """A Fit of the bound data with well-mixed draws of the right shapes for ``method``: the
    separation note depends on the data alone, whatever produced the draws."""
    bound = ModelSpec("y ~ x + (1 | g)", family="bernoulli", pooling=pooling).bind(pw.data.read_table(df))
    rng = np.random.default_rng(0)
    C, D, J = 4, 200, bound.n_groups
    block = BlockDraws(sd=np.abs(rng.normal(1.0, 0.1, (C, D, 1))) if pooling == "hierarchical" else None, corr=None,
                       values=rng.normal(0.0, 1.0, (C, D, J, 1)))
    draws = Draws(beta=rng.normal(0.0, 1.0, (C, D, 2)), sigma=None, tau=None, b=None, blocks=(block,),
                  method=method, info={})
    return Fit(bound, draws)


def test_separation_is_found_from_the_data_for_every_method() -> None:
    sep, mixed = _binary(True), _binary(False)
    for method in ("nuts", "laplace", "empirical"):
        notes = _fit_with_draws(sep, method).notes()
        assert any(n.startswith("Complete separation on x:") and "determined by the prior" in n for n in notes), notes
        assert not any("separation" in n for n in _fit_with_draws(mixed, method).notes())
    # the direction: x (with the intercept) — the boundary 0.2 lies between the classes
    direction, complete = separation(np.c_[np.ones(len(sep)), sep["x"]], sep["y"].to_numpy())
    assert complete and direction[1] == 1.0
    xs = np.sort(sep["x"].to_numpy())
    assert xs[xs <= 0.2].max() <= -direction[0] <= xs[xs > 0.2].min()
    # a column that does not separate is not named, however the linear program weighs it
    z = np.random.default_rng(9).normal(size=(len(sep), 3))
    wide = separation(np.c_[np.ones(len(sep)), sep["x"], z], sep["y"].to_numpy())
    assert wide is not None and wide[1] and np.all(wide[0][2:] == 0.0)
    # quasi-complete: both outcomes at one x value on the boundary
    quasi = separation(np.c_[np.ones(4), [-1.0, 0.0, 0.0, 1.0]], np.array([0.0, 0.0, 1.0, 1.0]))
    assert quasi is not None and not quasi[1]
    # binomial: a row with both successes and failures away from the boundary breaks it
    assert separation(np.c_[np.ones(4), [-1.0, 0.0, 1.0, 2.0]], np.array([0.0, 3.0, 5.0, 4.0]), np.full(4, 5.0)) is None


def test_empirical_refuses_a_separated_outcome_and_notes_all_zero_groups() -> None:
    with pytest.raises(SpecError, match="Complete separation on x") as err:
        pw.fit("y ~ x + (1 | g)", _binary(True), family="bernoulli", method="empirical", draws=50)
    assert err.value.hint and "nuts" in err.value.hint
    df = _binary(False)
    df.loc[df["g"] == "g2", "y"] = 0  # one group all zeros: separated by its own value when unpooled
    f = pw.fit("y ~ x + (1 | g)", df, family="bernoulli", pooling="unpooled", method="empirical", draws=50)
    notes = [n for n in f.notes() if "eparation" in n]
    assert len(notes) == 1 and "Separation by g: 1 of 6 groups (g2)" in notes[0]
    f = pw.fit("y ~ x + (1 | g)", df, family="bernoulli", pooling="hierarchical", method="empirical", draws=50)
    assert not any("eparation" in n for n in f.notes())


def test_many_groups_check_a_bounded_spread_of_group_values() -> None:
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(150), 2)
    df = pd.DataFrame({"y": rng.normal(size=g.size) + rng.normal(size=150)[g], "g": [f"s{j:03d}" for j in g]})
    f = pw.fit("y ~ 1 + (1 | g)", df, draws=20, seed=0)
    d = f.diagnostics()
    assert {"Intercept", "sigma", "sd(Intercept|g)"} <= set(d.index)
    groups = [i for i in d.index if str(i).startswith("1|g[")]
    assert len(groups) == DIAGNOSTIC_GROUP_VALUES and {"1|g[s000]", "1|g[s149]"} <= set(groups)
    assert d.attrs["groups_total"] == 150
    note = next(n for n in f.notes() if n.startswith("Not converged"))
    assert f"{DIAGNOSTIC_GROUP_VALUES} of the 150 group values" in note
    assert (f.summary()["flag"] != "").sum() >= (d["flag"] != "").sum()  # every row of the summary is flagged too
