"""Several grouping factors reduced inside DuckDB and Spark: the sparse statistics of one query.

A crossed design (subjects × items) with unbalanced and partly empty cells, a varying slope, an
offset and known standard errors is reduced by one ``GROUPING SETS`` query per source.  The
reference is :func:`poolwise.reduce.sparse_stats` on the same rows in memory (NumPy's bincounts,
independent of any SQL): every per-level and per-pair statistic must equal it to float round-off
(sums of the same products in another order, 1e-10 relative), and so must what the fits compute
from them — the REML criterion (1e-10), the log-likelihood at a fixed point (1e-10), and with the
same seed the exact posterior's draws.  The REML estimates agree to the optimizer's resolution
(see ``_same_reml``).  The rows never leave the engine: the bound spec holds no row arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from _spark import spark_session
from test_engine_literals import HOSTILE

import poolwise as pw
from poolwise import data as D
from poolwise import source as S
from poolwise.errors import DataError
from poolwise.infer.sparse import Factorizer, draw, loglik
from poolwise.query import bind_data, bind_source
from poolwise.reduce import SparseStats, bound_sparse_stats
from poolwise.spec import BoundSpec, ModelSpec

FORMULA = "y | se(se) ~ x + offset(log(e)) + (1 | s) + (1 + x | item)"


def _crossed(seed: int = 11, subjects: list[str] | None = None, items: list[Any] | None = None) -> pd.DataFrame:
    """Subjects × items, about a third of the cells empty, 1 to 4 rows in the others."""
    rng = np.random.default_rng(seed)
    subjects = subjects or [f"s{i:02d}" for i in range(12)]
    items = items if items is not None else [int(v) for v in np.arange(-3, 5) * 7]
    A, B = len(subjects), len(items)
    cells = [(a, b) for a in range(A) for b in range(B) if rng.random() > 0.35]
    a, b = np.array([c for c in cells for _ in range(rng.integers(1, 5))]).T
    n = a.size
    x = rng.normal(size=n)
    e = rng.uniform(0.5, 2.0, n)
    se = rng.uniform(0.3, 0.8, n)
    u = rng.normal(0.0, 0.8, A)
    L = np.linalg.cholesky(np.array([[0.7**2, 0.3 * 0.7 * 0.4], [0.3 * 0.7 * 0.4, 0.4**2]]))
    v = rng.normal(size=(B, 2)) @ L.T
    y = 2.0 + 0.5 * x + np.log(e) + u[a] + v[b, 0] + v[b, 1] * x + rng.normal(0.0, se)
    return pd.DataFrame({"y": y, "x": x, "e": e, "se": se, "s": np.array(subjects, dtype=object)[a],
                         "item": np.array(items, dtype=object if isinstance(items[0], str) else None)[b]})


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    df = _crossed()
    d = tmp_path_factory.mktemp("crossed")
    df.to_parquet(d / "rows.parquet")
    df.to_csv(d / "rows.csv", index=False, float_format="%.17g")  # every digit: the same doubles
    return {"df": df, "parquet": str(d / "rows.parquet"), "csv": str(d / "rows.csv")}


def _same_statistics(mem: BoundSpec, got: BoundSpec) -> None:
    """The sparse statistics, names, levels, sizes and priors of two bound specs agree (1e-10)."""
    assert not got.has_rows and got.X.shape[0] == 0 and got.y.size == 0  # no row arrays
    assert got.coef_names == mem.coef_names
    assert [b.levels for b in got.blocks] == [b.levels for b in mem.blocks]
    for gb, mb in zip(got.blocks, mem.blocks):
        np.testing.assert_array_equal(gb.sizes(), mb.sizes())
    assert {k: str(v) for k, v in got.priors.items()} == {k: str(v) for k, v in mem.priors.items()}
    assert got.scale == pytest.approx(mem.scale, rel=1e-10)
    m, g = bound_sparse_stats(mem), bound_sparse_stats(got)
    tol = {"rtol": 1e-10, "atol": 1e-10}
    for name in ("n", "ZtWZ", "ZtWX", "ZtWy"):
        for k, (u, v) in enumerate(zip(getattr(m, name), getattr(g, name))):
            np.testing.assert_allclose(v, u, **tol, err_msg=f"{name}[{k}]")
    for name in ("XtWX", "XtWy", "yWy", "sum_log_w"):
        np.testing.assert_allclose(getattr(g, name), getattr(m, name), **tol, err_msg=name)
    assert g.n_obs == m.n_obs
    assert g.shift.y == pytest.approx(m.shift.y, rel=1e-12)
    assert set(g.pairs) == set(m.pairs) == {(0, 1)}
    for key, pm in m.pairs.items():
        pg = g.pairs[key]
        np.testing.assert_array_equal(pg.a, pm.a)
        np.testing.assert_array_equal(pg.b, pm.b)
        np.testing.assert_array_equal(pg.n, pm.n)
        np.testing.assert_allclose(pg.ZtWZ, pm.ZtWZ, **tol)
    # the marginal likelihood at a fixed point (σ, Λ) from each: the sums enter it as they are
    lams = [np.array([[0.6]]), np.array([[0.5, 0.0], [0.1, 0.3]])]
    a, b = loglik(m, Factorizer(m), 1.0, lams), loglik(g, Factorizer(g), 1.0, lams)
    assert b == pytest.approx(a, rel=1e-10)


def _lams(fit: pw.Fit) -> tuple[float, list[np.ndarray]]:
    """σ and a square root Λ_k of each factor's Σ_k (Σ_k = Λ_kΛ_k') from a REML fit's estimates."""
    est = fit.draws.info["estimates"]
    lams = []
    for blk in fit.bound.blocks:
        sd = np.array([est["sd"][n] for n in blk.sd_names])
        R = np.eye(blk.q)
        for n, (i, j) in zip(blk.cor_names, [(i, j) for j in range(blk.q) for i in range(j)]):
            R[i, j] = R[j, i] = est["corr"][n]
        lams.append(np.linalg.cholesky(R * np.outer(sd, sd)))
    return float(est.get("sigma", 1.0)), lams


def _same_reml(mem: pw.Fit, got: pw.Fit) -> None:
    """REML of the same statistics: the same maximum of the criterion (1e-10 relative), and each
    fit's estimates a maximum of the other's criterion to that resolution.  The estimates
    themselves agree only to the optimizer's resolution: L-BFGS-B with finite-difference
    gradients stops where the criterion, flat to ~1e-16 relative near the optimum, no longer
    changes — 1e-7 relative was seen for the item SD here (1e-6 allowed)."""
    assert got.draws.info["criterion"] == pytest.approx(mem.draws.info["criterion"], rel=1e-10)
    m, g = bound_sparse_stats(mem.bound), bound_sparse_stats(got.bound)
    fm, fg = Factorizer(m), Factorizer(g)
    for (st, fz), fit in (((m, fm), got), ((g, fg), mem)):
        sigma, lams = _lams(fit)
        assert loglik(st, fz, sigma, lams) == pytest.approx(-0.5 * mem.draws.info["criterion"], rel=1e-10)
    a, b = mem.draws.info["estimates"], got.draws.info["estimates"]
    np.testing.assert_allclose(b["beta"], a["beta"], rtol=1e-6, atol=1e-8)
    for name, v in a["sd"].items():
        assert b["sd"][name] == pytest.approx(v, rel=1e-6), name
    for name, v in a.get("corr", {}).items():
        assert b["corr"][name] == pytest.approx(v, abs=1e-6), name


# ----------------------------------------------------------------------------------------------
# DuckDB: Parquet and CSV


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_statistics_equal_the_in_memory_pass(files: dict[str, Any], kind: str) -> None:
    spec = ModelSpec(FORMULA)
    mem = spec.bind(D.read_table(files["df"]))
    got = bind_source(spec, S.scan(files[kind]))
    _same_statistics(mem, got)
    r = got.reduced
    assert r.sql.count("GROUPING SETS") == 1 and r.sql.count("SELECT") == 2  # one aggregation over one scan
    st = r.sparse
    assert isinstance(st, SparseStats) and bound_sparse_stats(got) is st
    assert r.returned == sum(st.J) + st.pairs[(0, 1)].n.size < len(files["df"])  # a row per level and per pair


def test_reml_from_a_file_equals_the_fit_in_memory(files: dict[str, Any]) -> None:
    mem = pw.fit(FORMULA, files["df"], method="empirical", seed=3, draws=50, chains=2)
    got = pw.fit(FORMULA, files["parquet"], method="empirical", seed=3, draws=50, chains=2)
    est = mem.draws.info["estimates"]
    assert all(v > 0.05 for v in est["sd"].values()) and abs(est["corr"]["cor(Intercept,x|item)"]) < 0.99  # interior
    _same_reml(mem, got)
    assert not got.bound.has_rows
    notes = got.notes()
    assert not any("Loaded" in n for n in notes)
    assert any(f"to {got.bound.reduced.returned:,} rows of sufficient statistics" in n and "never loaded" in n
               for n in notes)
    # group estimates and predictions come from the same statistics and draws (given the REML estimates)
    tol = {"rtol": 1e-6, "atol": 1e-6}
    for term in ("1|s", "1|item", "x|item"):
        pd.testing.assert_frame_equal(got.group_estimates(term=term), mem.group_estimates(term=term), **tol)
    new = files["df"].head(4).assign(s=["s00", "new", "s03", "s04"], item=[-21, 7, 999, 28])
    pd.testing.assert_frame_equal(got.predict(new, seed=1), mem.predict(new, seed=1), **tol)


def test_exact_conditional_draws_from_a_file_equal_those_in_memory(files: dict[str, Any]) -> None:
    """β and every group value given (σ, Λ) (the exact path's last step), same seed: the same draws.

    With the statistics, priors and shift equal (above), the hyperparameters' sampler sees the same
    target; the whole exact fit is compared in ``test_exact_fit_from_a_file_equals_the_fit_in_memory``
    (make validate: its sampler evaluates the target some 8000 times)."""
    spec = ModelSpec(FORMULA)
    mem = spec.bind(D.read_table(files["df"]))
    got = bind_source(spec, S.scan(files["csv"]))
    D_ = 40
    sigma = np.ones(D_)
    rng = np.random.default_rng(0)
    lams = [np.abs(rng.normal(0.7, 0.2, (D_, 1, 1))), np.tril(rng.normal(0.3, 0.1, (D_, 2, 2)))]
    m0, Q0 = np.zeros(2), np.diag([0.01, 0.25])
    out = []
    for bound in (mem, got):
        st = bound_sparse_stats(bound)
        beta, b = draw(st, Factorizer(st), st.shift.shift(m0), st.shift.back_matrix(2).T @ Q0 @ st.shift.back_matrix(2),
                       sigma, lams, np.random.default_rng(7))
        out.append((st.shift.unshift(beta), b))
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-8, atol=1e-8)
    for bm, bg in zip(out[0][1], out[1][1]):
        np.testing.assert_allclose(bg, bm, rtol=1e-8, atol=1e-8)


@pytest.mark.validate
def test_exact_fit_from_a_file_equals_the_fit_in_memory(files: dict[str, Any]) -> None:
    """The same statistics and the same seed: the same posterior, up to the round-off of the statistics."""
    mem = pw.fit(FORMULA, files["df"], method="exact", seed=5, draws=200, chains=2)
    got = pw.fit(FORMULA, files["csv"], method="exact", seed=5, draws=200, chains=2)
    assert got.method == mem.method == "exact" and not got.bound.has_rows
    pd.testing.assert_series_equal(got.summary()["mean"], mem.summary()["mean"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.draws.beta, mem.draws.beta, rtol=1e-6, atol=1e-6)


def test_an_offset_of_1e8_in_the_outcome_changes_nothing(files: dict[str, Any], tmp_path: Path) -> None:
    """y + 10⁸ from a file: the REML of y (the stored values less 10⁸, exactly: Sterbenz)."""
    df = files["df"].assign(y=files["df"]["y"] + 1e8)
    df.to_parquet(tmp_path / "far.parquet")
    ref = df.assign(y=df["y"] - 1e8)  # what the file holds, less the offset (an exact subtraction)
    assert np.max(np.abs(ref["y"] - files["df"]["y"])) < 1e-7
    mem = pw.fit(FORMULA, ref, method="empirical", seed=3, draws=20, chains=1)
    got = pw.fit(FORMULA, str(tmp_path / "far.parquet"), method="empirical", seed=3, draws=20, chains=1)
    assert got.draws.info["criterion"] == pytest.approx(mem.draws.info["criterion"], rel=1e-10)
    a, b = mem.draws.info["estimates"], got.draws.info["estimates"]
    assert b["beta"][0] - 1e8 == pytest.approx(a["beta"][0], abs=1e-6)  # 1e-6: 1e8's eps is 1.5e-8
    assert b["beta"][1] == pytest.approx(a["beta"][1], rel=1e-6)
    for name, v in a["sd"].items():  # (to the optimizer's resolution, as in _same_reml)
        assert b["sd"][name] == pytest.approx(v, rel=1e-6), name


def test_hostile_level_labels_on_both_factors(tmp_path: Path) -> None:
    """Quotes, backslashes, ``{rows}``, newlines as labels of both factors: compared as the values they are."""
    subjects = HOSTILE[:8]
    items = HOSTILE[8:]
    df = _crossed(seed=4, subjects=subjects, items=items)
    df.to_parquet(tmp_path / "hostile.parquet")
    spec = ModelSpec(FORMULA)
    mem = spec.bind(D.read_table(df))
    got = bind_source(spec, S.scan(str(tmp_path / "hostile.parquet")))
    assert sorted(got.blocks[0].levels) == sorted(subjects) and sorted(got.blocks[1].levels) == sorted(items)
    _same_statistics(mem, got)


def test_nested_factors_from_a_file(tmp_path: Path) -> None:
    """``(1 | region/county)``: the county values include their region's, found from the level pairs."""
    rng = np.random.default_rng(2)
    reg, cty = np.repeat(np.arange(4), 18), np.tile(np.repeat(np.arange(3), 6), 4)
    df = pd.DataFrame({"y": rng.normal(0, 1, 4)[reg] + rng.normal(0, 0.5, (4, 3))[reg, cty] + rng.normal(0, 0.3, 72),
                       "region": [f"r{i}" for i in reg], "county": [f"c{i}" for i in cty]})
    spec = ModelSpec("y ~ 1 + (1 | region/county)")
    mem = pw.fit(spec.formula, df, method="empirical", seed=1, draws=50, chains=1)
    df.to_parquet(tmp_path / "nested.parquet")
    got = pw.fit(spec.formula, str(tmp_path / "nested.parquet"), method="empirical", seed=1, draws=50, chains=1)
    assert not got.bound.has_rows and [b.factor for b in got.bound.blocks] == ["region", "region:county"]
    assert got.draws.info["criterion"] == pytest.approx(mem.draws.info["criterion"], rel=1e-10)
    pd.testing.assert_frame_equal(got.group_estimates(term="1|region:county"),
                                  mem.group_estimates(term="1|region:county"), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["text", "integer"])
def test_a_missing_label_of_the_second_factor_is_named(files: dict[str, Any], tmp_path: Path, kind: str) -> None:
    df = files["df"].copy()
    if kind == "integer":
        df["item"] = pd.array(df["item"], dtype="Int64")  # a NULL integer key must not read as 0
        df.loc[[5, 9], "item"] = pd.NA
        factor = "item"
    else:
        df.loc[[5, 9], "s"] = None
        factor = "s"
    df.to_parquet(tmp_path / "null.parquet")
    with pytest.raises(DataError, match=rf"Grouping column '{factor}' has 2 missing labels \(rows 5, 9\)"):
        pw.fit(FORMULA, str(tmp_path / "null.parquet"), method="empirical", draws=10, chains=1)


def test_several_factors_are_reduced_not_loaded(files: dict[str, Any]) -> None:
    spec = ModelSpec("y ~ x + (1 | s) + (1 | item)")
    for method in ("exact", "empirical"):
        bound, note = bind_data(spec, files["parquet"], method=method)
        assert note is None and not bound.has_rows and bound.reduced.sparse is not None
    bound, note = bind_data(spec, files["parquet"], method="nuts")  # NUTS works on the rows
    assert bound.has_rows and note is not None and "Loaded" in note


# ----------------------------------------------------------------------------------------------
# Spark (one session for the module's Spark tests)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    yield from spark_session()


@pytest.mark.xdist_group("spark")
@pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
def test_spark_statistics_equal_the_in_memory_pass(files: dict[str, Any], spark: Any) -> None:
    spec = ModelSpec(FORMULA)
    mem = spec.bind(D.read_table(files["df"]))
    for data in (spark.createDataFrame(files["df"]), spark.read.parquet(files["parquet"])):
        src = S.scan(data)
        assert src.engine == "spark"
        got = bind_source(spec, src)
        assert got.reduced.engine == "spark" and "GROUPING SETS" in got.reduced.sql
        _same_statistics(mem, got)
    # a NULL integer key of the second factor, through Spark's arrays
    df = files["df"].assign(item=pd.array(files["df"]["item"], dtype="Int64"))
    df.loc[[5, 9], "item"] = pd.NA
    with pytest.raises(DataError, match=r"Grouping column 'item' has 2 missing labels"):
        bind_source(spec, S.scan(spark.createDataFrame(df)))
    assert math.isfinite(mem.scale)
