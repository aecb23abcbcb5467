"""The knob swept: the pooled, unpooled and hierarchical fits of one model, side by side.

:func:`compare` fits the three settings of the population SD (0, fixed and wide, learned) from
one :class:`~poolwise.spec.ModelSpec` (``spec.replace(pooling=…)``) and returns a
:class:`Comparison`: a per-group table (size, estimate and interval under each pooling, pooling
factor, observed shrinkage) and PSIS-LOO of each fit.  Figures are drawn by :mod:`poolwise.plots` from
what this module returns.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from . import data as _data
from .errors import PoolwiseError
from .fit import MEMORY_BUDGET, RHAT_MAX, Fit, fit
from .infer import Progress, run
from .output import number
from .priors import Prior
from .spec import ModelSpec

__all__ = ["compare", "Comparison", "POOLINGS", "loo", "logo", "Recommendation", "predictive_sample",
           "diagnostics", "pooling_factors"]

POOLINGS = ("pooled", "unpooled", "hierarchical")


def compare(
    formula: str | ModelSpec,
    data: _data.DataLike,
    *,
    family: str | None = None,
    priors: Mapping[str, str | Prior] | None = None,
    weights: str | None = None,
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
    formula, data, family, priors, weights, method, seed, chains, draws, warmup, memory_budget
        As for :func:`poolwise.fit`; the pooling is varied, every group term alike (a
        per-term pooling of a :class:`~poolwise.spec.ModelSpec` is replaced).  With several
        grouping factors, :meth:`Comparison.table`, :meth:`Comparison.pooling_factors`, the
        figures and the report cover each factor.
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
        base = formula if weights is None else formula.replace(weights=weights)
    else:
        base = ModelSpec(formula, family=family, priors=dict(priors or {}), weights=weights)  # type: ignore[arg-type]
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
        self._loo: dict[tuple[Any, ...], pd.DataFrame] = {}
        self._logo: dict[tuple[Any, ...], pd.DataFrame] = {}
        self._diagnostics: pd.DataFrame | None = None
        #: the latest :meth:`recommend` result (``None`` until it is called): shown in a notebook
        self.recommendation: Recommendation | None = None

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

    @property
    def factors(self) -> list[str]:
        """The grouping factors, in the formula's order: ``["s", "d"]``."""
        return [blk.factor for blk in self.hierarchical.bound.blocks]

    @property
    def factor_terms(self) -> list[str]:
        """The first group term of each grouping factor (its intercept, usually): ``["1|s", "1|d"]``."""
        return [blk.term.value_name(blk.exprs[0]) for blk in self.hierarchical.bound.blocks]

    def table(self, prob: float = 0.95, *, term: str | None = None) -> pd.DataFrame:
        """Per group: size, one group term's coefficient under each pooling, pooling factor, shrinkage.

        Parameters
        ----------
        prob
            Mass of the central intervals.
        term
            The group term (see :attr:`terms`): ``"1|g"``, ``"x|g"``, or a term name such as
            ``"x"`` when only one grouping factor varies it.  Default: the first grouping
            factor's first term; with several grouping factors, every factor's first term
            (:attr:`factor_terms`), one table under the other (see Returns).

        Returns
        -------
        With several grouping factors and no ``term``: the tables of :attr:`factor_terms`
        stacked, indexed by (``factor``, ``group``), each factor's groups ordered by size, with
        a column ``term``; ``.attrs`` then holds ``terms`` and, per term, ``batch_pooling`` and
        ``group_level`` (dicts).  Otherwise:
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
        if term is None and len(hier.bound.blocks) > 1:
            return self._factors_table(prob)
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

    def _factors_table(self, prob: float) -> pd.DataFrame:
        """The tables of every grouping factor's first term, stacked (see :meth:`table`)."""
        parts, batch, level = [], {}, {}
        for blk, name in zip(self.hierarchical.bound.blocks, self.factor_terms):
            t = self.table(prob, term=name)
            batch[name], level[name] = t.attrs.get("batch_pooling"), t.attrs.get("group_level", [])
            t = t.assign(term=name)
            t.index = pd.MultiIndex.from_arrays([[blk.factor] * len(t), t.index.astype(str)],
                                                names=["factor", "group"])
            parts.append(t[["term"] + [c for c in t.columns if c != "term"]])
        out = pd.concat(parts)
        out.attrs = {"terms": list(self.factor_terms), "batch_pooling": batch, "group_level": level}
        return out

    def pooling_factors(self, prob: float = 0.95) -> pd.DataFrame:
        """The hierarchical fit's pooling factors of every group term (:meth:`Fit.pooling_factors`).

        Returns
        -------
        DataFrame indexed by (``term``, ``group``) with ``factor``, ``n``, ``lambda``,
        ``lambda_lo``, ``lambda_hi`` and ``batch`` (Gelman & Pardoe's batch pooling factor of
        the term, on each of its rows); ``.attrs["batch"]`` holds {term: batch pooling factor}.
        """
        return pooling_factors(self.hierarchical, prob)

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

    def loo(self, *, max_refits: int | None = None, max_seconds: float | None = None) -> pd.DataFrame:
        """PSIS-LOO of each pooling (ArviZ's PSIS), the unreliable observations refitted (:func:`loo`),
        ranked best first.

        Columns: ``elpd_loo``, ``se``, ``p_loo``, ``elpd_diff`` (this pooling's ELPD minus the
        best's: 0 for the best, negative for the others), ``dse`` (SE of that difference, over
        observations), ``pareto_k_max`` (over the values left from PSIS), ``n_bad_k`` (k > 0.7
        left after the refits), ``n_refits``.  ``.attrs["bad"]`` holds, per pooling, the row
        numbers (0-based) still unreliable, ``.attrs["pointwise"]`` the per-row ELPDs (refitted
        where k was high) and ``.attrs["pareto_k"]`` PSIS's k (the refitted rows included).
        Differences and SEs use the refitted pointwise values.  Computed once per budget and cached.

        Parameters
        ----------
        max_refits, max_seconds
            Budget of exact refits per fit (default :data:`MAX_REFITS`, :data:`MAX_SECONDS`).
        """
        key = (MAX_REFITS if max_refits is None else int(max_refits),
               MAX_SECONDS if max_seconds is None else float(max_seconds))
        if key not in self._loo:
            res = {name: loo(f, max_refits=key[0], max_seconds=key[1]) for name, f in self.fits.items()}
            rows = []
            best = max(res, key=lambda k: res[k]["elpd_loo"])
            for name, r in res.items():
                diff = r["pointwise"] - res[best]["pointwise"]
                rows.append({
                    "pooling": name, "elpd_loo": r["elpd_loo"], "se": r["se"], "p_loo": r["p_loo"],
                    "elpd_diff": float(diff.sum()), "dse": float(math.sqrt(diff.size * diff.var())),
                    "pareto_k_max": r["pareto_k_max"], "n_bad_k": r["n_bad_k"], "n_refits": r["n_refits"],
                })
            out = pd.DataFrame(rows).set_index("pooling").sort_values("elpd_loo", ascending=False)
            out.attrs["bad"] = {k: [int(i) for i in r["bad"]] for k, r in res.items()}
            out.attrs["pointwise"] = {k: r["pointwise"] for k, r in res.items()}
            out.attrs["pareto_k"] = {k: r["pareto_k"] for k, r in res.items()}
            self._loo[key] = out
        return self._loo[key]

    def logo(self, *, max_refits: int | None = None, draws: int = 250, chains: int = 4, folds: int = 10,
             max_groups: int = 200, max_seconds: float | None = None) -> pd.DataFrame:
        """Leave-one-group-out cross-validation of each pooling, ranked best first.

        elpd_j is the log predictive density of group j's rows, jointly, under the model
        fitted without group j, where group j is a *new* group (its value drawn from the
        population: N(0, Σ) hierarchical, the fixed wide SD unpooled, none pooled).  See
        :func:`logo` for how each method computes it.

        Returns
        -------
        DataFrame indexed by pooling with ``elpd_logo``, ``se``, ``elpd_diff`` (this pooling's
        ELPD minus the best's, ≤ 0) and ``dse`` (SE of that difference, over groups),
        ``pareto_k_max``, ``n_bad_k`` (k > 0.7 left after the refits) and ``n_refits``.
        ``.attrs["pointwise"]`` holds {pooling: per-group elpd (Series)}, ``.attrs["pareto_k"]``
        the per-group k (PSIS paths), ``.attrs["bad"]`` the labels of the groups still
        unreliable, ``.attrs["how"]`` the scheme used.  Computed once per set of options and cached.
        """
        key = (MAX_REFITS if max_refits is None else int(max_refits), draws, chains, folds, max_groups,
               MAX_SECONDS if max_seconds is None else float(max_seconds))
        if key in self._logo:
            return self._logo[key]
        res = {name: logo(f, max_refits=key[0], draws=draws, chains=chains, folds=folds, max_groups=max_groups,
                          max_seconds=key[5]) for name, f in self.fits.items()}
        best = max(res, key=lambda k: res[k]["elpd_logo"])
        rows = []
        for name, r in res.items():
            diff = r["pointwise"].to_numpy() - res[best]["pointwise"].to_numpy()
            rows.append({"pooling": name, "elpd_logo": r["elpd_logo"], "se": r["se"],
                         "elpd_diff": float(diff.sum()), "dse": float(math.sqrt(diff.size * diff.var())),
                         "pareto_k_max": r["pareto_k_max"], "n_bad_k": r["n_bad_k"], "n_refits": r["n_refits"]})
        out = pd.DataFrame(rows).set_index("pooling").sort_values("elpd_logo", ascending=False)
        out.attrs["pointwise"] = {k: r["pointwise"] for k, r in res.items()}
        out.attrs["pareto_k"] = {k: r["pareto_k"] for k, r in res.items()}
        out.attrs["bad"] = {k: list(r["bad"]) for k, r in res.items()}
        out.attrs["how"] = {k: r["how"] for k, r in res.items()}
        out.attrs["exact"] = {k: r["exact"] for k, r in res.items()}
        self._logo[key] = out
        return out

    def recommend(self, *, small: int = 5, max_refits: int | None = None,
                  max_seconds: float | None = None) -> Recommendation:
        """Which pooling, and why, in plain words with the numbers behind them.

        The rule
        --------
        1. Evidence: ΔELPD ± SE of each pooling against the best (its ELPD minus the best's, ≤ 0),
           over observations (PSIS-LOO, :meth:`loo`) and over groups (leave-one-group-out,
           :meth:`logo`), the observations and groups whose PSIS estimate is unreliable
           (Pareto k > 0.7) refitted exactly up to a budget (``max_refits`` refits and
           ``max_seconds`` per fit and criterion).  A pooling is *ruled out* when it is worse
           than the best on either by more than 2 SE and more than 4 nats (smaller differences
           are negligible).  What stays unreliable after the refits is named in the reasons.
        2. If one pooling remains, it is the choice.
        3. Otherwise the predictive evidence does not separate the remaining ones (the reasons say
           so), and the posterior of the population SD τ, relative to the within-group SD σ, and
           the group sizes decide, following the guidance: τ is *near 0* when its 95% interval
           reaches 0.05 σ (lower end ≤ 0.05 σ) or every pooling factor is ≥ 0.9; then pooled.
           Otherwise hierarchical when some groups are small (n_j ≤ ``small``); with
           hierarchical and unpooled left, unpooled only when every group has ample data
           (pooling factors ≤ 0.05), else hierarchical (unpooled is its limit as τ grows).
           With several grouping factors (each judged by its first term): τ near 0 means every
           factor's, small groups those of any factor, ample data every factor's.
           Where none of this decides, the choice is ``"indistinguishable"`` and ``preferred``
           names the pooling the guidance leans to.
        4. Never unpooled when the hierarchical posterior of τ is concentrated near 0.
        """
        loo_t = self.loo(max_refits=max_refits, max_seconds=max_seconds)
        logo_t = self.logo(max_refits=max_refits, max_seconds=max_seconds)
        hier = self.hierarchical
        # per grouping factor (its first term): τ, the pooling factors, the small groups; the three
        # fits pool every factor alike, so pooled needs every τ near 0 and unpooled every λ small
        factors = []
        for name in self.factor_terms:
            pop = self.population(name)
            pf = hier.pooling_factors(term=name)
            lam = pf["lambda"].to_numpy(dtype=float)
            n = pf["n"].to_numpy(dtype=float)
            sigma = pop.get("sigma")
            unit = sigma if sigma is not None and sigma > 0 else None
            ref = 0.05 * (unit if unit is not None else float(hier.bound.scale))
            lam_min = float(np.nanmin(lam)) if lam.size else float("nan")
            lam_max = float(np.nanmax(lam)) if lam.size else float("nan")
            factors.append({"term": name, "pop": pop, "lam": lam, "n": n, "unit": unit, "lam_min": lam_min,
                            "lam_max": lam_max, "n_small": int((n <= small).sum()),
                            "near_0": bool(pop["tau_lo"] <= ref or (lam.size > 0 and lam_min >= 0.9))})
        tau_near_0 = all(fc["near_0"] for fc in factors)
        n_small = sum(fc["n_small"] for fc in factors)
        ample = all(fc["lam"].size and fc["lam_max"] <= 0.05 for fc in factors)
        several = len(factors) > 1

        table = pd.DataFrame({
            "elpd_loo": loo_t["elpd_loo"], "d_loo": loo_t["elpd_diff"], "dse_loo": loo_t["dse"],
            "elpd_logo": logo_t["elpd_logo"], "d_logo": logo_t["elpd_diff"], "dse_logo": logo_t["dse"],
        }).loc[list(POOLINGS)]
        ruled_out = {m: bool(-table.loc[m, "d_loo"] > max(2 * table.loc[m, "dse_loo"], 4.0)
                             or -table.loc[m, "d_logo"] > max(2 * table.loc[m, "dse_logo"], 4.0)) for m in POOLINGS}
        table["ruled_out"] = pd.Series(ruled_out)
        remain = [m for m in POOLINGS if not ruled_out[m]]
        if not remain:  # the two criteria disagree: keep the best of each
            remain = sorted({str(loo_t.index[0]), str(logo_t.index[0])}, key=POOLINGS.index)
        if tau_near_0 and "unpooled" in remain and len(remain) > 1:
            remain.remove("unpooled")

        reasons: list[str] = []
        for label, t in (("observation (PSIS-LOO)", loo_t), ("group (leave-one-group-out)", logo_t)):
            best = str(t.index[0])
            parts = [f"{m} {number(t.loc[m, 'elpd_diff'], 3)} ± {number(t.loc[m, 'dse'], 3)}" for m in t.index[1:]]
            reasons.append(f"By {label}, {best} predicts best; ΔELPD vs it (negative: worse): "
                           + ", ".join(parts) + ".")
        reasons.extend(_reliability(loo_t, logo_t))
        reasons.extend(self._convergence_reasons())
        for fc in factors:
            of = f" of {fc['term']}" if several else ""
            tau, tau_lo, tau_hi, unit = fc["pop"]["tau"], fc["pop"]["tau_lo"], fc["pop"]["tau_hi"], fc["unit"]
            if unit is not None:
                reasons.append(f"Population SD τ{of} = {tau:.3g} (95% interval {tau_lo:.3g} to {tau_hi:.3g}), "
                               f"{number(tau / unit, 3)} × the within-group SD σ = {unit:.3g}.")
            else:
                reasons.append(f"Population SD τ{of} = {tau:.3g} (95% interval {tau_lo:.3g} to {tau_hi:.3g}).")
            lam_min, lam_max = fc["lam_min"], fc["lam_max"]
            if fc["lam"].size:
                if f"{lam_min:.2f}" == f"{lam_max:.2f}":
                    reasons.append(f"Pooling factor λ_j{of} = {lam_min:.2f} for every group "
                                   f"(0 = the group's own estimate, 1 = the population value).")
                else:
                    reasons.append(f"Pooling factors λ_j{of} range from {lam_min:.2f} to {lam_max:.2f} "
                                   f"(0 = the group's own estimate, 1 = the population value).")
            if fc["n_small"]:
                groups = f"{fc['term'].partition('|')[2]} groups" if several else "groups"
                reasons.append(f"{fc['n_small']} of {fc['n'].size} {groups} have {small} or fewer rows.")

        preferred: str
        if len(remain) == 1:
            choice = preferred = remain[0]
            reasons.insert(0, f"Only {choice} is not ruled out (the others predict worse than the best by more "
                              f"than 2 SE and 4 nats).")
        else:
            tied = ", ".join(remain)
            if "pooled" in remain and tau_near_0:
                choice = preferred = "pooled"
                why = "τ's posterior reaches ~0 (group differences are negligible), so the simpler pooled model"
            elif "hierarchical" in remain and not tau_near_0 and n_small > 0:
                choice = preferred = "hierarchical"
                why = "τ's 95% interval excludes ~0 and there are small groups, which borrow strength"
            elif set(remain) == {"hierarchical", "unpooled"}:
                if ample:
                    choice = preferred = "unpooled"
                    why = "the groups are distinct and every group has ample data (λ_j ≤ 0.05)"
                else:
                    choice = preferred = "hierarchical"
                    why = "the groups vary and the hierarchical model contains the unpooled one as τ grows"
            else:
                choice = "indistinguishable"
                preferred = "hierarchical" if "hierarchical" in remain and not tau_near_0 else remain[0]
                why = f"neither the predictive evidence nor τ's posterior separates them; leaning to {preferred}"
            reasons.insert(0, f"The predictive evidence does not separate {tied} (within 2 SE or 4 nats); {why}.")
        self.recommendation = Recommendation(choice=choice, reasons=reasons, table=table, preferred=preferred)
        return self.recommendation

    def _convergence_reasons(self) -> list[str]:
        """One sentence per fit whose draws fail the convergence rule (:meth:`Fit.diagnostics`):
        its ELPD rests on draws that do not yet describe its posterior."""
        out = []
        for name, f in self.fits.items():
            table = f.diagnostics()
            bad = int((table["flag"] != "").sum())
            if bad:
                out.append(f"The {name} fit has not converged ({bad} of {len(table)} parameters checked have R-hat "
                           f"> {RHAT_MAX:g} or too small an ESS): its ELPD and this comparison are not reliable until it is "
                           "run with more draws.")
        return out

    def plot(self, **kwargs: Any) -> Any:
        """The three-panel figure (see :func:`poolwise.plots.plot_comparison`)."""
        from .plots import plot_comparison  # a convenience; plots only read this object

        return plot_comparison(self, **kwargs)

    def report(self, path: str | os.PathLike[str], overwrite: bool = False) -> str:
        """Write a self-contained HTML report of this comparison (see :func:`poolwise.report.write_report`).

        Returns the path written; raises :class:`~poolwise.errors.DataError` when the file
        exists and ``overwrite`` is not set.
        """
        from .report import write_report  # a convenience; the report only reads this object

        return write_report(self, path, overwrite=overwrite)

    def diagnostics(self) -> pd.DataFrame:
        """Sampling diagnostics of each fit: R-hat, bulk and tail ESS, divergences.

        Returns
        -------
        DataFrame with one row per pooling and parameter (see :func:`diagnostics`), the fits in
        the order pooled, unpooled, hierarchical; ``.attrs["fits"]`` holds, per pooling, the
        method, the sampler, chains × draws, the divergences (an int, or ``None`` where they
        cannot occur or do not apply) and ``divergences_text``, a phrase saying which.  Computed
        once and cached.
        """
        if self._diagnostics is None:
            parts = [diagnostics(f).assign(pooling=name) for name, f in self.fits.items()]
            out = pd.concat(parts, ignore_index=True)
            out = out[["pooling"] + [c for c in out.columns if c != "pooling"]]
            out.attrs = {"fits": {name: p.attrs["fit"] for name, p in zip(self.fits, parts)}}
            self._diagnostics = out
        return self._diagnostics

    def data_summary(self) -> dict[str, Any]:
        """What the three fits were given: rows, groups and group sizes, the outcome.

        Returns a dict: ``n_obs``; ``outcome`` (its name) with ``outcome_summary`` (``mean``,
        ``sd``, ``min``, ``q25``, ``median``, ``q75``, ``max``); ``groups``: one dict per grouping
        factor with ``factor``, ``n_groups``, ``size_min``, ``size_median``, ``size_max``.
        """
        b = self.hierarchical.bound
        y = np.asarray(b.y, dtype=float)
        q = np.quantile(y, [0.0, 0.25, 0.5, 0.75, 1.0])
        seen: dict[str, dict[str, Any]] = {}
        for block in b.blocks:
            if block.factor in seen:
                continue
            sizes = block.sizes()
            seen[block.factor] = {"factor": block.factor, "n_groups": int(block.n_groups),
                                  "size_min": int(sizes.min()), "size_median": float(np.median(sizes)),
                                  "size_max": int(sizes.max())}
        return {
            "n_obs": int(b.n_obs), "outcome": self.hierarchical.spec.outcome,
            "outcome_summary": {"mean": float(y.mean()), "sd": float(y.std(ddof=1)) if y.size > 1 else 0.0,
                                "min": float(q[0]), "q25": float(q[1]), "median": float(q[2]),
                                "q75": float(q[3]), "max": float(q[4])},
            "groups": list(seen.values()),
        }

    def __repr__(self) -> str:
        f = self.hierarchical
        blocks = f.bound.blocks
        per = {b.factor: b.n_groups for b in blocks}  # (blocks on one factor: listed once)
        groups = str(f.bound.n_groups) if len(per) == 1 else "(" + ", ".join(f"{k}: {v}" for k, v in per.items()) + ")"
        return f"<poolwise.Comparison {f.bound.shown.formula!r} rows={f.bound.n_obs} groups={groups} method={f.method}>"

    def _repr_html_(self) -> str:
        """The comparison in a notebook (:func:`poolwise.notebook.comparison_html`); cheap: it never
        starts PSIS-LOO or leave-one-group-out, and shows the recommendation once made."""
        from .notebook import comparison_html  # a convenience; the notebook view only reads this object

        return comparison_html(self)


def _named(items: list[Any], most: int = 5) -> str:
    shown = ", ".join(str(x) for x in items[:most])
    return shown + (f" and {len(items) - most} more" if len(items) > most else "")


def _reliability(loo_t: pd.DataFrame, logo_t: pd.DataFrame) -> list[str]:
    """Sentences on how reliable the ELPDs are: what was refitted, and what is left with
    Pareto k > 0.7 after the refits (named), per pooling; nothing when PSIS was reliable
    throughout and nothing was refitted."""
    out = []
    for what, t, unit in (("PSIS-LOO", loo_t, "observation"), ("Leave-one-group-out", logo_t, "group")):
        bad = t.attrs.get("bad", {})
        how = t.attrs.get("how", {})
        exact_all = bool(how) and all(t.attrs.get("exact", {}).get(m, False) for m in how)
        left = [m for m in POOLINGS if m in t.index and int(t.loc[m, "n_bad_k"]) > 0]
        if exact_all:
            texts = set(how.values())
            out.append(f"Leave-one-group-out: {next(iter(texts))} for each pooling."
                       if len(texts) == 1 else "Leave-one-group-out: "
                       + "; ".join(f"{m}: {h}" for m, h in how.items()) + ".")
            continue
        refits = {m: int(t.loc[m, "n_refits"]) for m in POOLINGS if m in t.index and "n_refits" in t.columns}
        if not left:
            done = [f"{m} {r}" for m, r in refits.items() if r]
            if done:
                out.append(f"{what}: every {unit} with Pareto k > 0.7 was refitted exactly "
                           f"({', '.join(done)} refits); the ELPDs are reliable.")
            continue
        parts = []
        for m in left:
            items = bad.get(m, [])
            k = int(t.loc[m, "n_bad_k"])
            named = (f"row{'s' if k != 1 else ''} {_named([int(i) + 1 for i in items])} of the data"
                     if unit == "observation" else _named(items))
            parts.append(f"ELPD of {m} is unreliable for {k} {unit}{'s' if k != 1 else ''} "
                         f"({named}; Pareto k > 0.7) after {refits.get(m, 0)} refit"
                         f"{'s' if refits.get(m, 0) != 1 else ''}")
        out.append(f"{what}: " + "; ".join(parts) + ": the ΔELPD involving "
                   f"{'it' if len(left) == 1 else 'them'} is approximate (more refits: "
                   "recommend(max_refits=..., max_seconds=...)).")
    return out


def pooling_factors(f: Fit, prob: float = 0.95) -> pd.DataFrame:
    """Pooling factors of every group term of ``f``, one table (see :meth:`Comparison.pooling_factors`)."""
    parts, batch = [], {}
    for blk in f.bound.blocks:
        for e in blk.exprs:
            name = blk.term.value_name(e)
            pf = f.pooling_factors(prob, term=name)
            batch[name] = pf.attrs.get("batch")
            pf = pf.assign(factor=blk.factor, batch=batch[name])
            pf.index = pd.MultiIndex.from_arrays([[name] * len(pf), pf.index.astype(str)], names=["term", "group"])
            parts.append(pf[["factor", "n", "lambda", "lambda_lo", "lambda_hi", "batch"]])
    out = pd.concat(parts)
    out.attrs = {"batch": batch}
    return out


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


def predictive_sample(f: Fit, *, n_draws: int = 50, max_rows: int = 10_000,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replicated data sets from a fit's posterior predictive, for a posterior predictive check.

    Parameters
    ----------
    f
        A :class:`~poolwise.fit.Fit`.
    n_draws
        How many posterior draws (each a replicated data set), evenly spaced over the draws.
    max_rows
        With more rows than this, a random subset of this many rows (sorted) is used.
    seed
        Seed of the row subset and of the replicated outcomes made on demand.

    Returns
    -------
    rows, y, y_rep
        The row numbers used, the observed outcome at them and the replicated outcomes,
        (draws, rows).  They are taken from the fit's stored ``posterior_predictive`` when it has
        one, else drawn on demand for the chosen draws and rows only (memory O(draws × rows
        used)).
    """
    b = f.bound
    n, S = int(b.n_obs), f.n_samples
    rng = np.random.default_rng(seed)
    rows = np.arange(n) if n <= max_rows else np.sort(rng.choice(n, int(max_rows), replace=False))
    k = max(1, min(int(n_draws), S))
    step = max(1, S // k)
    pick = slice(0, step * k, step)
    stored = f._stored_predictive()
    if stored is not None:
        y_rep = stored[pick][:, rows]
    else:
        eta = f._eta(rows, pick)  # type: ignore[arg-type]  # row indices select like a slice
        y_rep = f.spec.fam.sample(rng, eta, **f._family_kwargs(rows, pick))
    return rows, np.asarray(b.y, dtype=float)[rows], np.asarray(y_rep, dtype=float)


def _sampler(f: Fit) -> tuple[str, int | None, str]:
    """(how the draws were made, divergences or None, a phrase on divergences) of one fit."""
    info = f.info if isinstance(f.info, dict) else {}
    stats = f.draws.sample_stats
    if "diverging" in stats:
        n_div = int(np.asarray(stats["diverging"]).sum())
        hyper = str(info.get("hyper_sampler", "NUTS (NumPyro)"))
        if f.method == "exact":
            hyper = f"{hyper} on the collapsed marginal, then exact conditional draws"
        return hyper, n_div, f"{n_div} of {f.n_samples} transitions diverged"
    if f.method == "empirical":
        return (f"{info.get('method', 'REML')} point estimates of the hyperparameters, conditional draws of the rest",
                None, "not applicable: the hyperparameters are point estimates, not sampled")
    if f.method == "laplace":
        return ("independence MH over coefficients and hyperparameters (Laplace marginal)", None,
                "none possible: independence Metropolis-Hastings does not diverge")
    if f.method == "exact" and info.get("sampler") == "polya-gamma gibbs":
        return (str(info.get("hyper_sampler")), None,
                "none possible: Gibbs and random-walk Metropolis steps (no Hamiltonian dynamics)")
    if f.method == "exact":
        hyper = str(info.get("hyper_sampler", "independence MH (quadrature-grid proposal)" if info.get("grid_points")
                                 else "none (nothing to sample)"))
        if "acceptance_rate" in info and info.get("grid_points"):
            hyper += f", acceptance {float(info['acceptance_rate']):.0%}"
        return (f"{hyper} for the hyperparameters, then exact conditional draws", None,
                "none possible: no Hamiltonian dynamics (independence MH / exact draws)")
    return str(f.method), None, "not recorded by this method"


def diagnostics(f: Fit) -> pd.DataFrame:
    """R-hat and bulk/tail ESS of one fit's parameters (ArviZ's rank-normalized versions, unrounded).

    Returns
    -------
    DataFrame with one row per scalar parameter (``kind="parameter"``: coefficients,
    ``sigma``, group SDs and correlations) and one per group variable (``kind="group values"``,
    ``1|g``: the worst over its ``n`` groups, largest R-hat and smallest ESS), columns
    ``parameter``, ``kind``, ``n``, ``r_hat``, ``ess_bulk``, ``ess_tail`` and ``sampled``
    (False for constant draws: point estimates of an empirical fit, whose R-hat is NaN).
    ``.attrs["fit"]`` holds ``method``, ``sampler``, ``chains``, ``draws``, ``divergences``
    (int, or ``None`` where none can occur or they do not apply) and ``divergences_text``.

    References
    ----------
    Vehtari, A., Gelman, A., Simpson, D., Carpenter, B. & Bürkner, P.-C. (2021). Rank-normalization,
    folding, and localization: an improved R-hat for assessing convergence of MCMC. Bayesian
    Analysis 16, 667–718.
    """
    import arviz as az

    post = f._core_idata().posterior
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant draws: R-hat 0/0
        rhat = az.rhat(post)
        bulk = az.ess(post, method="bulk")
        tail = az.ess(post, method="tail")
    group_vars = set(f.group_vars)
    rows: list[dict[str, Any]] = []
    for name in post.data_vars:
        name = str(name)
        values = np.asarray(post[name].values)
        sampled = bool(np.ptp(values) > 0) if values.size else False
        r, eb, et = (np.asarray(v[name].values, dtype=float).ravel() for v in (rhat, bulk, tail))
        grouped = name in group_vars
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: constant draws
            rows.append({"parameter": name, "kind": "group values" if grouped else "parameter", "n": r.size,
                         "r_hat": float(np.nanmax(r)) if np.isfinite(r).any() else math.nan,
                         "ess_bulk": float(np.nanmin(eb)) if np.isfinite(eb).any() else math.nan,
                         "ess_tail": float(np.nanmin(et)) if np.isfinite(et).any() else math.nan,
                         "sampled": sampled})
    out = pd.DataFrame(rows, columns=["parameter", "kind", "n", "r_hat", "ess_bulk", "ess_tail", "sampled"])
    sampler, n_div, text = _sampler(f)
    out.attrs["fit"] = {"method": f.method, "sampler": sampler, "chains": f.n_chains,
                        "draws": f.n_draws, "divergences": n_div, "divergences_text": text}
    return out


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """What :meth:`Comparison.recommend` concludes.

    Attributes
    ----------
    choice
        ``"pooled"``, ``"unpooled"``, ``"hierarchical"`` or ``"indistinguishable"``.
    reasons
        Plain sentences with the numbers behind the choice, and what of the evidence is
        unreliable (Pareto k > 0.7 left after the refits), named.
    table
        The evidence: per pooling, ELPD, ΔELPD (its ELPD minus the best's: 0 for the best,
        negative for the others) and its SE by observation (``*_loo``) and by group
        (``*_logo``), and whether it is ruled out.
    preferred
        The pooling the guidance leans to (equals ``choice`` unless it is ``"indistinguishable"``).
    """

    choice: str
    reasons: list[str]
    table: pd.DataFrame = dataclasses.field(repr=False)
    preferred: str = ""

    def __str__(self) -> str:
        head = (f"Recommendation: {self.choice}" if self.choice != "indistinguishable" else
                f"Recommendation: the models are indistinguishable (leaning to {self.preferred})")
        return "\n".join([head] + [f"  - {r}" for r in self.reasons])

    def _repr_html_(self) -> str:
        """The recommendation in a notebook (:func:`poolwise.notebook.recommendation_html`)."""
        from .notebook import recommendation_html  # a convenience, as Comparison.plot

        return recommendation_html(self)


def _subset(bound: Any, keep: np.ndarray) -> Any:
    """``bound`` with only the rows in ``keep`` (bool, per row): every block's groups that keep
    rows re-indexed in order, priors, scale and pooling settings unchanged."""
    blocks = []
    for block in bound.blocks:
        g = block.group[keep]
        present = np.zeros(block.n_groups, dtype=bool)
        present[g] = True
        new_index = np.cumsum(present) - 1
        blocks.append(dataclasses.replace(block, Z=block.Z[keep], group=new_index[g].astype(block.group.dtype),
                                          levels=[lv for lv, p in zip(block.levels, present) if p]))
    return dataclasses.replace(
        bound, y=bound.y[keep], X=bound.X[keep], weights=bound.weights[keep], offset=bound.offset[keep],
        trials=None if bound.trials is None else bound.trials[keep], blocks=tuple(blocks))


def _drop_groups(bound: Any, drop: np.ndarray) -> tuple[Any, np.ndarray]:
    """``bound`` without the rows of the first block's groups in ``drop`` (bool, per group).
    Returns the new bound spec and the kept-row mask."""
    keep = ~drop[bound.blocks[0].group]
    return _subset(bound, keep), keep


def _refit(f: Fit, keep: np.ndarray, *, seed: int, chains: int, draws: int) -> Fit:
    """``f``'s model fitted again to the rows in ``keep`` only (the same priors and pooling
    settings): by the exact path for a Gaussian model (the same model, its exact posterior),
    else by the fit's own method."""
    nb = _subset(f.bound, keep)
    method = "exact" if f.spec.fam.exact else f.method
    return Fit(nb, run(nb, method=method, seed=seed, chains=chains, draws=draws, warmup=draws),
               memory_budget=f.memory_budget)


def _sigma_matrices(f: Fit, i: int) -> np.ndarray:
    """Σ of block i per draw, (S, q, q): learned (SDs and correlations) or the pooling's fixed
    one (zeros for a pooled block)."""
    block, bd = f.bound.blocks[i], f.block_draws[i]
    C, D = f._thin(f.draws.beta).shape[:2]  # the draws the group values were kept for
    S, q = C * D, block.q
    if bd.sd is None:
        fixed = np.zeros((q, q)) if block.Sigma is None else np.asarray(block.Sigma, dtype=float)
        return np.broadcast_to(fixed, (S, q, q))
    sd = f._thin(bd.sd).reshape(S, q)
    corr = np.broadcast_to(np.eye(q), (S, q, q)) if bd.corr is None else f._thin(bd.corr).reshape(S, q, q)
    return sd[:, :, None] * corr * sd[:, None, :]


def _heldout_logpdf(rf: Fit, b: Any, rows: np.ndarray, *, seed: int = 0, n_mc: int = 256,
                    monte_carlo: bool = False, chunk: int | None = None) -> np.ndarray:
    """log p(y_rows | θ_s) per posterior draw s of the refit ``rf``, jointly over ``rows`` (row
    numbers of the full bound spec ``b``), shape (S,).

    A row's group that ``rf`` saw keeps its drawn value; a group it did not see is a *new*
    group, its value b ~ N(0, Σ_s) integrated out: exactly for a Gaussian family
    (y ~ N(Xβ + Zb_known, D + U Σ U'), D = diag(σ²/w), by the determinant lemma and Woodbury
    with Q × Q systems only, Q the new groups' terms), by ``n_mc`` Monte Carlo draws of b per
    posterior draw otherwise (or when ``monte_carlo`` is set: a check of the one against the
    other).  Rows are taken ``chunk`` at a time: memory O(S × chunk), not O(S × rows)."""
    from scipy.special import logsumexp

    rows = np.asarray(rows)
    C, D = rf._thin(rf.draws.beta).shape[:2]  # the draws the group values were kept for
    S, n = C * D, rows.size
    chunk = int(chunk or max(1, (32 * 2**20) // (8 * S * (1 if not monte_carlo and rf.spec.fam.exact else 32))))
    d = rf.draws
    beta = rf._thin(d.beta).reshape(S, -1)
    fam = rf.spec.fam
    kw = rf._family_kwargs(None, slice(None), thin=True)
    # each block: (labels of the rows, {label: index in the refit}, its values (S, J, q) or None)
    blocks = []
    new_labels: list[tuple[int, str]] = []  # (block, label) of each new group
    for i, (block, rblock, bd) in enumerate(zip(b.blocks, rf.bound.blocks, rf.block_draws)):
        index = {lv: k for k, lv in enumerate(rblock.levels)}
        vals = None
        if bd.values is not None:
            vals = rf._thin(bd.values)
            vals = vals.reshape((S,) + vals.shape[2:])
        blocks.append((index, vals))
        for j in dict.fromkeys(block.group[rows].tolist()):
            lv = block.levels[j]
            if lv not in index:
                new_labels.append((i, lv))
    sig = [_sigma_matrices(rf, i) for i in range(len(b.blocks))] if new_labels else []
    offsets = np.cumsum([0] + [b.blocks[i].q for i, _ in new_labels])
    Q = int(offsets[-1])
    big = np.zeros((S, Q, Q))
    for (i, _), o in zip(new_labels, offsets[:-1]):
        q = b.blocks[i].q
        big[:, o:o + q, o:o + q] = sig[i]

    def pieces(sl: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """η of rows ``sl`` with the known groups' values (S, m), their U (m, Q), y and kwargs."""
        eta = beta @ b.X[sl].T + b.offset[sl][None, :]
        U = np.zeros((sl.size, Q))
        for i, (block, (index, vals)) in enumerate(zip(b.blocks, blocks)):
            labels = [block.levels[j] for j in block.group[sl]]
            Z = np.asarray(block.Z[sl], dtype=float)
            known = np.array([lv in index for lv in labels], dtype=bool)
            if vals is not None and known.any():
                kr = np.flatnonzero(known)
                idx = np.array([index[labels[r]] for r in kr])
                eta[:, kr] += np.einsum("snk,nk->sn", vals[:, idx, :], Z[kr])
            for (bi, lv), o in zip(new_labels, offsets[:-1]):
                if bi == i:
                    m = np.array([x == lv for x in labels], dtype=bool)
                    U[m, o:o + block.q] = Z[m]
        kws = dict(kw)
        kws["weights"] = b.weights[sl]
        kws["trials"] = None if b.trials is None else b.trials[sl]
        return eta, U, np.asarray(b.y[sl], dtype=float), kws

    parts = [rows[k:k + chunk] for k in range(0, n, chunk)]
    if not new_labels:
        total = np.zeros(S)
        for sl in parts:
            eta, _, y, kws = pieces(sl)
            total += np.asarray(fam.log_likelihood(y, eta, **kws), dtype=float).reshape(S, sl.size).sum(axis=1)
        return total
    if fam.name == "gaussian" and fam.link == "identity" and not monte_carlo:
        s2 = (kw["sigma"].reshape(S) ** 2) if kw["sigma"] is not None else np.ones(S)
        A = np.zeros((S, Q, Q))
        t = np.zeros((S, Q))
        rr = np.zeros(S)
        logd = np.zeros(S)
        for sl in parts:
            eta, U, y, _ = pieces(sl)
            dinv = np.asarray(b.weights[sl], dtype=float)[None, :] / s2[:, None]  # (S, m)
            r = y[None, :] - eta
            A += np.einsum("nq,sn,nr->sqr", U, dinv, U)
            t += (dinv * r) @ U
            rr += (r * r * dinv).sum(axis=1)
            logd += np.log(dinv).sum(axis=1)
        M = np.eye(Q)[None] + big @ A
        x = np.linalg.solve(M, (big @ t[:, :, None]))[..., 0]
        quad = rr - (t * x).sum(axis=1)
        logdet = -logd + np.linalg.slogdet(M)[1]
        return -0.5 * (n * math.log(2 * math.pi) + logdet + quad)
    # any other family: the new groups' values by Monte Carlo, n_mc per posterior draw
    w, V = np.linalg.eigh(big)
    root = V * np.sqrt(np.clip(w, 0.0, None))[:, None, :]  # (S, Q, Q): root @ root' = Σ
    bvals = np.einsum("sqr,smr->smq", root, np.random.default_rng(seed).standard_normal((S, n_mc, Q)))
    out = np.zeros((S, n_mc))
    for sl in parts:
        eta, U, y, kws = pieces(sl)
        kws = {k: (v[:, :, None] if isinstance(v, np.ndarray) and v.ndim == 2 and v.shape[0] == S else v)
               for k, v in kws.items()}
        for m0 in range(0, n_mc, 32):
            eta_m = eta[:, None, :] + bvals[:, m0:m0 + 32] @ U.T  # (S, m, rows)
            out[:, m0:m0 + 32] += np.asarray(fam.log_likelihood(y, eta_m, **kws), dtype=float).sum(axis=-1)
    return logsumexp(out, axis=1) - math.log(n_mc)


def _lme(x: np.ndarray) -> float:
    from scipy.special import logsumexp

    return float(logsumexp(x) - math.log(x.size))


#: what a refit without some rows may raise when the model cannot be fitted to the rest
_REFIT_ERRORS = (PoolwiseError, np.linalg.LinAlgError)
#: Pareto k above which a PSIS estimate is unreliable (Vehtari, Simpson, Gelman, Yao & Gabry 2024)
K_BAD = 0.7
#: default budget of exact refits per fit for the high-k observations / groups, and its time limit
MAX_REFITS = 20
MAX_SECONDS = 30.0


def loo(f: Fit, *, max_refits: int = MAX_REFITS, max_seconds: float = MAX_SECONDS, draws: int = 250,
        chains: int = 4) -> dict[str, Any]:
    """PSIS-LOO of one fit over observations, in chunks of rows (memory O(draws × chunk)), with
    the unreliable observations (Pareto k > 0.7) refitted.

    elpd_i = log p(y_i | y_{-i}).  PSIS estimates it from the fit's own draws; where its Pareto
    k exceeds 0.7, the estimate is unreliable and the model is fitted again without row i
    (largest k first; at most ``max_refits`` refits and, once ``max_seconds`` have passed,
    no new one; ``chains × draws`` draws, by the exact path for a Gaussian model), and
    elpd_i = log mean_s p(y_i | θ_s) over the refit's draws, exactly (the group value drawn
    when the group keeps other rows, else integrated out as a new group's).

    Returns a dict: ``elpd_loo``, ``se``, ``p_loo``, ``pointwise``, ``pareto_k`` (PSIS's),
    ``refitted`` (bool per row), ``pareto_k_max`` (over the values kept from PSIS), ``n_bad_k``
    (k > 0.7 left unrefitted), ``bad`` (their row numbers, worst first), ``n_refits``.

    References
    ----------
    Vehtari, A., Gelman, A. & Gabry, J. (2017). Practical Bayesian model evaluation using
    leave-one-out cross-validation and WAIC. Statistics and Computing 27, 1413–1432.
    """
    import arviz as az
    from scipy.special import logsumexp

    S = f.n_samples
    ess = az.ess(f._core_idata().posterior, method="mean")
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
    bad = np.flatnonzero(ks > K_BAD)
    bad = bad[np.argsort(-ks[bad], kind="stable")]
    seed = _seed(f)
    t0 = time.perf_counter()
    n_refits = 0
    refitted = np.zeros(ks.size, dtype=bool)
    for i in bad[:max(0, int(max_refits))]:
        if time.perf_counter() - t0 > max_seconds:
            break
        keep = np.ones(f.bound.n_obs, dtype=bool)
        keep[i] = False
        try:
            rf = _refit(f, keep, seed=seed + 100_000 + int(i), chains=chains, draws=draws)
            value = _lme(_heldout_logpdf(rf, f.bound, np.array([i]), seed=int(i)))
        except _REFIT_ERRORS:  # the model cannot be fitted without this row: it stays unreliable
            continue
        elpd[i] = value
        refitted[i] = True
        n_refits += 1
    psis = ks[~refitted]
    left = np.flatnonzero((ks > K_BAD) & ~refitted)
    left = left[np.argsort(-ks[left], kind="stable")]  # the worst first
    n = elpd.size
    return {
        "elpd_loo": float(elpd.sum()), "se": float(math.sqrt(n * elpd.var())), "p_loo": float((lppd - elpd).sum()),
        "pointwise": elpd, "pareto_k": ks, "refitted": refitted,
        "pareto_k_max": float(psis.max()) if psis.size else math.nan,
        "n_bad_k": int(left.size), "bad": left, "n_refits": n_refits,
    }


def _seed(f: Fit) -> int:
    return int(f.info.get("seed", 0)) if isinstance(f.info, dict) else 0


def logo(f: Fit, *, max_refits: int = MAX_REFITS, draws: int = 250, chains: int = 4, folds: int = 10,
         max_groups: int = 200, max_seconds: float = MAX_SECONDS) -> dict[str, Any]:
    """Leave-one-group-out cross-validation of one fit over the groups of its first grouping factor.

    elpd_j = log p(y_j | y_{-j}), the joint predictive density of group j's rows as a new group:
    its value b ~ N(0, Σ) integrated out (Σ learned hierarchical, fixed and wide unpooled,
    0 pooled).

    * Gaussian model on the exact path: an explicit refit without group j (``chains × draws``
      draws, seed of the fit + 1000 + j; the same priors and pooling settings), then
      elpd_j = log mean_s N(y_j | X_j β_s (+ the other factors' values), σ_s² W_j⁻¹ + Z_j Σ_s Z_j')
      exactly per draw.  Once ``max_seconds`` have passed, the groups not yet refitted get
      PSIS values (below).  With more than ``max_groups`` groups: K-fold over groups
      (``folds`` refits, each predicting the groups it left out, each as a new group).
    * Other paths: PSIS over groups with log ratio −Σ_{i∈j} log p(y_i | θ_s) (Pareto k per
      group); the groups with k > 0.7 are refitted explicitly, largest k first, up to
      ``max_refits`` of them and no new one once ``max_seconds`` have passed (by the exact
      path for a Gaussian model, else by the fit's method, the new group's value then
      integrated by Monte Carlo); the others keep their PSIS value (counted in ``n_bad_k``,
      listed in ``bad``).

    Returns a dict: ``elpd_logo``, ``se``, ``pointwise`` (Series by group label),
    ``pareto_k`` (Series: PSIS's k, NaN on the exact path), ``refitted`` (bool per group),
    ``pareto_k_max`` (over the values kept from PSIS), ``n_bad_k``, ``bad`` (labels, worst first),
    ``n_refits``, ``how``, ``exact`` (every group by an exact refit, no PSIS value left).
    """
    b = f.bound
    block = b.blocks[0]
    J = block.n_groups
    g = block.group
    elpd = np.full(J, np.nan)
    ks = np.full(J, np.nan)
    refitted = np.zeros(J, dtype=bool)
    n_refits = 0
    seed = _seed(f)

    def predict(drop: np.ndarray, s: int, which: np.ndarray) -> bool:
        """Refit without the groups in ``drop`` and predict those in ``which``; False when the
        model cannot be fitted without them (their values then stay PSIS's, unreliable)."""
        try:
            rf = _refit(f, ~drop[g], seed=s, chains=chains, draws=draws)
            values = [_lme(_heldout_logpdf(rf, b, np.flatnonzero(g == j), seed=s + int(j))) for j in which]
        except _REFIT_ERRORS:
            return False
        elpd[which] = values
        refitted[which] = True
        return True

    def psis(which: np.ndarray) -> None:
        import arviz as az
        from scipy.special import logsumexp

        S = f.n_samples
        llg = np.zeros((S, J))
        for sl, ll in f.log_likelihood_chunks():
            ll2 = ll.reshape(S, -1)
            np.add.at(llg.T, g[sl], ll2.T)
        lw, kk = az.psislw(-llg.T)
        elpd[which] = logsumexp(lw + llg.T, axis=1)[which]
        ks[which] = kk[which]

    t0 = time.perf_counter()
    if f.method == "exact" and f.spec.fam.exact and J > max_groups:
        perm = np.random.default_rng(seed).permutation(J)
        for k, part in enumerate(np.array_split(perm, folds)):
            drop = np.zeros(J, dtype=bool)
            drop[part] = True
            n_refits += predict(drop, seed + 1000 + k, part)
        how = f"{folds}-fold over groups ({J} groups > {max_groups}; {folds} exact refits)"
    elif f.method == "exact" and f.spec.fam.exact:
        for j in range(J):
            if time.perf_counter() - t0 > max_seconds:
                break
            drop = np.zeros(J, dtype=bool)
            drop[j] = True
            n_refits += predict(drop, seed + 1000 + j, np.array([j]))
        how = f"exact refit without each group ({J} refits of {chains}×{draws} draws)"
    if f.method == "exact" and f.spec.fam.exact and not refitted.all():
        # out of time, or a refit that failed: PSIS for the groups not refitted
        left_out = np.flatnonzero(~refitted)
        psis(left_out)
        how = (f"exact refits for {J - left_out.size} of {J} groups (within {max_seconds:g} s), PSIS for the other "
               f"{left_out.size} ({int((ks > K_BAD).sum())} with k > 0.7)")
    elif not (f.method == "exact" and f.spec.fam.exact):
        psis(np.arange(J))
        n_high = int((ks > K_BAD).sum())
        bad = np.flatnonzero(ks > K_BAD)
        bad = bad[np.argsort(-ks[bad], kind="stable")]
        for j in bad[:max(0, int(max_refits))]:
            if time.perf_counter() - t0 > max_seconds:
                break
            drop = np.zeros(J, dtype=bool)
            drop[j] = True
            n_refits += predict(drop, seed + 1000 + int(j), np.array([j]))
        how = f"PSIS over groups, {n_high} with k > 0.7, {n_refits} of them refitted"
    left = np.flatnonzero((ks > K_BAD) & ~refitted)
    left = left[np.argsort(-ks[left], kind="stable")]  # the worst first
    psis = ks[~refitted]
    return {
        "elpd_logo": float(elpd.sum()), "se": float(math.sqrt(J * elpd.var())),
        "pointwise": pd.Series(elpd, index=pd.Index(block.levels, name=block.factor)),
        "pareto_k": pd.Series(ks, index=pd.Index(block.levels, name=block.factor)),
        "refitted": refitted,
        "pareto_k_max": float(psis.max()) if psis.size else float("nan"),
        "n_bad_k": int(left.size), "bad": [block.levels[j] for j in left], "n_refits": n_refits, "how": how,
        "exact": bool(refitted.all()),
    }
