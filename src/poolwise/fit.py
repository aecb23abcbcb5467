"""The ``fit()`` verb and :class:`Fit`: bind → reduce → infer → one ArviZ converter.

``Fit`` works for every family and any number of grouping factors and group terms; the
pointwise log-likelihood and predictions go through the family's NumPy methods
(:class:`~poolwise.families.Family`).  ``Fit`` holds an ArviZ ``InferenceData`` (convertible to
an xarray DataTree) rather than being one, so a move to ArviZ 1.x stays inside this module and
``compare.py``.  A fit pays only for what it uses: the InferenceData is built on first access, an
empirical fit's draws are made on first use, and arrays of draws × rows (pointwise
log-likelihood, posterior predictive) are put into the results only when ``idata`` is read and
they fit a memory budget; otherwise they are computed on demand, in chunks of rows.  The arithmetic of
pooling factors is in :mod:`poolwise.pooling`, that of prior predictive draws and of new rows in
:mod:`poolwise.predictive`; how the data are bound (in memory or inside DuckDB/Spark) in
:func:`poolwise.query.bind_data`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from . import data as _data
from . import estimates as _estimates
from . import profile as _profile
from . import pooling as _pooling
from . import predictive as _predictive
from . import reduce as _reduce
from .errors import DataError, SpecError
from .families import separation, separation_text
from .infer import BlockDraws, DeferredDraws, Draws, Progress, default_method, run
from .output import write_file
from .priors import Prior
from .query import bind_data
from .spec import BoundSpec, GroupBlock, ModelSpec, Pooling, format_bytes, physical_memory

__all__ = ["fit", "bind_data", "Fit", "MEMORY_BUDGET", "GROUP_BUDGET", "RHAT_MAX", "ESS_PER_CHAIN",
           "DIAGNOSTIC_GROUP_VALUES", "convergence_flags", "DRAWS_MEMORY_FRACTION", "draws_memory"]

#: bytes an eagerly stored draws × rows array may take (pointwise log-likelihood, predictive)
MEMORY_BUDGET = 256 * 2**20
#: bytes the stored group values (draws × groups) may take; past it they are kept for fewer draws
GROUP_BUDGET = 256 * 2**20
#: fraction of the machine's physical memory the stored draws may take; past it ``fit()`` refuses
#: before sampling (see :func:`draws_memory`).  Where the memory cannot be read, 8 GiB is assumed.
DRAWS_MEMORY_FRACTION = 0.5
#: the NUTS retry schedule (mirrors ``infer.nuts.RETRY_TARGET_ACCEPT``; importing that module would
#: import JAX) — used only when the draws do not record ``info["target_accepts"]``
_RETRY_TARGET_ACCEPT = (0.95, 0.99)
#: a parameter whose rank-normalized split R-hat exceeds this has not converged (Vehtari et al. 2021)
RHAT_MAX = 1.01
#: ... nor one whose bulk or tail ESS is below this many effective draws per chain (100 per chain:
#: 400 for the default 4 chains, as Vehtari et al. 2021 recommend before trusting R-hat and MCSE)
ESS_PER_CHAIN = 100
#: group values whose convergence is checked, at most (evenly spaced over the groups)
DIAGNOSTIC_GROUP_VALUES = 100
#: the separation check (a linear program over the rows) runs on fits of up to this many rows
_SEPARATION_MAX_ROWS = 200_000


def convergence_flags(table: pd.DataFrame, chains: int) -> pd.Series:
    """The convergence rule of every fit, one flag per row of a table with ``r_hat``, ``ess_bulk``
    and ``ess_tail`` columns (ArviZ's summary): ``"R-hat"`` when R-hat > :data:`RHAT_MAX`,
    ``"ESS"`` when the bulk or tail ESS is below :data:`ESS_PER_CHAIN` × ``chains``, both
    joined by ``", "``, ``""`` otherwise.  A constant (R-hat NaN: a fixed setting, a point
    estimate) is never flagged.

    Vehtari, A., Gelman, A., Simpson, D., Carpenter, B. & Bürkner, P.-C. (2021). Rank-normalization,
    folding, and localization: an improved R-hat for assessing convergence of MCMC. Bayesian
    Analysis 16, 667–718.
    """
    rhat = pd.to_numeric(table["r_hat"], errors="coerce")
    ess = np.fmin(pd.to_numeric(table["ess_bulk"], errors="coerce"), pd.to_numeric(table["ess_tail"], errors="coerce"))
    live = rhat.notna()
    bad_r = live & (rhat > RHAT_MAX)
    bad_e = live & (ess < ESS_PER_CHAIN * chains)
    flags = np.where(bad_r & bad_e, "R-hat, ESS", np.where(bad_r, "R-hat", np.where(bad_e, "ESS", "")))
    return pd.Series(flags, index=table.index, name="flag", dtype=object)


def fit(
    formula: str | ModelSpec,
    data: _data.DataLike,
    *,
    family: str | None = None,
    pooling: str | float | Mapping[str, str | float] = "hierarchical",
    priors: Mapping[str, str | Prior] | None = None,
    weights: str | None = None,
    method: str | None = None,
    seed: int = 0,
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    progress: Progress | None = None,
    memory_budget: int = MEMORY_BUDGET,
    group_budget: int = GROUP_BUDGET,
    engine: str | None = None,
    spark: Any = None,
    **options: Any,
) -> Fit:
    """Fit a model of grouped data under one pooling.

    Parameters
    ----------
    formula
        lme4 syntax, ``"y ~ x + (1 | g)"``; known standard errors ``"y | se(s) ~ 1 + (1 | g)"``.
        Or a :class:`~poolwise.spec.ModelSpec` (then ``family``, ``pooling`` and ``priors`` are
        taken from it).
    data
        A pandas, polars or pyarrow table; a path or glob of CSV or Parquet files; a DuckDB
        relation; or a Spark DataFrame.  For a gaussian model with one grouping factor fitted by
        ``method="exact"`` or ``"empirical"``, files, relations and DataFrames are reduced inside
        their engine (DuckDB, or Spark) by one aggregation query to one row of sufficient
        statistics per group, so the rows never enter memory; the fit then holds no rows (no
        pointwise log-likelihood or posterior predictive of the observed rows).  Other models
        load only the columns they need, and the fit's notes say how many rows.
    family
        ``"gaussian"``, ``"student_t"``, ``"bernoulli"``, ``"binomial"``, ``"poisson"`` or
        ``"negative_binomial"``; by default ``"binomial"`` for a ``cbind(successes, failures)``
        outcome, else ``"gaussian"``.
    pooling
        ``"pooled"``, ``"unpooled"``, ``"hierarchical"`` or a positive number (a fixed
        population SD), for every group term; or per term, ``{"1|s": "hierarchical", "1|d":
        "pooled"}`` (terms as the formula writes them, or their grouping factor; terms not
        named are ``"hierarchical"``; see :class:`~poolwise.spec.ModelSpec`).
    priors
        Priors by parameter name; defaults are data-scaled (see ``fit.priors``).
    weights
        The column of prior weights per row (lme4's ``weights``, positive): a gaussian row's
        residual variance is σ²/w; another family's row log-likelihood is multiplied by w
        (see :class:`~poolwise.spec.ModelSpec`).
    method
        ``"exact"``, ``"nuts"``, ``"empirical"`` or ``"laplace"``.  By default ``"exact"`` for
        gaussian models and for bernoulli and binomial models of at most one grouping factor
        (Pólya-Gamma Gibbs sampling, :mod:`poolwise.infer.pg`), else ``"nuts"``
        (:func:`poolwise.infer.default_method`).
    seed
        Seed: the same seed gives the same draws.
    chains, draws, warmup
        Sampler settings (``warmup`` is unused by the exact path).  Draws whose stored arrays
        would take more than :data:`DRAWS_MEMORY_FRACTION` of physical memory are refused before
        sampling (:func:`draws_memory` gives the estimate).
    progress
        Optional callback ``(stage, fraction)``.
    memory_budget
        Bytes above which draws × rows arrays are computed on demand instead of stored.
    group_budget
        Bytes the group values (chains × draws × groups) may take (exact and empirical paths of
        the varying-intercept model); past it they are kept for an evenly thinned subset of the
        draws, and every draw of the coefficients and hyperparameters is kept (see
        :attr:`Fit.value_draws`).  For 10⁶ groups the default 256 MiB keeps 8 draws per chain.
    engine
        ``"duckdb"`` (default for paths) or ``"spark"`` (a path read by ``spark``, the
        SparkSession, or the active one).
    spark
        The SparkSession that reads a path with ``engine="spark"``.

    Returns
    -------
    Fit

    Raises
    ------
    DataError, FormulaError, SpecError, PriorError
        For bad input, before any inference.

    Examples
    --------
    >>> import poolwise as pw
    >>> df = pw.datasets.drivers(seed=1)
    >>> f = pw.fit("reaction ~ night + (1 | driver)", df, draws=200, seed=0)
    >>> bool(f.summary().loc["sigma", "mean"] > 0)
    True
    """
    if isinstance(formula, ModelSpec):
        spec = formula if weights is None else formula.replace(weights=weights)
    else:
        spec = ModelSpec(formula, family=family, pooling=pooling, priors=dict(priors or {}),  # type: ignore[arg-type]
                         weights=weights)
    for name, value in (("chains", chains), ("draws", draws)):
        if not isinstance(value, int) or value < 1:
            raise SpecError(f"The '{name}' option must be a positive integer. Got {value!r}.", option=name)
    if not isinstance(warmup, int) or warmup < 0:
        raise SpecError(f"The 'warmup' option must be a non-negative integer. Got {warmup!r}.", option="warmup")
    method = method or default_method(spec)
    if progress:
        progress("reduce", 0.0)
    bound, note = bind_data(spec, data, method=method, engine=engine, spark=spark)
    _check_draws_memory(bound, method, chains, draws, group_budget)
    result = run(bound, method=method, seed=seed, chains=chains, draws=draws, warmup=warmup, progress=progress,
                 group_budget=group_budget, **options)
    if note is not None:
        info = dict(result.info)
        info["note"] = f"{info['note']} {note}" if info.get("note") else note
        result = dataclasses.replace(result, info=info)
    return Fit(bound, result, memory_budget=memory_budget)


def draws_memory(bound: BoundSpec, method: str, chains: int, draws: int,
                 group_budget: int | None = GROUP_BUDGET) -> tuple[int, int, int]:
    """Bytes the draws of a fit will hold, estimated before sampling.

    Per draw of each chain: the coefficients and the per-draw working sums (p² + 2p), every
    hyperparameter, a few sampler statistics, and the group values (J·q per grouping factor; NUTS
    keeps both the standardized z and the values u).  The exact and empirical paths of the
    varying-intercept model keep the group values within ``group_budget`` (thinned draws).
    Arrays of draws × rows are not counted: they are stored only within ``memory_budget``.

    Returns
    -------
    (bytes, numbers per draw, bytes of thinned group values)
    """
    p = len(bound.coef_names)
    per = p * p + 2 * p + len(bound.priors) + 8
    values = 0
    for block in bound.blocks:
        if not block.pooled:
            values += block.n_groups * block.q
    thinned = 0
    if method in ("exact", "empirical") and bound.simple and group_budget is not None \
            and (bound.spec.fam.exact or method == "empirical"):  # (the Pólya-Gamma path keeps every draw)
        thinned = min(chains * draws * values * 8, int(group_budget))
    else:
        per += values * (2 if method == "nuts" else 1)
    return chains * draws * per * 8 + thinned, per, thinned


def _check_draws_memory(bound: BoundSpec, method: str, chains: int, draws: int, group_budget: int | None) -> None:
    """Refuse, before sampling, draws that would not fit :data:`DRAWS_MEMORY_FRACTION` of memory."""
    need, per, thinned = draws_memory(bound, method, chains, draws, group_budget)
    total = physical_memory()
    budget = int(DRAWS_MEMORY_FRACTION * total)
    if need <= budget:
        return
    most = max(0, (budget - thinned) // (chains * per * 8))
    extra = f" + {format_bytes(thinned)} of thinned group values" if thinned else ""
    raise SpecError(
        f"{chains:,} chains × {draws:,} draws × {per:,} numbers per draw × 8 bytes = {format_bytes(need - thinned)}"
        f"{extra}: the draws would not fit in memory (at most {format_bytes(budget)}, "
        f"{DRAWS_MEMORY_FRACTION:.0%} of this machine's {format_bytes(total)}).",
        hint=(f"Use fewer draws or chains: with {chains:,} chains at most {most:,} draws per chain fit "
              "(4 chains of 1,000 draws are usually plenty)." if most >= 1 else
              "Use fewer chains, fewer groups or a simpler model."),
        option="draws")


class Fit:
    """A fitted model: ArviZ results plus what poolwise knows about the model.

    Works for every family and any number of grouping factors and group terms.  The linear
    predictor of row i is η_i = x_i'β + offset_i + Σ_blocks Σ_k z_ik b_{g[i],k}; the outcome is
    drawn from the family given η (see :class:`~poolwise.families.Family`).

    Attributes
    ----------
    spec
        What was asked (:class:`ModelSpec`).
    bound
        What was derived from the data (:class:`BoundSpec`).
    draws
        The raw :class:`~poolwise.infer.Draws` (an empirical fit makes them on first access).
    idata
        ArviZ InferenceData, built on first access: ``posterior``, ``sample_stats``,
        ``observed_data``, and ``log_likelihood`` / ``posterior_predictive`` when they fit the
        memory budget.

    Every fit pays only for what it uses: ``fit()`` returns with the draws (an empirical fit with
    its estimates only, the draws made when first used), the InferenceData is built when first
    asked for, and the arrays of draws × rows (pointwise log-likelihood, posterior predictive)
    only when ``idata`` is read or they are written (``to_netcdf(pointwise=True)``); LOO and the
    predictive checks compute what they need in chunks.
    """

    def __init__(self, bound: BoundSpec, draws: Draws | DeferredDraws, *,
                 memory_budget: int = MEMORY_BUDGET) -> None:
        self.bound = bound
        self.spec = bound.spec
        self._draws = draws
        self.memory_budget = memory_budget
        self._block_draws: tuple[BlockDraws, ...] | None = None
        if isinstance(draws, Draws):
            self._check_blocks()
        self._moments: tuple[np.ndarray, np.ndarray] | None = None
        self._diagnostics: pd.DataFrame | None = None
        self._separation: list[str] | None = None
        self._idata: Any = None  # the InferenceData without the draws × rows arrays, built once
        self._pointwise_added = False

    # -- basic facts -------------------------------------------------------------------------
    @property
    def draws(self) -> Draws:
        """The draws (:class:`~poolwise.infer.Draws`); an empirical fit's are made here, once."""
        if isinstance(self._draws, DeferredDraws):
            self._draws = self._draws.realize()
            self._check_blocks()
        return self._draws

    def _check_blocks(self) -> None:
        got = len(self.block_draws)
        if got != len(self.bound.blocks):
            raise SpecError(f"The draws hold {got} group blocks but the model has {len(self.bound.blocks)}.",
                            hint="Pass the draws made for this bound spec.")

    @property
    def block_draws(self) -> tuple[BlockDraws, ...]:
        """The draws per grouping factor (:meth:`~poolwise.infer.Draws.block_draws`)."""
        if self._block_draws is None:
            self._block_draws = self.draws.block_draws()
        return self._block_draws

    @property
    def info(self) -> dict[str, Any]:
        """Settings, notes and (empirical fits) estimates of the run, without making any draws."""
        return self._draws.info

    @property
    def n_chains(self) -> int:
        return self._draws.n_chains

    @property
    def n_draws(self) -> int:
        """Draws per chain."""
        return self._draws.n_draws

    @property
    def idata(self) -> Any:
        """ArviZ InferenceData of the fit (built on first access), with the pointwise
        log-likelihood and posterior predictive when they fit the memory budget."""
        idata = self._core_idata()
        if not self._pointwise_added:
            self._pointwise_added = True
            if self.eager_pointwise:
                ll, pp = self._pointwise(seed=0)
                name = self.spec.outcome
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    idata.add_groups({"log_likelihood": {name: ll}, "posterior_predictive": {name: pp}},
                                     dims={name: ["obs"]}, coords={"obs": np.arange(self.bound.n_obs)})
        return idata

    def _stored_predictive(self) -> np.ndarray | None:
        """The posterior predictive (draws, rows) when :attr:`idata` already holds it, else ``None``
        (never builds it)."""
        if not self._pointwise_added or "posterior_predictive" not in self._idata.groups():
            return None
        return np.asarray(self._idata.posterior_predictive[self.spec.outcome].values).reshape(self.n_samples, -1)

    def _core_idata(self) -> Any:
        """The InferenceData without arrays of draws × rows (what summaries and diagnostics read)."""
        if self._idata is None:
            self._idata = _to_inference_data(self)
        return self._idata

    @property
    def method(self) -> str:
        return self._draws.method

    @property
    def pooling(self) -> Pooling:
        """The pooling: one setting, or (term, setting) pairs (see :class:`~poolwise.spec.ModelSpec`)."""
        return self.spec.pooling

    @property
    def group_column(self) -> str:
        return self.bound.group_column

    @property
    def group_var(self) -> str:
        """Name of the posterior variable of the first block's first term, ``1|g``."""
        block = self.bound.blocks[0]
        return block.term.value_name(block.exprs[0])

    @property
    def group_vars(self) -> list[str]:
        """Names of every posterior variable of group values (``1|g``, ``x|g``, ``1|a``…)."""
        return [blk.term.value_name(e) for blk, bd in zip(self.bound.blocks, self.block_draws)
                if bd.values is not None for e in blk.exprs]

    @property
    def n_samples(self) -> int:
        return self.n_chains * self.n_draws

    @property
    def value_draws(self) -> np.ndarray | None:
        """Per-chain draw indices of the stored group values when they were thinned to fit the
        memory budget (draws × groups past it), else ``None`` (every draw).  Group-level and
        row-level results (group estimates, predictions, the pointwise log-likelihood) use these
        draws of every parameter; the hyperparameters' and coefficients' summaries use all."""
        for bd in self.block_draws:
            if bd.value_draws is not None:
                return bd.value_draws
        return None

    def _thin(self, a: np.ndarray) -> np.ndarray:
        """Draws (chain, draw, …) of a parameter at the group values' draws."""
        vd = self.value_draws
        return a if vd is None else a[:, vd]

    @property
    def eager_pointwise(self) -> bool:
        """Whether the pointwise arrays are stored (else made on demand)."""
        return self.bound.has_rows and self.n_samples * self.bound.n_obs * 8 <= self.memory_budget

    @property
    def priors(self) -> pd.DataFrame:
        """Every prior used, whether it is a default or the user's, and the fixed settings.

        Learned correlations appear as ``cor(<group>)`` with their LKJ prior; a fixed Σ (pooled,
        unpooled, a point on the pooling path) is listed term by term with the source ``pooling``.
        """
        b = self.bound
        rows = [{"parameter": k, "prior": str(v), "source": b.prior_source[k]} for k, v in b.priors.items()]
        for block in b.blocks:
            if block.Sigma is None:
                continue
            for k, e in enumerate(block.exprs):
                rows.append({"parameter": block.term.sd_name(e), "prior": self._fixed_sd_text(block, k),
                             "source": "pooling"})
            shared = f"cor({block.factor})" in b.priors  # (the LKJ prior of another block on the factor)
            if block.term.correlated and block.q > 1 and not shared:
                what = "none (pooled: group terms dropped)" if block.pooled else "0 fixed (Σ diagonal)"
                rows.append({"parameter": f"cor({block.factor})", "prior": what, "source": "pooling"})
        if not b.has_sigma and "sigma" in self.spec.fam.params:
            rows.append({"parameter": "sigma", "prior": f"known: se({self.spec.se})", "source": "data"})
        return pd.DataFrame(rows, columns=["parameter", "prior", "source"]).set_index("parameter")

    def _fixed_sd_text(self, block: GroupBlock, k: int) -> str:
        assert block.Sigma is not None
        sd = math.sqrt(float(block.Sigma[k, k]))
        if block.pooled:
            return "0 (pooled: group term dropped)"
        if self.spec.pooling_of(block.term) == "unpooled":
            if self.spec.fam.identity:
                unit = "" if block.exprs[k] == "Intercept" else f" / sd({block.exprs[k]})"
                return f"{sd:.4g} fixed (unpooled: 10 × data scale{unit})"
            unit = "" if block.exprs[k] == "Intercept" else f" / sd({block.exprs[k]})"
            return f"{sd:.4g} fixed (unpooled: 2.5 on the link scale{unit})"
        return f"{sd:.4g} fixed"

    def __repr__(self) -> str:
        b = self.bound
        pooling = repr(self.spec.pooling_text) if isinstance(self.pooling, tuple) else self.spec.pooling_text
        per = {blk.factor: blk.n_groups for blk in b.blocks}  # (blocks on one factor: listed once)
        groups = str(b.n_groups) if len(per) == 1 else "(" + ", ".join(f"{k}: {v}" for k, v in per.items()) + ")"
        shown = b.shown  # the formula and family as the user gave them
        weights = f" weights={shown.weights}" if shown.weights else ""
        return (f"<poolwise.Fit {shown.formula!r} family={shown.fam.name}{weights} pooling={pooling} "
                f"method={self.method} rows={b.n_obs} groups={groups} draws={self.n_chains}×"
                f"{self.n_draws}>")

    def _repr_html_(self) -> str:
        """The fit in a notebook (:func:`poolwise.notebook.fit_html`): facts, summary, notes."""
        from .notebook import fit_html  # a convenience; the notebook view only reads this fit

        return fit_html(self)

    # -- draws as arrays -------------------------------------------------------------------
    def param(self, name: str) -> np.ndarray:
        """Draws of a scalar parameter, (chain, draw).

        ``name`` is a coefficient, ``sigma``, an auxiliary parameter (``nu``, ``phi``), a group
        SD ``sd(x|g)`` or a correlation ``cor(a,b|g)``; fixed settings come back as constants.

        Raises
        ------
        KeyError
            For a name that is not a parameter of this fit.
        """
        b, d = self.bound, self.draws
        shape = d.beta.shape[:2]
        if name in b.coef_names:
            return d.beta[..., b.coef_names.index(name)]
        if name == "sigma" and d.sigma is not None:
            return d.sigma
        if name in d.aux:
            return d.aux[name]
        for block, bd in zip(b.blocks, self.block_draws):
            term = block.term
            for k, e in enumerate(block.exprs):
                if name == term.sd_name(e):
                    if bd.sd is not None:
                        return bd.sd[..., k]
                    S = block.Sigma
                    return np.full(shape, 0.0 if S is None else math.sqrt(float(S[k, k])))
            for j in range(block.q if term.correlated else 0):
                for i in range(j):
                    if name in (term.cor_name(block.exprs[i], block.exprs[j]),
                                term.cor_name(block.exprs[j], block.exprs[i])):
                        if bd.corr is not None:
                            return bd.corr[..., i, j]
                        S = block.Sigma
                        if S is None or S[i, i] <= 0 or S[j, j] <= 0:
                            return np.zeros(shape)
                        return np.full(shape, float(S[i, j] / math.sqrt(S[i, i] * S[j, j])))
        raise KeyError(f"No parameter '{name}' in this fit.")

    def _resolve_term(self, term: str | None) -> tuple[int, int]:
        """(block index, term index) of ``term``: ``"x|g"``, ``"1|g"``, or an unambiguous ``"x"``."""
        blocks = self.bound.blocks
        if term is None:
            return 0, 0
        hits = []
        for i, block in enumerate(blocks):
            for k, e in enumerate(block.exprs):
                if term in (block.term.value_name(e), f"{e}|{block.factor}", block.term.sd_name(e)):
                    return i, k
                if term in (e, "1" if e == "Intercept" else e):
                    hits.append((i, k))
        if len(hits) == 1:
            return hits[0]
        names = ", ".join(f"'{b.term.value_name(e)}'" for b in blocks for e in b.exprs)
        what = "is ambiguous" if hits else "is not a group term of this model"
        raise SpecError(f"The term {term!r} {what}.", hint=f"Use one of {names}.", option="term")

    def group_intercepts(self) -> np.ndarray:
        """Draws of each group's intercept in the first block, Intercept + b_j, (chain, draw, J)."""
        block = self.bound.blocks[0]
        if "Intercept" in block.exprs:
            return self._group_coefficient(0, block.exprs.index("Intercept"))
        C, D = self._thin(self.draws.beta).shape[:2]
        base = (self._thin(self.param("Intercept"))[..., None] if "Intercept" in self.bound.coef_names
                else np.zeros((C, D, 1)))
        return np.broadcast_to(base, (C, D, block.n_groups))

    def _group_coefficient(self, i: int, k: int) -> np.ndarray:
        """Common coefficient of term k of block i (0 when not a common term) + the group values.

        For a nested factor (``region:county``) the values of the enclosing levels (``region``)
        of the same term are included: a county's intercept is Intercept + a_region + c_county.
        """
        b = self.bound
        block, bd = b.blocks[i], self.block_draws[i]
        e = block.exprs[k]
        C, D = self._thin(self.draws.beta).shape[:2]
        base = self._thin(self.param(e))[..., None] if e in b.coef_names else np.zeros((C, D, 1))
        out = np.broadcast_to(base, (C, D, block.n_groups))
        if bd.values is not None:
            out = out + bd.values[..., k]
        # a nested level (region:county) includes the values of the levels it lies in (region)
        for j, outer in enumerate(b.blocks):
            prefix = outer.factor + ":"
            if j == i or not block.factor.startswith(prefix) or e not in outer.exprs:
                continue
            ov = self.block_draws[j].values
            if ov is None:
                continue
            if b.has_rows:
                parent = np.empty(block.n_groups, dtype=np.int64)
                parent[block.group] = outer.group
            else:  # reduced in the query: from the level pairs the two factors share
                parent = _reduce.bound_sparse_stats(b).parent(i, j)
            out = out + ov[..., parent, outer.exprs.index(e)]
        return out

    def _family_kwargs(self, rows: slice | np.ndarray | None, draws: slice | None = None, *,
                       thin: bool = False) -> dict[str, Any]:
        """Keyword arguments of the family methods: parameter draws as (…, 1), per-row columns.

        With ``thin``, at the group values' draws (see :attr:`value_draws`)."""
        b, d = self.bound, self.draws
        sel: Any = slice(None) if draws is None else draws

        def flat(a: np.ndarray) -> np.ndarray:
            if thin:
                a = self._thin(a)
            return a.reshape(-1)[sel][:, None] if draws is not None else a[..., None]

        kw: dict[str, Any] = {"sigma": None if d.sigma is None else flat(d.sigma)}
        for name in ("nu", "phi"):
            kw[name] = flat(d.aux[name]) if name in d.aux else None
        if rows is not None:
            kw["weights"] = b.weights[rows]
            kw["trials"] = None if b.trials is None else b.trials[rows]
        return kw

    def _eta(self, rows: slice, draws: slice | None = None) -> np.ndarray:
        """Linear predictor of ``rows``: (chain, draw, rows), or (draws, rows) for a flat slice."""
        b, d = self.bound, self.draws
        beta_all = self._thin(d.beta)
        beta = beta_all if draws is None else beta_all.reshape(-1, d.beta.shape[-1])[draws]
        eta = beta @ b.X[rows].T
        eta = eta + b.offset[rows]
        for block, bd in zip(b.blocks, self.block_draws):
            if bd.values is None:
                continue
            vals = bd.values if draws is None else bd.values.reshape((-1,) + bd.values.shape[2:])[draws]
            g = block.group[rows]
            for k in range(block.q):
                eta = eta + block.Z[rows, k] * vals[..., g, k]
        return np.asarray(eta)

    def _mu_chunks(self, chunk: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """The linear predictor η (chain, draw, rows) in chunks of rows."""
        self._require_rows("pointwise log-likelihood")
        n = self.bound.n_obs
        chunk = chunk or max(1, self.memory_budget // (8 * self.n_samples * 3))
        for s in range(0, n, chunk):
            sl = slice(s, min(n, s + chunk))
            yield sl, self._eta(sl)

    def log_likelihood_chunks(self, chunk: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """Pointwise log-likelihood, (chain, draw, rows) in chunks of rows (on demand)."""
        y, fam = self.bound.y, self.spec.fam
        for sl, eta in self._mu_chunks(chunk):
            yield sl, fam.log_likelihood(y[sl], eta, **self._family_kwargs(sl, thin=True))

    def log_likelihood(self) -> np.ndarray:
        """The whole pointwise log-likelihood (chain, draw, n_obs); refuses past the budget."""
        self._check_budget("log_likelihood")
        return np.concatenate([ll for _, ll in self.log_likelihood_chunks()], axis=-1)

    def posterior_predictive(self, seed: int = 0) -> np.ndarray:
        """Replicated outcomes (chain, draw, n_obs) for the observed rows."""
        self._check_budget("posterior_predictive")
        rng = np.random.default_rng(seed)
        fam = self.spec.fam
        parts = [fam.sample(rng, eta, **self._family_kwargs(sl, thin=True)) for sl, eta in self._mu_chunks()]
        return np.concatenate(parts, axis=-1)

    def prior_predictive(self, draws: int = 500, seed: int = 0) -> np.ndarray:
        """Outcomes of the observed rows drawn from the prior predictive distribution, (draws, n_obs).

        Each draw takes every parameter from its prior in ``bound.priors`` (the priors listed
        in :attr:`priors`): the common coefficients from their normal priors, ``sigma`` and the
        auxiliary parameters (``nu``, ``phi``) from theirs, each grouping factor's SDs from
        their priors and its correlation matrix from LKJ(η) — or the fixed Σ of the pooling
        (pooled: no group terms; unpooled or a number: that Σ) — then fresh values for every
        group, b_j ~ MVN(0, Σ), and the outcomes from the family given the linear predictor
        (with the rows' known standard errors, trials and offset).  Nothing is fitted: the
        draws show what the model expects before seeing the data.

        Parameters
        ----------
        draws
            Number of prior predictive draws.
        seed
            Seed of the NumPy generator.

        Returns
        -------
        numpy.ndarray of shape (draws, n_obs).

        Raises
        ------
        SpecError
            For a non-positive ``draws`` or an array over the memory budget.

        Notes
        -----
        LKJ correlation matrices are drawn by the onion method (Lewandowski, Kurowicka & Joe
        2009, as NumPyro's ``LKJCholesky``): row i of the Cholesky factor is (√y·u, √(1 − y))
        with y ~ Beta(i/2, η + (q − 2)/2 − (i − 1)/2) and u uniform on the unit sphere.

        Examples
        --------
        >>> import poolwise as pw
        >>> f = pw.fit("reaction ~ 1 + (1 | driver)", pw.datasets.drivers(seed=1), draws=100)
        >>> f.prior_predictive(draws=20).shape
        (20, 401)
        """
        if not isinstance(draws, int) or isinstance(draws, bool) or draws < 1:
            raise SpecError(f"The 'draws' option must be a positive integer. Got {draws!r}.", option="draws")
        self._require_rows("prior predictive of the observed rows")
        return _predictive.prior_predictive(self.bound, draws, seed, self.memory_budget)

    def _pointwise(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Log-likelihood and posterior predictive together, from one pass over η."""
        self._check_budget("log_likelihood")
        rng = np.random.default_rng(seed)
        y, fam = self.bound.y, self.spec.fam
        lls, pps = [], []
        for sl, eta in self._mu_chunks():
            kw = self._family_kwargs(sl, thin=True)
            lls.append(fam.log_likelihood(y[sl], eta, **kw))
            pps.append(fam.sample(rng, eta, **kw))
        return np.concatenate(lls, axis=-1), np.concatenate(pps, axis=-1)

    def _require_rows(self, what: str) -> None:
        """Refuse, clearly, what needs the rows of a fit whose rows were reduced in the query."""
        r = self.bound.reduced
        if r is not None:
            raise SpecError(
                f"The {what} needs the rows, and this fit never loaded them: its {r.n_obs:,} rows were reduced "
                f"inside {r.engine} ({r.source}) to one row per group.",
                hint="Fit a table in memory for it (poolwise.data.read_table(path), or a DataFrame).", option="data")

    def _check_budget(self, what: str) -> None:
        self._require_rows(what.replace("_", " "))
        need = self.n_samples * self.bound.n_obs * 8
        if need > self.memory_budget:
            raise SpecError(
                f"The {what} array would take {need / 2**30:.1f} GiB (draws × rows), over the memory budget of "
                f"{self.memory_budget / 2**30:.2f} GiB.",
                hint="Use the chunked methods (log_likelihood_chunks) or raise memory_budget.",
                option="memory_budget",
            )

    # -- summaries ---------------------------------------------------------------------------
    def summary(self, *, hdi_prob: float = 0.95, groups: bool = True, intervals: str = "auto") -> pd.DataFrame:
        """Posterior summary: mean, sd, HDI, MCSE, bulk/tail ESS and R-hat of each parameter.

        An empirical fit's summary holds its estimates instead (:meth:`_estimate_summary`):
        ``estimate``, ``se``, ``lo``, ``hi`` (at ``hdi_prob``) and ``interval``, titled
        ``.attrs["title"]`` ("REML estimates").  Confidence intervals as lme4's ``confint``: Wald for
        the coefficients, and for σ, the SDs and the correlations ``intervals="profile"``: profile
        likelihood (as ``confint(method = "profile")``, :meth:`confint`), ``"Wald"``: Wald on the log
        and atanh scales, ``"auto"`` (the default): profile, unless the model is past the size rule
        of :func:`poolwise.profile.why_not_profile` (then Wald, with a note saying why).

        Rows are ``Intercept``, the predictors, ``sigma``, auxiliary parameters (``nu``,
        ``phi``), ``sd(<term>|<group>)``, ``cor(<a>,<b>|<group>)`` and (with ``groups``) the
        group values ``1|g[label]``, ``x|g[label]``.  ``.attrs["priors"]`` holds the priors,
        ``.attrs["notes"]`` plain-language notes on the run (divergent transitions of NUTS,
        parameters that have not converged).  The last column, ``flag``, names the convergence
        check a row fails (:func:`convergence_flags`: ``R-hat``, ``ESS``), empty when it passes.
        Every value at full precision (rounding is for display: :func:`poolwise.output.number`).
        """
        kind = _interval_kind(intervals)
        if self.method == "empirical":  # estimates, SEs and confidence intervals: no priors, no R-hat
            return self._estimate_summary(hdi_prob, groups, kind)
        import arviz as az

        skip = set() if groups else set(self.group_vars)
        idata = self._core_idata()
        names = [n for n in idata.posterior.data_vars if n not in skip]
        with warnings.catch_warnings():  # a constant (REML estimates, a fixed setting) has no R-hat: NaN in the table
            warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
            out = az.summary(idata, var_names=names, hdi_prob=hdi_prob, kind="all", round_to="none")
            if groups and "group_values" in idata.groups():  # thinned group values: their own draws
                gv = idata["group_values"]
                gv = (gv.to_dataset() if hasattr(gv, "to_dataset") else gv).rename({"value_draw": "draw"})
                out = pd.concat([out, az.summary(gv, hdi_prob=hdi_prob, kind="all", round_to="none")])
        # from the unrounded R-hat and ESS where diagnostics() checked the row, else from this table's own
        flags = self.diagnostics()["flag"].reindex(out.index)
        out["flag"] = flags.fillna(convergence_flags(out, self.n_chains))
        out.attrs["priors"] = self.priors
        out.attrs["model"] = repr(self)
        out.attrs["notes"] = self.notes()
        return out

    def _estimate_summary(self, prob: float, groups: bool, intervals: str = "Wald") -> pd.DataFrame:
        """An empirical fit's summary: :func:`poolwise.estimates.estimate_table`, titled by its method;
        with ``intervals="profile"`` (or ``"auto"`` within the size rule) the variance parameters'
        intervals from their profiles (:meth:`_profile_intervals`), labelled ``profile (ML)``; where a
        profile cannot be completed the Wald interval stays, labelled so."""
        kind = _interval_kind(intervals)
        pt, cond = self._point(), self._conditional(with_cov=groups, joint=True)
        assert pt is not None and cond is not None
        out = _estimates.estimate_table(self.bound, pt, cond, prob=prob, groups=self.ranef() if groups else None)
        notes = self.notes()
        why = _profile.why_not_profile(self.bound, pt) if kind == "auto" else None
        if why is not None:
            notes.append(f"Wald intervals for sigma, the SDs and correlations: the model has {why}, past the size "
                         "rule for profiling them by default; summary(intervals='profile') or fit.confint() gives "
                         "the profile-likelihood intervals (slower).")
        elif kind in ("auto", "profile"):
            try:
                prof = self._profile_intervals(prob)
            except (np.linalg.LinAlgError, ValueError, ArithmeticError):  # not even the ML optimum: Wald, labelled
                prof = pd.DataFrame(columns=["lo", "hi"])
                prof.attrs["failed"] = [n for n in out.index if str(out.loc[n, "interval"]).startswith("Wald (")]
            ends, failed = prof.attrs.get("boundary", {}), set(prof.attrs.get("failed", ()))
            for name in failed & set(out.index):  # the Wald interval stays, labelled so
                out.loc[name, "interval"] = f"{out.loc[name, 'interval']}; profile failed"
            for name in prof.index:
                if name in out.index and name not in failed:
                    out.loc[name, ["lo", "hi"]] = prof.loc[name, ["lo", "hi"]].to_numpy(float)
                    out.loc[name, "interval"] = f"profile (ML; {ends[name]})" if name in ends else "profile (ML)"
        out.attrs["title"] = f"{pt.method} estimates"
        out.attrs["model"] = repr(self)
        out.attrs["notes"] = notes
        return out

    def _profile_intervals(self, prob: float) -> pd.DataFrame:
        """σ, the SDs and the correlations' profile intervals at ``prob`` (computed once per fit)."""
        cache = self._estimates_cache()
        key = ("profile", float(prob))
        if key not in cache:
            pt = self._point()
            assert pt is not None
            cache[key] = _profile.profile_confint(self.bound, pt, prob=prob, coefficients=False)
        out: pd.DataFrame = cache[key]
        return out

    def diagnostics(self) -> pd.DataFrame:
        """R-hat, bulk and tail ESS of every parameter, with the convergence flag of
        :func:`convergence_flags` (computed once per fit).

        Every coefficient, σ, auxiliary parameter, SD and correlation is checked; of the group
        values, at most :data:`DIAGNOSTIC_GROUP_VALUES` in all (groups evenly spaced over the
        levels, each group variable alike), which bounds the cost for many groups.  Group values
        thinned to fit the group budget (their own ``group_values`` group) are not checked: their
        summaries are Rao-Blackwellized over every draw.  ``.attrs["groups_checked"]`` and
        ``.attrs["groups_total"]`` say how many group values were checked of how many.
        """
        if self._diagnostics is None:
            import arviz as az

            post = self._core_idata().posterior
            gvars = [n for n in self.group_vars if n in post.data_vars]
            total = sum(int(np.prod([post[n].sizes[d] for d in post[n].dims[2:]])) for n in gvars)
            ds = post[[n for n in post.data_vars if n not in gvars]]
            checked = 0
            if gvars:
                per = max(1, DIAGNOSTIC_GROUP_VALUES // len(gvars))
                for n in gvars:
                    dim = post[n].dims[2]
                    size = post[n].sizes[dim]
                    idx = np.unique(np.linspace(0, size - 1, min(per, size)).round().astype(int))
                    ds = ds.assign({n: post[n].isel({dim: idx})})
                    checked += idx.size
            with warnings.catch_warnings():  # constants have no R-hat: NaN
                warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
                table = az.summary(ds, kind="diagnostics", round_to="none")[["r_hat", "ess_bulk", "ess_tail"]]
            table["flag"] = convergence_flags(table, self.n_chains)
            table.attrs.update(groups_checked=checked, groups_total=total)
            self._diagnostics = table
        return self._diagnostics

    def _convergence_note(self) -> str | None:
        """One note naming the parameters that fail the convergence rule (the worst first)."""
        table = self.diagnostics()
        bad = table[table["flag"] != ""]
        if bad.empty:
            return None
        chains = self.n_chains
        order = (bad["r_hat"] - 1.0).rank(ascending=False) + bad[["ess_bulk", "ess_tail"]].min(axis=1).rank()
        shown = bad.loc[order.sort_values(kind="stable").index[:5]]
        items = [f"{name} (R-hat {row.r_hat:.3f}, bulk ESS {row.ess_bulk:.0f}, tail ESS {row.ess_tail:.0f})"
                 for name, row in shown.iterrows()]
        more = f" and {len(bad) - len(shown)} more" if len(bad) > len(shown) else ""
        checked, total = table.attrs.get("groups_checked", 0), table.attrs.get("groups_total", 0)
        of = f" (of them {checked} of the {total} group values, evenly spaced)" if checked < total else ""
        return (f"Not converged: {len(bad)} of {len(table)} parameters checked{of} have R-hat > {RHAT_MAX:g} or a "
                f"bulk or tail ESS < {ESS_PER_CHAIN * chains} ({ESS_PER_CHAIN} per chain × {chains} chains): "
                f"{'; '.join(items)}{more}. Their means and intervals are not reliable: run more draws, or see the "
                "summary's flag column.")

    def _separation_notes(self) -> list[str]:
        """Separation of a bernoulli / binomial outcome, found from the data (whatever the method):
        by the common terms (:func:`poolwise.families.separation`), and, when unpooled, by groups
        whose outcomes are all 0 or all 1 (computed once per fit)."""
        if self._separation is not None:
            return self._separation
        b = self.bound
        out: list[str] = []
        if b.spec.fam.name in ("bernoulli", "binomial") and b.has_rows and b.n_obs <= _SEPARATION_MAX_ROWS:
            n = np.ones_like(b.y, dtype=float) if b.trials is None else np.asarray(b.trials, dtype=float)
            found = separation(b.X, b.y, n)
            if found is not None:
                out.append(separation_text(b.coef_names, found))
            for blk in b.blocks:
                if b.spec.pooling_of(blk.term) != "unpooled":
                    continue
                J = len(blk.levels)
                succ = np.bincount(blk.group, weights=np.asarray(b.y, dtype=float), minlength=J)
                tot = np.bincount(blk.group, weights=n, minlength=J)
                extreme = [str(blk.levels[j]) for j in range(J)
                           if tot[j] > 0 and (succ[j] == 0 or succ[j] == tot[j])]
                if extreme:
                    rest = f" and {len(extreme) - 10} more" if len(extreme) > 10 else ""
                    shown = ", ".join(extreme[:10]) + rest
                    out.append(f"Separation by {blk.factor}: {len(extreme)} of {J} groups ({shown}) have outcomes "
                               "all 0 or all 1, so under unpooled their own values are determined by the prior; "
                               "the hierarchical model lets the other groups inform them.")
        self._separation = out
        return out

    def notes(self) -> list[str]:
        """Plain-language notes on the run: parameters that have not converged (R-hat, ESS),
        separation of a binary outcome, divergent transitions at each NUTS attempt, sampler
        fallbacks."""
        info = self.info
        out: list[str] = []
        conv = self._convergence_note() if self.method != "empirical" else None  # estimates: nothing sampled
        if conv:
            out.append(conv)
        out.extend(self._separation_notes())
        if "divergences" in info:
            divs = [int(v) for v in np.atleast_1d(info["divergences"])]
            targets = _attempt_targets(info, len(divs))
            if any(divs):  # nothing to say when no attempt diverged
                first = f"{divs[0]} divergent transitions"
                if targets[0] is not None:
                    first += f" at target_accept={targets[0]:g}"
                parts = [first]
                for t, n in zip(targets[1:], divs[1:]):
                    parts.append(f"refit at {t:g}: {n}" if t is not None else f"refit at a higher target_accept: {n}")
                out.append("; ".join(parts))
        if info.get("note"):
            out.append(str(info["note"]))
        for key in ("imh_retry", "hyper_fallback"):
            if info.get(key):
                out.append(str(info[key]))
        if self.method == "empirical":
            method = info.get("method", "REML")
            crit = {"REML": "REML criterion", "ML": "deviance −2ℓ",
                    "Laplace": "−2ℓ (Laplace)"}.get(method, "criterion")
            out.append(f"{method} estimates ({crit} {float(info.get('criterion', float('nan'))):.6g}); no priors are "
                       "used. Standard errors: Cov(β̂) for the coefficients, the curvature of the criterion for the "
                       "SDs and correlations; intervals: Wald for the coefficients, profile likelihood for sigma, "
                       "the SDs and correlations (on the ML deviance, as lme4's confint) where the interval column "
                       "says profile; group values are the conditional modes ± their conditional SDs.")
        if self.method == "laplace":
            out.append("Group values integrated out by Laplace's approximation; an approximation of the posterior.")
        vd = None if isinstance(self._draws, DeferredDraws) else self.value_draws  # not drawn: nothing thinned
        if vd is not None:
            out.append(f"Group values kept for {vd.size} of {self.n_draws} draws per chain (draws × groups pass "
                       "the group_budget); coefficients and hyperparameters keep every draw; group_estimates() gives "
                       "each group's mean and SD from every draw (Rao-Blackwellized) with a normal interval, other "
                       "group-level results use the kept draws.")
        r = self.bound.reduced
        if r is not None:
            out.append(f"{r.n_obs:,} rows reduced inside {r.engine} ({r.source}) to {r.returned:,} rows of "
                       "sufficient statistics in one query; the rows were never loaded.")
        return out

    def pooling_factors(self, prob: float = 0.95, *, term: str | None = None) -> pd.DataFrame:
        """Pooling factor λ_j of each group for one group term, with its central interval.

        0 means the group keeps its own estimate (unpooled), 1 that it takes the population
        value (pooled).

        Parameters
        ----------
        prob
            Mass of the interval.
        term
            The group term: ``"1|g"`` (default: the first block's first term), ``"x|g"``, or a
            term name such as ``"x"`` when only one grouping factor varies it.

        Returns
        -------
        DataFrame indexed by the term's group labels with ``n``, ``lambda`` (posterior mean),
        ``lambda_lo`` and ``lambda_hi``.  ``.attrs["batch"]`` holds Gelman & Pardoe's (2006)
        batch pooling factor 1 − Var_j(E[b_j]) / E[Var_j(b_j)] of the term;
        ``.attrs["term"]`` the term's variable name.

        Notes
        -----
        Per group and per posterior draw, λ_j is the fraction of the population variance of
        b_j that remains after group j's data are seen, in the Gaussian (Laplace)
        approximation of the group's likelihood at that draw:

            λ_jk = [(Σ⁻¹ + I_j)⁻¹]_kk / Σ_kk,   I_j = Σ_{i in j} w_i z_i z_i'

        where Σ is the block's population covariance at the draw and w_i the family's Fisher
        information about η_i (its GLM working weight: a_i/σ² for gaussian, p(1 − p) for
        bernoulli, μ for poisson, …; see :meth:`~poolwise.families.Family.information`).  For
        one term this is Morris's shrinkage factor B_j = V_j / (V_j + τ²), with V_j = 1/I_j the
        sampling variance of the group's own estimate on the link scale; for a Gaussian
        varying intercept V_j = σ²/a_j and it is exactly λ_j = (σ²/a_j) / (σ²/a_j + τ²), with
        a_j the group's size (the sum of the precision weights 1/se² when standard errors are
        known).  The reported λ_j is conditional on the other group terms (the crossed
        factors' effects enter through η only).  λ_j = 1 when the population SD is 0 (pooled)
        or the group carries no information about the term.

        References
        ----------
        Gelman, A. & Pardoe, I. (2006). Bayesian measures of explained variance and pooling in
        multilevel (hierarchical) models. Technometrics 48(2), 241–251.

        Morris, C. N. (1983). Parametric empirical Bayes inference: theory and applications.
        JASA 78(381), 47–55.  Christiansen, C. L. & Morris, C. N. (1997). Hierarchical Poisson
        regression modeling. JASA 92(438), 618–632.
        """
        i, k = self._resolve_term(term)
        block, bd = self.bound.blocks[i], self.block_draws[i]
        J = block.n_groups
        mean, lo, hi = np.ones(J), np.ones(J), np.ones(J)
        if bd.values is None:  # pooled: every group takes the population value
            batch = 1.0
        else:
            batch = _pooling.batch_pooling(bd.values[..., k].reshape(-1, J))
            # λ per draw in chunks of groups: memory O(draws × chunk), whatever the number of groups
            step = J if not self.spec.fam.identity else max(1, self.memory_budget // (8 * self.n_samples * 8))
            for g0 in range(0, J, step):
                gs = slice(g0, min(J, g0 + step))
                lam = self._lambda_draws(i, k, gs)
                mean[gs] = lam.mean(axis=0)
                lo[gs], hi[gs] = np.quantile(lam, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        df = pd.DataFrame(
            {"n": block.sizes(), "lambda": mean, "lambda_lo": lo, "lambda_hi": hi},
            index=pd.Index(block.levels, name=block.factor),
        )
        df.attrs["batch"] = batch
        df.attrs["term"] = block.term.value_name(block.exprs[k])
        return df

    def _lambda_draws(self, i: int, k: int, groups: slice | None = None) -> np.ndarray:
        """λ_jk per draw, (samples, J) (see :meth:`pooling_factors`); ``groups`` a slice of them."""
        q, S = self.bound.blocks[i].q, self.n_samples
        return _pooling.lambda_draws(self.bound, i, k, self._sigma_draws(i).reshape(S, q, q),
                                     family_kwargs=lambda ds: self._family_kwargs(None, ds), eta=self._eta,
                                     memory_budget=self.memory_budget, groups=groups)

    def _sigma_draws(self, i: int) -> np.ndarray:
        """The population covariance of block i per draw, (chain, draw, q, q)."""
        L = self._sigma_factor(i)
        return np.asarray(L @ np.swapaxes(L, -1, -2))

    def _sigma_factor(self, i: int) -> np.ndarray:
        """A factor L of block i's covariance per draw, Σ = L L', (chain, draw, q, q)."""
        C, D = self.draws.beta.shape[:2]
        return _pooling.sigma_factor(self.bound.blocks[i], self.block_draws[i], C, D)

    def group_estimates(self, prob: float = 0.95, *, term: str | None = None) -> pd.DataFrame:
        """Each group's coefficient for one term (default the first block's intercept,
        Intercept + b_j): n, mean, sd and central interval."""
        i, k = self._resolve_term(term)
        block = self.bound.blocks[i]
        gm = self._group_moments() if i == 0 and k == 0 else None
        if gm is not None:
            # few group draws kept (see value_draws): the exact mean and SD from every draw, and the
            # normal interval they give (the conditional posteriors are normal; with enough groups
            # to need thinning, the hyperparameters hardly vary between draws)
            from scipy.stats import norm

            z = float(norm.ppf((1 + prob) / 2))
            mean, sd = gm
            return pd.DataFrame({"n": block.sizes(), "mean": mean, "sd": sd, "lo": mean - z * sd, "hi": mean + z * sd},
                                index=pd.Index(block.levels, name=block.factor))
        gi = self._group_coefficient(i, k).reshape(-1, block.n_groups)
        lo, hi = np.quantile(gi, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        return pd.DataFrame({"n": block.sizes(), "mean": gi.mean(axis=0), "sd": gi.std(axis=0), "lo": lo,
                             "hi": hi}, index=pd.Index(block.levels, name=block.factor))

    def _group_moments(self) -> tuple[np.ndarray, np.ndarray] | None:
        """With thinned group values of the gaussian varying-intercept model (exact or empirical):
        each group's intercept's posterior mean and SD, Rao–Blackwellized over every draw
        (:func:`poolwise.infer.exact.group_moments`), computed once on demand; else ``None``."""
        b, d = self.bound, self.draws
        if (self.value_draws is None or not b.simple or not self.spec.fam.exact
                or self.method not in ("exact", "empirical")):
            return None
        if self._moments is None:
            from .infer.exact import group_moments

            S = self.n_samples
            sigma = d.sigma.reshape(S) if d.sigma is not None else np.ones(S)
            tau = d.tau.reshape(S) if d.tau is not None else np.full(S, float(b.tau or 0.0))
            icpt = b.coef_names.index("Intercept") if "Intercept" in b.coef_names else None
            self._moments = group_moments(_reduce.reduce(b), sigma, tau, d.beta.reshape(S, -1), icpt)
        return self._moments

    # -- estimates as lme4 users know them (the logic: poolwise.estimates) ---------------------
    def _estimates_cache(self) -> dict[str, Any]:
        cache: dict[str, Any] | None = self.__dict__.get("_lme4_cache")
        if cache is None:
            cache = self.__dict__["_lme4_cache"] = {}
        return cache

    def _run_info(self) -> Mapping[str, Any]:
        """The inference path's ``info`` (estimates, loglik, criterion, method)."""
        return self.info

    def _bayes_draws(self) -> Draws | None:
        """The draws a Bayesian fit's accessors summarize; ``None`` for an empirical fit (its
        accessors use the estimates alone and never make draws)."""
        return None if self.method == "empirical" else self.draws

    def _point(self) -> _estimates.Point | None:
        """An empirical fit's point estimates (``None`` for a Bayesian fit)."""
        if self.method != "empirical":
            return None
        cache = self._estimates_cache()
        if "point" not in cache:
            cache["point"] = _estimates.point_estimates(self.bound, self._run_info())
        out: _estimates.Point = cache["point"]
        return out

    def _conditional(self, with_cov: bool = True, joint: bool = False) -> _estimates.Conditional | None:
        """An empirical fit's conditional modes, covariances and Cov(β̂), in closed form (cached);
        ``joint``: a GLMM's Cov(β̂) from the joint Hessian (:func:`poolwise.estimates.conditional`)."""
        pt = self._point()
        if pt is None:
            return None
        cache = self._estimates_cache()
        got = cache.get("conditional")
        if got is None or (with_cov and got.cov is None) or (joint and not got.joint):
            got = cache["conditional"] = _estimates.conditional(
                self.bound, pt, with_cov=with_cov or (got is not None and got.cov is not None),
                joint=joint or (got is not None and got.joint))
        out: _estimates.Conditional = got
        return out

    def fixef(self) -> pd.Series:
        """The fixed effects β̂ by coefficient name (lme4's ``fixef``); for a Bayesian fit their
        posterior means.  See :mod:`poolwise.estimates`.

        Examples
        --------
        >>> import poolwise as pw
        >>> f = pw.fit("reaction ~ night + (1 | driver)", pw.datasets.drivers(seed=1), method="empirical")
        >>> list(f.fixef().index), list(f.ranef()["driver"].columns)
        (['Intercept', 'night'], ['Intercept'])
        >>> f.summary(groups=False).attrs["title"]
        'REML estimates'
        """
        return _estimates.fixef(self.bound, self._bayes_draws(), self._point())

    def vcov(self, use_hessian: bool = True) -> pd.DataFrame:
        """Cov(β̂) at the estimates (lme4's ``vcov``): (X'V⁻¹X)⁻¹ for a Gaussian fit; for a GLMM the
        β block of the inverse Hessian of the Laplace criterion in (β, θ), or with
        ``use_hessian=False`` its curvature in β alone.  For a Bayesian fit the posterior
        covariance of β."""
        cond = self._conditional(with_cov=False, joint=use_hessian)
        return _estimates.vcov(self.bound, self._bayes_draws(), cond, use_hessian=use_hessian)

    def varcorr(self) -> pd.DataFrame:
        """SDs and correlations of the group terms per grouping factor, and σ (lme4's
        ``as.data.frame(VarCorr(fit))``; posterior means for a Bayesian fit).  See
        :func:`poolwise.estimates.varcorr`."""
        return _estimates.varcorr(self.bound, self._bayes_draws(), self._point())

    def ranef(self, condvar: bool = True) -> dict[str, pd.DataFrame]:
        """Per grouping factor, the group values: conditional modes (lme4's ``ranef``) with their
        conditional SDs in ``.attrs["condsd"]`` and covariances in ``.attrs["condcov"]``
        (``condVar = TRUE``: β held at β̂); for a Bayesian fit posterior means and SDs.  Index:
        the levels; columns: the terms."""
        cond = self._conditional(with_cov=condvar)
        return _estimates.ranef(self.bound, self._bayes_draws(), cond, condvar=condvar)

    def coef(self) -> dict[str, pd.DataFrame]:
        """Per grouping factor, each level's coefficients: fixed effects + its group values
        (lme4's ``coef``)."""
        return _estimates.coef(self.bound, self.fixef(), self.ranef(condvar=False))

    def fitted(self) -> pd.Series:
        """Fitted means per row at the estimates and conditional modes (lme4's ``fitted``: the
        success probability for binomial); for a Bayesian fit the posterior mean of link⁻¹(η)."""
        cache = self._estimates_cache()
        if "fitted" not in cache:
            cache["fitted"] = _estimates.fitted(self.bound, self._point(), self._conditional(with_cov=False),
                                                self._mu_chunks)
        out: pd.Series = cache["fitted"].copy()
        return out

    def residuals(self, type: str | None = None) -> pd.Series:  # noqa: A002 (lme4's argument name)
        """Residuals per row: ``"response"`` (default for gaussian), ``"deviance"`` (default
        otherwise, as lme4) or ``"pearson"``, from :meth:`fitted`."""
        return _estimates.residuals(self.bound, self.fitted(), type)

    def loglik(self) -> _estimates.LogLik:
        """The maximized log-likelihood (REML log-likelihood of a REML fit; Laplace's approximation
        of a GLMM), a float with ``.df`` as lme4's ``logLik``.  Empirical fits only."""
        return _estimates.loglik(self.bound, self._point())

    def aic(self) -> float:
        """−2ℓ + 2 df (lme4's ``AIC``).  Empirical fits only."""
        return _estimates.aic(self.bound, self._point())

    def bic(self) -> float:
        """−2ℓ + df log(rows) (lme4's ``BIC``).  Empirical fits only."""
        return _estimates.bic(self.bound, self._point())

    def deviance(self) -> float:
        """lme4's ``deviance``: −2ℓ of an ML fit, the sum of squared deviance residuals of a GLMM,
        the REML criterion (with a warning) of a REML fit.  Empirical fits only."""
        return _estimates.deviance(self.bound, self._point(), lambda: self.residuals("deviance"))

    def confint(self, method: str = "profile", prob: float = 0.95, parm: list[str] | None = None) -> pd.DataFrame:
        """Confidence intervals of an empirical fit's parameters (lme4's ``confint``).

        ``method="profile"``: profile likelihood on the ML deviance for every coefficient, σ, SD
        and correlation (as lme4, which refits a REML fit by ML for it;
        :func:`poolwise.profile.profile_confint`); ``"Wald"``: the summary's intervals (Wald for
        β, on the log / atanh scale for SDs and correlations).  ``parm``: some parameters only, by
        name.  Returns ``lo``, ``hi`` by parameter."""
        pt, cond = self._point(), self._conditional(with_cov=False, joint=True)
        if pt is None or cond is None:
            raise SpecError("confint() gives confidence intervals of an empirical fit; this fit is Bayesian.",
                            hint="Use summary() for its posterior intervals, or fit with method='empirical'.",
                            option="method")
        if method == "Wald":
            wald = self._estimate_summary(prob, False)[["lo", "hi"]]
            return wald if parm is None else wald.loc[[n for n in wald.index if n in parm]]
        if method != "profile":
            raise SpecError(f"The 'method' option must be 'profile' or 'Wald'. Got {method!r}.", option="method")
        out = _profile.profile_confint(self.bound, pt, prob=prob, parm=parm)
        order = [n for n in self._estimate_summary(prob, False).index if n in out.index]
        return out.loc[order]

    def remlcrit(self) -> float:
        """The REML criterion −2ℓ_REML (lme4's ``REMLcrit``).  REML fits only."""
        return _estimates.remlcrit(self.bound, self._point())

    # -- prediction ----------------------------------------------------------------------------
    def predict(
        self, new_data: _data.DataLike, *, kind: str = "response", prob: float = 0.95, seed: int = 0,
        return_draws: bool = False, groups: str = "all",
    ) -> pd.DataFrame | np.ndarray:
        """Predict rows of new data, for known groups and for new ones.

        In each grouping factor, a row of a known group uses that group's draws; a group not
        seen in fitting (or a row without the factor's columns) gets new values drawn from the
        population, MVN(0, Σ) per posterior draw (Σ from the SD and correlation draws, or the
        fixed Σ), shared by the rows of the same new group.  Known and new levels of different
        factors mix freely.

        Parameters
        ----------
        new_data
            Rows with the predictor columns (and the group columns, if known groups are meant;
            the offset's columns; the trials column for binomial responses, or the columns of
            ``cbind(successes, failures)``; the se column for responses of a model with known
            standard errors; the weights column for responses of a model with ``weights=``).
        kind
            ``"response"`` (posterior predictive: outcomes drawn from the family), ``"mean"``
            (the expected value, link⁻¹(η): the success probability for binomial) or ``"link"``
            (η itself).
        prob
            Mass of the central interval.
        return_draws
            Return the (chain, draw, rows) array instead of a summary.
        groups
            ``"all"`` (the default): every group term as above; ``"none"``: every group value
            at 0, η = Xβ + offset (lme4's ``predict(..., re.form = NA)``), the group columns
            not needed.

        Returns
        -------
        DataFrame with ``mean``, ``sd``, ``lo``, ``hi`` and ``new_group`` (any factor's level new)
        per row.

        Raises
        ------
        DataError
            For no rows, missing predictor/offset columns, or a missing trials/se column when
            responses are asked for.
        """
        if kind not in ("response", "mean", "link"):
            raise SpecError(f"The 'kind' option must be 'response', 'mean' or 'link'. Got {kind!r}.", option="kind")
        table = new_data if isinstance(new_data, _data.Table) else _data.read_table(new_data)
        frame = table.frame
        if len(frame) == 0:
            raise DataError("The new data have no rows.", hint="Pass at least one row to predict.")
        if groups not in ("all", "none"):
            raise SpecError(f"The 'groups' option must be 'all' or 'none'. Got {groups!r}.", option="groups",
                            hint="groups='none' sets every group value to 0 (lme4's re.form = NA).")
        b, d, fam = self.bound, self.draws, self.bound.shown.fam  # (the family as given: bernoulli, not merged)
        rng = np.random.default_rng(seed)
        eta, any_new = _predictive.linear_predictor(
            b, frame, self._thin(d.beta), [bd.values for bd in self.block_draws],
            lambda i: self._thin(self._sigma_factor(i)), rng, groups=groups)
        C, D = eta.shape[:2]
        if kind == "link":
            out = eta
        elif kind == "mean":
            out = fam.inverse_link(eta)
        else:
            out = fam.sample(rng, eta, **_predictive.new_family_kwargs(
                b.shown, frame, self._family_kwargs(None, thin=True), sigma_drawn=d.sigma is not None))
        if return_draws:
            return out
        flat = out.reshape(C * D, -1)
        lo, hi = np.quantile(flat, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        return pd.DataFrame({"mean": flat.mean(axis=0), "sd": flat.std(axis=0), "lo": lo, "hi": hi,
                             "new_group": any_new}, index=frame.index)

    # -- simulation and the parametric bootstrap (poolwise.simulate) ---------------------------
    def simulate(self, n: int = 1, seed: int = 0) -> np.ndarray:
        """``n`` new outcome vectors of the fitted rows, (n, rows), with new group values drawn
        from the population (lme4's ``simulate(use.u = FALSE)``): from the estimates of an
        empirical fit, from random posterior draws of a Bayesian one
        (:func:`poolwise.simulate.simulate`)."""
        from .simulate import simulate

        return simulate(self.bound, self._draws, n, seed=seed)

    def bootstrap(self, n: int = 200, seed: int = 0, *, progress: Any = None) -> Any:
        """Parametric bootstrap of an empirical fit's estimates (β, σ, SDs, correlations): ``n``
        data sets simulated from the estimates, each refitted by the same criterion; returns a
        :class:`poolwise.simulate.Bootstrap` (``.summary()``, ``.confint()`` percentile intervals,
        ``.replicates``).  ``progress`` is an optional callback ``(done, n)``."""
        from .simulate import bootstrap

        return bootstrap(self.bound, self._draws, n, seed=seed, progress=progress)

    # -- output ------------------------------------------------------------------------------
    def to_netcdf(self, path: str | os.PathLike[str], *, overwrite: bool = False, pointwise: bool = False) -> str:
        """Write the results to a NetCDF file (compressed), whole or not at all
        (:func:`poolwise.output.write_file`); never overwrites unless asked, never through a link.

        The pointwise log-likelihood and posterior predictive (draws × rows, most of the size of
        a fit's file) are written only with ``pointwise=True`` (and when they fit the memory budget)."""
        idata = self.idata if pointwise else self._core_idata()
        skip = set() if pointwise else {"log_likelihood", "posterior_predictive"}
        groups = [g for g in idata.groups() if g not in skip]
        return write_file(path, lambda tmp: idata.to_netcdf(tmp, compress=True, groups=groups), overwrite=overwrite)


def _interval_kind(intervals: str) -> str:
    """``"auto"``, ``"Wald"`` or ``"profile"`` from the ``intervals`` option (any case)."""
    kind = {"auto": "auto", "wald": "Wald", "profile": "profile"}.get(str(intervals).lower())
    if kind is None:
        raise SpecError(f"The 'intervals' option must be 'auto', 'profile' or 'Wald'. Got {intervals!r}.",
                        option="intervals")
    return kind


def _attempt_targets(info: Mapping[str, Any], n: int) -> list[float | None]:
    """target_accept of each NUTS attempt: from ``info["target_accepts"]`` when recorded, else
    the final ``target_accept`` and the retry schedule."""
    given = info.get("target_accepts")
    if given is not None and len(given) == n:
        return [float(t) for t in given]
    used = info.get("target_accept")
    if used is None or n == 0:
        return [None] * n
    if n == 1:
        return [float(used)]
    retries = [t for t in _RETRY_TARGET_ACCEPT if t <= float(used) + 1e-12][-(n - 1):]
    first: list[float | None] = [None]
    if len(retries) == n - 1:
        return first + [float(t) for t in retries]
    return first * (n - 1) + [float(used)]


def _to_inference_data(f: Fit) -> Any:
    """The single Draws → InferenceData converter (without the arrays of draws × rows)."""
    import arviz as az

    b, d = f.bound, f.draws
    posterior: dict[str, np.ndarray] = {}
    for i, name in enumerate(b.coef_names):
        posterior[name] = d.beta[..., i]
    if d.sigma is not None:
        posterior["sigma"] = d.sigma
    for name, arr in d.aux.items():
        posterior[name] = arr
    coords: dict[str, Any] = {"obs": np.arange(b.n_obs)} if b.has_rows else {}
    dims: dict[str, list[str]] = {}
    thinned: dict[str, tuple[np.ndarray, str, np.ndarray, np.ndarray]] = {}
    for block, bd in zip(b.blocks, f.block_draws):
        term = block.term
        if bd.values is not None and bd.value_draws is None:  # the posterior's own group axis
            coords[block.factor] = np.asarray(block.levels)  # an array: ArviZ deep-copies coords
        if bd.sd is not None:
            for k, e in enumerate(block.exprs):
                posterior[term.sd_name(e)] = bd.sd[..., k]
        if bd.corr is not None:
            for j in range(block.q):
                for i in range(j):
                    posterior[term.cor_name(block.exprs[i], block.exprs[j])] = bd.corr[..., i, j]
        if bd.values is not None:
            for k, e in enumerate(block.exprs):
                name = term.value_name(e)
                if bd.value_draws is not None:  # thinned: their own group, with their own draw axis
                    thinned[name] = (bd.values[..., k], block.factor, block.levels, bd.value_draws)
                    continue
                posterior[name] = bd.values[..., k]
                dims[name] = [block.factor]
    observed = {b.spec.outcome: b.y} if b.has_rows else None
    if b.has_rows:  # (reduced in the query: no row arrays, so no observed data nor an 'obs' coordinate)
        dims[b.spec.outcome] = ["obs"]
    idata = az.from_dict(  # the arrays of draws × rows are added by Fit.idata on first access
        posterior=posterior, sample_stats=dict(d.sample_stats) or None, observed_data=observed,
        coords=coords, dims=dims,
    )
    if thinned:
        import xarray as xr

        levels = {factor: lv for _, factor, lv, _ in thinned.values()}  # one index per factor, built once
        ds = xr.Dataset({name: (("chain", "value_draw", factor), arr) for name, (arr, factor, _, _) in thinned.items()},
                        coords={"chain": np.arange(d.n_chains), "value_draw": next(iter(thinned.values()))[3],
                                **{factor: pd.Index(lv, name=factor) for factor, lv in levels.items()}})
        with warnings.catch_warnings():  # a group outside ArviZ's schema, on purpose
            warnings.simplefilter("ignore")
            idata.add_groups({"group_values": ds})
    if b.reduced is not None:
        idata.posterior.attrs.update({"reduced_in": f"{b.reduced.engine}: {b.reduced.source}"})
    idata.posterior.attrs.update({
        "formula": b.shown.formula, "family": b.shown.fam.name, "pooling": b.spec.pooling_text,
        "method": d.method, "priors": "; ".join(f"{k} ~ {v}" for k, v in b.priors.items()),
        "n_obs": b.n_obs, "n_groups": b.n_groups, "inference_library": "poolwise",
    })
    return idata
