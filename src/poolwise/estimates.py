"""Estimates as lme4 users know them: fixed effects, conditional modes, variance components,
fitted values, residuals and the likelihood criteria of a fit.

For an empirical fit (``method="empirical"``: REML, ML or Laplace) everything here is computed in
closed form from the point estimates θ̂ = (σ̂, Σ̂) and β̂ that the inference path stored
(``Draws.info["estimates"]``), never from Monte Carlo draws:

* Gaussian family (any grouping factors).  With Σ_k = Λ_kΛ_k' per factor and the stacked
  A = I + Λ'Z'WZΛ/σ² (the matrix lme4 factors, :mod:`poolwise.infer.sparse`), the group values
  given y, θ̂ and β = β̂ are Gaussian with mean b̂ = ΛA⁻¹Λ'Z'W(y − Xβ̂)/σ² (the conditional modes,
  lme4's ``ranef``) and covariance ΛA⁻¹Λ' (lme4's ``condVar``: β held at β̂), and
  Cov(β̂) = (X'V⁻¹X)⁻¹, V = σ²W⁻¹ + ZΣZ' (lme4's ``vcov``).  Everything comes from the sufficient
  statistics (:class:`poolwise.reduce.SparseStats`), so it works when the rows were reduced in
  DuckDB or Spark; fitted values and residuals need the rows.
* bernoulli, binomial and poisson (Laplace).  The conditional modes û at (β̂, Λ̂) (penalized
  iteratively reweighted least squares, as the Laplace criterion itself finds them) give
  b̂ = Λû, and the curvature there, A = I + Λ'Z'WZΛ with W the GLM weights at û, gives the
  conditional covariance ΛA⁻¹Λ' (lme4's ``glmer`` ``condVar``); Cov(β̂) is the one the path
  stored.

The diagonal blocks of A⁻¹ (one q × q block per level) come from one batched inverse per level
when the factors share no rows (one grouping factor: A is block diagonal), else from solves with
the sparse Cholesky factor of A, a chunk of columns at a time.

For a Bayesian fit (``exact``, ``nuts``, ``laplace``) the same accessors give posterior summaries
under the same names: posterior means (and SDs) of the coefficients, group values, SDs and
correlations, and the posterior covariance of β.  The likelihood criteria (log-likelihood, AIC,
BIC, deviance) belong to a maximized likelihood and are refused there.

lme4's conventions (Bates, Mächler, Bolker & Walker 2015): a REML fit's ``loglik`` is the REML
log-likelihood and its criterion is ``REMLcrit`` = −2ℓ_REML; an ML fit's deviance is −2ℓ; a
GLMM's deviance is the sum of squared deviance residuals at the conditional modes (lme4's
``deviance`` of a ``glmer`` fit), its ``loglik`` the Laplace approximation; the degrees of freedom
of AIC and BIC are p + the number of variance and correlation parameters + 1 for σ.

References
----------
Bates, D., Mächler, M., Bolker, B. & Walker, S. (2015). Fitting linear mixed-effects models using
lme4. Journal of Statistical Software 67(1), 1–48.
Henderson, C. R. (1975). Best linear unbiased estimation and prediction under a selection model.
Biometrics 31, 423–447.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from .errors import PoolwiseWarning, SpecError
from .infer import Draws
from .spec import BoundSpec

__all__ = ["Point", "point_estimates", "Conditional", "conditional", "LogLik", "fixef", "vcov", "varcorr",
           "ranef", "coef", "fitted", "residuals", "loglik", "aic", "bic", "deviance", "remlcrit",
           "hyper_se", "estimate_table", "n_params"]

#: numbers per chunk of columns of the sparse solves for the diagonal blocks of A⁻¹
_CHUNK_NUMBERS = 1 << 22


# ----------------------------------------------------------------------------------------------
# the point estimates of an empirical fit, per grouping factor


@dataclass(frozen=True)
class Point:
    """An empirical fit's estimates in arrays.

    Attributes
    ----------
    beta
        β̂ (p,), in the order of ``BoundSpec.coef_names``.
    sigma
        σ̂, or ``None`` (known standard errors; a GLMM).
    sd, corr
        Per grouping factor: the estimated SDs (q,) and correlation matrix (q, q); ``None`` where
        Σ is fixed by the pooling (then ``Sigma`` holds it), ``corr`` also ``None`` for one term or
        uncorrelated (``||``) terms.
    Sigma
        Per grouping factor, the group covariance (q, q) the fit used (estimated or fixed).
    method
        ``"REML"``, ``"ML"`` or ``"Laplace"``.
    loglik
        ℓ at the optimum (REML log-likelihood for REML).
    beta_cov
        Cov(β̂) when the path stored it (the Laplace paths), else ``None``.
    """

    beta: np.ndarray
    sigma: float | None
    sd: tuple[np.ndarray | None, ...]
    corr: tuple[np.ndarray | None, ...]
    Sigma: tuple[np.ndarray, ...]
    method: str
    loglik: float
    beta_cov: np.ndarray | None


def _block_values(blocks: Sequence[Any], got: Any, i: int, names: list[str]) -> np.ndarray | None:
    """One factor's entries of ``estimates["sd"]``: a dict by name (several factors) or a list (one)."""
    if got is None:
        return None
    if isinstance(got, Mapping):
        if not all(n in got for n in names):
            return None
        return np.array([float(got[n]) for n in names])
    if len(blocks) != 1:
        return None
    return np.asarray(got, dtype=float).reshape(-1)


def point_estimates(bound: BoundSpec, info: Mapping[str, Any]) -> Point:
    """The estimates an empirical path stored (``Draws.info``), per grouping factor.

    Raises
    ------
    SpecError
        When ``info`` holds no estimates (not an empirical fit).
    """
    est = info.get("estimates")
    if not isinstance(est, Mapping) or "beta" not in est:
        raise SpecError("This fit holds no point estimates (it was not fitted with method='empirical').",
                        hint="Fit with method='empirical' (REML, ML or Laplace).", option="method")
    sds: list[np.ndarray | None] = []
    corrs: list[np.ndarray | None] = []
    Sigmas: list[np.ndarray] = []
    learned = [blk for blk in bound.blocks if blk.Sigma is None]
    for blk in bound.blocks:
        q = blk.q
        if blk.Sigma is not None:
            sds.append(None)
            corrs.append(None)
            Sigmas.append(np.asarray(blk.Sigma, dtype=float).reshape(q, q))
            continue
        sd = _block_values(learned, est.get("sd"), learned.index(blk), blk.sd_names)
        if sd is None:
            raise SpecError(f"The estimates lack the SDs of the group terms of {blk.factor}.",
                            hint="Refit the model with method='empirical'.", option="method")
        R = np.eye(q)
        got = est.get("corr")
        corr: np.ndarray | None = None
        if blk.term.correlated and q > 1 and got is not None:
            if isinstance(got, Mapping):
                for n, (a, c) in zip(blk.cor_names, [(a, c) for c in range(q) for a in range(c)]):
                    R[a, c] = R[c, a] = float(got[n])
            else:
                R = np.asarray(got, dtype=float).reshape(q, q)
            corr = R
        sds.append(sd)
        corrs.append(corr)
        Sigmas.append(sd[:, None] * R * sd[None, :])
    beta_cov = est.get("beta_cov")
    return Point(beta=np.asarray(est["beta"], dtype=float).reshape(-1),
                 sigma=float(est["sigma"]) if est.get("sigma") is not None else None,
                 sd=tuple(sds), corr=tuple(corrs), Sigma=tuple(Sigmas), method=str(info.get("method", "REML")),
                 loglik=float(info.get("loglik", math.nan)),
                 beta_cov=None if beta_cov is None else np.asarray(beta_cov, dtype=float).reshape(len(est["beta"]), -1))


def _sqrt(S: np.ndarray) -> np.ndarray:
    from .infer.blockmath import _psd_sqrt

    return _psd_sqrt(np.asarray(S, dtype=float))


def _sqrts(Sigmas: Sequence[np.ndarray]) -> list[np.ndarray] | None:
    """Square roots of the factors' covariances; ``None`` when one is not positive semi-definite
    (correlations moved one at a time off a valid matrix, q ≥ 3)."""
    try:
        return [_sqrt(S) for S in Sigmas]
    except (ValueError, np.linalg.LinAlgError):
        return None


# ----------------------------------------------------------------------------------------------
# the conditional distribution of the group values given the estimates


@dataclass(frozen=True)
class Conditional:
    """The group values given θ̂ and β = β̂: per grouping factor the modes (J, q) and covariances
    (J, q, q); and Cov(β̂) (p, p)."""

    modes: tuple[np.ndarray, ...]
    cov: tuple[np.ndarray, ...] | None
    beta_cov: np.ndarray
    #: the SEs of the unconstrained hyperparameters when computed with Cov(β̂) (Laplace: one Hessian)
    hyper_se: pd.Series | None = None
    #: a GLMM's Cov(β̂) with θ held at θ̂ (lme4's ``vcov(use.hessian = FALSE)``)
    beta_cov_rx: np.ndarray | None = None
    #: whether ``beta_cov`` (and ``hyper_se``) come from the joint Hessian (always true for a Gaussian fit)
    joint: bool = True


def _split(v: np.ndarray, J: Sequence[int], q: Sequence[int]) -> list[np.ndarray]:
    out, at = [], 0
    for Jk, qk in zip(J, q):
        out.append(v[at:at + Jk * qk].reshape(Jk, qk))
        at += Jk * qk
    return out


def _diag_blocks(fz: Any, lams: Sequence[np.ndarray], s2: float) -> list[np.ndarray]:
    """Per factor, the (J_k, q_k, q_k) diagonal blocks of A⁻¹ for A factored in ``fz``."""
    pat = fz.pattern
    J, q = pat.J, pat.q
    if not pat.pair_keys:  # no factor shares rows with another: A is block diagonal
        out = []
        for lam, M in zip(lams, pat.ZtWZ):
            A = np.einsum("ra,jrc,cb->jab", lam, M, lam) / s2 + np.eye(lam.shape[0])
            out.append(np.linalg.inv(A))
        return out
    Q = int(sum(Jk * qk for Jk, qk in zip(J, q)))
    out = []
    at = 0
    if fz.dense:  # a small dense factor: L⁻¹P once, A⁻¹ = (L⁻¹P)'(L⁻¹P)
        Linv = np.asarray(fz.solve_L(np.eye(Q)))
        for Jk, qk in zip(J, q):
            C = Linv[:, at:at + Jk * qk].reshape(Q, Jk, qk)
            out.append(np.einsum("rja,rjb->jab", C, C))
            at += Jk * qk
        return out
    for Jk, qk in zip(J, q):
        G = np.empty((Jk, qk, qk))
        step = max(1, _CHUNK_NUMBERS // max(1, Q * qk))
        for j0 in range(0, Jk, step):
            j1 = min(Jk, j0 + step)
            m = (j1 - j0) * qk
            E = np.zeros((Q, m))
            E[at + j0 * qk + np.arange(m), np.arange(m)] = 1.0
            C = np.asarray(fz.solve_L(E)).reshape(Q, j1 - j0, qk)  # |L⁻¹Pe|² = e'A⁻¹e
            G[j0:j1] = np.einsum("rja,rjb->jab", C, C)
        out.append(G)
        at += Jk * qk
    return out


def _gaussian_conditional(bound: BoundSpec, pt: Point, *, with_cov: bool) -> Conditional:
    from .infer import sparse
    from .reduce import bound_sparse_stats

    st = bound_sparse_stats(bound)
    fz = sparse.Factorizer(st)
    lams = [_sqrt(S) for S in pt.Sigma]
    s2 = (pt.sigma or 1.0) ** 2
    p = st.p
    with sparse._blas(fz):
        _, A_X, _, _ = sparse._cross(st, fz, lams, s2)  # factors A as well
        B = st.shift.back_matrix(p)
        beta_cov = B @ np.linalg.inv(A_X) @ B.T if p else np.zeros((0, 0))
        beta_s = st.shift.shift(pt.beta)
        ZtWy = np.concatenate([v.reshape(-1) for v in st.ZtWy])
        res = ZtWy - np.concatenate([v.reshape(-1, p) for v in st.ZtWX], axis=0) @ beta_s if p else ZtWy
        rhs = sparse._lam_t(lams, _split(res, st.J, st.q)) / s2
        u = fz.solve_Lt(fz.solve_L(rhs))
        modes = tuple(m[0] for m in sparse._lam(lams, st, u[:, None]))
        cov = None
        if with_cov:
            G = _diag_blocks(fz, lams, s2)
            cov = tuple(np.einsum("ra,jab,cb->jrc", lam, g, lam) for lam, g in zip(lams, G))
    return Conditional(modes=modes, cov=cov, beta_cov=0.5 * (beta_cov + beta_cov.T))


def _laplace_conditional(bound: BoundSpec, pt: Point, *, with_cov: bool, joint: bool) -> Conditional:
    from .infer import sparse
    from .infer.empirical import _CrossedLaplace

    lap = _CrossedLaplace(bound)
    lams = [_sqrt(S) for S in pt.Sigma]
    with sparse._blas(lap.fz):
        u, _, ok = lap.modes(pt.beta, lams, np.zeros(lap.Q))  # leaves A factored at û
        if not ok:
            warnings.warn("The conditional modes of the group values did not converge; ranef() may be inexact.",
                          PoolwiseWarning, stacklevel=4)
        modes = tuple(m[0] for m in sparse._lam(lams, lap.st, u[:, None]))
        cov = None
        if with_cov:
            G = _diag_blocks(lap.fz, lams, 1.0)
            cov = tuple(np.einsum("ra,jab,cb->jrc", lam, g, lam) for lam, g in zip(lams, G))
        if pt.beta_cov is not None:
            rx = pt.beta_cov
        else:  # not stored by the path: the Gaussian approximation at (β̂, û) with θ held at θ̂
            prec, _ = lap.gaussian(pt.beta, lams, u)
            rx = np.linalg.inv(prec) if lap.p else np.zeros((0, 0))
        rx = 0.5 * (rx + rx.T)
        hse = None
        if joint:
            beta_cov, hse = _laplace_joint(bound, pt, lap, rx)
        else:
            beta_cov = rx
    return Conditional(modes=modes, cov=cov, beta_cov=0.5 * (beta_cov + beta_cov.T), hyper_se=hse, beta_cov_rx=rx,
                       joint=joint)


def _laplace_joint(bound: BoundSpec, pt: Point, lap: Any, rx: np.ndarray) -> tuple[np.ndarray, pd.Series]:
    """Cov(β̂) and the SEs of the unconstrained hyperparameters from the inverse Hessian of the
    Laplace criterion in (β, log SD, atanh correlation) jointly, by central differences (lme4's
    default ``vcov`` of a ``glmer`` fit, ``use.hessian = TRUE``: it takes θ's uncertainty into
    account, unlike the curvature at θ̂ alone, ``rx``).  Steps: 1e-2 of β's SE (from ``rx``), 1e-3
    on the log and atanh scales."""
    names, x0, what = _coords(bound, pt)
    p = pt.beta.size

    def f(x: np.ndarray) -> float:
        _, Sigmas = _apply(pt, what, x[p:])
        lams = _sqrts(Sigmas)
        return math.nan if lams is None else float(lap(x[:p], lams))

    z = np.concatenate([pt.beta, x0])
    steps = np.concatenate([1e-2 * np.sqrt(np.clip(np.diagonal(rx), 1e-300, None)), np.full(x0.size, 1e-3)])
    H = _hessian(f, z, steps)
    with np.errstate(all="ignore"):
        try:
            cov = np.linalg.inv(-H)
        except np.linalg.LinAlgError:
            cov = np.full_like(H, np.nan)
    var = np.diagonal(cov)[p:]
    hse = pd.Series(np.where(var > 0, np.sqrt(np.abs(var)), np.nan), index=pd.Index(names, name="parameter"),
                    name="se_unconstrained")
    beta_cov = cov[:p, :p]
    if not np.all(np.isfinite(beta_cov)) or np.any(np.diagonal(beta_cov) <= 0):
        beta_cov = rx  # the joint curvature is not negative definite (a boundary): θ held at θ̂
    return beta_cov, hse


def conditional(bound: BoundSpec, pt: Point, *, with_cov: bool = True, joint: bool = True) -> Conditional:
    """The conditional modes (and, ``with_cov``, covariances) of the group values and Cov(β̂) of an
    empirical fit, in closed form (see the module text).  A GLMM's Cov(β̂) is, with ``joint``, the
    one of the joint Hessian in (β, θ) (:func:`_laplace_joint`; its cost is some 2(p + k)²
    evaluations of the Laplace criterion), else the curvature in β at θ̂."""
    if bound.spec.fam.exact:
        return _gaussian_conditional(bound, pt, with_cov=with_cov)
    return _laplace_conditional(bound, pt, with_cov=with_cov, joint=joint)


# ----------------------------------------------------------------------------------------------
# posterior summaries of a Bayesian fit


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape((-1,) + a.shape[2:])


# ----------------------------------------------------------------------------------------------
# the accessors


def fixef(bound: BoundSpec, draws: Draws | None, pt: Point | None) -> pd.Series:
    """β̂ by coefficient name (empirical), or the posterior means (Bayesian)."""
    if pt is None:
        assert draws is not None
    values = pt.beta if pt is not None else _flat(draws.beta).mean(axis=0)  # type: ignore[union-attr]
    return pd.Series(np.asarray(values, dtype=float), index=pd.Index(list(bound.coef_names), name="term"),
                     name="estimate" if pt is not None else "mean")


def vcov(bound: BoundSpec, draws: Draws | None, cond: Conditional | None, *, use_hessian: bool = True
         ) -> pd.DataFrame:
    """Cov(β̂) (empirical) or the posterior covariance of β (Bayesian), labelled by coefficient.

    A GLMM's is the β block of the inverse Hessian of the Laplace criterion in (β, θ) (lme4's
    default); with ``use_hessian=False`` the curvature in β with θ held at θ̂ (lme4's
    ``use.hessian = FALSE``).  A Gaussian fit's is (X'V⁻¹X)⁻¹ either way (as lme4's)."""
    names = list(bound.coef_names)
    if cond is not None:
        C = cond.beta_cov if use_hessian or cond.beta_cov_rx is None else cond.beta_cov_rx
    else:
        assert draws is not None
        b = _flat(draws.beta)
        C = np.atleast_2d(np.cov(b, rowvar=False)) if b.shape[1] else np.zeros((0, 0))
    return pd.DataFrame(C, index=pd.Index(names, name="term"), columns=pd.Index(names, name="term"))


def varcorr(bound: BoundSpec, draws: Draws | None, pt: Point | None) -> pd.DataFrame:
    """SDs and correlations per grouping factor, and σ: lme4's ``as.data.frame(VarCorr(fit))``.

    Rows are named as poolwise names the parameters (``sd(Days|Subject)``,
    ``cor(Intercept,Days|Subject)``, ``sigma``); columns ``group``, ``term1``, ``term2``,
    ``variance`` (the variance, or the covariance of a correlation row) and ``sd_cor`` (the SD, or
    the correlation).  Fixed settings of the pooling appear with ``fixed`` true.  For a Bayesian
    fit the SDs and correlations are posterior means (and ``variance`` the square of the SD's
    posterior mean, not the posterior mean of the variance).
    """
    rows: list[dict[str, Any]] = []
    blocks = draws.block_draws() if pt is None and draws is not None else None
    for i, blk in enumerate(bound.blocks):
        q = blk.q
        if blk.pooled:
            continue
        fixed = blk.Sigma is not None
        if pt is not None:
            S = pt.Sigma[i]
            sd = np.sqrt(np.clip(np.diagonal(S), 0.0, None))
            with np.errstate(invalid="ignore", divide="ignore"):
                R = S / np.outer(sd, sd)
        else:
            bd = blocks[i]  # type: ignore[index]
            if bd.sd is not None:
                sd = _flat(bd.sd).mean(axis=0)
            else:
                S = np.asarray(blk.Sigma, dtype=float).reshape(q, q)
                sd = np.sqrt(np.clip(np.diagonal(S), 0.0, None))
            if bd.corr is not None:
                R = _flat(bd.corr).mean(axis=0)
            elif blk.Sigma is not None:
                S = np.asarray(blk.Sigma, dtype=float).reshape(q, q)
                with np.errstate(invalid="ignore", divide="ignore"):
                    R = S / np.outer(sd, sd)
            else:
                R = np.eye(q)
        for k, e in enumerate(blk.exprs):
            rows.append({"name": blk.term.sd_name(e), "group": blk.factor, "term1": e, "term2": "",
                         "variance": float(sd[k] ** 2), "sd_cor": float(sd[k]), "fixed": fixed})
        if blk.term.correlated and q > 1:
            for c in range(q):
                for a in range(c):
                    r = float(R[a, c]) if np.isfinite(R[a, c]) else 0.0
                    rows.append({"name": blk.term.cor_name(blk.exprs[a], blk.exprs[c]), "group": blk.factor,
                                 "term1": blk.exprs[a], "term2": blk.exprs[c],
                                 "variance": float(r * sd[a] * sd[c]), "sd_cor": r, "fixed": fixed})
    if bound.has_sigma:
        s = pt.sigma if pt is not None else (float(_flat(draws.sigma).mean()) if draws is not None
                                             and draws.sigma is not None else None)
        if s is not None:
            rows.append({"name": "sigma", "group": "Residual", "term1": "", "term2": "", "variance": float(s) ** 2,
                         "sd_cor": float(s), "fixed": False})
    out = pd.DataFrame(rows, columns=["name", "group", "term1", "term2", "variance", "sd_cor", "fixed"])
    return out.set_index("name")


def _levels_index(blk: Any) -> pd.Index:
    return pd.Index(list(blk.levels), name=blk.factor)


def ranef(bound: BoundSpec, draws: Draws | None, cond: Conditional | None, *, condvar: bool = True
          ) -> dict[str, pd.DataFrame]:
    """Per grouping factor, a DataFrame of the group values (index: levels, columns: terms).

    Empirical: the conditional modes; with ``condvar``, ``.attrs["condsd"]`` (a DataFrame of the
    same shape: the conditional SDs) and ``.attrs["condcov"]`` (the (J, q, q) conditional
    covariances, lme4's ``postVar``).  Bayesian: posterior means, with the posterior SDs in
    ``.attrs["condsd"]`` (and posterior covariances in ``.attrs["condcov"]``).  Pooled factors
    (no group values) are left out.
    """
    out: dict[str, pd.DataFrame] = {}
    blocks = draws.block_draws() if cond is None and draws is not None else None
    for i, blk in enumerate(bound.blocks):
        if blk.pooled:
            continue
        cols = pd.Index(list(blk.exprs), name="term")
        cov: np.ndarray | None
        if cond is not None:
            mode = cond.modes[i]
            cov = None if cond.cov is None or not condvar else cond.cov[i]
        else:
            bd = blocks[i]  # type: ignore[index]
            if bd.values is None:
                continue
            v = _flat(bd.values)  # (S, J, q)
            mode = v.mean(axis=0)
            cov = None
            if condvar:
                dev = v - mode[None]
                cov = np.einsum("sja,sjb->jab", dev, dev) / max(1, v.shape[0] - 1)
        df = pd.DataFrame(mode, index=_levels_index(blk), columns=cols)
        if cov is not None:
            df.attrs["condsd"] = pd.DataFrame(np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0.0, None)),
                                              index=_levels_index(blk), columns=cols)
            df.attrs["condcov"] = cov
        if blk.factor in out:  # another block on the same factor ((1 + x | g) + (0 + z | g)): its columns
            df = _join_blocks(out[blk.factor], df)
        out[blk.factor] = df
    return out


def _join_blocks(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Two blocks' group values on one factor side by side (same levels, in the same order); the
    conditional covariances block-diagonal — the blocks are independent a priori, and the
    covariance across them is not part of either block's, so it is left out (zeros), as lme4's
    ``condVar`` gives one matrix per term."""
    bare = [x.copy() for x in (a, b)]
    for x in bare:
        x.attrs = {}
    out = pd.concat(bare, axis=1)
    if "condsd" in a.attrs and "condsd" in b.attrs:
        out.attrs["condsd"] = pd.concat([a.attrs["condsd"], b.attrs["condsd"]], axis=1)
    if "condcov" in a.attrs and "condcov" in b.attrs:
        ca, cb = a.attrs["condcov"], b.attrs["condcov"]
        qa, qb = ca.shape[1], cb.shape[1]
        cov = np.zeros((ca.shape[0], qa + qb, qa + qb))
        cov[:, :qa, :qa], cov[:, qa:, qa:] = ca, cb
        out.attrs["condcov"] = cov
    return out


def coef(bound: BoundSpec, fe: pd.Series, re: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Per grouping factor, each level's coefficients: the fixed effects plus that factor's group
    values (lme4's ``coef``: every fixed effect a column; a group term without a fixed effect
    enters as its group values)."""
    out: dict[str, pd.DataFrame] = {}
    for factor, r in re.items():
        cols = list(fe.index) + [t for t in r.columns if t not in fe.index]
        base = np.array([float(fe[c]) if c in fe.index else 0.0 for c in cols])
        df = pd.DataFrame(np.broadcast_to(base, (len(r), len(cols))).copy(), index=r.index,
                          columns=pd.Index(cols, name="term"))
        for t in r.columns:
            df[t] = df[t] + r[t].to_numpy()
        out[factor] = df
    return out


def _require_rows(bound: BoundSpec, what: str) -> None:
    r = bound.reduced
    if r is not None:
        raise SpecError(
            f"The {what} need the rows, and this fit never loaded them: its {r.n_obs:,} rows were reduced "
            f"inside {r.engine} ({r.source}) to one row per group.",
            hint="Fit a table in memory for them (poolwise.data.read_table(path), or a DataFrame).", option="data")


def _eta_point(bound: BoundSpec, pt: Point, cond: Conditional) -> np.ndarray:
    eta = bound.X @ pt.beta + bound.offset
    for blk, m in zip(bound.blocks, cond.modes):
        if blk.pooled:
            continue
        eta = eta + np.einsum("ik,ik->i", blk.Z, m[blk.group])
    return np.asarray(eta, dtype=float)


def fitted(bound: BoundSpec, pt: Point | None, cond: Conditional | None,
           eta_chunks: Callable[[], Iterator[tuple[slice, np.ndarray]]] | None = None) -> pd.Series:
    """Fitted means per row: link⁻¹(x'β̂ + z'b̂) at the estimates and conditional modes (lme4's
    ``fitted``; the success probability for binomial), or the posterior mean of link⁻¹(η)."""
    _require_rows(bound, "fitted values")
    fam = bound.spec.fam
    if pt is not None and cond is not None:
        mu = fam.inverse_link(_eta_point(bound, pt, cond))
    else:
        assert eta_chunks is not None
        mu = np.empty(bound.n_obs)
        for sl, eta in eta_chunks():
            mu[sl] = fam.inverse_link(eta).reshape(-1, eta.shape[-1]).mean(axis=0)
    return pd.Series(mu, index=pd.RangeIndex(bound.n_obs, name="row"), name="fitted")


def residuals(bound: BoundSpec, mu: pd.Series, kind: str | None = None) -> pd.Series:
    """Residuals per row from the fitted means ``mu``: ``"response"`` (y − μ; for binomial the
    observed proportion less μ, as lme4), ``"deviance"`` (sign × √ of the row's deviance) or
    ``"pearson"`` ((y − μ) / √Var).  The default is lme4's: response for the gaussian family,
    deviance otherwise."""
    from scipy.special import xlogy

    fam = bound.spec.fam
    kind = kind or ("response" if fam.exact else "deviance")
    if kind not in ("response", "deviance", "pearson"):
        raise SpecError(f"The 'type' option must be 'response', 'deviance' or 'pearson'. Got {kind!r}.",
                        option="type")
    y = np.asarray(bound.y, dtype=float)
    m = mu.to_numpy()
    n = np.ones_like(y) if bound.trials is None else np.asarray(bound.trials, dtype=float)
    w = np.asarray(bound.weights, dtype=float)
    name = fam.name
    if name in ("bernoulli", "binomial"):
        resp = y / n - m
        var = m * (1.0 - m) / (n * w)
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = 2.0 * w * (xlogy(y, y / (n * m)) + xlogy(n - y, (n - y) / (n * (1.0 - m))))
    elif name == "poisson":
        resp = y - m
        var = m / w
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = 2.0 * w * (xlogy(y, y / m) - (y - m))
    elif fam.exact:
        resp = y - m
        var = 1.0 / w
        dev = w * resp**2
    else:
        if kind != "response":
            raise SpecError(f"{kind.capitalize()} residuals are not defined here for the {name} family.",
                            hint="Use type='response'.", option="type")
        resp, var, dev = y - m, np.ones_like(y), np.zeros_like(y)
    if kind == "response":
        out = resp
    elif kind == "pearson":
        out = resp / np.sqrt(var)
    else:
        out = np.sign(resp) * np.sqrt(np.clip(dev, 0.0, None))
    return pd.Series(out, index=mu.index, name=f"{kind} residual")


# ----------------------------------------------------------------------------------------------
# the likelihood criteria


class LogLik(float):
    """The maximized log-likelihood (REML log-likelihood for a REML fit), a float that also carries
    ``df`` (lme4's ``attr(logLik, "df")``: p + variance and correlation parameters + σ), ``nobs``
    and ``method`` (``"REML"``, ``"ML"`` or ``"Laplace"``)."""

    df: int
    nobs: int
    method: str

    def __new__(cls, value: float, df: int, nobs: int, method: str) -> LogLik:
        out = super().__new__(cls, value)
        out.df, out.nobs, out.method = int(df), int(nobs), str(method)
        return out

    def __repr__(self) -> str:
        return f"'log Lik.' {float(self):.6g} (df={self.df}, {self.method})"


def n_params(bound: BoundSpec) -> int:
    """lme4's df of ``logLik``: p + each learned SD and correlation + σ."""
    n = len(bound.coef_names) + (1 if bound.has_sigma else 0)
    for blk in bound.blocks:
        if blk.Sigma is None:
            n += blk.q + (blk.q * (blk.q - 1) // 2 if blk.term.correlated and blk.q > 1 else 0)
    return n


def _require_empirical(pt: Point | None, what: str) -> Point:
    if pt is None:
        raise SpecError(f"{what} is a criterion of a maximized likelihood; this fit is Bayesian (a posterior).",
                        hint="Fit with method='empirical' (REML, ML or Laplace), or compare Bayesian fits by "
                             "PSIS-LOO (poolwise.compare).", option="method")
    return pt


def loglik(bound: BoundSpec, pt: Point | None) -> LogLik:
    """ℓ at the optimum: REML log-likelihood (REML), log-likelihood (ML), Laplace's approximation."""
    p = _require_empirical(pt, "The log-likelihood")
    return LogLik(p.loglik, n_params(bound), bound.n_obs, p.method)


def aic(bound: BoundSpec, pt: Point | None) -> float:
    """−2ℓ + 2 df (lme4's ``AIC``; on the REML log-likelihood for a REML fit)."""
    ll = loglik(bound, pt)
    return -2.0 * float(ll) + 2.0 * ll.df


def bic(bound: BoundSpec, pt: Point | None) -> float:
    """−2ℓ + df log n, n the number of rows (lme4's ``BIC``)."""
    ll = loglik(bound, pt)
    return -2.0 * float(ll) + ll.df * math.log(ll.nobs)


def remlcrit(bound: BoundSpec, pt: Point | None) -> float:
    """The REML criterion at convergence, −2ℓ_REML (lme4's ``REMLcrit``)."""
    p = _require_empirical(pt, "The REML criterion")
    if p.method != "REML":
        raise SpecError(f"This fit is {p.method}, not REML: it has no REML criterion.",
                        hint="Use deviance(), or fit with reml=True.", option="reml")
    return -2.0 * p.loglik


def deviance(bound: BoundSpec, pt: Point | None, dev_resid: Callable[[], pd.Series] | None = None) -> float:
    """lme4's ``deviance``: −2ℓ of an ML fit; of a GLMM (Laplace) the sum of squared deviance
    residuals at the conditional modes; of a REML fit the REML criterion, with a warning (as lme4,
    which calls ``deviance`` of a REML fit deprecated)."""
    p = _require_empirical(pt, "The deviance")
    if p.method == "REML":
        warnings.warn("deviance() of a REML fit is its REML criterion (remlcrit()); for the deviance, fit by ML "
                      "(reml=False).", PoolwiseWarning, stacklevel=3)
        return -2.0 * p.loglik
    if p.method == "Laplace":
        assert dev_resid is not None
        return float(np.sum(dev_resid().to_numpy() ** 2))
    return -2.0 * p.loglik


# ----------------------------------------------------------------------------------------------
# standard errors of the variance parameters (Wald, from the curvature of the criterion)


def _coords(bound: BoundSpec, pt: Point) -> tuple[list[str], np.ndarray, list[tuple[str, int, int, int]]]:
    """The hyperparameters in unconstrained coordinates (log σ, log SDs, atanh correlations): names,
    values and what each is ("sigma" / "sd" / "cor", block, a, c).  Parameters at their boundary
    (an SD of 0, a correlation of ±1) are left out: they have no Wald interval."""
    names: list[str] = []
    vals: list[float] = []
    what: list[tuple[str, int, int, int]] = []
    if pt.sigma is not None:
        names.append("sigma")
        vals.append(math.log(pt.sigma))
        what.append(("sigma", -1, 0, 0))
    for i, blk in enumerate(bound.blocks):
        sd, R = pt.sd[i], pt.corr[i]
        if sd is None:
            continue
        scale = pt.sigma if pt.sigma is not None else 1.0  # lme4's θ = sd/σ: at the boundary below 1e-4
        for k, e in enumerate(blk.exprs):
            if sd[k] > 1e-4 * scale:
                names.append(blk.term.sd_name(e))
                vals.append(math.log(float(sd[k])))
                what.append(("sd", i, k, k))
        if R is not None:
            for c in range(blk.q):
                for a in range(c):
                    r = float(R[a, c])
                    if abs(r) < 1.0 - 1e-6 and sd[a] > 0 and sd[c] > 0:
                        names.append(blk.term.cor_name(blk.exprs[a], blk.exprs[c]))
                        vals.append(math.atanh(r))
                        what.append(("cor", i, a, c))
    return names, np.array(vals), what


def _apply(pt: Point, what: list[tuple[str, int, int, int]], x: np.ndarray) -> tuple[float | None, list[np.ndarray]]:
    sigma = pt.sigma
    sds = [None if s is None else s.copy() for s in pt.sd]
    Rs = [None if r is None else r.copy() for r in pt.corr]
    for (kind, i, a, c), v in zip(what, x):
        if kind == "sigma":
            sigma = math.exp(v)
        elif kind == "sd":
            sds[i][a] = math.exp(v)  # type: ignore[index]
        else:
            Rs[i][a, c] = Rs[i][c, a] = math.tanh(v)  # type: ignore[index]
    Sigmas = []
    for i, S in enumerate(pt.Sigma):
        if sds[i] is None:
            Sigmas.append(S)
        else:
            sd = sds[i]
            R = Rs[i] if Rs[i] is not None else np.eye(sd.size)  # type: ignore[union-attr]
            Sigmas.append(sd[:, None] * R * sd[None, :])  # type: ignore[index]
    return sigma, Sigmas


def _hessian(f: Callable[[np.ndarray], float], x: np.ndarray, h: np.ndarray | float) -> np.ndarray:
    """Central second differences of f at x (step h[a] in coordinate a)."""
    m = x.size
    hs = np.broadcast_to(np.asarray(h, dtype=float), (m,))
    H = np.zeros((m, m))
    f0 = f(x)
    for a in range(m):
        ea = np.zeros(m)
        ea[a] = hs[a]
        H[a, a] = (f(x + ea) - 2.0 * f0 + f(x - ea)) / hs[a] ** 2
        for c in range(a):
            ec = np.zeros(m)
            ec[c] = hs[c]
            H[a, c] = H[c, a] = ((f(x + ea + ec) - f(x + ea - ec) - f(x - ea + ec) + f(x - ea - ec))
                                 / (4.0 * hs[a] * hs[c]))
    return H


def hyper_se(bound: BoundSpec, pt: Point) -> pd.Series:
    """Standard errors of the unconstrained hyperparameters (log σ, log SD, atanh correlation) of a
    Gaussian fit from the inverse curvature of its own criterion (REML, or ML with β profiled), by
    central differences (step 1e-3).  Indexed by the parameter's name; parameters at a boundary
    are absent.  (A GLMM's come with Cov(β̂) from one joint Hessian: :func:`conditional`.)"""
    names, x0, what = _coords(bound, pt)
    if not names:
        return pd.Series([], dtype=float, name="se_unconstrained")
    from .infer import sparse
    from .reduce import bound_sparse_stats

    st = bound_sparse_stats(bound)
    fz = sparse.Factorizer(st)
    reml = pt.method == "REML"

    def f(x: np.ndarray) -> float:
        sigma, Sigmas = _apply(pt, what, x)
        lams = _sqrts(Sigmas)
        return math.nan if lams is None else sparse.loglik(st, fz, sigma or 1.0, lams, reml=reml)

    with sparse._blas(fz):
        H = _hessian(f, x0, 1e-3)
    with np.errstate(all="ignore"):
        try:
            cov = np.linalg.inv(-H)
        except np.linalg.LinAlgError:
            cov = np.full_like(H, np.nan)
    var = np.diagonal(cov)
    se = np.where(var > 0, np.sqrt(np.abs(var)), np.nan)
    return pd.Series(se, index=pd.Index(names, name="parameter"), name="se_unconstrained")


def estimate_table(bound: BoundSpec, pt: Point, cond: Conditional, *, prob: float = 0.95,
                   groups: Mapping[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """The summary of an empirical fit: estimate, standard error and interval of each parameter.

    β: Wald (estimate ± z·SE, SE from Cov(β̂)).  σ, SDs: Wald on the log scale (exp(log θ̂ ± z·SE)),
    correlations on the atanh scale, the SE shown on the natural scale by the delta method;
    parameters at a boundary (an SD of 0) have no interval.  With ``groups`` (:func:`ranef`), the
    group values' conditional modes ± z conditional SDs.  The ``interval`` column says which.
    """
    z = NormalDist().inv_cdf(0.5 + prob / 2.0)  # (not scipy.stats: 1 s of imports in a fresh process)
    rows: list[dict[str, Any]] = []
    se_b = np.sqrt(np.clip(np.diagonal(cond.beta_cov), 0.0, None))
    for name, b, s in zip(bound.coef_names, pt.beta, se_b):
        rows.append({"name": name, "estimate": float(b), "se": float(s), "lo": float(b - z * s),
                     "hi": float(b + z * s), "interval": "Wald"})
    vc = varcorr(bound, None, pt)
    hs = cond.hyper_se if cond.hyper_se is not None else hyper_se(bound, pt)
    order = [n for n in vc.index if n != "sigma"] + (["sigma"] if "sigma" in vc.index else [])
    for name in order:
        row = vc.loc[name]
        v = float(row["sd_cor"])
        if bool(row["fixed"]):
            rows.append({"name": name, "estimate": v, "se": 0.0, "lo": v, "hi": v, "interval": "fixed (pooling)"})
            continue
        s = float(hs.get(name, math.nan))
        if name.startswith("cor("):
            t = math.atanh(v) if abs(v) < 1 else math.nan
            lo, hi, se = math.tanh(t - z * s), math.tanh(t + z * s), (1.0 - v * v) * s
            how = "Wald (atanh scale)"
        else:
            with np.errstate(over="ignore"):  # a weakly determined SD: [≈0, ∞)
                lo, hi, se = ((float(v * np.exp(-z * s)), float(v * np.exp(z * s)), v * s) if v > 0
                              else (math.nan,) * 3)
            how = "Wald (log scale)"
        if not math.isfinite(s):
            lo = hi = se = math.nan
            how = "none (at a boundary)"
        rows.append({"name": name, "estimate": v, "se": se, "lo": lo, "hi": hi, "interval": how})
    for factor, df in (groups or {}).items():
        sd = df.attrs.get("condsd")
        for term in df.columns:
            vname = f"{'1' if term == 'Intercept' else term}|{factor}"
            for level, v in df[term].items():
                s = float(sd.loc[level, term]) if sd is not None else math.nan
                rows.append({"name": f"{vname}[{level}]", "estimate": float(v), "se": s, "lo": float(v) - z * s,
                             "hi": float(v) + z * s, "interval": "conditional"})
    out = pd.DataFrame(rows, columns=["name", "estimate", "se", "lo", "hi", "interval"]).set_index("name")
    out.index.name = None
    return out
