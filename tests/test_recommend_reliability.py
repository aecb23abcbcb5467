"""The recommendation states its own reliability (issue 13, item 9).

On sleepstudy (``Reaction ~ Days + (Days | Subject)``, exact path) the hierarchical PSIS-LOO has
observations with Pareto k > 0.7 and, without refits, leave-one-group-out by PSIS has most groups
above 0.7.  These are refitted exactly; each refitted value is checked against a brute-force refit
made here with the public API and a dense multivariate normal (no poolwise helper), within Monte
Carlo error.  With no refit budget the recommendation says what is unreliable.  ΔELPD has one
sign (each pooling's ELPD minus the best's) in the text, the tables and the report; the reasons
carry no empty phrases; log axes and equal group sizes get readable axes.
"""

from __future__ import annotations

import re

import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm

import poolwise as pw

FORMULA = "Reaction ~ Days + (Days | Subject)"
SUBJECT = "Subject"


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    return pw.datasets.sleepstudy()


@pytest.fixture(scope="module")
def cmp(sleep: pd.DataFrame) -> pw.Comparison:
    return pw.compare(FORMULA, sleep, draws=250, seed=0)


def _lme_and_mcse(lp: np.ndarray) -> tuple[float, float]:
    """log mean exp of per-draw log densities (chain, draw) and its Monte Carlo SE (delta method:
    SE(mean w) / mean w, with w = exp(lp - max) and ArviZ's ESS of w)."""
    w = np.exp(lp - lp.max())
    ess = float(az.ess(w)) if w.shape[0] > 1 else w.size
    return float(logsumexp(lp) - np.log(lp.size)), float(w.std() / np.sqrt(ess) / w.mean())


def _brute_refit(f: pw.Fit, df: pd.DataFrame, keep: np.ndarray, seed: int) -> pw.Fit:
    """The same model (the full data's priors) fitted by the public API to the kept rows."""
    spec = f.spec.replace(priors=dict(f.bound.priors))
    return pw.fit(spec, df[keep].reset_index(drop=True), method="exact", seed=seed, chains=4, draws=250)


def test_high_k_observations_are_refitted_exactly(cmp: pw.Comparison, sleep: pd.DataFrame) -> None:
    t = cmp.loo()
    hier = cmp.hierarchical
    k = t.attrs["pareto_k"]["hierarchical"]
    high = np.flatnonzero(k > 0.7)
    assert high.size >= 1  # sleepstudy has some (3 in the issue)
    assert int(t.loc["hierarchical", "n_refits"]) == high.size
    assert int(t.loc["hierarchical", "n_bad_k"]) == 0 and t.attrs["bad"]["hierarchical"] == []
    pointwise = t.attrs["pointwise"]["hierarchical"]
    for i in high[:2]:
        keep = np.ones(len(sleep), dtype=bool)
        keep[i] = False
        rf = _brute_refit(hier, sleep, keep, seed=77 + int(i))
        label = sleep[SUBJECT].iloc[i]
        days = float(sleep["Days"].iloc[i])
        post = rf.idata.posterior
        mean = (post["Intercept"] + post["Days"] * days + post["1|Subject"].sel(Subject=label)
                + post["Days|Subject"].sel(Subject=label) * days).values
        lp = norm.logpdf(float(sleep["Reaction"].iloc[i]), mean, post["sigma"].values)
        ref, se = _lme_and_mcse(lp)
        # two independent estimates of the same quantity: 4 SE of their difference
        assert pointwise[i] == pytest.approx(ref, abs=4 * np.sqrt(2) * se), (i, pointwise[i], ref, se)
    # differences and their SEs are recomputed from the refitted pointwise values
    best = str(t.index[0])
    for m in t.index:
        diff = t.attrs["pointwise"][m] - t.attrs["pointwise"][best]
        assert t.loc[m, "elpd_diff"] == pytest.approx(diff.sum())
        assert t.loc[m, "dse"] == pytest.approx(np.sqrt(diff.size * diff.var()))
        assert t.loc[m, "elpd_loo"] == pytest.approx(t.attrs["pointwise"][m].sum())


def test_groups_with_slopes_are_refitted_exactly(cmp: pw.Comparison, sleep: pd.DataFrame) -> None:
    t = cmp.logo()
    assert (t["n_bad_k"] == 0).all() and (t["n_refits"] == 18).all()
    hier = cmp.hierarchical
    pointwise = t.attrs["pointwise"]["hierarchical"]
    for label in ("308", "335"):
        keep = (sleep[SUBJECT] != label).to_numpy()
        rf = _brute_refit(hier, sleep, keep, seed=5)
        held = sleep[~keep]
        X = np.column_stack([np.ones(len(held)), held["Days"].to_numpy(dtype=float)])
        y = held["Reaction"].to_numpy(dtype=float)
        beta = np.stack([rf.param("Intercept"), rf.param("Days")], axis=-1)
        s0, s1 = rf.param("sd(Intercept|Subject)"), rf.param("sd(Days|Subject)")
        r = rf.param("cor(Intercept,Days|Subject)")
        sigma = rf.param("sigma")
        lp = np.empty(sigma.shape)
        for c, d in np.ndindex(sigma.shape):
            Sig = np.array([[s0[c, d] ** 2, r[c, d] * s0[c, d] * s1[c, d]],
                            [r[c, d] * s0[c, d] * s1[c, d], s1[c, d] ** 2]])
            V = sigma[c, d] ** 2 * np.eye(len(y)) + X @ Sig @ X.T  # a new subject: Z = X here
            lp[c, d] = multivariate_normal(X @ beta[c, d], V).logpdf(y)
        ref, se = _lme_and_mcse(lp)
        assert pointwise[label] == pytest.approx(ref, abs=4 * np.sqrt(2) * se), (label, pointwise[label], ref, se)


def test_monte_carlo_new_group_agrees_with_the_exact_density(cmp: pw.Comparison) -> None:
    """The non-Gaussian families integrate a new group's value by Monte Carlo: on a Gaussian
    model the same code must give the closed form, within its own Monte Carlo error."""
    from poolwise.compare import _heldout_logpdf, _refit

    f = cmp.hierarchical
    g = f.bound.blocks[0].group
    keep = g != 3
    rf = _refit(f, keep, seed=1, chains=2, draws=100)
    rows = np.flatnonzero(~keep)
    exact = _heldout_logpdf(rf, f.bound, rows)
    runs = np.array([_heldout_logpdf(rf, f.bound, rows, seed=s, n_mc=2000, monte_carlo=True) for s in range(4)])
    target = logsumexp(exact) - np.log(exact.size)
    est = logsumexp(runs, axis=1) - np.log(exact.size)
    # the spread of 4 independent MC runs gives the MC SE of one
    assert abs(est.mean() - target) < 4 * est.std(ddof=1) / 2 + 1e-3, (est, target)
    # taken a few rows at a time (memory O(draws × chunk)): the same numbers
    np.testing.assert_allclose(_heldout_logpdf(rf, f.bound, rows, chunk=3), exact, rtol=1e-10)
    np.testing.assert_allclose(_heldout_logpdf(rf, f.bound, rows, seed=0, n_mc=64, monte_carlo=True, chunk=3),
                               _heldout_logpdf(rf, f.bound, rows, seed=0, n_mc=64, monte_carlo=True), rtol=1e-10)


def _delta_pairs(text: str, label: str) -> dict[str, float]:
    line = next(r for r in text.splitlines() if label in r and "ΔELPD" in r)
    return {m: float(v.replace("−", "-")) for m, v in re.findall(r"(pooled|unpooled|hierarchical) ([-−]?[\d.]+) ±", line)}


def test_unreliable_values_are_named_when_the_budget_runs_out(cmp: pw.Comparison) -> None:
    full = str(cmp.recommend())
    assert "unreliable" not in full
    assert "refitted exactly" in full
    rec = cmp.recommend(max_refits=0, max_seconds=0)
    text = str(rec)
    loo = cmp.loo(max_refits=0, max_seconds=0)
    logo = cmp.logo(max_refits=0, max_seconds=0)
    n_obs = int(loo.loc["hierarchical", "n_bad_k"])
    n_groups = int(logo.loc["hierarchical", "n_bad_k"])
    assert n_obs >= 1 and n_groups >= 1 and (loo["n_refits"] == 0).all()
    assert re.search(rf"PSIS-LOO: .*ELPD of hierarchical is unreliable for {n_obs} observations? \(rows? \d+", text)
    assert re.search(rf"Leave-one-group-out: .*ELPD of hierarchical is unreliable for {n_groups} groups? ", text)
    worst = logo.attrs["bad"]["hierarchical"][0]
    assert f"({worst}," in text or f"({worst};" in text  # the worst group named
    assert "after 0 refits" in text


def test_text_and_tables_use_one_sign(cmp: pw.Comparison, tmp_path) -> None:
    rec = cmp.recommend()
    text = str(rec)
    for label, col, t in (("PSIS-LOO", "d_loo", cmp.loo()), ("leave-one-group-out", "d_logo", cmp.logo())):
        said = _delta_pairs(text, label)
        assert set(said) == set(t.index[1:])
        for m, v in said.items():
            assert v == pytest.approx(rec.table.loc[m, col], abs=0.051)  # the text rounds to 0.1
            assert v == pytest.approx(t.loc[m, "elpd_diff"], abs=0.051)
            assert v < 0
        assert (t["elpd_diff"] <= 0).all() and t["elpd_diff"].iloc[0] == 0
    # the report's evidence table: the same numbers, the same sign
    html = cmp.report(tmp_path / "r.html")
    page = open(html, encoding="utf-8").read()
    evidence = page[page.index('id="recommendation"'):page.index("</section>", page.index('id="recommendation"'))]
    head = re.findall(r'<th scope="col"[^>]*>([^<]*)</th>', evidence)
    assert "ΔELPD loo" in head and "ΔELPD logo" in head
    for m in ("pooled", "unpooled", "hierarchical"):
        row = re.search(rf'<th scope="row">{m}</th>(.*?)</tr>', evidence)
        assert row is not None
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", row.group(1))
        for name in ("ΔELPD loo", "ΔELPD logo"):
            v = float(cells[head.index(name) - 1].replace("−", "-"))
            col = "d_loo" if name.endswith("loo") else "d_logo"
            assert v == pytest.approx(rec.table.loc[m, col], rel=1e-2, abs=1e-2)
            assert v <= 0


def test_reasons_carry_no_empty_phrases(cmp: pw.Comparison) -> None:
    text = str(cmp.recommend())
    assert not re.search(r"range from (\S+) to \1\b", text)
    assert re.search(r"λ_j = [\d.]+ for every group", text)  # sleepstudy: every subject has 10 days
    assert not re.search(r"\b0 of \d+ groups", text)
    from poolwise.plots.checks import divergence_lines

    fits = {"pooled": {"divergences": 0, "divergences_text": "0 of 1000 transitions diverged"},
            "unpooled": {"divergences": 3, "divergences_text": "3 of 1000 transitions diverged"},
            "hierarchical": {"divergences": 0, "divergences_text": "0 of 1000 transitions diverged"}}
    assert divergence_lines(fits) == ["unpooled: 3 of 1000 transitions diverged"]
    why = {m: {"divergences": None, "divergences_text": "none possible: exact draws"} for m in fits}
    assert divergence_lines(why) == ["divergences (pooled, unpooled, hierarchical): none possible: exact draws"]


def _labels(fig, axis: str = "x", which: int = 0) -> list[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    ax = fig.axes[which]
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    ticks = ax.xaxis.get_major_ticks() if axis == "x" else ax.yaxis.get_major_ticks()
    return [t.label1.get_text() for t in ticks if t.label1.get_visible() and t.label1.get_text()
            and lo <= t.get_loc() <= hi]


def test_log_axes_are_labelled() -> None:
    from poolwise import plots

    rng = np.random.default_rng(1)
    n = np.array([2, 3, 5, 8, 12, 20, 30, 40])
    g = np.repeat(np.arange(n.size), n)
    df = pd.DataFrame({"y": rng.normal(size=g.size) + rng.normal(size=n.size)[g], "g": [f"g{k}" for k in g]})
    c = pw.compare("y ~ 1 + (1 | g)", df, draws=100, chains=2)
    for fig in (plots.plot_pooling_factors(c), plots.plot_shrinkage(c)):
        assert fig.axes[0].get_xscale() == "log"
        labels = _labels(fig)
        assert len(labels) >= 3, labels
        assert all(re.fullmatch(r"\d+(\.\d+)?", s) for s in labels), labels  # plain numbers: 2, 5, 10 …
        assert all(not s.endswith(".0") for s in labels), labels
    schools = pw.datasets.eight_schools()
    path = pw.pooling_path("y | se(sigma) ~ 1 + (1 | school)", schools,
                           priors={"Intercept": "normal(0, 5)", "sd(Intercept|school)": "half_cauchy(5)"})
    fig = plots.plot_pooling_path(path)
    assert fig.axes[1].get_xscale() == "log"
    labels = _labels(fig, which=1)  # the τ axis, shared by both panels, labelled below
    assert len(labels) >= 3 and all(re.fullmatch(r"[\d.]+(e[+-]\d+)?", s) for s in labels), labels


def test_equal_group_sizes_get_one_position_per_group(cmp: pw.Comparison) -> None:
    from poolwise import plots

    d = plots.shrinkage_data(cmp)
    assert d["categorical"] and np.array_equal(d["x"], np.arange(18))
    fig = plots.plot_shrinkage(cmp)
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"
    assert _labels(fig) == d["groups"]  # the subjects, not sizes 9.85 … 10.15
    assert "every group has 10 rows" in ax.get_xlabel()


def test_non_gaussian_groups_are_refitted_up_to_the_budget() -> None:
    """A binomial model by the Laplace path: PSIS over groups, the worst groups refitted (budget
    2), a new group's value integrated by Monte Carlo.  Reference: the public fit without the
    group and Gauss-Hermite quadrature over the new group's value, per draw."""
    from numpy.polynomial.hermite_e import hermegauss
    from scipy.stats import binom

    from poolwise.compare import logo

    rng = np.random.default_rng(3)
    J = 8
    n = rng.integers(3, 7, size=J)
    g = np.repeat(np.arange(J), n)
    trials = rng.integers(5, 15, size=g.size)
    y = rng.binomial(trials, 1 / (1 + np.exp(-(-0.5 + rng.normal(0, 0.8, size=J)[g]))))
    df = pd.DataFrame({"y": y, "n": trials, "g": [f"g{k}" for k in g]})
    f = pw.fit("y | trials(n) ~ 1 + (1 | g)", df, family="binomial", method="laplace", draws=250, seed=0)
    res = logo(f, max_refits=2)
    k = res["pareto_k"]
    high = k[k > 0.7].sort_values(ascending=False)
    assert len(high) >= 3  # this data set has several
    assert res["n_refits"] == 2 and list(k.index[res["refitted"]]) == sorted(high.index[:2])
    assert res["n_bad_k"] == len(high) - 2 and res["bad"] == list(high.index[2:])
    label = high.index[0]
    keep = (df["g"] != label).to_numpy()
    spec = f.spec.replace(priors=dict(f.bound.priors))
    rf = pw.fit(spec, df[keep].reset_index(drop=True), method="laplace", seed=11, draws=250)
    held = df[~keep]
    x, w = hermegauss(60)
    w = w / w.sum()
    beta, tau = rf.param("Intercept")[..., None], rf.param("sd(Intercept|g)")[..., None]
    logl = np.zeros(beta.shape[:2] + (x.size,))  # log p(y_j | β, b = τ x_k) per draw and node
    for yi, ni in zip(held["y"], held["n"]):
        logl += binom.logpmf(yi, ni, 1 / (1 + np.exp(-(beta + tau * x))))
    lp = logsumexp(logl, b=w, axis=-1)  # log E_b[L] per draw
    ref, se = _lme_and_mcse(lp)
    # the inner Monte Carlo (256 values of b per draw): its variance, from the quadrature
    L = np.exp(logl - lp.max())
    inner = (L**2 @ w - (L @ w) ** 2).ravel()
    se_inner = float(np.sqrt(inner.sum() / (inner.size**2 * 256)) / (L @ w).mean())
    assert res["pointwise"][label] == pytest.approx(ref, abs=4 * np.sqrt(2 * se**2 + se_inner**2)), (
        res["pointwise"][label], ref, se, se_inner)
