"""Sufficient statistics reduced inside Spark (local mode) against the same reduction in DuckDB.

The reference is the DuckDB query over the same rows in Parquet (itself checked against the
in-memory pass in test_query.py): Spark must give the same statistics to float round-off (sums
of the same products in another order), the same coefficient names, group levels, group sizes
and data-scaled priors, so the same fits; bad input must fail with the same error class, column
and rows.  One local SparkSession serves the whole module (it takes most of the module's time to
start); the module is skipped, with the reason, when pyspark or Java is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from _spark import spark_session
import test_bad_input
from test_query import FIELDS, FORMULAS, _frame

import poolwise as pw
from poolwise import data as D
from poolwise import source as S
from poolwise.errors import DataError, FormulaError, PoolwiseError
from poolwise.query import bind_source
from poolwise.reduce import bound_block_stats, reduce
from poolwise.spec import ModelSpec

pytestmark = [pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
              pytest.mark.xdist_group("spark")]  # one session, on one worker, under --dist loadgroup

pytest.importorskip("pyspark", reason="pyspark is not installed (pip install -e '.[test]')")
if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
    pytest.skip("Spark needs Java 17 (no java on PATH and no JAVA_HOME)", allow_module_level=True)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    yield from spark_session()


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory, spark: Any) -> dict[str, Any]:
    df = _frame()
    d = tmp_path_factory.mktemp("spark_rows")
    df.to_parquet(d / "all.parquet")
    df.to_csv(d / "all.csv", index=False)
    # unequal parts, the largest last: Spark packs larger files into earlier partitions
    for i, part in enumerate(np.split(np.arange(len(df)), [200, 500])):
        df.iloc[part].to_parquet(d / f"part{i}.parquet")
    return {"df": df, "parquet": str(d / "all.parquet"), "csv": str(d / "all.csv"), "glob": str(d / "part*.parquet"),
            "frame": spark.createDataFrame(df), "read": spark.read.parquet(str(d / "all.parquet"))}


def _same(duck: Any, other: Any) -> None:
    """Statistics, names, levels, sizes and priors of two bound specs agree (1e-11 relative)."""
    assert other.coef_names == duck.coef_names
    assert other.levels == duck.levels
    np.testing.assert_array_equal(other.group_sizes(), duck.group_sizes())
    assert {k: str(v) for k, v in other.priors.items()} == {k: str(v) for k, v in duck.priors.items()}
    assert other.scale == pytest.approx(duck.scale, rel=1e-11)
    s1, s2 = bound_block_stats(duck), bound_block_stats(other)
    for name in FIELDS:
        np.testing.assert_allclose(np.asarray(getattr(s2, name)), np.asarray(getattr(s1, name)), rtol=1e-11,
                                   atol=1e-9, err_msg=name)
    if duck.reduced.simple is not None:
        r1, r2 = reduce(duck), reduce(other)
        for name in ("a", "sy", "u", "sy2"):
            np.testing.assert_allclose(getattr(r2, name), getattr(r1, name), rtol=1e-11, atol=1e-9, err_msg=name)
    assert other.n_obs == duck.n_obs and other.X.shape[0] == 0  # no rows held


@pytest.mark.parametrize("formula", FORMULAS)
def test_spark_statistics_equal_duckdb(rows: dict[str, Any], formula: str) -> None:
    spec = ModelSpec(formula)
    duck = bind_source(spec, S.scan(rows["parquet"]))
    for what in ("frame", "read"):  # createDataFrame(pandas) and read.parquet
        src = S.scan(rows[what])
        assert src.engine == "spark"
        got = bind_source(spec, src)
        assert got.reduced.engine == "spark" and "GROUP BY" in got.reduced.sql
        _same(duck, got)


@pytest.mark.parametrize(("kind", "formula"), [("glob", FORMULAS[2]), ("csv", FORMULAS[1])])
def test_paths_read_by_spark(rows: dict[str, Any], spark: Any, kind: str, formula: str) -> None:
    spec = ModelSpec(formula)
    _same(bind_source(spec, S.scan(rows[kind])), bind_source(spec, S.scan(rows[kind], engine="spark", spark=spark)))


def test_two_column_factor_and_text_keys_in_the_rows_order(rows: dict[str, Any], spark: Any) -> None:
    """Labels of ``(1 | h:m)`` sort as strings ('a1:x' < 'a:x'), not as the engine orders the key columns."""
    df = rows["df"].assign(h=np.where(rows["df"]["x"] > 0, "a1", "a"), m=np.where(rows["df"]["z"] > 0, "x", "y"))
    spec = ModelSpec("y ~ x + (1 | h:m)")
    mem = spec.bind(D.read_table(df))
    got = bind_source(spec, S.scan(spark.createDataFrame(df)))
    assert got.levels == mem.levels == ["a1:x", "a1:y", "a:x", "a:y"]
    np.testing.assert_array_equal(got.group_sizes(), mem.group_sizes())
    for name in FIELDS:
        np.testing.assert_allclose(np.asarray(getattr(bound_block_stats(got), name)),
                                   np.asarray(getattr(bound_block_stats(mem), name)), rtol=1e-11, atol=1e-9)


def test_kinds_from_spark_types(spark: Any) -> None:
    frame = spark.createDataFrame([], "i int, l bigint, s smallint, d double, f float, m decimal(10,2), t string, "
                                      "b boolean, day date, ts timestamp, v array<int>")
    assert S.scan(frame).kinds == {"i": "number", "l": "number", "s": "number", "d": "number", "f": "number",
                                   "m": "number", "t": "text", "b": "boolean", "day": "other", "ts": "other",
                                   "v": "other"}


@pytest.mark.parametrize("method", ["exact", "empirical"])
def test_fit_of_a_spark_dataframe_equals_the_duckdb_fit(rows: dict[str, Any], spark: Any, method: str) -> None:
    formula = "y ~ x + a + (1 + x | g)" if method == "exact" else "y ~ x + a + (1 | g)"
    a = pw.fit(formula, rows["parquet"], method=method, seed=4, draws=200)
    b = pw.fit(formula, rows["frame"], method=method, seed=4, draws=200)
    assert b.bound.reduced is not None and b.bound.reduced.engine == "spark" and not b.bound.has_rows
    tol = {"rtol": 1e-6, "atol": 1e-6}
    np.testing.assert_allclose(b.draws.beta, a.draws.beta, **tol)
    for va, vb in zip(a.draws.block_draws(), b.draws.block_draws()):
        if va.values is not None:
            np.testing.assert_allclose(vb.values, va.values, **tol)
    pd.testing.assert_frame_equal(b.pooling_factors(), a.pooling_factors(), **tol)
    pd.testing.assert_frame_equal(b.group_estimates(), a.group_estimates(), **tol)
    assert any("reduced inside spark" in n for n in b.notes())


BAD = {c[0]: c for c in test_bad_input.CASES}
BAD_CASES = ["NaN outcome", "inf predictor", "missing group labels", "one group", "non-positive se",
             "log of zero offset", "text outcome"]


@pytest.mark.parametrize("name", BAD_CASES)
def test_bad_input_fails_as_in_duckdb(spark: Any, tmp_path: Path, name: str) -> None:
    """The same error class, column, rows and words as the DuckDB query on the same rows in Parquet."""
    _, formula, df, options, cls, words = BAD[name]
    words = [] if options else words  # ("log of zero offset" is a poisson case there: here gaussian, no rows)
    df.to_parquet(tmp_path / "bad.parquet")
    errors = []
    for data in (os.fspath(tmp_path / "bad.parquet"), spark.createDataFrame(df)):
        with pytest.raises(cls) as info:
            pw.fit(formula, data, draws=20, chains=1)
        errors.append(info.value)
    duck, sp = errors
    assert isinstance(sp, PoolwiseError) and type(sp) is type(duck)
    assert (sp.column, sp.rows) == (duck.column, duck.rows)
    assert str(sp) == str(duck)
    for w in words:
        assert w in str(sp)


def test_bad_rows_are_counted_in_file_order(rows: dict[str, Any], spark: Any, tmp_path: Path) -> None:
    """Across files of unequal size, and in a partitioned DataFrame: the positions DuckDB gives."""
    df = rows["df"].copy()
    bad = [3, 250, 777, 1499]
    df.loc[bad, "x"] = np.nan
    df.loc[[9, 640], "e"] = 0.0
    for i, part in enumerate(np.split(np.arange(len(df)), [200, 500])):
        df.iloc[part].to_parquet(tmp_path / f"p{i}.parquet")
    glob = os.fspath(tmp_path / "p*.parquet")
    for data in (glob, spark.read.parquet(glob), spark.createDataFrame(df).repartition(3, "g").sortWithinPartitions(
            "g")):
        with pytest.raises(DataError) as info:
            pw.fit("y ~ x + (1 | g)", data)
        assert info.value.column == "x"
        if not isinstance(data, str) and data.rdd.getNumPartitions() == 3:  # shuffled: the order collect() gives
            order = [int(i) for i in data.select("x").toPandas()["x"].isna().to_numpy().nonzero()[0]]
            assert info.value.rows == order
        else:
            assert info.value.rows == bad
    with pytest.raises(DataError, match=r"log\(e\) is not finite on 2 rows"):
        pw.fit("y ~ log(e) + (1 | g)", spark.createDataFrame(df.assign(x=0.0)))


def test_cli_fits_with_the_spark_engine(rows: dict[str, Any], spark: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from poolwise.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["fit", rows["parquet"], "-f", "y ~ x + (1 | g)", "--draws", "100",
                                      "--engine", "spark", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "reduced inside spark" in result.output
    pf = pd.read_csv(out / "pooling_factors.csv", index_col=0)
    assert int(pf["n"].sum()) == 1500 and len(pf) == 37


def test_hostile_text_levels_give_the_in_memory_fit(spark: Any, tmp_path: Path) -> None:
    """Levels with backslashes, quotes, newlines, '{rows}', SQL: the estimates of the rows in pandas.

    (Spark SQL reads '\\A' as 'A' and 'C:\\temp' as 'C:<tab>emp': spliced as quoted literals, the
    level '\\A' matched the rows of 'A' and its coefficient flipped sign.)"""
    from test_engine_literals import FIELDS as LIT_FIELDS
    from test_engine_literals import HOSTILE, _rows

    df = _rows(HOSTILE[:8], HOSTILE[8:])
    df.to_parquet(tmp_path / "hostile.parquet")
    f = "y ~ x + c + (1 | g)"
    mem = pw.fit(f, df, method="empirical", draws=50)
    ref = mem.draws.info["estimates"]
    for data in (spark.createDataFrame(df), spark.read.parquet(os.fspath(tmp_path / "hostile.parquet"))):
        got = pw.fit(f, data, method="empirical", draws=50)
        assert got.bound.reduced is not None and got.bound.reduced.engine == "spark"
        assert got.bound.coef_names == mem.bound.coef_names and got.bound.levels == mem.bound.levels
        s1, s2 = bound_block_stats(mem.bound), bound_block_stats(got.bound)
        for name in LIT_FIELDS:
            np.testing.assert_allclose(np.asarray(getattr(s2, name)), np.asarray(getattr(s1, name)), rtol=1e-10,
                                       atol=1e-9, err_msg=name)
        est = got.draws.info["estimates"]
        for key in ("beta", "sd", "sigma"):
            np.testing.assert_allclose(np.asarray(est[key], dtype=float), np.asarray(ref[key], dtype=float),
                                       rtol=1e-7, atol=1e-9, err_msg=key)
    name = "a `b` \"c\"; d"  # a column name with backticks, quotes, spaces: quoted, never spliced
    loaded = S.scan(spark.createDataFrame(df.rename(columns={"c": name}))).load([name, "g"]).frame
    assert loaded[name].tolist() == df["c"].tolist() and loaded["g"].tolist() == df["g"].tolist()


def test_spark_reads_paths_as_the_existence_check_sees_them(spark: Any, tmp_path: Path) -> None:
    """'d[1].csv' is that file (Hadoop would glob it to 'd1.csv'); '**' as in DuckDB; bad files named."""
    for name, rows in {"d[1].csv": [(1.0, "a"), (2.0, "b")], "d1.csv": [(5.0, "a")], "sub/top.csv": [(10.0, "a")],
                       "sub/deep/low.csv": [(20.0, "b")]}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=["y", "g"]).to_csv(tmp_path / name, index=False)
    for pattern, ys in {"d[1].csv": [1.0, 2.0], "sub/**/*.csv": [20.0, 10.0]}.items():
        src = S.scan(os.fspath(tmp_path / pattern), engine="spark", spark=spark)
        assert sorted(src.query("SELECT y FROM {rows}")["y"].tolist()) == sorted(ys), pattern
    (tmp_path / "header.csv").write_text("y,x,g\n")
    (tmp_path / "dup.csv").write_text("y,x,x,g\n1,2,3,a\n")
    for name, words in {"header.csv": "header (y, x, g) but no rows", "dup.csv": "'x' appears more than once"}.items():
        with pytest.raises(DataError, match=words.replace("(", r"\(").replace(")", r"\)")):
            S.scan(os.fspath(tmp_path / name), engine="spark", spark=spark)
    df = _frame().assign(x=lambda d: d["x"].round(3).astype(object))
    df.loc[37, "x"] = "1,5"
    df.to_csv(tmp_path / "cell.csv", index=False)
    with pytest.raises(DataError, match=r"'x' holds numbers but also text \('1,5' in row 37\)"):
        pw.fit("y ~ x + (1 | g)", os.fspath(tmp_path / "cell.csv"), engine="spark", spark=spark)


def test_spark_names_bytes_that_are_not_utf8(spark: Any, tmp_path: Path) -> None:
    """Past DuckDB's sniffing sample Spark decodes a Latin-1 'é' as U+FFFD without a word: named instead."""
    from test_bad_files import latin1_deep

    path = latin1_deep(tmp_path)
    for options in ({"engine": "spark", "spark": spark}, {}):
        for family in ("gaussian", "bernoulli"):
            with pytest.raises(DataError, match=r"not UTF-8 text: byte 0xE9 on line 25002"):
                pw.fit("y ~ x + (1 | g)", path, family=family, draws=20, chains=1, **options)


def test_hostile_formula_never_reaches_spark(rows: dict[str, Any], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13: a formula is data. The check runs before any Spark query or SQL translation."""
    import poolwise.query as Q

    calls: list[object] = []
    monkeypatch.setattr(Q, "sql_columns", lambda *a, **k: calls.append(a))
    monkeypatch.chdir(tmp_path)
    for formula in ("y ~ x + pd.io.common.os.system('id > f') + (1|g)", "y ~ x + np.savetxt('f', x) + (1 | g)"):
        with pytest.raises(FormulaError, match="attribute access"):
            pw.fit(formula, rows["frame"])
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_cbind_and_weights_in_spark_equal_the_in_memory_fits(spark: Any) -> None:
    """cbind(successes, failures) merged into counts and prior weights summed inside Spark."""
    cbpp = pw.datasets.cbpp().assign(period=lambda d: d["period"].astype(int))
    formula = "cbind(incidence, size - incidence) ~ C(period) + (1 | herd)"
    got = pw.fit(formula, spark.createDataFrame(cbpp), method="empirical")
    want = pw.fit(formula, cbpp, method="empirical")
    np.testing.assert_allclose(got.draws.info["estimates"]["beta"], want.draws.info["estimates"]["beta"], rtol=1e-6)
    assert "pw_" not in repr(got) and formula in repr(got)
    sleep = pw.datasets.sleepstudy().assign(w=lambda d: 1.0 + d["Days"] % 3)
    got = pw.fit("Reaction ~ Days + (Days | Subject)", spark.createDataFrame(sleep), weights="w", method="empirical")
    want = pw.fit("Reaction ~ Days + (Days | Subject)", sleep, weights="w", method="empirical")
    assert got.bound.reduced is not None and got.bound.reduced.engine == "spark"
    np.testing.assert_allclose(got.draws.info["estimates"]["sd"], want.draws.info["estimates"]["sd"], rtol=1e-7)
    assert got.draws.info["loglik"] == pytest.approx(want.draws.info["loglik"], rel=1e-10)
    bad = sleep.assign(w=sleep["w"].where(sleep.index != 11, 0.0))
    with pytest.raises(DataError, match=r"'w' must be positive .*row 11"):
        pw.fit("Reaction ~ Days + (1 | Subject)", spark.createDataFrame(bad), weights="w", method="empirical")


def test_two_blocks_on_one_factor_in_spark_equal_the_in_memory_fit(spark: Any) -> None:
    """(1 + x | g) + (0 + z | g): two blocks on g, the pair of a factor with itself, reduced inside
    Spark ((1 | g) + (0 + x | g) is (x || g), in FORMULAS)."""
    mixed = pd.read_csv(Path(__file__).parent / "data" / "same_factor_mixed.csv")
    formula = "y ~ x + z + (1 + x | g) + (0 + z | g)"
    got = pw.fit(formula, spark.createDataFrame(mixed), method="empirical", draws=10, chains=1)
    want = pw.fit(formula, mixed, method="empirical", draws=10, chains=1)
    assert got.bound.reduced is not None and got.bound.reduced.engine == "spark"
    assert float(got.loglik()) == pytest.approx(float(want.loglik()), rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(got.varcorr()["sd_cor"], want.varcorr()["sd_cor"], rtol=1e-6)
