"""ModelSpec: an lme4 formula, a family, the pooling (a setting of the group SD) and priors.

A :class:`ModelSpec` is built without data (scikit-learn's "hyperparameters before data");
``spec.replace(pooling="pooled")`` makes a variant, which is how ``compare()`` builds its three
models.  :meth:`ModelSpec.bind` takes a validated table and returns a :class:`BoundSpec` holding
what was learned from the data — design arrays, group levels and their order, the resolved
priors, the data scale — kept apart from what the user asked for.  The bound spec keeps the
formulae encoding state so that new rows are encoded exactly like the fitted ones.

Pooling is one knob, the population SD τ of the group intercepts:

=================  ===============================================
``"pooled"``       τ = 0: the group term is dropped
``"unpooled"``     τ fixed and wide (10 × the data scale), not learned
``"hierarchical"`` τ learned, with a prior
a number t > 0     τ = t fixed (a point on the pooling path)
=================  ===============================================
"""

from __future__ import annotations


import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import data as _data
from .errors import DataError, FormulaError, PriorError, SpecError
from .families import Family, get_family
from .priors import Prior, default_priors, parse_prior

__all__ = ["ModelSpec", "BoundSpec", "GroupTerm", "POOLINGS", "UNPOOLED_SCALE"]

POOLINGS = ("pooled", "unpooled", "hierarchical")
#: the fixed population SD of the unpooled model, in units of the data scale
UNPOOLED_SCALE = 10.0


@dataclass(frozen=True)
class GroupTerm:
    """One ``(expr | factor)`` term: ``GroupTerm(("Intercept",), "county")``."""

    exprs: tuple[str, ...]
    factor: str

    def sd_name(self, expr: str = "Intercept") -> str:
        """The population SD's name, ``sd(Intercept|county)``."""
        return f"sd({expr}|{self.factor})"

    @property
    def factor_columns(self) -> tuple[str, ...]:
        """Data columns that make up the factor (``region:county`` → two columns)."""
        return tuple(self.factor.split(":"))

    def __str__(self) -> str:
        return f"({' + '.join('1' if e == 'Intercept' else e for e in self.exprs)} | {self.factor})"


def _mark(formula: str, word: str) -> str:
    return re.sub(rf"(?<![\w.]){re.escape(word)}(?![\w.])", f"»{word}«", formula, count=1)


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for: formula, family, pooling and priors (no data).

    Parameters
    ----------
    formula
        lme4 syntax with one varying intercept, ``"y ~ x1 + x2 + (1 | g)"``; known standard
        errors brms-style, ``"y | se(s) ~ 1 + (1 | g)"``.
    family
        ``"gaussian"``.
    pooling
        ``"pooled"``, ``"unpooled"``, ``"hierarchical"`` or a positive number (a fixed
        population SD).
    priors
        Priors by parameter name (``{"sd(Intercept|g)": "half_normal(2)"}``); strings are parsed.
    """

    formula: str
    family: Family | str = field(default_factory=lambda: get_family("gaussian"))
    pooling: str | float = "hierarchical"
    priors: Mapping[str, Prior | str] = field(default_factory=dict)
    # parsed from the formula (not arguments)
    outcome: str = field(init=False, default="")
    se: str | None = field(init=False, default=None)
    rhs: str = field(init=False, default="")
    group_terms: tuple[GroupTerm, ...] = field(init=False, default=())
    variables: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "family", get_family(self.family))
        object.__setattr__(self, "pooling", _check_pooling(self.pooling))
        if not isinstance(self.priors, Mapping):
            raise PriorError(
                "The 'priors' option must be a mapping from parameter name to prior.",
                hint='Write e.g. priors={"sd(Intercept|g)": "half_normal(2)"}.', option="priors",
            )
        object.__setattr__(self, "priors", {str(k): parse_prior(v, name=str(k)) for k, v in self.priors.items()})
        self._parse()

    # -- formula --------------------------------------------------------------------------
    def _parse(self) -> None:
        from formulae import model_description
        from formulae.parser import ParseError

        f = self.formula
        if not isinstance(f, str) or "~" not in f:
            raise FormulaError(
                f"The formula {f!r} has no '~'.", hint="Write it as outcome ~ predictors + (1 | group).",
                option="formula",
            )
        lhs, rhs = f.split("~", 1)
        lhs_parts = [p.strip() for p in lhs.split("|")]
        if not lhs_parts[0]:
            raise FormulaError(f"The formula {f!r} has no outcome before '~'.", hint="Write y ~ x + (1 | g).",
                               option="formula")
        se: str | None = None
        for extra in lhs_parts[1:]:
            m = re.fullmatch(r"se\(\s*([A-Za-z_.][\w.]*)\s*\)", extra)
            if not m:
                raise FormulaError(
                    f"Unknown response addition '{extra}' in formula: {f}.",
                    hint="The supported addition is se(column), e.g. y | se(s) ~ 1 + (1 | g).",
                    option="formula",
                )
            se = m.group(1)
        outcome = lhs_parts[0]
        if not re.fullmatch(r"[A-Za-z_.][\w.]*", outcome):
            raise FormulaError(f"The outcome '{outcome}' in formula {f!r} must be a column name.",
                               hint="Transform the column before fitting.", option="formula")
        try:
            desc = model_description(f"{outcome} ~ {rhs}")
        except (ParseError, Exception) as err:  # formulae raises several kinds for bad syntax
            raise FormulaError(
                f"Cannot parse the formula: {f} ({str(err).strip() or type(err).__name__}).",
                hint="Check the brackets and operators; lme4 syntax is y ~ x + (1 | g).", option="formula",
            ) from None
        terms: list[GroupTerm] = []
        by_factor: dict[str, list[str]] = {}
        for t in desc.group_terms:
            factor = ":".join(v.name for v in t.factor.components)
            expr = "Intercept" if type(t.expr).__name__ == "Intercept" else str(t.expr.name)
            by_factor.setdefault(factor, []).append(expr)
        for factor, exprs in by_factor.items():
            terms.append(GroupTerm(tuple(exprs), factor))
        if len(terms) > 1 or any(t.exprs != ("Intercept",) for t in terms):
            raise SpecError(
                f"The formula {f} has {', '.join(str(t) for t in terms)}; this version fits one varying "
                "intercept (1 | g).",
                hint="Varying slopes and several grouping factors come in a later release; use one (1 | g).",
                option="formula",
            )
        variables = sorted(set(desc.var_names) | ({se} if se else set()))
        object.__setattr__(self, "outcome", outcome)
        object.__setattr__(self, "se", se)
        object.__setattr__(self, "rhs", rhs.strip())
        object.__setattr__(self, "group_terms", tuple(terms))
        object.__setattr__(self, "variables", tuple(variables))

    # -- variants ---------------------------------------------------------------------------
    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with some arguments changed: ``spec.replace(pooling="pooled")``."""
        args = {"formula": self.formula, "family": self.family, "pooling": self.pooling, "priors": dict(self.priors)}
        unknown = set(changes) - set(args)
        if unknown:
            raise SpecError(f"Cannot replace {sorted(unknown)} in a ModelSpec.", hint=f"Use one of {sorted(args)}.")
        args.update(changes)
        return ModelSpec(str(args["formula"]), family=args["family"], pooling=args["pooling"],  # type: ignore[arg-type]
                         priors=args["priors"])  # type: ignore[arg-type]

    @property
    def fam(self) -> Family:
        """The family as a :class:`Family` (``family`` is normalized to one at construction)."""
        assert isinstance(self.family, Family)
        return self.family

    @property
    def group(self) -> GroupTerm | None:
        """The one varying-intercept term, or ``None`` for a formula without one."""
        return self.group_terms[0] if self.group_terms else None

    @property
    def has_sigma(self) -> bool:
        """Whether the model has a residual SD (not when the standard errors are known)."""
        return self.se is None

    # -- data -------------------------------------------------------------------------------
    def bind(self, table: _data.Table) -> BoundSpec:
        """Validate ``table`` for this model and derive the data-dependent state.

        Raises
        ------
        DataError, FormulaError, PriorError
            For bad data, a formula naming unknown columns, or priors for unknown parameters.
        """
        return _bind(self, table)


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
        Common design matrix, shape (n_obs, p).
    coef_names
        Names of the columns of ``X`` (``"Intercept"`` first when present).
    weights
        Observation precision weights: ones, or 1/se² when standard errors are known
        (then the residual variance is 1/weight and there is no ``sigma``).
    group
        Group index of each row (int, shape (n_obs,)).
    levels
        Group labels, in the order of the index.
    group_column
        The grouping factor's name.
    priors
        Every prior used, by parameter name.
    prior_source
        ``"default"`` or ``"user"`` for each prior.
    scale
        The data scale (SD of the outcome, with the mean known variance added when ``se`` is
        given); default priors and the unpooled SD are multiples of it.
    tau
        The population SD setting: ``None`` when learned (hierarchical), else the fixed value
        (0 for pooled).
    """

    spec: ModelSpec
    y: np.ndarray
    X: np.ndarray
    coef_names: list[str]
    weights: np.ndarray
    group: np.ndarray
    levels: list[str]
    group_column: str
    priors: dict[str, Prior]
    prior_source: dict[str, str]
    scale: float
    tau: float | None
    design: Any = field(repr=False, default=None)

    @property
    def n_obs(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_groups(self) -> int:
        return len(self.levels)

    @property
    def sd_name(self) -> str:
        """``sd(Intercept|g)``."""
        return f"sd(Intercept|{self.group_column})"

    @property
    def has_sigma(self) -> bool:
        return self.spec.has_sigma

    @property
    def pooling(self) -> str | float:
        return self.spec.pooling

    def group_sizes(self) -> np.ndarray:
        """Number of rows in each group."""
        return np.bincount(self.group, minlength=self.n_groups)

    def encode(self, new: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encode new rows like the fitted ones.

        Returns
        -------
        X_new, group index (−1 for a new group), and a mask of rows whose group is known.
        """
        missing = [c for c in self._predictor_columns() if c not in new.columns]
        if missing:
            _data.check_columns(_data.read_table(new), missing, context=" in the new data")
        if self.design is not None and len(self._predictor_columns()) > 0:
            X = np.asarray(self.design.common.evaluate_new_data(new).design_matrix, dtype=float)
        else:
            X = np.ones((len(new), len(self.coef_names)), dtype=float)
        if self.group_column in new.columns:
            lab = _data.group_labels(_data.read_table(new[[self.group_column]]), self.group_column)
            pos = {lv: i for i, lv in enumerate(self.levels)}
            idx = np.array([pos.get(str(v), -1) for v in np.asarray(lab)], dtype=int)
        else:
            idx = np.full(len(new), -1, dtype=int)
        return X, idx, idx >= 0

    def _predictor_columns(self) -> list[str]:
        skip = {self.spec.outcome, self.spec.se, *self.group_column.split(":")}
        return [v for v in self.spec.variables if v not in skip]


def _check_pooling(pooling: Any) -> str | float:
    if isinstance(pooling, str):
        key = pooling.strip().lower()
        if key in POOLINGS:
            return key
        try:
            pooling = float(key)
        except ValueError:
            raise SpecError(
                "The 'pooling' option must be 'pooled', 'unpooled', 'hierarchical' or a positive number "
                f"(a fixed group SD). Got {pooling!r} instead.", option="pooling",
            ) from None
    if isinstance(pooling, (int, float)) and not isinstance(pooling, bool):
        if not math.isfinite(pooling) or pooling <= 0:
            raise SpecError(
                f"A numeric 'pooling' is a fixed group SD and must be a positive finite number. Got {pooling}.",
                hint="Use pooling='pooled' for a group SD of 0.", option="pooling",
            )
        return float(pooling)
    raise SpecError(
        "The 'pooling' option must be 'pooled', 'unpooled', 'hierarchical' or a positive number "
        f"(a fixed group SD). Got {pooling!r} instead.", option="pooling",
    )


def _bind(spec: ModelSpec, table: _data.Table) -> BoundSpec:
    from formulae import design_matrices

    f = spec.formula
    cols = table.columns
    for v in spec.variables:
        if v not in cols:
            near = ([c for c in cols if c.lower() == v.lower()] or difflib.get_close_matches(v, cols, n=1, cutoff=0.5)
                    or [c for c in cols if v.startswith(c) or c.startswith(v)])
            hint = f"Did you mean '{near[0]}'?" if near else f"Columns are: {', '.join(cols[:20])}."
            raise FormulaError(f"Unknown column '{v}' in formula: {_mark(f, v)}.", hint=hint, column=v)
    gt = spec.group
    if gt is None:
        raise SpecError(
            f"The formula {f} has no group term.",
            hint="Add a varying intercept such as (1 | g): poolwise compares ways of pooling groups.",
            option="formula",
        )
    group_cols = list(gt.factor_columns)
    skip = {spec.outcome, spec.se, *group_cols}
    numeric = [v for v in spec.variables if v not in skip and _is_numeric(table.frame[v])]
    _data.validate(
        table, outcome=spec.outcome, numeric=numeric, groups=group_cols,
        positive=[spec.se] if spec.se else [],
    )
    # other predictors (text/categorical) must at least have no missing values
    for v in spec.variables:
        if v not in skip and v not in numeric:
            bad = np.flatnonzero(table.frame[v].isna().to_numpy())
            if bad.size:
                from .errors import format_rows

                raise DataError(f"Column '{v}' has {bad.size} missing values ({format_rows(bad.tolist())}).",
                                hint="Drop or impute them before fitting.", column=v, rows=bad.tolist())
    frame = table.frame
    if len(group_cols) == 1:
        labels = _data.group_labels(table, group_cols[0])
    else:  # nested factor a:b -> one label per combination
        parts = [np.asarray(_data.group_labels(table, c)).astype(str) for c in group_cols]
        joined = pd.Series(parts[0])
        for p in parts[1:]:
            joined = joined + ":" + p
        labels = pd.Categorical(joined, categories=sorted(set(joined)))
    levels = [str(c) for c in labels.categories]
    group = np.asarray(labels.codes, dtype=np.int64)
    # common design through formulae (the encoding state is kept for predict)
    common_rhs = _strip_group_terms(spec.rhs)
    try:
        design = design_matrices(f"{spec.outcome} ~ {common_rhs}", frame, na_action="error")
    except Exception as err:  # formulae's own errors for transforms it cannot apply
        raise FormulaError(f"Cannot build the design of formula {f}: {err}.",
                           hint="Check the transformations in the formula.", option="formula") from None
    X = np.asarray(design.common.design_matrix, dtype=float) if design.common is not None else np.zeros((len(frame), 0))
    coef_names = list(design.common.as_dataframe().columns) if design.common is not None else []
    coef_names = ["Intercept" if c == "Intercept" else c for c in coef_names]
    y = np.asarray(frame[spec.outcome], dtype=float)
    _check_design(X, coef_names, f)
    if spec.se:
        se = np.asarray(frame[spec.se], dtype=float)
        weights = 1.0 / se**2
        scale = float(math.sqrt(np.var(y) + np.mean(se**2)))
    else:
        weights = np.ones_like(y)
        scale = float(np.std(y))
    if not scale > 0:
        scale = float(max(abs(np.mean(y)), 1.0))
    y_sd = scale
    x_means = {c: float(X[:, i].mean()) for i, c in enumerate(coef_names) if c != "Intercept"}
    x_sds = {c: float(X[:, i].std()) for i, c in enumerate(coef_names) if c != "Intercept"}
    sd_name = gt.sd_name()
    defaults = default_priors(
        y_mean=float(np.mean(y)), y_sd=y_sd, coef_names=coef_names, x_means=x_means, x_sds=x_sds,
        has_sigma=spec.has_sigma, sd_names=[sd_name],
    )
    known = set(defaults)
    for name in spec.priors:
        if name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"Did you mean '{near[0]}'?" if near else f"Parameters with priors: {', '.join(sorted(known))}."
            raise PriorError(f"No parameter named '{name}' in this model for a prior.", hint=hint, option=name)
    priors = dict(defaults)
    source = {k: "default" for k in defaults}
    for name, given in spec.priors.items():
        prior = parse_prior(given, name=name)
        want = defaults[name].support
        if prior.support != want:
            kind = "a positive parameter (half_normal, half_student_t, half_cauchy, exponential)" if want == "positive" \
                else "a real parameter (normal)"
            raise PriorError(f"Prior {prior} does not fit '{name}', which is {kind}.", option=name,
                             hint="Pick a distribution with the right support.")
        if want == "real" and prior.dist != "normal":
            raise PriorError(f"Prior {prior} for '{name}': coefficients take normal priors in this version.",
                             option=name, hint="Use normal(mu, sigma).")
        priors[name] = prior
        source[name] = "user"
    pooling = spec.pooling
    if pooling == "pooled":
        tau: float | None = 0.0
    elif pooling == "unpooled":
        tau = float(f"{UNPOOLED_SCALE * scale:.4g}")
    elif pooling == "hierarchical":
        tau = None
    else:
        tau = float(pooling)
    if tau is not None:  # the group SD is not a parameter then
        priors.pop(sd_name, None)
        source.pop(sd_name, None)
    return BoundSpec(
        spec=spec, y=y, X=X, coef_names=coef_names, weights=weights, group=group, levels=levels,
        group_column=gt.factor, priors=priors, prior_source=source, scale=scale, tau=tau, design=design,
    )


def _is_numeric(s: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s))


def _strip_group_terms(rhs: str) -> str:
    buf = ""
    i = 0
    while i < len(rhs):
        ch = rhs[i]
        if ch == "(":
            # a bracket holding '|' at depth 0 of that bracket is a group term
            j, d = i, 0
            while j < len(rhs):
                if rhs[j] == "(":
                    d += 1
                elif rhs[j] == ")":
                    d -= 1
                    if d == 0:
                        break
                j += 1
            inner = rhs[i + 1 : j]
            if "|" in inner and not re.match(r"^\s*[A-Za-z_]\w*\s*\(", inner):
                i = j + 1
                continue
            buf += rhs[i : j + 1]
            i = j + 1
            continue
        buf += ch
        i += 1
    cleaned = re.sub(r"\+\s*\+", "+", buf)
    cleaned = re.sub(r"^\s*\+|\+\s*$", "", cleaned.strip()).strip()
    cleaned = re.sub(r"\+\s*$", "", cleaned).strip()
    return cleaned if cleaned else "1"


def _check_design(X: np.ndarray, names: list[str], formula: str) -> None:
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
    scale = np.sqrt((X**2).mean(axis=0))
    scale[scale == 0] = 1.0
    Z = X / scale
    for k in range(1, Z.shape[1]):
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


