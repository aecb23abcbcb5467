"""The knob swept: the pooled, unpooled and hierarchical fits of one model, side by side.

:func:`compare` fits the three settings of the population SD (0, fixed and wide, learned) from
one :class:`~poolwise.spec.ModelSpec` (``spec.replace(pooling=…)``) and returns a
:class:`Comparison`: a per-group table (size, estimate and interval under each pooling, pooling
factor, observed shrinkage) and PSIS-LOO of each fit.  Figures are drawn by ``plots.py`` from
what this module returns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from . import data as _data
from .fit import MEMORY_BUDGET, Fit, fit
from .infer import Progress
from .priors import Prior
from .spec import ModelSpec

__all__ = ["compare", "Comparison", "POOLINGS", "loo"]

POOLINGS = ("pooled", "unpooled", "hierarchical")


def compare(
    formula: str | ModelSpec,
    data: _data.DataLike,
    *,
    family: str = "gaussian",
    priors: Mapping[str, str | Prior] | None = None,
    method: str | None = None,
    seed: int = 0,
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    progress: Progress | None = None,
    memory_budget: int = MEMORY_BUDGET,
) -> Comparison:
    """Fit the pooled, unpooled and hierarchical versions of one model and compare them.

    Parameters
    ----------
    formula, data, family, priors, method, seed, chains, draws, warmup, memory_budget
        As for :func:`poolwise.fit`; the pooling is varied.
    progress
        Optional callback ``(stage, fraction)``, stage naming the pooling being fitted.

    Returns
    -------
    Comparison

    Examples
    --------
    >>> import poolwise as pw
    >>> cmp = pw.compare("reaction ~ 1 + (1 | driver)", pw.datasets.drivers(seed=2), draws=200)
    >>> list(cmp.fits)
    ['pooled', 'unpooled', 'hierarchical']
    """
    if isinstance(formula, ModelSpec):
        base = formula
    else:
        base = ModelSpec(formula, family=family, priors=dict(priors or {}))  # type: ignore[arg-type]
    table = data if isinstance(data, _data.Table) else _data.read_table(data)
    fits: dict[str, Fit] = {}
    for i, pooling in enumerate(POOLINGS):
        spec = base.replace(pooling=pooling)

        def step(stage: str, frac: float, _i: int = i, _p: str = pooling) -> None:
            if progress:
                progress(f"{_p}: {stage}", (_i + frac) / len(POOLINGS))

        # the user's priors on the group SDs and correlations apply to the hierarchical fit only
        if pooling != "hierarchical":
            spec = spec.replace(priors={k: v for k, v in spec.priors.items() if not k.startswith(("sd(", "cor("))})
        fits[pooling] = fit(spec, table, method=method, seed=seed + i, chains=chains, draws=draws, warmup=warmup,
                            progress=step, memory_budget=memory_budget)
    return Comparison(fits)


class Comparison:
    """Three fits of one model that differ only in pooling.

    Attributes
    ----------
    fits
        ``{"pooled": Fit, "unpooled": Fit, "hierarchical": Fit}``.
    """

    def __init__(self, fits: dict[str, Fit]) -> None:
        self.fits = fits
        self._loo: pd.DataFrame | None = None

    @property
    def hierarchical(self) -> Fit:
        return self.fits["hierarchical"]

    @property
    def group_column(self) -> str:
        return self.hierarchical.group_column

    @property
    def terms(self) -> list[str]:
        """Every group term of every grouping factor, by its variable name: ``["1|g", "x|g", "1|a"]``."""
        return [blk.term.value_name(e) for blk in self.hierarchical.bound.blocks for e in blk.exprs]

    def table(self, prob: float = 0.95, *, term: str | None = None) -> pd.DataFrame:
        """Per group: size, one group term's coefficient under each pooling, pooling factor, shrinkage.

        Parameters
        ----------
        prob
            Mass of the central intervals.
        term
            The group term (see :attr:`terms`): ``"1|g"``, ``"x|g"``, or a term name such as
            ``"x"`` when only one grouping factor varies it.  Default: the first grouping
            factor's first term.

        Returns
        -------
        DataFrame indexed by the term's group labels, ordered by size, with columns ``n``;
        ``<pooling>_mean``, ``<pooling>_lo``, ``<pooling>_hi`` for each pooling (the group's
        coefficient: the common coefficient of the term plus the group's value,
        :meth:`Fit.group_estimates`); ``lambda`` (with ``lambda_lo``, ``lambda_hi``): the
        hierarchical model's pooling factor; ``shrinkage``: the observed fraction of the way
        from the unpooled to the pooled estimate, (unpooled − hierarchical) / (unpooled −
        pooled); ``regression``: the hierarchical model's posterior mean of the population
        value of the term in that group (see Notes).  ``.attrs`` holds ``term`` (the variable
        name), ``group_level`` (the group-level predictors found) and ``batch_pooling``
        (Gelman & Pardoe's batch pooling factor).

        Notes
        -----
        A *group-level predictor* of a term is a common column c of the design whose values
        within each group j are c_i = u_j z_i, z the term's column (for the intercept: a column
        constant within each group, such as a county's uranium level).  Such predictors enter
        the group's coefficient: in every pooling the group's estimate is then
        β_term + Σ_c β_c u_jc + b_j (the group mean at row-level predictors 0, for the
        intercept), and ``regression`` is the population value β_term + Σ_c β_c u_jc around which
        the hierarchical model draws the groups, with SD τ.  Without group-level predictors
        ``regression`` is the same for every group: the population mean of the term.

        Raises
        ------
        SpecError
            For a term that is not a group term of the model, or an ambiguous one.
        """
        hier = self.hierarchical
        name = _term_name(hier, term)
        pf = hier.pooling_factors(prob, term=name)
        i, k = _term_index(hier, name)
        u = _group_level(hier, i, k)
        parts: list[pd.DataFrame] = []
        for pooling, f in self.fits.items():
            est = f.group_estimates(prob, term=name) if not u else _estimates_with(f, name, u, prob)
            if not parts:
                parts.append(est[["n"]])
            parts.append(est[["mean", "lo", "hi"]].add_prefix(f"{pooling}_"))
        out = pd.concat(parts, axis=1)
        out["lambda"] = pf["lambda"]
        out["lambda_lo"] = pf["lambda_lo"]
        out["lambda_hi"] = pf["lambda_hi"]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["shrinkage"] = (out["unpooled_mean"] - out["hierarchical_mean"]) / (
                out["unpooled_mean"] - out["pooled_mean"])
        e = hier.bound.blocks[i].exprs[k]
        base = float(hier.param(e).mean()) if e in hier.bound.coef_names else 0.0
        reg = np.full(len(out), base)
        for c, uc in u.items():
            reg = reg + float(hier.param(c).mean()) * uc
        out["regression"] = reg
        out = out.sort_values("n", kind="stable")
        out.attrs["term"] = name
        out.attrs["group_level"] = list(u)
        out.attrs["batch_pooling"] = pf.attrs.get("batch")
        return out

    def population(self, term: str | None = None) -> dict[str, float]:
        """The hierarchical model's population distribution of one group term.

        Returns posterior means of the population mean (``mean``: the term's common
        coefficient, ``Intercept`` for the intercept; 0 when the term has no common
        coefficient) and SD (``tau``: ``sd(<term>|<group>)``), with their 95% intervals
        (``mean_lo``, ``mean_hi``, …), and of ``sigma`` when the model has one.  With
        group-level predictors the mean is the term's value where they are 0 (the
        per-group population values are the ``regression`` column of :meth:`table`).
        """
        f = self.hierarchical
        name = _term_name(f, term)
        i, k = _term_index(f, name)
        block = f.bound.blocks[i]
        e = block.exprs[k]
        out: dict[str, float] = {}
        for key, pname in (("mean", e), ("tau", block.term.sd_name(e)), ("sigma", "sigma")):
            try:
                d = f.param(pname).ravel()
            except KeyError:
                if key != "mean":
                    continue
                d = np.zeros(1)
            out[key] = float(d.mean())
            out[f"{key}_lo"], out[f"{key}_hi"] = (float(v) for v in np.quantile(d, [0.025, 0.975]))
        return out

    def loo(self) -> pd.DataFrame:
        """PSIS-LOO of each pooling (ArviZ's PSIS), ranked best first.

        Columns follow ``arviz.compare``: ``elpd_loo``, ``se``, ``p_loo``, ``elpd_diff``,
        ``dse`` (SE of the difference to the best), ``pareto_k_max``, ``n_bad_k`` (k > 0.7).
        """
        if self._loo is None:
            res = {name: loo(f) for name, f in self.fits.items()}
            rows = []
            best = max(res, key=lambda k: res[k]["elpd_loo"])
            for name, r in res.items():
                diff = r["pointwise"] - res[best]["pointwise"]
                rows.append({
                    "pooling": name, "elpd_loo": r["elpd_loo"], "se": r["se"], "p_loo": r["p_loo"],
                    "elpd_diff": float(-diff.sum()), "dse": float(math.sqrt(diff.size * diff.var())),
                    "pareto_k_max": r["pareto_k_max"], "n_bad_k": r["n_bad_k"],
                })
            self._loo = pd.DataFrame(rows).set_index("pooling").sort_values("elpd_loo", ascending=False)
        return self._loo

    def plot(self, **kwargs: Any) -> Any:
        """The three-panel figure (see :func:`poolwise.plots.plot_comparison`)."""
        from .plots import plot_comparison  # a convenience; plots only read this object

        return plot_comparison(self, **kwargs)

    def __repr__(self) -> str:
        f = self.hierarchical
        return (f"<poolwise.Comparison {f.spec.formula!r} rows={f.bound.n_obs} groups={f.bound.n_groups} "
                f"method={f.method}>")


def _term_name(f: Fit, term: str | None) -> str:
    """The variable name (``"x|g"``) of ``term`` as :meth:`Fit.pooling_factors` reads it: ``None``
    for the first block's first term, ``"x|g"``, ``"1|g"``, ``"sd(x|g)"`` or an unambiguous ``"x"``."""
    blocks = f.bound.blocks
    if term is None:
        return blocks[0].term.value_name(blocks[0].exprs[0])
    hits = []
    for block in blocks:
        for e in block.exprs:
            name = block.term.value_name(e)
            if term in (name, f"{e}|{block.factor}", block.term.sd_name(e)):
                return name
            if term in (e, "1" if e == "Intercept" else e):
                hits.append(name)
    if len(hits) == 1:
        return hits[0]
    f.group_estimates(term=term)  # raises the library's SpecError for an unknown or ambiguous term
    raise AssertionError(term)  # pragma: no cover


def _term_index(f: Fit, name: str) -> tuple[int, int]:
    """(block index, term index) of the group term whose variable is ``name`` (``"x|g"``)."""
    for i, block in enumerate(f.bound.blocks):
        for k, e in enumerate(block.exprs):
            if block.term.value_name(e) == name:
                return i, k
    raise KeyError(name)  # pragma: no cover - names come from this fit's own blocks


def _group_level(f: Fit, i: int, k: int, rtol: float = 1e-9) -> dict[str, np.ndarray]:
    """The group-level predictors of term k of block i: {column: u_j} for each common column
    c (other than the term's own) with c_i = u_j z_i in every group j (z the term's column;
    constant within each group for the intercept).  u_j = 0 where z is 0 on all the group's rows."""
    b = f.bound
    block = b.blocks[i]
    e = block.exprs[k]
    z = np.asarray(block.Z[:, k], dtype=float)
    g, J = block.group, block.n_groups
    szz = np.bincount(g, weights=z * z, minlength=J)
    out: dict[str, np.ndarray] = {}
    for c_idx, c in enumerate(b.coef_names):
        if c == e:
            continue
        col = np.asarray(b.X[:, c_idx], dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            u = np.where(szz > 0, np.bincount(g, weights=z * col, minlength=J) / szz, 0.0)
        resid = col - u[g] * z
        if np.all(np.abs(resid) <= rtol * max(1.0, float(np.abs(col).max(initial=0.0)))):
            out[c] = u
    return out


def _estimates_with(f: Fit, name: str, u: Mapping[str, np.ndarray], prob: float) -> pd.DataFrame:
    """Like :meth:`Fit.group_estimates` for term ``name``, with the group-level part Σ_c β_c u_jc
    added to each group's coefficient draw by draw."""
    i, k = _term_index(f, name)
    block, bd = f.bound.blocks[i], f.block_draws[i]
    e = block.exprs[k]
    C, D = f.draws.beta.shape[:2]
    J = block.n_groups
    draws = np.zeros((C, D, J))
    if e in f.bound.coef_names:
        draws += f.param(e)[..., None]
    if bd.values is not None:
        draws += bd.values[..., k]
    for c, uc in u.items():
        draws += f.param(c)[..., None] * np.asarray(uc)[None, None, :]
    flat = draws.reshape(-1, J)
    lo, hi = np.quantile(flat, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    return pd.DataFrame({"n": block.sizes(), "mean": flat.mean(axis=0), "sd": flat.std(axis=0), "lo": lo,
                         "hi": hi}, index=pd.Index(block.levels, name=block.factor))


def loo(f: Fit) -> dict[str, Any]:
    """PSIS-LOO of one fit over observations, in chunks of rows (memory O(draws × chunk)).

    References
    ----------
    Vehtari, A., Gelman, A. & Gabry, J. (2017). Practical Bayesian model evaluation using
    leave-one-out cross-validation and WAIC. Statistics and Computing 27, 1413–1432.
    """
    import arviz as az
    from scipy.special import logsumexp

    S = f.n_samples
    ess = az.ess(f.idata.posterior, method="mean")
    # relative efficiency exactly as arviz.loo computes it
    reff = float(np.hstack([ess[v].values.ravel() for v in ess.data_vars]).mean()) / S
    reff = reff if math.isfinite(reff) and reff > 0 else 1.0
    elpd = np.empty(f.bound.n_obs)
    lppd = np.empty(f.bound.n_obs)
    ks = np.empty(f.bound.n_obs)
    chunk = max(1, (64 * 2**20) // (8 * S))
    for sl, ll in f.log_likelihood_chunks(chunk):
        ll2 = ll.reshape(S, -1).T  # (rows, samples)
        lw, k = az.psislw(-ll2, reff=reff)
        elpd[sl] = logsumexp(lw + ll2, axis=1)
        lppd[sl] = logsumexp(ll2, axis=1) - math.log(S)
        ks[sl] = k
    n = elpd.size
    return {
        "elpd_loo": float(elpd.sum()), "se": float(math.sqrt(n * elpd.var())), "p_loo": float((lppd - elpd).sum()),
        "pointwise": elpd, "pareto_k": ks, "pareto_k_max": float(ks.max()), "n_bad_k": int((ks > 0.7).sum()),
    }
