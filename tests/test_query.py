"""Sufficient statistics reduced inside DuckDB (poolwise.query.bind_source) against the in-memory pass.

The reference is independent of the SQL: formulae's design on the rows in pandas and NumPy's
bincount reduction (:func:`poolwise.reduce.block_stats`).  The query must give the same
statistics (to float round-off: both are sums of the same products, in another order), the same
coefficient names, group levels and data-scaled priors, and so the same fits; bad input must fail
with the in-memory path's error class and words, naming the rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import test_bad_input

import poolwise as pw
from poolwise import data as D
from poolwise import source as S
from poolwise.errors import DataError, FormulaError, PoolwiseError, SpecError
from poolwise.query import bind_source
from poolwise.reduce import bound_block_stats, reduce
from poolwise.spec import ModelSpec

FIELDS = ("n", "ZtWZ", "ZtWX", "ZtWy", "XtWX", "XtWy", "yWy", "sum_log_w")


def _frame(n: int = 1500, J: int = 37, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, J, n)
    x = rng.normal(size=n)
    return pd.DataFrame({
        "y": 2.0 + 0.5 * x + rng.normal(0, 0.7, J)[g] + rng.normal(size=n),
        "x": x, "z": rng.uniform(-1, 1, n), "e": rng.uniform(0.5, 3.0, n), "se": rng.uniform(0.5, 2.0, n),
        "a": rng.choice(["p", "q", "r"], n), "b": rng.random(n) > 0.4, "k": rng.integers(1, 4, n),
        "g": [f"g{i:02d}" for i in g], "gn": g * 10 + 3,
    })


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    df = _frame()
    d = tmp_path_factory.mktemp("rows")
    df.to_parquet(d / "all.parquet")
    df.to_csv(d / "all.csv", index=False)
    for i, part in enumerate(np.array_split(np.arange(len(df)), 3)):
        df.iloc[part].to_parquet(d / f"part{i}.parquet")
    return {"df": df, "parquet": str(d / "all.parquet"), "csv": str(d / "all.csv"), "glob": str(d / "part*.parquet"),
            "dir": d}


FORMULAS = [
    "y ~ x + (1 | g)",
    "y ~ x * a + log(e) + I(z**2 - 2 * x) + (1 + x | g)",
    "y ~ a + b + C(k) + offset(log(e)) + (1 | gn)",
    "y | se(se) ~ x + sqrt(e) + (1 | g)",
    "y ~ 0 + a + a:z + (x || g)",
    "y ~ 1 + (1 + z | g)",
]


def _same(b1: object, b2: object) -> None:
    s1, s2 = bound_block_stats(b1), bound_block_stats(b2)  # type: ignore[arg-type]
    for name in FIELDS:
        np.testing.assert_allclose(np.asarray(getattr(s2, name)), np.asarray(getattr(s1, name)), rtol=1e-11,
                                   atol=1e-9, err_msg=name)


@pytest.mark.parametrize("formula", FORMULAS)
def test_query_statistics_equal_the_rows(files: dict[str, object], formula: str) -> None:
    spec = ModelSpec(formula)
    mem = spec.bind(D.read_table(files["df"]))  # type: ignore[arg-type]
    sql = bind_source(spec, S.scan(files["parquet"]))
    assert sql.coef_names == mem.coef_names
    assert sql.levels == mem.levels
    np.testing.assert_array_equal(sql.group_sizes(), mem.group_sizes())
    assert {k: str(v) for k, v in sql.priors.items()} == {k: str(v) for k, v in mem.priors.items()}
    assert sql.scale == pytest.approx(mem.scale, rel=1e-10)
    _same(mem, sql)
    if spec.simple:
        r1, r2 = reduce(mem), reduce(sql)
        for name in ("a", "sy", "u", "sy2"):
            np.testing.assert_allclose(getattr(r2, name), getattr(r1, name), rtol=1e-11, atol=1e-9)
    assert sql.y.size == 0 and sql.X.shape[0] == 0 and sql.blocks[0].group.size == 0  # no rows held
    assert sql.n_obs == mem.n_obs


@pytest.mark.parametrize("key", ["int", "float"])
def test_numeric_keys_in_any_engine_order(tmp_path: Path, key: str) -> None:
    """A single numeric key is grouped without ORDER BY and put in order in NumPy: with 20,000
    groups DuckDB's parallel hash aggregation returns them unsorted, yet the levels, their order
    and every group's statistics must be the in-memory pass's."""
    rng = np.random.default_rng(3)
    n, J = 60_000, 20_000
    ids = rng.permutation(np.arange(-J // 2, J // 2) * 7)[rng.integers(0, J, n)]
    df = pd.DataFrame({"y": rng.normal(size=n), "x": rng.normal(size=n),
                       "g": ids if key == "int" else ids / 4.0})
    path = tmp_path / "rows.parquet"
    df.to_parquet(path)
    spec = ModelSpec("y ~ x + (1 | g)")
    mem = spec.bind(D.read_table(df))
    sql = bind_source(spec, S.scan(str(path)))
    assert sql.levels == mem.levels
    np.testing.assert_array_equal(sql.group_sizes(), mem.group_sizes())
    _same(mem, sql)
    r1, r2 = reduce(mem), reduce(sql)
    for name in ("a", "sy", "u", "sy2"):
        np.testing.assert_allclose(getattr(r2, name), getattr(r1, name), rtol=1e-11, atol=1e-9)


@pytest.mark.parametrize("kind", ["csv", "glob", "relation"])
def test_csv_globs_and_relations(files: dict[str, object], kind: str) -> None:
    spec = ModelSpec(FORMULAS[1])
    mem = spec.bind(D.read_table(files["df"]))  # type: ignore[arg-type]
    if kind == "relation":
        con = duckdb.connect()
        data: object = con.sql(f"SELECT * FROM read_parquet('{files['parquet']}') WHERE y > -1e9")
    else:
        data = files[kind]
    _same(mem, bind_source(spec, S.scan(data)))


@pytest.mark.parametrize("method", ["exact", "empirical"])
@pytest.mark.parametrize("formula", ["y ~ x + a + (1 | g)", "y ~ x + (1 + x | g)"])
def test_fit_from_a_file_equals_fit_from_the_frame(files: dict[str, object], method: str, formula: str) -> None:
    df = files["df"]
    a = pw.fit(formula, df, method=method, seed=4, draws=250)  # type: ignore[arg-type]
    b = pw.fit(formula, files["parquet"], method=method, seed=4, draws=250)  # type: ignore[arg-type]
    assert not b.bound.has_rows and a.bound.has_rows
    # the same statistics up to round-off; REML's optimizer then stops within ~1e-8 of the same optimum
    tol = {"rtol": 1e-6, "atol": 1e-6}
    np.testing.assert_allclose(b.draws.beta, a.draws.beta, **tol)
    for va, vb in zip(a.draws.block_draws(), b.draws.block_draws()):
        if va.values is not None:
            np.testing.assert_allclose(vb.values, va.values, **tol)
    pd.testing.assert_frame_equal(b.pooling_factors(), a.pooling_factors(), **tol)
    pd.testing.assert_frame_equal(b.group_estimates(), a.group_estimates(), **tol)
    new = df.head(5).assign(g=["g00", "g01", "new", "g02", "g03"])  # type: ignore[attr-defined]
    pd.testing.assert_frame_equal(b.predict(new, seed=1), a.predict(new, seed=1), **tol)
    assert any("never loaded" in n for n in b.notes())
    assert "obs" not in b.idata.posterior.coords and "observed_data" not in b.idata.groups()
    with pytest.raises(SpecError, match="never loaded them"):
        b.log_likelihood()
    with pytest.raises(SpecError, match="needs the rows"):
        b.prior_predictive(draws=5)


@pytest.mark.parametrize(("formula", "family", "method", "why"), [
    ("y ~ x + (1 | g) + (1 | a)", "gaussian", "nuts", "method='nuts' works on the rows"),
    ("k ~ x + (1 | g)", "negative_binomial", "nuts", "the negative_binomial family is fitted from the rows"),
    ("y ~ x + (1 | g)", "gaussian", "nuts", "method='nuts' works on the rows"),
])
def test_models_the_query_cannot_reduce_load_their_columns(files: dict[str, object], formula: str, family: str,
                                                           method: str, why: str) -> None:
    from poolwise.fit import bind_data

    spec = ModelSpec(formula, family=family)
    bound, note = bind_data(spec, files["parquet"], method=method)
    assert bound.has_rows and bound.n_obs == 1500
    assert note is not None and f"Loaded 1,500 rows of {len(spec.variables)} columns" in note and why in note
    mem = spec.bind(D.read_table(files["df"]))  # type: ignore[arg-type]
    np.testing.assert_array_equal(bound.X, mem.X)


def test_transforms_outside_sql_are_named(files: dict[str, object]) -> None:
    with pytest.raises(FormulaError, match=r"scale\(x\).*needs statistics of the whole column"):
        pw.fit("y ~ scale(x) + (1 | g)", files["parquet"])  # type: ignore[arg-type]
    with pytest.raises(FormulaError, match=r"'sin\(\)'.* not one of the functions"):
        pw.fit("y ~ sin(x) + (1 | g)", files["parquet"])  # type: ignore[arg-type]


GAUSSIAN_CASES = [c for c in test_bad_input.CASES
                  if not c[3] and c[4] is DataError]  # data faults of gaussian models with default options


@pytest.mark.parametrize("case", GAUSSIAN_CASES, ids=[c[0] for c in GAUSSIAN_CASES])
def test_bad_input_in_the_query_fails_like_the_rows(case: tuple, tmp_path: Path) -> None:
    """Each data fault of the shared table, read from Parquet: the same error class and words (rows too)."""
    _, formula, df, _, cls, words = case
    path = tmp_path / "bad.parquet"
    df.to_parquet(path)
    with pytest.raises(cls) as info:
        pw.fit(formula, os.fspath(path), draws=20, chains=1)
    err = info.value
    assert isinstance(err, PoolwiseError)
    text = str(err)
    for w in words:
        assert w in text, f"{w!r} not in {text!r}"
    assert len(text.splitlines()) <= 2


def test_blank_labels_and_nan_in_log(tmp_path: Path) -> None:
    df = _frame(n=60, J=5)
    df.loc[[4, 9], "g"] = "  "
    df.to_parquet(tmp_path / "blank.parquet")
    with pytest.raises(DataError, match=r"'g' has .*missing label.*rows 4, 9"):
        pw.fit("y ~ x + (1 | g)", os.fspath(tmp_path / "blank.parquet"))
    df = _frame(n=60, J=5)
    df.loc[7, "e"] = -1.0
    df.to_parquet(tmp_path / "neg.parquet")
    with pytest.raises(DataError, match=r"log\(e\) is not finite on 1 row"):
        pw.fit("y ~ log(e) + (1 | g)", os.fspath(tmp_path / "neg.parquet"))


def test_cli_fits_a_parquet_glob(files: dict[str, object], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from poolwise.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["fit", str(files["glob"]), "-f", "y ~ x + (1 | g)", "--draws", "100",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "reduced inside duckdb" in result.output
    for name in ("fit.nc", "summary.csv", "pooling_factors.csv"):
        assert (out / name).exists()
    pf = pd.read_csv(out / "pooling_factors.csv", index_col=0)
    assert int(pf["n"].sum()) == 1500 and len(pf) == 37


# ----------------------------------------------------------------------------------------------
# bernoulli, binomial and poisson rows merged into counts per (group, covariate pattern)


def _counts_frame(n: int = 4000, J: int = 12, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, J, n)
    a = rng.choice(["u", "v", "w"], n)
    x = rng.integers(0, 3, n)
    e = rng.choice([1.0, 2.0, 4.0], n)
    eta = -0.3 + 0.4 * x + 0.5 * (a == "v") + rng.normal(0, 0.5, J)[g]
    t = rng.integers(1, 6, n)
    return pd.DataFrame({"y": (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int), "c": rng.poisson(e * np.exp(eta)),
                         "s": rng.binomial(t, 1 / (1 + np.exp(-eta))), "t": t, "x": x, "a": a, "e": e,
                         "g": [f"g{i:02d}" for i in g]})


def _loglik(bound: object, beta: np.ndarray, b: np.ndarray) -> float:
    eta = bound.X @ beta + bound.offset + b[bound.blocks[0].group]  # type: ignore[attr-defined]
    return float(bound.spec.fam.log_likelihood(bound.y, eta, trials=bound.trials,  # type: ignore[attr-defined]
                                               weights=bound.weights).sum())  # type: ignore[attr-defined]


@pytest.mark.parametrize(("formula", "family"), [
    ("y ~ x + a + (1 | g)", "bernoulli"),
    ("s | trials(t) ~ x + a + (1 | g)", "binomial"),
    ("c ~ x + a + offset(log(e)) + (1 | g)", "poisson"),
    ("c ~ C(x) + (1 | g)", "poisson"),
])
def test_merged_counts_have_the_rows_likelihood(tmp_path: Path, formula: str, family: str) -> None:
    """The merged rows' log-likelihood minus the rows' is the same constant at any parameter value."""
    from poolwise.fit import bind_data

    df = _counts_frame()
    df.to_parquet(tmp_path / "c.parquet")
    spec = ModelSpec(formula, family=family)
    rows = spec.bind(D.read_table(df))
    merged, note = bind_data(spec, os.fspath(tmp_path / "c.parquet"), method="nuts")
    assert merged.n_obs < len(df) / 10 and f"{len(df):,} rows merged inside duckdb" in note
    assert merged.coef_names == rows.coef_names and merged.levels == rows.levels
    np.testing.assert_array_equal(merged.group_sizes(), rows.group_sizes())
    assert {k: str(v) for k, v in merged.priors.items()} == {k: str(v) for k, v in rows.priors.items()}
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(4):
        beta = rng.normal(0, 0.5, len(rows.coef_names))
        b = rng.normal(0, 0.7, rows.n_groups)
        gaps.append(_loglik(merged, beta, b) - _loglik(rows, beta, b))
    np.testing.assert_allclose(gaps, gaps[0], rtol=0, atol=1e-8 * len(df))


def test_merged_counts_fit_like_the_rows(tmp_path: Path) -> None:
    df = _counts_frame(n=3000, J=10)
    df.to_parquet(tmp_path / "c.parquet")
    f = "y ~ x + a + (1 | g)"
    a = pw.fit(f, df, family="bernoulli", method="empirical", seed=1, draws=200)
    b = pw.fit(f, os.fspath(tmp_path / "c.parquet"), family="bernoulli", method="empirical", seed=1, draws=200)
    # Laplace's approximation is per group, and a group's merged rows give the same h_j: same optimum
    np.testing.assert_allclose(b.draws.info["estimates"]["beta"], a.draws.info["estimates"]["beta"], atol=2e-4)
    np.testing.assert_allclose(b.draws.info["estimates"]["sd"], a.draws.info["estimates"]["sd"], atol=2e-4)
    assert any("merged inside duckdb" in n for n in b.notes())


@pytest.mark.parametrize(("formula", "family", "value", "words"), [
    ("y ~ x + (1 | g)", "bernoulli", ("y", [5, 9], 2), ["'y'", "0 or 1", "rows 5, 9"]),
    ("c ~ x + (1 | g)", "poisson", ("c", [3], -1), ["'c'", "non-negative", "row 3"]),
    ("s | trials(t) ~ x + (1 | g)", "binomial", ("s", [7], 99), ["'s'", "must not exceed trials", "row 7"]),
    ("y ~ x + (1 | g)", "bernoulli", ("x", [2, 4], np.nan), ["'x'", "2 missing", "rows 2, 4"]),
    ("c ~ x + offset(log(e)) + (1 | g)", "poisson", ("e", [6], 0.0), ["offset", "row 6"]),
])
def test_bad_counts_name_the_rows(tmp_path: Path, formula: str, family: str, value: tuple, words: list[str]) -> None:
    df = _counts_frame(n=200, J=5)
    col, rows, v = value
    if isinstance(v, float) and np.isnan(v):
        df[col] = df[col].astype(float)
    df.loc[rows, col] = v
    df.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError) as info:
        pw.fit(formula, os.fspath(tmp_path / "bad.parquet"), family=family, draws=20, chains=1)
    for w in words:
        assert w in str(info.value), str(info.value)
