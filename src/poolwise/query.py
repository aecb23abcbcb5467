"""Rows reduced inside their engine (DuckDB or Spark): one aggregation query per fit.

For a gaussian model (:func:`bind_source`) the query returns, per group, the row count and the
sums of products of the design columns, the group-term columns and the outcome (less the
offset) — the sufficient statistics of the exact paths (:class:`poolwise.reduce.Reduced`,
:class:`poolwise.reduce.BlockStats`); with several grouping factors (crossed, nested or partly
crossed) the same scan groups by ``GROUPING SETS`` and returns those sums per level of each
factor and the cross-products per level pair of each pair of factors
(:class:`poolwise.reduce.SparseStats`).  For bernoulli, binomial and poisson models
(:func:`bind_counts`) it merges the rows into counts per (group, covariate pattern).  The
formula's encoding is formulae's own, translated column by column into SQL
(:func:`poolwise.formula.sql_columns`); the rows never leave the engine, so memory is
O(levels + level pairs), whatever the number of rows.  The sums are taken about a pilot shift per column (the
mean of the first rows, one cheap query) and moved to the weighted means afterwards, so that
they do not lose the data's spread to its offset (:class:`poolwise.reduce.Shift`).  Validation
happens in the same pass; a second query
names the rows at fault only when something is off.  :func:`bind_data` routes a fit's data: a
table in memory to :meth:`ModelSpec.bind`, a file, relation or Spark DataFrame to one of the
queries, or to loading the columns the model needs.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import data as _data
from . import source as _source
from .errors import DataError, FormulaError, SpecError, format_rows
from .formula import GroupTerm, design_matrices, sql_columns, sql_literal
from .reduce import BlockStats, PairStats, Reduced, Shift, SparseStats
from .spec import (BoundSpec, ModelSpec, RawBlock, bind_parts, check_constant_outcome, check_design_size,
                   check_formula_columns, check_scale, warn_far_slopes)

__all__ = ["bind_data", "Reduction", "bind_source", "query_reason", "bind_counts", "count_reason", "COUNT_FAMILIES",
           "integer_notes", "INTEGER_CODE_LEVELS", "offset_terms"]


# ----------------------------------------------------------------------------------------------
# rows reduced inside their engine (DuckDB or Spark): one aggregation query

#: more common coefficients than this and X'WX is summed in a second query (not per group)
_MAX_PER_GROUP_PAIRS = 120
#: categorical predictors with more levels than this are refused (one column per level)
_MAX_LEVELS = 5000


@dataclass(frozen=True)
class Reduction:
    """What the aggregation query gave: the statistics of both exact paths and where they came from.

    Attributes
    ----------
    simple
        :class:`Reduced` (the varying-intercept path: one factor, q = 1 with an intercept term).
    block
        :class:`BlockStats` (the q-term path; with several factors, the first factor's).
    sparse
        :class:`SparseStats` of every factor and pair of factors (lme4's penalized least squares).
    returned
        Rows the query gave back: one per level of each factor and per level pair.
    n_obs
        Rows reduced.
    source
        Where the rows are (a path, "the DuckDB relation", "spark").
    engine
        ``"duckdb"`` or ``"spark"``.
    sql
        The aggregation query, as run.
    """

    simple: Reduced | None
    block: BlockStats
    n_obs: int
    source: str
    engine: str
    sql: str = field(repr=False, default="")
    sparse: SparseStats | None = field(repr=False, default=None)
    returned: int = 0


def query_reason(spec: ModelSpec) -> str | None:
    """``None`` when the model's statistics can be computed inside the engine, else why not."""
    if not spec.fam.exact:
        return f"the {spec.fam.name} family is fitted from the rows"
    return None


def _num(src: _source.Source, column: str) -> str:
    return f"CAST({src.quote(column)} AS DOUBLE)"


def _inf() -> str:
    return "CAST('Infinity' AS DOUBLE)"


def _div(src: _source.Source, a: str, b: str) -> str:
    """``a / b`` in SQL; Spark's ANSI mode raises on a zero divisor, ``try_divide`` gives NULL (not finite)."""
    return f"try_divide({a}, {b})" if src.dialect == "spark" else f"{a} / {b}"


def _bad_number(expr: str) -> str:
    """SQL that is true where ``expr`` (a DOUBLE) is missing, NaN or infinite (DuckDB and Spark)."""
    return f"({expr} IS NULL OR isnan({expr}) OR abs({expr}) = {_inf()})"


def _distinct(src: _source.Source, column: str) -> list[Any]:
    frame = src.query(f"SELECT DISTINCT {src.quote(column)} AS v FROM {{rows}}")
    values = [v for v in frame["v"].tolist() if v is not None and not (isinstance(v, float) and math.isnan(v))]
    src.check_text(values)  # (Spark decodes bytes that are not UTF-8 as U+FFFD)
    return values


def _check_text_numbers(src: _source.Source, column: str, values: list[Any]) -> None:
    """Raise when a text column is numbers with a few text cells (:func:`poolwise.data.text_among_numbers`)."""
    bad = _data.text_among_numbers(values)
    if bad:
        listed = ", ".join(sql_literal(v, src.dialect) for v in bad[:50])
        rows = _bad_rows(src, f"{src.quote(column)} IN ({listed})")
        raise _data.text_among_numbers_error(column, bad, rows, len(values))


def _not_numeric(src: _source.Source, name: str) -> DataError:
    """The error for an outcome (or se, trials) column that is not numeric: text names its first bad cell."""
    plain = DataError(f"Column '{name}' must be numeric but has {src.kinds[name]} values.",
                      hint="Convert it to numbers or pick another column.", column=name)
    if src.kinds[name] != "text":
        return plain
    q = src.quote(name)
    cond = f"({q} IS NOT NULL AND TRY_CAST({q} AS DOUBLE) IS NULL)"
    values = src.query(f"SELECT DISTINCT {q} AS v FROM {{rows}} WHERE {cond} LIMIT 3")["v"].tolist()
    found = [(rows[0], v) for v in values if (rows := _bad_rows(src, f"{q} = {sql_literal(v, src.dialect)}", 1))]
    if not found:
        return plain
    row, value = min(found, key=lambda t: t[0])
    return DataError(f"Column '{name}' must be numeric but holds text (e.g. {value!r} in row {row}).",
                     hint="Convert it to numbers or pick another column.", column=name, rows=[row])


def _unknown_weights(spec: ModelSpec, columns: list[str]) -> DataError:
    """The error for a weights column the data lack, with the near miss."""
    import difflib

    near = difflib.get_close_matches(str(spec.weights), columns, n=1, cutoff=0.5)
    hint = f"Did you mean '{near[0]}'?" if near else f"Columns are: {', '.join(columns[:20])}."
    return DataError(f"Unknown weights column '{spec.weights}'.", hint=hint, column=spec.weights)


def _levels(src: _source.Source, column: str, *, numbers: bool = False) -> list[Any]:
    """The distinct non-missing values of a column, in their natural order.

    With ``numbers``, a text column that holds numbers but for a few cells is refused first
    (:func:`_check_text_numbers`).
    """
    values = _distinct(src, column)
    if numbers and src.kinds[column] == "text":
        _check_text_numbers(src, column, values)
    if len(values) > _MAX_LEVELS:
        raise DataError(f"Column '{column}' has {len(values)} distinct values: as a categorical predictor that is "
                        f"{len(values) - 1} columns.", hint="Use it as a grouping factor, or as a number.",
                        column=column)
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _bad_rows(src: _source.Source, condition: str, limit: int = 6) -> list[int]:
    """0-based positions (in scan order) of rows where ``condition`` holds, for messages."""
    if src.dialect == "spark":  # Spark has no row_number() without an order: counted from the scan
        return src.spark_positions(condition, limit)
    frame = src.query(f"SELECT r FROM (SELECT row_number() OVER () - 1 AS r, ({condition}) AS bad FROM {{rows}}) "
                      f"AS t WHERE bad LIMIT {limit}")
    return [int(v) for v in frame["r"].tolist()]


def _skeleton(spec: ModelSpec, src: _source.Source, levels: dict[str, list[Any]], columns: list[str]) -> pd.DataFrame:
    """A few rows holding every level of the categorical columns: formulae builds its encoding on them."""
    k = max([2] + [len(v) for v in levels.values()])
    out: dict[str, Any] = {}
    for c in columns:
        if c in levels:
            vals = levels[c] or [0.0]
            out[c] = [vals[i % len(vals)] for i in range(k)]
        elif src.kinds[c] == "boolean":
            out[c] = [bool(i % 2) for i in range(k)]
        else:
            out[c] = [1.0 + (i % 2) for i in range(k)]
    frame = pd.DataFrame(out, index=pd.RangeIndex(k))
    for c in levels:
        if src.kinds[c] == "text":
            frame[c] = frame[c].astype(object)
    return frame


def _design(formula: str, frame: pd.DataFrame, what: str) -> Any:
    try:
        with np.errstate(all="ignore"):
            return design_matrices(formula, frame)
    except Exception as err:  # formulae's own errors for transforms it cannot apply
        raise FormulaError(f"Cannot build the design of {what}: {err}.", hint="Check the transformations in the formula.",
                           option="formula") from None


def bind_source(spec: ModelSpec, src: _source.Source) -> BoundSpec:
    """Bind a gaussian model to rows that stay in their engine: one aggregation query.

    With one grouping factor the query groups by it and computes, per group, the row count and
    the weighted sums of products of the design columns, the group-term columns and the outcome
    (less any offset), together with counts of the values that would fail validation.  With
    several factors (crossed, nested or partly crossed) the same scan groups by ``GROUPING
    SETS``: per level of each factor the same sums, and per level pair of each pair of factors
    the row count and Σ w z_k z_l' (:class:`poolwise.reduce.SparseStats`), so that only one row
    per level and per level pair comes back.  A second, small query reads the categorical
    predictors' levels first.  The formula's encoding is formulae's own (built on a few rows
    holding every level), translated column by column into SQL, so names, reference levels and
    interactions equal those of the in-memory path.  The bound spec holds no rows: its
    :attr:`~poolwise.spec.BoundSpec.reduced` carries the statistics of the exact paths.

    Parameters
    ----------
    spec
        A gaussian model (:func:`query_reason` is ``None``).
    src
        The rows (:func:`poolwise.source.scan`).

    Returns
    -------
    BoundSpec

    Raises
    ------
    DataError
        For missing or non-finite values, non-numeric columns, non-positive standard errors, a
        factor of a single group, constant or collinear predictors, slopes constant within every
        group — naming the column and the first rows at fault (counted from 0 in scan order).
    FormulaError
        For unknown columns, or transforms the query cannot compute (``scale()``, functions
        other than log, exp, sqrt, log10, log2, log1p, abs and arithmetic in ``I()``).
    SpecError
        For a model the query cannot reduce (:func:`query_reason`).
    """
    why = query_reason(spec)
    if why is not None:
        raise SpecError(f"The rows of this model cannot be reduced inside the query: {why}.",
                        hint="Load the columns it needs (poolwise.data.read_table).", option="formula")
    check_formula_columns(spec, src.columns)
    f = spec.formula
    group_cols = list(dict.fromkeys(c for t in spec.group_terms for c in t.factor_columns))
    skip = {*spec.response_columns, *group_cols}
    if spec.weights and spec.weights not in src.columns:
        raise _unknown_weights(spec, src.columns)
    for name in [spec.outcome] + [c for c in (spec.se, spec.weights) if c]:
        if src.kinds[name] not in ("number", "boolean"):
            raise _not_numeric(src, name)
    predictors = [v for v in spec.variables if v not in skip]
    for v in predictors + group_cols:
        if src.kinds[v] == "other":
            raise DataError(f"Column '{v}' holds values that are neither numbers nor text.",
                            hint="Convert it to numbers or text in the file.", column=v)
    wrapped = set(spec.categorical)  # C(column), quoted names too
    categorical = [v for v in predictors if src.kinds[v] == "text" or v in wrapped]
    levels = {v: _levels(src, v, numbers=v not in wrapped) for v in categorical}
    # count the columns from the distinct values before formulae encodes the skeleton rows and
    # the query gets a CASE per column
    check_design_size(spec, {v: len(lv) for v, lv in levels.items()},
                      rows=max([2] + [len(lv) for lv in levels.values()]))
    frame = _skeleton(spec, src, levels, predictors)
    frame[spec.outcome] = np.arange(len(frame), dtype=float)
    design = _design(f"{spec.outcome} ~ {spec.common}", frame, f"formula {f}")
    cols = sql_columns(design.common.terms, f, src.dialect) if design.common is not None else []
    offsets = [sql for name, sql in cols if name.startswith("offset(")]
    xs = [(name, sql) for name, sql in cols if not name.startswith("offset(")]
    y_raw = _num(src, spec.outcome)
    off_sql = " + ".join(f"({o})" for o in offsets) if offsets else None
    w_sql = ("1.0" if not spec.se else f"({_div(src, '1.0', f'({_num(src, spec.se)} * {_num(src, spec.se)})')})")
    if spec.weights:  # prior weights: a row's residual variance is σ²/w
        w_sql = _num(src, spec.weights)
    z_sqls = [_term_sql(spec, term, src, design, frame, xs) for term in spec.group_terms]
    return _run_reduction(spec, src, design, [name for name, _ in xs], [s for _, s in xs], z_sqls, y_raw, off_sql,
                          w_sql, group_cols, predictors, categorical)


def _term_sql(spec: ModelSpec, term: GroupTerm, src: _source.Source, design: Any, frame: pd.DataFrame,
              xs: list[tuple[str, str]]) -> list[str]:
    """The SQL of each column of one group term (``1.0`` for its intercept, a common column's own SQL)."""
    coef_names = [name for name, _ in xs]
    z_sql: list[str] = []
    for e in term.exprs:
        if e == "Intercept":
            z_sql.append("1.0")
        elif e in coef_names and design.common is not None and e in design.common.terms:  # the same term
            z_sql.append(xs[coef_names.index(e)][1])
        else:
            f = spec.formula
            dz = _design(term.design_formula(spec.outcome), frame, f"the group term {term} of formula {f}")
            one = sql_columns({e: dz.common.terms[e]}, f, src.dialect) if e in dz.common.terms else []
            if len(one) != 1:
                raise SpecError(f"The group term {term} varies '{e}', which expands to {len(one)} columns.",
                                hint="Varying slopes take numeric columns; give a categorical slope as 0/1 columns.",
                                option="formula")
            z_sql.append(one[0][1])
    return z_sql


class _Sums:
    """The aggregates of the reduction query, each distinct one computed once (alias → SQL)."""

    def __init__(self, one_at: int | None, weighted: bool) -> None:
        self.aggs: dict[str, str] = {"n": "COUNT(*)"}
        self._alias: dict[str, str] = {"COUNT(*)": "n"}
        self.one_at, self.weighted = one_at, weighted

    def agg(self, expr: str) -> str:
        if expr not in self._alias:
            alias = f"s{len(self._alias)}"
            self._alias[expr] = alias
            self.aggs[alias] = expr
        return self._alias[expr]

    def wsum(self, *cols: int, w: bool = True) -> str:
        """SUM of w (when weighted) times the given base columns (the intercept's ones dropped)."""
        parts = sorted(f"c{k}" for k in cols if k != self.one_at)
        if w and self.weighted:
            parts = ["w"] + parts
        return self.agg(f"SUM({' * '.join(parts)})") if parts else self.agg("COUNT(*)")

    def square(self, a: list[int], b: list[int]) -> list[list[str]]:
        """Σ w u_i v_j for the base columns ``a`` (rows) and ``b`` (columns)."""
        return [[self.wsum(i, j) for j in b] for i in a]


@dataclass
class _FactorSums:
    """The aliases of one grouping factor's per-level sums."""

    ZZ: list[list[str]]
    ZX: list[list[str]]
    Zy: list[str]
    zw: list[str]  # Σ w z
    z1: list[str]  # Σ z (unweighted, for the default priors)
    z2: list[str]  # Σ z²


def _factor_sums(sums: _Sums, z: list[int], p: int, y_at: int) -> _FactorSums:
    return _FactorSums(ZZ=sums.square(z, z), ZX=sums.square(z, list(range(p))), Zy=[sums.wsum(a, y_at) for a in z],
                       zw=[sums.wsum(a) for a in z], z1=[sums.wsum(a, w=False) for a in z],
                       z2=[sums.wsum(a, a, w=False) for a in z])


def _grouping(keys_of: list[list[int]]) -> tuple[list[tuple[int, ...]], dict[int, int], dict[tuple[int, int], int]]:
    """The grouping sets of several factors: each factor's key columns and each pair's union, once each.

    Returns the sets (key indices), the set of each factor and the set of each pair (k < l)."""
    sets: list[tuple[int, ...]] = []

    def at(keys: set[int]) -> int:
        s = tuple(sorted(keys))
        if s not in sets:
            sets.append(s)
        return sets.index(s)

    of_factor = {k: at(set(keys)) for k, keys in enumerate(keys_of)}
    of_pair = {(k, l): at(set(keys_of[k]) | set(keys_of[l])) for k in range(len(keys_of))
               for l in range(k + 1, len(keys_of))}
    return sets, of_factor, of_pair


def _grouping_id(s: tuple[int, ...], m: int) -> int:
    """``grouping_id(k0, …, k_{m-1})`` of the rows of grouping set ``s`` (a bit set per key not grouped,
    the first key the most significant; DuckDB and Spark agree)."""
    return sum(1 << (m - 1 - i) for i in range(m) if i not in s)


@dataclass
class _Columns:
    """The columns whose weighted cross products the query sums: X, the group terms not in X, and
    the outcome less the offset — each about its pilot shift where the model's intercept absorbs it."""

    base: list[str]  # the SQL of each column
    z_idx: list[list[int]]  # per factor, the column of each group term
    p: int
    y_at: int
    one_at: int | None  # the column of ones (never computed: a COUNT)
    x_icpt: int | None  # the intercept's column of X
    movable: list[int]  # the columns taken about a pilot shift
    pilot: dict[int, float]  # the shifts (-1: the raw outcome; -2: the offset)
    cols_sql: list[str]  # each column less its shift
    select: list[str]  # the inner query's columns: c{i}, w, yraw
    weighted: bool
    has_offset: bool


def _columns(spec: ModelSpec, src: _source.Source, coef_names: list[str], x_sql: list[str],
             z_sqls: list[list[str]], y_raw: str, off_sql: str | None, w_sql: str) -> _Columns:
    p = len(x_sql)
    y_sql = y_raw if off_sql is None else f"({y_raw} - ({off_sql}))"
    base: list[str] = list(x_sql)
    z_idx: list[list[int]] = []
    for z_sql in z_sqls:
        for s_ in z_sql:
            if s_ not in base:
                base.append(s_)
        z_idx.append([base.index(s_) for s_ in z_sql])
    y_at = len(base)
    base.append(y_sql)
    one_at = base.index("1.0") if "1.0" in base else None
    # sums about a pilot shift per column (the outcome and the common predictors that are not also
    # varying slopes), when the model's intercept absorbs it: see poolwise.reduce.Shift
    x_icpt = coef_names.index("Intercept") if "Intercept" in coef_names and x_sql[coef_names.index("Intercept")] \
        == "1.0" else None
    in_z = {i for z in z_idx for i in z}
    movable = [] if x_icpt is None else [i for i in range(len(base)) if i != one_at and (
        i == y_at or (i < p and i not in in_z))]
    pilot, largest = _pilot(src, {i: base[i] for i in movable} | ({-1: y_raw, -2: off_sql} if off_sql else {}))
    _check_pilot_scale(largest, coef_names, p, y_at, spec.outcome)
    cols_sql = [f"({s_} - {_lit(pilot[i])})" if pilot.get(i, 0.0) != 0.0 else s_ for i, s_ in enumerate(base)]
    if off_sql and y_at in movable:  # y and the offset each about its own pilot, then the difference: y − offset
        # is not rounded at the outcome's offset (y + 10⁸ less log(e) would lose 10⁻⁸ per row)
        pilot[y_at] = pilot[-1] - pilot[-2]
        cols_sql[y_at] = f"(({y_raw} - {_lit(pilot[-1])}) - (({off_sql}) - {_lit(pilot[-2])}))"
    select = [f"{s_} AS c{i}" for i, s_ in enumerate(cols_sql) if i != one_at]
    weighted = w_sql != "1.0"
    if weighted:
        select.append(f"{w_sql} AS w")
    if off_sql:
        raw_shift = pilot.get(-1, 0.0)
        select.append(f"({y_raw} - {_lit(raw_shift)}) AS yraw" if raw_shift != 0.0 else f"{y_raw} AS yraw")
    return _Columns(base=base, z_idx=z_idx, p=p, y_at=y_at, one_at=one_at, x_icpt=x_icpt, movable=movable,
                    pilot=pilot, cols_sql=cols_sql, select=select, weighted=weighted, has_offset=off_sql is not None)


@dataclass
class _Aggregates:
    """The aliases of the query's sums (:class:`_Sums`), and the checks computed in the same pass."""

    sums: _Sums
    factors: list[_FactorSums]
    pairs: dict[tuple[int, int], list[list[str]]]  # Σ w z_k z_l' per level pair
    yy: str
    sw: str
    XX: list[list[str]] | None  # None: X'WX in a second query (p large)
    Xy: list[str]
    y1: str  # unweighted moments of the outcome, x and z, for the data-scaled priors
    y2: str
    x1: list[str]
    x2: list[str]
    lw: str | None  # Σ log w and Σ se²
    se2: str | None
    present: list[str]  # non-missing counts, the sums' finiteness, MIN(se): cheap signs of bad input
    design_counts: list[str]
    se_min: str | None
    numbers: list[str]
    raw_cols: list[str]  # the inner query's columns these read


def _aggregates(spec: ModelSpec, src: _source.Source, c: _Columns, predictors: list[str],
                categorical: list[str]) -> _Aggregates:
    sums = _Sums(c.one_at, c.weighted)
    agg, wsum, p, y_at = sums.agg, sums.wsum, c.p, c.y_at
    K = len(c.z_idx)
    factors = [_factor_sums(sums, z, p, y_at) for z in c.z_idx]
    pairs = {(k, l): sums.square(c.z_idx[k], c.z_idx[l]) for k in range(K) for l in range(k + 1, K)}
    yy, sw = wsum(y_at, y_at), wsum()
    XX = [[wsum(k, m) for m in range(p)] for k in range(p)] if p * (p + 1) // 2 <= _MAX_PER_GROUP_PAIRS else None
    Xy = [wsum(k, y_at) for k in range(p)]
    # unweighted moments for the data-scaled priors (the same sums when there are no weights)
    if not c.has_offset:  # the outcome is the design's last column
        y1, y2 = wsum(y_at, w=False), wsum(y_at, y_at, w=False)
    else:
        y1, y2 = agg("SUM(yraw)"), agg("SUM(yraw * yraw)")
    x1 = [wsum(k, w=False) for k in range(p)]
    x2 = [wsum(k, k, w=False) for k in range(p)]
    lw = se2 = None
    if spec.se:
        lw, se2 = agg("SUM(LN(w))"), agg(f"SUM({_div(src, '1.0', 'w')})")
    elif spec.weights:
        lw = agg("SUM(LN(w))")
    # cheap signs of bad input in the same pass: non-missing counts, the sums' finiteness, MIN(se);
    # only when one shows does a second query find the column, the rows and the kind of fault
    positive = spec.se or spec.weights  # known standard errors or prior weights: > 0
    numbers = list(dict.fromkeys([spec.outcome] + [v for v in predictors if v not in categorical]
                                 + ([positive] if positive else [])))
    plain = {_num(src, v): v for v in numbers}  # columns that are design columns as they are
    covered = {plain[b] for b in c.base if b in plain}
    present = {v: agg(f"COUNT({src.quote(v)})") for v in numbers + categorical if v not in covered}
    raw_sums = {v: agg(f"SUM({_num(src, v)})") for v in numbers if _num(src, v) not in c.base}
    # one count for every design column: a sum is NULL when any of its terms is (NaN and ±inf are not)
    design_cols = [f"c{i}" for i in range(len(c.base)) if i != c.one_at]
    design_counts = [agg(f"COUNT({' + '.join(design_cols)})")] if design_cols else []
    se_min = agg(f"MIN({_num(src, positive)})") if positive else None
    raw_cols = [f"{_num(src, v)} AS r_{i}" for i, v in enumerate(raw_sums)]
    for i, v in enumerate(raw_sums):
        sums.aggs[raw_sums[v]] = f"SUM(r_{i})"
    if se_min is not None:
        sums.aggs[se_min] = "MIN(r_se)"
        raw_cols.append(f"{_num(src, str(positive))} AS r_se")
    for v in present:
        raw_cols.append(f"{src.quote(v)} AS p_{len(raw_cols)}")
        sums.aggs[present[v]] = f"COUNT(p_{len(raw_cols) - 1})"
    return _Aggregates(sums=sums, factors=factors, pairs=pairs, yy=yy, sw=sw, XX=XX, Xy=Xy, y1=y1, y2=y2, x1=x1,
                       x2=x2, lw=lw, se2=se2, present=list(present.values()), design_counts=design_counts,
                       se_min=se_min, numbers=numbers, raw_cols=raw_cols)


@dataclass
class _Scan:
    """What the query gave: its rows split by grouping set, and which set holds what."""

    sql: str
    parts: list[dict[str, np.ndarray]]  # per grouping set, its rows' columns
    set_of: dict[int, int]  # the set of each factor's levels
    pair_set: dict[tuple[int, int], int]  # the set of each pair of factors' level pairs
    key_names: list[str]  # k0, k1, …: the grouping columns
    keys_of: list[list[int]]  # per factor, its key columns

    def factor_keys(self, k: int) -> list[str]:
        return [self.key_names[i] for i in self.keys_of[k]]


def _scan(src: _source.Source, terms: tuple[GroupTerm, ...], group_cols: list[str], c: _Columns,
          ag: _Aggregates) -> _Scan:
    """Run the one aggregation: ``GROUP BY`` one factor, or ``GROUPING SETS`` of several (a set per factor
    and per pair of factors, told apart by ``grouping_id``)."""
    key_names = [f"k{i}" for i in range(len(group_cols))]
    keys_of = [[group_cols.index(col) for col in t.factor_columns] for t in terms]
    keys = [f"{src.quote(col)} AS k{i}" for i, col in enumerate(group_cols)]
    select = ", ".join(key_names + [f"{e} AS {a}" for a, e in ag.sums.aggs.items()])
    inner_sql = f"(SELECT {', '.join(keys + c.select + ag.raw_cols)} FROM {{rows}}) AS t"
    if len(terms) == 1:
        # one numeric key is put in order here (an argsort of the groups is cheaper than the engine's sort)
        order_by = "" if _single_numeric_key(src, group_cols) else f" ORDER BY {', '.join(key_names)}"
        sql = f"SELECT {select} FROM {inner_sql} GROUP BY {', '.join(key_names)}{order_by}"
        return _Scan(sql, [src.query_arrays(sql)], {0: 0}, {}, key_names, keys_of)
    sets, set_of, pair_set = _grouping(keys_of)
    listed = ", ".join("(" + ", ".join(key_names[i] for i in s) + ")" for s in sets)
    sql = (f"SELECT grouping_id({', '.join(key_names)}) AS gid, {select} FROM {inner_sql} "
           f"GROUP BY GROUPING SETS ({listed})")
    got = src.query_arrays(sql)
    gid = np.asarray(got.pop("gid"), dtype=np.int64)
    parts = []
    for s in sets:
        rows = np.flatnonzero(gid == _grouping_id(s, len(key_names)))
        parts.append({k: v[rows] for k, v in got.items()})
    return _Scan(sql, parts, set_of, pair_set, key_names, keys_of)


def _floats(part: dict[str, np.ndarray], alias: str) -> np.ndarray:
    return np.asarray(part[alias], dtype=float)


def _blocks(names: list[list[str]], part: dict[str, np.ndarray]) -> np.ndarray:
    """Per row of ``part``, the (a, b) block of the sums named ``names``."""
    a, b = len(names), len(names[0]) if names else 0
    out = np.empty((int(np.asarray(part["n"]).shape[0]), a, b))
    for i in range(a):
        for j in range(b):
            out[:, i, j] = _floats(part, names[i][j])
    return out


def _run_reduction(spec: ModelSpec, src: _source.Source, design: Any, coef_names: list[str], x_sql: list[str],
                   z_sqls: list[list[str]], y_raw: str, off_sql: str | None, w_sql: str, group_cols: list[str],
                   predictors: list[str], categorical: list[str]) -> BoundSpec:
    terms = spec.group_terms
    c = _columns(spec, src, coef_names, x_sql, z_sqls, y_raw, off_sql, w_sql)
    ag = _aggregates(spec, src, c, predictors, categorical)
    sc = _scan(src, terms, group_cols, c, ag)
    parts, set_of = sc.parts, sc.set_of
    first = parts[set_of[0]]  # every row once: the totals are sums over its levels
    N = int(_floats(first, "n").sum())
    if N == 0:
        raise DataError("The data have no rows.", hint="Pass a table with at least two groups of observations.")
    suspect = any(float(_floats(first, a).sum()) < N for a in ag.present + ag.design_counts)
    suspect = suspect or any(not np.all(np.isfinite(_floats(part, a))) for part in parts for a in ag.sums.aggs
                             if a != "n")
    if ag.se_min is not None:
        suspect = suspect or not float(np.nanmin(_floats(first, ag.se_min))) > 0
    if suspect:
        _diagnose(spec, src, c.base, coef_names, c.p, c.y_at, c.one_at, ag.numbers, categorical)
    levels: list[list[str]] = []
    for k, term in enumerate(terms):  # each factor's rows in the order of its labels, checked
        labels, parts[set_of[k]] = _factor_levels(src, term, parts[set_of[k]], sc.factor_keys(k))
        levels.append(labels)
    st, simple = _statistics(src, terms, c, ag, sc, levels, w_sql, N)

    def total(alias: str) -> float:
        return float(_floats(parts[set_of[0]], alias).sum())

    p, pilot = c.p, c.pilot
    x_off = np.array([total(ag.x1[k]) / N for k in range(p)])  # means about the pilot
    x_mean = np.array([pilot.get(k, 0.0) for k in range(p)]) + x_off
    x_var = np.array([max(total(ag.x2[k]) / N - x_off[k] ** 2, 0.0) for k in range(p)])
    XtWX, gram, i0 = st.XtWX, st.XtWX, c.x_icpt
    if i0 is not None and XtWX[i0, i0] > 0:  # collinearity judged on centred columns (a column kept as
        S = XtWX[:, i0]                      # it is, a varying slope, may lie far from 0)
        gram = XtWX - np.outer(S, S) / S[i0]
        gram[i0, i0] = S[i0]
    _check_columns_from_sums(coef_names, x_mean, x_var, gram)
    for k, (term, fs) in enumerate(zip(terms, ag.factors)):
        zw = np.column_stack([_floats(parts[set_of[k]], a) for a in fs.zw])
        _check_slopes_from_sums(term, zw, st.ZtWZ[k], _floats(parts[set_of[k]], ag.sw))
    y_off = total(ag.y1) / N  # about the pilot
    y_mean = pilot.get(-1 if c.has_offset else c.y_at, 0.0) + y_off
    y_var = max(total(ag.y2) / N - y_off**2, 0.0)
    # E[y²] − E[y]² about the pilot: a constant column leaves only the round-off of its (tiny) offset
    check_constant_outcome(spec, y_var <= 1e-12 * y_off**2, y_mean)
    scale = math.sqrt(y_var + (total(ag.se2) / N if ag.se2 is not None else 0.0))
    if not scale > 0:
        scale = float(max(abs(y_mean), 1.0))
    raws = []
    for k, (term, fs) in enumerate(zip(terms, ag.factors)):
        q = term.q
        ones = [z_sqls[k][a] == "1.0" for a in range(q)]
        z_mean = [1.0 if ones[a] else total(fs.z1[a]) / N for a in range(q)]
        z_sd = np.array([1.0 if ones[a] else math.sqrt(max(total(fs.z2[a]) / N - z_mean[a] ** 2, 0.0))
                         for a in range(q)])
        warn_far_slopes(term, z_mean, z_sd.tolist())
        raws.append(RawBlock(term, np.zeros((0, q)), np.zeros(0, dtype=np.int64), levels[k], z_sd,
                             counts=st.n[k].astype(np.int64), ZtWZ=st.ZtWZ[k]))
    x_means = {name: float(x_mean[i]) for i, name in enumerate(coef_names) if name != "Intercept"}
    x_sds = {name: float(math.sqrt(x_var[i])) for i, name in enumerate(coef_names) if name != "Intercept"}
    reduction = Reduction(simple=simple, block=st.factor(0), n_obs=N, source=src.source, engine=src.engine,
                          sql=sc.sql.replace("{rows}", src.relation), sparse=st,
                          returned=sum(int(np.asarray(part["n"]).shape[0]) for part in parts))
    return bind_parts(spec, y=np.zeros(0), X=np.zeros((0, p)), coef_names=coef_names, weights=np.zeros(0),
                      offset=np.zeros(0), trials=None, blocks=raws, center=y_mean, scale=scale, x_means=x_means,
                      x_sds=x_sds, design=design, reduced=reduction)


def _statistics(src: _source.Source, terms: tuple[GroupTerm, ...], c: _Columns, ag: _Aggregates, sc: _Scan,
                levels: list[list[str]], w_sql: str, N: int) -> tuple[SparseStats, Reduced | None]:
    """The sums of the query's rows as :class:`SparseStats` (and :class:`Reduced` for ``(1 | g)``), moved
    from the pilot to the weighted means (:func:`_recentre`)."""
    parts, set_of, p = sc.parts, sc.set_of, c.p

    def col(alias: str, k: int = 0) -> np.ndarray:
        return _floats(parts[set_of[k]], alias)

    def total(alias: str) -> float:
        return float(col(alias).sum())

    if ag.XX is not None:
        XtWX = np.array([[total(ag.XX[k][m]) for m in range(p)] for k in range(p)]).reshape(p, p)
    else:
        XtWX = _totals_xx(src, c.cols_sql[:p], w_sql, c.one_at, p)
    XtWy = np.array([total(a) for a in ag.Xy])
    yWy = total(ag.yy)
    sum_log_w = total(ag.lw) if ag.lw is not None else 0.0
    K = len(terms)
    n = [col("n", k) for k in range(K)]
    ZtWZ = [_blocks(fs.ZZ, parts[set_of[k]]) for k, fs in enumerate(ag.factors)]
    ZtWX = [_blocks(fs.ZX, parts[set_of[k]]) for k, fs in enumerate(ag.factors)]
    ZtWy = [np.column_stack([col(a, k) for a in fs.Zy]) for k, fs in enumerate(ag.factors)]
    sy2 = col(ag.yy)
    shift = Shift()
    if c.x_icpt is not None:  # from the pilot to the weighted means: the same shift as the in-memory pass
        cx = np.array([c.pilot.get(k, 0.0) for k in range(p)])
        XtWX, XtWy, yWy, d, dy, shift = _recentre(cx, c.pilot.get(c.y_at, 0.0), [k for k in range(p)
                                                  if k in c.movable], c.x_icpt, XtWX, XtWy, yWy)
        if terms[0].exprs[0] == "Intercept":  # Σw(y − c − δ)² per group, from Σw(y − c) of the intercept term
            sy2 = sy2 - 2.0 * dy * ZtWy[0][:, 0] + dy * dy * col(ag.sw)
        zw = [np.column_stack([col(a, k) for a in fs.zw]) for k, fs in enumerate(ag.factors)]
        ZtWX = [B - z[:, :, None] * d[None, None, :] for B, z in zip(ZtWX, zw)]
        ZtWy = [B - dy * z for B, z in zip(ZtWy, zw)]
    pairs: dict[tuple[int, int], PairStats] = {}
    for (k, l), s in sc.pair_set.items():
        part = parts[s]
        a = _level_index([parts[set_of[k]][name] for name in sc.factor_keys(k)],
                         [part[name] for name in sc.factor_keys(k)])
        b = _level_index([parts[set_of[l]][name] for name in sc.factor_keys(l)],
                         [part[name] for name in sc.factor_keys(l)])
        order = np.argsort(a * len(levels[l]) + b)  # by (a, b), as sparse_stats gives them (lexsort is slower)
        pairs[(k, l)] = PairStats(a=a[order], b=b[order], n=_floats(part, "n")[order],
                                  ZtWZ=_blocks(ag.pairs[(k, l)], part)[order])
    st = SparseStats(n=tuple(n), ZtWZ=tuple(ZtWZ), ZtWX=tuple(ZtWX), ZtWy=tuple(ZtWy), pairs=pairs, XtWX=XtWX,
                     XtWy=XtWy, yWy=yWy, sum_log_w=sum_log_w, n_obs=N, shift=shift)
    simple = None
    if K == 1 and terms[0].exprs == ("Intercept",):
        simple = Reduced(n=n[0], a=col(ag.sw), sy=ZtWy[0][:, 0], u=ZtWX[0][:, 0, :], sy2=sy2, XtWX=XtWX, XtWy=XtWy,
                         yWy=yWy, sum_log_w=sum_log_w, n_obs=N, shift=shift)
    return st, simple


def _factor_levels(src: _source.Source, term: GroupTerm, got: dict[str, np.ndarray], key_names: list[str]
                   ) -> tuple[list[str], dict[str, np.ndarray]]:
    """One factor's labels in the in-memory path's order and its rows put in that order; raises for a
    missing or blank label, or a single level."""
    cols = list(term.factor_columns)
    n = np.asarray(got["n"], dtype=float)
    grouped = _group_labels(src, cols, got, key_names)
    if grouped is None:
        missing = int(n[_null_keys(got, key_names)].sum())
        rows = _bad_rows(src, " OR ".join(f"{src.quote(c)} IS NULL" for c in cols))
        name = term.factor
        raise DataError(f"Grouping column '{name}' has {missing} missing label{'s' if missing != 1 else ''} "
                        f"({format_rows(rows)}).", hint="Drop those rows or give them a label.", column=name, rows=rows)
    labels, order = grouped
    src.check_text(labels)  # (Spark decodes bytes that are not UTF-8 as U+FFFD)
    if not np.array_equal(order, np.arange(order.size)):  # the query's rows in the labels' order
        got, n = _permuted(got, order), n[order]
    numeric_key = _single_numeric_key(src, cols)
    blank = [] if numeric_key else [i for i, lv in enumerate(labels) if not lv or (lv[0].isspace() and not lv.strip())]
    if blank:
        rows = _bad_rows(src, " OR ".join(f"trim(CAST({src.quote(c)} AS VARCHAR)) = ''" if src.dialect == "duckdb"
                                          else f"trim(CAST({src.quote(c)} AS STRING)) = ''" for c in cols))
        count = int(n[blank].sum())
        raise DataError(f"Grouping column '{cols[0]}' has {count} missing label{'s' if count != 1 else ''} "
                        f"({format_rows(rows)}).", hint="Drop those rows or give them a label.", column=cols[0],
                        rows=rows)
    J = len(labels)
    if J < 2:
        shown = ", ".join(f"'{lv}'" for lv in labels[:5])
        raise DataError(f"Grouping column '{term.factor}' has only {J} group{'s' if J != 1 else ''} ({shown}); "
                        "pooling needs at least 2.", hint=f"Fit a model without the (1 | {term.factor}) term, or add "
                        "groups.", column=term.factor, rows=[])
    return labels, got


def _level_index(levels: list[np.ndarray], rows: list[np.ndarray]) -> np.ndarray:
    """The position of each row's key (one array per key column) among a factor's level keys."""
    def plain(v: np.ndarray) -> np.ndarray:
        return np.asarray(np.ma.getdata(v))

    if len(levels) == 1:
        idx = pd.Index(plain(levels[0])).get_indexer(plain(rows[0]))
    else:
        idx = pd.MultiIndex.from_arrays([plain(v) for v in levels]).get_indexer(
            pd.MultiIndex.from_arrays([plain(v) for v in rows]))
    if np.any(idx < 0):  # every pair's levels are levels of the factors (the same rows, grouped twice)
        raise DataError("The engine gave a level pair whose level it did not give.",
                        hint="Report this as a bug in poolwise.")
    return np.asarray(idx, dtype=np.int64)


def _check_slopes_from_sums(term: GroupTerm, zw: np.ndarray, ZtWZ: np.ndarray, wtot: np.ndarray) -> None:
    """A varying slope constant within every group (as :func:`poolwise.spec._check_slopes`), from the sums."""
    for a, e in enumerate(term.exprs):
        if e == "Intercept":
            continue
        swz, swzz = zw[:, a], ZtWZ[:, a, a]
        with np.errstate(all="ignore"):
            within = swzz / wtot - (swz / wtot) ** 2
        scale_z = max(float(np.nanmax(np.abs(swzz / wtot))), 1e-300)
        if np.all(within <= 1e-12 * scale_z):
            raise DataError(
                f"The slope '{e}' in {term} is constant within every group of '{term.factor}', so a slope per "
                "group cannot be estimated.",
                hint=f"Enter '{e}' as a common (group-level) predictor instead of a varying slope.", column=e)


def _diagnose(spec: ModelSpec, src: _source.Source, base: list[str], coef_names: list[str], p: int, y_at: int,
              one_at: int | None, numbers: list[str], categorical: list[str]) -> None:
    """Find what made the main query's sums or counts wrong, and raise its error (a second scan).

    The checks run in the in-memory path's order: missing values of each column, then infinite
    ones, missing categorical values, non-positive standard errors, then non-finite design
    columns (a transform outside its domain); the first that fails raises, naming the rows.
    """
    checks: list[tuple[str, str, str]] = []  # (column, condition on the raw rows, what)
    for name in numbers:
        checks.append((name, f"({_num(src, name)} IS NULL OR isnan({_num(src, name)}))", "missing"))
    for name in numbers:
        checks.append((name, f"(abs({_num(src, name)}) = {_inf()})", "infinite"))
    for v in categorical:
        checks.append((v, f"{src.quote(v)} IS NULL", "missing"))
    for name in (spec.se, spec.weights):
        if name:
            checks.append((name, f"{_num(src, name)} <= 0", "positive"))
    for i, expr in enumerate(base):
        if i != one_at:
            checks.append((str(i), _bad_number(f"({expr})"), "design"))
    sums = ", ".join(f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END) AS b{i}" for i, (_, cond, _) in enumerate(checks))
    got = src.query_arrays(f"SELECT {sums} FROM {{rows}}")
    for i, (column, cond, what) in enumerate(checks):
        count = int(np.nansum(np.asarray(got[f"b{i}"], dtype=float)))
        if not count:
            continue
        rows = _bad_rows(src, cond)
        plural = "s" if count != 1 else ""
        if what == "positive":
            raise DataError(f"Column '{column}' must be positive but has {count} value{plural} <= 0 "
                            f"({format_rows(rows)}).", hint="Drop those rows or correct the values; they must be "
                            "greater than 0.", column=column, rows=rows)
        if what == "design":
            k = int(column)
            name = coef_names[k] if k < p else ("the outcome less the offset" if k == y_at else
                                                f"the group term column {base[k]}")
            raise DataError(f"The design column {name} is not finite on {count} row{plural} ({format_rows(rows)}).",
                            hint="A transform such as log(x) needs x > 0; an offset such as log(exposure) needs "
                                 "exposure > 0.", rows=rows)
        hint = "Drop or impute them before fitting." if what == "missing" else "Remove or cap them before fitting."
        raise DataError(f"Column '{column}' has {count} {what} value{plural} ({format_rows(rows)}).", hint=hint,
                        column=column, rows=rows)
    raise DataError("The sums over the rows are not finite, though every value is.",
                    hint="Rescale columns of very large magnitude before fitting.")


def _null_keys(got: dict[str, np.ndarray], key_names: list[str]) -> np.ndarray:
    mask = np.zeros(got[key_names[0]].shape[0], dtype=bool)
    for k in key_names:
        v = got[k]
        if np.ma.isMaskedArray(v):
            mask |= np.ma.getmaskarray(v)
        else:
            mask |= pd.isna(pd.Series(v)).to_numpy()
    return mask


def _single_numeric_key(src: _source.Source, group_cols: list[str]) -> bool:
    """One grouping column of numbers or booleans: the reduction query leaves its order to NumPy."""
    return len(group_cols) == 1 and src.kinds[group_cols[0]] in ("number", "boolean")


def _permuted(got: dict[str, np.ndarray], order: np.ndarray) -> dict[str, np.ndarray]:
    """Every column of the query's result in ``order``: in place through one scratch buffer per
    dtype where the arrays allow it (a copy of 10⁶ groups × many columns costs fresh memory)."""
    out: dict[str, np.ndarray] = {}
    scratch: dict[np.dtype, np.ndarray] = {}
    for k, v in got.items():
        if type(v) is np.ndarray and v.flags.writeable and v.flags.c_contiguous and v.ndim == 1:
            buf = scratch.get(v.dtype)
            if buf is None:
                buf = scratch[v.dtype] = np.empty_like(v)
            np.take(v, order, out=buf)
            v[...] = buf
            out[k] = v
        else:
            out[k] = v[order]
    return out


def _group_labels(src: _source.Source, group_cols: list[str], got: dict[str, np.ndarray],
                  key_names: list[str]) -> tuple[list[str], np.ndarray] | None:
    """Group labels in the in-memory path's order, and the order of the query's rows that gives it
    (the engine's ``ORDER BY`` of several key columns, or of text, may differ); ``None`` when a key
    is missing."""
    if _null_keys(got, key_names).any():
        return None
    keys = [np.ma.getdata(got[k]) if np.ma.isMaskedArray(got[k]) else got[k] for k in key_names]
    if _single_numeric_key(src, group_cols):  # the query has no ORDER BY
        order = np.argsort(keys[0], kind="stable").astype(np.int64)
        return _labels_of(keys[0][order]), order
    parts = [_labels_of(values) for values in keys]
    labels = parts[0] if len(parts) == 1 else [":".join(t) for t in zip(*parts)]  # ordered as the strings sort
    if all(a <= b for a, b in zip(labels, labels[1:])):  # the engine's order already (text keys, one column)
        return labels, np.arange(len(labels))
    order = sorted(range(len(labels)), key=lambda i: labels[i])
    return [labels[i] for i in order], np.asarray(order, dtype=np.int64)


def _labels_of(values: np.ndarray) -> list[str]:
    """:func:`poolwise.data._label` of each key, vectorized where the kind allows."""
    if values.dtype.kind in "iu":
        return list(map(str, values.tolist()))  # integers: their decimal digits (faster than astype(str))
    if values.dtype.kind == "O":
        out = values.tolist()
        if all(type(x) is str for x in out):
            return out
        return [_data._label(x) for x in out]
    return [_data._label(x) for x in values.tolist()]


def _totals_xx(src: _source.Source, x_sql: list[str], w_sql: str, one_at: int | None, p: int) -> np.ndarray:
    """X'WX over every row, in its own query (used when p is large)."""
    exprs = [f"SUM(({w_sql}) * ({x_sql[k]}) * ({x_sql[m]})) AS s{k}_{m}" for k in range(p) for m in range(k, p)]
    got = src.query_arrays(f"SELECT {', '.join(exprs)} FROM {{rows}}")
    out = np.empty((p, p))
    for k in range(p):
        for m in range(k, p):
            out[k, m] = out[m, k] = float(np.asarray(got[f"s{k}_{m}"], dtype=float)[0])
    del one_at
    return out


def _lit(v: float) -> str:
    """A float as a DOUBLE literal both DuckDB and Spark read exactly (exponent form)."""
    return f"({float(v):.17e})"


def _pilot(src: _source.Source, exprs: dict[int, str], rows: int = 1000) -> tuple[dict[int, float], dict[int, float]]:
    """A shift per column from a cheap first pass: the mean of the first ``rows`` rows' finite values
    (0 where there are none), and their largest magnitude (for :func:`poolwise.spec.check_scale`)."""
    if not exprs:
        return {}, {}
    keys = list(exprs)
    cells = ", ".join(f"{exprs[k]} AS v{i}" for i, k in enumerate(keys))
    aggs = []
    for i in range(len(keys)):
        ok = f"CASE WHEN NOT {_bad_number(f'v{i}')} THEN v{i} END"
        aggs.append(f"AVG({ok}) AS m{i}, MAX(abs({ok})) AS a{i}")
    got = src.query_arrays(f"SELECT {', '.join(aggs)} FROM (SELECT {cells} FROM {{rows}} LIMIT {rows}) AS t")

    def value(name: str) -> float:
        v = got[name]
        if np.ma.isMaskedArray(v) and np.ma.getmaskarray(v).all():
            return 0.0
        x = float(np.asarray(np.ma.getdata(v), dtype=float)[0])
        return x if math.isfinite(x) else 0.0

    return ({k: value(f"m{i}") for i, k in enumerate(keys)}, {k: value(f"a{i}") for i, k in enumerate(keys)})


def _check_pilot_scale(largest: dict[int, float], coef_names: list[str], p: int, y_at: int, outcome: str) -> None:
    """Columns too large or small for float64 sums of squares (judged on the pilot's rows)."""
    for k, v in largest.items():
        if k < p:
            check_scale(coef_names[k], v)
        elif k in (y_at, -1):
            check_scale(outcome, v)


def _recentre(cx: np.ndarray, cy: float, moved: list[int], i0: int, XtWX: np.ndarray, XtWy: np.ndarray, yWy: float
              ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, float, Shift]:
    """Sums about the pilot (c_x, c_y) → sums about the weighted means c + δ, δ = Σw(v − c)/Σw.

    With S = Σw(x − c) (column i0 of X'WX) and δ small beside the spread, Σw(x−c−δ)(x'−c'−δ') =
    X'WX − Sδ' − δS' + Wδδ' and so on for the other sums; per group (the caller's part)
    Σw z(x − c − δ) = Z'WX − δ·Σwz and Σw z(y − c − δ_y) = Z'Wy − δ_y·Σwz.  Returns the totals,
    δ (for X's columns), δ_y and the shift.
    """
    W = float(XtWX[i0, i0])
    if not W > 0:
        return XtWX, XtWy, yWy, np.zeros(cx.size), 0.0, Shift(y=cy, x=cx, intercept=i0)
    S = XtWX[:, i0].copy()
    d = np.zeros(cx.size)
    d[moved] = S[moved] / W
    Sy = float(XtWy[i0])
    dy = Sy / W
    XtWX = XtWX - np.outer(S, d) - np.outer(d, S) + W * np.outer(d, d)
    XtWX = 0.5 * (XtWX + XtWX.T)
    XtWy = XtWy - dy * S - d * Sy + W * d * dy
    yWy = yWy - 2.0 * dy * Sy + W * dy * dy
    return XtWX, XtWy, float(yWy), d, dy, Shift(y=cy + dy, x=cx + d, intercept=i0)


def _check_columns_from_sums(names: list[str], mean: np.ndarray, var: np.ndarray, XtWX: np.ndarray) -> None:
    """Constant and collinear predictors, from the totals (as :func:`poolwise.spec._check_design`).

    The variances come from sums about a pilot shift, so they are accurate to the data's spread,
    not to its offset: a column is constant only when its spread is below float64's resolution."""
    for i, name in enumerate(names):
        if name != "Intercept" and var[i] <= 1e-28 * max(mean[i] ** 2, 1e-300):
            raise DataError(
                f"Predictor '{name}' is constant (every row is {mean[i]:.4g}), so its coefficient cannot be told "
                "apart from the intercept.", hint="Remove it from the formula.", column=name)
    p = len(names)
    if p < 2:
        return
    d = np.sqrt(np.maximum(np.diag(XtWX), 1e-300))
    G = XtWX / np.outer(d, d)
    for k in range(1, p):
        A, b = G[:k, :k], G[:k, k]
        coef = np.linalg.lstsq(A, b, rcond=None)[0]
        resid = G[k, k] - float(b @ coef)
        if resid < 1e-12:
            others = [names[j] for j in range(k) if abs(coef[j]) > 1e-8]
            raise DataError(
                f"Predictor '{names[k]}' is a perfect linear combination of {', '.join(repr(o) for o in others)}; "
                "the coefficients cannot be separated.", hint=f"Drop '{names[k]}' or one of the others from the formula.",
                column=names[k])


# ----------------------------------------------------------------------------------------------
# binomial and poisson rows: counts per (group, covariate pattern), inside the engine

#: families whose likelihood is unchanged (up to a constant) when rows of one pattern are merged
COUNT_FAMILIES = ("bernoulli", "binomial", "poisson")


def count_reason(spec: ModelSpec) -> str | None:
    """``None`` when the rows can be merged into counts per (group, covariate pattern), else why not."""
    if spec.fam.name not in COUNT_FAMILIES:
        return f"the {spec.fam.name} family is fitted from the rows"
    if spec.weights:
        return f"the prior weights ({spec.weights}) apply to each row"
    return None


def _strip_offsets(text: str) -> tuple[str, list[str]]:
    """``text`` without its ``offset(…)`` terms, and those terms."""
    out, found, i = "", [], 0
    for m in re.finditer(r"offset\(", text):
        if m.start() < i:
            continue
        depth, j = 0, m.end() - 1
        while j < len(text):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                break
            j += 1
        found.append(text[m.start():j + 1])
        out += text[i:m.start()]
        i = j + 1
    out += text[i:]
    cleaned = re.sub(r"\+\s*(?=\+|$)", "", out).strip()
    cleaned = re.sub(r"^\s*\+", "", cleaned).strip()
    cleaned = re.sub(r"\+\s*\+", "+", cleaned).strip()
    return (cleaned or "1"), found


def offset_terms(common: str) -> list[str]:
    """The ``offset(…)`` terms of a formula's common part, as written."""
    return _strip_offsets(common)[1]


def bind_counts(spec: ModelSpec, src: _source.Source) -> tuple[BoundSpec, str]:
    """Merge the rows of a bernoulli, binomial or poisson model into counts per (group, pattern).

    Rows with equal grouping labels and equal predictor values carry the same linear predictor,
    so one ``GROUP BY`` over those columns sums them exactly: binomial successes and trials
    (bernoulli rows become binomial rows with their number as the trials), poisson counts and
    exposures (Σ exp(offset): the offset becomes ``offset(log(pw_exposure))``).  The likelihood
    of the merged rows equals the rows' likelihood up to a constant, so the posterior is the
    same; the default priors and group sizes are computed as for the rows they stand for.  With
    discrete predictors the merged table is small whatever the number of rows.  The checks of
    the outcome's support and of missing values run in the same query, naming the rows.

    Returns
    -------
    The bound spec of the merged rows (its formula names the columns ``pw_y`` and
    ``pw_trials``/``pw_exposure``) and a note saying how many rows became how many patterns.

    Raises
    ------
    DataError, FormulaError
        As :meth:`poolwise.spec.ModelSpec.bind` for the rows.
    SpecError
        For another family (:func:`count_reason`).
    """
    why = count_reason(spec)
    if why is not None:
        raise SpecError(f"The rows of this model cannot be merged into counts: {why}.", option="family")
    check_formula_columns(spec, src.columns)
    fam, q_ = spec.fam, src.quote
    group_cols = sorted({c for t in spec.group_terms for c in t.factor_columns})
    common_wo, offset_terms = _strip_offsets(spec.common)
    used = " ".join([common_wo] + [e for t in spec.group_terms for e in t.exprs])
    offset_only = [v for v in spec.variables if re.search(rf"(?<![\w.]){re.escape(v)}(?![\w.])",
                                                        " ".join(offset_terms))
                   and not re.search(rf"(?<![\w.]){re.escape(v)}(?![\w.])", used)]
    merge_exposure = fam.name == "poisson"
    skip = {*spec.response_columns, *group_cols}
    pattern = [v for v in spec.variables if v not in skip and not (merge_exposure and v in offset_only)]
    counted = [spec.outcome] + ([spec.trials] if spec.trials else []) + list(spec.count_columns)
    for v in counted:
        if src.kinds[v] not in ("number", "boolean"):
            raise _not_numeric(src, v)
    wrapped = set(re.findall(r"\bC\(\s*([A-Za-z_.][\w.]*)", spec.rhs))  # categorical by the user's C()
    for v in pattern:
        if src.kinds[v] == "text" and v not in wrapped:
            _check_text_numbers(src, v, _distinct(src, v))
    y, n_ = _num(src, spec.outcome), (_num(src, spec.trials) if spec.trials else None)
    fails = spec.failures.sql(q_) if spec.failures is not None else None  # cbind(successes, failures)
    if fails is not None:
        n_ = f"({y} + {fails})"
    conds: list[tuple[str, str, str]] = []  # (column, condition, message tail)
    for v in counted + [c for c in pattern if src.kinds[c] != "text"]:
        conds.append((v, f"({_num(src, v)} IS NULL OR isnan({_num(src, v)}))", "missing value"))
    for v in [spec.outcome] + [c for c in pattern if src.kinds[c] != "text"]:
        conds.append((v, f"(abs({_num(src, v)}) = {_inf()})", "infinite value"))
    for v in [c for c in pattern if src.kinds[c] == "text"]:
        conds.append((v, f"{q_(v)} IS NULL", "missing value"))
    for c in group_cols:
        blank = f" OR trim(CAST({q_(c)} AS {'STRING' if src.dialect == 'spark' else 'VARCHAR'})) = ''"
        conds.append((c, f"({q_(c)} IS NULL{blank if src.kinds[c] == 'text' else ''})", "missing label"))
    whole = f"{y} <> FLOOR({y})"
    if fam.name == "bernoulli":
        conds.append((spec.outcome, f"({y} <> 0 AND {y} <> 1)", "must be 0 or 1"))
    elif fam.name == "poisson":
        conds.append((spec.outcome, f"({y} < 0)", "must be non-negative"))
        conds.append((spec.outcome, f"({whole})", "must hold whole numbers"))
    elif fails is not None:
        assert spec.failures is not None
        conds.append((spec.outcome, f"({y} < 0 OR {whole})", "must be whole numbers >= 0"))
        conds.append((spec.failures.text, f"({fails} < 0 OR {fails} <> FLOOR({fails}))", "failures"))
        conds.append((spec.failures.text, f"({n_} < 1)", "no trials"))
    else:
        assert n_ is not None
        conds.append((str(spec.trials), f"({n_} < 1 OR {n_} <> FLOOR({n_}))", "must be whole numbers >= 1"))
        conds.append((spec.outcome, f"({y} < 0 OR {whole})", "must be whole numbers >= 0"))
        conds.append((spec.outcome, f"({y} > {n_})", f"must not exceed trials ({spec.trials})"))
    exposure = None
    if merge_exposure:
        if offset_terms:
            predictors = [v for v in spec.variables if v not in skip]
            levels = {v: _levels(src, v) for v in predictors if src.kinds[v] == "text"}
            frame = _skeleton(spec, src, levels, predictors)
            frame[spec.outcome] = np.arange(len(frame), dtype=float)
            design = _design(f"{spec.outcome} ~ {' + '.join(offset_terms)}", frame, f"formula {spec.formula}")
            offs = [s_ for name, s_ in sql_columns(design.common.terms, spec.formula, src.dialect)
                    if name.startswith("offset(")]
            total = f"({' + '.join(f'({o})' for o in offs)})"
            exposure = f"EXP({total})"
            conds.append(("offset", _bad_number(total), "non-finite offset"))
        else:
            exposure = "1.0"
    keys = [q_(c) for c in group_cols + pattern]
    aggs = [f"SUM({y}) AS pw_y", "COUNT(*) AS pw_rows"]
    if fam.name != "poisson":
        aggs.append(f"SUM({n_}) AS pw_trials" if n_ is not None else "COUNT(*) AS pw_trials")
    if exposure is not None:
        aggs.append(f"SUM({exposure}) AS pw_exposure")
    aggs += [f"SUM(CASE WHEN {c} THEN 1 ELSE 0 END) AS pw_bad{i}" for i, (_, c, _) in enumerate(conds)]
    sql = f"SELECT {', '.join(keys + aggs)} FROM {{rows}} GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}"
    frame = src.query(sql)
    for c in group_cols + pattern:
        if src.kinds[c] == "text":
            src.check_text(frame[c].tolist())  # (Spark decodes bytes that are not UTF-8 as U+FFFD)
    n_rows = int(frame["pw_rows"].sum()) if len(frame) else 0
    if n_rows == 0:
        raise DataError("The data have no rows.", hint="Pass a table with at least two groups of observations.")
    for i, (column, cond, what) in enumerate(conds):
        count = int(pd.to_numeric(frame[f"pw_bad{i}"]).fillna(0).sum())
        if count:
            rows = _bad_rows(src, cond)
            plural = "s" if count != 1 else ""
            if what.endswith(("value", "label")):
                hint = ("Remove or cap them before fitting." if what.startswith("infinite") else
                        "Drop those rows or give them a label." if what.endswith("label") else
                        "Drop or impute them before fitting.")
                where = f"Grouping column '{column}'" if what.endswith("label") else f"Column '{column}'"
                raise DataError(f"{where} has {count} {what}{plural} ({format_rows(rows)}).", hint=hint,
                                column=column, rows=rows)
            if column == "offset":
                raise DataError(f"The offset is not finite on {count} row{plural} ({format_rows(rows)}).",
                                hint="An offset such as log(exposure) needs exposure > 0.", rows=rows)
            if what in ("failures", "no trials"):
                assert spec.failures is not None
                cb = f"cbind({spec.outcome}, {column})"
                raise DataError(
                    f"The failures {column} of {cb} are negative or not whole numbers on {count} row{plural} "
                    f"({format_rows(rows)})." if what == "failures" else
                    f"{cb} has {count} row{plural} with no trials (successes + failures = 0) ({format_rows(rows)}).",
                    hint="The failures are counts: check the columns (successes cannot exceed the number of trials)."
                    if what == "failures" else "A row of no trials carries no information: drop it.",
                    column=spec.failures.columns[0], rows=rows)
            raise DataError(f"Column '{column}' {what} for the {fam.name} family on {count} row{plural} "
                            f"({format_rows(rows)}).", hint="Check the outcome (and trials) columns.", column=column,
                            rows=rows)
    frame = frame.drop(columns=[f"pw_bad{i}" for i in range(len(conds))])
    # the design's columns counted (as the merged spec's bind would) but named in the user's formula
    wrapped = set(re.findall(r"\bC\(\s*([A-Za-z_.][\w.]*)", used))
    check_design_size(spec, {v: int(frame[v].nunique()) for v in pattern if src.kinds[v] == "text" or v in wrapped},
                      rows=len(frame))
    rhs_terms = spec.rhs
    if merge_exposure:
        rhs_wo, _ = _strip_offsets(spec.rhs)
        rhs_terms = f"{rhs_wo} + offset(log(pw_exposure))"
        lhs = "pw_y"
        family = "poisson"
    else:
        lhs = "pw_y | trials(pw_trials)"
        family = "binomial"
    merged = spec.replace(formula=f"{lhs} ~ {rhs_terms}", family=family)
    bound = dataclasses.replace(merged.bind(_data.read_table(frame), frequency="pw_rows"), given=spec)
    notes = integer_notes(spec, bound, frame)
    if len(frame) < n_rows:  # nothing to say when no two rows merged
        notes.insert(0, f"{n_rows:,} rows merged inside {src.engine} ({src.source}) into {len(frame):,} rows of counts "
                        "per group and covariate pattern (the same posterior); PSIS-LOO and predictions of responses "
                        "are per merged row.")
    return bound, " ".join(notes)


def bind_data(spec: ModelSpec, data: Any, *, method: str, engine: str | None = None, spark: Any = None
              ) -> tuple[BoundSpec, str | None]:
    """Bind ``spec`` to ``data``: in memory, or reduced inside DuckDB/Spark when the model allows.

    Files, globs, DuckDB relations and Spark DataFrames of a gaussian model (any grouping
    factors), fitted by ``method="exact"`` or ``"empirical"``, are reduced by one query
    (:func:`poolwise.query.bind_source`); bernoulli, binomial and poisson rows are merged into
    counts per (group, covariate pattern) by one query (:func:`poolwise.query.bind_counts`);
    for other models only the needed columns are loaded.

    Returns
    -------
    The bound spec, and a note for the fit when the columns were loaded (``None`` otherwise).
    """
    if isinstance(data, _data.Table):
        return _in_memory(spec, data)
    if engine is None and spark is None and not _source.is_scannable(data):
        return _in_memory(spec, _data.read_table(data))
    src = _source.scan(data, engine=engine, spark=spark)
    why = query_reason(spec) or (None if method in ("exact", "empirical") else
                                 f"method={method!r} works on the rows")
    if why is None:
        bound = bind_source(spec, src)
        return bound, " ".join(_source_integer_notes(spec, bound, src)) or None
    if count_reason(spec) is None:  # binomial/poisson: counts per (group, covariate pattern)
        return bind_counts(spec, src)
    if spec.weights and spec.weights not in src.columns:
        raise _unknown_weights(spec, src.columns)
    needed = list(dict.fromkeys([*spec.variables, *([spec.weights] if spec.weights else [])]))
    table = src.load(needed)
    bound = spec.bind(table)
    note = (f"Loaded {bound.n_obs:,} rows of {len(needed)} columns ({', '.join(needed)}) "
            f"from {src.source}: {why}, so the rows are not reduced inside {src.engine}.")
    return bound, " ".join([note, *integer_notes(spec, bound, table.frame)])


def _in_memory(spec: ModelSpec, table: _data.Table) -> tuple[BoundSpec, str | None]:
    """Bind a table in memory, with the notes on integer columns entered as numbers."""
    if spec.weights and spec.weights not in table.columns:
        raise _unknown_weights(spec, table.columns)
    bound = spec.bind(table)
    return bound, " ".join(integer_notes(spec, bound, table.frame)) or None


#: an integer column with at most this many distinct values, entered as a number, gets a note
INTEGER_CODE_LEVELS = 10


def _integer_candidates(spec: ModelSpec, bound: BoundSpec) -> list[str]:
    """The columns :func:`integer_notes` looks at: entered as a common term as they are (not in
    ``C()``, not transformed, not in an interaction) and not varying by group (a varying slope says
    the user means a number), nor a response column."""
    slopes = {e for t in spec.group_terms for e in t.exprs}
    return [v for v in spec.variables if v in bound.coef_names and v not in slopes
            and v not in spec.response_columns and v not in spec.categorical]


def _integer_note(v: str, k: int, where: str = "") -> str:
    return (f"{v} is an integer column with {k} distinct values{where}, fitted as one numeric slope; "
            f"write C({v}) to make it a factor.")


def integer_notes(spec: ModelSpec, bound: BoundSpec, frame: pd.DataFrame) -> list[str]:
    """Notes on integer columns with few distinct values (3 to :data:`INTEGER_CODE_LEVELS`) that
    enter the model as one numeric slope, as they are (cbpp's ``period`` read from a CSV file):
    often a factor coded as numbers.  A 0/1 (two-valued) column is the same model either way,
    and a column in ``C()`` or varying by group (``(1 + x | g)``) says what the user meant: no note."""
    out = []
    for v in _integer_candidates(spec, bound):
        col = frame[v] if v in frame.columns else None
        if col is None or not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            continue
        values = pd.unique(col.dropna())
        k = len(values)
        if 3 <= k <= INTEGER_CODE_LEVELS and bool(np.all(np.floor(values) == values)):
            out.append(_integer_note(v, k))
    return out


#: rows of a file the integer check reads (the first ones: the check is a note, not worth a scan)
INTEGER_CHECK_ROWS = 100_000


def _source_integer_notes(spec: ModelSpec, bound: BoundSpec, src: _source.Source) -> list[str]:
    """:func:`integer_notes` for rows in their engine, from their first :data:`INTEGER_CHECK_ROWS`
    rows (one small query; the note says when it judged from those rows only)."""
    cols = [v for v in _integer_candidates(spec, bound) if src.kinds.get(v) == "number"]
    if not cols:
        return []
    parts = ["COUNT(*) AS n"]
    for i, v in enumerate(cols):
        x = _num(src, v)
        parts += [f"COUNT(DISTINCT {x}) AS k{i}", f"SUM(CASE WHEN {x} <> FLOOR({x}) THEN 1 ELSE 0 END) AS f{i}"]
    inner = ", ".join(src.quote(v) for v in cols)
    got = src.query(f"SELECT {', '.join(parts)} FROM (SELECT {inner} FROM {{rows}} LIMIT {INTEGER_CHECK_ROWS}) AS t")
    row = got.iloc[0]
    partial = int(row["n"]) >= INTEGER_CHECK_ROWS and int(row["n"]) < bound.n_obs
    where = f" in its first {INTEGER_CHECK_ROWS:,} rows" if partial else ""
    return [_integer_note(v, int(row[f"k{i}"]), where) for i, v in enumerate(cols)
            if 3 <= int(row[f"k{i}"]) <= INTEGER_CODE_LEVELS and int(row[f"f{i}"] or 0) == 0]
