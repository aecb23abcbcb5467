"""Exact inference for the Gaussian varying-intercept model, from sufficient statistics.

Model: y_i = x_i'β + b_{g[i]} + e_i,  e_i ~ N(0, σ²/w_i),  b_j ~ N(0, τ²),  β ~ N(m0, S0).

Write ρ = τ²/σ² (ρ = τ² when the standard errors are known: then σ ≡ 1 and w = 1/se²).
Integrating b_j out, group j's rows are N(X_j β, V_j) with V_j = σ²(W_j⁻¹ + ρ11'); by Woodbury
and the determinant lemma, with k_j = ρ/(1 + a_j ρ),

    X'V⁻¹X = (X'WX − Σ_j k_j u_j u_j') / σ²          =: Ā(ρ)/σ²
    X'V⁻¹y = (X'Wy − Σ_j k_j u_j sy_j) / σ²          =: b̄(ρ)/σ²
    y'V⁻¹y = (y'Wy − Σ_j k_j sy_j²) / σ²             =: q̄(ρ)/σ²
    log|V| = N log σ² − Σ log w + Σ_j log(1 + a_j ρ)

so every sum over groups depends on ρ only and σ enters in O(p³).  Integrating β out too
(Gaussian prior) gives the marginal p(y | σ, τ) in closed form (:func:`log_marginal`).

The one- or two-dimensional posterior of (log σ, log ρ) is tabulated on an adaptive grid; draws
from the piecewise-constant grid density are corrected by an independence Metropolis–Hastings
step against the exact density, so the draws are exact in distribution and nearly independent.
Then β | σ, τ, y and b | β, σ, τ, y are drawn from their exact conditional Gaussians
(:func:`draw_conditional`).

References
----------
Gelman, A. et al. (2013). Bayesian Data Analysis, 3rd ed., Section 5.4 and 15.4.
Harville, D. A. (1977). Maximum likelihood approaches to variance component estimation.
JASA 72, 320–338.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from ..priors import Prior
from ..reduce import Reduced, Shift, bound_block_stats
from ..spec import BoundSpec
from . import Draws, Progress
from .blockmath import prior_precision

__all__ = ["HyperPrior", "group_sums", "log_marginal", "draw_conditional", "sample", "conditional_moments",
           "thinned_draws", "flat_rows", "group_moments"]

_LOG2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class HyperPrior:
    """What the collapsed path needs of the priors: β ~ N(m0, diag(s0²)), σ and τ priors.

    ``s0`` holds the SDs (p,), or a covariance (p, p) once the prior is mapped to the
    coordinates of statistics taken about a shift (:meth:`poolwise.reduce.Shift.prior`).
    """

    m0: np.ndarray
    s0: np.ndarray
    sigma: Prior | None
    tau: Prior | None

    @classmethod
    def from_bound(cls, bound: BoundSpec, shift: Shift | None = None) -> HyperPrior:
        """The priors of ``bound``; with ``shift``, β's prior in the coordinates of statistics
        taken about it (pass ``red.shift``)."""
        m0 = np.array([bound.priors[c].mean_sd()[0] for c in bound.coef_names], dtype=float)
        s0 = np.array([bound.priors[c].mean_sd()[1] for c in bound.coef_names], dtype=float)
        if shift is not None:
            m0, s0 = shift.prior(m0, s0)
        sigma = bound.priors.get("sigma") if bound.has_sigma else None
        tau = bound.priors.get(bound.sd_name) if bound.tau is None else None
        return cls(m0, s0, sigma, tau)


@dataclass(frozen=True)
class GroupSums:
    """Ā(ρ), b̄(ρ), q̄(ρ) and Σ log(1 + a_j ρ) for a batch of ρ values (leading axis)."""

    A: np.ndarray
    b: np.ndarray
    q: np.ndarray
    ld: np.ndarray

    def take(self, idx: np.ndarray) -> GroupSums:
        """The sums at the given positions of the batch."""
        return GroupSums(self.A[idx], self.b[idx], self.q[idx], self.ld[idx])


@dataclass(frozen=True)
class _BySize:
    """The per-group pieces of the sums, added up over groups of equal weight a_j.

    Every term of Ā, b̄, q̄ and Σ log(1 + a_jρ) depends on the group only through a_j and the
    products u_ju_j', u_j·sy_j, sy_j², so groups of equal a_j (equal sizes, without known
    standard errors) can be merged exactly: J terms become as many as there are distinct sizes.
    """

    a: np.ndarray  # (K,)
    count: np.ndarray  # (K,) groups of each size
    uu: np.ndarray  # (K, p·p)
    usy: np.ndarray  # (K, p)
    sy2: np.ndarray  # (K,)
    #: the within-group parts X'WX − Σ u_ju_j'/a_j, X'Wy − Σ u_j sy_j/a_j, y'Wy − Σ sy_j²/a_j
    #: (their limits as ρ → ∞), positive semi-definite up to round-off (see :func:`_within`)
    A_in: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    b_in: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    q_in: float = 0.0


#: eigenvalues of the within-group part below this fraction of its largest (in correlation units
#: of the totals) are round-off: the direction of the intercept, constant within every group
_WITHIN_RTOL = 1e-14


def _within(red: Reduced, m: _BySize) -> _BySize:
    """``m`` with the within-group parts, computed once and cleaned of cancellation error.

    Written as within + between/(1 + a_jρ), the sums of :func:`group_sums` stay accurate as ρ =
    τ²/σ² → ∞ (σ → 0).  The within part is a difference of large sums; where it is zero in exact
    arithmetic (every group of one row, or the intercept, constant within each group) round-off
    leaves ±ε, which divided by σ² → 0 would make the density grow without bound.  With every
    group of one row the within part is exactly zero; otherwise the joint matrix [[A, b], [b', q]]
    is positive semi-definite: its negative eigenvalues, and those below ``_WITHIN_RTOL`` of the
    largest (in units of the totals' diagonal), are set to zero.
    """
    p = red.p
    if red.n.size and np.all(red.n <= 1):
        return dataclasses.replace(m, A_in=np.zeros((p, p)), b_in=np.zeros(p), q_in=0.0)
    inv_a = np.divide(1.0, m.a, out=np.zeros_like(m.a, dtype=float), where=m.a > 0)  # (empty groups: no sums)
    A = red.XtWX - (inv_a @ m.uu).reshape(p, p)
    b = red.XtWy - inv_a @ m.usy
    q = float(red.yWy - inv_a @ m.sy2)
    M = np.zeros((p + 1, p + 1))
    M[:p, :p], M[:p, p], M[p, :p], M[p, p] = A, b, b, q
    T = np.zeros((p + 1, p + 1))
    T[:p, :p], T[:p, p], T[p, :p], T[p, p] = red.XtWX, red.XtWy, red.XtWy, red.yWy
    d = np.sqrt(np.maximum(np.diag(T), 0.0))
    d[d == 0] = 1.0
    Ms = M / np.outer(d, d)
    lam, V = np.linalg.eigh(0.5 * (Ms + Ms.T))
    lam = np.where(lam > _WITHIN_RTOL * max(1.0, float(np.max(np.abs(lam), initial=0.0))), lam, 0.0)
    M = (V * lam) @ V.T * np.outer(d, d)
    return dataclasses.replace(m, A_in=M[:p, :p], b_in=M[:p, p], q_in=float(M[p, p]))


_BY_SIZE: dict[int, tuple[weakref.ref[Reduced], _BySize]] = {}


def unique_sizes(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(a, return_inverse=True, return_counts=True)``, without a sort when the weights
    are whole numbers of moderate size (row counts, the unweighted case): one ``bincount``."""
    a = np.asarray(a, dtype=float)
    if a.size and a.min() >= 0 and a.max() <= max(4 * a.size, 1 << 16):
        whole = a.astype(np.int64)
        if np.array_equal(whole, a):
            tally = np.bincount(whole)
            values = np.flatnonzero(tally)
            lookup = np.zeros(tally.size, dtype=np.int64)
            lookup[values] = np.arange(values.size)
            return values.astype(float), lookup[whole], tally[values]
    return np.unique(a, return_inverse=True, return_counts=True)


def _by_size(red: Reduced) -> _BySize:
    """The merged pieces of ``red`` (computed once per statistics object)."""
    hit = _BY_SIZE.get(id(red))
    if hit is not None and hit[0]() is red:
        return hit[1]
    p, J = red.p, red.n_groups
    a, inv, count = unique_sizes(red.a)
    if a.size * 2 > J:  # little to merge: keep the groups as they are
        uu = (red.u[:, :, None] * red.u[:, None, :]).reshape(J, p * p)
        out = _BySize(red.a, np.ones(J), uu, red.u * red.sy[:, None], red.sy**2)
    else:  # sums by size, one column at a time (no (groups, p, p) temporaries: fresh memory is slow)
        K = a.size

        def merge(v: np.ndarray) -> np.ndarray:
            return np.bincount(inv, weights=v, minlength=K)

        uu = np.empty((K, p, p))
        for k in range(p):
            for m in range(k, p):
                uu[:, k, m] = uu[:, m, k] = merge(red.u[:, k] * red.u[:, m])
        usy = np.column_stack([merge(red.u[:, k] * red.sy) for k in range(p)]).reshape(K, p)
        out = _BySize(a, count.astype(float), uu.reshape(K, p * p), usy, merge(red.sy * red.sy))
    out = _within(red, out)
    for key in [k for k, (ref, _) in _BY_SIZE.items() if ref() is None]:
        del _BY_SIZE[key]
    _BY_SIZE[id(red)] = (weakref.ref(red), out)
    return out


def check_within_variation(bound: BoundSpec, red: Reduced) -> None:
    """Refuse an outcome that does not vary within any group (every group's rows repeat one value).

    With no within-group variation left once β is fitted (the within part of y'Wy is zero) and
    more rows than groups, p(y | σ, τ) grows like σ^−(n − J) as σ → 0: no proper posterior, no
    maximum.  Every group of one row is fine (σ^0: the priors identify σ).

    Raises
    ------
    DataError
    """
    block = bound.blocks[0]
    if not bound.has_sigma or block.pooled or red.n_obs <= red.n_groups:
        return
    if _by_size(red).q_in > 0.0:
        return
    y, g = bound.spec.outcome, block.factor
    raise DataError(
        f"The outcome '{y}' does not vary within any group of '{g}' (each group's rows repeat one value), so the "
        f"likelihood grows without bound as the residual SD sigma → 0.",
        hint=f"Fit one row per group of '{g}' (the group's value), or give known standard errors with "
             f"'{y} | se(<column>) ~ …'.", column=y)


def group_sums(red: Reduced, rho: np.ndarray, chunk: int = 1 << 20, logdet: bool = True) -> GroupSums:
    """Sums over groups at each ρ (vectorized; memory O(len(rho)·J) in chunks).

    Groups of equal weight a_j are merged first (:class:`_BySize`), so the cost per ρ is the
    number of distinct group sizes, not of groups.  With ``logdet=False`` the log-determinant
    term is skipped (left at 0).
    """
    rho = np.atleast_1d(np.asarray(rho, dtype=float))
    p = red.p
    m = _by_size(red)
    J, uu, usy, sy2, a_g, count = m.a.size, m.uu, m.usy, m.sy2, m.a, m.count
    A = np.empty((rho.size, p, p))
    b = np.empty((rho.size, p))
    q = np.empty(rho.size)
    ld = np.empty(rho.size)
    step = max(1, chunk // max(J, 1))
    inv_a = np.divide(1.0, a_g, out=np.zeros_like(a_g, dtype=float), where=a_g > 0)

    def fill(s: int) -> None:
        r = rho[s : s + step, None]
        # X'WX − Σ ρ/(1 + a_jρ) u_ju_j' written as within + Σ between_j/(1 + a_jρ): no cancellation
        # as ρ → ∞ (see _within)
        k = inv_a[None, :] / (1.0 + a_g[None, :] * r)  # (a group of no rows adds nothing)
        A[s : s + step] = m.A_in[None] + (k @ uu).reshape(r.shape[0], p, p)
        b[s : s + step] = m.b_in[None] + k @ usy
        q[s : s + step] = m.q_in + k @ sy2
        if logdet:
            np.multiply(a_g[None, :], r, out=k)
            np.log1p(k, out=k)
            ld[s : s + step] = k @ count
        else:
            ld[s : s + step] = 0.0

    starts = list(range(0, rho.size, step))
    if len(starts) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(fill, starts))
    else:
        fill(0)
    return GroupSums(A, b, q, ld)


def _combine(red: Reduced, hp: HyperPrior, s2: np.ndarray, gs: GroupSums) -> tuple[np.ndarray, ...]:
    """log p(y | σ², ρ) and the pieces of β's conditional, batched over the leading axis."""
    p = red.p
    A = gs.A / s2[:, None, None]
    bb = gs.b / s2[:, None]
    qq = gs.q / s2
    m0 = hp.m0
    Am0 = np.einsum("gij,j->gi", A, m0)
    r = bb - Am0
    quad = qq - 2.0 * bb @ m0 + Am0 @ m0
    if p:
        Q0, logdet_prior = prior_precision(hp.s0)
        P = A + Q0[None]
        L = np.linalg.cholesky(P)
        z = np.linalg.solve(L, r[..., None])[..., 0]
        logdetP = 2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
        quad = quad - (z * z).sum(axis=1)
    else:
        L = np.zeros((s2.size, 0, 0))
        logdetP = np.zeros(s2.size)
        logdet_prior = 0.0
    logdetV = red.n_obs * np.log(s2) - red.sum_log_w + gs.ld
    ll = -0.5 * (red.n_obs * _LOG2PI + logdetV + logdet_prior + logdetP + quad)
    return ll, L, r


def log_marginal(red: Reduced, hp: HyperPrior, sigma: np.ndarray | float, tau: np.ndarray | float) -> np.ndarray:
    """log p(y | σ, τ) with β and every b_j integrated out.

    Parameters
    ----------
    red
        Sufficient statistics.
    hp
        Prior of β (and of the hyperparameters, unused here).
    sigma, tau
        Arrays of equal shape (σ = 1 when the standard errors are known).
    """
    sigma = np.atleast_1d(np.asarray(sigma, dtype=float))
    tau = np.broadcast_to(np.asarray(tau, dtype=float), sigma.shape)
    s2 = sigma.ravel() ** 2
    rho = tau.ravel() ** 2 / s2
    ll, _, _ = _combine(red, hp, s2, group_sums(red, rho))
    return ll.reshape(sigma.shape)


def conditional_moments(
    red: Reduced, hp: HyperPrior, sigma: np.ndarray, tau: np.ndarray, *, groups: bool = True,
    sums: GroupSums | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Exact conditional moments given (σ, τ) draws (flat arrays of length D).

    Returns
    -------
    beta_mean (D, p), beta_chol_of_precision (D, p, p), k (D, J) with k_j = ρ/(1 + a_j ρ),
    s2 (D,).  Then b_j | β ~ N(k_j (sy_j − u_j'β), σ² k_j).  ``k`` is ``None`` unless ``groups``.
    """
    s2 = sigma**2
    rho = tau**2 / s2
    _, L, r = _combine(red, hp, s2, sums if sums is not None else group_sums(red, rho, logdet=False))
    if red.p:
        z = np.linalg.solve(L, r[..., None])
        delta = np.linalg.solve(np.swapaxes(L, 1, 2), z)[..., 0]
        mean = hp.m0[None] + delta
    else:
        mean = np.zeros((s2.size, 0))
    k = rho[:, None] / (1.0 + red.a[None, :] * rho[:, None]) if groups else None
    return mean, L, k, s2


def draw_conditional(
    red: Reduced, hp: HyperPrior, sigma: np.ndarray, tau: np.ndarray, rng: np.random.Generator,
    *, with_groups: bool = True, block: int = 512, sums: GroupSums | None = None,
    group_rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Draw β and b from their exact conditional Gaussians, one draw per (σ, τ) pair.

    The group draws are made in blocks of draws on two threads, each block with its own
    generator spawned from ``rng`` (so the result does not depend on thread timing).

    Parameters
    ----------
    group_rows
        Draw b only for these draws (flat indices): a fit whose draws × groups would pass the
        memory budget keeps every draw of β and the hyperparameters, and the group values of a
        thinned, evenly spaced subset of them.

    Returns
    -------
    beta (D, p) and b (D, J), or (len(group_rows), J); ``None`` when ``with_groups`` is false.
    """
    mean, L, _, s2 = conditional_moments(red, hp, sigma, tau, groups=False, sums=sums)
    D = s2.size
    if red.p:
        e = rng.standard_normal((D, red.p, 1))
        beta = mean + np.linalg.solve(np.swapaxes(L, 1, 2), e)[..., 0]
    else:
        beta = mean
    if not with_groups:
        return beta, None
    full_beta = beta
    if group_rows is not None:
        rows = np.asarray(group_rows, dtype=np.int64)
        beta, s2, tau = beta[rows], s2[rows], np.asarray(tau)[rows]
        D = rows.size
    rho = tau**2 / s2
    b = np.empty((D, red.n_groups))
    block = max(1, min(block, (1 << 23) // (8 * max(red.n_groups, 1))))  # work blocks of ≤ 8 MiB
    starts = list(range(0, D, block))
    child_seeds = [int(x) for x in rng.integers(0, 2**63 - 1, size=len(starts))]
    fixed = D > 0 and bool(np.all(rho == rho[0]) and np.all(s2 == s2[0]))
    if fixed:  # one (σ, τ) for every draw (empirical Bayes, a fixed-τ fit): k, the SDs and k·u once
        k1 = rho[0] / (1.0 + red.a * rho[0])
        sd1 = np.sqrt(k1 * s2[0])
        # the conditional means of a block of draws in one product: [β, 1] @ [−k·u; k·sy]
        coef = np.vstack([-(k1[:, None] * red.u).T, k1 * red.sy])  # (p + 1, J)
        beta1 = np.column_stack([beta, np.ones(D)])
    uT = np.ascontiguousarray(red.u.T)
    local = threading.local()  # work buffers, one set per thread: fresh pages are slow to fault in

    def buffers(rows: int) -> tuple[np.ndarray, np.ndarray]:
        bufs = getattr(local, "bufs", None)
        if bufs is None:
            bufs = local.bufs = (np.empty((block, red.n_groups)), np.empty((block, red.n_groups)))
        return bufs[0][:rows], bufs[1][:rows]

    def fill(i: int) -> None:
        s = starts[i]
        sl = slice(s, min(D, s + block))
        g = np.random.Generator(np.random.SFC64(child_seeds[i]))
        out = b[sl]
        z, m = buffers(out.shape[0])
        if fixed:
            np.matmul(beta1[sl], coef, out=out)
            g.standard_normal(out=z)
            z *= sd1
            out += z
            return
        # b_dj = k_dj (sy_j − u_j'β_d) + sqrt(σ_d² k_dj) ε_dj with k_dj = ρ_d / (1 + a_j ρ_d), in place
        g.standard_normal(out=out)
        r = rho[sl, None]
        np.multiply(red.a[None, :], r, out=z)
        z += 1.0
        np.divide(r, z, out=z)  # k
        if red.p:
            np.matmul(beta[sl], uT, out=m)
            np.subtract(red.sy[None, :], m, out=m)
        else:
            m[...] = red.sy[None, :]
        m *= z  # the conditional means
        z *= s2[sl, None]
        np.sqrt(z, out=z)
        out *= z
        out += m

    if len(starts) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(fill, range(len(starts))))
    else:
        fill(0)
    return full_beta, b


def group_moments(red: Reduced, sigma: np.ndarray, tau: np.ndarray, beta: np.ndarray, intercept: int | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and SD of each group's intercept, Rao–Blackwellized over every draw.

    Given a draw (σ_d, τ_d, β_d), group j's intercept t_j = β₀ + b_j is N(β₀_d + m_jd, v_jd) with
    m_jd = k_jd(sy_j − u_j'β_d), v_jd = σ_d² k_jd and k_jd = ρ_d/(1 + a_jρ_d), so

        E[t_j] = mean_d(β₀_d + m_jd),   Var[t_j] = mean_d v_jd + Var_d(β₀_d + m_jd),

    with no Monte Carlo error from the group draws themselves.  Every average over draws depends
    on the group through a_j only (k_jd) and linearly or quadratically on (sy_j, u_j), so it is
    formed once per distinct a_j and then combined with each group's sums: O(draws × sizes × p²
    + groups × p²) time and O(groups) memory — what a fit of 10⁶ groups needs when it keeps the
    group draws of only a few draws.

    Parameters
    ----------
    red
        Sufficient statistics.
    sigma, tau, beta
        Flat draws, (D,), (D,) and (D, p).
    intercept
        Index of the common intercept in β (``None``: the groups' values b_j alone).
    """
    s2 = np.asarray(sigma, dtype=float) ** 2
    rho = np.asarray(tau, dtype=float) ** 2 / s2
    D = s2.size
    a, inv, _ = unique_sizes(red.a)
    K = rho[:, None] / (1.0 + rho[:, None] * a[None, :])  # (D, sizes)
    K2 = K * K
    c = beta[:, intercept] if intercept is not None else np.zeros(D)
    beta = red.shift.shift(beta)  # the group sums are about the shift: they pair with β*
    p = beta.shape[1]
    Ek, Ek2, Eck, Evs = K.mean(0), K2.mean(0), (c[:, None] * K).mean(0), (s2[:, None] * K).mean(0)
    Ekb = K.T @ beta / D  # (sizes, p)
    Eckb = (c[:, None] * K).T @ beta / D
    Ek2b = K2.T @ beta / D
    Ek2bb = (K2.T @ (beta[:, :, None] * beta[:, None, :]).reshape(D, p * p) / D).reshape(-1, p, p)
    Ec, Ec2 = float(c.mean()), float((c * c).mean())
    sy, u = red.sy, red.u
    i = inv
    mean = Ec + sy * Ek[i] - np.einsum("jp,jp->j", u, Ekb[i])
    second = (Ec2 + sy**2 * Ek2[i] + np.einsum("jp,jpq,jq->j", u, Ek2bb[i], u) + 2.0 * sy * Eck[i]
              - 2.0 * np.einsum("jp,jp->j", u, Eckb[i]) - 2.0 * sy * np.einsum("jp,jp->j", u, Ek2b[i]))
    var = Evs[i] + np.maximum(second - mean**2, 0.0)
    return mean, np.sqrt(var)


def thinned_draws(chains: int, draws: int, n_values: int, budget: int | None) -> np.ndarray | None:
    """Per-chain draw indices whose group values fit ``budget`` bytes (``None``: keep every draw).

    ``n_values`` is the number of group values per draw (J·q).  The indices are evenly spaced,
    the same in every chain, at least one.
    """
    if budget is None or chains * draws * n_values * 8 <= budget:
        return None
    keep = max(1, min(draws, budget // (8 * chains * max(n_values, 1))))
    return np.unique(np.linspace(0, draws - 1, keep).round().astype(np.int64))


def flat_rows(chains: int, draws: int, index: np.ndarray) -> np.ndarray:
    """Flat (chain-major) positions of per-chain draw ``index`` in every chain."""
    return (np.arange(chains)[:, None] * draws + np.asarray(index)[None, :]).ravel()


# ----------------------------------------------------------------------------------------------
# the hyperparameter posterior on a grid


class _Target:
    """log posterior density over z = (log σ, log ρ) (the free coordinates only)."""

    def __init__(self, red: Reduced, hp: HyperPrior, has_sigma: bool, tau_fixed: float | None) -> None:
        self.red, self.hp, self.has_sigma, self.tau_fixed = red, hp, has_sigma, tau_fixed
        self.dims: list[str] = (["log_sigma"] if has_sigma else []) + (["log_rho"] if tau_fixed is None else [])

    def unpack(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """σ and τ from the free coordinates (rows of z)."""
        i = 0
        if self.has_sigma:
            sigma = np.exp(z[:, i])
            i += 1
        else:
            sigma = np.ones(z.shape[0])
        if self.tau_fixed is None:
            tau = sigma * np.exp(0.5 * z[:, i])
        else:
            tau = np.full(z.shape[0], self.tau_fixed)
        return sigma, tau

    def logprior(self, sigma: np.ndarray, tau: np.ndarray) -> np.ndarray:
        out = np.zeros(sigma.shape)
        if self.has_sigma and self.hp.sigma is not None:
            out = out + self.hp.sigma.logpdf(sigma) + np.log(sigma)  # density of log σ
        if self.tau_fixed is None and self.hp.tau is not None:
            out = out + self.hp.tau.logpdf(tau) + np.log(tau)  # density of log τ (|∂ log τ/∂ log ρ| = ½)
        return out

    def __call__(self, z: np.ndarray) -> np.ndarray:
        sigma, tau = self.unpack(z)
        return log_marginal(self.red, self.hp, sigma, tau) + self.logprior(sigma, tau)

    def on_grid(self, axes: list[np.ndarray]) -> np.ndarray:
        """Density on the outer product of the axes, sharing the O(J) sums along log ρ."""
        red, hp = self.red, self.hp
        if len(axes) == 2:  # (log σ, log ρ): sums once per ρ, σ in O(p³)
            us, vs = axes
            gs = group_sums(red, np.exp(vs))
            U, V = np.meshgrid(us, vs, indexing="ij")
            s2 = np.exp(2 * U).ravel()
            rep = GroupSums(np.tile(gs.A, (us.size, 1, 1)), np.tile(gs.b, (us.size, 1)),
                            np.tile(gs.q, us.size), np.tile(gs.ld, us.size))
            ll, _, _ = _combine(red, hp, s2, rep)
            sigma = np.exp(U.ravel())
            tau = sigma * np.exp(0.5 * V.ravel())
            return (ll + self.logprior(sigma, tau)).reshape(us.size, vs.size)
        return self(axes[0][:, None])


def _grid_box(target: _Target, center: np.ndarray, halfwidth: np.ndarray, n: int = 61) -> list[np.ndarray]:
    """Find the box holding the posterior mass (log density within 25 of its maximum)."""
    lo, hi = center - halfwidth, center + halfwidth
    for _ in range(6):
        axes = [np.linspace(lo[d], hi[d], n) for d in range(lo.size)]
        f = target.on_grid(axes)
        f = np.where(np.isfinite(f), f, -np.inf)
        keep = f > f.max() - 25.0
        grew = False
        new_lo, new_hi = lo.copy(), hi.copy()
        for d in range(lo.size):
            other = tuple(i for i in range(lo.size) if i != d)
            mask = keep.any(axis=other) if other else keep
            idx = np.flatnonzero(mask)
            step = axes[d][1] - axes[d][0]
            if idx[0] == 0:
                new_lo[d] = lo[d] - (hi[d] - lo[d])
                grew = True
            else:
                new_lo[d] = axes[d][idx[0]] - 2 * step
            if idx[-1] == n - 1:
                new_hi[d] = hi[d] + (hi[d] - lo[d])
                grew = True
            else:
                new_hi[d] = axes[d][idx[-1]] + 2 * step
        lo, hi = new_lo, new_hi
        if not grew:
            break
    return [lo, hi]


def _sample_hyper(
    target: _Target, scale: float, n_chains: int, n_draws: int, rng: np.random.Generator, grid: int
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, float], GroupSums]:
    d = len(target.dims)
    center, half = [], []
    if target.has_sigma:
        center.append(math.log(scale) - 3.0)
        half.append(6.0)
    if target.tau_fixed is None:
        center.append(0.0 if target.has_sigma else 2 * math.log(scale))
        half.append(14.0)
    lo, hi = _grid_box(target, np.array(center), np.array(half))
    # refine until the mass spans at least a dozen points of a 41-point grid in every direction
    # (a posterior of 10⁷ rows is far narrower than the first box)
    for _ in range(8):
        lo, hi = _grid_box(target, (lo + hi) / 2, (hi - lo) / 2, n=41)
        axes = [np.linspace(lo[k], hi[k], 41) for k in range(lo.size)]
        f = target.on_grid(axes)
        keep = np.where(np.isfinite(f), f, -np.inf) > np.max(f) - 25.0
        spans = [int(np.count_nonzero(keep.any(axis=tuple(i for i in range(lo.size) if i != k)) if lo.size > 1
                                      else keep)) for k in range(lo.size)]
        if min(spans) >= 12:
            break
    n = grid if d == 1 else int(round(grid ** 0.5 * 3))
    n = max(n, 64)
    axes = [np.linspace(lo[k], hi[k], n + 1) for k in range(d)]
    mids = [0.5 * (a[1:] + a[:-1]) for a in axes]
    widths = [a[1] - a[0] for a in axes]
    f = target.on_grid(mids)
    f = np.where(np.isfinite(f), f, -np.inf)
    logp = f - f.max()
    prob = np.exp(logp).ravel()
    prob /= prob.sum()
    cell_vol = float(np.prod(widths))
    log_q_cell = np.log(np.maximum(prob, 1e-300)) - math.log(cell_vol)
    total = n_chains * (n_draws + 1)
    cells = rng.choice(prob.size, size=total, p=prob)
    idx = np.unravel_index(cells, f.shape)
    z = np.stack([axes[k][idx[k]] + widths[k] * rng.random(total) for k in range(d)], axis=1)
    sig_p, tau_p = target.unpack(z)
    s2_p = sig_p**2
    sums = group_sums(target.red, tau_p**2 / s2_p)
    ll_p, _, _ = _combine(target.red, target.hp, s2_p, sums)
    log_w = ll_p + target.logprior(sig_p, tau_p) - log_q_cell[cells]
    # independence Metropolis–Hastings per chain against the exact density
    z = z.reshape(n_chains, n_draws + 1, d)
    log_w = log_w.reshape(n_chains, n_draws + 1)
    out = np.empty((n_chains, n_draws, d))
    pick = np.empty((n_chains, n_draws), dtype=np.int64)
    acc = np.zeros((n_chains, n_draws), dtype=bool)
    lp = np.empty((n_chains, n_draws))
    log_u = np.log(rng.random((n_chains, n_draws)))
    for c in range(n_chains):
        cur, cur_w, cur_i = z[c, 0], log_w[c, 0], c * (n_draws + 1)
        for t in range(n_draws):
            prop, prop_w = z[c, t + 1], log_w[c, t + 1]
            if log_u[c, t] < prop_w - cur_w:
                cur, cur_w, cur_i = prop, prop_w, c * (n_draws + 1) + t + 1
                acc[c, t] = True
            out[c, t] = cur
            pick[c, t] = cur_i
            lp[c, t] = cur_w
    sigma, tau = target.unpack(out.reshape(-1, d))
    stats = {"accepted": acc, "importance_log_weight": lp}
    meta = {"grid_points": float(prob.size), "acceptance_rate": float(acc.mean())}
    meta_sums = sums.take(pick.ravel())
    return sigma.reshape(n_chains, n_draws), tau.reshape(n_chains, n_draws), stats, meta, meta_sums


def sample(
    bound: BoundSpec,
    red: Reduced,
    *,
    seed: int,
    chains: int = 4,
    draws: int = 1000,
    grid: int = 4096,
    progress: Progress | None = None,
    group_budget: int | None = None,
) -> Draws:
    """Exact posterior draws of the Gaussian varying-intercept model.

    Parameters
    ----------
    bound, red
        The bound model and its sufficient statistics.
    seed
        Seed of the NumPy generator (same seed, same draws).
    chains, draws
        Independent chains and draws per chain.
    grid
        Cells of the hyperparameter grid (per dimension in 1-D; in total, roughly, in 2-D).
    progress
        Optional callback ``(stage, fraction)``.
    group_budget
        Bytes the group values may take; past it they are kept for a thinned subset of the draws
        (``Draws.value_draws``), every draw of β and the hyperparameters is kept.
    """
    t0 = time.perf_counter()
    check_within_variation(bound, red)
    rng = np.random.default_rng(seed)
    hp = HyperPrior.from_bound(bound, red.shift)
    target = _Target(red, hp, bound.has_sigma, bound.tau)
    if progress:
        progress("hyperparameters", 0.0)
    if target.dims:
        sigma, tau, stats, meta, sums = _sample_hyper(target, bound.scale, chains, draws, rng, grid)
    else:
        sigma = np.ones((chains, draws))
        tau = np.full((chains, draws), float(bound.tau or 0.0))
        stats, meta = {}, {"grid_points": 0.0, "acceptance_rate": 1.0}
        sums = None
    if progress:
        progress("coefficients and groups", 0.5)
    pooled = bound.tau == 0.0
    keep = thinned_draws(chains, draws, red.n_groups, group_budget)
    beta, b = draw_conditional(red, hp, sigma.ravel(), tau.ravel(), rng, with_groups=not pooled, sums=sums,
                               group_rows=None if keep is None else flat_rows(chains, draws, keep))
    beta = red.shift.unshift(beta)
    if progress:
        progress("done", 1.0)
    meta["seconds"] = time.perf_counter() - t0
    if keep is not None and not pooled:
        meta["group_draws"] = int(keep.size)
    return Draws(
        beta=beta.reshape(chains, draws, -1),
        sigma=sigma if bound.has_sigma else None,
        tau=tau if bound.tau is None else None,
        b=None if b is None else b.reshape(chains, -1, red.n_groups),
        sample_stats=stats,
        method="exact",
        info=meta,
        value_draws=None if pooled else keep,
    )


def sample_block(
    bound: BoundSpec,
    *,
    seed: int,
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    progress: Progress | None = None,
    target_accept: float = 0.9,
) -> Draws:
    """Exact posterior draws of a Gaussian model with q group terms of one grouping factor.

    The hyperparameters (σ, the group SDs and their correlations) are sampled on the collapsed
    marginal (:mod:`poolwise.infer.collapsed`: independence Metropolis–Hastings with an adapted
    Student-t proposal, NUTS when that proposal fits badly), then β and every group's values
    exactly.
    """
    from . import BlockDraws
    from . import collapsed

    if progress:
        progress("hyperparameters", 0.0)
    blk = bound.blocks[0]
    stats = bound_block_stats(bound)
    hp = HyperPrior.from_bound(bound)
    sd_priors = [bound.priors[n] for n in blk.sd_names] if blk.Sigma is None else None
    cor = bound.priors.get(f"cor({blk.factor})")
    out = collapsed.sample(
        stats, m0=hp.m0, s0=hp.s0, sigma_prior=hp.sigma, sd_priors=sd_priors,
        lkj_eta=float(cor.args[0]) if cor is not None else 1.0, has_sigma=bound.has_sigma,
        Sigma_fixed=blk.Sigma, correlated=blk.term.correlated and blk.q > 1, seed=seed, chains=chains,
        draws=draws, warmup=warmup, target_accept=target_accept,
    )
    if progress:
        progress("done", 1.0)
    values = None if blk.pooled else out["b"]
    info = dict(out["info"])
    if str(info.get("hyper_sampler", "")).startswith("NUTS"):  # divergences mean something there only
        info["divergences"] = [int(info.get("divergences", 0))]
        info["target_accepts"] = [target_accept]
    else:
        info.pop("divergences", None)
    return Draws(
        beta=out["beta"], sigma=out["sigma"], tau=None, b=None, sample_stats=out["sample_stats"], method="exact",
        info=info, blocks=(BlockDraws(sd=out["sd"], corr=out["corr"], values=values),),
    )
