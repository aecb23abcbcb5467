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

__all__ = ["GroupTerm", "ParsedFormula", "parse_formula", "mark"]

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
    variables = set(desc.var_names) | set(extras.values())
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
