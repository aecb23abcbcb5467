"""Issue 13, item 7: inputs at the limits give a fit or a PoolwiseError, never a traceback or an
unbounded allocation.

* Every group of one row is valid input (README): the exact path must give the posterior of
  the full model, checked against brute-force quadrature of p(σ, τ | y) over a grid with β and
  every b_j integrated out by the multivariate normal density of y (scipy, none of poolwise's
  algebra); REML and marginal maximum likelihood cannot separate σ from τ there and refuse with
  lme4's rule (more groups than rows needs a prior: use the exact path or NUTS).
* A constant outcome, the memory the stored draws would take and designs too wide to build are
  refused up front with the option, column or term at fault.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from _spark import spark_session
from scipy import stats

import poolwise as pw
from poolwise.errors import DataError, PoolwiseError


def _one_row_frame(J: int = 12, seed: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"g": [f"g{j:02d}" for j in range(J)], "y": rng.normal(0, 1, J) + rng.normal(0, 1, J)})


def _quadrature(y: np.ndarray, priors: dict, tau_fixed: float | None) -> dict[str, float]:
    """Posterior means of σ, τ and the intercept of y_j ~ N(β + b_j, σ²), b_j ~ N(0, τ²), one row
    per group, on a fine (σ, τ) grid: y ~ N(m0·1, (σ² + τ²) I + s0² 11') with β ~ N(m0, s0²)."""
    m0, s0 = priors["Intercept"].args
    rate = priors["sigma"].args[0]
    n = y.size
    sig = np.linspace(1e-4, 12.0 / rate, 1201)
    # τ's half-t(3) prior has a heavy tail: the grid reaches 40 of its scales
    top = 40.0 * priors["sd(Intercept|g)"].args[1] if tau_fixed is None else 0.0
    taus = np.linspace(1e-4, top, 2001) if tau_fixed is None else np.array([tau_fixed])
    S, T = np.meshgrid(sig, taus, indexing="ij")
    v = S**2 + T**2  # (σ² + τ²): y − m0 has covariance v I + s0² 11'
    r = y - m0
    rr, sr = float(r @ r), float(r.sum())
    # Sherman–Morrison: (vI + s0²11')⁻¹ = I/v − s0²11'/(v(v + n s0²)); det = v^(n−1)(v + n s0²)
    quad = rr / v - s0**2 * sr**2 / (v * (v + n * s0**2))
    loglik = -0.5 * (quad + (n - 1) * np.log(v) + np.log(v + n * s0**2))
    logp = loglik + stats.expon(scale=1 / rate).logpdf(S)
    if tau_fixed is None:
        df, sc = priors["sd(Intercept|g)"].args
        logp = logp + stats.t(df, scale=sc).logpdf(T)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    # E[β | σ, τ, y]: the Gaussian conjugate update with n observations of variance v
    post_prec = 1 / s0**2 + n / v
    beta_mean = (m0 / s0**2 + y.sum() / v) / post_prec
    return {"sigma": float((w * S).sum()), "tau": float((w * T).sum()), "Intercept": float((w * beta_mean).sum())}


@pytest.mark.parametrize("pooling", ["hierarchical", "unpooled"])
def test_every_group_of_one_row_exact_matches_quadrature(pooling: str) -> None:
    df = _one_row_frame()
    f = pw.fit("y ~ 1 + (1 | g)", df, pooling=pooling, draws=2000, chains=4, seed=3)
    tau_fixed = None if pooling == "hierarchical" else f.bound.tau
    ref = _quadrature(df["y"].to_numpy(), f.bound.priors, tau_fixed)
    s = f.summary()
    names = ["Intercept", "sigma"] + (["sd(Intercept|g)"] if pooling == "hierarchical" else [])
    for name in names:
        key = "tau" if name.startswith("sd(") else name
        got, mcse = float(f.param(name).mean()), float(s.loc[name, "mcse_mean"])
        # 4 Monte Carlo standard errors, plus the grid's own error (≈1e-3 on a 0.01 step)
        assert abs(got - ref[key]) < 4 * mcse + 2e-3, (name, got, ref[key], mcse)


@pytest.mark.parametrize("pooling", ["hierarchical", "unpooled"])
def test_every_group_of_one_row_empirical_refuses_like_lme4(pooling: str, tmp_path) -> None:
    df = _one_row_frame()
    path = tmp_path / "one.csv"
    df.to_csv(path, index=False)
    for data in (df, str(path)):
        with pytest.raises(DataError, match="one row") as err:
            pw.fit("y ~ 1 + (1 | g)", data, pooling=pooling, method="empirical")
        assert err.value.column == "g" and err.value.option == "method" and "method='exact'" in str(err.value)
    # pooled: no group values to confuse with sigma, the REML estimate is the sample SD
    f = pw.fit("y ~ 1 + (1 | g)", df, pooling="pooled", method="empirical")
    assert f.param("sigma").mean() == pytest.approx(df["y"].std(ddof=1), rel=1e-6)


def test_every_group_of_one_row_compare_and_cli(tmp_path) -> None:
    from typer.testing import CliRunner

    from poolwise.cli import app

    df = _one_row_frame()
    c = pw.compare("y ~ 1 + (1 | g)", df, draws=300, chains=2)
    assert len(c.table()) == len(df)
    path = tmp_path / "one.csv"
    df.to_csv(path, index=False)
    res = CliRunner().invoke(app, ["fit", str(path), "-f", "y ~ 1 + (1 | g)", "--draws", "200", "--chains", "2"])
    assert res.exit_code == 0, res.output
    assert "sigma" in res.output


@pytest.mark.parametrize("outcome", ["mixed", "all zero"])
def test_pooled_laplace_matches_quadrature(outcome: str) -> None:
    """Pooled (Λ = 0) under method='laplace' raised a singular-matrix error; without group terms
    the Laplace posterior is the exact posterior of the intercept: check it by 1-D quadrature.
    An outcome 0 on every row is valid input there (a proper posterior under the prior)."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 12) if outcome == "mixed" else np.zeros(12, dtype=int)
    df = pd.DataFrame({"g": [f"g{j % 12}" for j in range(12)], "y": y})
    f = pw.fit("y ~ 1 + (1 | g)", df, family="bernoulli", pooling="pooled", method="laplace", draws=2000,
               chains=4, seed=1)
    m0, s0 = f.bound.priors["Intercept"].args
    b = np.linspace(m0 - 10 * s0, m0 + 10 * s0, 20001)
    k, n = int(df["y"].sum()), len(df)
    logp = k * b - n * np.logaddexp(0, b) + stats.norm(m0, s0).logpdf(b)
    w = np.exp(logp - logp.max())
    ref = float((w * b).sum() / w.sum())
    got, mcse = float(f.param("Intercept").mean()), float(f.summary().loc["Intercept", "mcse_mean"])
    assert abs(got - ref) < 4 * mcse + 1e-3, (got, ref, mcse)


def _const_frame() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"g": [f"g{j % 6}" for j in range(36)], "x": rng.normal(size=36)})
    return df.assign(yc=3.0, y0=0, y1=1, n=3, s=0.5)


@pytest.mark.parametrize("method", ["exact", "empirical", "nuts"])
@pytest.mark.parametrize("pooling", ["hierarchical", "pooled", "unpooled"])
def test_constant_gaussian_outcome_is_a_data_error(method: str, pooling: str, tmp_path) -> None:
    df = _const_frame()
    path = tmp_path / "const.csv"
    df.to_csv(path, index=False)
    for data in (df, str(path)):
        for family in ("gaussian", "student_t"):
            if family == "student_t" and method != "nuts":
                continue
            with pytest.raises(DataError, match="constant") as err:
                pw.fit("yc ~ x + (1 | g)", data, family=family, pooling=pooling, method=method, draws=50, warmup=50,
                       chains=1)
            assert err.value.column == "yc" and err.value.hint


def test_constant_outcome_with_known_se_fits() -> None:
    """With known standard errors there is no sigma: a constant outcome is data (all estimates 3)."""
    f = pw.fit("yc | se(s) ~ 1 + (1 | g)", _const_frame(), draws=500, chains=2)
    assert abs(float(f.param("Intercept").mean()) - 3.0) < 0.2


@pytest.mark.parametrize("family, formula", [("poisson", "y0 ~ 1 + (1 | g)"), ("bernoulli", "y0 ~ 1 + (1 | g)"),
                                             ("bernoulli", "y1 ~ 1 + (1 | g)"),
                                             ("binomial", "n | trials(n) ~ 1 + (1 | g)")])
def test_outcome_at_the_edge_of_its_support(family: str, formula: str) -> None:
    """Counts all 0 or every trial a success: no maximum likelihood (empirical refuses, naming
    the column); the Laplace posterior is proper and fits, its intercept far out on the side of
    the data."""
    df = _const_frame()
    outcome = formula.split()[0]
    with pytest.raises(DataError, match="maximum-likelihood") as err:
        pw.fit(formula, df, family=family, method="empirical")
    assert err.value.column == outcome and "laplace" in str(err.value)
    f = pw.fit(formula, df, family=family, method="laplace", draws=300, chains=2)
    sign = -1.0 if outcome == "y0" else 1.0
    assert sign * float(f.param("Intercept").mean()) > 2.0


def test_constant_outcome_cli_exit_2(tmp_path) -> None:
    from typer.testing import CliRunner

    from poolwise.cli import app

    path = tmp_path / "const.csv"
    _const_frame().to_csv(path, index=False)
    for cmd in ("fit", "compare"):
        res = CliRunner().invoke(app, [cmd, str(path), "-f", "yc ~ x + (1 | g)", "--draws", "50"])
        assert res.exit_code == 2, res.output
        assert "constant" in res.output and "Traceback" not in res.output


# -- the memory of the draws, refused before sampling ---------------------------------------------
def _no_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("sampling started")

    monkeypatch.setattr(sys.modules["poolwise.fit"], "run", fail)


@pytest.mark.parametrize("method", ["exact", "empirical", "nuts"])
def test_huge_draws_refused_before_sampling(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    _no_sampling(monkeypatch)
    df = pw.datasets.drivers(seed=1)
    for chains, draws in ((4, 10**9), (10**7, 1000)):
        t0 = time.perf_counter()
        with pytest.raises(pw.errors.SpecError, match="would not fit in memory") as err:
            pw.fit("reaction ~ night + (1 | driver)", df, method=method, chains=chains, draws=draws)
        assert time.perf_counter() - t0 < 5.0
        assert err.value.option == "draws" and f"{chains:,} chains × {draws:,} draws" in str(err.value)


def test_draws_budget_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 16 GB of memory the budget is 8 GB; NUTS keeps z and u (2 × J numbers) per draw."""
    import sys

    mod = sys.modules["poolwise.fit"]
    monkeypatch.setattr(mod, "physical_memory", lambda: 16 * 10**9)
    rng = np.random.default_rng(0)
    J = 3000
    df = pd.DataFrame({"g": np.repeat(np.arange(J), 2).astype(str), "y": rng.normal(size=2 * J)})
    bound, _ = mod.bind_data(pw.ModelSpec("y ~ 1 + (1 | g)"), df, method="nuts")
    need, per, thinned = mod.draws_memory(bound, "nuts", 4, 10**6)
    # Intercept: p² + 2p = 3; one number per prior (Intercept, sigma, sd(Intercept|g)); 8 statistics;
    # 2 × 3000 group numbers
    assert (per, thinned) == (3 + 3 + 8 + 2 * J, 0) and need == 4 * 10**6 * per * 8
    _no_sampling(monkeypatch)
    with pytest.raises(pw.errors.SpecError, match=r"= 192 GB: .*\(at most 8 GB, 50% of this machine's 16 GB\)"):
        pw.fit("y ~ 1 + (1 | g)", df, method="nuts", draws=10**6)
    # the exact path thins the group values to the group budget: only they would fit
    need, per, thinned = mod.draws_memory(bound, "exact", 4, 10**6)
    assert per == 14 and thinned == mod.GROUP_BUDGET
    assert need < 8 * 10**9 < mod.draws_memory(bound, "exact", 4, 10**8)[0]


def test_huge_draws_cli(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from poolwise.cli import app

    _no_sampling(monkeypatch)

    path = tmp_path / "drivers.csv"
    pw.datasets.drivers(seed=1).to_csv(path, index=False)
    for cmd in ("fit", "compare"):
        for draws in ("1e9", "1000000000"):
            res = CliRunner().invoke(app, [cmd, str(path), "-f", "reaction ~ night + (1 | driver)", "--draws", draws])
            assert res.exit_code == 2, res.output
            assert "draws" in res.output and "Traceback" not in res.output


# -- designs too wide to build, refused from their column count --------------------------------
def _refuse_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make formulae fail at once if asked to build any design (the wide one would take hours)."""
    import formulae

    def refuse(formula: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"formulae was asked to build {formula}")

    monkeypatch.setattr(formulae, "design_matrices", refuse)


def _wide_frame(n: int, levels: int, seed: int = 0) -> pd.DataFrame:
    """Every level of a and b present (a cycles, b is shuffled), 20 groups."""
    rng = np.random.default_rng(seed)
    a = np.arange(n) % levels
    b = rng.permutation(a)
    return pd.DataFrame({"a": [f"a{v}" for v in a], "b": [f"b{v}" for v in b], "x": rng.normal(size=n),
                         "g": [f"g{v}" for v in rng.integers(0, 20, n)], "y": rng.normal(size=n)})


def test_design_columns_counted_before_building() -> None:
    """The count is that of formulae's design, up to the level each full-rank factor drops."""
    from formulae import design_matrices

    from poolwise.spec import design_columns

    df = _wide_frame(60, 4).assign(k=np.arange(60) % 3)
    for rhs in ("a*b", "a:b", "a + x + a:x", "C(k) + poly(x, 2) + b", "0 + a:b"):
        counted = design_columns(rhs, {"a": 4, "b": 4, "k": 3})
        total = sum(n for _, n, _ in counted)
        built = design_matrices(f"y ~ {rhs}", df).common.design_matrix.shape[1]
        n_factors = len({c for _, _, cats in counted for c, _ in cats})
        assert built <= total <= built + 4 * n_factors + 1, (rhs, built, total)


@pytest.mark.parametrize("formula, term, columns", [("y ~ a*b + (1 | g)", "a:b", 3000 * 3000),
                                                    ("y ~ x + a:b + (1 | g)", "a:b", 3000 * 3000)])
def test_wide_interaction_refused_before_building(formula: str, term: str, columns: int, tmp_path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import formulae

    df = _wide_frame(3000, 3000)
    path = tmp_path / "wide.csv"
    df.to_csv(path, index=False)
    _refuse_building(monkeypatch)
    for data in (df, str(path)):
        t0 = time.perf_counter()
        with pytest.raises(pw.errors.FormulaError, match=f"term {term} .* {columns:,} columns") as err:
            pw.fit(formula, data, draws=10, chains=1)
        assert time.perf_counter() - t0 < 10.0
        msg = str(err.value)
        assert "3,000 × 3,000 levels" in msg and " TB" in msg and "(1 | a:b)" in msg


def test_categorical_slope_refused_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    import formulae

    built: list[str] = []
    real = formulae.design_matrices

    def watched(formula: str, data: pd.DataFrame, *args: object, **kwargs: object) -> object:
        built.append(formula)
        return real(formula, data, *args, **kwargs)

    monkeypatch.setattr(formulae, "design_matrices", watched)
    df = _wide_frame(400, 200)
    with pytest.raises(pw.errors.SpecError, match="expands to 200 columns"):
        pw.fit("y ~ 1 + (1 + a | g)", df, draws=10, chains=1)
    assert not [f for f in built if "0 + a" in f]  # the n × 200 slope columns were never built


def test_modest_interaction_still_fits(tmp_path) -> None:
    df = _wide_frame(240, 3)
    df["y"] = df["y"] + (df["a"] == "a1") * 2.0
    path = tmp_path / "small.csv"
    df.to_csv(path, index=False)
    for data in (df, str(path)):
        f = pw.fit("y ~ a*b + (1 | g)", data, draws=200, chains=2)
        assert len(f.bound.coef_names) == 9


def test_wide_interaction_cli_exit_2(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from poolwise.cli import app

    _refuse_building(monkeypatch)

    path = tmp_path / "wide.csv"
    _wide_frame(3000, 3000).to_csv(path, index=False)
    for cmd in ("fit", "compare"):
        res = CliRunner().invoke(app, [cmd, str(path), "-f", "y ~ a*b + (1 | g)", "--draws", "10"])
        assert res.exit_code == 2, res.output
        assert "a:b" in res.output and "Traceback" not in res.output


# -- the same limits with the rows in Spark (bind_source's query path) -----------------------------
@pytest.fixture(scope="module")
def spark():  # type: ignore[no-untyped-def]
    """The tests' local SparkSession (skipped without pyspark or Java)."""
    yield from spark_session()


@pytest.mark.xdist_group("spark")
@pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
def test_limits_on_spark(spark) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match="constant") as err:
        pw.fit("yc ~ x + (1 | g)", spark.createDataFrame(_const_frame()), draws=50, chains=1)
    assert err.value.column == "yc"
    with pytest.raises(pw.errors.FormulaError, match="a:b .* 9,000,000 columns"):
        pw.fit("y ~ a*b + (1 | g)", spark.createDataFrame(_wide_frame(3000, 3000)), draws=10, chains=1)
    df = _one_row_frame()
    f = pw.fit("y ~ 1 + (1 | g)", spark.createDataFrame(df), draws=2000, chains=4, seed=3)
    assert f.bound.reduced.engine == "spark"
    ref = _quadrature(df["y"].to_numpy(), f.bound.priors, None)
    mcse = float(f.summary().loc["sigma", "mcse_mean"])
    assert abs(float(f.param("sigma").mean()) - ref["sigma"]) < 4 * mcse + 2e-3


def test_wide_categorical_binds_in_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 200-level categorical predictor (200 columns, within every budget) is bound quickly: the
    collinearity check is one QR (O(n·p²)), where a least-squares fit per column took O(n·p³) —
    about a minute here; a dependent column after them is still found and named."""
    import time

    from poolwise import data as D
    from poolwise.spec import ModelSpec

    fits: list[int] = []
    real = np.linalg.lstsq

    def counted(*args: object, **kwargs: object) -> object:
        fits.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(np.linalg, "lstsq", counted)

    rng = np.random.default_rng(0)
    n = 3000
    df = pd.DataFrame({"a": [f"a{v:03d}" for v in np.arange(n) % 200], "x": rng.normal(size=n),
                       "g": [f"g{v}" for v in rng.integers(0, 20, n)], "y": rng.normal(size=n)})
    t0 = time.perf_counter()
    b = ModelSpec("y ~ a + x + (1 | g)").bind(D.read_table(df))
    assert b.X.shape == (n, 201) and not fits  # no least-squares fit per column
    assert time.perf_counter() - t0 < 30.0
    with pytest.raises(DataError, match="'x2' is a perfect linear combination of 'x'") as err:
        ModelSpec("y ~ a + x + x2 + (1 | g)").bind(D.read_table(df.assign(x2=2 * df["x"])))
    assert err.value.column == "x2"


def test_wide_interaction_counts_path_names_the_users_formula(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Poisson rows from a file are merged into counts under an internal formula; the refusal
    still names the user's formula and term."""
    _refuse_building(monkeypatch)
    df = _wide_frame(3000, 3000).assign(k=np.random.default_rng(0).poisson(2, 3000))
    path = tmp_path / "widek.csv"
    df.to_csv(path, index=False)
    with pytest.raises(pw.errors.FormulaError, match=r"term a:b of formula k ~ a\*b \+ \(1 \| g\) .* 9,000,000"):
        pw.fit("k ~ a*b + (1 | g)", str(path), family="poisson", method="laplace", draws=10, chains=1)


@pytest.mark.parametrize("method", ["exact", "empirical", "nuts"])
def test_outcome_constant_within_every_group(method: str, tmp_path) -> None:
    """Each group's rows repeat one value: p(y | σ, τ) ∝ σ^−(n − J) as σ → 0 (improper); the
    old sums put sigma at 0.000 ± 0.000.  One row per group of the same values fits."""
    y = np.random.default_rng(8).normal(size=12)
    df = pd.DataFrame({"g": [f"g{j:02d}" for j in range(12)] * 2, "y": list(y) * 2})
    path = tmp_path / "dup.csv"
    df.to_csv(path, index=False)
    for data in (df, str(path)):
        for pooling in ("hierarchical", "unpooled"):
            with pytest.raises(DataError, match="does not vary within any group of 'g'") as err:
                pw.fit("y ~ 1 + (1 | g)", data, method=method, pooling=pooling, draws=200, warmup=200, chains=2)
            assert err.value.column == "y"
    if method != "nuts":
        pw.fit("y ~ 1 + (1 | g)", df.iloc[:12], method="exact", draws=200, chains=2)
        pw.fit("y ~ 1 + (1 | g)", df, method=method, pooling="pooled", draws=200, chains=2)
