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

        # the user's prior on the group SD applies to the hierarchical fit only
        if pooling != "hierarchical":
            spec = spec.replace(priors={k: v for k, v in spec.priors.items() if not k.startswith("sd(")})
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

    def table(self, prob: float = 0.95) -> pd.DataFrame:
        """Per group: size, the group intercept under each pooling, pooling factor, shrinkage.

        Columns ``n``; ``<pooling>_mean``, ``<pooling>_lo``, ``<pooling>_hi`` for each pooling;
        ``lambda`` (with ``lambda_lo``, ``lambda_hi``): the hierarchical model's pooling factor;
        ``shrinkage``: the observed fraction of the way from the unpooled to the pooled
        estimate, (unpooled − hierarchical) / (unpooled − pooled).  Rows are ordered by size.
        """
        parts: list[pd.DataFrame] = []
        for name, f in self.fits.items():
            est = f.group_estimates(prob)
            if not parts:
                parts.append(est[["n"]])
            parts.append(est[["mean", "lo", "hi"]].add_prefix(f"{name}_"))
        out = pd.concat(parts, axis=1)
        pf = self.hierarchical.pooling_factors(prob)
        out["lambda"] = pf["lambda"]
        out["lambda_lo"] = pf["lambda_lo"]
        out["lambda_hi"] = pf["lambda_hi"]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["shrinkage"] = (out["unpooled_mean"] - out["hierarchical_mean"]) / (
                out["unpooled_mean"] - out["pooled_mean"])
        out = out.sort_values("n", kind="stable")
        out.attrs["batch_pooling"] = pf.attrs.get("batch")
        return out

    def population(self) -> dict[str, float]:
        """The hierarchical model's population distribution of group intercepts.

        Returns posterior means of the population mean (``Intercept``) and SD (``tau``), with
        their 95% intervals, and of ``sigma`` when the model has one.
        """
        f = self.hierarchical
        out: dict[str, float] = {}
        for key, name in (("mean", "Intercept"), ("tau", f.bound.sd_name), ("sigma", "sigma")):
            try:
                d = f.param(name).ravel()
            except KeyError:
                continue
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
