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

Several grouping factors (crossed, nested or partially crossed) couple the groups: u stacks every
factor's group values, the Newton steps for û solve with H = I + Λ'Z'WZΛ through the sparse
factor of :mod:`poolwise.infer.sparse` (its pattern fixed, refactored per step with the current
W), and the criterion is h(û) − ½ log|H|.  As lme4's glmer, θ (the entries of Λ) is first
optimized with (β, u) at their joint mode (PIRLS), then (β, θ) jointly on the Laplace criterion.
One factor keeps the per-group path above (batched over the groups, faster).

Every route returns a :class:`~poolwise.infer.DeferredDraws`: the estimates at once, the draws of β
and the group values only when first used (a fit that is only read for its estimates never makes
them).  The hyperparameters are constant across the draws (they are point estimates); ``info``
holds the ``estimates``, ``loglik`` (ℓ at the optimum), ``criterion`` (−2ℓ), ``converged`` and
``method`` (``"REML"``, ``"ML"`` or ``"Laplace"``).

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
from ..reduce import BlockStats, Reduced, bound_block_stats, reduce, sparse_stats
from ..spec import BoundSpec
from . import BlockDraws, DeferredDraws, Draws, Progress
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
    """Damped Newton on the σ-profiled criterion (batched finite differences), from the best of
    several starts; the next start is tried only when one ends at no interior maximum.

    Returns θ = (log σ, log s, corr coords) at the best optimum, whether the Hessian there is
    positive definite (an interior maximum), and the evaluations; ``None`` when no start gives a
    finite criterion (the caller then searches the full criterion).
    """
    def neg(th: np.ndarray) -> np.ndarray:
        return -_profiled_block(stats, hyp, th, reml=reml)[0]

    best: tuple[np.ndarray, float, bool] | None = None
    at = neg(np.stack(starts))  # every start in one batch; Newton from the best first
    n_eval = len(starts)
    for i in np.argsort(at, kind="stable"):
        if not np.isfinite(at[i]):
            continue
        x, fx, H, ne = imh._newton_mode(neg, starts[i], max_iter=60, h_max=1e-3)  # (small steps: an optimum)
        n_eval += ne
        if best is None or fx < best[1]:
            best = (x, fx, H is not None)
        if H is not None:  # an interior maximum (positive definite Hessian): the other starts are not needed
            break
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


def _profile_derivs(m: Any, v: float, dof: int, reml: bool) -> tuple[float, float]:
    """∂F/∂v and ∂²F/∂v² of F(v) = dof·log R + Σ_j log(1 + a_jρ) (+ log|Ā| for REML), v = log ρ.

    F is −2 × the σ-profiled criterion of :func:`_profile_simple` up to a constant.  Every sum is
    linear in k_j(ρ) = 1/(a_j(1 + a_jρ)) over the merged group sizes (:func:`exact._by_size`), with
    closed-form derivatives ∂k/∂v = −ρw², ∂²k/∂v² = −ρw² + 2aρ²w³ (w = 1/(1 + aρ)), so one
    evaluation costs O(K p²) for K distinct sizes.  With β = Ā⁻¹b̄, R = q̄ − b̄'β and e = b̄' − Ā'β:

        R'  = q̄' − 2β'b̄' + β'Ā'β,        R'' = q̄'' − 2β'b̄'' + β'Ā''β − 2e'Ā⁻¹e,
        (log|Ā|)' = tr(Ā⁻¹Ā'),            (log|Ā|)'' = tr(Ā⁻¹Ā'') − tr(Ā⁻¹Ā'Ā⁻¹Ā').
    """
    rho = math.exp(v)
    a, p = m.a, m.A_in.shape[0]
    w = 1.0 / (1.0 + a * rho)
    has = a > 0  # a group of no rows adds nothing
    k = np.divide(w, a, out=np.zeros_like(w), where=has)
    k1 = np.where(has, -rho * w * w, 0.0)
    k2 = k1 + 2.0 * a * rho * rho * w**3
    aw = a * rho * w
    ld1, ld2 = float(aw @ m.count), float((aw * w) @ m.count)
    kk = np.stack([k, k1, k2])
    q, q1, q2 = kk @ m.sy2
    q = q + m.q_in
    if p:
        AA = (kk @ m.uu).reshape(3, p, p)
        bb = kk @ m.usy
        A = m.A_in + AA[0]
        b = m.b_in + bb[0]
        # one solve for Ā⁻¹ [b̄, b̄', Ā', Ā'']
        S = np.linalg.solve(A, np.column_stack([b, bb[1], AA[1], AA[2]]))
        beta, Sb1, S1, S2 = S[:, 0], S[:, 1], S[:, 2:2 + p], S[:, 2 + p:]
        e = bb[1] - AA[1] @ beta
        R = q - b @ beta
        R1 = q1 - 2.0 * beta @ bb[1] + beta @ AA[1] @ beta
        R2 = q2 - 2.0 * beta @ bb[2] + beta @ AA[2] @ beta - 2.0 * e @ (Sb1 - S1 @ beta)
    else:
        R, R1, R2 = q, q1, q2
    F1 = dof * R1 / R + ld1
    F2 = dof * (R2 / R - (R1 / R) ** 2) + ld2
    if reml and p:
        F1 += float(np.trace(S1))
        F2 += float(np.trace(S2) - np.sum(S1 * S1.T))
    return float(F1), float(F2)


def _profile_simple(red: Reduced, *, reml: bool) -> tuple[float, float, float, int]:
    """REML/ML of the varying-intercept model with σ² profiled out: a 1-D search over ρ = τ²/σ².

    For fixed ρ the sums Ā, b̄, q̄ and the log-determinant do not depend on σ, and the criterion
    is maximized at σ̂² = R/(N − p) (REML) or R/N (ML), R = q̄ − b̄'Ā⁻¹b̄.  A grid over log ρ
    (one batched evaluation) brackets the maximum; Newton steps with the analytic first and second
    derivatives (:func:`_profile_derivs`), kept inside the bracket by bisection on the sign of the
    derivative, then polish it to a stationary point (a few steps, each O(K p²) for K distinct
    group sizes).  At an end of the grid with the slope pointing outwards the end is the answer.

    Returns σ̂, τ̂, the criterion there and the number of evaluations (grid points and steps).
    """
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
    lo, hi = float(grid[max(k - 1, 0)]), float(grid[min(k + 1, grid.size - 1)])
    v = float(grid[k])
    m = exact._by_size(red)
    with np.errstate(all="ignore"):
        for _ in range(100):
            try:
                F1, F2 = _profile_derivs(m, v, dof, reml)
            except np.linalg.LinAlgError:
                break
            count += 1
            if not math.isfinite(F1):
                break
            if F1 > 0.0:  # F (−2ℓ) rises: the minimum lies to the left
                hi = v
            else:
                lo = v
            new = v - F1 / F2 if F2 > 0.0 else math.nan
            if not lo < new < hi:  # (nan included) bisect instead
                new = 0.5 * (lo + hi)
            done = abs(new - v) < 1e-10 or hi - lo < 1e-10
            v = new
            if done:
                break
    best, s2 = crit(np.array([v]))
    if not best[0] >= ll[k]:  # never worse than the grid's best point
        v = float(grid[k])
        best, s2 = crit(np.array([v]))
    sigma = math.sqrt(float(s2[0]))
    return sigma, sigma * math.exp(0.5 * v), float(best[0]), count


def _gaussian(bound: BoundSpec, *, seed: int, chains: int, draws: int, reml: bool,
              group_budget: int | None = None) -> DeferredDraws:
    t0 = time.perf_counter()
    blk = bound.blocks[0]
    hyp = _Hyper(bound.has_sigma, blk.q, blk.Sigma, blk.term.correlated)
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
    elif blk.pooled and hyp.dim == 1:  # Σ = 0, σ learned: the linear model, σ̂ in closed form
        src = red if bound.simple else stats
        n, p = src.n_obs, src.XtWX.shape[0]
        # σ̂² = RSS/(N − p) (REML) or RSS/N (ML); _scale_guess is √(RSS/(N − p))
        sig_ls = _scale_guess(src.XtWX, src.XtWy, src.yWy, n) * (1.0 if reml else math.sqrt(max(n - p, 1) / n))
        theta = np.array([math.log(sig_ls)])
        ll, n_eval = f(theta), 1
        converged = bool(np.isfinite(ll))
    elif not (bound.simple and bound.has_sigma and blk.Sigma is None):
        theta, ll, converged, n_eval = _maximize(f, starts, np.full(hyp.dim, 0.5))
    sigma, sd, L, Lam = hyp.unpack(theta)
    corr = None if L is None else L @ L.T
    pooled = blk.pooled
    if bound.simple:
        tau = float(Lam[0, 0])
        beta_hat = exact.conditional_moments(red, _flat(red.p), np.array([sigma]), np.array([tau]),
                                             groups=False)[0][0]
    else:
        beta_hat = _block_gls(stats, sigma, Lam)[0]
    shift = red.shift if bound.simple else stats.shift  # β back from the statistics' shifted coordinates
    estimates: dict[str, Any] = {"beta": shift.unshift(beta_hat).tolist()}
    if bound.has_sigma:
        estimates["sigma"] = sigma
    if sd is not None:
        estimates["sd"] = sd.tolist()
    if corr is not None:
        estimates["corr"] = corr.tolist()
    info = {"method": "REML" if reml else "ML", "estimates": estimates, "loglik": ll, "criterion": -2.0 * ll,
            "converged": converged, "evaluations": n_eval, "seconds": time.perf_counter() - t0}

    def make() -> Draws:
        rng = np.random.default_rng(seed)
        sig_d = np.full(C * D, sigma)
        sigma_draws = np.full((C, D), sigma) if bound.has_sigma else None
        if bound.simple:
            # the hyperparameters are fixed: the sums over groups once, shared by every draw
            one = exact.group_sums(red, np.array([tau**2 / sigma**2]), logdet=False)
            keep = exact.thinned_draws(C, D, red.n_groups, group_budget)
            with np.errstate(all="ignore"):
                beta, b = exact.draw_conditional(red, _flat(red.p), sig_d, np.full(C * D, tau), rng,
                                                 with_groups=not pooled,
                                                 sums=one.take(np.zeros(C * D, dtype=np.int64)),
                                                 group_rows=None if keep is None else exact.flat_rows(C, D, keep))
            beta = shift.unshift(beta).reshape(C, D, -1)
            values = None if b is None else b.reshape(C, -1, red.n_groups)
            return Draws(beta=beta, sigma=sigma_draws, tau=None if sd is None else np.full((C, D), float(sd[0])),
                         b=values, method="empirical", info=info, value_draws=None if values is None else keep)
        with np.errstate(all="ignore"):
            beta, bq = blockmath._np_draw(stats, np.zeros(stats.p), np.full(stats.p, np.inf), sig_d,
                                          np.ascontiguousarray(np.broadcast_to(Lam, (C * D,) + Lam.shape)), rng)
        sd_d = None if sd is None else np.broadcast_to(sd, (C, D, blk.q)).copy()
        corr_d = None if corr is None else np.broadcast_to(corr, (C, D, blk.q, blk.q)).copy()
        return Draws(beta=shift.unshift(beta).reshape(C, D, -1), sigma=sigma_draws, tau=None, b=None,
                     method="empirical", info=info,
                     blocks=(BlockDraws(sd=sd_d, corr=corr_d,
                                        values=None if pooled else bq.reshape(C, D, blk.n_groups, blk.q)),))

    return DeferredDraws(method="empirical", info=info, n_chains=C, n_draws=D, make=make)


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
        return _glm_start(self.fam, self.y, self.X, self.offset, self.w, self.trials)

    def _info_slope(self, eta: np.ndarray, wi: np.ndarray) -> np.ndarray:
        """d(information)/dη per row: n·p(1−p)(1−2p) (logit), μ (log); central differences otherwise."""
        name = self.fam.name
        if name in ("bernoulli", "binomial"):
            out: np.ndarray = wi * (1.0 - 2.0 * self.fam.inverse_link(eta))
            return out
        if name == "poisson":
            return wi
        h = 1e-5 * np.maximum(1.0, np.abs(eta))
        plus = self.fam.information(eta + h, trials=self.trials, weights=self.w)
        minus = self.fam.information(eta - h, trials=self.trials, weights=self.w)
        return (plus - minus) / (2.0 * h)

    def value_grad_beta(self, beta: np.ndarray, Lam: np.ndarray) -> tuple[float, np.ndarray]:
        """The Laplace log-likelihood at (β, Λ) and its exact gradient in β.

        With û the inner mode, H_j = I + Λ'Z_j'W Z_jΛ and l(β) = Σ_j h_j(û_j) − ½ log|H_j|, the
        envelope theorem gives ∂h/∂β = X's (s the score at û) and the log-determinant term
        −½ Σ_i w'_i ℓ_i d_i with w'_i = dW_i/dη_i, ℓ_i = z_i'ΛH⁻¹Λ'z_i (the leverage of row i) and
        d_i = dη_i/dβ = x_i + z_i'Λ dû/dβ, dû_j/dβ = −H_j⁻¹Λ'Z_j'W X_j.
        """
        p = beta.size
        if not (np.all(np.isfinite(beta)) and np.all(np.isfinite(Lam))):
            return -math.inf, np.zeros(p)
        u, H, val, ok = self.modes(beta, Lam)
        if not math.isfinite(val):
            return -math.inf, np.zeros(p)
        if ok:
            self.u = u
        eta = self._eta(beta, Lam, u)
        mu = self.fam.inverse_link(eta)
        s = self.w * (self.y - self.n_mean * mu)
        wi = self.fam.information(eta, trials=self.trials, weights=self.w)
        Hinv = np.linalg.inv(H)  # (J, q, q)
        ZL = self.Z @ Lam  # (N, q): row i's z_i'Λ
        lev = np.einsum("ia,iab,ib->i", ZL, Hinv[self.group], ZL)
        LZWX = np.stack([np.stack([self._per_group(wi * ZL[:, a] * self.X[:, k]) for k in range(p)], axis=1)
                         for a in range(self.q)], axis=1)  # (J, q, p): Λ'Z_j'W X_j
        dU = -np.einsum("jab,jbk->jak", Hinv, LZWX)  # (J, q, p)
        d = self.X + np.einsum("ia,iak->ik", ZL, dU[self.group])
        grad = self.X.T @ s - 0.5 * (self._info_slope(eta, wi) * lev) @ d
        return val, grad


def _glm_start(fam: Any, y: np.ndarray, X: np.ndarray, offset: np.ndarray, w: np.ndarray,
               trials: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """β of the pooled GLM (Newton/IRLS) and its standard errors."""
    beta, se, _ = _glm_fit(fam, y, X, offset, w, trials, np.zeros(X.shape[1]))
    return beta, se


def _glm_fit(fam: Any, y: np.ndarray, X: np.ndarray, offset: np.ndarray, w: np.ndarray,
             trials: np.ndarray | None, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pooled GLM by Newton/IRLS from β: its estimate, standard errors and covariance."""
    p = X.shape[1]
    n_mean = np.ones_like(y, dtype=float) if trials is None else np.asarray(trials, dtype=float)
    beta = np.array(beta, dtype=float)
    cov = np.eye(p)
    for _ in range(50):
        eta = X @ beta + offset
        mu = fam.inverse_link(eta)
        s = w * (y - n_mean * mu)
        wi = fam.information(eta, trials=trials, weights=w)
        XWX = X.T @ (wi[:, None] * X)
        cov = np.linalg.pinv(XWX)
        step = cov @ (X.T @ s)
        beta = beta + step
        if np.abs(step).max() < 1e-10:
            break
    return beta, np.sqrt(np.maximum(np.diag(cov), 1e-12)), cov


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


def _laplace_optimum(lap: _Laplace, hyp: _Hyper, beta0: np.ndarray, starts: list[np.ndarray]
                     ) -> tuple[np.ndarray, float, bool, int]:
    """Maximize the Laplace log-likelihood over (β, θ) by L-BFGS: β's gradient exact
    (:meth:`_Laplace.value_grad_beta`), θ's by central differences (θ has few coordinates), β in
    coordinates whitened by the pooled GLM's covariance (an intercept and an uncentred covariate,
    or x and x², are nearly collinear otherwise).

    Returns (β, θ) stacked, the log-likelihood there, whether the gradient vanished (every
    whitened coordinate below 1e-3, a thousandth of a standard error of β) and the number of
    Laplace evaluations; tried from each start until one converges.
    """
    from . import sparse

    p, dim = beta0.size, hyp.dim
    _, _, cov0 = _glm_fit(lap.fam, lap.y, lap.X, lap.offset, lap.w, lap.trials, beta0)
    try:
        white = np.linalg.cholesky(0.5 * (cov0 + cov0.T)) if p else np.zeros((0, 0))
    except np.linalg.LinAlgError:
        white = np.diag(np.sqrt(np.maximum(np.diag(cov0), 1e-12)))
    n_eval = 0
    h = 1e-5

    def beta_lam(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return beta0 + white @ x[:p], hyp.unpack(x[p:])[3]

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal n_eval
        beta, Lam = beta_lam(x)
        with np.errstate(all="ignore"):
            val, gb = lap.value_grad_beta(beta, Lam)
        n_eval += 1
        g = np.zeros(x.size)
        if not math.isfinite(val):
            return 1e300, g
        g[:p] = white.T @ gb
        for i in range(dim):
            e = np.zeros(x.size)
            e[p + i] = h
            with np.errstate(all="ignore"):
                fp, fm = lap(*beta_lam(x + e)), lap(*beta_lam(x - e))
            n_eval += 2
            g[p + i] = (fp - fm) / (2.0 * h) if math.isfinite(fp) and math.isfinite(fm) else 0.0
        return -val, -g

    best: tuple[np.ndarray, float, bool] | None = None
    for theta0 in starts:
        x0 = np.concatenate([np.zeros(p), theta0])
        lap.u = np.zeros((lap.J, lap.q))
        f0, _ = fg(x0)
        x, fx, _ = sparse.lbfgs_restarts(fg, x0, f0, [(None, None)] * x0.size, ftol=1e-13, gtol=1e-6,
                                         maxiter=500)
        _, g = fg(x)
        ok = bool(np.all(np.isfinite(g)) and np.abs(g).max() < 1e-3)
        if best is None or fx < best[1]:
            best = (x, fx, ok)
        if ok:
            break
    assert best is not None
    x, fx, ok = best
    beta, _ = beta_lam(x)
    lap(beta, hyp.unpack(x[p:])[3])  # leave the inner modes at the optimum
    return np.concatenate([beta, x[p:]]), -fx, ok, n_eval


def _laplace(bound: BoundSpec, *, seed: int, chains: int, draws: int) -> DeferredDraws:
    t0 = time.perf_counter()
    blk = bound.blocks[0]
    lap = _Laplace(bound)
    hyp = _Hyper(False, blk.q, blk.Sigma, blk.term.correlated)
    p = bound.X.shape[1]

    def f(theta: np.ndarray) -> float:
        _, _, _, Lam = hyp.unpack(theta[p:])
        return lap(theta[:p], Lam)

    beta0, _ = lap.glm_start()
    zz = np.sqrt(np.maximum((blk.Z**2).mean(axis=0), 1e-300))
    starts = [np.concatenate([np.log(sd_f / zz)[:hyp.n_sd], np.zeros(hyp.n_corr)]) for sd_f in (1.0, 0.3)]
    theta, ll, converged, n_eval = _laplace_optimum(lap, hyp, beta0, starts)
    if not converged:  # the derivative-free search from two starts, as a fallback
        steps = np.concatenate([np.full(p, 0.1), np.full(hyp.dim, 0.5)])
        theta_nm, ll_nm, converged, ne = _maximize(f, [theta] + [np.concatenate([beta0, t]) for t in starts],
                                                   steps)
        n_eval += ne
        if ll_nm >= ll:
            theta, ll = theta_nm, ll_nm
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
    C, D = chains, draws
    N = C * D
    cov = np.linalg.inv(prec) if p else np.zeros((0, 0))
    estimates: dict[str, Any] = {"beta": beta_hat.tolist(), "beta_cov": cov.tolist()}
    if sd is not None:
        estimates["sd"] = sd.tolist()
    if corr is not None:
        estimates["corr"] = corr.tolist()
    info = {"method": "Laplace", "estimates": estimates, "loglik": ll, "criterion": -2.0 * ll,
            "converged": bool(converged and inner_ok), "evaluations": n_eval, "seconds": time.perf_counter() - t0}

    def make() -> Draws:
        rng = np.random.default_rng(seed)
        if p:
            beta = beta_hat + rng.standard_normal((N, p)) @ np.linalg.cholesky(0.5 * (cov + cov.T)).T
        else:
            beta = np.zeros((N, 0))
        dev = beta - beta_hat  # (N, p)
        mean_u = u[None] - np.einsum("jak,nk->nja", HinvLtZWX, dev)  # (N, J, q)
        cH = np.linalg.cholesky(H)  # u_j noise: C_j⁻ᵀ ε has covariance H_j⁻¹
        eps = rng.standard_normal((N, lap.J, lap.q, 1))
        noise = np.linalg.solve(np.swapaxes(cH, -1, -2)[None], eps)[..., 0]
        vals = (mean_u + noise) @ Lam.T  # b_j = Λu_j
        beta_d = beta.reshape(C, D, p)
        values = None if blk.pooled else vals.reshape(C, D, lap.J, lap.q)
        if bound.simple:
            return Draws(beta=beta_d, sigma=None, tau=None if sd is None else np.full((C, D), float(sd[0])),
                         b=None if values is None else values[..., 0], method="empirical", info=info)
        sd_d = None if sd is None else np.broadcast_to(sd, (C, D, blk.q)).copy()
        corr_d = None if corr is None else np.broadcast_to(corr, (C, D, blk.q, blk.q)).copy()
        return Draws(beta=beta_d, sigma=None, tau=None, b=None, method="empirical", info=info,
                     blocks=(BlockDraws(sd=sd_d, corr=corr_d, values=values),))

    return DeferredDraws(method="empirical", info=info, n_chains=C, n_draws=D, make=make)


# ----------------------------------------------------------------------------------------------
# other families, several grouping factors: Laplace through the sparse factor of I + Λ'Z'WZΛ


class _CrossedLaplace:
    """Laplace's approximation of log p(y | β, Λ) for any grouping factors (canonical links).

    u stacks every factor's standardized group values (factor after factor, level-major: the
    order of :class:`poolwise.reduce.SparseStats`), b_k = Λ_k u_k per level, u ~ N(0, I).  For
    fixed (β, Λ) the mode û of h(u) = Σ_i log p(y_i | η_i) − ½|u|² is found by Newton steps with
    step halving, each solving A δ = ∇h, A = I + Λ'Z'WZΛ with W the GLM weights at the current η,
    through :class:`poolwise.infer.sparse.Factorizer`: the pattern of A is fixed, so per step
    only the per-level and per-level-pair blocks of Z'WZ are rebuilt (bincounts over indices
    computed once) and A is refactored numerically.  Then

        log p(y | β, Λ) ≈ h(û) − ½ log|A|        (W at û; lme4's glmer, nAGQ = 1: deviance −2×)
    """

    def __init__(self, bound: BoundSpec) -> None:
        from . import sparse

        fam = bound.spec.fam
        self.family = fam.name
        y = np.asarray(bound.y, dtype=float)
        n = y.size
        w = np.asarray(bound.weights, dtype=float)
        trials = None if bound.trials is None else np.asarray(bound.trials, dtype=float)
        self.X = np.asarray(bound.X, dtype=float).reshape(n, -1)
        self.p = self.X.shape[1]
        self.offset = np.asarray(bound.offset, dtype=float)
        self.wy, self.wn = w * y, w * (np.ones(n) if trials is None else trials)
        # the terms of the log-likelihood free of η (log y!, log binomial coefficients)
        self.ll_const = float(np.sum(fam.log_likelihood(y, np.zeros(n), trials=trials, weights=w))
                              - np.sum(self._rows(np.zeros(n))[0]))
        self.Zs = [np.asarray(b.Z, dtype=float).reshape(n, -1) for b in bound.blocks]
        self.groups = [np.asarray(b.group, dtype=np.int64) for b in bound.blocks]
        self.J = [int(b.n_groups) for b in bound.blocks]
        self.q = [int(b.q) for b in bound.blocks]
        self.st = sparse_stats(np.zeros(n), np.zeros((n, 0)), None, list(zip(self.Zs, self.groups, self.J)))
        self.offsets = self.st.offsets
        self.Q = self.st.size
        self.fz = sparse.Factorizer(self.st)
        # per pair of factors: each row's level pair, in the order of the pattern's blocks
        self.pairs: list[tuple[int, int, np.ndarray, int]] = []
        for k, l in self.fz.pattern.pair_keys:
            _, inv = np.unique(self.groups[k] * self.J[l] + self.groups[l], return_inverse=True)
            self.pairs.append((k, l, np.asarray(inv).ravel(), int(self.st.pairs[(k, l)].ZtWZ.shape[0])))
        self.b_ref = [np.zeros((J, q)) for J, q in zip(self.J, self.q)]  # warm start, on the b scale
        self.n_eval = 0
        self._G: list[Any] | None = None  # per factor and per pair: row → level indicators (batches)
        self._P: list[Any] | None = None

    # -- rows -------------------------------------------------------------------------------
    def _rows(self, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: log p less its constant, the score ∂/∂η and the weight −∂²/∂η²."""
        with np.errstate(over="ignore", invalid="ignore"):
            if self.family == "poisson":
                wmu = self.wn * np.exp(eta)
                return self.wy * eta - wmu, self.wy - wmu, wmu
            e = np.exp(-np.abs(eta))
            inv = 1.0 / (1.0 + e)
            mu = np.where(eta >= 0, inv, e * inv)
            ll = self.wy * eta - self.wn * (np.maximum(eta, 0.0) + np.log1p(e))
            return ll, self.wy - self.wn * mu, self.wn * mu * (1.0 - mu)

    def _split(self, u: np.ndarray) -> list[np.ndarray]:
        return [u[o:o + J * q].reshape(J, q) for o, J, q in zip(self.offsets, self.J, self.q)]

    def _eta(self, beta: np.ndarray, lams: list[np.ndarray], u: np.ndarray) -> np.ndarray:
        eta = self.X @ beta + self.offset
        for Z, g, lam, uk in zip(self.Zs, self.groups, lams, self._split(u)):
            eta = eta + np.einsum("ik,ik->i", Z, (uk @ lam.T)[g])
        return np.asarray(eta)

    def _level_sums(self, v: np.ndarray) -> list[np.ndarray]:
        """Per factor, Σ v z_a over each level's rows: (J_k, q_k[, m]) for v (n[, m])."""
        out = []
        for Z, g, J, q in zip(self.Zs, self.groups, self.J, self.q):
            if v.ndim == 1:
                out.append(np.stack([np.bincount(g, weights=v * Z[:, a], minlength=J) for a in range(q)], axis=1))
            else:
                out.append(np.stack([np.stack([np.bincount(g, weights=v[:, m] * Z[:, a], minlength=J)
                                               for m in range(v.shape[1])], axis=1) for a in range(q)], axis=1))
        return out

    def _lam_t(self, lams: list[np.ndarray], per_factor: list[np.ndarray]) -> np.ndarray:
        from .sparse import _lam_t

        return _lam_t(lams, per_factor)

    def _factor(self, W: np.ndarray, lams: list[np.ndarray]) -> None:
        """Factor A = I + Λ'Z'WZΛ for the row weights W."""
        ZtWZ = []
        for Z, g, J, q in zip(self.Zs, self.groups, self.J, self.q):
            M = np.empty((J, q, q))
            for a in range(q):
                Wa = W * Z[:, a]
                for c in range(a, q):
                    M[:, a, c] = M[:, c, a] = np.bincount(g, weights=Wa * Z[:, c], minlength=J)
            ZtWZ.append(M)
        blocks = []
        for k, l, inv, m in self.pairs:
            B = np.empty((m, self.q[k], self.q[l]))
            for a in range(self.q[k]):
                Wa = W * self.Zs[k][:, a]
                for c in range(self.q[l]):
                    B[:, a, c] = np.bincount(inv, weights=Wa * self.Zs[l][:, c], minlength=m)
            blocks.append(B)
        self.fz.pattern.reweight(ZtWZ, blocks)
        self.fz.factor(lams, 1.0)

    def _solve(self, g: np.ndarray) -> np.ndarray:
        return self.fz.solve_Lt(self.fz.solve_L(g))

    def _u_start(self, lams: list[np.ndarray]) -> np.ndarray:
        """û from the last modes on the b scale (Λ⁻¹b by the pseudo-inverse: Λ = 0 is singular)."""
        parts = [(b @ np.linalg.pinv(lam).T).ravel() for b, lam in zip(self.b_ref, lams)]
        u = np.concatenate(parts) if parts else np.zeros(0)
        return np.where(np.isfinite(u), u, 0.0)

    def _keep(self, u: np.ndarray, lams: list[np.ndarray]) -> None:
        self.b_ref = [uk @ lam.T for uk, lam in zip(self._split(u), lams)]

    # -- the inner mode for fixed β ------------------------------------------------------------
    def modes(self, beta: np.ndarray, lams: list[np.ndarray], u0: np.ndarray | None = None
              ) -> tuple[np.ndarray, float, bool]:
        """û, the Laplace log-likelihood at (β, Λ) (A factored at û) and whether Newton converged."""
        self.n_eval += 1
        u = self._u_start(lams) if u0 is None else np.array(u0, dtype=float)
        eta = self._eta(beta, lams, u)
        ll, s, W = self._rows(eta)
        h = float(ll.sum() - 0.5 * u @ u)
        ok, dec_prev = False, math.inf
        for _ in range(100):
            g = self._lam_t(lams, self._level_sums(s)) - u
            self._factor(W, lams)
            delta = self._solve(g)
            dec = float(g @ delta)
            if not math.isfinite(dec):
                break
            if dec < 1e-20 or (dec < 1e-14 and dec > 0.25 * dec_prev):  # found, or rounding stalls it
                ok = True
                break
            dec_prev = dec
            t = 1.0
            for _ in range(40):
                u_new = u + t * delta
                ll_n, s_n, W_n = self._rows(self._eta(beta, lams, u_new))
                h_new = float(ll_n.sum() - 0.5 * u_new @ u_new)
                if h_new >= h - 1e-13 * (1.0 + abs(h)):
                    break
                t *= 0.5
            else:
                ok = dec < 1e-12
                break
            u, h, s, W = u_new, h_new, s_n, W_n
        if not ok:
            self._factor(W, lams)
        val = h + self.ll_const - 0.5 * self.fz.logdet()
        if ok and math.isfinite(val):
            self._keep(u, lams)
        return u, val if math.isfinite(val) else -math.inf, ok

    def __call__(self, beta: np.ndarray, lams: list[np.ndarray]) -> float:
        if not (np.all(np.isfinite(beta)) and all(np.all(np.isfinite(lam)) for lam in lams)):
            return -math.inf
        with np.errstate(all="ignore"):
            try:
                return self.modes(beta, lams)[1]
            except (np.linalg.LinAlgError, ValueError, ArithmeticError):
                return -math.inf

    # -- a batch of (β, Λ) at once, dense (small systems: one LAPACK call per step for the batch) -----
    def _setup_batch(self) -> None:
        if self._G is not None:
            return
        import scipy.sparse as sp

        n = self.X.shape[0]
        rows = np.arange(n)
        self._G = [sp.csr_matrix((np.ones(n), (g, rows)), shape=(J, n)) for g, J in zip(self.groups, self.J)]
        self._P = [sp.csr_matrix((np.ones(n), (inv, rows)), shape=(m, n)) for _, _, inv, m in self.pairs]

    def _batch_eta(self, eta_fix: np.ndarray, lams: list[np.ndarray], u: np.ndarray) -> np.ndarray:
        B = u.shape[0]
        eta = eta_fix.copy()
        for Z, g, lam, o, J, q in zip(self.Zs, self.groups, lams, self.offsets, self.J, self.q):
            b = np.einsum("bjc,bac->bja", u[:, o:o + J * q].reshape(B, J, q), lam)  # b_j = Λu_j
            eta += np.einsum("ia,bia->bi", Z, b[:, g, :])
        return np.asarray(eta)

    def _batch_grad(self, s: np.ndarray, lams: list[np.ndarray], u: np.ndarray) -> np.ndarray:
        """Λ'Z's − u for a batch (B, Q)."""
        assert self._G is not None
        B = u.shape[0]
        parts = []
        for G, Z, lam, q in zip(self._G, self.Zs, lams, self.q):
            gz = np.stack([np.asarray(G @ (s * Z[:, a]).T).T for a in range(q)], axis=-1)  # (B, J, q)
            parts.append(np.einsum("bjr,bra->bja", gz, lam).reshape(B, -1))
        return np.concatenate(parts, axis=1) - u

    def _batch_A(self, W: np.ndarray, lams: list[np.ndarray]) -> np.ndarray:
        """A = I + Λ'Z'WZΛ for a batch as dense (B, Q, Q), in the pattern's listed order."""
        assert self._G is not None and self._P is not None
        B, pat = W.shape[0], self.fz.pattern
        parts = []
        for G, Z, lam, J, q in zip(self._G, self.Zs, lams, self.J, self.q):
            M = np.empty((B, J, q, q))
            for a in range(q):
                Wa = W * Z[:, a]
                for c in range(a, q):
                    M[:, :, a, c] = M[:, :, c, a] = np.asarray(G @ (Wa * Z[:, c]).T).T
            parts.append(np.einsum("bri,bjrs,bsc->bjic", lam, M, lam).reshape(B, -1))
        for (k, l, _, m), P in zip(self.pairs, self._P):
            qk, ql = self.q[k], self.q[l]
            M = np.empty((B, m, qk, ql))
            for a in range(qk):
                Wa = W * self.Zs[k][:, a]
                for c in range(ql):
                    M[:, :, a, c] = np.asarray(P @ (Wa * self.Zs[l][:, c]).T).T
            V = np.einsum("bri,bmrs,bsc->bmic", lams[k], M, lams[l])
            parts += [V.reshape(B, -1), V.transpose(0, 1, 3, 2).reshape(B, -1)]
        vals = np.concatenate(parts, axis=1)
        vals[:, pat.diag_at] += 1.0
        A = np.zeros((B, self.Q * self.Q))
        A[:, pat.flat] = vals
        return A.reshape(B, self.Q, self.Q)

    def modes_batch(self, beta: np.ndarray, lams: list[np.ndarray], u0: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`modes` for a batch, densely: û (B, Q), the Laplace log-likelihoods (B,), the
        Cholesky factors of A at û (B, Q, Q) and whether Newton converged (B,)."""
        self._setup_batch()
        B = beta.shape[0]
        self.n_eval += B
        eta_fix = beta @ self.X.T + self.offset
        u = np.array(u0, dtype=float)
        ll, s, W = self._rows(self._batch_eta(eta_fix, lams, u))
        h = ll.sum(axis=1) - 0.5 * (u * u).sum(axis=1)
        done = np.zeros(B, dtype=bool)
        ok = np.zeros(B, dtype=bool)
        dec_prev = np.full(B, np.inf)
        L = np.zeros((B, self.Q, self.Q))
        for _ in range(100):
            g = self._batch_grad(s, lams, u)
            todo = np.flatnonzero(~done)
            A = self._batch_A(W[todo], [lam[todo] for lam in lams])
            Lt = np.linalg.cholesky(A)
            L[todo] = Lt
            delta = np.zeros_like(u)
            # batched LAPACK (scipy's solve_triangular loops over a batch in Python: 40× slower here)
            z = np.linalg.solve(Lt, g[todo, :, None])
            delta[todo] = np.linalg.solve(np.swapaxes(Lt, 1, 2), z)[..., 0]
            dec = (g * delta).sum(axis=1)
            fin = np.isfinite(dec)
            found = ~done & fin & ((dec < 1e-20) | ((dec < 1e-14) & (dec > 0.25 * dec_prev)))
            ok |= found
            done |= found | ~fin
            if done.all():
                break
            dec_prev = np.where(done, dec_prev, dec)
            step = ~done
            t = np.where(step, 1.0, 0.0)
            u_new = u + t[:, None] * delta
            ll_n, s_n, W_n = self._rows(self._batch_eta(eta_fix, lams, u_new))
            h_new = ll_n.sum(axis=1) - 0.5 * (u_new * u_new).sum(axis=1)
            for _ in range(40):
                bad = step & ~(h_new >= h - 1e-13 * (1.0 + np.abs(h)))
                if not bad.any():
                    break
                t = np.where(bad, 0.5 * t, t)
                u_try = u + t[:, None] * delta
                ll_t, s_t, W_t = self._rows(self._batch_eta(eta_fix, lams, u_try))
                h_t = ll_t.sum(axis=1) - 0.5 * (u_try * u_try).sum(axis=1)
                u_new = np.where(bad[:, None], u_try, u_new)
                ll_n, s_n, W_n = (np.where(bad[:, None], x, y) for x, y in ((ll_t, ll_n), (s_t, s_n), (W_t, W_n)))
                h_new = np.where(bad, h_t, h_new)
            good = step & (h_new >= h - 1e-13 * (1.0 + np.abs(h)))
            stuck = step & ~good  # no step length improved h: at the mode to rounding, or lost
            ok |= stuck & (dec < 1e-12)
            done |= stuck
            u = np.where(good[:, None], u_new, u)
            h = np.where(good, h_new, h)
            s = np.where(good[:, None], s_n, s)
            W = np.where(good[:, None], W_n, W)
        else:
            L = np.linalg.cholesky(self._batch_A(W, lams))
        with np.errstate(all="ignore"):
            val = h + self.ll_const - np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
        return u, np.where(np.isfinite(val), val, -np.inf), L, ok

    # -- the joint mode of (β, u) for fixed Λ (PIRLS, lme4's nAGQ = 0) --------------------------
    def _zwx(self, W: np.ndarray, lams: list[np.ndarray]) -> np.ndarray:
        """Λ'Z'WX, (Q, p)."""
        return self._lam_t(lams, self._level_sums(W[:, None] * self.X))

    def pirls(self, beta0: np.ndarray, lams: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        """The joint mode (β̂, û) of h(β, u) for fixed Λ, the Laplace value there and the
        Schur complement X'WX − X'WZΛA⁻¹Λ'Z'WX (the precision of β)."""
        self.n_eval += 1
        beta, u = np.array(beta0, dtype=float), self._u_start(lams)
        ll, s, W = self._rows(self._eta(beta, lams, u))
        h = float(ll.sum() - 0.5 * u @ u)
        S = np.eye(self.p)
        dec_prev = math.inf
        for _ in range(100):
            gu = self._lam_t(lams, self._level_sums(s)) - u
            gb = self.X.T @ s
            self._factor(W, lams)
            cu = self.fz.solve_L(gu)
            Cb = self.fz.solve_L(self._zwx(W, lams))
            S = self.X.T @ (W[:, None] * self.X) - Cb.T @ Cb
            LS = np.linalg.cholesky(0.5 * (S + S.T))
            db = np.linalg.solve(LS.T, np.linalg.solve(LS, gb - Cb.T @ cu))
            du = self.fz.solve_Lt(cu - Cb @ db)
            dec = float(gu @ du + gb @ db)
            if not math.isfinite(dec) or dec < 1e-20 or (dec < 1e-14 and dec > 0.25 * dec_prev):
                break
            dec_prev = dec
            t = 1.0
            for _ in range(40):
                b_new, u_new = beta + t * db, u + t * du
                ll_n, s_n, W_n = self._rows(self._eta(b_new, lams, u_new))
                h_new = float(ll_n.sum() - 0.5 * u_new @ u_new)
                if h_new >= h - 1e-13 * (1.0 + abs(h)):
                    break
                t *= 0.5
            else:
                break
            beta, u, h, s, W = b_new, u_new, h_new, s_n, W_n
        self._factor(W, lams)
        val = h + self.ll_const - 0.5 * self.fz.logdet()
        if math.isfinite(val):
            self._keep(u, lams)
        return beta, u, val if math.isfinite(val) else -math.inf, S

    def gaussian(self, beta: np.ndarray, lams: list[np.ndarray], u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """At the mode: the precision of β, X'WX − X'WZΛA⁻¹Λ'Z'WX (p, p), and L⁻¹PΛ'Z'WX (Q, p),
        with A factored at û (so that u | β ~ N(û − A⁻¹Λ'Z'WX(β − β̂), A⁻¹))."""
        _, _, W = self._rows(self._eta(beta, lams, u))
        self._factor(W, lams)
        Cb = self.fz.solve_L(self._zwx(W, lams)) if self.p else np.zeros((self.Q, 0))
        S = self.X.T @ (W[:, None] * self.X) - Cb.T @ Cb
        return 0.5 * (S + S.T), Cb


def _minimize_fd(fun: Callable[[np.ndarray], float], x0: np.ndarray, bounds: list[tuple[float | None, None]],
                 h: float = 1e-4, gtol: float = 1e-7, restarts: int = 4) -> tuple[np.ndarray, float, bool, int]:
    """Minimize fun by L-BFGS-B with central-difference gradients (steps h), restarted from its end
    until it stops improving.  Returns x, fun(x), whether L-BFGS-B reported success, evaluations."""
    n_eval = 0

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal n_eval
        f0 = fun(x)
        g = np.zeros_like(x)
        n_eval += 1
        if not math.isfinite(f0):
            return 1e300, g
        for i in range(x.size):
            e = np.zeros_like(x)
            e[i] = h
            fp, fm = fun(x + e), fun(x - e)
            n_eval += 2
            g[i] = (fp - fm) / (2.0 * h) if math.isfinite(fp) and math.isfinite(fm) else 0.0
        return f0, g

    x, fx = np.asarray(x0, dtype=float), fun(x0)
    n_eval += 1
    if not x.size:
        return x, fx, True, n_eval
    from . import sparse

    x, fx, ok = sparse.lbfgs_restarts(fg, x, fx, bounds, restarts=restarts, ftol=1e-15, gtol=gtol, maxiter=1000)
    return x, fx, ok, n_eval


def _laplace_crossed(bound: BoundSpec, *, seed: int, chains: int, draws: int,
                     progress: Progress | None = None) -> DeferredDraws:
    from . import sparse

    lap = _CrossedLaplace(bound)
    with sparse._blas(lap.fz):  # one BLAS thread for small dense systems
        return _laplace_crossed_fit(bound, lap, seed=seed, chains=chains, draws=draws, progress=progress)


def _laplace_crossed_fit(bound: BoundSpec, lap: _CrossedLaplace, *, seed: int, chains: int, draws: int,
                         progress: Progress | None = None) -> DeferredDraws:
    """Laplace (lme4's glmer, nAGQ = 1) for several grouping factors.

    As glmer: first θ (lme4's Λ entries, diagonals ≥ 0) with (β, u) at their joint mode (PIRLS,
    nAGQ = 0), then (β, θ) jointly on the Laplace criterion, β in the coordinates whitened by the
    first stage's covariance (the intercept and an uncentred covariate are nearly collinear
    otherwise).  The draws are those of the Gaussian approximation of (β, u) at the optimum.
    """
    from . import sparse

    t0 = time.perf_counter()
    settings = sparse._settings(bound)
    fixed = sparse._fixed_lams(settings)
    p = lap.p

    def lams_of(theta: np.ndarray) -> list[np.ndarray]:
        return [s.tril(t) if f is None else f for s, t, f in zip(settings, sparse._split_theta(theta, settings),
                                                                    fixed)]

    lower = np.concatenate([s.lower() for s in settings if s.learned] + [np.zeros(0)])
    theta_bounds: list[tuple[float | None, None]] = [(None if not np.isfinite(lo) else float(lo), None)
                                                      for lo in lower]
    theta0 = np.concatenate([sparse._start_theta(s) for s in settings] + [np.zeros(0)])
    beta0, _ = _glm_start(bound.spec.fam, bound.y, lap.X, lap.offset, bound.weights, bound.trials)
    state = {"beta": beta0}

    # stage 1: θ with (β, u) at their joint mode
    def stage1(theta: np.ndarray) -> float:
        with np.errstate(all="ignore"):
            try:
                beta, _, val, _ = lap.pirls(state["beta"], lams_of(theta))
            except (np.linalg.LinAlgError, ValueError, ArithmeticError):
                return math.inf
        if math.isfinite(val):
            state["beta"] = beta
        return -val if math.isfinite(val) else math.inf

    if progress:
        progress("hyperparameters", 0.05)
    theta1, _, ok1, ne1 = _minimize_fd(stage1, theta0, theta_bounds, gtol=1e-3, restarts=1)  # a start only
    beta1, _, _, S1 = lap.pirls(state["beta"], lams_of(theta1))
    # stage 2: (β, θ) on the Laplace criterion, β = β₁ + Rξ with RR' = S₁⁻¹
    try:
        R = np.linalg.cholesky(np.linalg.inv(S1)) if p else np.zeros((0, 0))
    except np.linalg.LinAlgError:
        R = np.eye(p)

    def stage2(x: np.ndarray) -> float:
        val = lap(beta1 + R @ x[:p], lams_of(x[p:]))
        return -val if math.isfinite(val) else math.inf

    if progress:
        progress("hyperparameters", 0.4)
    x, fx, ok2, ne2 = _minimize_fd(stage2, np.concatenate([np.zeros(p), theta1]),
                                   [(None, None)] * p + theta_bounds)
    beta_hat, theta = beta1 + R @ x[:p], x[p:]
    lams = lams_of(theta)
    u, ll, inner_ok = lap.modes(beta_hat, lams)
    prec, Cb = lap.gaussian(beta_hat, lams, u)
    # the Gaussian approximation of (β, u): β ~ N(β̂, prec⁻¹), u | β ~ N(û − P'L⁻ᵀCb(β − β̂), A⁻¹), made
    # when first used through the factor of A kept by ``lap``
    C, D = chains, draws
    N = C * D
    cov = np.linalg.inv(prec) if p else np.zeros((0, 0))
    cov = 0.5 * (cov + cov.T)
    sds, corrs, named = sparse.sd_corr_estimates(bound, lams)
    estimates: dict[str, Any] = {"beta": beta_hat.tolist(), "beta_cov": cov.tolist(), **named}
    info = {"method": "Laplace", "estimates": estimates, "loglik": ll, "criterion": -2.0 * ll,
            "theta": theta.tolist(), "converged": bool(ok1 and ok2 and inner_ok and math.isfinite(ll)),
            "evaluations": ne1 + ne2, "factorization": lap.fz.backend, "seconds": time.perf_counter() - t0}

    def make() -> Draws:
        rng = np.random.default_rng(seed)
        beta = (beta_hat + rng.standard_normal((N, p)) @ np.linalg.cholesky(cov).T) if p else np.zeros((N, 0))
        with sparse._blas(lap.fz):
            a = u[:, None] + lap.fz.solve_Lt(rng.standard_normal((lap.Q, N)) - Cb @ (beta - beta_hat).T)
        values = sparse._lam(lams, lap.st, a)  # per factor (N, J, q)
        return Draws(beta=beta.reshape(C, D, p), sigma=None, tau=None, b=None, method="empirical", info=info,
                     blocks=sparse._blocks(bound, C, D, sds, corrs, values))

    return DeferredDraws(method="empirical", info=info, n_chains=C, n_draws=D, make=make)


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
) -> DeferredDraws:
    """Empirical Bayes: hyperparameters at their (restricted) marginal maximum, then the conditional draws.

    Parameters
    ----------
    bound
        A bound model with any grouping factors: gaussian (REML/ML; several factors through
        :func:`poolwise.infer.sparse.empirical`), or bernoulli, binomial or poisson (Laplace).
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
    DeferredDraws
        ``method="empirical"``, the draws made when first used; ``info`` holds ``estimates``, ``loglik``, ``criterion`` (−2 loglik,
        lme4's "REML criterion" or deviance), ``converged`` and ``method``.

    Raises
    ------
    SpecError
        For a family other than gaussian, bernoulli, binomial and poisson, or a separated
        bernoulli / binomial outcome (no maximum-likelihood estimate).
    """
    fam = bound.spec.fam
    if len(bound.blocks) > 1 and fam.name in _LAPLACE_FAMILIES:
        _check_not_at_bound(bound)
        _check_separation(bound)
        out = _laplace_crossed(bound, seed=seed, chains=chains, draws=draws, progress=progress)
        if progress:
            progress("done", 1.0)
        return out
    if len(bound.blocks) > 1 and fam.exact:  # REML / ML for any grouping structure
        from . import sparse

        _check_replicated(bound)
        return sparse.empirical(bound, seed=seed, chains=chains, draws=draws, progress=progress, reml=reml)
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
