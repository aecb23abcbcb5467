"""Tests for poolwise.data: reading tables and files, column checks, validation, labels."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from poolwise.data import Table, check_columns, group_labels, read_table, validate
from poolwise.errors import DataError


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "x": [0.5, 1.5, 2.5, 3.5, 4.5, 5.5],
            "county": ["b", "a", "b", "c", "a", "b"],
            "se": [1.0, 2.0, 1.0, 0.5, 1.0, 3.0],
            "flag": [True, False, True, True, False, False],
        }
    )


def _raises(match: str | None = None) -> Any:
    return pytest.raises(DataError, match=match)


def _check_error(err: DataError, *words: str, column: str | None = None) -> None:
    """A DataError is also a ValueError, names what it should and carries a hint."""
    assert isinstance(err, DataError)
    assert isinstance(err, ValueError)
    assert err.hint, "every error carries a hint"
    text = str(err)
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"
    if column is not None:
        assert err.column == column


# --------------------------------------------------------------------------------------------
# read_table: in-memory frames
# --------------------------------------------------------------------------------------------


def test_pandas_is_copied_and_user_frame_unchanged() -> None:
    df = _frame()
    before = df.copy(deep=True)
    table = read_table(df)
    assert isinstance(table, Table)
    assert table.source == "pandas"
    assert table.n_rows == 6
    assert table.columns == ["y", "x", "county", "se", "flag"]
    assert table.frame is not df
    table.frame.loc[0, "y"] = 99.0
    validate(table, outcome="y", numeric=["x", "flag"], groups=["county"], positive=["se"])
    group_labels(table, "county")
    pd.testing.assert_frame_equal(df, before)


def test_pandas_columns_selected_in_order() -> None:
    table = read_table(_frame(), columns=["county", "y"])
    assert table.columns == ["county", "y"]


def test_validate_leaves_user_frame_unchanged_on_error() -> None:
    df = _frame()
    df.loc[2, "y"] = np.nan
    before = df.copy(deep=True)
    with _raises():
        validate(read_table(df), outcome="y")
    pd.testing.assert_frame_equal(df, before)


def test_polars_round_trip() -> None:
    pl = pytest.importorskip("polars")
    df = _frame()
    table = read_table(pl.from_pandas(df))
    assert table.source == "polars"
    pd.testing.assert_frame_equal(
        table.frame.reset_index(drop=True), df, check_dtype=False
    )
    sub = read_table(pl.from_pandas(df), columns=["y", "county"])
    assert sub.columns == ["y", "county"]
    with _raises() as info:
        read_table(pl.from_pandas(df), columns=["cnty"])
    _check_error(info.value, "cnty", "county", column="cnty")


def test_arrow_round_trip() -> None:
    pa = pytest.importorskip("pyarrow")
    df = _frame()
    table = read_table(pa.Table.from_pandas(df, preserve_index=False))
    assert table.source == "arrow"
    pd.testing.assert_frame_equal(table.frame, df, check_dtype=False)
    sub = read_table(pa.Table.from_pandas(df, preserve_index=False), columns=["se"])
    assert sub.columns == ["se"]
    with _raises() as info:
        read_table(pa.Table.from_pandas(df), columns=["nope"])
    _check_error(info.value, "nope", column="nope")


def test_unsupported_type() -> None:
    with _raises() as info:
        read_table([1, 2, 3])  # type: ignore[arg-type]
    _check_error(info.value, "list", "pandas", "polars", "pyarrow", "CSV", "Parquet")


def test_duplicated_column_names_refused() -> None:
    df = pd.DataFrame([[1.0, 2.0]], columns=["a", "a"])
    with _raises() as info:
        read_table(df)
    _check_error(info.value, "'a'", "more than once", column="a")


def test_non_string_column_names_become_strings() -> None:
    df = pd.DataFrame({0: [1.0, 2.0], "g": ["a", "b"]})
    table = read_table(df)
    assert table.columns == ["0", "g"]
    assert list(df.columns) == [0, "g"]
    validate(table, outcome="0", groups=["g"])


# --------------------------------------------------------------------------------------------
# read_table: files through DuckDB
# --------------------------------------------------------------------------------------------


def test_csv_round_trip(tmp_path: Path) -> None:
    df = _frame()
    path = tmp_path / "data.csv"
    df.to_csv(path, index=False)
    content = path.read_bytes()
    table = read_table(path)
    assert table.source == str(path)
    pd.testing.assert_frame_equal(table.frame, df, check_dtype=False)
    assert path.read_bytes() == content, "the user's file is never altered"
    assert read_table(str(path), columns=["se", "y"]).columns == ["se", "y"]


def test_tsv_and_gzipped_csv(tmp_path: Path) -> None:
    df = _frame()
    tsv = tmp_path / "data.tsv"
    df.to_csv(tsv, index=False, sep="\t")
    assert read_table(tsv).frame["y"].tolist() == df["y"].tolist()
    gz = tmp_path / "data.csv.gz"
    with gzip.open(gz, "wt") as handle:
        df.to_csv(handle, index=False)
    assert read_table(gz).frame["county"].tolist() == df["county"].tolist()


def test_parquet_round_trip(tmp_path: Path) -> None:
    df = _frame()
    path = tmp_path / "data.parquet"
    df.to_parquet(path, index=False)
    table = read_table(path)
    pd.testing.assert_frame_equal(table.frame, df, check_dtype=False)
    sub = read_table(path, columns=["county", "x"])
    assert sub.columns == ["county", "x"]
    pq = tmp_path / "data.pq"
    df.to_parquet(pq, index=False)
    assert read_table(pq).n_rows == 6


def test_parquet_glob(tmp_path: Path) -> None:
    df = _frame()
    (tmp_path / "parts").mkdir()
    df.iloc[:4].to_parquet(tmp_path / "parts" / "a.parquet", index=False)
    df.iloc[4:].to_parquet(tmp_path / "parts" / "b.parquet", index=False)
    table = read_table(str(tmp_path / "parts" / "*.parquet"), columns=["y"])
    assert table.n_rows == 6
    assert sorted(table.frame["y"].tolist()) == df["y"].tolist()


def test_glob_matching_nothing(tmp_path: Path) -> None:
    with _raises() as info:
        read_table(str(tmp_path / "*.parquet"))
    _check_error(info.value, "No files match", "*.parquet")


def test_quoted_identifiers(tmp_path: Path) -> None:
    df = pd.DataFrame({'my "odd" col': [1.0, 2.0], "select": ["a", "b"]})
    path = tmp_path / "odd.parquet"
    df.to_parquet(path, index=False)
    table = read_table(path, columns=['my "odd" col', "select"])
    assert table.columns == ['my "odd" col', "select"]
    assert table.frame['my "odd" col'].tolist() == [1.0, 2.0]


def test_path_with_quote(tmp_path: Path) -> None:
    path = tmp_path / "it's.csv"
    _frame().to_csv(path, index=False)
    assert read_table(path).n_rows == 6


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    with _raises("does not exist") as info:
        read_table(path)
    _check_error(info.value, f"File '{path}' does not exist.", "Check the path.")


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_text("whatever")
    with _raises() as info:
        read_table(path)
    _check_error(info.value, "data.xlsx", ".csv", ".parquet")


def test_directory_refused(tmp_path: Path) -> None:
    folder = tmp_path / "folder.parquet"
    folder.mkdir()
    with _raises() as info:
        read_table(folder)
    _check_error(info.value, "directory")


def test_malformed_file_wraps_duckdb_error(tmp_path: Path) -> None:
    import duckdb

    path = tmp_path / "broken.parquet"
    path.write_text("this is not a parquet file")
    with _raises("Could not read") as info:
        read_table(path)
    _check_error(info.value, "broken.parquet")
    assert isinstance(info.value.__cause__, duckdb.Error)
    assert "\n" not in info.value.message


def test_missing_column_in_file_checked_from_schema(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    _frame().to_csv(path, index=False)
    with _raises() as info:
        read_table(path, columns=["y", "cnty"])
    err = info.value
    _check_error(err, "Unknown column 'cnty'.", "Did you mean 'county'?", column="cnty")
    # same message as for an in-memory frame
    with _raises() as info2:
        read_table(_frame(), columns=["y", "cnty"])
    assert str(info2.value) == str(err)


# --------------------------------------------------------------------------------------------
# check_columns
# --------------------------------------------------------------------------------------------


def test_check_columns_near_miss_and_context() -> None:
    table = read_table(_frame())
    check_columns(table, ["y", "county"])
    with _raises() as info:
        check_columns(table, ["cnty"], context=" in formula: y ~ (1 | cnty)")
    err = info.value
    assert err.message == "Unknown column 'cnty' in formula: y ~ (1 | cnty)."
    assert err.hint == "Did you mean 'county'? Columns are: y, x, county, se, flag."
    _check_error(err, column="cnty")


def test_check_columns_case_insensitive_near_miss() -> None:
    table = read_table(_frame())
    with _raises() as info:
        check_columns(table, ["COUNTY"])
    assert "Did you mean 'county'?" in str(info.value)


def test_check_columns_no_near_miss_lists_first_20() -> None:
    df = pd.DataFrame({f"col{i:02d}": [1.0] for i in range(30)})
    with _raises() as info:
        check_columns(read_table(df), ["zzz"])
    err = info.value
    assert err.hint is not None
    assert "Did you mean" not in err.hint
    assert "col00" in err.hint and "col19" in err.hint
    assert "col20" not in err.hint
    assert "10 more" in err.hint


# --------------------------------------------------------------------------------------------
# validate, check by check
# --------------------------------------------------------------------------------------------


def test_valid_table_passes_and_single_observation_groups_are_fine() -> None:
    df = pd.DataFrame({"y": [1.0, 2.0, 3.0], "g": ["a", "b", "c"]})
    validate(read_table(df), outcome="y", groups=["g"])


def test_validate_unknown_column() -> None:
    with _raises() as info:
        validate(read_table(_frame()), outcome="y", groups=["cnty"])
    _check_error(info.value, "cnty", "county", column="cnty")


def test_validate_empty_table() -> None:
    df = _frame().iloc[:0]
    with _raises() as info:
        validate(read_table(df), outcome="y", groups=["county"])
    err = info.value
    assert err.message == "The data have no rows."
    assert err.hint == "Pass a table with at least two groups of observations."


def test_validate_text_outcome() -> None:
    df = _frame()
    df["y"] = ["1", "2", "3", "abc", "5", "6"]
    with _raises() as info:
        validate(read_table(df), outcome="y")
    err = info.value
    # the cell to mend: the first that does not read as a number, not the first text ('1')
    _check_error(err, "Column 'y' must be numeric", "text", "'abc'", "row 3", column="y")
    assert err.rows == [3]
    assert err.hint == "Convert it to numbers or pick another column."


def test_validate_numbers_as_strings_in_object_column_are_not_converted() -> None:
    df = _frame()
    df["x"] = pd.Series([0.5, 1.5, "2.5", 3.5, 4.5, 5.5], dtype=object)
    with _raises() as info:
        validate(read_table(df), outcome="y", numeric=["x"])
    err = info.value
    _check_error(err, "Column 'x' must be numeric", "'2.5'", "row 2", column="x")
    assert err.rows == [2]


def test_validate_object_column_of_numbers_is_refused() -> None:
    df = _frame()
    df["x"] = df["x"].astype(object)
    with _raises() as info:
        validate(read_table(df), outcome="y", numeric=["x"])
    _check_error(info.value, "Column 'x' must be numeric", "object", column="x")


def test_validate_bool_and_nullable_numbers_are_numeric() -> None:
    df = _frame()
    df["n"] = pd.array([1, 2, 3, 4, 5, 6], dtype="Int64")
    df["b"] = pd.array([True, False, True, True, False, True], dtype="boolean")
    validate(read_table(df), outcome="flag", numeric=["n", "b", "x"], groups=["county"])


def test_validate_missing_values() -> None:
    df = pd.DataFrame({"log_radon": np.arange(700, dtype=float), "g": ["a", "b"] * 350})
    df.loc[[17, 204, 611], "log_radon"] = np.nan
    with _raises() as info:
        validate(read_table(df), outcome="log_radon", groups=["g"])
    err = info.value
    assert err.message == "Column 'log_radon' has 3 missing values (rows 17, 204, 611)."
    assert err.hint == "Drop or impute them before fitting."
    assert err.rows == [17, 204, 611]
    assert err.column == "log_radon"
    assert str(err) == (
        "Column 'log_radon' has 3 missing values (rows 17, 204, 611). "
        "Drop or impute them before fitting."
    )


def test_validate_missing_none_and_pd_na_in_numeric_and_positive() -> None:
    df = _frame()
    df["n"] = pd.array([1, None, 3, 4, 5, 6], dtype="Int64")
    with _raises() as info:
        validate(read_table(df), outcome="y", numeric=["n"])
    err = info.value
    _check_error(err, "Column 'n' has 1 missing value (row 1)", column="n")
    df = _frame()
    df.loc[4, "se"] = None
    with _raises() as info:
        validate(read_table(df), outcome="y", positive=["se"])
    _check_error(info.value, "Column 'se' has 1 missing value (row 4)", column="se")
    assert info.value.rows == [4]


def test_validate_many_missing_values_shows_first_few() -> None:
    df = _frame()
    df["x"] = np.nan
    with _raises() as info:
        validate(read_table(df), outcome="y", numeric=["x"])
    err = info.value
    _check_error(err, "Column 'x' has 6 missing values", "rows 0, 1, 2, 3, 4", "…")
    assert err.rows == [0, 1, 2, 3, 4, 5]


def test_validate_infinite_values() -> None:
    df = pd.DataFrame({"y": np.zeros(12), "x": np.ones(12), "g": list("ab") * 6})
    df.loc[[4, 9], "x"] = [np.inf, -np.inf]
    with _raises() as info:
        validate(read_table(df), outcome="y", numeric=["x"], groups=["g"])
    err = info.value
    assert err.message == "Column 'x' has 2 infinite values (rows 4, 9)."
    assert err.hint == "Remove or cap them before fitting."
    assert err.rows == [4, 9]
    assert err.column == "x"


def test_validate_missing_checked_before_infinite() -> None:
    df = _frame()
    df.loc[0, "x"] = np.inf
    df.loc[1, "y"] = np.nan
    with _raises("missing"):
        validate(read_table(df), outcome="y", numeric=["x"])


def test_validate_positive() -> None:
    df = _frame()
    df.loc[2, "se"] = 0.0
    with _raises() as info:
        validate(read_table(df), outcome="y", positive=["se"])
    err = info.value
    assert err.message == "Column 's' must be positive but has 1 value <= 0 (row 2).".replace(
        "'s'", "'se'"
    )
    _check_error(err, column="se")
    assert err.rows == [2]
    df.loc[3, "se"] = -1.0
    with _raises("2 values <= 0 \\(rows 2, 3\\)"):
        validate(read_table(df), outcome="y", positive=["se"])


def test_validate_positive_infinite() -> None:
    df = _frame()
    df.loc[5, "se"] = np.inf
    with _raises("infinite") as info:
        validate(read_table(df), outcome="y", positive=["se"])
    assert info.value.rows == [5]


def test_validate_positive_text() -> None:
    df = _frame()
    df["se"] = df["se"].astype(str)
    with _raises("must be numeric") as info:
        validate(read_table(df), outcome="y", positive=["se"])
    assert info.value.column == "se"


@pytest.mark.parametrize(
    "labels",
    [
        ["a", "b", "a", "b", None, "c", "a", "b", np.nan],
        ["a", "b", "a", "b", "", "c", "a", "b", "   "],
    ],
)
def test_validate_missing_group_labels(labels: list[object]) -> None:
    df = pd.DataFrame({"y": np.arange(9, dtype=float), "driver": labels})
    with _raises() as info:
        validate(read_table(df), outcome="y", groups=["driver"])
    err = info.value
    assert err.message == "Grouping column 'driver' has 2 missing labels (rows 4, 8)."
    assert err.hint == "Drop those rows or give them a label."
    assert err.rows == [4, 8]
    assert err.column == "driver"


def test_validate_missing_numeric_group_labels() -> None:
    df = pd.DataFrame({"y": [1.0, 2.0, 3.0], "g": [1.0, np.nan, 2.0]})
    with _raises("1 missing label \\(row 1\\)"):
        validate(read_table(df), outcome="y", groups=["g"])


def test_validate_single_group() -> None:
    df = pd.DataFrame({"y": [1.0, 2.0, 3.0], "g": ["a", "a", "a"]})
    with _raises() as info:
        validate(read_table(df), outcome="y", groups=["g"])
    err = info.value
    assert err.message == "Grouping column 'g' has only 1 group ('a'); pooling needs at least 2."
    assert err.hint == "Fit a model without the (1 | g) term, or add groups."
    assert err.column == "g"
    assert err.rows is not None


def test_validate_min_groups() -> None:
    df = pd.DataFrame({"y": [1.0, 2.0, 3.0], "g": ["a", "b", "a"]})
    validate(read_table(df), outcome="y", groups=["g"])
    with _raises("only 2 groups \\('a', 'b'\\); pooling needs at least 3"):
        validate(read_table(df), outcome="y", groups=["g"], min_groups=3)


def test_validate_order_columns_before_values() -> None:
    df = pd.DataFrame({"y": [np.nan, 1.0], "g": ["a", "a"]})
    with _raises("Unknown column"):
        validate(read_table(df), outcome="y", numeric=["nope"], groups=["g"])
    with _raises("missing value"):
        validate(read_table(df), outcome="y", groups=["g"])


# --------------------------------------------------------------------------------------------
# group_labels
# --------------------------------------------------------------------------------------------


def test_group_labels_integers_sorted_numerically() -> None:
    table = read_table(pd.DataFrame({"g": [10, 2, 1, 2, 10]}))
    labels = group_labels(table, "g")
    assert isinstance(labels, pd.Categorical)
    assert list(labels) == ["10", "2", "1", "2", "10"]
    assert list(labels.categories) == ["1", "2", "10"]


def test_group_labels_floats_lose_trailing_zero() -> None:
    table = read_table(pd.DataFrame({"g": [2.0, 1.0, 1.5, 2.0]}))
    labels = group_labels(table, "g")
    assert list(labels) == ["2", "1", "1.5", "2"]
    assert list(labels.categories) == ["1", "1.5", "2"]


def test_group_labels_strings_sorted_lexicographically() -> None:
    table = read_table(pd.DataFrame({"g": ["b", "a10", "a2", "b"]}))
    labels = group_labels(table, "g")
    assert list(labels) == ["b", "a10", "a2", "b"]
    assert list(labels.categories) == ["a10", "a2", "b"]


def test_group_labels_categorical_keeps_category_order() -> None:
    values = pd.Categorical(["lo", "hi", "mid", "hi"], categories=["lo", "mid", "hi", "unused"])
    table = read_table(pd.DataFrame({"g": values}))
    labels = group_labels(table, "g")
    assert list(labels.categories) == ["lo", "mid", "hi"]
    assert list(labels) == ["lo", "hi", "mid", "hi"]


def test_group_labels_unknown_column() -> None:
    with _raises("Unknown column 'cnty'"):
        group_labels(read_table(_frame()), "cnty")
