"""Read and validate tables: the edge where rows enter poolwise.

This module owns the step *frame or CSV/Parquet path → validated* :class:`Table`. It accepts a
pandas, polars or pyarrow table, or the path (or glob) of CSV/Parquet files, which it reads
through an in-memory DuckDB connection. The checks are generic and driven by the caller's
requirements (which column is the outcome, which must be numbers, which group the rows); this
module knows nothing of formulas, families or priors, never imports JAX, and never alters the
user's frame or files.
"""

from __future__ import annotations

import difflib
import glob
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from numbers import Number
from typing import TYPE_CHECKING, Any, TypeGuard, Union

import numpy as np
import pandas as pd

from .errors import DataError, format_rows

if TYPE_CHECKING:  # pragma: no cover - imported for the type checker only
    import polars
    import pyarrow

__all__ = [
    "DataLike",
    "Table",
    "Source",
    "scan",
    "is_scannable",
    "read_table",
    "check_columns",
    "validate",
    "group_labels",
]

DataLike = Union[pd.DataFrame, "polars.DataFrame", "pyarrow.Table", str, os.PathLike]
"""What :func:`read_table` accepts: a pandas, polars or pyarrow table, or a file path/glob."""

_CSV_EXTENSIONS = (".csv", ".tsv", ".txt")
_PARQUET_EXTENSIONS = (".parquet", ".pq")
_COMPRESSION = (".gz", ".zst")
_MAX_LISTED_COLUMNS = 20
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, eq=False)
class Table:
    """Rows read by :func:`read_table`, ready to be validated and reduced.

    Attributes
    ----------
    frame : pandas.DataFrame
        The rows as pandas. Always a new frame: the user's object is never mutated, and code
        downstream must not mutate this one either.
    source : str
        Where the rows came from: ``"pandas"``, ``"polars"``, ``"arrow"`` or the file path.
    """

    frame: pd.DataFrame
    source: str
    #: group labels already computed, by (column, rows) (the frame is never mutated)
    _labels: dict[tuple[str, int], pd.Categorical] = field(default_factory=dict, repr=False)

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        return int(len(self.frame))

    @property
    def columns(self) -> list[str]:
        """Column names, in order."""
        return [str(c) for c in self.frame.columns]

    def __repr__(self) -> str:
        cols = ", ".join(self.columns[:_MAX_LISTED_COLUMNS])
        if len(self.columns) > _MAX_LISTED_COLUMNS:
            cols += ", …"
        return f"Table(source={self.source!r}, n_rows={self.n_rows}, columns=[{cols}])"


# --------------------------------------------------------------------------------------------
# rows that stay in their engine
# --------------------------------------------------------------------------------------------

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
            first = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip()
            raise DataError(f"Could not read {self.source}: {first}",
                            hint="Check that the files are well-formed and the columns hold what the formula needs.") from None

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
                first = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip()
                raise DataError(f"Could not read {self.source}: {first}",
                                hint="Check that the files are well-formed and the columns hold what the formula "
                                     "needs.") from None
            return {str(name): _arrow_to_numpy(table.column(i)) for i, name in enumerate(table.column_names)}
        try:
            got = self._run(text).fetchnumpy()
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip()
            raise DataError(f"Could not read {self.source}: {first}",
                            hint="Check that the files are well-formed and the columns hold what the formula needs.") from None
        return {str(k): np.asarray(v.filled(np.nan) if np.ma.isMaskedArray(v) and v.dtype.kind == "f" else v)
                for k, v in got.items()}

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

    def _run(self, text: str) -> Any:
        """A DuckDB result: the connection's, or the user's relation's (lazy: it is not loaded)."""
        if isinstance(self._handle, tuple):  # ("relation", rel): the query sees it under its view name
            return self._handle[1].query(self.relation, text)
        return self._handle.execute(text)

    def load(self, columns: Sequence[str]) -> Table:
        """The given columns of every row, as a :class:`Table` (for models the query cannot reduce)."""
        _check_names(self.columns, columns)
        select = ", ".join(self.quote(c) for c in _unique(list(columns)))
        return _finish(self.query(f"SELECT {select} FROM {{rows}}"), self.source)


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
        For a missing file, an unsupported type or extension, or rows the engine cannot read.
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
    _check_path(path)
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
        try:
            if reader == "read_parquet":
                frame = session.read.parquet(path)
            else:
                frame = session.read.csv(path, header=True, inferSchema=True)
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise DataError(f"Could not read '{path}': {first}", hint="Check the path and the file type.") from None
        return _spark_source(session, frame, path)
    literal = "'" + path.replace("'", "''") + "'"
    return _duckdb_source(_duckdb_connection(), f"{reader}({literal})", path)


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


def _duckdb_source(con: Any, relation: str, where: str) -> Source:
    import duckdb

    try:
        schema = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    except duckdb.Error as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip()
        raise DataError(f"Could not read '{where}': {first}",
                        hint="Check that the file is well-formed CSV or Parquet.") from None
    return Source("duckdb", relation, _unique_kinds([(str(r[0]), str(r[1])) for r in schema]), where, con)


def _unique_kinds(schema: list[tuple[str, str]]) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for name, type_name in schema:
        if name in kinds:
            raise DataError(f"Column '{name}' appears more than once.", hint="Rename or drop the duplicates.",
                            column=name)
        kinds[name] = _kind_of(type_name)
    return kinds


def _spark_source(session: Any, frame: Any, where: str) -> Source:
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
    return Source("spark", view, _unique_kinds(schema), where, session, frame)


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


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def read_table(data: DataLike, columns: Sequence[str] | None = None) -> Table:
    """Read a table or a CSV/Parquet file into a :class:`Table`.

    Parameters
    ----------
    data : pandas.DataFrame, polars.DataFrame, pyarrow.Table, str or os.PathLike
        The rows. A pandas frame is copied; polars and pyarrow tables are converted with
        ``.to_pandas()``. A path is read with DuckDB (in memory): ``.csv``, ``.tsv``, ``.txt``
        (optionally ``.gz``/``.zst`` compressed) through ``read_csv_auto``, ``.parquet`` and
        ``.pq`` through ``read_parquet``. Globs such as ``"data/*.parquet"`` are allowed.
    columns : sequence of str, optional
        Keep only these columns (in this order). For files only these are read.

    Returns
    -------
    Table
        A new frame with the rows, and where they came from.

    Raises
    ------
    DataError
        If the type is not accepted, the file does not exist or has an unsupported extension,
        DuckDB cannot read it, a column name appears twice, or one of ``columns`` is missing.

    See Also
    --------
    validate : check the columns a model needs.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"y": [1.0, 2.0, 3.0], "g": ["a", "b", "b"]})
    >>> table = read_table(df, columns=["y", "g"])
    >>> table.n_rows, table.columns, table.source
    (3, ['y', 'g'], 'pandas')
    >>> table.frame is df
    False
    """
    cols = _as_names(columns)
    if isinstance(data, pd.DataFrame):
        frame = data
        if cols is not None:
            _check_names(_column_names(frame), cols)
            frame = frame.loc[:, cols]
        return _finish(frame.copy(deep=True), "pandas")
    if isinstance(data, (str, os.PathLike)):
        return _read_path(os.fspath(data), cols)
    if _is_polars_frame(data):
        if cols is not None:
            _check_names([str(c) for c in data.columns], cols)
            data = data.select(cols)
        return _finish(data.to_pandas(), "polars")
    if _is_arrow_table(data):
        if cols is not None:
            _check_names([str(c) for c in data.column_names], cols)
            data = data.select(cols)
        return _finish(data.to_pandas(), "arrow")
    raise DataError(
        f"Cannot read data of type {type(data).__name__}.",
        hint=(
            "Pass a pandas, polars or pyarrow table, or the path of a CSV or Parquet file."
        ),
    )


def _as_names(columns: Sequence[str] | None) -> list[str] | None:
    if columns is None:
        return None
    if isinstance(columns, str):
        return [columns]
    return [str(c) for c in columns]


def _is_polars_frame(data: object) -> TypeGuard[polars.DataFrame]:
    module = type(data).__module__ or ""
    return module.split(".")[0] == "polars" and hasattr(data, "to_pandas")


def _is_arrow_table(data: object) -> TypeGuard[pyarrow.Table]:
    import pyarrow as pa

    return isinstance(data, pa.Table)


def _column_names(frame: pd.DataFrame) -> list[str]:
    return [str(c) for c in frame.columns]


def _finish(frame: pd.DataFrame, source: str) -> Table:
    """Give every column a string name and refuse duplicated names."""
    names = _column_names(frame)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(
                f"Column '{name}' appears more than once.",
                hint="Rename or drop the duplicates so that every column has its own name.",
                column=name,
            )
        seen.add(name)
    if any(not isinstance(c, str) for c in frame.columns):
        frame.columns = pd.Index(names, dtype=object)
    return Table(frame=frame, source=source)


def _read_path(path: str, columns: list[str] | None) -> Table:
    import duckdb

    reader = _reader_for(path)
    _check_path(path)

    literal = "'" + path.replace("'", "''") + "'"
    relation = f"{reader}({literal})"
    try:
        with duckdb.connect() as con:
            if columns is not None:
                schema = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
                _check_names([str(row[0]) for row in schema], columns)
                select = ", ".join(_quote_identifier(c) for c in columns)
            else:
                select = "*"
            frame = con.execute(f"SELECT {select} FROM {relation}").df()
    except duckdb.Error as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip()
        if not first_line.endswith((".", "!", "?")):
            first_line += "."
        raise DataError(
            f"Could not read '{path}': {first_line}",
            hint="Check that the file is well-formed CSV or Parquet.",
        ) from err
    return _finish(frame, path)


def _check_path(path: str) -> None:
    if _GLOB_CHARS & set(path):
        if not glob.glob(path):
            raise DataError(f"No files match '{path}'.", hint="Check the path.")
    elif os.path.isdir(path):
        raise DataError(
            f"'{path}' is a directory, not a file.",
            hint="Pass a file, or a glob such as 'data/*.parquet'.",
        )
    elif not os.path.exists(path):
        raise DataError(f"File '{path}' does not exist.", hint="Check the path.")


def _reader_for(path: str) -> str:
    name = os.path.basename(path).lower()
    for compression in _COMPRESSION:
        if name.endswith(compression):
            stem = name[: -len(compression)]
            if stem.endswith(_CSV_EXTENSIONS):
                return "read_csv_auto"
            break
    if name.endswith(_CSV_EXTENSIONS):
        return "read_csv_auto"
    if name.endswith(_PARQUET_EXTENSIONS):
        return "read_parquet"
    supported = ", ".join(_CSV_EXTENSIONS + _PARQUET_EXTENSIONS)
    raise DataError(
        f"Cannot read '{path}': unsupported file type.",
        hint=f"Supported extensions are {supported} (CSV ones may end in .gz or .zst).",
    )


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------------------------
# columns
# --------------------------------------------------------------------------------------------


def check_columns(table: Table, names: Sequence[str], *, context: str = "") -> None:
    """Raise if any of ``names`` is not a column of ``table``.

    Parameters
    ----------
    table : Table
        The rows.
    names : sequence of str
        Columns that must exist.
    context : str, optional
        Appended to the message right after the column, e.g. ``" in formula: y ~ x"``
        (include the leading space).

    Raises
    ------
    DataError
        Naming the first missing column (``column=`` set), with the nearest existing name when
        there is one ("Did you mean 'county'?") and the list of columns (the first 20).

    Examples
    --------
    >>> import pandas as pd
    >>> table = read_table(pd.DataFrame({"county": ["a"], "y": [1.0]}))
    >>> check_columns(table, ["y"])
    >>> check_columns(table, ["cnty"])
    Traceback (most recent call last):
    ...
    poolwise.errors.DataError: Unknown column 'cnty'. Did you mean 'county'? Columns are: county, y.
    """
    _check_names(table.columns, _as_names(names) or [], context=context)


def _check_names(available: Sequence[str], names: Iterable[str], context: str = "") -> None:
    present = set(available)
    for name in names:
        if name in present:
            continue
        hint = ""
        near = _near_miss(name, available)
        if near is not None:
            hint = f"Did you mean '{near}'? "
        listed = ", ".join(available[:_MAX_LISTED_COLUMNS])
        if len(available) > _MAX_LISTED_COLUMNS:
            listed += f", … ({len(available) - _MAX_LISTED_COLUMNS} more)"
        hint += f"Columns are: {listed}." if available else "The data have no columns."
        raise DataError(f"Unknown column '{name}'{context}.", hint=hint, column=name)


def _near_miss(name: str, available: Sequence[str]) -> str | None:
    lowered = {c.lower(): c for c in reversed(list(available))}
    if name.lower() in lowered:
        return lowered[name.lower()]
    close = difflib.get_close_matches(name, list(available), n=1, cutoff=0.6)
    if close:
        return close[0]
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    if close:
        return lowered[close[0]]
    return None


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def validate(
    table: Table,
    *,
    outcome: str,
    numeric: Sequence[str] = (),
    groups: Sequence[str] = (),
    positive: Sequence[str] = (),
    min_groups: int = 2,
) -> None:
    """Check, once and at the edge, that ``table`` holds what a model needs.

    The checks run in this order, and the first failure raises: every column exists; the table
    has rows; the outcome, ``numeric`` and ``positive`` columns hold numbers (``bool`` counts),
    with no missing and no infinite values; ``positive`` columns are > 0; grouping columns have
    no missing or blank labels and at least ``min_groups`` distinct levels. Groups with a
    single observation are valid.

    Parameters
    ----------
    table : Table
        The rows, from :func:`read_table`.
    outcome : str
        The response column; must hold finite numbers.
    numeric : sequence of str, optional
        Predictor columns that must hold finite numbers.
    groups : sequence of str, optional
        Grouping columns.
    positive : sequence of str, optional
        Columns that must hold finite numbers > 0 (e.g. known standard errors).
    min_groups : int, default 2
        The fewest distinct levels a grouping column may have.

    Raises
    ------
    DataError
        With ``column=`` and ``rows=`` (0-based row positions) set, a message naming the
        column, how many rows are at fault and the first few, and a hint how to mend it.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"y": [1.0, float("nan"), 3.0], "g": ["a", "b", "b"]})
    >>> validate(read_table(df), outcome="y", groups=["g"])
    Traceback (most recent call last):
    ...
    poolwise.errors.DataError: Column 'y' has 1 missing value (row 1). Drop or impute them before fitting.
    """
    numbers = _unique([outcome, *numeric, *positive])
    group_cols = _unique(list(groups))
    check_columns(table, _unique([*numbers, *group_cols]))
    if table.n_rows == 0:
        raise DataError(
            "The data have no rows.",
            hint="Pass a table with at least two groups of observations.",
        )
    frame = table.frame
    for name in numbers:
        _check_numeric_dtype(frame[name], name)
    for name in numbers:
        missing = _positions(frame[name].isna())
        if missing.size:
            raise DataError(
                f"Column '{name}' has {_count(missing.size, 'missing value')} "
                f"({format_rows(missing.tolist())}).",
                hint="Drop or impute them before fitting.",
                column=name,
                rows=missing.tolist(),
            )
    values = {name: frame[name].to_numpy(dtype=float) for name in numbers}
    for name in numbers:
        infinite = np.flatnonzero(np.isinf(values[name]))
        if infinite.size:
            raise DataError(
                f"Column '{name}' has {_count(infinite.size, 'infinite value')} "
                f"({format_rows(infinite.tolist())}).",
                hint="Remove or cap them before fitting.",
                column=name,
                rows=infinite.tolist(),
            )
    for name in _unique(list(positive)):
        bad = np.flatnonzero(values[name] <= 0)
        if bad.size:
            raise DataError(
                f"Column '{name}' must be positive but has {_count(bad.size, 'value')} <= 0 "
                f"({format_rows(bad.tolist())}).",
                hint="Drop those rows or correct the values; they must be greater than 0.",
                column=name,
                rows=bad.tolist(),
            )
    for name in group_cols:
        _check_group_column(table, name, min_groups)


def _check_numeric_dtype(series: pd.Series, name: str) -> None:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype):
        return
    if pd.api.types.is_complex_dtype(dtype):
        what = "complex numbers"
    elif pd.api.types.is_datetime64_any_dtype(dtype):
        what = "dates"
    elif pd.api.types.is_timedelta64_dtype(dtype):
        what = "time spans"
    elif isinstance(dtype, pd.CategoricalDtype):
        what = "categories"
    else:
        what = "text"
    position, value = _first_non_number(series)
    if position is None:
        detail = f"has dtype {dtype}"
    else:
        detail = f"holds {what} (e.g. {value!r} in row {position})"
    raise DataError(
        f"Column '{name}' must be numeric but {detail}.",
        hint="Convert it to numbers or pick another column.",
        column=name,
        rows=[position] if position is not None else None,
    )


def _first_non_number(series: pd.Series) -> tuple[int | None, Any]:
    """Position and value of the first non-missing entry that is not a real number."""
    for position, value in enumerate(series.array):
        if _is_missing(value):
            continue
        if isinstance(value, (bool, np.bool_)) or (
            isinstance(value, Number) and not isinstance(value, complex)
        ):
            continue
        return position, _plain(value)
    return None, None


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _check_group_column(table: Table, name: str, min_groups: int) -> None:
    series = table.frame[name]
    missing = series.isna().to_numpy(dtype=bool)
    if not (
        pd.api.types.is_numeric_dtype(series.dtype)
        or pd.api.types.is_datetime64_any_dtype(series.dtype)
    ):
        stripped = series.astype("string").str.strip()
        blank = stripped.eq("").fillna(False).to_numpy(dtype=bool)
        missing = missing | blank
    bad = np.flatnonzero(missing)
    if bad.size:
        raise DataError(
            f"Grouping column '{name}' has {_count(bad.size, 'missing label')} "
            f"({format_rows(bad.tolist())}).",
            hint="Drop those rows or give them a label.",
            column=name,
            rows=bad.tolist(),
        )
    levels = list(group_labels(table, name).categories)
    if len(levels) < min_groups:
        shown = ", ".join(f"'{level}'" for level in levels[:5])
        if len(levels) > 5:
            shown += ", …"
        raise DataError(
            f"Grouping column '{name}' has only {_count(len(levels), 'group')} ({shown}); "
            f"pooling needs at least {min_groups}.",
            hint=f"Fit a model without the (1 | {name}) term, or add groups.",
            column=name,
            rows=[],
        )


def _positions(mask: pd.Series) -> np.ndarray:
    return np.flatnonzero(mask.to_numpy(dtype=bool))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------------------------
# group labels
# --------------------------------------------------------------------------------------------


def group_labels(table: Table, column: str) -> pd.Categorical:
    """The labels of a grouping column as strings, with its levels in natural order.

    Integers become ``"1"``, ``"2"``; integral floats lose their ``.0`` (``1.0`` → ``"1"``).
    The categories are the distinct values sorted in their natural order: numerically for a
    numeric (or boolean) column, in category order for a pandas categorical (unused categories
    dropped), lexicographically by label otherwise. Missing labels stay missing; call
    :func:`validate` first to rule them out.

    Parameters
    ----------
    table : Table
        The rows.
    column : str
        The grouping column.

    Returns
    -------
    pandas.Categorical
        One string label per row; ``categories`` are the levels in order.

    Raises
    ------
    DataError
        If ``column`` does not exist.

    Examples
    --------
    >>> import pandas as pd
    >>> table = read_table(pd.DataFrame({"g": [10, 2, 2, 1]}))
    >>> labels = group_labels(table, "g")
    >>> list(labels), list(labels.categories)
    (['10', '2', '2', '1'], ['1', '2', '10'])
    """
    check_columns(table, [column])
    series = table.frame[column]
    dtype = series.dtype
    natural = (
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_numeric_dtype(dtype)
        or pd.api.types.is_bool_dtype(dtype)
        or pd.api.types.is_datetime64_any_dtype(dtype)
    )
    key = (column, len(series))
    cached = table._labels.get(key)
    if cached is not None:
        return cached
    if pd.api.types.is_string_dtype(dtype) and not isinstance(dtype, pd.CategoricalDtype):
        # text labels are their own strings: factorize sorted, no per-label Python work
        codes, uniques = pd.factorize(series, sort=True, use_na_sentinel=True)
        out = pd.Categorical.from_codes(np.asarray(codes, dtype=np.int64),
                                        categories=pd.Index(np.asarray(uniques, dtype=object).astype(str),
                                                            dtype=object))
        if out.categories.is_unique:  # (str(x) of distinct objects could collide)
            table._labels[key] = out
            return out
    codes, uniques = pd.factorize(series, sort=natural, use_na_sentinel=True)
    labels = [_label(v) for v in np.asarray(uniques, dtype=object)]
    if natural:
        ordered = list(dict.fromkeys(labels))
    else:
        ordered = sorted(set(labels))
    index = {label: i for i, label in enumerate(ordered)}
    remap = np.array([index[label] for label in labels] + [-1], dtype=np.int64)
    new_codes = remap[np.asarray(codes, dtype=np.int64)]  # -1 (missing) maps to the last slot
    result = pd.Categorical.from_codes(new_codes, categories=ordered)
    table._labels[key] = result
    return result


def _label(value: Any) -> str:
    value = _plain(value)
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    return str(value)
