"""Rows that stay in their engine: CSV/Parquet files scanned by DuckDB, a DuckDB relation, or a
Spark DataFrame, queried with SQL and never loaded whole (:func:`scan` → :class:`Source`).

The queries themselves (one aggregation per fit) are :mod:`poolwise.query`'s; this module knows
the engines — how to open the rows, name their columns' kinds, quote identifiers, run a query
and bring its small result back as pandas or NumPy — and, like :mod:`poolwise.data`, nothing
of formulas or families.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .data import (Table, _check_names, _finish, _quote_identifier, _reader_for, _unique, check_files, duckdb_relation,
                   no_rows, not_utf8, read_error, resolve_files)
from .errors import DataError

if TYPE_CHECKING:  # pragma: no cover - imported for the type checker only
    import pyarrow

__all__ = ["Source", "scan", "is_scannable"]


#: the kinds of column a Source reports
_KINDS = ("number", "boolean", "text", "other")


@dataclass(frozen=True, eq=False)
class Source:
    """Rows that stay where they are — CSV/Parquet files scanned by DuckDB, a DuckDB relation,
    or a Spark DataFrame — queried with SQL, never loaded whole.

    Attributes
    ----------
    engine : str
        ``"duckdb"`` or ``"spark"``.
    relation : str
        What follows ``FROM`` in a query: ``read_parquet('trips/*.parquet')`` or a view name.
    kinds : dict of str to str
        Each column's kind: ``"number"``, ``"boolean"``, ``"text"`` or ``"other"``.
    source : str
        Where the rows are, for messages: the path, ``"duckdb relation"`` or ``"spark"``.
    """

    engine: str
    relation: str
    kinds: dict[str, str]
    source: str
    _handle: Any = field(repr=False, default=None)  # a DuckDB connection, or a SparkSession
    _frame: Any = field(repr=False, default=None)  # the Spark DataFrame behind the view (Spark only)
    _files: tuple[str, ...] = field(repr=False, default=())  # the files a path named (for messages)

    @property
    def columns(self) -> list[str]:
        """Column names, in order."""
        return list(self.kinds)

    @property
    def dialect(self) -> str:
        """SQL dialect of the engine (``"duckdb"`` or ``"spark"``)."""
        return self.engine

    def quote(self, name: str) -> str:
        """``name`` as a quoted identifier of this engine's SQL."""
        if self.engine == "spark":
            return "`" + name.replace("`", "``") + "`"
        return _quote_identifier(name)

    def query(self, sql: str) -> pd.DataFrame:
        """Run ``sql`` (which names this source as ``{rows}``) and return its (small) result.

        Raises
        ------
        DataError
            When the engine refuses the query or cannot read the rows.
        """
        text = sql.replace("{rows}", self.relation)
        try:
            if self.engine == "spark":
                out: pd.DataFrame = _decimals_as_floats(_spark_collect(self._handle.sql(text))).to_pandas()
                return out
            frame: pd.DataFrame = self._run(text).df()
            return frame
        except Exception as err:  # the engine's own error types
            raise self._error(err) from None

    def query_arrays(self, sql: str) -> dict[str, np.ndarray]:
        """Like :meth:`query`, as NumPy arrays by column, without going through pandas.

        Both engines give the same arrays: a column with missing values is a masked array
        (floating-point columns hold NaN instead), decimals are floats.
        """
        text = sql.replace("{rows}", self.relation)
        if self.engine == "spark":
            try:
                table = _spark_collect(self._handle.sql(text))
            except Exception as err:
                raise self._error(err) from None
            return {str(name): _arrow_to_numpy(table.column(i)) for i, name in enumerate(table.column_names)}
        try:
            got = self._run(text).fetchnumpy()
        except Exception as err:
            raise self._error(err) from None
        return {str(k): _duckdb_column(v) for k, v in got.items()}

    def spark_positions(self, condition: str, limit: int = 6) -> list[int]:
        """0-based positions of the first ``limit`` rows where ``condition`` holds (Spark only).

        Spark has no row numbers: a window over the whole table needs an order, and
        ``monotonically_increasing_id()`` is not consecutive.  The positions are counted from
        the scan instead: each row's read split (for files, ``_metadata.file_path`` and
        ``file_block_start``; otherwise its partition) and its place in the split, from
        ``monotonically_increasing_id()`` less the split's first value; one small query counts
        the rows of every split, a second finds the first rows at fault.  For files that is their
        position in file order (files sorted by path, as DuckDB reads a glob); for other
        DataFrames it is their position in partition order, the order ``collect()`` returns
        (for ``createDataFrame(pandas_df)``: the pandas row).

        Parameters
        ----------
        condition
            A Spark SQL condition on this source's columns (quoted with :meth:`quote`).
        limit
            How many positions to return at most.

        Returns
        -------
        list of int
            Ascending positions (empty when no row matches).

        Raises
        ------
        DataError
            When Spark refuses the query or cannot read the rows.
        """
        if self.engine != "spark":
            raise ValueError("spark_positions() is for Spark sources; DuckDB numbers its rows in SQL.")
        from pyspark.sql import functions as F

        frame = self._frame if self._frame is not None else self._handle.table(self.relation)
        split = [F.col("_metadata.file_path").alias("f"), F.col("_metadata.file_block_start").alias("s")]
        try:  # only a DataFrame read from files has the hidden _metadata column
            frame.select(*split).schema
        except Exception:
            split = [F.lit(None).cast("string").alias("f"), F.lit(None).cast("long").alias("s")]
        try:
            rows = frame.select(*split, F.spark_partition_id().alias("p"), F.monotonically_increasing_id().alias("m"),
                                F.expr(condition).alias("bad"))
            keys = ["f", "s", "p"]
            counts = _spark_collect(rows.groupBy(*keys).agg(F.count(F.lit(1)).alias("n"), F.min("m").alias("m0")))
            bad = _spark_collect(rows.where(F.col("bad")).select(*keys, "m").orderBy(*keys, "m").limit(limit))
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip()
            raise DataError(f"Could not read {self.source}: {first}",
                            hint="Check that the files are well-formed and the columns hold what the formula needs.") from None

        def key(row: dict[str, Any]) -> tuple[str, int, int]:
            return (row["f"] or "", row["s"] or 0, row["p"])

        start: dict[tuple[str, int, int], tuple[int, int]] = {}  # split → (rows before it, its first id)
        before = 0
        for row in sorted(counts.to_pylist(), key=key):
            start[key(row)] = (before, int(row["m0"]))
            before += int(row["n"])
        out = []
        for row in bad.to_pylist():
            offset, first_id = start[key(row)]
            out.append(offset + int(row["m"]) - first_id)
        return sorted(out)

    def check_text(self, values: Any) -> None:
        """Refuse text that Spark decoded from bytes that are not UTF-8.

        Spark reads such bytes of a CSV file as U+FFFD, without a word (DuckDB refuses the file
        itself): when text read from files (levels, group labels, loaded columns) holds U+FFFD,
        the files are decoded here and the first bad byte is named.

        Raises
        ------
        DataError
            Naming the file, the line and the byte.
        """
        if self.engine != "spark" or not self._files:
            return
        if any(isinstance(v, str) and "\ufffd" in v for v in values):
            err = not_utf8(self._files, self.source)
            if err is not None:
                raise err

    def _error(self, err: BaseException) -> DataError:
        """The engine's error as one or two lines (a file that is not UTF-8 says so, with the byte)."""
        text = str(err).lower()
        if self._files and ("not utf-8 encoded" in text or "invalid unicode" in text):
            return read_error(err, self.source, self._files)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip()
        return DataError(f"Could not read {self.source}: {first}",
                         hint="Check that the files are well-formed and the columns hold what the formula needs.")

    def _run(self, text: str) -> Any:
        """A DuckDB result: the connection's, or the user's relation's (lazy: it is not loaded)."""
        if isinstance(self._handle, tuple):  # ("relation", rel): the query sees it under its view name
            return self._handle[1].query(self.relation, text)
        return self._handle.execute(text)

    def load(self, columns: Sequence[str]) -> Table:
        """The given columns of every row, as a :class:`Table` (for models the query cannot reduce)."""
        _check_names(self.columns, columns)
        select = ", ".join(self.quote(c) for c in _unique(list(columns)))
        frame = self.query(f"SELECT {select} FROM {{rows}}")
        for c in frame.columns:
            if self.kinds.get(str(c)) == "text":
                self.check_text(frame[c].tolist())
        return _finish(frame, self.source)


def is_scannable(data: object) -> bool:
    """Whether :func:`scan` takes ``data``: a path or glob, a DuckDB relation, a Spark DataFrame."""
    if isinstance(data, (str, os.PathLike)):
        return True
    module = type(data).__module__ or ""
    return module.split(".")[0] in ("duckdb", "pyspark") and hasattr(data, "columns")


def scan(data: Any, *, engine: str | None = None, spark: Any = None) -> Source:
    """Open rows for querying without loading them.

    Parameters
    ----------
    data : str, os.PathLike, duckdb.DuckDBPyRelation or pyspark.sql.DataFrame
        A CSV or Parquet file, a glob of them (``"trips/*.parquet"``), a DuckDB relation, or a
        Spark DataFrame.
    engine : {"duckdb", "spark"}, optional
        For a path: DuckDB (default) or Spark (then ``spark`` is the SparkSession, or the active
        one is used). A relation or DataFrame brings its engine.
    spark : pyspark.sql.SparkSession, optional
        The session that reads a path with ``engine="spark"``.

    Returns
    -------
    Source

    Raises
    ------
    DataError
        For a missing file, an unsupported type or extension, or rows the engine cannot read; an
        empty file, a file without rows (a CSV header alone), a CSV header that names a column
        twice, a CSV file that is not UTF-8 (naming the line and byte).
    SpecError
        For an unknown engine, or ``engine="spark"`` without pyspark.

    Examples
    --------
    >>> import os, tempfile, pandas as pd
    >>> path = os.path.join(tempfile.mkdtemp(), "rows.csv")
    >>> pd.DataFrame({"y": [1.0, 2.0], "g": ["a", "b"]}).to_csv(path, index=False)
    >>> src = scan(path)
    >>> src.kinds
    {'y': 'number', 'g': 'text'}
    """
    from .errors import SpecError

    if engine not in (None, "duckdb", "spark"):
        raise SpecError(f"The 'engine' option must be 'duckdb' or 'spark'. Got {engine!r}.", option="engine")
    module = (type(data).__module__ or "").split(".")[0]
    if module == "pyspark":
        if engine == "duckdb":
            raise SpecError("A Spark DataFrame is reduced by Spark, not DuckDB.", hint="Leave engine unset.",
                            option="engine")
        return _spark_source(data.sparkSession, data, "spark DataFrame")
    if module == "duckdb":
        if engine == "spark":
            raise SpecError("A DuckDB relation is reduced by DuckDB, not Spark.", hint="Leave engine unset.",
                            option="engine")
        view = "poolwise_rows"
        kinds = _unique_kinds([(str(n), str(t)) for n, t in zip(data.columns, data.types)])
        return Source("duckdb", view, kinds, "the DuckDB relation", ("relation", data))
    if not isinstance(data, (str, os.PathLike)):
        raise DataError(f"Cannot scan data of type {type(data).__name__}.",
                        hint="Pass a CSV or Parquet path (or glob), a DuckDB relation or a Spark DataFrame.")
    path = os.fspath(data)
    reader = _reader_for(path)
    files = resolve_files(path)  # the engines read exactly these files, escaped, never the pattern
    con = _duckdb_connection()
    _check_files(con, reader, files, path)
    if engine == "spark":
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise SpecError("engine='spark' needs pyspark.", hint="pip install pyspark (and Java 17).",
                            option="engine") from None
        session = spark or SparkSession.getActiveSession()
        if session is None:
            raise SpecError("engine='spark' needs a SparkSession.", hint="Pass spark=SparkSession.builder.getOrCreate().",
                            option="engine")
        paths = [_hadoop_escape(os.path.abspath(f)) for f in files]
        try:
            if reader == "read_parquet":
                frame = session.read.parquet(*paths)
            else:
                frame = session.read.csv(paths, header=True, inferSchema=True, quote='"', escape='"')
            empty = not frame.limit(1).collect()
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise DataError(f"Could not read '{path}': {first}", hint="Check the path and the file type.") from None
        src = _spark_source(session, frame, path, tuple(files) if reader == "read_csv_auto" else ())
        if empty:
            raise no_rows(path, src.columns, reader)
        return src
    src = _duckdb_source(con, duckdb_relation(reader, files), path, tuple(files))
    try:
        empty = con.execute(f"SELECT 1 FROM {src.relation} LIMIT 1").fetchone() is None
    except Exception as err:  # DuckDB's own error types
        raise src._error(err) from None
    if empty:
        raise no_rows(path, src.columns, reader)
    return src


def _check_files(con: Any, reader: str, files: list[str], path: str) -> None:
    import duckdb

    try:
        check_files(con, reader, files, path)
    except duckdb.Error as err:
        raise read_error(err, path, files) from None


def _hadoop_escape(path: str) -> str:
    """A file's path with the characters of Hadoop's globs escaped (Spark globs every path it reads)."""
    return "".join("\\" + ch if ch in "\\*?[]{}" else ch for ch in path)


def _duckdb_connection() -> Any:
    import duckdb

    return duckdb.connect()


def _kind_of(type_name: str) -> str:
    t = type_name.upper()
    if t == "BOOLEAN":
        return "boolean"
    if t.startswith("INTERVAL"):  # (not an integer type: INT is a prefix of it)
        return "other"
    if any(t.startswith(k) for k in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                                      "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL",
                                      "INT", "LONG", "SHORT", "BYTE")):
        return "number"
    if t.startswith(("VARCHAR", "STRING", "TEXT", "CHAR", "ENUM")):
        return "text"
    return "other"


def _duckdb_source(con: Any, relation: str, where: str, files: tuple[str, ...] = ()) -> Source:
    import duckdb

    try:
        schema = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    except duckdb.Error as err:
        raise read_error(err, where, files) from None
    return Source("duckdb", relation, _unique_kinds([(str(r[0]), str(r[1])) for r in schema]), where, con,
                  _files=files)


def _unique_kinds(schema: list[tuple[str, str]]) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for name, type_name in schema:
        if name in kinds:
            raise DataError(f"Column '{name}' appears more than once.", hint="Rename or drop the duplicates.",
                            column=name)
        kinds[name] = _kind_of(type_name)
    return kinds


def _spark_source(session: Any, frame: Any, where: str, files: tuple[str, ...] = ()) -> Source:
    """A Spark DataFrame as a :class:`Source`: registered as a temporary view the queries name.

    Spark's type names (``frame.schema``'s ``simpleString()``: ``int``, ``bigint``, ``double``,
    ``decimal(10,2)``, ``string``, ``boolean``, …) map to the kinds as DuckDB's do.
    """
    view = f"poolwise_rows_{id(frame):x}"
    try:
        frame.createOrReplaceTempView(view)
        schema = [(str(f.name), str(f.dataType.simpleString())) for f in frame.schema.fields]
    except Exception as err:  # Spark's own error types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip()
        raise DataError(f"Could not read {where}: {first}", hint="Check the DataFrame and the files behind it.") from None
    return Source("spark", view, _unique_kinds(schema), where, session, frame, files)


def _spark_collect(frame: Any) -> pyarrow.Table:
    """The (small) result of a Spark query as an Arrow table (pyspark >= 4: ``toArrow``)."""
    import pyarrow as pa

    to_arrow = getattr(frame, "toArrow", None)
    if to_arrow is not None:
        table: pa.Table = to_arrow()
        return table
    return pa.Table.from_pandas(frame.toPandas(), preserve_index=False)  # pragma: no cover - pyspark 3.5


def _decimals_as_floats(table: pyarrow.Table) -> pyarrow.Table:
    """Decimal columns (``SUM(1.0)``, ``decimal(10,2)``) as float64, as DuckDB's ``.df()`` gives them."""
    import pyarrow as pa

    for i, f in enumerate(table.schema):
        if pa.types.is_decimal(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.float64()))
    return table


def _duckdb_column(values: Any) -> np.ndarray:
    """One column of DuckDB's ``fetchnumpy`` as :meth:`Source.query_arrays` gives it: floats with
    NaN for missing values, other columns masked where missing (a NULL integer key must not read
    as the 0 under its mask), plain arrays where nothing is missing."""
    if not np.ma.isMaskedArray(values):
        return np.asarray(values)
    if values.dtype.kind == "f":
        return np.asarray(values.filled(np.nan))
    if not np.ma.getmaskarray(values).any():
        return np.asarray(np.ma.getdata(values))
    out: np.ndarray = values
    return out


def _arrow_to_numpy(column: Any) -> np.ndarray:
    """One Arrow column as DuckDB's ``fetchnumpy`` gives it (after :meth:`Source.query_arrays`' fill)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_decimal(column.type):
        column = pc.cast(column, pa.float64())
    if pa.types.is_floating(column.type):
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=float)  # missing → NaN
    values = np.asarray(column.to_numpy(zero_copy_only=False))
    if column.null_count == 0:
        return values
    mask = np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_integer(column.type) or pa.types.is_boolean(column.type):
        filled = np.asarray(pc.fill_null(column, pa.scalar(0, column.type) if pa.types.is_integer(column.type)
                                         else False).to_numpy(zero_copy_only=False))
        return np.ma.masked_array(filled, mask=mask)
    return np.ma.masked_array(values.astype(object), mask=mask)
