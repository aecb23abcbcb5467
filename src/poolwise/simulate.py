"""New outcomes from a fitted model, and the parametric bootstrap of an empirical fit.

:func:`simulate` is lme4's ``simulate()`` with ``use.u = FALSE``: every simulated data set draws
*new* group values from the estimated population, b_j ~ MVN(0, Σ̂) per grouping factor, then the
outcomes from the family given η = Xβ̂ + offset + Σ Z b (σ̂ for gaussian, the rows' trials and
known standard errors as fitted).  For an empirical (REML/ML/Laplace) fit the parameters are
the estimates; for a Bayesian fit each simulated data set takes its parameters from one
posterior draw picked at random (the prior-free analogue of lme4's: the uncertainty of the
parameters is included).

:func:`bootstrap` is the parametric bootstrap (lme4's ``bootMer``; Davison & Hinkley 1997,
ch. 2): simulate from the estimates, refit each simulated data set by the same criterion
(REML, ML or Laplace), and keep the estimates; percentile intervals summarize them.

Plain functions of the bound spec and the :class:`~poolwise.infer.Draws` (an empirical fit: its
``info`` with the estimates, no draws made);
:meth:`poolwise.fit.Fit.simulate` and :meth:`poolwise.fit.Fit.bootstrap` call them.

References
----------
Bates, D., Mächler, M., Bolker, B. & Walker, S. (2015). Fitting linear mixed-effects models using
lme4. Journal of Statistical Software 67(1), 1–48.
Davison, A. C. & Hinkley, D. V. (1997). Bootstrap Methods and their Application. Cambridge
University Press.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from .errors import PoolwiseError, SpecError
from .infer import BlockDraws, DeferredDraws, Draws, run
from .pooling import sigma_factor
from .spec import BoundSpec

__all__ = ["simulate", "simulator", "refit", "bootstrap", "Bootstrap", "point_estimates", "SIMULATE_MAX_BYTES"]

#: bytes the (n, rows) array of :func:`simulate` may take before it is refused
SIMULATE_MAX_BYTES = 2 * 2**30

#: progress callback of :func:`bootstrap`: (replicates done, replicates asked)
BootProgress = Callable[[int, int], None]


def _check_n(n: object, option: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 1:
        raise SpecError(f"The '{option}' option must be a positive integer. Got {n!r}.", option=option,
                        hint=f"Pass {option}=100, say.")
    return int(n)


def _require_rows(bound: BoundSpec, what: str) -> None:
    if not bound.has_rows:
        where = "" if bound.reduced is None else f" (reduced in {bound.reduced.engine})"
        raise SpecError(f"{what} needs the fit's rows, but its rows were reduced to per-group statistics in the "
                        f"query{where} and are not held.",
                        hint="Fit the rows from an in-memory table (pandas, polars, arrow) to simulate from it.")


#: what the simulations read: the draws of a fit, or (an empirical fit) its ``info`` with the estimates
Source = Draws | DeferredDraws | Mapping[str, Any]


def _info(source: Source) -> Mapping[str, Any] | None:
    """The estimates' ``info`` of an empirical fit, ``None`` for a Bayesian one."""
    if isinstance(source, (Draws, DeferredDraws)):
        return source.info if source.method == "empirical" else None
    return source


def point_estimates(bound: BoundSpec, source: Source) -> dict[str, float]:
    """The estimates of an empirical fit by name: the coefficients (β̂), ``sigma``, each learned
    ``sd(term|factor)`` and ``cor(a,b|factor)`` (fixed settings are not estimates and are left out),
    read from its ``info["estimates"]`` (no draws are made).

    Raises
    ------
    SpecError
        For a fit that is not empirical (a Bayesian fit has draws, not estimates).
    """
    info = _info(source)
    if info is None or "estimates" not in info:
        method = getattr(source, "method", None)
        raise SpecError(f"Only an empirical fit has point estimates; this one is method={method!r}.",
                        hint="Fit with method='empirical' (REML/ML or Laplace).", option="method")
    est = info["estimates"]
    out: dict[str, float] = dict(zip(bound.coef_names, map(float, est["beta"])))
    if bound.has_sigma and est.get("sigma") is not None:
        out["sigma"] = float(est["sigma"])
    learned = [block for block in bound.blocks if block.Sigma is None]
    sd, corr = est.get("sd"), est.get("corr")
    if isinstance(sd, Mapping):  # several grouping factors: by name
        out.update({k: float(v) for k, v in sd.items()})
    elif sd is not None:  # one factor: in the order of its terms
        out.update({name: float(v) for name, v in zip(learned[0].sd_names, sd)})
    if isinstance(corr, Mapping):
        out.update({k: float(v) for k, v in corr.items()})
    elif corr is not None:
        R = np.asarray(corr, dtype=float)
        block = learned[0]
        pairs = [(i, j) for j in range(block.q) for i in range(j)]
        out.update({name: float(R[i, j]) for name, (i, j) in zip(block.cor_names, pairs)})
    return out


Params = tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray], list[np.ndarray | None]]


def _estimate_parameters(bound: BoundSpec, source: Source) -> Params:
    """The parameters of :func:`_parameters` at an empirical fit's estimates (S = 1)."""
    est = point_estimates(bound, source)
    beta = np.array([[est[name] for name in bound.coef_names]], dtype=float).reshape(1, -1)
    sigma = np.array([est["sigma"]]) if "sigma" in est else None
    factors: list[np.ndarray | None] = []
    for block in bound.blocks:
        if block.pooled:
            factors.append(None)
            continue
        bd = BlockDraws(sd=None, corr=None, values=None)
        if block.Sigma is None:
            sd = np.array([est[name] for name in block.sd_names])
            R = np.eye(block.q)
            pairs = [(i, j) for j in range(block.q) for i in range(j)]
            for name, (i, j) in zip(block.cor_names, pairs):
                R[i, j] = R[j, i] = est[name]
            bd = BlockDraws(sd=sd[None, None], corr=R[None, None] if block.cor_names else None, values=None)
        factors.append(sigma_factor(block, bd, 1, 1).reshape(1, block.q, block.q))
    return beta, sigma, {}, factors


def _parameters(bound: BoundSpec, source: Source) -> Params:
    """(β (S, p), σ (S,) or None, auxiliary parameters (S,), Σ factors per block (S, q, q) or None):
    S = 1 (the estimates) for an empirical fit, every posterior draw for a Bayesian one."""
    if _info(source) is not None:
        return _estimate_parameters(bound, source)
    assert isinstance(source, Draws)
    C, D = source.n_chains, source.n_draws
    factors: list[np.ndarray | None] = []
    for block, bd in zip(bound.blocks, source.block_draws()):
        factors.append(None if block.pooled else sigma_factor(block, bd, C, D).reshape(C * D, block.q, block.q))
    sigma = None if source.sigma is None else source.sigma.reshape(C * D)
    aux = {k: v.reshape(C * D) for k, v in source.aux.items()}
    return source.beta.reshape(C * D, -1), sigma, aux, factors


def _draw(bound: BoundSpec, params: Params, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` simulated outcome vectors, (n, rows), with new group values (use.u = FALSE)."""
    beta, sigma, aux, factors = params
    S = beta.shape[0]
    idx = np.zeros(n, dtype=np.int64) if S == 1 else rng.integers(S, size=n)
    eta = beta[idx] @ bound.X.T + bound.offset
    for block, L in zip(bound.blocks, factors):
        if L is None:
            continue
        u = rng.standard_normal((n, block.n_groups, block.q))
        values = np.einsum("nkl,njl->njk", L[idx], u)
        for k in range(block.q):
            eta = eta + block.Z[:, k] * values[:, block.group, k]
    kw: dict[str, Any] = {"weights": bound.weights, "trials": bound.trials}
    if sigma is not None:
        kw["sigma"] = sigma[idx][:, None]
    for name, a in aux.items():
        kw[name] = a[idx][:, None]
    return np.asarray(bound.spec.fam.sample(rng, eta, **kw))


def simulate(bound: BoundSpec, draws: Source, n: int = 1, *, seed: int = 0) -> np.ndarray:
    """``n`` new outcome vectors of the fitted rows, (n, rows), from the fitted model.

    New group values are drawn from the estimated population (lme4's ``simulate(use.u = FALSE)``);
    see the module's description.  The same seed gives the same outcomes.

    Raises
    ------
    SpecError
        For ``n`` not a positive integer, a fit without rows (reduced in the query), or an array
        over :data:`SIMULATE_MAX_BYTES`.

    Examples
    --------
    >>> import poolwise as pw
    >>> f = pw.fit("reaction ~ night + (1 | driver)", pw.datasets.drivers(seed=1), method="empirical")
    >>> f.simulate(3, seed=1).shape == (3, f.bound.n_obs)
    True
    """
    n = _check_n(n)
    _require_rows(bound, "simulate()")
    need = n * bound.n_obs * 8
    if need > SIMULATE_MAX_BYTES:
        most = max(1, SIMULATE_MAX_BYTES // (bound.n_obs * 8))
        raise SpecError(f"{n:,} simulated data sets of {bound.n_obs:,} rows would take {need / 2**30:.1f} GiB.",
                        hint=f"Ask for at most {most:,} at a time (with different seeds).", option="n")
    rng = np.random.default_rng(seed)
    return _draw(bound, _parameters(bound, draws), n, rng)


def simulator(bound: BoundSpec, draws: Source) -> Callable[[np.random.Generator], np.ndarray]:
    """A function drawing one simulated outcome vector of the fitted rows per call, from the
    given generator (as :func:`simulate`, one data set at a time: memory O(rows))."""
    _require_rows(bound, "Simulating")
    params = _parameters(bound, draws)

    def one(rng: np.random.Generator) -> np.ndarray:
        return _draw(bound, params, 1, rng)[0]

    return one


def refit(bound: BoundSpec, y: np.ndarray, *, criterion: str, seed: int = 0) -> Draws | DeferredDraws:
    """The empirical fit of ``bound``'s model to the outcome ``y`` (the same rows) by ``criterion``
    (``"REML"`` or ``"ML"`` for gaussian; the other families' criterion is Laplace's); one draw.

    Raises
    ------
    PoolwiseError
        Whatever the fit raises for these outcomes (e.g. separation of a binary outcome).
    """
    options: dict[str, Any] = {"reml": criterion == "REML"} if bound.spec.fam.exact else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(dataclasses.replace(bound, y=y), method="empirical", seed=seed, chains=1, draws=1, **options)


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    """A parametric bootstrap of an empirical fit (:func:`bootstrap`).

    Attributes
    ----------
    estimates
        The fit's estimates by name (coefficients, ``sigma``, ``sd(…)``, ``cor(…)``).
    replicates
        One row per simulated data set, the refit's estimates (NaN where the refit failed).
    method
        The criterion of the fit and of every refit: ``"REML"``, ``"ML"`` or ``"Laplace"``.
    seed
        The seed of the simulations.
    failed
        Refits that raised (their rows are NaN), with the first message in ``notes``.
    not_converged
        Refits whose optimizer reported no convergence (kept).
    notes
        What the summary should say about the replicates.
    """

    estimates: pd.Series
    replicates: pd.DataFrame
    method: str
    seed: int
    failed: int = 0
    not_converged: int = 0
    notes: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return len(self.replicates)

    def summary(self, prob: float = 0.95) -> pd.DataFrame:
        """Per parameter: the ``estimate``, the replicates' ``mean``, ``bias`` (mean − estimate),
        ``se`` (their SD) and the percentile interval ``lo``, ``hi`` of mass ``prob``
        (refits that failed are left out)."""
        if not 0.0 < prob < 1.0:
            raise SpecError(f"The 'prob' option must be between 0 and 1. Got {prob!r}.", option="prob")
        r = self.replicates
        lo, hi = r.quantile((1 - prob) / 2), r.quantile((1 + prob) / 2)
        out = pd.DataFrame({"estimate": self.estimates, "mean": r.mean(), "bias": r.mean() - self.estimates,
                            "se": r.std(ddof=1), "lo": lo, "hi": hi})
        out.index.name = "parameter"
        out.attrs["notes"] = list(self.notes)
        return out

    def confint(self, prob: float = 0.95) -> pd.DataFrame:
        """Percentile intervals of mass ``prob``, ``lo`` and ``hi`` per parameter."""
        return self.summary(prob)[["lo", "hi"]]

    def __repr__(self) -> str:
        return (f"<poolwise.Bootstrap {self.method} n={self.n} seed={self.seed} failed={self.failed} "
                f"parameters={list(self.estimates.index)}>")


def bootstrap(bound: BoundSpec, draws: Source, n: int = 200, *, seed: int = 0,
              progress: BootProgress | None = None) -> Bootstrap:
    """Parametric bootstrap of an empirical fit: simulate ``n`` data sets from the estimates (new
    group values, :func:`simulate`), refit each by the fit's criterion (REML, ML or Laplace) and
    collect the estimates.

    Parameters
    ----------
    bound, draws
        The fit's bound spec and draws (``method="empirical"``, with rows).
    n
        Number of simulated data sets.
    seed
        Seed of the simulations (the same seed gives the same replicates).
    progress
        Optional callback ``(done, n)`` after each refit.

    Returns
    -------
    Bootstrap

    Raises
    ------
    SpecError
        For a fit that is not empirical, without rows, or ``n`` not a positive integer.

    Examples
    --------
    >>> import poolwise as pw
    >>> f = pw.fit("reaction ~ night + (1 | driver)", pw.datasets.drivers(seed=1), method="empirical")
    >>> list(f.bootstrap(20, seed=1).confint(0.9).columns)
    ['lo', 'hi']
    """
    n = _check_n(n)
    estimates = pd.Series(point_estimates(bound, draws), name="estimate")
    _require_rows(bound, "bootstrap()")
    info = _info(draws)
    assert info is not None  # (point_estimates refused a Bayesian fit)
    method = str(info.get("method", ""))
    one = simulator(bound, draws)
    rng = np.random.default_rng(seed)
    rows = np.full((n, len(estimates)), np.nan)
    failed = not_converged = 0
    first_error: str | None = None
    for i in range(n):
        y = one(rng)
        try:
            got = refit(bound, y, criterion=method, seed=i)
        except PoolwiseError as err:
            failed += 1
            first_error = first_error or str(err)
        else:
            est = point_estimates(bound, got)
            rows[i] = [est.get(k, math.nan) for k in estimates.index]
            not_converged += not bool(got.info.get("converged", True))
        if progress:
            progress(i + 1, n)
    notes: list[str] = []
    if failed:
        notes.append(f"{failed} of {n} refits failed and are left out (the first: {first_error})")
    if not_converged:
        notes.append(f"{not_converged} of {n} refits reported no convergence of the optimizer (kept)")
    replicates = pd.DataFrame(rows, columns=estimates.index)
    replicates.index.name = "replicate"
    return Bootstrap(estimates=estimates, replicates=replicates, method=method, seed=seed, failed=failed,
                     not_converged=not_converged, notes=tuple(notes))
