"""ModelSpec: an lme4 formula, a family, the pooling (a setting of the group covariance) and priors.

A :class:`ModelSpec` is built without data (scikit-learn's "hyperparameters before data");
``spec.replace(pooling="pooled")`` makes a variant, which is how ``compare()`` builds its three
models.  :meth:`ModelSpec.bind` takes a validated table and returns a :class:`BoundSpec` holding
what was learned from the data — design arrays, group levels and their order, the resolved
priors, the data scale — kept apart from what the user asked for.  The bound spec keeps the
formulae encoding state so that new rows are encoded exactly like the fitted ones.

Pooling is one knob, the covariance Σ of the group terms of each grouping factor:

=================  ==================================================================
``"pooled"``       Σ = 0: the group terms are dropped
``"unpooled"``     Σ fixed, diagonal and wide (10 × the data scale per unit of the
                   term for identity links, 2.5 on the link scale otherwise), not learned
``"hierarchical"`` Σ learned: priors on its SDs, LKJ on its correlations
a number t > 0     every group SD fixed at t, no correlation (a point on the pooling path)
=================  ==================================================================

The setting applies to every group term, or term by term: ``pooling={"1|s": "hierarchical",
"1|d": "pooled"}`` (keys as the formula writes the term, spaces free, or the grouping factor's
name; terms not named stay ``"hierarchical"``), or the same as text,
``"1|s=hierarchical, 1|d=pooled"`` (the command line's form).
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import data as _data
from .errors import DataError, FormulaError, PoolwiseWarning, PriorError, SpecError, format_rows
from .families import Family, get_family
from .formula import Counts, GroupTerm, design_matrices, functions, mark, parse_formula
from .priors import Prior, default_priors, parse_prior

__all__ = ["ModelSpec", "BoundSpec", "GroupBlock", "GroupTerm", "RawBlock", "bind_parts", "check_formula_columns",
           "check_scale", "warn_far_slopes", "check_constant_outcome", "check_design_size", "design_columns",
           "format_bytes", "physical_memory", "check_failures", "DESIGN_MEMORY_FRACTION",
           "POOLINGS", "Pooling", "term_key", "format_pooling", "find_term",
           "UNPOOLED_SCALE", "FUNCTIONS"]

POOLINGS = ("pooled", "unpooled", "hierarchical")
#: the fixed group SD of the unpooled model, in units of the data scale (identity link)
UNPOOLED_SCALE = 10.0
#: the fixed group SD of the unpooled model on the link scale (logit and log links)
UNPOOLED_LINK_SD = 2.5
#: the elementwise functions a formula may call (the closed set: :func:`poolwise.formula.parse_formula`)
FUNCTIONS = functions()
#: fraction of physical memory the common design may take (formulae's matrix, its data frame and
#: the float copy coexist while it is built; X'X and the per-group sums follow); past it the
#: formula is refused before anything is built (:func:`check_design_size`)
DESIGN_MEMORY_FRACTION = 0.25


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for: formula, family, pooling and priors (no data).

    Parameters
    ----------
    formula
        lme4 syntax, ``"y ~ x1 + x2 + (1 + x1 | g)"``; ``||`` for uncorrelated group terms;
        ``(1 | region/county)`` nested, ``(1 | a) + (1 | b)`` crossed.  Separate terms on one
        factor are independent, as in lme4: ``(1 | g) + (0 + x | g)`` is ``(1 + x || g)``, and
        ``(1 + x | g) + (0 + z | g)`` two blocks on ``g``.  brms-style additions:
        ``"y | se(s) ~ 1 + (1 | g)"`` (known standard errors), ``"y | trials(n) ~ …"``
        (binomial), or lme4's ``"cbind(successes, failures) ~ …"`` (binomial, the trials being
        successes + failures; the failures a column or arithmetic on columns such as
        ``size - incidence``); ``offset(log(exposure))`` among the common terms.
    family
        ``"gaussian"``, ``"student_t"``, ``"bernoulli"``, ``"binomial"``, ``"poisson"``,
        ``"negative_binomial"``; ``None`` (the default): ``"binomial"`` for a ``cbind()``
        outcome, else ``"gaussian"``.
    pooling
        ``"pooled"``, ``"unpooled"``, ``"hierarchical"`` or a positive number (every group SD
        fixed at that value); or per group term, a mapping from the term (``"1|s"``,
        ``"1 + x|subj"``, or the factor ``"s"``: every block on it) to one of those (terms not named:
        ``"hierarchical"``), or the text ``"1|s=pooled, 1|d=hierarchical"``.  Stored as one
        setting when every term has the same, else as a tuple of (term, setting) pairs in the
        formula's order (:func:`term_key` names the terms).
    priors
        Priors by parameter name (``{"sd(Intercept|g)": "half_normal(2)", "cor(g)": "lkj(4)"}``);
        strings are parsed.
    weights
        A column of prior weights per row (lme4's ``weights``), or ``None``: for the gaussian and
        student_t families row i's residual variance is σ²/w_i; for the others each row's
        log-likelihood is multiplied by w_i (lme4's convention for poisson, and for a 0/1
        outcome; a binomial row of weight w counts as w copies of it).
    """

    formula: str
    family: Family | str | None = None
    pooling: Pooling | Mapping[str, str | float] = "hierarchical"
    priors: Mapping[str, Prior | str] = field(default_factory=dict)
    weights: str | None = None
    # parsed from the formula (not arguments)
    outcome: str = field(init=False, default="")
    se: str | None = field(init=False, default=None)
    trials: str | None = field(init=False, default=None)
    rhs: str = field(init=False, default="")
    common: str = field(init=False, default="1")
    group_terms: tuple[GroupTerm, ...] = field(init=False, default=())
    variables: tuple[str, ...] = field(init=False, default=())
    categorical: tuple[str, ...] = field(init=False, default=())
    #: the failures of a ``cbind(successes, failures)`` outcome, and the columns only they name
    failures: Counts | None = field(init=False, default=None)
    count_columns: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        p = parse_formula(self.formula)
        given = self.family
        object.__setattr__(self, "family", get_family(given if given is not None else
                                                      "binomial" if p.failures is not None else "gaussian"))
        per_term = _pooling_items(self.pooling)
        if per_term is None:
            object.__setattr__(self, "pooling", _check_pooling(self.pooling))
        if not isinstance(self.priors, Mapping):
            raise PriorError(
                "The 'priors' option must be a mapping from parameter name to prior.",
                hint='Write e.g. priors={"sd(Intercept|g)": "half_normal(2)"}.', option="priors",
            )
        object.__setattr__(self, "priors", {str(k): parse_prior(v, name=str(k)) for k, v in self.priors.items()})
        for name in ("outcome", "se", "trials", "rhs", "common", "group_terms", "variables", "categorical",
                     "failures", "count_columns"):
            object.__setattr__(self, name, getattr(p, name))
        if per_term is not None:
            object.__setattr__(self, "group_terms", _split_for_pooling(per_term, self.group_terms))
            object.__setattr__(self, "pooling", _resolve_pooling(per_term, self.group_terms, self.formula))
        fam = self.fam
        if p.se and fam.name != "gaussian":
            raise FormulaError(f"se({p.se}) in formula {self.formula} needs family='gaussian', not '{fam.name}'.",
                               option="formula", hint="Drop se() or use the gaussian family.")
        if p.failures is not None and not fam.needs_trials:
            raise FormulaError(
                f"cbind({p.outcome}, {p.failures.text}) in formula {self.formula} is a binomial outcome (successes, "
                f"failures); family='{fam.name}' does not fit it.", option="family",
                hint="Pass family='binomial' (the default for cbind()), or write the outcome as one column.")
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights):
            raise SpecError(f"The 'weights' option names a column of prior weights. Got {self.weights!r}.",
                            option="weights", hint='Write e.g. weights="w".')
        if self.weights is not None and p.se:
            raise SpecError(f"weights={self.weights!r} and se({p.se}) in formula {self.formula} both set each row's "
                            "residual variance.", option="weights",
                            hint="Fold the weights into the standard errors (se / sqrt(w)), or drop one of them.")
        if fam.needs_trials and not p.trials and p.failures is None:
            raise FormulaError(
                f"The binomial family needs the number of trials: write {p.outcome} | trials(n) ~ … "
                f"(formula: {self.formula}).", option="formula",
                hint="Name the column with the number of trials in trials(); for 0/1 outcomes use 'bernoulli'.")
        if p.trials and not fam.needs_trials:
            raise FormulaError(f"trials({p.trials}) in formula {self.formula} is for family='binomial'.",
                               option="formula", hint="Pass family='binomial' or drop trials().")

    # -- variants ---------------------------------------------------------------------------
    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with some arguments changed: ``spec.replace(pooling="pooled")``."""
        args: dict[str, Any] = {"formula": self.formula, "family": self.family, "pooling": self.pooling,
                                "priors": dict(self.priors), "weights": self.weights}
        unknown = set(changes) - set(args)
        if unknown:
            raise SpecError(f"Cannot replace {sorted(unknown)} in a ModelSpec.", hint=f"Use one of {sorted(args)}.")
        args.update(changes)
        return ModelSpec(str(args["formula"]), family=args["family"], pooling=args["pooling"],
                         priors=args["priors"], weights=args["weights"])

    def pooling_of(self, term: GroupTerm) -> str | float:
        """The pooling setting of one group term (``"pooled"``, ``"unpooled"``, ``"hierarchical"``
        or a fixed SD)."""
        if isinstance(self.pooling, tuple):
            return dict(self.pooling).get(term_key(term), "hierarchical")
        return self.pooling

    @property
    def pooling_text(self) -> str:
        """The pooling as text: ``hierarchical``, or ``1|s=hierarchical, 1|d=pooled`` per term."""
        return format_pooling(self.pooling)

    @property
    def fam(self) -> Family:
        """The family as a :class:`Family` (``family`` is normalized to one at construction)."""
        assert isinstance(self.family, Family)
        return self.family

    @property
    def group(self) -> GroupTerm | None:
        """The first group term, or ``None`` for a formula without one."""
        return self.group_terms[0] if self.group_terms else None

    @property
    def has_sigma(self) -> bool:
        """Whether the model has a residual SD (not when the standard errors are known)."""
        return "sigma" in self.fam.params and self.se is None

    @property
    def simple(self) -> bool:
        """One grouping factor with a varying intercept only: ``y ~ … + (1 | g)``."""
        return len(self.group_terms) == 1 and self.group_terms[0].exprs == ("Intercept",)

    @property
    def response_columns(self) -> tuple[str, ...]:
        """The columns of the outcome side: the outcome, se(), trials(), the columns only cbind()'s
        failures name, and the weights (none of them a predictor)."""
        weights = self.weights if self.weights not in self.variables else None  # (a predictor too: kept)
        cols = [self.outcome, self.se, self.trials, *self.count_columns, weights]
        return tuple(dict.fromkeys(c for c in cols if c))

    # -- data -------------------------------------------------------------------------------
    def bind(self, table: _data.Table, *, frequency: str | None = None) -> BoundSpec:
        """Validate ``table`` for this model and derive the data-dependent state.

        ``frequency`` names a column of row counts when each row stands for several (a table of
        counts per group and covariate pattern, :func:`poolwise.query.bind_counts`): the
        data-scaled default priors and the group sizes are then those of the original rows.

        Raises
        ------
        DataError, FormulaError, PriorError
            For bad data, a formula naming unknown columns, or priors for unknown parameters.
        """
        return _bind(self, table, frequency)


@dataclass(frozen=True)
class GroupBlock:
    """The group terms of one grouping factor, bound to data.

    Attributes
    ----------
    term
        The :class:`GroupTerm` (terms, factor, correlated or not).
    Z
        Values of the varying terms on each row, shape (n_obs, q) (a column of ones for the
        intercept).
    group
        Group index of each row, shape (n_obs,).
    levels
        Group labels in the order of the index.
    Sigma
        The covariance setting: ``None`` when learned, else the fixed q × q matrix (zeros for
        pooled).
    """

    term: GroupTerm
    Z: np.ndarray
    group: np.ndarray
    levels: list[str]
    Sigma: np.ndarray | None
    #: rows per group and Σ w z z' per group (J, q, q), when the rows were reduced in the query
    counts: np.ndarray | None = field(default=None, repr=False)
    ZtWZ: np.ndarray | None = field(default=None, repr=False)

    @property
    def factor(self) -> str:
        return self.term.factor

    @property
    def exprs(self) -> tuple[str, ...]:
        return self.term.exprs

    @property
    def q(self) -> int:
        return self.term.q

    @property
    def n_groups(self) -> int:
        return len(self.levels)

    @property
    def sd_names(self) -> list[str]:
        return [self.term.sd_name(e) for e in self.exprs]

    @property
    def cor_names(self) -> list[str]:
        """Names of the correlations (empty for ``||`` terms and single terms)."""
        if not self.term.correlated:
            return []
        e = self.exprs
        return [self.term.cor_name(e[i], e[j]) for j in range(len(e)) for i in range(j)]

    @property
    def pooled(self) -> bool:
        return self.Sigma is not None and not np.any(self.Sigma)

    def sizes(self) -> np.ndarray:
        """Rows per group."""
        if self.counts is not None:
            return self.counts
        return np.bincount(self.group, minlength=self.n_groups)


@dataclass(frozen=True)
class BoundSpec:
    """A :class:`ModelSpec` with what was learned from the data (trailing ``_`` in spirit).

    Attributes
    ----------
    spec
        What the user asked for.
    y
        Outcome, shape (n_obs,).
    X
        Common design matrix, shape (n_obs, p) (offset columns excluded).
    coef_names
        Names of the columns of ``X`` (``"Intercept"`` first when present).
    weights
        Observation precision weights: ones, or 1/se² when standard errors are known
        (then the residual variance is 1/weight and there is no ``sigma``).
    offset
        Known term added to the linear predictor (zeros without ``offset()``).
    trials
        Number of trials per row (binomial), else ``None``.
    blocks
        One :class:`GroupBlock` per group term: per grouping factor, or per block of a factor's
        covariance (``(1 + x | g) + (0 + z | g)``: two blocks on ``g``).
    priors
        Every prior used, by parameter name.
    prior_source
        ``"default"`` or ``"user"`` for each prior.
    scale
        The data scale (SD of the outcome, with the mean known variance added when ``se`` is
        given; 1 on the link scale of logit/log families); default priors and the unpooled
        SDs are multiples of it.
    """

    spec: ModelSpec
    y: np.ndarray
    X: np.ndarray
    coef_names: list[str]
    weights: np.ndarray
    offset: np.ndarray
    trials: np.ndarray | None
    blocks: tuple[GroupBlock, ...]
    priors: dict[str, Prior]
    prior_source: dict[str, str]
    scale: float
    design: Any = field(repr=False, default=None)
    #: for rows reduced inside their engine (:func:`poolwise.query.bind_source`): the statistics
    #: (``.simple``, ``.block``), the number of rows and where they are; the row arrays are then empty
    reduced: Any = field(repr=False, default=None)
    #: the user's spec when ``spec`` is a rewritten one (rows merged into counts,
    #: :func:`poolwise.query.bind_counts`): what output shows
    given: ModelSpec | None = field(repr=False, default=None)

    @property
    def shown(self) -> ModelSpec:
        """The spec as the user gave it (formula and family), for output."""
        return self.given if self.given is not None else self.spec

    @property
    def n_obs(self) -> int:
        if self.reduced is not None:
            return int(self.reduced.n_obs)
        return int(self.y.shape[0])

    @property
    def has_rows(self) -> bool:
        """Whether the row arrays are held (not when the rows were reduced in the query)."""
        return self.reduced is None

    @property
    def has_sigma(self) -> bool:
        return self.spec.has_sigma

    @property
    def pooling(self) -> Pooling:
        return self.spec.pooling

    @property
    def simple(self) -> bool:
        """One grouping factor with a varying intercept only."""
        return self.spec.simple

    # -- the first block, the varying intercept of the simple model ----------------------------
    @property
    def block(self) -> GroupBlock:
        return self.blocks[0]

    @property
    def group(self) -> np.ndarray:
        return self.blocks[0].group

    @property
    def levels(self) -> list[str]:
        return self.blocks[0].levels

    @property
    def n_groups(self) -> int:
        return self.blocks[0].n_groups

    @property
    def group_column(self) -> str:
        return self.blocks[0].factor

    @property
    def sd_name(self) -> str:
        """``sd(Intercept|g)`` of the first block."""
        return self.blocks[0].sd_names[0]

    @property
    def tau(self) -> float | None:
        """The first block's first group SD setting: ``None`` when learned, else fixed (0 pooled)."""
        S = self.blocks[0].Sigma
        return None if S is None else float(math.sqrt(S[0, 0]))

    def group_sizes(self) -> np.ndarray:
        """Number of rows in each group of the first block."""
        return self.blocks[0].sizes()

    # -- new data -------------------------------------------------------------------------------
    def encode(self, new: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encode new rows like the fitted ones (common terms and the first block's groups).

        Returns
        -------
        X_new, group index (−1 for a new group), and a mask of rows whose group is known.
        """
        X = self.encode_common(new)
        idx = self.encode_groups(new, self.blocks[0])
        return X, idx, idx >= 0

    def encode_common(self, new: pd.DataFrame) -> np.ndarray:
        """The common design of new rows (offsets are in :meth:`encode_offset`)."""
        missing = [c for c in self._predictor_columns() if c not in new.columns]
        if missing:
            _data.check_columns(_data.read_table(new), missing, context=" in the new data")
        if self.design is not None and self.design.common is not None and self._predictor_columns():
            if self.given is not None:  # rows merged into counts: the merged design's own columns (an
                # exposure in an offset) are not the user's, and the offset is not read here
                new = new.assign(**{v: 1.0 for v in self.spec.variables if v not in self.given.variables})
            full = self.design.common.evaluate_new_data(new)
            frame = full.as_dataframe()
            return np.asarray(frame[self.coef_names], dtype=float)
        return np.ones((len(new), len(self.coef_names)), dtype=float)

    def encode_groups(self, new: pd.DataFrame, block: GroupBlock) -> np.ndarray:
        """Group index of new rows in ``block`` (−1 for a group not seen in fitting)."""
        cols = list(block.term.factor_columns)
        if not all(c in new.columns for c in cols):
            return np.full(len(new), -1, dtype=int)
        parts = [np.asarray(_data.group_labels(_data.read_table(new[[c]]), c)).astype(str) for c in cols]
        labels = parts[0]
        for p in parts[1:]:
            labels = np.char.add(np.char.add(labels, ":"), p)
        pos = {lv: i for i, lv in enumerate(block.levels)}
        return np.array([pos.get(str(v), -1) for v in labels], dtype=int)

    def _predictor_columns(self) -> list[str]:
        skip = set(self.shown.response_columns)  # (the user's columns, also for rows merged into counts)
        for b in self.blocks:
            skip.update(b.term.factor_columns)
        return [v for v in self.shown.variables if v not in skip]


def check_constant_outcome(spec: ModelSpec, constant: bool, value: float) -> None:
    """Refuse a constant outcome where the family estimates a residual SD (gaussian, student_t).

    Its SD is 0: the likelihood grows without bound as sigma → 0 (no proper posterior, no
    maximum) and the data-scaled default priors have no scale.  Other families fit a constant
    outcome (counts all 0, every trial a success): a proper posterior under the priors; the
    maximum-likelihood path refuses it (:func:`poolwise.infer.empirical.sample`).  With known
    standard errors (``y | se(s) ~ …``) there is no sigma and a constant outcome is data.

    Raises
    ------
    DataError
    """
    if constant and spec.has_sigma and spec.fam.identity:
        y = spec.outcome
        raise DataError(
            f"The outcome '{y}' is constant (every row is {value:.6g}): its SD is 0, so the residual SD sigma "
            f"cannot be estimated and the default priors, scaled to sd({y}), are undefined.",
            hint=f"Check that '{y}' is the right outcome column; with known standard errors write "
                 f"'{y} | se(<column>) ~ …'.", column=y)


def physical_memory() -> int:
    """Bytes of physical memory (``sysconf``), or 8 GiB where the system does not say."""
    import os

    try:
        total = int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        total = 0
    return total if total > 0 else 8 * 2**30


def design_columns(rhs: str, levels: Mapping[str, int]) -> list[tuple[str, int, list[tuple[str, int]]]]:
    """How many columns each term of the common part ``rhs`` expands to, at most, before building.

    ``levels`` holds the number of distinct values of each categorical column (text, or wrapped in
    ``C()``); a term's count is the product over its parts of the levels of a categorical, the
    degree of ``poly(x, k)``, and 1 for a number or a function of numbers (an upper bound: the
    full-rank coding drops a level of some factors).  Offsets count 0.

    Returns
    -------
    (term, columns, [(categorical part, levels), …]) for each term.
    """
    import re

    from formulae import model_description

    try:
        terms = model_description(rhs).common_terms
    except Exception:  # a formula formulae cannot read is reported when it is built
        return []
    out = []
    for t in terms:
        parts = getattr(t, "components", None)
        if not parts:
            out.append(("Intercept", 1, []))
            continue
        n, cats = 1, []
        for c in parts:
            name = str(c.name)
            if name.startswith("offset("):
                n = 0
            elif name.startswith("C("):
                m = re.match(r"C\(\s*(`[^`]+`|[A-Za-z_.][\w.]*)", name)
                col = m.group(1).strip("`") if m else name
                k = levels.get(col, 1)
                n, cats = n * k, cats + [(col, k)]
            elif name.startswith("poly("):
                m = re.search(r",\s*(?:degree\s*=\s*)?(\d+)\s*\)$", name)
                n *= int(m.group(1)) if m else 1
            elif name in levels:
                n, cats = n * levels[name], cats + [(name, levels[name])]
        out.append((":".join(str(c.name) for c in parts), n, cats))
    return out


def format_bytes(n: float) -> str:
    """``1.6e11`` → ``'160 GB'`` (decimal units, three significant digits)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000 or unit == "EB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def check_design_size(spec: ModelSpec, levels: Mapping[str, int], *, rows: int, groups: int = 0) -> None:
    """Refuse a common design too large to build, from its column count, before building it.

    The design takes 8·p·(rows + p + groups) bytes: the rows × p matrix, X'X and the per-group
    sums; the budget is :data:`DESIGN_MEMORY_FRACTION` of physical memory.

    Raises
    ------
    FormulaError
        Naming the widest term, its column count and the memory the design would need.
    """
    cols = design_columns(spec.common, levels)
    p = sum(n for _, n, _ in cols)
    need = 8 * p * (rows + p + groups)
    total = physical_memory()
    budget = int(DESIGN_MEMORY_FRACTION * total)
    if need <= budget:
        return
    name, n, cats = max(cols, key=lambda t: t[1])
    how = f" ({' × '.join(f'{k:,}' for _, k in cats)} levels)" if len(cats) > 1 else ""
    factors = [c for c, _ in cats]
    if factors:
        group = ":".join(factors)
        hint = (f"Enter it as a group term (1 | {group}) instead of the fixed {name}, or use columns with fewer "
                "levels.")
    else:
        hint = "Use fewer or simpler terms."
    raise FormulaError(
        f"The term {name} of formula {spec.formula} expands to {n:,} columns{how}: the design ({p:,} columns "
        f"× {rows:,} rows, with its cross products) would need {format_bytes(need)}, more than "
        f"{format_bytes(budget)} ({DESIGN_MEMORY_FRACTION:.0%} of this machine's {format_bytes(total)} of memory).",
        hint=hint, option="formula")


#: the pooling as stored: one setting for every group term, or (term, setting) pairs
Pooling = str | float | tuple[tuple[str, str | float], ...]


def term_key(term: GroupTerm) -> str:
    """How a group term is named in a per-term pooling: ``"1|s"``, ``"1 + x|subj"``, ``"1 + x||g"``."""
    bar = "|" if term.correlated else "||"
    return f"{' + '.join('1' if e == 'Intercept' else e for e in term.exprs)}{bar}{term.factor}"


def format_pooling(pooling: Pooling) -> str:
    """``"hierarchical"``, ``"0.5"``, or ``"1|s=hierarchical, 1|d=pooled"`` for a per-term pooling
    (text that :class:`ModelSpec` reads back)."""
    if isinstance(pooling, tuple):
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in pooling)
    return str(pooling)


def _pooling_items(pooling: Any) -> list[tuple[str, Any]] | None:
    """A per-term pooling as (key, setting) pairs, or ``None`` for one setting for every term.

    Reads a mapping, a tuple of pairs (the stored form) or the text ``"1|s=pooled, 1|d=0.5"``.
    """
    if isinstance(pooling, Mapping):
        return [(str(k), v) for k, v in pooling.items()]
    if isinstance(pooling, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in pooling):
        return [(str(k), v) for k, v in pooling]
    if isinstance(pooling, str) and "=" in pooling:
        items = []
        for part in pooling.split(","):
            key, sep, value = part.partition("=")
            if not part.strip():
                continue
            if not sep or not key.strip() or not value.strip():
                raise SpecError(f"Cannot read the pooling {part.strip()!r} in {pooling!r}.", option="pooling",
                                hint="Write TERM=SETTING pairs separated by commas, e.g. "
                                     '"1|s=pooled, 1|d=hierarchical".')
            items.append((key.strip(), value.strip()))
        return items
    return None


def _norm_key(key: str) -> str:
    """A term key without spaces or enclosing brackets, ``"( 1 | s )"`` → ``"1|s"``."""
    k = re.sub(r"\s+", "", key)
    while k.startswith("(") and k.endswith(")"):
        k = k[1:-1]
    return k


def find_term(key: str, terms: tuple[GroupTerm, ...], formula: str, *, option: str = "pooling",
              what: str = "The pooling names") -> GroupTerm:
    """The group term ``key`` names: as the formula writes it (``"1|s"``, ``"(1 + x | subj)"``,
    spaces free) or by its grouping factor (``"s"``).

    Raises
    ------
    SpecError
        For a key naming no group term of the formula, listing the formula's terms.
    """
    names: dict[str, GroupTerm] = {}
    for t in terms:
        keys = [term_key(t), term_key(t).replace("||", "|"), t.factor]
        if t.exprs[0] != "Intercept":  # as the formula writes it: (0 + z | g)
            keys += ["0+" + keys[0], "0+" + keys[1]]
        for name in keys:
            names.setdefault(_norm_key(name), t)
    t = names.get(_norm_key(str(key)))
    if t is not None:
        same = [u for u in terms if u.factor == t.factor]
        if len(same) > 1 and _norm_key(str(key)) == _norm_key(t.factor):  # a factor of several blocks
            listed = ", ".join(repr(term_key(u)) for u in same)
            raise SpecError(f"{what} {key!r}, a grouping factor with several group terms in formula {formula} "
                            f"({listed}).", hint=f"Name one of them: {listed}.", option=option)
        return t
    listed = ", ".join(repr(term_key(t)) for t in terms) or "none"
    near = difflib.get_close_matches(_norm_key(str(key)), list(names), n=1)
    hint = (f"Did you mean '{near[0]}'?" if near else
            "Name a group term as the formula writes it, or its grouping factor." if terms else
            "Add a group term such as (1 | g) to the formula.")
    raise SpecError(f"{what} {key!r}, which is no group term of formula {formula} (its group terms: {listed}).",
                    hint=hint, option=option)


def _split_for_pooling(items: list[tuple[str, Any]], terms: tuple[GroupTerm, ...]) -> tuple[GroupTerm, ...]:
    """The group terms, with each block of independent terms (``||``, or ``(1 | g) + (0 + x | g)``)
    that a pooling key names one term of (``"1|g"``, ``"0 + x|g"``) split into one block per term:
    the same model (Σ diagonal either way), each term then with its own setting."""
    wanted = {_norm_key(str(k)) for k, _ in items}
    out: list[GroupTerm] = []
    for t in terms:
        if t.correlated or t.q < 2:
            out.append(t)
            continue
        singles = [GroupTerm((e,), t.factor, True, sources=t.sources) for e in t.exprs]
        names = {_norm_key(n) for u in singles for n in (term_key(u), "0+" + term_key(u))}
        if not names & wanted:
            out.append(t)
            continue
        out.extend(singles)
    parts: dict[str, int] = {}  # renumber the blocks of each factor
    numbered = []
    for t in out:
        k = parts.get(t.factor, 0)
        parts[t.factor] = k + 1
        numbered.append(t if t.part == k else GroupTerm(t.exprs, t.factor, t.correlated, sources=t.sources, part=k))
    return tuple(numbered)


def _resolve_pooling(items: list[tuple[str, Any]], terms: tuple[GroupTerm, ...], formula: str) -> Pooling:
    """Each group term's setting from the user's (key, setting) pairs; one setting when all agree.

    Raises
    ------
    SpecError
        For a key naming no group term of the formula (or one named twice), or a bad setting.
    """
    settings: dict[GroupTerm, str | float] = {}
    for key, value in items:
        same = [t for t in terms if _norm_key(t.factor) == _norm_key(str(key))]  # a factor: all its terms
        for t in same if len(same) > 1 else [find_term(key, terms, formula)]:
            if t in settings:
                raise SpecError(f"The pooling names the group term {term_key(t)!r} twice (as {key!r}).",
                                hint="Give each group term one setting.", option="pooling")
            try:
                settings[t] = _check_pooling(value)
            except SpecError as err:
                raise SpecError(f"The pooling of {key!r}: {err.message}", hint=err.hint, option="pooling") from None
    full = [(term_key(t), settings.get(t, "hierarchical")) for t in terms]
    values = {v for _, v in full}
    if len(values) <= 1:  # every term alike: the one setting
        return next(iter(values), "hierarchical")
    return tuple(full)


def _check_pooling(pooling: Any) -> str | float:
    msg = ("The 'pooling' option must be 'pooled', 'unpooled', 'hierarchical' or a positive number "
           f"(a fixed group SD). Got {pooling!r} instead.")
    if isinstance(pooling, str):
        key = pooling.strip().lower()
        if key in POOLINGS:
            return key
        try:
            pooling = float(key)
        except ValueError:
            raise SpecError(msg, option="pooling") from None
    if isinstance(pooling, (int, float)) and not isinstance(pooling, bool):
        if not math.isfinite(pooling) or pooling <= 0:
            raise SpecError(
                f"A numeric 'pooling' is a fixed group SD and must be a positive finite number. Got {pooling}.",
                hint="Use pooling='pooled' for a group SD of 0.", option="pooling",
            )
        return float(pooling)
    raise SpecError(msg, option="pooling")


def _labels(table: _data.Table, cols: list[str]) -> pd.Categorical:
    if len(cols) == 1:
        return _data.group_labels(table, cols[0])
    labels = [_data.group_labels(table, c) for c in cols]
    codes = [np.asarray(lab.codes, dtype=np.int64) for lab in labels]
    if all(c.size == 0 or c.min() >= 0 for c in codes):
        # the level pairs from the codes (no string per row): a:b for each pair that occurs, sorted as text
        key = codes[0]
        for lab, c in zip(labels[1:], codes[1:]):
            key = key * len(lab.categories) + c
        pairs, inv = np.unique(key, return_inverse=True)
        names = []
        for v in pairs.tolist():
            at = []
            for lab in reversed(labels[1:]):
                v, r = divmod(v, len(lab.categories))
                at.append(str(lab.categories[r]))
            names.append(":".join([str(labels[0].categories[v])] + at[::-1]))
        order = sorted(range(len(names)), key=names.__getitem__)
        rank = np.empty(len(names), dtype=np.int64)
        rank[order] = np.arange(len(names))
        return pd.Categorical.from_codes(rank[np.asarray(inv).ravel()], categories=[names[i] for i in order])
    parts = [np.asarray(lab).astype(str) for lab in labels]
    joined = pd.Series(parts[0])
    for p in parts[1:]:
        joined = joined + ":" + p
    return pd.Categorical(joined, categories=sorted(set(joined)))


def check_formula_columns(spec: ModelSpec, cols: list[str]) -> None:
    """Every column the formula names exists (else the near miss), and there is a group term.

    Raises
    ------
    FormulaError, SpecError
    """
    f = spec.formula
    for v in spec.variables:
        if v not in cols:
            near = ([c for c in cols if c.lower() == v.lower()] or difflib.get_close_matches(v, cols, n=1, cutoff=0.5)
                    or [c for c in cols if v.startswith(c) or c.startswith(v)])
            hint = f"Did you mean '{near[0]}'?" if near else f"Columns are: {', '.join(cols[:20])}."
            raise FormulaError(f"Unknown column '{v}' in formula: {mark(f, v)}.", hint=hint, column=v)
    if not spec.group_terms:
        raise SpecError(
            f"The formula {f} has no group term.",
            hint="Add a varying intercept such as (1 | g): poolwise compares ways of pooling groups.",
            option="formula",
        )


def _bind(spec: ModelSpec, table: _data.Table, frequency: str | None = None) -> BoundSpec:
    f = spec.formula
    fam = spec.fam
    check_formula_columns(spec, table.columns)
    group_cols = sorted({c for t in spec.group_terms for c in t.factor_columns})
    skip = {*spec.response_columns, *group_cols}
    numeric = [v for v in spec.variables if v not in skip and _is_numeric(table.frame[v])]
    positive = [c for c in (spec.se, spec.weights) if c]
    _data.validate(table, outcome=spec.outcome, numeric=numeric + [c for c in (spec.trials, *spec.count_columns) if c],
                   groups=group_cols, positive=positive)
    wrapped = set(spec.categorical)  # categorical by the user's C()
    for v in spec.variables:  # text/categorical predictors must at least have no missing values
        if v not in skip and v not in numeric:
            bad = np.flatnonzero(table.frame[v].isna().to_numpy())
            if bad.size:
                raise DataError(f"Column '{v}' has {bad.size} missing values ({format_rows(bad.tolist())}).",
                                hint="Drop or impute them before fitting.", column=v, rows=bad.tolist())
            if v not in wrapped:  # numbers with a few text cells are not a categorical
                _data.check_text_predictor(table, v)
    frame = table.frame
    # count the design's columns from the distinct values before formulae builds anything
    n_levels = {v: int(frame[v].nunique()) for v in spec.variables
                if v not in skip and (v not in numeric or v in wrapped)}
    check_design_size(spec, n_levels, rows=len(frame))  # the per-group sums (groups ≤ rows) are dwarfed
    y = np.asarray(frame[spec.outcome], dtype=float)
    trials = np.asarray(frame[spec.trials], dtype=float) if spec.trials else None
    if spec.failures is not None:
        trials = y + check_failures(spec, np.asarray(spec.failures.evaluate(
            lambda c: np.asarray(frame[c], dtype=float)), dtype=float) * np.ones_like(y))
    _check_support(fam, spec.outcome, y, spec.trials, trials)
    # common design through formulae (the encoding state is kept for predict)
    try:
        with np.errstate(all="ignore"):  # log(0) and the like are reported below, row by row
            design = design_matrices(f"{spec.outcome} ~ {spec.common}", frame)
    except Exception as err:  # formulae's own errors for transforms it cannot apply
        raise FormulaError(f"Cannot build the design of formula {f}: {err}.",
                           hint="Check the transformations in the formula.", option="formula") from None
    if design.common is not None:
        full = design.common.as_dataframe()
        off_cols = [c for c in full.columns if str(c).startswith("offset(")]
        offset = full[off_cols].to_numpy(dtype=float).sum(axis=1) if off_cols else np.zeros(len(frame))
        coef_names = [str(c) for c in full.columns if c not in off_cols]
        X = full[coef_names].to_numpy(dtype=float)
    else:
        X, coef_names, offset = np.zeros((len(frame), 0)), [], np.zeros(len(frame))
    if not np.all(np.isfinite(offset)):
        bad = np.flatnonzero(~np.isfinite(offset))
        raise DataError(f"The offset is not finite on {bad.size} rows ({format_rows(bad.tolist())}).",
                        hint="An offset such as log(exposure) needs exposure > 0.", rows=bad.tolist())
    for i, name in enumerate(coef_names):  # sums of squares must fit in float64 (the data's units are free)
        if name != "Intercept":
            check_scale(name, float(np.max(np.abs(X[:, i]), initial=0.0)))
    if fam.identity:
        check_scale(spec.outcome, float(np.max(np.abs(y - offset), initial=0.0)))
    _check_design(X, coef_names)
    # scale of the outcome on the link scale
    if spec.se:
        se = np.asarray(frame[spec.se], dtype=float)
        weights = 1.0 / se**2
        scale = float(math.sqrt(np.var(y) + np.mean(se**2)))
    else:
        weights = np.asarray(frame[spec.weights], dtype=float) if spec.weights else np.ones_like(y)
        scale = float(np.std(y)) if fam.identity else 1.0
    check_constant_outcome(spec, bool(y.size) and bool(np.ptp(y) == 0), float(y[0]) if y.size else 0.0)
    if not scale > 0:
        scale = float(max(abs(np.mean(y)), 1.0))
    # rows of a table of counts per (group, covariate pattern) stand for `freq` rows each: the
    # data-scaled defaults and the group sizes are those of the rows they stand for
    freq = None if frequency is None else np.asarray(frame[frequency], dtype=float)
    if freq is not None and not fam.identity:
        center = (_link_center(fam, y, trials) if fam.link == "logit"
                  else float(math.log(max(float(y.sum() / freq.sum()), 0.01))))
    else:
        center = float(np.mean(y)) if fam.identity else _link_center(fam, y, trials)

    def mean_sd(v: np.ndarray) -> tuple[float, float]:
        m = float(np.average(v, weights=freq))
        return m, float(math.sqrt(max(float(np.average((v - m) ** 2, weights=freq)), 0.0)))

    # group blocks
    blocks_raw = []
    for term in spec.group_terms:
        labels = _labels(table, list(term.factor_columns))
        group = np.asarray(labels.codes, dtype=np.int64)
        levels = [str(c) for c in labels.categories]
        Z = _term_columns(term, frame, design, coef_names, X, f, n_levels)
        _check_slopes(term, Z, group, len(levels))
        if spec.has_sigma and fam.identity and spec.pooling_of(term) != "pooled" and freq is None:
            _check_within_outcome(spec, term, y, group, len(levels))
        z_sd = np.array([mean_sd(Z[:, k])[1] for k in range(term.q)])
        warn_far_slopes(term, [mean_sd(Z[:, k])[0] for k in range(term.q)], z_sd.tolist())
        counts = None if freq is None else np.bincount(group, weights=freq, minlength=len(levels)).astype(np.int64)
        blocks_raw.append(RawBlock(term, Z, group, levels, z_sd, counts=counts))
    x_means = {c: mean_sd(X[:, i])[0] for i, c in enumerate(coef_names) if c != "Intercept"}
    x_sds = {c: mean_sd(X[:, i])[1] for i, c in enumerate(coef_names) if c != "Intercept"}
    return bind_parts(spec, y=y, X=X, coef_names=coef_names, weights=weights, offset=offset, trials=trials,
                      blocks=blocks_raw, center=center, scale=scale, x_means=x_means, x_sds=x_sds, design=design)


@dataclass(frozen=True)
class RawBlock:
    """One grouping factor's data before the pooling is applied (see :func:`bind_parts`)."""

    term: GroupTerm
    Z: np.ndarray
    group: np.ndarray
    levels: list[str]
    z_sd: np.ndarray  # SD of each group term's column over the rows (1 for the intercept's ones)
    counts: np.ndarray | None = None
    ZtWZ: np.ndarray | None = None


def bind_parts(
    spec: ModelSpec, *, y: np.ndarray, X: np.ndarray, coef_names: list[str], weights: np.ndarray,
    offset: np.ndarray, trials: np.ndarray | None, blocks: list[RawBlock], center: float, scale: float,
    x_means: dict[str, float], x_sds: dict[str, float], design: Any, reduced: Any = None,
) -> BoundSpec:
    """The bound spec from the data's summaries: data-scaled default priors, the user's priors
    resolved against them, and each block's Σ setting from the pooling.

    Shared by :meth:`ModelSpec.bind` (rows in memory) and :func:`poolwise.query.bind_source`
    (rows reduced inside DuckDB or Spark, whose row arrays are then empty).
    """
    fam = spec.fam
    sd_names = [t.sd_name(e) for t in spec.group_terms for e in t.exprs]
    defaults = default_priors(
        y_mean=center, y_sd=scale, coef_names=coef_names, x_means=x_means, x_sds=x_sds,
        has_sigma=spec.has_sigma, sd_names=sd_names,
    )
    for raw in blocks:  # slope SDs scale with the slope's column
        term = raw.term
        for k, e in enumerate(term.exprs):
            if e != "Intercept":
                sd_z = float(raw.z_sd[k]) or 1.0
                defaults[term.sd_name(e)] = Prior("half_student_t", (3.0, _round(2.5 * scale / sd_z)))
        if term.correlated and term.q > 1:
            defaults[f"cor({term.factor})"] = Prior("lkj", (2.0,))
    if "nu" in fam.params:
        defaults["nu"] = Prior("gamma", (2.0, 0.1))
    if "phi" in fam.params:
        defaults["phi"] = Prior("exponential", (1.0,))
    priors, source = _resolve_priors(spec, defaults)
    out = []
    for raw in blocks:
        term = raw.term
        pooling = spec.pooling_of(term)
        sdz = np.array([1.0 if e == "Intercept" else (float(raw.z_sd[k]) or 1.0) for k, e in enumerate(term.exprs)])
        if pooling == "pooled":
            Sigma: np.ndarray | None = np.zeros((term.q, term.q))
        elif pooling == "unpooled":
            wide = (UNPOOLED_SCALE * scale if fam.identity else UNPOOLED_LINK_SD) / sdz
            Sigma = np.diag(np.array([float(f"{v:.4g}") for v in wide]) ** 2)
        elif pooling == "hierarchical":
            Sigma = None
        else:
            Sigma = np.eye(term.q) * float(pooling) ** 2
        if Sigma is not None:  # the group SDs and correlations are not parameters then
            for name in [term.sd_name(e) for e in term.exprs]:
                priors.pop(name, None)
                source.pop(name, None)
        out.append(GroupBlock(term, raw.Z, raw.group, raw.levels, Sigma, counts=raw.counts, ZtWZ=raw.ZtWZ))
    learned_cor = {b.factor for b in out if b.Sigma is None and b.term.correlated and b.q > 1}
    for b in out:  # (one LKJ prior per factor: kept while another block on the factor learns its correlations)
        if b.Sigma is not None and b.factor not in learned_cor:
            priors.pop(f"cor({b.factor})", None)
            source.pop(f"cor({b.factor})", None)
    return BoundSpec(
        spec=spec, y=y, X=X, coef_names=coef_names, weights=weights, offset=offset, trials=trials,
        blocks=tuple(out), priors=priors, prior_source=source, scale=scale, design=design, reduced=reduced,
    )


def _resolve_priors(spec: ModelSpec, defaults: dict[str, Prior]) -> tuple[dict[str, Prior], dict[str, str]]:
    known = set(defaults)
    priors = dict(defaults)
    source = {k: "default" for k in defaults}
    for name, given in spec.priors.items():
        if name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"Did you mean '{near[0]}'?" if near else f"Parameters with priors: {', '.join(sorted(known))}."
            raise PriorError(f"No parameter named '{name}' in this model for a prior.", hint=hint, option=name)
        prior = parse_prior(given, name=name)
        want = defaults[name].support
        if prior.support != want:
            kind = {"positive": "a positive parameter (half_normal, half_student_t, half_cauchy, exponential, gamma)",
                    "correlation": "a correlation matrix (lkj)", "real": "a real parameter (normal)"}[want]
            raise PriorError(f"Prior {prior} does not fit '{name}', which is {kind}.", option=name,
                             hint="Pick a distribution with the right support.")
        if want == "real" and prior.dist != "normal":
            raise PriorError(f"Prior {prior} for '{name}': coefficients take normal priors in this version.",
                             option=name, hint="Use normal(mu, sigma).")
        priors[name] = prior
        source[name] = "user"
    return priors, source


def _link_center(fam: Family, y: np.ndarray, trials: np.ndarray | None) -> float:
    if fam.link == "logit":
        p = float(np.sum(y) / np.sum(trials)) if trials is not None else float(np.mean(y))
        p = min(max(p, 0.01), 0.99)
        return float(math.log(p / (1 - p)))
    return float(math.log(max(float(np.mean(y)), 0.01)))


def _round(v: float) -> float:
    return float(f"{v:.4g}")


def _is_numeric(s: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s))


def check_failures(spec: ModelSpec, failures: np.ndarray) -> np.ndarray:
    """The failures of a ``cbind(successes, failures)`` outcome, checked: whole numbers >= 0, finite.

    Raises
    ------
    DataError
        Naming the failures as the formula writes them and the rows at fault.
    """
    assert spec.failures is not None
    what = f"The failures {spec.failures.text} of cbind({spec.outcome}, {spec.failures.text})"
    for mask, fault, hint in (
        (~np.isfinite(failures), "are missing or not finite", "Drop or impute those rows before fitting."),
        (failures < 0, "are negative", "The failures are counts: check the columns (successes cannot exceed the "
                                       "number of trials)."),
        (failures != np.floor(failures), "are not whole numbers", "The failures are counts."),
    ):
        bad = np.flatnonzero(mask & ~np.isnan(failures) if fault != "are missing or not finite" else mask)
        if bad.size:
            raise DataError(f"{what} {fault} on {bad.size} rows ({format_rows(bad.tolist())}).", hint=hint,
                            column=spec.failures.columns[0], rows=bad.tolist())
    return failures


def _check_support(fam: Family, outcome: str, y: np.ndarray, trials_col: str | None,
                   trials: np.ndarray | None) -> None:
    def fail(mask: np.ndarray, what: str, hint: str, column: str = outcome) -> None:
        bad = np.flatnonzero(mask)
        if bad.size:
            raise DataError(f"Column '{column}' {what} for the {fam.name} family on {bad.size} rows "
                            f"({format_rows(bad.tolist())}).", hint=hint, column=column, rows=bad.tolist())

    integer = np.equal(np.floor(y), y)
    if fam.support == "binary":
        fail((y != 0) & (y != 1), "must be 0 or 1", "Code the outcome as 0/1, or use 'binomial' with trials().")
    elif fam.support == "count":
        fail(y < 0, "must be non-negative", "Counts cannot be negative.")
        fail(~integer, "must hold whole numbers", "Counts must be integers; for measurements use 'gaussian'.")
    elif fam.support == "trials":
        assert trials is not None
        if trials_col is None:  # cbind(successes, failures): the failures are checked (check_failures)
            fail(trials < 1, "has rows with no trials (successes + failures = 0)",
                 "A row of no trials carries no information: drop it.")
        else:
            fail((trials < 1) | ~np.equal(np.floor(trials), trials), "must be whole numbers >= 1",
                 "The number of trials is a positive count.", column=trials_col)
        fail((y < 0) | ~integer, "must be whole numbers >= 0", "Successes are counts.")
        if trials_col is not None:
            fail(y > trials, f"must not exceed trials ({trials_col})", "Successes cannot exceed the number of trials.")


def _term_columns(term: GroupTerm, frame: pd.DataFrame, design: Any, coef_names: list[str], X: np.ndarray,
                  formula: str, levels: Mapping[str, int] | None = None) -> np.ndarray:
    cols, dm = [], None
    for e in term.exprs:
        if e == "Intercept":
            cols.append(np.ones(len(frame)))
            continue
        if e in coef_names and design.common is not None and e in design.common.terms:  # the same term
            cols.append(X[:, coef_names.index(e)])
            continue
        counted = sum(n for _, n, _ in design_columns(f"0 + {e}", levels or {}))
        if counted > 1:  # refused below once built; counted first, so that nothing is built
            raise SpecError(f"The group term {term} varies '{e}', which expands to {counted:,} columns.",
                            hint="Varying slopes take numeric columns; give a categorical slope as 0/1 columns.",
                            option="formula")
        try:
            with np.errstate(all="ignore"):
                dm = design_matrices(term.design_formula(), frame.assign(pw_response_=0.0)) if dm is None else dm
            m = np.asarray(dm.common[e], dtype=float).reshape(len(frame), -1)
        except Exception as err:
            raise FormulaError(f"Cannot build the group term {term} of formula {formula}: {err}.",
                               option="formula") from None
        if m.shape[1] != 1:
            raise SpecError(f"The group term {term} varies '{e}', which expands to {m.shape[1]} columns.",
                            hint="Varying slopes take numeric columns; give a categorical slope as 0/1 columns.",
                            option="formula")
        cols.append(m[:, 0])
    return np.column_stack(cols) if cols else np.zeros((len(frame), 0))


def _constant_within(v: np.ndarray, group: np.ndarray, J: int) -> bool:
    """Whether ``v`` takes one value within every one of the ``J`` groups."""
    lo = np.full(J, np.inf)
    hi = np.full(J, -np.inf)
    np.minimum.at(lo, group, v)
    np.maximum.at(hi, group, v)
    return bool(np.all(hi - lo == 0))


def _check_slopes(term: GroupTerm, Z: np.ndarray, group: np.ndarray, J: int) -> None:
    for k, e in enumerate(term.exprs):
        if e == "Intercept":
            continue
        if _constant_within(Z[:, k], group, J):
            raise DataError(
                f"The slope '{e}' in {term} is constant within every group of '{term.factor}', so a slope per "
                "group cannot be estimated.",
                hint=f"Enter '{e}' as a common (group-level) predictor instead of a varying slope.", column=e)


#: magnitudes whose squares, summed over many rows, stay within float64 (about 1e±308)
_BIG, _SMALL = 1e150, 1e-150


def check_scale(name: str, largest: float) -> None:
    """Raise :class:`~poolwise.errors.DataError` when a column's values are too large or too small
    for sums of their squares in float64 (``largest``: the largest |value|, or a sample's).

    Between the limits nothing depends on the units: the statistics are taken about a shift and
    the results map back exactly (:class:`poolwise.reduce.Shift`).
    """
    if largest > _BIG or 0 < largest < _SMALL:
        big = largest > _BIG
        raise DataError(
            f"'{name}' holds values too {'large' if big else 'small'} for float64 arithmetic (largest |value| "
            f"{largest:.3g}): their squares would {'overflow' if big else 'underflow to 0'}.",
            hint=f"Rescale '{name}' (other units: divide or multiply by a power of 10) so that its values lie "
                 "within about 1e-150 to 1e150; the estimates scale with it.", column=name)


#: a varying slope whose values lie further than this many SDs from 0 is ill-conditioned
_FAR_SLOPE = 1e3


def warn_far_slopes(term: GroupTerm, means: list[float], sds: list[float]) -> None:
    """Warn when a varying slope's column lies far from 0 beside its spread (|mean| > 1000 SD).

    The group intercepts of ``(1 + x | g)`` are the groups' values at x = 0; far from the data
    their SD and correlation with the slope are extrapolated, and the statistics (which keep the
    slope column as it is: its units define Σ) lose digits: with x + 10⁶ the REML slope SD
    collapses to 0.  Only the user can move the origin, since that changes what Σ means.
    """
    if term.exprs[:1] != ("Intercept",):
        return
    for e, m, sd in zip(term.exprs, means, sds):
        if e != "Intercept" and sd > 0 and abs(m) > _FAR_SLOPE * sd:
            warnings.warn(PoolwiseWarning(
                f"The varying slope '{e}' in {term} lies {abs(m) / sd:.3g} SDs from 0 (mean {m:.6g}, SD {sd:.3g}): "
                f"the group intercepts are extrapolated to {e} = 0 and their SD and correlation are poorly "
                f"determined (and lose digits). Centre '{e}' near its mean (e.g. I({e} - {m:.4g})) before "
                "fitting."), stacklevel=3)


def _check_within_outcome(spec: ModelSpec, term: GroupTerm, y: np.ndarray, group: np.ndarray, J: int) -> None:
    """Refuse an outcome that repeats one value within every group (and more rows than groups):
    the group values then fit every row exactly and p(y | σ, …) grows like σ^−(n − J) as σ → 0,
    an improper posterior for every method (the exact path checks its statistics the same way)."""
    if y.size <= J:
        return
    if _constant_within(y, group, J):
        raise DataError(
            f"The outcome '{spec.outcome}' does not vary within any group of '{term.factor}' (each group's rows repeat "
            "one value), so the likelihood grows without bound as the residual SD sigma → 0.",
            hint=f"Fit one row per group of '{term.factor}' (the group's value), or give known standard errors with "
                 f"'{spec.outcome} | se(<column>) ~ …'.", column=spec.outcome)


def _check_design(X: np.ndarray, names: list[str]) -> None:
    n = X.shape[0]
    for i, name in enumerate(names):
        if name != "Intercept" and n > 1 and np.ptp(X[:, i]) == 0:
            raise DataError(
                f"Predictor '{name}' is constant (every row is {X[0, i]:.4g}), so its coefficient cannot be "
                "told apart from the intercept.", hint="Remove it from the formula.", column=name,
            )
    if X.shape[1] == 0:
        return
    # perfect collinearity: a column in the span of the ones before it
    norm = np.sqrt((X**2).mean(axis=0))
    norm[norm == 0] = 1.0
    Z = X / norm
    # |R_kk| of one QR is the norm of column k's part outside the span of the columns before it:
    # O(n·p²) in all, where a least-squares fit per column cost O(n·p³) (minutes for 300 columns)
    R = np.linalg.qr(Z, mode="r")
    m = min(R.shape)
    dependent = [int(k) for k in np.flatnonzero(np.abs(np.diagonal(R)[:m]) / math.sqrt(n) < 1e-8) if k >= 1]
    if Z.shape[1] > n:  # more columns than rows: column n lies in the span of those before it
        dependent.append(n)
    for k in dependent:
        A = Z[:, :k]
        coef, *_ = np.linalg.lstsq(A, Z[:, k], rcond=None)
        resid = Z[:, k] - A @ coef
        if np.sqrt(np.mean(resid**2)) < 1e-8:
            others = [names[j] for j in range(k) if abs(coef[j]) > 1e-8]
            raise DataError(
                f"Predictor '{names[k]}' is a perfect linear combination of {', '.join(repr(o) for o in others)}; "
                "the coefficients cannot be separated.", hint=f"Drop '{names[k]}' or one of the others from the formula.",
                column=names[k],
            )
