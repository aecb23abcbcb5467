"""Independence Metropolis–Hastings with an adapted multivariate t₅ proposal, and the damped
Newton search with finite-difference derivatives that finds its centre.

For low-dimensional posteriors whose density is cheap to evaluate in batches — the
hyperparameters of the collapsed Gaussian models (:mod:`poolwise.infer.collapsed`), of the
Laplace-approximated ones (:mod:`poolwise.infer.laplace`) and of nested factors
(:mod:`poolwise.infer.nested`) — and for the REML optimizer (:mod:`poolwise.infer.empirical`).
A target is a callable taking rows of θ (B, d) to log densities (B,), with ``dim`` and
``center()`` (a starting point).  NumPy only.

Tierney, L. (1994). Markov chains for exploring posterior distributions. Annals of Statistics 22,
1701–1762 (independence Metropolis–Hastings).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy import special

__all__ = ["IMH_MIN_ACCEPT"]


class _Target(Protocol):
    """What :func:`_imh` needs of a log density: batched evaluation, its dimension, a start."""

    dim: int

    def __call__(self, theta: np.ndarray) -> np.ndarray: ...

    def center(self) -> np.ndarray: ...


def _fd_derivs(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, h: np.ndarray
               ) -> tuple[float, np.ndarray, np.ndarray]:
    """f(x), its gradient and Hessian by central differences with steps h (d,), in one batch.

    H_ij = [f(x+h_ie_i+h_je_j) − f(x+h_ie_i−h_je_j) − f(x−h_ie_i+h_je_j) + f(x−h_ie_i−h_je_j)]/(4h_ih_j)
    (1 + 4d² evaluations); the gradient from the diagonal points x ± 2h_ie_i.
    """
    d = x.size
    E = np.diag(h)
    sgn = np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=float)
    pts = x + (sgn[None, None, :, 0, None] * E[:, None, None, :] + sgn[None, None, :, 1, None] * E[None, :, None, :])
    v = f(np.vstack([x[None], pts.reshape(-1, d)]))
    f0, v = float(v[0]), v[1:].reshape(d, d, 4)
    H = (v[..., 0] - v[..., 1] - v[..., 2] + v[..., 3]) / (4.0 * np.outer(h, h))
    ii = np.arange(d)
    g = (v[ii, ii, 0] - v[ii, ii, 3]) / (4.0 * h)
    return f0, g, 0.5 * (H + H.T)


def _newton_mode(f: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, max_iter: int = 100,
                 h_max: float = 0.1) -> tuple[np.ndarray, float, np.ndarray | None, int]:
    """Minimize f (batched: rows in, values out) by damped Newton steps with finite differences.

    Each iteration evaluates the gradient and Hessian in one batch, takes the Newton direction
    of the Hessian with its eigenvalues made positive (a gradient direction where it is not
    finite), capped at length 3, and a step length chosen among 1, ½, …, 2⁻¹² in a second batch.
    Returns the minimizer, f there, the Hessian there (None if not positive definite and finite)
    and the number of function evaluations.
    """
    d = x0.size
    x, fx = x0.copy(), float(f(x0[None])[0])
    h = np.full(d, 1e-3)
    alphas = 2.0 ** -np.arange(13)
    n_eval = 1
    H: np.ndarray | None = None
    for _ in range(max_iter):
        _, g, H = _fd_derivs(f, x, h)
        n_eval += 1 + 4 * d * d
        if not np.all(np.isfinite(g)):
            return x, fx, None, n_eval
        step: np.ndarray
        pd = False
        if np.all(np.isfinite(H)):
            vals, vecs = np.linalg.eigh(H)
            pd = bool(vals.min() > 0)
            big = max(float(np.abs(vals).max()), 1e-300)
            vals = np.maximum(np.abs(vals), 1e-8 * big)
            step = -vecs @ ((vecs.T @ g) / vals)
            if pd:
                h = np.clip(0.5 * np.sqrt(np.diag((vecs / vals) @ vecs.T)), 1e-6, h_max)
        else:
            step = -g / max(float(np.linalg.norm(g)), 1e-300)
        norm = float(np.linalg.norm(step))
        if norm > 3.0:
            step *= 3.0 / norm
        if pd and float(-g @ step) < 1e-10:  # Newton decrement: at the mode
            break
        cand = x + alphas[:, None] * step
        fc = f(cand)
        n_eval += alphas.size
        fc = np.where(np.isfinite(fc), fc, np.inf)
        k = int(np.argmin(fc))
        if not fc[k] < fx:
            break
        x, fx = cand[k], float(fc[k])
    if H is None or not np.all(np.isfinite(H)):
        return x, fx, None, n_eval
    return x, fx, H, n_eval


_T_DF = 5.0


def _t_draws(rng: np.random.Generator, mu: np.ndarray, chol: np.ndarray, n: int, df: float = _T_DF) -> np.ndarray:
    d = mu.size
    z = rng.standard_normal((n, d))
    w = np.sqrt(df / rng.chisquare(df, size=n))
    out: np.ndarray = mu + (z @ chol.T) * w[:, None]
    return out


def _t_logpdf(x: np.ndarray, mu: np.ndarray, chol: np.ndarray, df: float = _T_DF) -> np.ndarray:
    d = mu.size
    z = np.linalg.solve(chol, (x - mu).T).T
    m = np.einsum("nd,nd->n", z, z)
    const = (special.gammaln(0.5 * (df + d)) - special.gammaln(0.5 * df) - 0.5 * d * math.log(df * math.pi)
             - float(np.log(np.diag(chol)).sum()))
    return np.asarray(const - 0.5 * (df + d) * np.log1p(m / df))


def _safe_chol(cov: np.ndarray) -> np.ndarray | None:
    """Cholesky factor of a symmetric matrix after clipping its eigenvalues; None if all ≤ 0."""
    cov = 0.5 * (cov + cov.T)
    if not np.all(np.isfinite(cov)):
        return None
    vals, vecs = np.linalg.eigh(cov)
    if vals.max() <= 0:
        return None
    vals = np.clip(vals, 1e-8 * vals.max(), None)
    return np.asarray(np.linalg.cholesky((vecs * vals) @ vecs.T))


@dataclass
class _ImhResult:
    theta: np.ndarray  # (C, D, d)
    lp: np.ndarray  # (C, D)
    accepted: np.ndarray  # (C, D)
    info: dict[str, Any]


IMH_MIN_ACCEPT = 0.3  # below this acceptance rate the sampler falls back to NUTS
_IS_DRAWS = 2000
_IS_ROUNDS = 2
_INFLATE = 1.2  # the importance-sampling rounds use t₅(mean, 1.2 × covariance)
_FINAL_INFLATE = 1.0  # the MH proposal: t₅(mean, refitted covariance) (its covariance is 5/3 of that)


def _imh(target: _Target, chains: int, draws: int, rng: np.random.Generator) -> _ImhResult | str:
    """Independence Metropolis–Hastings with an adapted multivariate t₅ proposal.

    1. The mode of the log posterior in θ (damped Newton, :func:`_newton_mode`, with gradient
       and Hessian by central differences in one batch); the covariance from the Hessian there
       (steps refined to ½ a posterior SD).
    2. Adaptive importance sampling: 2000 draws from t₅(mean, 1.2·cov), self-normalized weights,
       mean and covariance refitted from the weighted draws (two rounds, starting at the mode).
    3. chains × (draws + 1) proposals from t₅(mean, cov); per chain, each proposal is accepted
       with probability min(1, w_new / w_cur), w = posterior / proposal density.  The first
       proposal starts the chain.  The draws are exact (MH), nearly independent when the
       proposal fits.

    Returns the draws, or a string saying why the proposal could not be built.
    """
    d = target.dim
    x0 = target.center()
    if not np.isfinite(target(x0)[0]):
        return "the log posterior is not finite at the starting point"

    def neg(x: np.ndarray) -> np.ndarray:
        return -target(x)

    mode, f_mode, H, n_eval = _newton_mode(neg, x0)
    if not np.isfinite(f_mode):
        return "no finite mode found"
    cov: np.ndarray | None = None
    if H is not None:
        # the Hessian again with steps of ½ a posterior SD (the last one's may have been coarser)
        vals, vecs = np.linalg.eigh(H)
        if vals.min() > 0:
            h = np.clip(0.5 * np.sqrt(np.diag((vecs / vals) @ vecs.T)), 1e-6, 0.1)
            _, _, H2 = _fd_derivs(neg, mode, h)
            n_eval += 1 + 4 * d * d
            if np.all(np.isfinite(H2)) and np.linalg.eigvalsh(H2).min() > 0:
                H = H2
            cov = np.linalg.inv(H)
    if cov is None:
        return "the Hessian at the mode is not positive definite"
    mu = mode
    chol = _safe_chol(_INFLATE * cov)
    if chol is None:
        return "the Hessian at the mode is not positive definite"
    is_ess = float("nan")
    for _ in range(_IS_ROUNDS):
        th = _t_draws(rng, mu, chol, _IS_DRAWS)
        lw = target(th) - _t_logpdf(th, mu, chol)
        if not np.any(np.isfinite(lw)):
            break
        w = np.exp(lw - lw.max())
        w /= w.sum()
        is_ess = float(1.0 / np.sum(w * w))
        if is_ess < 5.0 * d + 10.0:  # too few effective draws to refit a covariance
            break
        new_mu = w @ th
        dev = th - new_mu
        new_cov = (w[:, None] * dev).T @ dev
        new_chol = _safe_chol(_INFLATE * new_cov)
        if new_chol is None:
            break
        mu, chol, cov = new_mu, new_chol, new_cov
    final = _safe_chol(_FINAL_INFLATE * cov)
    if final is not None:
        chol = final
    total = chains * (draws + 1)
    th = _t_draws(rng, mu, chol, total)
    lp = target(th)
    lw = lp - _t_logpdf(th, mu, chol)
    th = th.reshape(chains, draws + 1, d)
    lp = lp.reshape(chains, draws + 1)
    lw = np.where(np.isfinite(lw), lw, -np.inf).reshape(chains, draws + 1)
    log_u = np.log(rng.random((chains, draws)))
    idx = np.zeros((chains, draws), dtype=np.int64)
    acc = np.zeros((chains, draws), dtype=bool)
    cur_i = np.zeros(chains, dtype=np.int64)
    cur_w = lw[:, 0].copy()
    for t in range(draws):
        prop_w = lw[:, t + 1]
        a = log_u[:, t] < prop_w - cur_w
        cur_i = np.where(a, t + 1, cur_i)
        cur_w = np.where(a, prop_w, cur_w)
        idx[:, t] = cur_i
        acc[:, t] = a
    rows = np.arange(chains)[:, None]
    out = _ImhResult(theta=th[rows, idx], lp=lp[rows, idx], accepted=acc, info={
        "acceptance_rate": float(acc.mean()),
        "importance_ess": is_ess,
        "mode_evaluations": n_eval,
    })
    if not np.all(np.isfinite(cur_w)):
        return "a chain found no proposal of finite density"
    return out
