"""The ``fit()`` verb and :class:`Fit`: bind → reduce → infer → one ArviZ converter.

``Fit`` holds an ArviZ ``InferenceData`` (convertible to an xarray DataTree) rather than being
one, so a move to ArviZ 1.x stays inside this module and ``compare.py``.  Arrays of draws × rows
(pointwise log-likelihood, posterior predictive) are put into the results only when they fit a
memory budget; otherwise they are computed on demand, in chunks of rows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from . import data as _data
from .errors import DataError, SpecError
from .infer import Draws, Progress, run
from .priors import Prior
from .spec import BoundSpec, ModelSpec

__all__ = ["fit", "Fit", "MEMORY_BUDGET"]

#: bytes an eagerly stored draws × rows array may take (pointwise log-likelihood, predictive)
MEMORY_BUDGET = 256 * 2**20


def fit(
    formula: str | ModelSpec,
    data: _data.DataLike,
    *,
    family: str = "gaussian",
    pooling: str | float = "hierarchical",
    priors: Mapping[str, str | Prior] | None = None,
    method: str | None = None,
    seed: int = 0,
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    progress: Progress | None = None,
    memory_budget: int = MEMORY_BUDGET,
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
        A pandas, polars or pyarrow table, or a path to a CSV or Parquet file.
    family
        ``"gaussian"``.
    pooling
        ``"pooled"``, ``"unpooled"``, ``"hierarchical"`` or a positive number (a fixed
        population SD).
    priors
        Priors by parameter name; defaults are data-scaled (see ``fit.priors``).
    method
        ``"exact"`` (default for gaussian) or ``"nuts"``.
    seed
        Seed: the same seed gives the same draws.
    chains, draws, warmup
        Sampler settings (``warmup`` is unused by the exact path).
    progress
        Optional callback ``(stage, fraction)``.
    memory_budget
        Bytes above which draws × rows arrays are computed on demand instead of stored.

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
    >>> f.summary().loc["sigma", "mean"] > 0
    True
    """
    if isinstance(formula, ModelSpec):
        spec = formula
    else:
        spec = ModelSpec(formula, family=family, pooling=pooling, priors=dict(priors or {}))  # type: ignore[arg-type]
    for name, value in (("chains", chains), ("draws", draws)):
        if not isinstance(value, int) or value < 1:
            raise SpecError(f"The '{name}' option must be a positive integer. Got {value!r}.", option=name)
    if not isinstance(warmup, int) or warmup < 0:
        raise SpecError(f"The 'warmup' option must be a non-negative integer. Got {warmup!r}.", option="warmup")
    method = method or ("exact" if spec.fam.exact else "nuts")
    table = data if isinstance(data, _data.Table) else _data.read_table(data)
    bound = spec.bind(table)
    result = run(bound, method=method, seed=seed, chains=chains, draws=draws, warmup=warmup, progress=progress,
                 **options)
    return Fit(bound, result, memory_budget=memory_budget)


class Fit:
    """A fitted model: ArviZ results plus what poolwise knows about the model.

    Attributes
    ----------
    spec
        What was asked (:class:`ModelSpec`).
    bound
        What was derived from the data (:class:`BoundSpec`).
    draws
        The raw :class:`~poolwise.infer.Draws`.
    idata
        ArviZ InferenceData: ``posterior``, ``sample_stats``, ``observed_data``, and
        ``log_likelihood`` / ``posterior_predictive`` when they fit the memory budget.
    """

    def __init__(self, bound: BoundSpec, draws: Draws, *, memory_budget: int = MEMORY_BUDGET) -> None:
        self.bound = bound
        self.spec = bound.spec
        self.draws = draws
        self.memory_budget = memory_budget
        self.idata = _to_inference_data(self)

    # -- basic facts -------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.draws.method

    @property
    def pooling(self) -> str | float:
        return self.spec.pooling

    @property
    def group_column(self) -> str:
        return self.bound.group_column

    @property
    def group_var(self) -> str:
        """Name of the posterior variable of the group deviations, ``1|g``."""
        return f"1|{self.bound.group_column}"

    @property
    def n_samples(self) -> int:
        return self.draws.n_chains * self.draws.n_draws

    @property
    def eager_pointwise(self) -> bool:
        """Whether the pointwise arrays are stored (else made on demand)."""
        return self.n_samples * self.bound.n_obs * 8 <= self.memory_budget

    @property
    def priors(self) -> pd.DataFrame:
        """Every prior used, whether it is a default or the user's, and the fixed settings."""
        rows = [{"parameter": k, "prior": str(v), "source": self.bound.prior_source[k]}
                for k, v in self.bound.priors.items()]
        if self.bound.tau is not None:
            what = {"pooled": "0 (pooled: group term dropped)",
                    "unpooled": f"{self.bound.tau:.4g} fixed (unpooled: 10 × data scale)"}.get(
                str(self.pooling), f"{self.bound.tau:.4g} fixed")
            rows.append({"parameter": self.bound.sd_name, "prior": what, "source": "pooling"})
        if not self.bound.has_sigma:
            rows.append({"parameter": "sigma", "prior": f"known: se({self.spec.se})", "source": "data"})
        return pd.DataFrame(rows).set_index("parameter")

    def __repr__(self) -> str:
        b = self.bound
        return (f"<poolwise.Fit {self.spec.formula!r} family={self.spec.fam.name} pooling={self.pooling} "
                f"method={self.method} rows={b.n_obs} groups={b.n_groups} draws={self.draws.n_chains}×"
                f"{self.draws.n_draws}>")

    # -- draws as arrays -------------------------------------------------------------------
    def param(self, name: str) -> np.ndarray:
        """Draws of a scalar parameter, (chain, draw)."""
        b = self.bound
        if name in b.coef_names:
            return self.draws.beta[..., b.coef_names.index(name)]
        if name == "sigma" and self.draws.sigma is not None:
            return self.draws.sigma
        if name == b.sd_name:
            if self.draws.tau is not None:
                return self.draws.tau
            return np.full(self.draws.beta.shape[:2], float(b.tau or 0.0))
        raise KeyError(f"No parameter '{name}' in this fit.")

    def group_intercepts(self) -> np.ndarray:
        """Draws of each group's intercept, Intercept + b_j, shape (chain, draw, J)."""
        C, D = self.draws.beta.shape[:2]
        base = self.param("Intercept")[..., None] if "Intercept" in self.bound.coef_names else np.zeros((C, D, 1))
        if self.draws.b is None:
            return np.broadcast_to(base, (C, D, self.bound.n_groups))
        return base + self.draws.b

    def _mu_chunks(self, chunk: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        b = self.bound
        n = b.n_obs
        chunk = chunk or max(1, self.memory_budget // (8 * self.n_samples * 3))
        for s in range(0, n, chunk):
            sl = slice(s, min(n, s + chunk))
            mu = self.draws.beta @ b.X[sl].T
            if self.draws.b is not None:
                mu = mu + self.draws.b[..., b.group[sl]]
            yield sl, mu

    def _obs_sd(self, sl: slice) -> np.ndarray:
        w = self.bound.weights[sl]
        if self.draws.sigma is not None:
            return self.draws.sigma[..., None] / np.sqrt(w)
        return np.broadcast_to(1.0 / np.sqrt(w), (1, 1, w.size))

    def log_likelihood_chunks(self, chunk: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """Pointwise log-likelihood, (chain, draw, rows) in chunks of rows (on demand)."""
        y = self.bound.y
        for sl, mu in self._mu_chunks(chunk):
            sd = self._obs_sd(sl)
            z = (y[sl] - mu) / sd
            yield sl, -0.5 * z * z - np.log(sd) - 0.5 * math.log(2 * math.pi)

    def log_likelihood(self) -> np.ndarray:
        """The whole pointwise log-likelihood (chain, draw, n_obs); refuses past the budget."""
        self._check_budget("log_likelihood")
        return np.concatenate([ll for _, ll in self.log_likelihood_chunks()], axis=-1)

    def posterior_predictive(self, seed: int = 0) -> np.ndarray:
        """Replicated outcomes (chain, draw, n_obs) for the observed rows."""
        self._check_budget("posterior_predictive")
        rng = np.random.default_rng(seed)
        parts = []
        for sl, mu in self._mu_chunks():
            parts.append(mu + self._obs_sd(sl) * rng.standard_normal(mu.shape))
        return np.concatenate(parts, axis=-1)

    def _pointwise(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Log-likelihood and posterior predictive together, from one pass over the means."""
        self._check_budget("log_likelihood")
        rng = np.random.default_rng(seed)
        y = self.bound.y
        lls, pps = [], []
        for sl, mu in self._mu_chunks():
            sd = self._obs_sd(sl)
            z = (y[sl] - mu) / sd
            lls.append(-0.5 * z * z - np.log(sd) - 0.5 * math.log(2 * math.pi))
            pps.append(mu + sd * rng.standard_normal(mu.shape))
        return np.concatenate(lls, axis=-1), np.concatenate(pps, axis=-1)

    def _check_budget(self, what: str) -> None:
        need = self.n_samples * self.bound.n_obs * 8
        if need > self.memory_budget:
            raise SpecError(
                f"The {what} array would take {need / 2**30:.1f} GiB (draws × rows), over the memory budget of "
                f"{self.memory_budget / 2**30:.2f} GiB.",
                hint="Use the chunked methods (log_likelihood_chunks) or raise memory_budget.",
                option="memory_budget",
            )

    # -- summaries ---------------------------------------------------------------------------
    def summary(self, *, hdi_prob: float = 0.95, groups: bool = True) -> pd.DataFrame:
        """Posterior summary: mean, sd, HDI, MCSE, bulk/tail ESS and R-hat of each parameter.

        Rows are ``Intercept``, the predictors, ``sigma``, ``sd(Intercept|g)`` and (with
        ``groups``) the group deviations ``1|g[label]``.  ``.attrs["priors"]`` holds the priors.
        """
        import arviz as az

        names = [n for n in self.idata.posterior.data_vars if groups or n != self.group_var]
        out = az.summary(self.idata, var_names=names, hdi_prob=hdi_prob, kind="all")
        out.attrs["priors"] = self.priors
        out.attrs["model"] = repr(self)
        return out

    def pooling_factors(self, prob: float = 0.95) -> pd.DataFrame:
        """Pooling factor of each group, λ_j = (σ²/a_j) / (σ²/a_j + τ²), with its interval.

        0 means the group keeps its own estimate (unpooled), 1 that it takes the population
        mean (pooled).  ``a_j`` is the group's size (the sum of precision weights 1/se² when
        standard errors are known).  ``.attrs["batch"]`` holds Gelman & Pardoe's (2006)
        batch pooling factor 1 − Var_j(E[b_j]) / E[Var_j(b_j)].

        References
        ----------
        Gelman, A. & Pardoe, I. (2006). Bayesian measures of explained variance and pooling in
        multilevel (hierarchical) models. Technometrics 48(2), 241–251.
        """
        b = self.bound
        a = np.bincount(b.group, weights=b.weights, minlength=b.n_groups)
        s2 = (self.draws.sigma**2 if self.draws.sigma is not None else np.ones(self.draws.beta.shape[:2]))
        t2 = self.param(b.sd_name) ** 2
        noise = s2[..., None] / a[None, None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            lam = np.where(t2[..., None] > 0, noise / (noise + t2[..., None]), 1.0)
        flat = lam.reshape(-1, b.n_groups)
        lo, hi = np.quantile(flat, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        df = pd.DataFrame(
            {"n": b.group_sizes(), "lambda": flat.mean(axis=0), "lambda_lo": lo, "lambda_hi": hi},
            index=pd.Index(b.levels, name=b.group_column),
        )
        if self.draws.b is not None:
            bd = self.draws.b.reshape(-1, b.n_groups)
            df.attrs["batch"] = float(1.0 - bd.mean(axis=0).var() / bd.var(axis=1).mean())
        else:
            df.attrs["batch"] = 1.0
        return df

    def group_estimates(self, prob: float = 0.95) -> pd.DataFrame:
        """Each group's intercept (Intercept + b_j): n, mean, sd and central interval."""
        b = self.bound
        gi = self.group_intercepts().reshape(-1, b.n_groups)
        lo, hi = np.quantile(gi, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        return pd.DataFrame({"n": b.group_sizes(), "mean": gi.mean(axis=0), "sd": gi.std(axis=0), "lo": lo,
                             "hi": hi}, index=pd.Index(b.levels, name=b.group_column))

    # -- prediction ----------------------------------------------------------------------------
    def predict(
        self, new_data: _data.DataLike, *, kind: str = "response", prob: float = 0.95, seed: int = 0,
        return_draws: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Predict rows of new data, for known groups and for new ones.

        A row of a known group uses that group's intercept draws; a row of a group not seen in
        fitting (or without the group column) draws a new intercept from the population,
        N(0, τ²) per posterior draw.

        Parameters
        ----------
        new_data
            Rows with the predictor columns (and the group column, if known groups are meant).
        kind
            ``"response"`` (posterior predictive, with the residual noise) or ``"mean"``
            (the expected value x'β + b_j).
        prob
            Mass of the central interval.
        return_draws
            Return the (chain, draw, rows) array instead of a summary.

        Returns
        -------
        DataFrame with ``mean``, ``sd``, ``lo``, ``hi`` and ``new_group`` per row.
        """
        if kind not in ("response", "mean"):
            raise SpecError(f"The 'kind' option must be 'response' or 'mean'. Got {kind!r}.", option="kind")
        table = new_data if isinstance(new_data, _data.Table) else _data.read_table(new_data)
        frame = table.frame
        if len(frame) == 0:
            raise DataError("The new data have no rows.", hint="Pass at least one row to predict.")
        X, idx, known = self.bound.encode(frame)
        rng = np.random.default_rng(seed)
        C, D = self.draws.beta.shape[:2]
        mu = np.einsum("cdp,np->cdn", self.draws.beta, X)
        if self.draws.b is not None:
            tau = self.param(self.bound.sd_name)
            new_b = tau[..., None] * rng.standard_normal((C, D, len(frame)))
            mu = mu + np.where(known[None, None, :], self.draws.b[..., np.maximum(idx, 0)], new_b)
        if kind == "response":
            if self.draws.sigma is not None:
                sd = self.draws.sigma[..., None]
            else:
                if self.spec.se is None or self.spec.se not in frame.columns:
                    raise DataError(f"Predicting responses needs the standard-error column '{self.spec.se}'.",
                                    hint="Add it to the new data or use kind='mean'.", column=self.spec.se)
                sd = np.asarray(frame[self.spec.se], dtype=float)[None, None, :]
            mu = mu + sd * rng.standard_normal(mu.shape)
        if return_draws:
            return mu
        flat = mu.reshape(C * D, -1)
        lo, hi = np.quantile(flat, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        return pd.DataFrame({"mean": flat.mean(axis=0), "sd": flat.std(axis=0), "lo": lo, "hi": hi,
                             "new_group": ~known}, index=frame.index)

    # -- output ------------------------------------------------------------------------------
    def to_netcdf(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> str:
        """Write the results to a NetCDF file; never overwrites unless asked."""
        path = os.fspath(path)
        if os.path.exists(path) and not overwrite:
            raise DataError(f"The file '{path}' exists already.", hint="Pass overwrite=True (CLI: --force).")
        self.idata.to_netcdf(path)
        return path


def _to_inference_data(f: Fit) -> Any:
    """The single Draws → InferenceData converter."""
    import arviz as az

    b, d = f.bound, f.draws
    posterior: dict[str, np.ndarray] = {}
    for i, name in enumerate(b.coef_names):
        posterior[name] = d.beta[..., i]
    if d.sigma is not None:
        posterior["sigma"] = d.sigma
    if d.tau is not None:
        posterior[b.sd_name] = d.tau
    coords: dict[str, Any] = {b.group_column: b.levels, "obs": np.arange(b.n_obs)}
    dims: dict[str, list[str]] = {}
    if d.b is not None:
        posterior[f.group_var] = d.b
        dims[f.group_var] = [b.group_column]
    observed = {b.spec.outcome: b.y}
    dims[b.spec.outcome] = ["obs"]
    kwargs: dict[str, Any] = {}
    if f.eager_pointwise:
        ll, pp = f._pointwise(seed=0)
        kwargs["log_likelihood"] = {b.spec.outcome: ll}
        kwargs["posterior_predictive"] = {b.spec.outcome: pp}
    idata = az.from_dict(
        posterior=posterior, sample_stats=dict(d.sample_stats) or None, observed_data=observed,
        coords=coords, dims=dims, **kwargs,
    )
    idata.posterior.attrs.update({
        "formula": b.spec.formula, "family": b.spec.fam.name, "pooling": str(b.spec.pooling),
        "method": d.method, "priors": "; ".join(f"{k} ~ {v}" for k, v in b.priors.items()),
        "n_obs": b.n_obs, "n_groups": b.n_groups, "inference_library": "poolwise",
    })
    return idata
