"""Empirical Bayes: hyperparameters at their marginal maximum, then the group effects given them.

Gaussian family (REML or ML)
----------------------------
The marginal of the rows, b integrated out, is y ~ N(Xβ, V(θ)) with θ = (σ, Σ).  Both criteria are
built from the pieces of the collapsed marginal that :mod:`poolwise.infer.exact` (one varying
intercept: the sums Ā, b̄, q̄ and Σ log(1 + a_jρ)) and :mod:`poolwise.infer.collapsed` (q terms of one
factor: the per-group Cholesky factors of M_j) already compute, taken with a *flat* prior on β
(prior SD s0 = ∞, so that P = X'V⁻¹X exactly).  With A = X'V⁻¹X and β̂ = A⁻¹X'V⁻¹y (GLS),

    ℓ_ML(θ)   = −½[N log 2π + log|V| + (y − Xβ̂)'V⁻¹(y − Xβ̂)]
    ℓ_REML(θ) = ℓ_ML(θ) + ½ p log 2π − ½ log|A|        (Harville, 1974: β integrated out, flat prior)

which are lme4's and statsmodels' log-likelihoods (lme4 prints −2ℓ_REML as the "REML criterion at
convergence").  θ is maximized in the unconstrained coordinates (log σ, log s_k, and the
CorrCholesky coordinates of the correlation matrix, :func:`poolwise.infer.blockmath._corr_cholesky`)
by Nelder–Mead from several starts, then polished by damped Newton steps with finite-difference
derivatives.  Given θ̂ the draws are exact: β ~ N(β̂, A⁻¹) (its conditional under the flat prior),
then every b_j | β from its conditional Gaussian (:func:`poolwise.infer.exact.draw_conditional`,
:func:`poolwise.infer.blockmath._np_draw`), so the mean of the b_j draws is the BLUP.

Other families (Laplace)
------------------------
For bernoulli, binomial and poisson (canonical links), write b_j = Λu_j, u_j ~ N(0, I_q), Σ = ΛΛ'.
For fixed (β, Λ) each group's mode û_j of h_j(u) = Σ_{i∈j} log p(y_i | η_i) − ½|u|² is found by
Newton steps vectorized over the groups (step halving per group), and

    log p(y | β, Σ) ≈ Σ_j [h_j(û_j) − ½ log|I + Λ'Z_j'W_jZ_jΛ|]       (W at û_j)

(Laplace's approximation, lme4's ``glmer`` with ``nAGQ = 1``: its deviance is −2 times this).  It is
maximized jointly over β and (log s, correlations).  The draws use the Gaussian approximation of
(β, u) at the optimum: β ~ N(β̂, (X'WX − Σ_j X_j'W_jZ_jΛH_j⁻¹Λ'Z_j'W_jX_j)⁻¹) and
u_j | β ~ N(û_j − H_j⁻¹Λ'Z_j'W_jX_j(β − β̂), H_j⁻¹), H_j = I + Λ'Z_j'W_jZ_jΛ.

The hyperparameters are constant across the draws (they are point estimates); ``info`` holds the
``estimates``, ``loglik`` (ℓ at the optimum), ``criterion`` (−2ℓ), ``converged`` and ``method``
(``"REML"``, ``"ML"`` or ``"Laplace"``).

References
----------
Harville, D. A. (1974). Bayesian inference for variance components using only error contrasts.
Biometrika 61, 383–385.
Harville, D. A. (1977). Maximum likelihood approaches to variance component estimation and to
related problems. JASA 72, 320–338.
Bates, D., Mächler, M., Bolker, B. & Walker, S. (2015). Fitting linear mixed-effects models using
lme4. Journal of Statistical Software 67(1), 1–48.
Tierney, L. & Kadane, J. B. (1986). Accurate approximations for posterior moments and marginal
densities. JASA 81, 82–86.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import optimize

from ..errors import DataError, SpecError
from ..families import separation, separation_text
from ..reduce import BlockStats, Reduced, bound_block_stats, reduce
from ..spec import BoundSpec
from . import BlockDraws, Draws, Progress
from . import blockmath, exact, imh

__all__ = ["gaussian_loglik", "block_loglik", "laplace_loglik", "sample"]

_LOG2PI = math.log(2.0 * math.pi)
_LAPLACE_FAMILIES = ("bernoulli", "binomial", "poisson")


# ----------------------------------------------------------------------------------------------
# Gaussian: REML and ML from the collapsed pieces with a flat prior on β


def _flat(p: int) -> exact.HyperPrior:
    """β ~ N(0, ∞): the prior precision is exactly zero in :func:`exact._combine`."""
    return exact.HyperPrior(np.zeros(p), np.full(p, np.inf), None, None)


def gaussian_loglik(red: Reduced, sigma: np.ndarray, tau: np.ndarray, *, reml: bool = True) -> np.ndarray:
    """REML (or ML) log-likelihood of the varying-intercept model, batched over (σ, τ).

    Built from :func:`poolwise.infer.exact.group_sums` (Ā, b̄, q̄ and the log-determinant sum) and
    the β part of :func:`poolwise.infer.exact._combine` under a flat prior on β.

    Parameters
    ----------
    red
        Sufficient statistics (:func:`poolwise.reduce.reduce_arrays`).
    sigma, tau
        Arrays of equal shape (σ = 1 when the standard errors are known).
    reml
        REML (β integrated out under a flat prior) or ML (β profiled at its GLS estimate).

    Returns
    -------
    numpy.ndarray
        ℓ_REML or ℓ_ML, the shape of ``sigma`` (−inf where not finite).
    """
    sigma = np.atleast_1d(np.asarray(sigma, dtype=float))
    tau = np.broadcast_to(np.asarray(tau, dtype=float), sigma.shape)
    s2 = sigma.ravel() ** 2
    with np.errstate(all="ignore"):
        gs = exact.group_sums(red, tau.ravel() ** 2 / s2)
        _, L, r = exact._combine(red, _flat(red.p), s2, gs)  # L: Cholesky factor of A = Ā/σ², r = b̄/σ²
        quad = gs.q / s2
        logdetA = np.zeros(s2.size)
        if red.p:
            z = np.linalg.solve(L, r[..., None])[..., 0]
            quad = quad - (z * z).sum(axis=1)
            logdetA = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
        logdetV = red.n_obs * np.log(s2) - red.sum_log_w + gs.ld
        ll = -0.5 * (red.n_obs * _LOG2PI + logdetV + quad)
        if reml:
            ll = ll + 0.5 * red.p * _LOG2PI - 0.5 * logdetA
    ll = np.where(np.isfinite(ll), ll, -np.inf)
    return np.asarray(ll.reshape(sigma.shape))


def _block_gls(stats: BlockStats, sigma: float, Lam: np.ndarray) -> tuple[np.ndarray, float]:
    """β̂ (GLS) and log|X'V⁻¹X| from collapsed's pieces with a flat prior on β."""
    p = stats.p
    if not p:
        return np.zeros(0), 0.0
    with np.errstate(all="ignore"):
        pc = blockmath._np_pieces(stats, np.zeros(p), np.full(p, np.inf), np.array([sigma]), Lam[None])
    assert pc.LP is not None  # P = X'V⁻¹X exactly (zero prior precision), r = X'V⁻¹y
    z = pc.LP.solve(pc.r[..., None])
    beta = pc.LP.solve(z, transpose=True)[0, :, 0]
    return np.asarray(beta), float(2.0 * pc.LP.sum_log_diag()[0])


def block_loglik(stats: BlockStats, sigma: float, Lam: np.ndarray, *, reml: bool = True) -> float:
    """REML (or ML) log-likelihood of the model with q group terms of one factor at (σ, Σ = ΛΛ').

    ℓ_ML is collapsed's marginal of the GLS residuals y − Xβ̂ (their statistics need no pass over
    the rows: Z'W(y − Xβ̂) = Z'Wy − Z'WXβ̂); ℓ_REML adds ½p log 2π − ½ log|X'V⁻¹X|.

    Parameters
    ----------
    stats
        Sufficient statistics (:func:`poolwise.reduce.block_stats`).
    sigma
        Residual SD (1 when the standard errors are known).
    Lam
        A (q, q) square root of Σ.
    reml
        REML or ML.
    """
    beta, logdetA = _block_gls(stats, sigma, Lam)
    J, q = stats.n_groups, stats.q
    res = replace(
        stats, ZtWX=np.zeros((J, q, 0)), XtWX=np.zeros((0, 0)), XtWy=np.zeros(0),
        ZtWy=stats.ZtWy - stats.ZtWX @ beta,
        yWy=float(stats.yWy - 2.0 * beta @ stats.XtWy + beta @ stats.XtWX @ beta),
    )
    with np.errstate(all="ignore"):
        ll = float(blockmath._np_pieces(res, np.zeros(0), np.zeros(0), np.array([sigma]), Lam[None]).ll[0])
    if reml:
        ll += 0.5 * stats.p * _LOG2PI - 0.5 * logdetA
    return ll if math.isfinite(ll) else -math.inf


class _Hyper:
    """The unconstrained coordinates θ = (log σ, log s_1..q, CorrCholesky x) of one grouping factor."""

    def __init__(self, has_sigma: bool, q: int, Sigma: np.ndarray | None, correlated: bool) -> None:
        self.q = q
        self.n_sigma = int(has_sigma)
        self.n_sd = q if Sigma is None else 0
        self.n_corr = q * (q - 1) // 2 if (Sigma is None and correlated and q > 1) else 0
        self.Lam_fixed = None if Sigma is None else blockmath._psd_sqrt(np.asarray(Sigma, dtype=float))
        self.dim = self.n_sigma + self.n_sd + self.n_corr

    def unpack(self, theta: np.ndarray) -> tuple[float, np.ndarray | None, np.ndarray | None, np.ndarray]:
        """σ, s (or None), L_R (or None), Λ from one θ."""
        q, i = self.q, 0
        sigma = 1.0
        if self.n_sigma:
            sigma = float(np.exp(theta[0]))
            i = 1
        if self.Lam_fixed is not None:
            return sigma, None, None, self.Lam_fixed
        sd = np.exp(theta[i:i + q])
        i += q
        L: np.ndarray | None = None
        if self.n_corr:
            L = blockmath._corr_cholesky(theta[None, i:i + self.n_corr], q)[0][0]
            Lam = sd[:, None] * L
        else:
            Lam = np.diag(sd)
        return sigma, sd, L, Lam


def _maximize(f: Callable[[np.ndarray], float], starts: list[np.ndarray], steps: np.ndarray
              ) -> tuple[np.ndarray, float, bool, int]:
    """Maximize f from several starts: Nelder–Mead, then damped Newton with finite differences.

    Returns the maximizer, f there, whether it converged (Newton decrement or gradient ~ 0) and
    the number of evaluations.
    """
    d = starts[0].size
    n_eval = 0

    def neg(x: np.ndarray) -> float:
        v = f(x)
        return -v if math.isfinite(v) else math.inf

    def neg_batch(X: np.ndarray) -> np.ndarray:
        return np.array([neg(x) for x in np.atleast_2d(X)])

    if d == 0:
        return np.zeros(0), f(np.zeros(0)), True, 1
    best_x, best_f = starts[0], math.inf
    for x0 in starts:
        simplex = np.vstack([x0, x0 + np.diag(steps)])
        res = optimize.minimize(neg, x0, method="Nelder-Mead",
                                options={"initial_simplex": simplex, "xatol": 1e-7, "fatol": 1e-10,
                                         "maxiter": 5000 * d, "maxfev": 5000 * d, "adaptive": d > 2})
        n_eval += int(res.nfev)
        x, fx, _, ne = imh._newton_mode(neg_batch, np.asarray(res.x, dtype=float), max_iter=50)
        n_eval += ne
        if fx < best_f:
            best_x, best_f = x, fx
    # convergence: the Newton decrement (or, at a boundary where the Hessian is singular, the gradient)
    h = np.full(d, 1e-4)
    _, g, H = imh._fd_derivs(neg_batch, best_x, h)
    n_eval += 1 + 4 * d * d
    converged = False
    if np.all(np.isfinite(g)):
        if np.all(np.isfinite(H)) and np.linalg.eigvalsh(H).min() > 0:
            converged = float(g @ np.linalg.solve(H, g)) < 1e-6
        else:
            converged = float(np.abs(g).max()) < 1e-5
    return best_x, -best_f, converged, n_eval


def _profiled_block(stats: BlockStats, hyp: _Hyper, thetas: np.ndarray, *, reml: bool
                    ) -> tuple[np.ndarray, np.ndarray]:
    """REML (or ML) of the q-term model with σ² profiled out, batched over θ = (log s/σ, corr coords).

    With Λ = σΛ_r, V = σ²V_r, and the pieces of the collapsed marginal at σ = 1 and Λ_r (flat prior
    on β: A_r = X'V_r⁻¹X, Q_r the GLS residual form), the criterion is maximized over σ at
    σ̂² = Q_r/(N − p) (REML) or Q_r/N (ML):

        ℓ_REML = −½[(N − p)(log 2π + log σ̂² + 1) + log|V_r| + log|A_r|],
        ℓ_ML   = −½[N(log 2π + log σ̂² + 1) + log|V_r|].

    Returns ℓ (−inf where not finite) and σ̂², each (B,).
    """
    thetas = np.atleast_2d(thetas)
    B, q, p, N = thetas.shape[0], hyp.q, stats.p, stats.n_obs
    sd = np.exp(thetas[:, :q])
    if hyp.n_corr:
        Lam = sd[:, :, None] * blockmath._corr_cholesky(thetas[:, q:q + hyp.n_corr], q)[0]
    else:
        Lam = sd[:, :, None] * np.eye(q)[None]
    with np.errstate(all="ignore"):
        pc = blockmath._np_pieces(stats, np.zeros(p), np.full(p, np.inf), np.ones(B), Lam)
        assert pc.quad is not None and pc.logdetV is not None
        dof = N - p if reml else N
        s2 = pc.quad / dof
        ll = -0.5 * (dof * (_LOG2PI + np.log(s2) + 1.0) + pc.logdetV)
        if reml and p:
            assert pc.LP is not None
            ll = ll - pc.LP.sum_log_diag()  # −½ log|A_r|
    return np.where(np.isfinite(ll) & (s2 > 0), ll, -np.inf), s2


def _maximize_profiled(stats: BlockStats, hyp: _Hyper, starts: list[np.ndarray], *, reml: bool
                       ) -> tuple[np.ndarray, bool, int] | None:
    """Damped Newton on the σ-profiled criterion from several starts (batched finite differences).

    Returns θ = (log σ, log s, corr coords) at the best optimum, whether the Hessian there is
    positive definite (an interior maximum), and the evaluations; ``None`` when no start gives a
    finite criterion (the caller then searches the full criterion).
    """
    def neg(th: np.ndarray) -> np.ndarray:
        return -_profiled_block(stats, hyp, th, reml=reml)[0]

    best: tuple[np.ndarray, float, bool] | None = None
    n_eval = 0
    for x0 in starts:
        if not np.isfinite(neg(x0[None])[0]):
            continue
        x, fx, H, ne = imh._newton_mode(neg, x0, max_iter=60, h_max=1e-3)  # (small steps: an optimum)
        n_eval += ne
        if best is None or fx < best[1]:
            best = (x, fx, H is not None)
    if best is None:
        return None
    x, _, interior = best
    s2 = float(_profiled_block(stats, hyp, x[None], reml=reml)[1][0])
    sig = 0.5 * math.log(s2)
    theta = np.concatenate([[sig], x[:hyp.n_sd] + sig, x[hyp.n_sd:]])
    return theta, interior, n_eval


def _scale_guess(XtWX: np.ndarray, XtWy: np.ndarray, yWy: float, n: int) -> float:
    """Root mean weighted squared residual of least squares."""
    p = XtWX.shape[0]
    rss = yWy
    if p:
        beta = np.linalg.lstsq(XtWX, XtWy, rcond=None)[0]
        rss = yWy - float(beta @ XtWy)
    return math.sqrt(max(rss, 1e-12 * max(yWy, 1e-300)) / max(n - p, 1))


def _profile_simple(red: Reduced, *, reml: bool) -> tuple[float, float, float, int]:
    """REML/ML of the varying-intercept model with σ² profiled out: a 1-D search over ρ = τ²/σ².

    For fixed ρ the sums Ā, b̄, q̄ and the log-determinant do not depend on σ, and the criterion
    is maximized at σ̂² = R/(N − p) (REML) or R/N (ML), R = q̄ − b̄'Ā⁻¹b̄.  A grid over log ρ
    brackets the maximum, which a bounded Brent search then polishes.

    Returns σ̂, τ̂, the criterion there and the number of evaluations.
    """
    from scipy.optimize import minimize_scalar

    p, N = red.p, red.n_obs
    dof = N - p if reml else N
    count = 0

    def crit(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nonlocal count
        rho = np.exp(np.atleast_1d(v))
        count += rho.size
        with np.errstate(all="ignore"):
            gs = exact.group_sums(red, rho)
            R = gs.q.copy()
            logdetA = np.zeros(rho.size)
            if p:
                L = np.linalg.cholesky(gs.A)
                z = np.linalg.solve(L, gs.b[..., None])[..., 0]
                R = R - (z * z).sum(axis=1)
                logdetA = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
            s2 = R / dof
            ll = -0.5 * (N * _LOG2PI + N * np.log(s2) - red.sum_log_w + gs.ld + dof)
            if reml:
                ll = ll + 0.5 * p * _LOG2PI - 0.5 * (logdetA - p * np.log(s2))
        return np.where(np.isfinite(ll), ll, -np.inf), s2

    grid = np.linspace(-30.0, 12.0, 211)
    ll, _ = crit(grid)
    k = int(np.argmax(ll))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
    res = minimize_scalar(lambda v: -float(crit(np.array([v]))[0][0]), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-10})
    v = float(res.x) if -float(res.fun) >= ll[k] else float(grid[k])
    best, s2 = crit(np.array([v]))
    sigma = math.sqrt(float(s2[0]))
    return sigma, sigma * math.exp(0.5 * v), float(best[0]), count


def _gaussian(bound: BoundSpec, *, seed: int, chains: int, draws: int, reml: bool,
              group_budget: int | None = None) -> Draws:
    t0 = time.perf_counter()
    blk = bound.blocks[0]
    hyp = _Hyper(bound.has_sigma, blk.q, blk.Sigma, blk.term.correlated)
    rng = np.random.default_rng(seed)
    C, D = chains, draws
    if bound.simple:
        red = reduce(bound)
        exact.check_within_variation(bound, red)

        def f(theta: np.ndarray) -> float:
            sigma, _, _, Lam = hyp.unpack(theta)
            return float(gaussian_loglik(red, np.array([sigma]), np.array([Lam[0, 0]]), reml=reml)[0])

        scale = _scale_guess(red.XtWX, red.XtWy, red.yWy, red.n_obs)
        zz = np.ones(1)
    else:
        stats = bound_block_stats(bound)

        def f(theta: np.ndarray) -> float:
            sigma, _, _, Lam = hyp.unpack(theta)
            return block_loglik(stats, sigma, Lam, reml=reml)

        scale = _scale_guess(stats.XtWX, stats.XtWy, stats.yWy, stats.n_obs)
        zz = np.sqrt(np.maximum(np.einsum("jkk->k", stats.ZtWZ) / max(stats.n_obs, 1), 1e-300))
    starts = []
    for sig_f, sd_f in ((0.8, 0.5), (0.5, 1.5), (1.0, 0.1)):
        parts: list[np.ndarray] = []
        if hyp.n_sigma:
            parts.append(np.array([math.log(sig_f * scale)]))
        if hyp.n_sd:
            parts.append(np.log(sd_f * scale / zz))
        parts.append(np.zeros(hyp.n_corr))
        starts.append(np.concatenate(parts))
    profiled = None
    if bound.simple and bound.has_sigma and blk.Sigma is None:  # σ profiled: a 1-D search
        sig_hat, tau_hat, ll, n_eval = _profile_simple(red, reml=reml)
        theta = np.log(np.array([sig_hat, tau_hat]))
        converged = bool(np.isfinite(ll))
    elif not bound.simple and bound.has_sigma and blk.Sigma is None:  # σ profiled: Newton on q + q(q−1)/2
        rel = [st[1:] - st[0] if hyp.n_sd else st[1:] for st in starts]
        rel = [np.concatenate([r[:hyp.n_sd], st[1 + hyp.n_sd:]]) for r, st in zip(rel, starts)]
        profiled = _maximize_profiled(stats, hyp, rel, reml=reml)
    if profiled is not None and profiled[1]:  # an interior maximum: done
        theta, _, n_eval = profiled
        ll = f(theta)
        converged = bool(np.isfinite(ll))
    elif not (bound.simple and bound.has_sigma and blk.Sigma is None):
        theta, ll, converged, n_eval = _maximize(f, starts, np.full(hyp.dim, 0.5))
    sigma, sd, L, Lam = hyp.unpack(theta)
    corr = None if L is None else L @ L.T
    sig_d = np.full(C * D, sigma)
    pooled = blk.pooled
    if bound.simple:
        tau = float(Lam[0, 0])
        beta_hat = exact.conditional_moments(red, _flat(red.p), np.array([sigma]), np.array([tau]),
                                             groups=False)[0][0]
        # the hyperparameters are fixed: the sums over groups once, shared by every draw
        one = exact.group_sums(red, np.array([tau**2 / sigma**2]), logdet=False)
        keep = exact.thinned_draws(C, D, red.n_groups, group_budget)
        with np.errstate(all="ignore"):
            beta, b = exact.draw_conditional(red, _flat(red.p), sig_d, np.full(C * D, tau), rng,
                                             with_groups=not pooled, sums=one.take(np.zeros(C * D, dtype=np.int64)),
                                             group_rows=None if keep is None else exact.flat_rows(C, D, keep))
        values = None if b is None else b.reshape(C, -1, red.n_groups, 1)
    else:
        beta_hat = _block_gls(stats, sigma, Lam)[0]
        with np.errstate(all="ignore"):
            beta, bq = blockmath._np_draw(stats, np.zeros(stats.p), np.full(stats.p, np.inf), sig_d,
                                          np.ascontiguousarray(np.broadcast_to(Lam, (C * D,) + Lam.shape)), rng)
        values = None if pooled else bq.reshape(C, D, blk.n_groups, blk.q)
    shift = red.shift if bound.simple else stats.shift  # β back from the statistics' shifted coordinates
    beta_hat, beta = shift.unshift(beta_hat), shift.unshift(beta)
    estimates: dict[str, Any] = {"beta": beta_hat.tolist()}
    if bound.has_sigma:
        estimates["sigma"] = sigma
    if sd is not None:
        estimates["sd"] = sd.tolist()
    if corr is not None:
        estimates["corr"] = corr.tolist()
    info = {"method": "REML" if reml else "ML", "estimates": estimates, "loglik": ll, "criterion": -2.0 * ll,
            "converged": converged, "evaluations": n_eval, "seconds": time.perf_counter() - t0}
    sigma_draws = np.full((C, D), sigma) if bound.has_sigma else None
    beta = beta.reshape(C, D, -1)
    if bound.simple:
        return Draws(beta=beta, sigma=sigma_draws, tau=None if sd is None else np.full((C, D), float(sd[0])),
                     b=None if values is None else values[..., 0], method="empirical", info=info,
                     value_draws=None if values is None else keep)
    sd_d = None if sd is None else np.broadcast_to(sd, (C, D, blk.q)).copy()
    corr_d = None if corr is None else np.broadcast_to(corr, (C, D, blk.q, blk.q)).copy()
    return Draws(beta=beta, sigma=sigma_draws, tau=None, b=None, method="empirical", info=info,
                 blocks=(BlockDraws(sd=sd_d, corr=corr_d, values=values),))


# ----------------------------------------------------------------------------------------------
# other families: Laplace's approximation over the group effects


class _Laplace:
    """Laplace's approximation of log p(y | β, Σ = ΛΛ') for one grouping factor (canonical links)."""

    def __init__(self, bound: BoundSpec) -> None:
        blk = bound.blocks[0]
        self.fam = bound.spec.fam
        self.y, self.X, self.offset = bound.y, bound.X, bound.offset
        self.Z, self.group, self.J, self.q = blk.Z, blk.group, blk.n_groups, blk.q
        self.trials = bound.trials
        self.w = bound.weights
        self.n_mean = np.ones_like(self.y) if self.trials is None else np.asarray(self.trials, dtype=float)
        self.u = np.zeros((self.J, self.q))  # warm start of the inner modes

    def _per_group(self, v: np.ndarray) -> np.ndarray:
        return np.bincount(self.group, weights=v, minlength=self.J)

    def _eta(self, beta: np.ndarray, Lam: np.ndarray, u: np.ndarray) -> np.ndarray:
        b = u @ Lam.T  # b_j = Λu_j
        out: np.ndarray = self.X @ beta + self.offset + np.einsum("ik,ik->i", self.Z, b[self.group])
        return out

    def _h(self, eta: np.ndarray, u: np.ndarray) -> np.ndarray:
        ll = self.fam.log_likelihood(self.y, eta, trials=self.trials, weights=self.w)
        return self._per_group(ll) - 0.5 * (u * u).sum(axis=1)

    def _grad_hess(self, eta: np.ndarray, Lam: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                    np.ndarray]:
        mu = self.fam.inverse_link(eta)
        s = self.w * (self.y - self.n_mean * mu)  # ∂ log p / ∂η (canonical link)
        wi = self.fam.information(eta, trials=self.trials, weights=self.w)
        q = self.q
        gz = np.stack([self._per_group(s * self.Z[:, a]) for a in range(q)], axis=1)
        ZWZ = np.empty((self.J, q, q))
        for a in range(q):
            for c in range(a, q):
                ZWZ[:, a, c] = ZWZ[:, c, a] = self._per_group(wi * self.Z[:, a] * self.Z[:, c])
        H = np.einsum("ba,jbc,cd->jad", Lam, ZWZ, Lam) + np.eye(q)
        return gz @ Lam - u, H, wi

    def modes(self, beta: np.ndarray, Lam: np.ndarray, u0: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, float, bool]:
        """The modes û (J, q), H_j there, the Laplace log-likelihood and whether Newton converged."""
        u = np.array(self.u if u0 is None else u0, dtype=float)
        eta = self._eta(beta, Lam, u)
        h = self._h(eta, u)
        ok = False
        for _ in range(100):
            g, H, _ = self._grad_hess(eta, Lam, u)
            delta = np.linalg.solve(H, g[..., None])[..., 0]
            dec = (g * delta).sum(axis=1)
            if not np.all(np.isfinite(dec)):
                break
            if dec.max() < 1e-20:
                ok = True
                break
            t = np.ones(self.J)
            u_new = u + delta
            h_new = self._h(self._eta(beta, Lam, u_new), u_new)
            for _ in range(40):
                bad = ~(h_new >= h - 1e-13 * (1.0 + np.abs(h)))
                if not bad.any():
                    break
                t[bad] *= 0.5
                u_new[bad] = u[bad] + t[bad, None] * delta[bad]
                h_new = self._h(self._eta(beta, Lam, u_new), u_new)
            keep = h_new >= h - 1e-13 * (1.0 + np.abs(h))
            if not keep.any():
                ok = bool(dec.max() < 1e-12)
                break
            u = np.where(keep[:, None], u_new, u)
            h = np.where(keep, h_new, h)
            eta = self._eta(beta, Lam, u)
        _, H, _ = self._grad_hess(eta, Lam, u)
        with np.errstate(all="ignore"):
            logdet = 2.0 * np.log(np.diagonal(np.linalg.cholesky(H), axis1=1, axis2=2)).sum()
        val = float(h.sum() - 0.5 * logdet)
        return u, H, val if math.isfinite(val) else -math.inf, ok

    def __call__(self, beta: np.ndarray, Lam: np.ndarray) -> float:
        if not (np.all(np.isfinite(beta)) and np.all(np.isfinite(Lam))):
            return -math.inf
        u, _, val, ok = self.modes(beta, Lam)
        if ok and math.isfinite(val):
            self.u = u
        return val

    def glm_start(self) -> tuple[np.ndarray, np.ndarray]:
        """β of the pooled GLM (Newton/IRLS) and its standard errors."""
        p = self.X.shape[1]
        beta = np.zeros(p)
        cov = np.eye(p)
        for _ in range(50):
            eta = self.X @ beta + self.offset
            mu = self.fam.inverse_link(eta)
            s = self.w * (self.y - self.n_mean * mu)
            wi = self.fam.information(eta, trials=self.trials, weights=self.w)
            XWX = self.X.T @ (wi[:, None] * self.X)
            cov = np.linalg.pinv(XWX)
            step = cov @ (self.X.T @ s)
            beta = beta + step
            if np.abs(step).max() < 1e-10:
                break
        return beta, np.sqrt(np.maximum(np.diag(cov), 1e-12))


def laplace_loglik(bound: BoundSpec, beta: np.ndarray, Lam: np.ndarray) -> float:
    """Laplace's approximation of log p(y | β, Σ = ΛΛ') (lme4's ``glmer``, ``nAGQ = 1``: deviance = −2×).

    Parameters
    ----------
    bound
        A bound bernoulli, binomial or poisson model with one grouping factor.
    beta
        Common coefficients, (p,).
    Lam
        A (q, q) square root of the group covariance Σ.
    """
    return _Laplace(bound)(np.asarray(beta, dtype=float), np.asarray(Lam, dtype=float))


def _laplace(bound: BoundSpec, *, seed: int, chains: int, draws: int) -> Draws:
    t0 = time.perf_counter()
    blk = bound.blocks[0]
    lap = _Laplace(bound)
    hyp = _Hyper(False, blk.q, blk.Sigma, blk.term.correlated)
    p = bound.X.shape[1]

    def f(theta: np.ndarray) -> float:
        _, _, _, Lam = hyp.unpack(theta[p:])
        return lap(theta[:p], Lam)

    beta0, se0 = lap.glm_start()
    zz = np.sqrt(np.maximum((blk.Z**2).mean(axis=0), 1e-300))
    starts = []
    for sd_f in (1.0, 0.3):
        starts.append(np.concatenate([beta0, np.log(sd_f / zz)[:hyp.n_sd], np.zeros(hyp.n_corr)]))
    steps = np.concatenate([np.maximum(2.0 * se0, 1e-3), np.full(hyp.dim, 0.5)])
    theta, ll, converged, n_eval = _maximize(f, starts, steps)
    beta_hat = theta[:p]
    _, sd, L, Lam = hyp.unpack(theta[p:])
    corr = None if L is None else L @ L.T
    u, H, ll_check, inner_ok = lap.modes(beta_hat, Lam, np.zeros((lap.J, lap.q)))
    # the Gaussian approximation of (β, u) at the optimum
    eta = lap._eta(beta_hat, Lam, u)
    _, H, wi = lap._grad_hess(eta, Lam, u)
    X, Z = lap.X, lap.Z
    ZWX = np.stack([np.stack([lap._per_group(wi * Z[:, a] * X[:, k]) for k in range(p)], axis=1)
                    for a in range(lap.q)], axis=1)  # (J, q, p)
    LtZWX = np.einsum("ba,jbk->jak", Lam, ZWX)
    HinvLtZWX = np.linalg.solve(H, LtZWX)
    prec = X.T @ (wi[:, None] * X) - np.einsum("jak,jal->kl", LtZWX, HinvLtZWX)
    prec = 0.5 * (prec + prec.T)
    rng = np.random.default_rng(seed)
    C, D = chains, draws
    N = C * D
    if p:
        cov = np.linalg.inv(prec)
        beta = beta_hat + rng.standard_normal((N, p)) @ np.linalg.cholesky(0.5 * (cov + cov.T)).T
    else:
        cov = np.zeros((0, 0))
        beta = np.zeros((N, 0))
    dev = beta - beta_hat  # (N, p)
    mean_u = u[None] - np.einsum("jak,nk->nja", HinvLtZWX, dev)  # (N, J, q)
    cH = np.linalg.cholesky(H)  # u_j noise: C_j⁻ᵀ ε has covariance H_j⁻¹
    eps = rng.standard_normal((N, lap.J, lap.q, 1))
    noise = np.linalg.solve(np.swapaxes(cH, -1, -2)[None], eps)[..., 0]
    vals = (mean_u + noise) @ Lam.T  # b_j = Λu_j
    estimates: dict[str, Any] = {"beta": beta_hat.tolist(), "beta_cov": cov.tolist()}
    if sd is not None:
        estimates["sd"] = sd.tolist()
    if corr is not None:
        estimates["corr"] = corr.tolist()
    info = {"method": "Laplace", "estimates": estimates, "loglik": ll, "criterion": -2.0 * ll,
            "converged": bool(converged and inner_ok), "evaluations": n_eval, "seconds": time.perf_counter() - t0}
    beta_d = beta.reshape(C, D, p)
    values = None if blk.pooled else vals.reshape(C, D, lap.J, lap.q)
    if bound.simple:
        return Draws(beta=beta_d, sigma=None, tau=None if sd is None else np.full((C, D), float(sd[0])),
                     b=None if values is None else values[..., 0], method="empirical", info=info)
    sd_d = None if sd is None else np.broadcast_to(sd, (C, D, blk.q)).copy()
    corr_d = None if corr is None else np.broadcast_to(corr, (C, D, blk.q, blk.q)).copy()
    return Draws(beta=beta_d, sigma=None, tau=None, b=None, method="empirical", info=info,
                 blocks=(BlockDraws(sd=sd_d, corr=corr_d, values=values),))


# ----------------------------------------------------------------------------------------------


def _check_separation(bound: BoundSpec) -> None:
    """The Laplace fit maximizes the likelihood of β with no prior: under separation of a binary
    or binomial outcome that maximum does not exist (the estimate runs off to infinity)."""
    if bound.spec.fam.name not in ("bernoulli", "binomial") or not bound.has_rows:
        return
    found = separation(bound.X, bound.y, bound.trials)
    if found is not None:
        raise SpecError(f"{separation_text(bound.coef_names, found)} method='empirical' uses no prior for the "
                        "coefficients, so their estimate does not exist.",
                        hint="Use method='nuts' or 'laplace' (the coefficients' priors keep them finite), or drop "
                             "the separating column.", option="method")


def _check_replicated(bound: BoundSpec) -> None:
    """Refuse a residual SD that the (restricted) likelihood cannot separate from the groups'.

    With no more rows than groups (every group of one row) y_j ~ N(x_j'β, σ² + τ²) depends on σ
    and τ only through σ² + τ², and with Σ fixed (unpooled) no residual degree of freedom is
    left: the maximum is a ridge or a boundary (σ̂ = 0), an answer silently wrong.  lme4 refuses
    the same models ("number of levels of each grouping factor must be < number of
    observations", ``check.nobs.vs.nlev``); the exact and NUTS paths fit them, the priors
    making the posterior proper.
    """
    for block in bound.blocks:
        if bound.has_sigma and not block.pooled and bound.n_obs <= block.n_groups:
            break
    else:
        return
    raise DataError(
        f"Every group of '{block.factor}' has one row ({bound.n_obs} rows, {block.n_groups} groups), so the "
        f"residual SD sigma cannot be told apart from the group values by maximum likelihood "
        f"(method='empirical'; lme4 refuses it too).",
        hint="Use method='exact' or method='nuts' (the priors identify sigma), or pooling='pooled'.",
        column=block.factor, option="method")


def _check_not_at_bound(bound: BoundSpec) -> None:
    """Refuse an outcome at the edge of its support on every row (no maximum to find).

    Counts all 0, or every trial a failure (or every one a success): the likelihood increases
    without bound as the intercept → ∓∞, so the marginal maximum does not exist (glmer reports a
    huge estimate and a singular fit).  The Bayesian paths fit these data, the prior of the
    intercept keeping the posterior proper.
    """
    y, fam = bound.y, bound.spec.fam
    if not y.size:
        return
    what = None
    if np.all(y == 0):
        what = "0 on every row"
    elif bound.trials is not None and np.all(y == bound.trials):
        what = f"equal to the number of trials ({bound.spec.trials}) on every row"
    elif fam.support == "binary" and np.all(y == 1):
        what = "1 on every row"
    if what is None:
        return
    name = bound.spec.outcome
    raise DataError(
        f"The outcome '{name}' is {what}, so its maximum-likelihood intercept is infinite and "
        f"method='empirical' has no estimate for the {fam.name} family.",
        hint="Use method='laplace' or method='nuts' (the intercept's prior keeps the posterior proper), "
             "or check the outcome column.", column=name, option="method")


def sample(
    bound: BoundSpec,
    *,
    seed: int,
    chains: int = 4,
    draws: int = 1000,
    progress: Progress | None = None,
    reml: bool = True,
    group_budget: int | None = None,
) -> Draws:
    """Empirical Bayes: hyperparameters at their (restricted) marginal maximum, then the conditional draws.

    Parameters
    ----------
    bound
        A bound model with one grouping factor: gaussian (REML/ML), or bernoulli, binomial or
        poisson (Laplace).
    seed
        Seed of the draws of β and the group values.
    chains, draws
        Shape of the draws (the hyperparameters are constant across them).
    progress
        Optional callback ``(stage, fraction)``.
    reml
        Gaussian only: REML (default) or ML.

    Returns
    -------
    Draws
        ``method="empirical"``; ``info`` holds ``estimates``, ``loglik``, ``criterion`` (−2 loglik,
        lme4's "REML criterion" or deviance), ``converged`` and ``method``.

    Raises
    ------
    SpecError
        For several grouping factors, a family other than gaussian, bernoulli, binomial and
        poisson, or a separated bernoulli / binomial outcome (no maximum-likelihood estimate).
    """
    fam = bound.spec.fam
    if len(bound.blocks) != 1:
        raise SpecError(
            f"method='empirical' fits one grouping factor; this model has "
            f"{', '.join(str(b.term) for b in bound.blocks)}.", hint="Use method='exact' or 'nuts'.",
            option="method")
    if progress:
        progress("hyperparameters", 0.0)
    if fam.exact:
        _check_replicated(bound)
        out = _gaussian(bound, seed=seed, chains=chains, draws=draws, reml=reml, group_budget=group_budget)
    elif fam.name in _LAPLACE_FAMILIES:
        _check_not_at_bound(bound)
        _check_separation(bound)
        out = _laplace(bound, seed=seed, chains=chains, draws=draws)
    else:
        raise SpecError(f"method='empirical' fits the gaussian, bernoulli, binomial and poisson families, not "
                        f"{fam.name}.", hint="Use method='nuts'.", option="method")
    if progress:
        progress("done", 1.0)
    return out
