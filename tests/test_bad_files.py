"""Bad input files: each gives a PoolwiseError naming what is wrong (CLI: one or two lines, exit 2).

A numeric column with a few text cells (read as text, it would silently become a categorical of
one level per number), duplicated column names in a CSV header (DuckDB silently renames the
second), an empty file, a header without rows, a file that is not UTF-8; and paths whose names
look like globs (``[``) or use ``**``, which every engine must read as the existence check sees
them.  Each case goes through the in-memory reader (:func:`poolwise.data.read_table`), the DuckDB
query (:func:`poolwise.fit` of the path) and the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import poolwise as pw
from poolwise import data as D
from poolwise import source as S
from poolwise.errors import DataError, PoolwiseError


def _frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=n), 3)
    g = np.array(list("abcd"))[np.arange(n) % 4]
    return pd.DataFrame({"y": np.round(x + rng.normal(size=n), 3), "x": x, "g": g})


def _text_cells(column: str, cells: dict[int, str], binary: bool = False) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        df = _frame()
        if binary:
            df["y"] = (df["y"] > 0).astype(int)
        df[column] = df[column].astype(object)
        for row, text in cells.items():
            df.loc[row, column] = text
        df.to_csv(d / "cells.csv", index=False)
        return d / "cells.csv"
    return make


def _raw(name: str, content: bytes) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        (d / name).write_bytes(content)
        return d / name
    return make


FILE_CASES = [
    # id, file, words the message must hold (every path: reader, query, CLI)
    ("duplicate column", _raw("dup.csv", b"y,x,x,g\n1,2,3,a\n2,3,4,b\n"),
     ["'x' appears more than once", "columns 2 and 3"]),
    ("duplicate up to case", _raw("case.csv", b"y,X,x,g\n1,2,3,a\n2,3,4,b\n"), ["'x' appears more than once", "'X'"]),
    ("duplicate after a preamble", _raw("pre.csv", b"a title line\n\ny;x;x;g\n1;2;3;a\n4;5;6;b\n"),
     ["'x' appears more than once", "columns 2 and 3"]),
    ("empty file", _raw("empty.csv", b""), ["empty.csv", "is empty"]),
    ("header only", _raw("header.csv", b"y,x,g\n"), ["header.csv", "header (y, x, g) but no rows"]),
    ("not UTF-8", _raw("latin.csv", b"y,x,g\n1,2,a\n2,3,caf\xe9\n3,4,b\n"),
     ["latin.csv", "not UTF-8", "0xE9", "line 3"]),
]

CELL_CASES = [
    # id, file, family, words
    ("one text cell", _text_cells("x", {37: "1,5"}), "gaussian",
     ["'x'", "'1,5'", "row 37", "categorical", "C(x)"]),
    ("two text cells", _text_cells("x", {80: "n/a", 37: "1,5"}), "gaussian", ["'x'", "'1,5', 'n/a'", "rows 37, 80"]),
    ("text cell, counts", _text_cells("x", {37: "?"}, binary=True), "bernoulli", ["'x'", "'?'", "row 37"]),
    ("text outcome cell", _text_cells("y", {5: "oops"}), "gaussian",
     ["'y'", "must be numeric", "'oops' in row 5"]),
]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_file_is_named_by_every_reader(case: tuple, tmp_path: Path) -> None:
    _, make, words = case
    path = str(make(tmp_path))
    for read in (D.read_table, S.scan, lambda p: pw.fit("y ~ x + (1 | g)", p, draws=20, chains=1)):
        with pytest.raises(DataError) as info:
            read(path)
        text = str(info.value)
        for w in words:
            assert w in text, f"{w!r} not in {text!r}"
        assert len(text.splitlines()) <= 2


@pytest.mark.parametrize("case", CELL_CASES, ids=[c[0] for c in CELL_CASES])
def test_text_cells_in_a_numeric_column_are_named(case: tuple, tmp_path: Path) -> None:
    _, make, family, words = case
    path = str(make(tmp_path))
    frame = D.read_table(path).frame  # (the in-memory path: the CSV's text column in pandas)
    method = "exact" if family == "gaussian" else "nuts"
    for data, options in ((frame, {"method": method}), (path, {})):  # in memory; reduced inside DuckDB
        with pytest.raises(DataError) as info:
            pw.fit("y ~ x + (1 | g)", data, family=family, draws=20, chains=1, **options)
        text = str(info.value)
        for w in words:
            assert w in text, f"{w!r} not in {text!r}"
        assert info.value.rows and info.value.column in ("x", "y")


def test_codes_with_a_text_level_stay_categorical(tmp_path: Path) -> None:
    """Levels '1', '2', '3', 'other' are a categorical (most distinct values are not numbers' many)."""
    df = _frame().assign(k=lambda d: np.array(["1", "2", "3", "other"], dtype=object)[np.arange(len(d)) % 3 + (
        np.arange(len(d)) % 5 == 0)])
    df.to_parquet(tmp_path / "k.parquet")
    a = pw.fit("y ~ k + (1 | g)", df, method="empirical", draws=20)
    b = pw.fit("y ~ k + (1 | g)", str(tmp_path / "k.parquet"), method="empirical", draws=20)
    assert a.bound.coef_names == b.bound.coef_names == ["Intercept", "k[2]", "k[3]", "k[other]"]


@pytest.mark.parametrize("case", FILE_CASES + [(c[0], c[1], c[3]) for c in CELL_CASES[:1]],
                         ids=[c[0] for c in FILE_CASES + CELL_CASES[:1]])
def test_cli_says_it_in_two_lines(case: tuple, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from poolwise.cli import app

    _, make, words = case
    result = CliRunner().invoke(app, ["fit", str(make(tmp_path)), "-f", "y ~ x + (1 | g)", "--draws", "20",
                                      "--chains", "1", "--out", str(tmp_path / "out")])
    out = result.output or ""
    assert result.exit_code == 2, out
    assert "Traceback" not in out and len(out.strip().splitlines()) <= 2, out
    for w in words:
        assert w in out, f"{w!r} not in {out!r}"


def _write(path: Path, rows: list[tuple[float, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["y", "g"]).to_csv(path, index=False)


def test_paths_are_read_as_the_existence_check_sees_them(tmp_path: Path) -> None:
    """'d[1].csv' is that file, not the glob that matches 'd1.csv'; '**' matches any depth, zero included."""
    _write(tmp_path / "d[1].csv", [(1.0, "a"), (2.0, "b")])
    _write(tmp_path / "d1.csv", [(5.0, "a"), (6.0, "b"), (7.0, "c")])
    _write(tmp_path / "sub" / "top.csv", [(10.0, "a")])
    _write(tmp_path / "sub" / "deep" / "er" / "low.csv", [(20.0, "b")])
    _write(tmp_path / "we*rd" / "a?b.csv", [(30.0, "c")])
    expect = {"d[1].csv": [1.0, 2.0], "sub/**/*.csv": [20.0, 10.0], "we*rd/a?b.csv": [30.0],
              "d?.csv": [5.0, 6.0, 7.0]}
    for pattern, ys in expect.items():
        path = str(tmp_path / pattern)
        assert D.read_table(path).frame["y"].tolist() == ys, pattern
        assert S.scan(path).query("SELECT y FROM {rows}")["y"].tolist() == ys, pattern
    with pytest.raises(DataError, match="No files match"):
        D.read_table(str(tmp_path / "nothing" / "**" / "*.csv"))


def test_resolve_files_is_what_the_engines_read(tmp_path: Path) -> None:
    _write(tmp_path / "d[1].csv", [(1.0, "a")])
    _write(tmp_path / "d1.csv", [(5.0, "a")])
    assert D.resolve_files(str(tmp_path / "d[1].csv")) == [str(tmp_path / "d[1].csv")]
    assert D.resolve_files(str(tmp_path / "d[0-9].csv")) == [str(tmp_path / "d1.csv")]
    with pytest.raises(PoolwiseError, match="directory"):
        D.resolve_files(str(tmp_path))


def latin1_deep(d: Path) -> str:
    """A CSV of 30,000 rows whose one Latin-1 byte (a group label 'café') is on line 25,002."""
    n = 30_000
    g = np.array(["a", "b", "c"], dtype=object)[np.arange(n) % 3]
    g[25_000] = "café"
    df = pd.DataFrame({"y": (np.arange(n) % 2).astype(float), "x": np.round(np.sin(np.arange(n)), 3), "g": g})
    path = d / "deep.csv"
    path.write_bytes(df.to_csv(index=False).encode("latin-1"))
    return str(path)


def test_bytes_that_are_not_utf8_past_the_sniffing_sample(tmp_path: Path) -> None:
    path = latin1_deep(tmp_path)
    for read in (D.read_table, lambda p: pw.fit("y ~ x + (1 | g)", p, draws=20, chains=1)):
        with pytest.raises(DataError, match=r"not UTF-8 text: byte 0xE9 on line 25002"):
            read(path)


def test_a_csv_without_header_is_not_a_duplicated_header(tmp_path: Path) -> None:
    """'1,1,2' on the first line is data (DuckDB finds no header): columns column0, column1, column2."""
    (tmp_path / "nohead.csv").write_text("1,1,2\n3,4,5\n6,7,8\n")
    frame = D.read_table(str(tmp_path / "nohead.csv")).frame
    assert list(frame.columns) == ["column0", "column1", "column2"] and frame["column1"].tolist() == [1, 4, 7]
