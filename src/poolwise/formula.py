"""lme4-style formulas: the outcome and its additions, common terms, group terms.

``parse_formula("y | trials(n) ~ x + offset(log(e)) + (1 + x || g) + (1 | region/county)")``
reads the formula once (through ``formulae`` for the right-hand side) into a
:class:`ParsedFormula`.  brms-style response additions ``se(col)`` and ``trials(col)`` are read
here; ``||`` (uncorrelated group terms) is rewritten to ``|`` with the factor marked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FormulaError

__all__ = ["GroupTerm", "ParsedFormula", "parse_formula", "mark", "sql_columns", "quote_sql", "sql_literal"]

_NAME = r"[A-Za-z_.][\w.]*"


@dataclass(frozen=True)
class GroupTerm:
    """The terms varying over one grouping factor: ``GroupTerm(("Intercept", "x"), "g")``.

    Attributes
    ----------
    exprs
        The varying terms, ``"Intercept"`` first when present.
    factor
        The grouping factor; ``"region:county"`` for a nested level.
    correlated
        ``False`` for ``||`` (independent group terms).
    """

    exprs: tuple[str, ...]
    factor: str
    correlated: bool = True

    def sd_name(self, expr: str = "Intercept") -> str:
        """The population SD's name, ``sd(Intercept|county)``."""
        return f"sd({expr}|{self.factor})"

    def cor_name(self, a: str, b: str) -> str:
        """A correlation's name, ``cor(Intercept,x|g)``."""
        return f"cor({a},{b}|{self.factor})"

    @property
    def var_name(self) -> str:
        """Name of the posterior variable of the group values, ``1|g`` or ``x|g``… (first term)."""
        return f"{'1' if self.exprs[0] == 'Intercept' else self.exprs[0]}|{self.factor}"

    def value_name(self, expr: str) -> str:
        """Posterior variable of one term's group values: ``1|g`` for the intercept, ``x|g``."""
        return f"{'1' if expr == 'Intercept' else expr}|{self.factor}"

    @property
    def factor_columns(self) -> tuple[str, ...]:
        """Data columns that make up the factor (``region:county`` → two columns)."""
        return tuple(self.factor.split(":"))

    @property
    def q(self) -> int:
        return len(self.exprs)

    def __str__(self) -> str:
        bar = "|" if self.correlated else "||"
        return f"({' + '.join('1' if e == 'Intercept' else e for e in self.exprs)} {bar} {self.factor})"


@dataclass(frozen=True)
class ParsedFormula:
    """A formula read into parts.

    Attributes
    ----------
    outcome
        The outcome column.
    se, trials
        Columns named by ``se()`` and ``trials()`` on the left-hand side, if any.
    rhs
        The right-hand side as written (``||`` rewritten to ``|``).
    common
        The right-hand side without group terms (``"1"`` when nothing is left).
    group_terms
        One :class:`GroupTerm` per grouping factor.
    variables
        Every data column the formula names.
    """

    outcome: str
    se: str | None
    trials: str | None
    rhs: str
    common: str
    group_terms: tuple[GroupTerm, ...]
    variables: tuple[str, ...]


def mark(formula: str, word: str) -> str:
    """The formula with the first whole-word ``word`` marked ``»word«``."""
    return re.sub(rf"(?<![\w.]){re.escape(word)}(?![\w.])", f"»{word}«", formula, count=1)


def parse_formula(f: str) -> ParsedFormula:
    """Read an lme4/brms-style formula.

    Raises
    ------
    FormulaError
        For text that is not a formula, unknown response additions, or bad syntax.

    Examples
    --------
    >>> p = parse_formula("y | trials(n) ~ x + (1 + x || g)")
    >>> p.outcome, p.trials, str(p.group_terms[0])
    ('y', 'n', '(1 + x || g)')
    """
    from formulae import model_description

    if not isinstance(f, str) or "~" not in f:
        raise FormulaError(f"The formula {f!r} has no '~'.", hint="Write it as outcome ~ predictors + (1 | group).",
                           option="formula")
    lhs, rhs = f.split("~", 1)
    lhs_parts = [p.strip() for p in lhs.split("|")]
    if not lhs_parts[0]:
        raise FormulaError(f"The formula {f!r} has no outcome before '~'.", hint="Write y ~ x + (1 | g).",
                           option="formula")
    extras: dict[str, str] = {}
    for extra in lhs_parts[1:]:
        m = re.fullmatch(rf"(se|trials)\(\s*({_NAME})\s*\)", extra)
        if not m:
            raise FormulaError(
                f"Unknown response addition '{extra}' in formula: {f}.",
                hint="The additions are se(column) (known standard errors) and trials(column) (binomial).",
                option="formula",
            )
        extras[m.group(1)] = m.group(2)
    outcome = lhs_parts[0]
    if not re.fullmatch(_NAME, outcome):
        raise FormulaError(f"The outcome '{outcome}' in formula {f!r} must be a column name.",
                           hint="Transform the column before fitting.", option="formula")
    uncorrelated, rhs_clean = _rewrite_double_bars(rhs)
    try:
        desc = model_description(f"{outcome} ~ {rhs_clean}")
    except Exception as err:  # formulae raises several kinds for bad syntax
        raise FormulaError(
            f"Cannot parse the formula: {f} ({str(err).strip() or type(err).__name__}).",
            hint="Check the brackets and operators; lme4 syntax is y ~ x + (1 | g).", option="formula",
        ) from None
    by_factor: dict[str, list[str]] = {}
    for t in desc.group_terms:
        factor = ":".join(v.name for v in t.factor.components)
        expr = "Intercept" if type(t.expr).__name__ == "Intercept" else str(t.expr.name)
        exprs = by_factor.setdefault(factor, [])
        if expr not in exprs:
            exprs.append(expr)
    terms = []
    for factor, exprs in by_factor.items():
        exprs.sort(key=lambda e: e != "Intercept")
        first = factor.split(":")[0]
        terms.append(GroupTerm(tuple(exprs), factor, correlated=factor not in uncorrelated
                               and first not in uncorrelated))
    variables = {v for v in desc.var_names if v} | set(extras.values())  # (formulae lists literals as "")
    return ParsedFormula(
        outcome=outcome, se=extras.get("se"), trials=extras.get("trials"), rhs=rhs_clean.strip(),
        common=_strip_group_terms(rhs_clean), group_terms=tuple(terms), variables=tuple(sorted(variables)),
    )


def _brackets(rhs: str) -> list[tuple[int, int]]:
    """Spans (start, end) of top-level bracketed groups that hold a '|'."""
    out, i = [], 0
    while i < len(rhs):
        if rhs[i] == "(" and not re.search(r"[\w.]\s*$", rhs[:i]):  # not a call like log(
            d, j = 0, i
            while j < len(rhs):
                d += {"(": 1, ")": -1}.get(rhs[j], 0)
                if d == 0:
                    break
                j += 1
            if d != 0:  # unbalanced: left for the parser to report
                break
            if "|" in rhs[i + 1 : j]:
                out.append((i, j))
            i = j + 1
            continue
        i += 1
    return out


def _rewrite_double_bars(rhs: str) -> tuple[set[str], str]:
    uncorrelated: set[str] = set()
    pieces, last = [], 0
    for i, j in _brackets(rhs):
        inner = rhs[i + 1 : j]
        if "||" in inner:
            left, right = inner.split("||", 1)
            uncorrelated.add(right.strip().split("/")[0].strip())
            for f in right.split("/"):
                uncorrelated.add(f.strip())
            inner = f"{left}|{right}"
        pieces.append(rhs[last:i] + "(" + inner + ")")
        last = j + 1
    pieces.append(rhs[last:])
    return uncorrelated, "".join(pieces)


def _strip_group_terms(rhs: str) -> str:
    spans = _brackets(rhs)
    buf, last = "", 0
    for i, j in spans:
        buf += rhs[last:i]
        last = j + 1
    buf += rhs[last:]
    cleaned = re.sub(r"\+\s*(?=\+|$)", "", buf.strip())
    cleaned = re.sub(r"^\s*\+", "", cleaned).strip()
    cleaned = re.sub(r"\+\s*\+", "+", cleaned).strip()
    cleaned = re.sub(r"\+\s*$", "", cleaned).strip()
    return cleaned if cleaned and cleaned not in ("+",) else "1"


# ----------------------------------------------------------------------------------------------
# design columns as SQL expressions (for reductions that run inside DuckDB or Spark)

#: functions a formula may apply that the query can compute (formulae name → SQL template)
_SQL_FUNCTIONS = {
    "log": "LN({})", "np.log": "LN({})", "numpy.log": "LN({})",
    "exp": "EXP({})", "np.exp": "EXP({})", "numpy.exp": "EXP({})",
    "sqrt": "SQRT({})", "np.sqrt": "SQRT({})", "numpy.sqrt": "SQRT({})",
    "log10": "LOG10({})", "np.log10": "LOG10({})", "numpy.log10": "LOG10({})",
    "log2": "(LN({}) / LN(2.0))", "np.log2": "(LN({}) / LN(2.0))", "numpy.log2": "(LN({}) / LN(2.0))",
    "log1p": "LN(1.0 + {})", "np.log1p": "LN(1.0 + {})", "numpy.log1p": "LN(1.0 + {})",
    "abs": "ABS({})", "np.abs": "ABS({})", "numpy.abs": "ABS({})",
    "I": "({})",
}
_SQL_OPERATORS = {"+": "+", "-": "-", "*": "*", "/": "/"}


def quote_sql(name: str, dialect: str = "duckdb") -> str:
    """A column name as a quoted SQL identifier (``"x"`` in DuckDB, ```x``` in Spark SQL)."""
    if dialect == "spark":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: object, dialect: str = "duckdb") -> str:
    """A Python value (a level of a categorical column) as an SQL literal of ``dialect``.

    The value is data and never changes the query.  A text value is written as the hexadecimal
    of its UTF-8 bytes, decoded by the engine (``decode(from_hex('6974277320'))`` in DuckDB,
    ``CAST(X'6974277320' AS STRING)`` in Spark SQL), so the query holds no character of the
    value: neither a quote, nor a backslash (an escape in Spark SQL's quoted literals unless
    ``spark.sql.parser.escapedStringLiterals``, an ordinary character in DuckDB's), nor the
    ``{rows}`` placeholder the queries name their rows by.  Both engines fold the decoding into a
    constant before the scan.  Numbers that are not finite are casts of ``'Infinity'``/``'NaN'``.

    Examples
    --------
    >>> sql_literal("it's"), sql_literal("it's", "spark")
    ("decode(from_hex('69742773'))", "CAST(X'69742773' AS STRING)")
    >>> sql_literal(2.5), sql_literal(float("-inf"), "spark")
    ('2.5', "CAST('-Infinity' AS DOUBLE)")
    """
    import decimal
    import math

    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, decimal.Decimal) and value.is_finite():
        return str(value)
    if isinstance(value, (int, float, decimal.Decimal)):
        number = float(value)
        if math.isfinite(number):
            return repr(int(value)) if isinstance(value, int) else repr(number)
        word = "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
        return f"CAST('{word}' AS DOUBLE)"
    hexadecimal = str(value).encode("utf-8").hex().upper()
    if dialect == "spark":
        return f"CAST(X'{hexadecimal}' AS STRING)"
    return f"decode(from_hex('{hexadecimal}'))"


def _sql_expr(node: object, formula: str, dialect: str) -> str:
    """SQL for one node of formulae's call tree (variables, numbers, + − × ÷ ** and _SQL_FUNCTIONS)."""
    kind = type(node).__name__
    if kind == "LazyVariable":
        return f"CAST({quote_sql(str(node.name), dialect)} AS DOUBLE)"  # type: ignore[attr-defined]
    if kind == "LazyValue":
        value = node.value  # type: ignore[attr-defined]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"CAST({value!r} AS DOUBLE)"
    if kind == "LazyOperator":
        symbol = str(node.symbol)  # type: ignore[attr-defined]
        args = [_sql_expr(a, formula, dialect) for a in node.args]  # type: ignore[attr-defined]
        if len(args) == 1 and symbol in ("-", "+"):
            return f"({symbol}{args[0]})"
        if len(args) == 2 and symbol == "**":
            return f"POWER({args[0]}, {args[1]})"
        if len(args) == 2 and symbol == "/" and dialect == "spark":  # (ANSI mode raises on x / 0)
            return f"try_divide({args[0]}, {args[1]})"
        if len(args) == 2 and symbol in _SQL_OPERATORS:
            return f"({args[0]} {_SQL_OPERATORS[symbol]} {args[1]})"
    if kind == "LazyCall":
        callee = str(node.callee)  # type: ignore[attr-defined]
        args = node.args  # type: ignore[attr-defined]
        if callee in _SQL_FUNCTIONS and len(args) == 1 and not node.kwargs:  # type: ignore[attr-defined]
            return _SQL_FUNCTIONS[callee].format(_sql_expr(args[0], formula, dialect))
        raise FormulaError(
            f"The function {callee}() in formula {formula} cannot be computed inside the query that reduces "
            "the file.",
            hint=f"Use one of {', '.join(sorted({k for k in _SQL_FUNCTIONS if '.' not in k}))}, compute the "
                 "column beforehand, or pass a pandas table.", option="formula")
    raise FormulaError(f"Part of formula {formula} cannot be computed inside the query that reduces the file.",
                       hint="Compute the column beforehand, or pass a pandas table.", option="formula")


def _component_sql(comp: object, formula: str, dialect: str) -> list[tuple[str, str]]:
    """(label, SQL) of each column one component of a formulae term contributes."""
    kind = getattr(comp, "kind", None)
    name = str(getattr(comp, "name", comp))
    if type(comp).__name__ == "Call" and getattr(comp.call, "stateful_transform", None) is not None:  # type: ignore[attr-defined]
        raise FormulaError(
            f"The transform {name} in formula {formula} needs statistics of the whole column, which the "
            "query that reduces the file does not compute.",
            hint="Standardize the column beforehand, or pass a pandas table.", option="formula")
    if kind == "categoric":
        cm = comp.contrast_matrix  # type: ignore[attr-defined]
        levels = list(comp.levels)  # type: ignore[attr-defined]
        if type(comp).__name__ == "Call":
            args = comp.call.args  # type: ignore[attr-defined]
            if str(comp.call.callee) != "C" or len(args) < 1 or type(args[0]).__name__ != "LazyVariable":  # type: ignore[attr-defined]
                raise FormulaError(f"The categorical term {name} in formula {formula} cannot be computed inside "
                                   "the query that reduces the file.",
                                   hint="Write C(column) around a plain column.", option="formula")
            column = quote_sql(str(args[0].name), dialect)
        else:
            column = quote_sql(name, dialect)
        out = []
        for c, label in enumerate(cm.labels):
            parts = [f"WHEN {column} = {sql_literal(level, dialect)} THEN {float(cm.matrix[i, c])!r}"
                     for i, level in enumerate(levels) if cm.matrix[i, c] != 0]
            sql = f"(CASE {' '.join(parts)} ELSE 0.0 END)" if parts else "0.0"
            out.append((f"{name}[{label}]", sql))
        return out
    if type(comp).__name__ == "Call":
        call = comp.call  # type: ignore[attr-defined]
        node = type("LazyCall", (), {})()
        node.callee, node.args, node.kwargs = call.callee, call.args, call.kwargs  # type: ignore[attr-defined]
        return [(name, _sql_expr(node, formula, dialect))]
    return [(name, f"CAST({quote_sql(name, dialect)} AS DOUBLE)")]


def sql_columns(terms: dict[str, object], formula: str, dialect: str = "duckdb") -> list[tuple[str, str]]:
    """Every column of a formulae design as ``(name, SQL expression)``, in the design's order.

    ``terms`` is ``design.common.terms`` of a design built by ``formulae`` (on any rows holding
    every level of the categorical columns: the encoding — reference levels, full-rank coding of
    interactions — is formulae's own, so the names and columns equal those of the in-memory path).
    Offsets keep their ``offset(...)`` name.

    Raises
    ------
    FormulaError
        For a transform the query cannot compute (stateful transforms such as ``scale()``,
        functions outside ``log exp sqrt log10 log2 log1p abs I``).
    """
    import itertools

    out: list[tuple[str, str]] = []
    for term_name, term in terms.items():
        if type(term).__name__ == "Intercept":
            out.append(("Intercept", "1.0"))
            continue
        comps = list(getattr(term, "components", []))
        if len(comps) == 1 and type(comps[0]).__name__ == "Call" and str(comps[0].call.callee) == "offset":  # type: ignore[attr-defined]
            args = comps[0].call.args  # type: ignore[attr-defined]
            out.append((str(term_name), _sql_expr(args[0], formula, dialect)))
            continue
        pieces = [_component_sql(c, formula, dialect) for c in comps]
        cols = {":".join(lab for lab, _ in combo): " * ".join(sql for _, sql in combo)
                for combo in itertools.product(*pieces)}
        labels = [str(lab) for lab in getattr(term, "labels", list(cols))]
        missing = [lab for lab in labels if lab not in cols]
        if missing:
            raise FormulaError(f"The term {term_name} of formula {formula} cannot be computed inside the query "
                               "that reduces the file.", hint="Pass a pandas table.", option="formula")
        out.extend((lab, cols[lab]) for lab in labels)
    return out
