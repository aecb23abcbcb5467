"""lme4-style formulas: the outcome and its additions, common terms, group terms.

``parse_formula("y | trials(n) ~ x + offset(log(e)) + (1 + x || g) + (1 | region/county)")``
reads the formula once (through ``formulae`` for the right-hand side) into a
:class:`ParsedFormula`.  brms-style response additions ``se(col)`` and ``trials(col)`` are read
here; ``||`` (uncorrelated group terms) is rewritten to ``|`` with the factor marked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import FormulaError

__all__ = ["GroupTerm", "ParsedFormula", "parse_formula", "mark", "sql_columns", "quote_sql", "sql_literal",
           "NUMERIC_FUNCTIONS", "TERM_FUNCTIONS", "functions", "formula_env", "design_matrices", "Counts",
           "parse_counts"]

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
    #: the varying terms as the formula writes them (names quoted), for building their columns
    sources: tuple[str, ...] = field(default=(), compare=False)
    #: which block of its factor's covariance this term is (0 for the first; ``(1 + x | g) + (0 + z | g)``
    #: makes two independent blocks on ``g``, as in lme4)
    part: int = 0

    @property
    def site(self) -> str:
        """A name for this term unique in its formula: the factor, ``g#1`` for a factor's second block."""
        return self.factor if self.part == 0 else f"{self.factor}#{self.part}"

    def design_formula(self, response: str = "pw_response_") -> str:
        """A formula whose design holds every varying term as a column named as in :attr:`exprs`."""
        parts = self.sources or tuple(e for e in self.exprs if e != "Intercept")
        return f"{response} ~ 0 + {' + '.join(parts) or '1'}"

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
        One :class:`GroupTerm` per grouping factor, or per block of a factor's covariance when
        its terms are independent blocks (``(1 + x | g) + (0 + z | g)``: two, as in lme4).
    variables
        Every data column the formula names.
    categorical
        The columns written ``C(column)``.
    """

    outcome: str
    se: str | None
    trials: str | None
    rhs: str
    common: str
    group_terms: tuple[GroupTerm, ...]
    variables: tuple[str, ...]
    #: the columns the formula wraps in ``C()`` (categorical whatever their values)
    categorical: tuple[str, ...] = ()
    #: ``cbind(successes, failures)`` outcomes: the failures (trials = successes + failures)
    failures: Counts | None = None
    #: columns named only by the failures of ``cbind()`` (not predictors)
    count_columns: tuple[str, ...] = ()


def mark(formula: str, word: str) -> str:
    """The formula with the first whole-word ``word`` marked ``»word«``."""
    return re.sub(rf"(?<![\w.]){re.escape(word)}(?![\w.])", f"»{word}«", formula, count=1)


def parse_formula(f: str) -> ParsedFormula:
    """Read an lme4/brms-style formula.

    A formula is data, never code: it may name the data's columns (backtick-quoted when the name
    is not a plain identifier: ```my column```; a name holding ``:``, which joins interactions and
    grouping factors, or starting ``offset(`` must be renamed) and call only these functions, each
    on one argument:

    - ``log exp sqrt log10 log2 log1p abs`` (elementwise, also nested and inside ``I()``);
    - ``I(...)``: arithmetic on columns and numbers with ``+ - * / **`` (R's ``^`` is read as ``**``);
    - ``C(column)``: a column as categorical (treatment coding);
    - ``offset(...)``: a term with coefficient 1 (e.g. ``offset(log(exposure))``);
    - ``scale(...)``: centred and scaled (tables in memory only: a file's query cannot compute it);
    - on the left-hand side, ``se(column)`` and ``trials(column)``.

    Terms combine with ``+ - : * / **`` and ``0``/``1`` (no intercept / intercept); group terms
    are ``(terms | factor)``, ``||`` for uncorrelated, ``a:b`` and ``a/b`` factors.  Anything
    else — attribute access (``np.log``, ``os.system``), other functions, keyword arguments,
    strings and other literals, comparisons, subscripts — is refused before anything is
    evaluated, and the design is built in an environment that holds nothing but these functions.

    Raises
    ------
    FormulaError
        For text that is not a formula, unknown response additions, bad syntax, or anything
        outside the closed set above (the message names the term at fault).

    Examples
    --------
    >>> p = parse_formula("y | trials(n) ~ x + (1 + x || g)")
    >>> p.outcome, p.trials, str(p.group_terms[0])
    ('y', 'n', '(1 + x || g)')
    """
    from formulae import model_description
    from formulae.parser import Parser
    from formulae.scanner import Scanner

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
    failures = None
    if re.match(r"cbind\s*\(", outcome):
        if extras:
            raise FormulaError(f"cbind() in formula {f!r} cannot take response additions ({', '.join(extras)}()).",
                               hint="cbind(successes, failures) already gives the number of trials.",
                               option="formula")
        outcome, failures = parse_counts(outcome, f)
    if not re.fullmatch(_NAME, outcome):
        raise FormulaError(f"The outcome '{outcome}' in formula {f!r} must be a column name.",
                           hint="Transform the column before fitting.", option="formula")
    protected, quoted = _protect(rhs)  # (brackets and bars inside `quoted names` are the names')
    # R's ^ is formulae's **: a power inside I(...), crossing up to an order outside ((a + b)^2)
    protected = protected.replace("^", "**")
    uncorrelated, rhs_protected, double = _rewrite_double_bars(protected)
    uncorrelated = {_restore(u, quoted).replace("`", "") for u in uncorrelated}
    rhs_clean = _restore(rhs_protected, quoted)
    try:
        parser = Parser(Scanner(f"{outcome} ~ {rhs_clean}").scan())
        tree = parser.parse()
        rest = " ".join(str(t.lexeme) for t in parser.tokens[parser.current:] if t.kind != "EOF")
        if rest:  # formulae's parser stops at the first token it cannot join, and drops the rest
            raise ValueError(f"unexpected '{rest}' after the last term")
    except Exception as err:  # formulae raises several kinds for bad syntax
        raise FormulaError(
            f"Cannot parse the formula: {f} ({str(err).strip() or type(err).__name__}).",
            hint="Check the brackets and operators; lme4 syntax is y ~ x + (1 | g).", option="formula",
        ) from None
    checker = _Checker(f)
    columns = checker.formula(tree)  # the closed set, before formulae resolves anything
    try:
        desc = model_description(f"{outcome} ~ {rhs_clean}")  # (reads the text; evaluates nothing)
    except Exception as err:
        raise FormulaError(
            f"Cannot parse the formula: {f} ({str(err).strip() or type(err).__name__}).",
            hint="Check the brackets and operators; lme4 syntax is y ~ x + (1 | g).", option="formula",
        ) from None
    _check_names(desc, f)
    by_factor: dict[str, list[str]] = {}
    for t in desc.group_terms:
        factor = ":".join(v.name for v in t.factor.components)
        expr = "Intercept" if type(t.expr).__name__ == "Intercept" else str(t.expr.name)
        exprs = by_factor.setdefault(factor, [])
        if expr not in exprs:
            exprs.append(expr)
    try:
        sources = _group_sources(checker.groups)
    except Exception as err:
        raise FormulaError(f"Cannot parse the group terms of formula {f} ({str(err).strip() or type(err).__name__}).",
                           hint="lme4 syntax is y ~ x + (1 + x | g).", option="formula") from None
    try:
        blocks = _same_factor_terms(checker.groups, double, uncorrelated, f)
    except FormulaError:
        raise
    except Exception as err:
        raise FormulaError(f"Cannot parse the group terms of formula {f} ({str(err).strip() or type(err).__name__}).",
                           hint="lme4 syntax is y ~ x + (1 + x | g).", option="formula") from None
    terms = []
    for factor, exprs in by_factor.items():
        exprs.sort(key=lambda e: e != "Intercept")
        first = factor.split(":")[0]
        got = blocks.get(factor)
        if got is None or sorted(e for b in got for e in b[0]) != sorted(exprs):  # (not expected)
            got = [(tuple(exprs), factor not in uncorrelated and first not in uncorrelated,
                    tuple(sources.get(factor, ())))]
        elif len(got) == 1:  # one block: the factor's terms in the formula's order, as ever
            got = [(tuple(exprs), got[0][1], tuple(sources.get(factor, ())))]
        for k, (block_exprs, corr, src) in enumerate(got):
            terms.append(GroupTerm(block_exprs, factor, correlated=corr, sources=src, part=k))
    variables = columns | set(extras.values()) | set(failures.columns if failures else ())
    return ParsedFormula(
        outcome=outcome, se=extras.get("se"), trials=extras.get("trials"), rhs=rhs_clean.strip(),
        common=_restore(_strip_group_terms(rhs_protected), quoted), group_terms=tuple(terms),
        variables=tuple(sorted(variables)),
        categorical=tuple(sorted(checker.categorical)), failures=failures,
        count_columns=tuple(c for c in (failures.columns if failures else ()) if c not in columns),
    )


# ----------------------------------------------------------------------------------------------
# cbind(successes, failures): lme4's binomial outcome

_COUNT_TOKEN = re.compile(rf"\s*(?:(?P<num>\d+(?:\.\d*)?)|(?P<name>{_NAME})|(?P<op>[-+*()]))")


@dataclass(frozen=True)
class Counts:
    """The failures of a ``cbind(successes, failures)`` outcome: a column, or arithmetic on columns
    and numbers with ``+ - *`` and brackets (``size - incidence``).

    It is data, never code: :meth:`evaluate` computes it on a table's columns with NumPy and
    :meth:`sql` writes it with every column quoted and every number a literal.

    Attributes
    ----------
    text
        The failures as the formula writes them.
    tokens
        ``("name", column)``, ``("num", value)`` or ``("op", symbol)`` in order.
    """

    text: str
    tokens: tuple[tuple[str, str], ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns it names, in order, once each."""
        return tuple(dict.fromkeys(v for k, v in self.tokens if k == "name"))

    def evaluate(self, column: Callable[[str], Any]) -> Any:
        """The failures from ``column(name)`` (arrays): ``+ - *`` with the usual precedence."""
        return _CountsEval(self.tokens, column, float).expr()

    def sql(self, quote: Callable[[str], str]) -> str:
        """The failures as an SQL expression (columns cast to DOUBLE through ``quote``)."""
        def col(name: str) -> str:
            return f"CAST({quote(name)} AS DOUBLE)"
        return str(_CountsEval(self.tokens, col, lambda v: f"CAST({float(v)!r} AS DOUBLE)", sql=True).expr())


class _CountsEval:
    """Recursive descent over :attr:`Counts.tokens`: expr := term (('+'|'-') term)*, term := factor
    ('*' factor)*, factor := '-' factor | number | name | '(' expr ')'.  ``sql`` builds text."""

    def __init__(self, tokens: tuple[tuple[str, str], ...], column: Callable[[str], Any],
                 number: Callable[[str], Any], sql: bool = False) -> None:
        self.t, self.i, self.column, self.number, self.sql = tokens, 0, column, number, sql

    def _peek(self) -> tuple[str, str] | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def _join(self, a: Any, op: str, b: Any) -> Any:
        if self.sql:
            return f"({a} {op} {b})"
        return a + b if op == "+" else a - b if op == "-" else a * b

    def expr(self) -> Any:
        out = self.term()
        while (tok := self._peek()) is not None and tok[1] in "+-" and tok[0] == "op":
            self.i += 1
            out = self._join(out, tok[1], self.term())
        return out

    def term(self) -> Any:
        out = self.factor()
        while (tok := self._peek()) is not None and tok == ("op", "*"):
            self.i += 1
            out = self._join(out, "*", self.factor())
        return out

    def factor(self) -> Any:
        kind, value = self.t[self.i]
        self.i += 1
        if (kind, value) == ("op", "-"):
            inner = self.factor()
            return f"(-{inner})" if self.sql else -inner
        if (kind, value) == ("op", "("):
            out = self.expr()
            self.i += 1  # the ")" (checked by parse_counts)
            return out
        return self.number(value) if kind == "num" else self.column(value)


def parse_counts(text: str, formula: str) -> tuple[str, Counts]:
    """Read ``cbind(successes, failures)``: the successes' column and the failures (:class:`Counts`).

    Raises
    ------
    FormulaError
        When the successes are not a column name, or the failures not a column or arithmetic
        (``+ - *``, brackets, numbers) on columns.

    Examples
    --------
    >>> s, f = parse_counts("cbind(incidence, size - incidence)", "…")
    >>> s, f.columns, f.sql(lambda c: f'"{c}"')
    ('incidence', ('size', 'incidence'), '(CAST("size" AS DOUBLE) - CAST("incidence" AS DOUBLE))')
    """
    m = re.fullmatch(r"cbind\s*\((.*)\)\s*", text, flags=re.S)
    parts = m.group(1).split(",") if m else []
    hint = ("Write cbind(successes, failures) with column names, e.g. cbind(incidence, size - incidence); "
            "or successes | trials(n).")
    if len(parts) != 2:
        raise FormulaError(f"cbind() in formula {formula!r} takes two arguments, successes and failures.",
                           hint=hint, option="formula")
    successes, failures = (p.strip() for p in parts)
    if not re.fullmatch(_NAME, successes):
        raise FormulaError(f"The successes '{successes}' in cbind() of formula {formula!r} must be a column name.",
                           hint=hint, option="formula")
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(failures):
        t = _COUNT_TOKEN.match(failures, pos)
        if t is None or t.end() == pos:
            raise FormulaError(f"Cannot read the failures '{failures}' in cbind() of formula {formula!r} "
                               f"at '{failures[pos:].strip()}'.",
                               hint=hint + " The failures may use + - * and brackets.", option="formula")
        kind = t.lastgroup or "op"
        tokens.append((kind, str(t.group(kind))))
        pos = t.end()
        while pos < len(failures) and failures[pos].isspace():
            pos += 1
    # check the grammar once (a dry run that counts brackets and operands)
    depth, want_operand = 0, True
    for kind, value in tokens:
        if want_operand:
            if (kind, value) == ("op", "("):
                depth += 1
            elif (kind, value) == ("op", "-"):
                pass
            elif kind in ("num", "name"):
                want_operand = False
            else:
                break
        else:
            if (kind, value) == ("op", ")") and depth > 0:
                depth -= 1
            elif kind == "op" and value in "+-*":
                want_operand = True
            else:
                want_operand = True  # an operand where an operator belongs: refused below
                depth = -1
                break
    if not tokens or want_operand or depth != 0:
        raise FormulaError(f"Cannot read the failures '{failures}' in cbind() of formula {formula!r}.",
                           hint=hint + " The failures may use + - * and brackets.", option="formula")
    return successes, Counts(" ".join(failures.split()), tuple(tokens))


# ----------------------------------------------------------------------------------------------
# the closed set: what a formula may name and call

#: elementwise functions a formula may call (numpy's), also inside I() and one another
NUMERIC_FUNCTIONS = ("log", "exp", "sqrt", "log1p", "log10", "log2", "abs")
#: formulae's own transforms a formula may call (as terms, not inside other calls but I())
TERM_FUNCTIONS = ("I", "C", "offset", "scale")
_ARITHMETIC = {"PLUS", "MINUS", "STAR", "SLASH", "STAR_STAR"}
_TERM_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "COLON"}
_ALLOWED = ", ".join(f"{n}()" for n in NUMERIC_FUNCTIONS + TERM_FUNCTIONS)


def functions() -> dict[str, object]:
    """The elementwise functions by name: the only names a formula's design can resolve."""
    import numpy as np

    return {name: getattr(np, name) for name in NUMERIC_FUNCTIONS}


def formula_env() -> object:
    """A formulae evaluation environment that holds :data:`NUMERIC_FUNCTIONS` and nothing else.

    formulae resolves names through the namespaces it is given (by default the caller's frame:
    its module's ``np``, ``pd``, builtins); this one gives it none, so even a formula that
    escaped :func:`parse_formula` could reach no module.  (formulae's own transforms — ``C``,
    ``I``, ``offset``, ``scale`` … — are always looked up first, from formulae itself.)
    """
    from formulae.environment import Environment

    return Environment([functions()])


def design_matrices(formula: str, frame: object) -> object:
    """``formulae.design_matrices`` on ``frame`` in :func:`formula_env` (missing values are errors).

    Raises whatever formulae raises; callers turn it into a :class:`~poolwise.errors.FormulaError`.
    """
    from formulae import design_matrices as _design_matrices

    return _design_matrices(formula, frame, na_action="error", env=formula_env())


def _unparse(node: object) -> str:
    """The text of one node of formulae's syntax tree (for messages)."""
    kind = type(node).__name__
    if kind == "Binary":
        op = node.operator.lexeme  # type: ignore[attr-defined]
        sep = op if op in (":", "**") else f" {op} "
        return f"{_unparse(node.left)}{sep}{_unparse(node.right)}"  # type: ignore[attr-defined]
    if kind == "Unary":
        return f"{node.operator.lexeme}{_unparse(node.right)}"  # type: ignore[attr-defined]
    if kind == "Grouping":
        return f"({_unparse(node.expression)})"  # type: ignore[attr-defined]
    if kind == "Call":
        return f"{_unparse(node.callee)}({', '.join(_unparse(a) for a in node.args)})"  # type: ignore[attr-defined]
    if kind == "Assign":
        return f"{_unparse(node.name)}={_unparse(node.value)}"  # type: ignore[attr-defined]
    if kind == "Variable":
        level = node.level  # type: ignore[attr-defined]
        return str(node.name.lexeme) + (f"[{level.value}]" if level is not None else "")  # type: ignore[attr-defined]
    if kind == "QuotedName":
        return str(node.expression.lexeme)  # type: ignore[attr-defined]
    if kind == "Literal":
        return str(node.lexeme) if node.lexeme is not None else repr(node.value)  # type: ignore[attr-defined]
    return kind


class _Checker:
    """Walks formulae's syntax tree of a formula and refuses anything outside the closed set.

    Nothing is resolved or evaluated: the tree is plain data (tokens), read before formulae
    turns it into terms.  ``formula(tree)`` returns the data columns the formula names.
    """

    def __init__(self, formula: str) -> None:
        self.f = formula
        self.columns: set[str] = set()
        self.groups: list[object] = []  # the group terms' nodes, (terms | factor)
        self.categorical: set[str] = set()  # columns written C(column)

    def fail(self, what: str, term: object, hint: str) -> None:
        text = _unparse(term)
        raise FormulaError(f"The term '{text}' in formula {self.f} {what}.", hint=hint, option="formula")

    def formula(self, tree: object) -> set[str]:
        if type(tree).__name__ != "Binary" or tree.operator.kind != "TILDE":  # type: ignore[attr-defined]
            raise FormulaError(f"Cannot parse the formula: {self.f}.",
                               hint="Write it as outcome ~ predictors + (1 | group).", option="formula")
        self.column(tree.left, tree.left)  # type: ignore[attr-defined]
        self.term(tree.right, None)  # type: ignore[attr-defined]
        return self.columns

    def column(self, node: object, term: object) -> None:
        kind = type(node).__name__
        if kind == "QuotedName":
            name = str(node.expression.lexeme)[1:-1]  # type: ignore[attr-defined]
            if ":" in name:  # (the interaction a:b of columns a and b has that name too)
                self.fail(f"names the column {_unparse(node)}, whose name holds ':'", term,
                          "Rename the column: ':' joins columns into interactions (a:b) and grouping factors.")
            if name.startswith("offset("):  # (design columns so named are offsets)
                self.fail(f"names the column {_unparse(node)}, whose name reads as an offset", term,
                          "Rename the column.")
            self.columns.add(name)
        elif kind == "Variable" and node.level is None:  # type: ignore[attr-defined]
            name = str(node.name.lexeme)  # type: ignore[attr-defined]
            if any(part.startswith("__") for part in name.split(".")):
                self.fail(f"names the dunder attribute '{name}'", term,
                          "A formula names columns; quote a column so named in backticks.")
            self.columns.add(name)
            return
        elif kind == "Variable":
            self.fail("picks a level with [...]", term, "Name the column alone; recode it beforehand if needed.")
        else:
            self.fail("is not a column", term, "Name a column (in backticks if the name has spaces or symbols).")

    def literal(self, node: object, term: object, where: str) -> None:
        value = node.value  # type: ignore[attr-defined]
        if isinstance(value, str):
            self.fail(f"holds the string {_unparse(node)}{where}", term,
                      "A formula holds no strings: name columns (in backticks if needed) and numbers only.")
        if value is None or isinstance(value, bool):
            self.fail(f"holds the literal {_unparse(node)}{where}", term,
                      "A formula holds column names and numbers only.")

    def term(self, node: object, term: object) -> None:
        kind = type(node).__name__
        if kind == "Binary" and node.operator.kind in ("PLUS", "MINUS") and term is None:  # type: ignore[attr-defined]
            self.term(node.left, None)  # type: ignore[attr-defined]
            self.term(node.right, None)  # type: ignore[attr-defined]
            return
        top, term = term is None, term if term is not None else node
        if kind == "Binary":
            op = node.operator.kind  # type: ignore[attr-defined]
            if op in _TERM_OPERATORS:
                self.term(node.left, term)  # type: ignore[attr-defined]
                self.term(node.right, term)  # type: ignore[attr-defined]
            elif op == "STAR_STAR":
                self.term(node.left, term)  # type: ignore[attr-defined]
                right = node.right  # type: ignore[attr-defined]
                if not (type(right).__name__ == "Literal" and type(right.value) is int and right.value >= 1):
                    self.fail("raises terms to a power that is not a whole number", term,
                              "Write (a + b)**2 for all interactions up to order 2; use I(x**2) for a square.")
            elif op == "PIPE":
                self.fail("has a group term outside brackets", term, "Write group terms in brackets: (1 + x | g).")
            else:
                symbol = node.operator.lexeme  # type: ignore[attr-defined]
                self.fail(f"uses the operator '{symbol}', which a formula does not have", term,
                          "Terms combine with + - : * / **; for arithmetic on columns use I(...).")
        elif kind == "Grouping":
            inner = node.expression  # type: ignore[attr-defined]
            if type(inner).__name__ == "Binary" and inner.operator.kind == "PIPE":
                if not top:
                    self.fail("combines a group term with other terms", term,
                              "Add group terms to the others: y ~ x + (1 + x | g).")
                if type(inner.left).__name__ == "Binary" and inner.left.operator.kind == "PIPE":
                    self.fail("has more than one '|'", term, "Write one bar per group term: (1 + x | g).")
                self.term(inner.left, term)
                self.factor(inner.right, term)
                self.groups.append(node)
            else:
                self.term(inner, term)
        elif kind == "Unary":
            self.term(node.right, term)  # type: ignore[attr-defined]
        elif kind == "Literal":
            self.literal(node, term, "")
            if type(node.value) is not int or node.value not in (0, 1):  # type: ignore[attr-defined]
                self.fail(f"is the number {_unparse(node)}", term,
                          "A number alone is 0 (no intercept) or 1 (intercept); use I(...) for arithmetic.")
        elif kind == "Call":
            self.call(node, term, TERM_FUNCTIONS + NUMERIC_FUNCTIONS)
        elif kind == "Assign":
            self.fail("assigns a value", term, "A formula holds no '='.")
        else:
            self.column(node, term)

    def factor(self, node: object, term: object) -> None:
        kind = type(node).__name__
        if kind == "Binary" and node.operator.kind in ("COLON", "SLASH"):  # type: ignore[attr-defined]
            self.factor(node.left, term)  # type: ignore[attr-defined]
            self.factor(node.right, term)  # type: ignore[attr-defined]
        elif kind == "Grouping":
            self.factor(node.expression, term)  # type: ignore[attr-defined]
        elif kind in ("Variable", "QuotedName"):
            self.column(node, term)
        else:
            self.fail(f"groups by '{_unparse(node)}', which is not a column", term,
                      "Group by columns: (1 | g), nested (1 | a/b) or their combination (1 | a:b).")

    def call(self, node: object, term: object, allowed: tuple[str, ...]) -> None:
        callee = node.callee  # type: ignore[attr-defined]
        if type(callee).__name__ != "Variable" or callee.level is not None:
            self.fail(f"calls '{_unparse(callee)}', which is not a function name", term,
                      f"A formula may call only {_ALLOWED}.")
        name = str(callee.name.lexeme)
        if "." in name:
            self.fail(f"reaches into '{name}' (attribute access)", term,
                      f"A formula names columns and may call only {_ALLOWED}; write e.g. log(x), not np.log(x).")
        if name not in allowed:
            where = "" if allowed != _VALUE_FUNCTIONS else " inside another call"
            self.fail(f"calls '{name}()'{where}, which is not one of the functions a formula may use", term,
                      f"A formula may call only {_ALLOWED} (see parse_formula); compute other columns beforehand.")
        args = list(node.args)  # type: ignore[attr-defined]
        for a in args:
            if type(a).__name__ == "Assign":
                self.fail(f"passes the keyword argument '{_unparse(a)}' to {name}()", term,
                          f"{name}() takes one argument and no keywords.")
        if len(args) != 1:
            self.fail(f"passes {len(args)} arguments to {name}()", term, f"{name}() takes exactly one argument.")
        if name == "C":
            arg = args[0]
            while type(arg).__name__ == "Grouping":
                arg = arg.expression
            if type(arg).__name__ not in ("Variable", "QuotedName"):
                self.fail("applies C() to something other than a column", term, "Write C(column).")
            self.column(arg, term)
            self.categorical.add(_unparse(arg)[1:-1] if type(arg).__name__ == "QuotedName" else _unparse(arg))
        else:
            self.value(args[0], term)

    def value(self, node: object, term: object) -> None:
        kind = type(node).__name__
        if kind == "Binary":
            if node.operator.kind not in _ARITHMETIC:  # type: ignore[attr-defined]
                self.fail(f"uses '{node.operator.lexeme}' inside a call", term,  # type: ignore[attr-defined]
                          "Inside a call a formula computes with + - * / ** only.")
            self.value(node.left, term)  # type: ignore[attr-defined]
            self.value(node.right, term)  # type: ignore[attr-defined]
        elif kind == "Unary":
            self.value(node.right, term)  # type: ignore[attr-defined]
        elif kind == "Grouping":
            self.value(node.expression, term)  # type: ignore[attr-defined]
        elif kind == "Literal":
            self.literal(node, term, " inside a call")
            if not isinstance(node.value, (int, float)):  # type: ignore[attr-defined]
                self.fail(f"holds the literal {_unparse(node)}", term, "A formula holds column names and numbers only.")
        elif kind == "Call":
            self.call(node, term, _VALUE_FUNCTIONS)
        elif kind == "Assign":
            self.fail("assigns a value", term, "A formula holds no '='.")
        else:
            self.column(node, term)


_VALUE_FUNCTIONS = ("I",) + NUMERIC_FUNCTIONS


def _check_names(desc: object, f: str) -> None:
    """No two different terms share a name (a column named ``log(x)`` and the call ``log(x)``)."""
    seen: dict[str, object] = {}
    terms = list(desc.common_terms) + [t.expr for t in desc.group_terms]  # type: ignore[attr-defined]
    for t in terms:
        if type(t).__name__ != "Term":
            continue
        name = str(t.name)  # type: ignore[attr-defined]
        if name in seen and seen[name] != t:
            raise FormulaError(f"Two different terms of formula {f} are both named '{name}'.",
                               hint="Rename the column whose name reads like a transform or an interaction.",
                               option="formula")
        seen[name] = t


def _group_sources(groups: list[object]) -> dict[str, list[str]]:
    """Per grouping factor, the text of each varying term (a checked node of the syntax tree)."""
    from formulae import model_description

    out: dict[str, list[str]] = {}
    for node in groups:
        summands = _summands(node)
        for t in model_description(f"pw_response_ ~ {_unparse(node)}").group_terms:
            factor = ":".join(v.name for v in t.factor.components)
            have = out.setdefault(factor, [])
            have.extend(x for x in summands if x not in have)
    return out


def _same_factor_terms(groups: list[object], double: list[bool], uncorrelated: set[str],
                       f: str) -> dict[str, list[tuple[tuple[str, ...], bool, tuple[str, ...]]]]:
    """Per grouping factor, its group terms as lme4 reads them: (varying terms, correlated, the
    terms' source texts) per block of the factor's covariance.

    lme4 makes separate group terms on one factor independent (Σ block-diagonal across the terms):
    ``(1 | g) + (0 + x | g)`` is ``(1 + x || g)``.  A factor's terms of one varying term each (and
    those written with ``||``) make one block with a diagonal Σ — the very term ``||`` gives; a
    term of several varying terms written with ``|`` beside other terms on its factor is a block
    of its own (``(1 + x | g) + (0 + z | g)``: two blocks on ``g``).

    Raises
    ------
    FormulaError
        Two terms on one factor that share a varying term (``(1 | g) + (1 | g)``: lme4 would fit
        a model that is not identifiable).
    """
    from formulae import model_description

    matched = len(double) == len(groups)  # (both list the group terms in the order written)
    # factor → (varying terms, ||, text, source texts) per group term written on it
    parts: dict[str, list[tuple[list[str], bool, str, list[str]]]] = {}
    for i, node in enumerate(groups):
        text = _unparse(node)
        summands = _summands(node)
        per: dict[str, list[str]] = {}
        for t in model_description(f"pw_response_ ~ {text}").group_terms:
            factor = ":".join(v.name for v in t.factor.components)
            e = "Intercept" if type(t.expr).__name__ == "Intercept" else str(t.expr.name)
            if e not in per.setdefault(factor, []):
                per[factor].append(e)
        for factor, exprs in per.items():
            dbl_here = double[i] if matched else (factor in uncorrelated or factor.split(":")[0] in uncorrelated)
            parts.setdefault(factor, []).append((exprs, dbl_here, text.replace("|", "||") if dbl_here else text,
                                                 summands))
    out: dict[str, list[tuple[tuple[str, ...], bool, tuple[str, ...]]]] = {}
    for factor, items in parts.items():
        seen: dict[str, str] = {}
        for exprs, _, text, _ in items:
            for e in exprs:
                if e in seen:
                    name = "1" if e == "Intercept" else e
                    raise FormulaError(
                        f"The group terms {seen[e]} and {text} of formula {f} both let '{name}' vary over "
                        f"'{factor}': the model would not be identifiable.",
                        hint=f"Write each varying term once per grouping factor, e.g. (1 + x | {factor}) "
                             f"(correlated) or (1 | {factor}) + (0 + x | {factor}) (independent).",
                        option="formula")
                seen[e] = text
        if len(items) == 1:
            exprs, dbl, _, src = items[0]
            out[factor] = [(tuple(exprs), not dbl, tuple(src))]
            continue
        blocks: list[tuple[tuple[str, ...], bool, tuple[str, ...]]] = []
        rest: list[str] = []
        rest_src: list[str] = []
        rest_dbl = False
        for exprs, dbl, _, src in items:
            if len(exprs) > 1 and not dbl:
                blocks.append((tuple(exprs), True, tuple(src)))
            else:
                rest += exprs
                rest_src += [s for s in src if s not in rest_src]
                rest_dbl = rest_dbl or dbl
        if rest:
            blocks.append((tuple(rest), not (rest_dbl or len(rest) > 1), tuple(rest_src)))
        for i, (exprs, corr, src) in enumerate(blocks):
            blocks[i] = (tuple(sorted(exprs, key=lambda e: e != "Intercept")), corr, src)
        blocks.sort(key=lambda b: b[0][0] != "Intercept")  # (stable: else in the order written)
        out[factor] = blocks
    return out


def _summands(node: object) -> list[str]:
    """The text of each varying term of a group term's node (``(1 + x + log(z) | g)`` → x, log(z))."""
    summands, stack = [], [node.expression.left]  # type: ignore[attr-defined]
    while stack:
        n = stack.pop()
        if type(n).__name__ == "Binary" and n.operator.kind in ("PLUS", "MINUS"):  # type: ignore[attr-defined]
            stack += [n.right, n.left]  # type: ignore[attr-defined]
        elif type(n).__name__ == "Grouping":
            stack.append(n.expression)  # type: ignore[attr-defined]
        elif type(n).__name__ != "Literal":
            summands.append(_unparse(n))
    return summands


def _protect(text: str) -> tuple[str, list[str]]:
    """``text`` with each backtick-quoted name replaced by a placeholder, and the names."""
    quoted: list[str] = []

    def hide(m: re.Match[str]) -> str:
        quoted.append(m.group(0))
        return f"`\ue000{len(quoted) - 1}\ue001`"

    return re.sub(r"`[^`]*`", hide, text), quoted


def _restore(text: str, quoted: list[str]) -> str:
    """Undo :func:`_protect`."""
    return re.sub("`\ue000(\\d+)\ue001`", lambda m: quoted[int(m.group(1))], text)


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


def _rewrite_double_bars(rhs: str) -> tuple[set[str], str, list[bool]]:
    """``||`` rewritten to ``|``: the factors so marked, the text, and per group term (in the order
    written) whether it was written with ``||``."""
    uncorrelated: set[str] = set()
    double: list[bool] = []
    pieces, last = [], 0
    for i, j in _brackets(rhs):
        inner = rhs[i + 1 : j]
        double.append("||" in inner)
        if "||" in inner:
            left, right = inner.split("||", 1)
            uncorrelated.add(right.strip().split("/")[0].strip())
            for f in right.split("/"):
                uncorrelated.add(f.strip())
            inner = f"{left}|{right}"
        pieces.append(rhs[last:i] + "(" + inner + ")")
        last = j + 1
    pieces.append(rhs[last:])
    return uncorrelated, "".join(pieces), double


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
    "log": "LN({})", "exp": "EXP({})", "sqrt": "SQRT({})", "log10": "LOG10({})", "log2": "(LN({}) / LN(2.0))",
    "log1p": "LN(1.0 + {})", "abs": "ABS({})", "I": "({})",
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
            hint=f"Use one of {', '.join(sorted(_SQL_FUNCTIONS))}, compute the "
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
