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
        ``.pq`` through ``read_parquet``. Globs such as ``"data/*.parquet"`` or
        ``"data/**/*.csv"`` (any depth) are allowed; a path that names an existing file is read
        as that file, whatever its name holds (:func:`resolve_files`).
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
        DuckDB cannot read it, a column name appears twice (in a CSV header too), one of
        ``columns`` is missing; for a file that is empty, holds no rows (a header alone) or is not
        UTF-8 (naming the line and byte).

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
    files = resolve_files(path)
    relation = duckdb_relation(reader, files)
    try:
        with duckdb.connect() as con:
            check_files(con, reader, files, path)
            if columns is not None:
                schema = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
                _check_names([str(row[0]) for row in schema], columns)
                select = ", ".join(_quote_identifier(c) for c in columns)
            else:
                select = "*"
            frame = con.execute(f"SELECT {select} FROM {relation}").df()
    except duckdb.Error as err:
        raise read_error(err, path, files) from err
    if len(frame) == 0:
        raise no_rows(path, [str(c) for c in frame.columns], reader)
    return _finish(frame, path)


def resolve_files(path: str) -> list[str]:
    """The files ``path`` names, as every engine will read them.

    A path that names an existing file is that file, whatever characters its name holds
    (``data[1].csv`` is not a pattern then); otherwise a path with ``*``, ``?`` or ``[`` is a
    glob, ``**`` matching any number of directories, and its matches (files only, sorted) are
    the files.  The engines are then given these files, escaped, never the pattern, so what is
    read is what was checked here.

    Raises
    ------
    DataError
        For a directory, a missing file, or a glob that matches no file.
    """
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        raise DataError(
            f"'{path}' is a directory, not a file.",
            hint="Pass a file, or a glob such as 'data/*.parquet'.",
        )
    if _GLOB_CHARS & set(path):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise DataError(f"No files match '{path}'.", hint="Check the path.")
        return files
    raise DataError(f"File '{path}' does not exist.", hint="Check the path.")


#: RFC 4180 quoting for every CSV read (DuckDB's sniffer may otherwise pick ' as the quote)
CSV_QUOTING = "quote = '\"', escape = '\"'"


def sql_string(text: str) -> str:
    """``text`` as a DuckDB string literal (DuckDB reads ``'...'`` literally; a quote is doubled)."""
    return "'" + text.replace("'", "''") + "'"


def duckdb_relation(reader: str, files: Sequence[str]) -> str:
    """``read_csv_auto([...])`` of exactly these files (escaped: DuckDB does not glob them again).

    CSV is read with RFC 4180 quoting (``"`` quotes, ``""`` inside): DuckDB's sniffer would
    otherwise take ``'`` as the quote when a text value starts and ends with one, and strip it.
    """
    listed = f"[{', '.join(sql_string(glob.escape(f)) for f in files)}]"
    if reader == "read_csv_auto":  # RFC 4180 quoting, never sniffed: a level 'L' in single quotes stays 'L'
        return f"{reader}({listed}, {CSV_QUOTING})"
    return f"{reader}({listed})"


def check_files(con: Any, reader: str, files: Sequence[str], where: str) -> None:
    """What DuckDB would read wrongly or silently from CSV files, refused before it reads them.

    An empty CSV file (0 bytes: DuckDB makes it one text column ``column0``), and a header that
    names a column twice (DuckDB renames the second ``y_1``), or twice up to case (DuckDB's
    names are not case-sensitive).  Only the first file's header is read: it names the columns.
    """
    if reader != "read_csv_auto":
        return
    for f in files:
        if os.path.getsize(f) == 0:
            where_ = f"'{f}'" if f == where else f"'{f}' (matched by '{where}')"
            raise DataError(f"File {where_} is empty (0 bytes).",
                            hint="Remove the file, or give it a header line and rows.")
    first_file = sql_string(glob.escape(files[0]))
    sniffed = con.execute(f"SELECT HasHeader, SkipRows, Delimiter FROM sniff_csv({first_file}, {CSV_QUOTING})").fetchone()
    if not sniffed or not sniffed[0]:  # no header: DuckDB names the columns column0, column1, …
        return
    first = con.execute(f"SELECT * FROM read_csv_auto({first_file}, header = false, all_varchar = true, {CSV_QUOTING}, "
                        f"skip = {int(sniffed[1])}, delim = {sql_string(str(sniffed[2]))}) LIMIT 1").fetchall()
    if not first:
        return
    raw = [c for c in first[0]]
    seen: dict[str, int] = {}
    for position, name in enumerate(raw):
        if name is None:
            continue
        key = name.casefold()
        if key in seen:
            other = raw[seen[key]]
            same = "" if other == name else f" (as '{other}': column names are not case-sensitive)"
            raise DataError(
                f"Column '{name}' appears more than once in the header of '{files[0]}'{same}: columns "
                f"{seen[key] + 1} and {position + 1}.",
                hint="Rename or drop the duplicates so that every column has its own name.", column=name)
        seen[key] = position


def no_rows(where: str, columns: Sequence[str], reader: str) -> DataError:
    """The error for a file (or glob) that holds no rows: a CSV header alone, an empty Parquet file."""
    if reader == "read_csv_auto":
        shown = ", ".join(list(columns)[:_MAX_LISTED_COLUMNS]) + (", …" if len(columns) > _MAX_LISTED_COLUMNS else "")
        return DataError(f"'{where}' has a header ({shown}) but no rows.",
                         hint="Pass a file with at least two groups of observations.")
    return DataError(f"'{where}' has no rows.", hint="Pass a file with at least two groups of observations.")


def read_error(err: BaseException, where: str, files: Sequence[str] = ()) -> DataError:
    """An engine's error while reading ``where``, as one or two lines.

    A file that is not UTF-8 says so, with the first byte that is not and its line (found by
    decoding the file; DuckDB's own line number counts its buffers, not the file's lines).
    """
    text = str(err).strip()
    if "not utf-8 encoded" in text.lower() or "invalid unicode" in text.lower():
        for f in [f for f in files or [where] if _reader_for(f) == "read_csv_auto"]:
            fault = _utf8_fault(f)
            if fault is not None:
                line, byte, value = fault
                return DataError(
                    f"File '{f}' is not UTF-8 text: byte 0x{value:02X} on line {line} (at byte {byte}) is not "
                    "valid UTF-8.",
                    hint="Save the file as UTF-8 (for example: iconv -f latin1 -t utf-8 in.csv > out.csv).")
        return DataError(f"'{where}' is not UTF-8 text.",
                         hint="Save the file as UTF-8 (for example: iconv -f latin1 -t utf-8 in.csv > out.csv).")
    first_line = (text.splitlines() or [type(err).__name__])[0].rstrip()
    if not first_line.endswith((".", "!", "?")):
        first_line += "."
    return DataError(f"Could not read '{where}': {first_line}",
                     hint="Check that the file is well-formed CSV or Parquet.")


def not_utf8(files: Sequence[str], where: str) -> DataError | None:
    """The error for the first of these CSV files that is not UTF-8 (:func:`read_error`), or ``None``."""
    for f in files:
        if _reader_for(f) == "read_csv_auto" and _utf8_fault(f) is not None:
            return read_error(UnicodeError("not utf-8 encoded"), where, [f])
    return None


def _utf8_fault(path: str) -> tuple[int, int, int] | None:
    """(line, byte offset, byte value) of the first byte of ``path`` that is not UTF-8, or ``None``."""
    import codecs
    import gzip

    if path.lower().endswith(".zst"):  # (no decoder in the standard library: DuckDB's own words are kept)
        return None
    opener: Any = gzip.open if path.lower().endswith(".gz") else open
    try:
        handle = opener(path, "rb")
    except OSError:
        return None
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, offset = 1, 0  # offset: bytes read before this chunk
    with handle:
        while True:
            chunk = handle.read(1 << 20)
            if not chunk:
                return None
            held = len(decoder.getstate()[0])  # an unfinished sequence from the last chunk (no newline in it)
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as bad:
                data = bytes(bad.object)  # the held bytes, then this chunk
                return line + data[:bad.start].count(b"\n"), offset - held + bad.start, data[bad.start]
            line += chunk.count(b"\n")
            offset += len(chunk)


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
    """Position and value of the first non-missing entry that is not a real number.

    Text that reads as a number ("2.5") is passed over while some other entry does not (the
    cell to mend in a column of numbers read as text is "n/a", not the first "0.12").
    """
    first: tuple[int | None, Any] = (None, None)
    for position, value in enumerate(series.array):
        if _is_missing(value):
            continue
        if isinstance(value, (bool, np.bool_)) or (
            isinstance(value, Number) and not isinstance(value, complex)
        ):
            continue
        if not (isinstance(value, str) and _reads_as_number(value)):
            return position, _plain(value)
        if first[0] is None:
            first = (position, _plain(value))
    return first


#: a text column whose distinct values read as numbers at least this often is taken for a column
#: of numbers with a few bad cells (not for a categorical predictor)
NUMBERS_SHARE = 0.9


def _reads_as_number(value: Any) -> bool:
    """Whether ``value`` is a real number, or text that reads as one (``" 2.5"``, ``"1e3"``, ``"-inf"``)."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, Number) and not isinstance(value, complex)):
        return True
    if not isinstance(value, str) or "_" in value:  # (Python's float() reads "1_000"; SQL does not)
        return False
    try:
        float(value.strip())
    except ValueError:
        return False
    return True


def text_among_numbers(values: Iterable[Any]) -> list[Any]:
    """The distinct values of a text column that are not numbers, when the others are.

    Empty unless at least :data:`NUMBERS_SHARE` of the distinct non-missing values read as
    numbers and at least one does not: then the column is a column of numbers with a few bad
    cells (read as text because of them), not a categorical predictor.

    Examples
    --------
    >>> text_among_numbers(["0.5", "1.5", "2", "3", "4", "5", "6", "7", "8", "9", "n/a"])
    ['n/a']
    >>> text_among_numbers(["1", "2", "3", "other"])
    []
    """
    distinct = [_plain(v) for v in values if not _is_missing(v)]
    most = (1.0 - NUMBERS_SHARE) * len(distinct)  # more text values than this: a categorical
    bad: list[Any] = []
    for v in distinct:
        if not _reads_as_number(v):
            bad.append(v)
            if len(bad) > most:
                return []
    return sorted(bad, key=str)


def text_among_numbers_error(column: str, bad: Sequence[Any], rows: Sequence[int], n_levels: int) -> DataError:
    """The error for :func:`text_among_numbers`: the column, the cells at fault, and what they would do."""
    shown = ", ".join(repr(v) for v in list(bad)[:3]) + (", …" if len(bad) > 3 else "")
    return DataError(
        f"Column '{column}' holds numbers but also text ({shown} in {format_rows(rows)}), so it would enter the "
        f"model as a categorical predictor with {n_levels} levels.",
        hint=f"Correct or remove {'that cell' if len(rows) == 1 else 'those cells'}, or write C({column}) to use "
             "the column as a categorical.",
        column=column, rows=list(rows))


def check_text_predictor(table: Table, name: str) -> None:
    """Raise when a text predictor is a column of numbers with a few text cells (:func:`text_among_numbers`).

    A pandas categorical is a categorical on purpose and is left alone.
    """
    series = table.frame[name]
    dtype = series.dtype
    if (isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_numeric_dtype(dtype)
            or pd.api.types.is_bool_dtype(dtype)):
        return
    if not (pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)):
        return
    distinct = pd.unique(series.dropna())
    bad = text_among_numbers(distinct)
    if bad:
        rows = np.flatnonzero(series.isin(bad).to_numpy(dtype=bool)).tolist()
        raise text_among_numbers_error(name, bad, rows, len(distinct))


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
    # from the labels (computed once per column, cached): missing rows have code −1, blank labels are
    # found among the levels, not row by row (pandas' string methods on every row cost ~1 ms a column)
    dtype = table.frame[name].dtype
    labels = group_labels(table, name)
    codes = np.asarray(labels.codes)
    missing = codes < 0
    if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype)):
        blank = [i for i, level in enumerate(labels.categories) if str(level).strip() == ""]
        if blank:
            missing = missing | np.isin(codes, blank)
    bad = np.flatnonzero(missing)
    if bad.size:
        raise DataError(
            f"Grouping column '{name}' has {_count(bad.size, 'missing label')} "
            f"({format_rows(bad.tolist())}).",
            hint="Drop those rows or give them a label.",
            column=name,
            rows=bad.tolist(),
        )
    levels = list(labels.categories)
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
