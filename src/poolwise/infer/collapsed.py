"""Exact inference for Gaussian models with q correlated group terms of one grouping factor.

Model, for rows i in groups j = g[i]:

    y_i = x_i'β + z_i'b_j + e_i,   e_i ~ N(0, σ²/w_i),   b_j ~ MVN(0, Σ),   β ~ N(m0, diag(s0²)),

with Σ = diag(s) R diag(s) (group SDs s, correlation R) and weights w = 1, or w = 1/se² when the
standard errors are known (then σ ≡ 1), as in :mod:`poolwise.infer.exact`.

Marginal likelihood
-------------------
Write Σ = ΛΛ' with Λ = diag(s) L_R (L_R the lower Cholesky factor of R).  Integrating b_j out,
group j's rows are N(X_j β, V_j), V_j = σ²W_j⁻¹ + Z_jΛΛ'Z_j'.  Put

    M_j = I_q + Λ'Z_j'W_jZ_jΛ / σ²        (q × q, M_j ⪰ I, so always positive definite).

Woodbury's identity and the matrix determinant lemma (Harville, 1977; Bates et al., 2015, §3)
give, in a form that stays valid for a singular Σ (a zero SD or |correlation| = 1):

    V_j⁻¹      = W_j/σ² − W_jZ_jΛ M_j⁻¹ Λ'Z_j'W_j / σ⁴
    log|V_j|   = n_j log σ² − Σ_{i∈j} log w_i + log|M_j|.

With C_j the Cholesky factor of M_j, G_j = C_j⁻¹Λ'(Z'WX)_j/σ² (q × p) and
h_j = C_j⁻¹Λ'(Z'Wy)_j/σ² (q), the sums over groups are

    A  = X'V⁻¹X = X'WX/σ² − Σ_j G_j'G_j
    bb = X'V⁻¹y = X'Wy/σ² − Σ_j G_j'h_j
    qq = y'V⁻¹y = y'Wy/σ² − Σ_j h_j'h_j,

so one evaluation needs only the per-group blocks Z'WZ, Z'WX, Z'Wy (:class:`BlockStats`) and
costs O(J q²(q + p) + p³): a batched q × q Cholesky over the J groups, never a pass over rows.
β is then integrated against its Gaussian prior exactly as :func:`poolwise.infer.exact._combine`
does: with P = S0⁻¹ + A and r = bb − A m0,

    log p(y | σ, Σ) = −½[N log 2π + log|V| + log|S0| + log|P|
                         + qq − 2 bb'm0 + m0'A m0 − r'P⁻¹r].

Conditionals
------------
β | σ, Σ, y ~ N(m0 + P⁻¹r, P⁻¹).  For the groups write b_j = Λa_j with a_j ~ N(0, I_q) a priori
(a parameterization that needs no Λ⁻¹); the rows of group j are y_j − X_jβ ~ N(Z_jΛa_j, σ²W_j⁻¹),
so

    a_j | β, σ, Σ, y ~ N(M_j⁻¹Λ'[(Z'Wy)_j − (Z'WX)_jβ]/σ²,  M_j⁻¹),

drawn as a_j = C_j⁻ᵀ(C_j⁻¹ rhs_j + ε_j).  Equivalently b_j | β ~ N(K_j[(Z'Wy)_j − (Z'WX)_jβ]/σ², K_j)
with K_j = ΛM_j⁻¹Λ' (:func:`conditional_moments`).  Drawing β from its marginal conditional and
then every b_j given β is an exact draw of (β, b) given the hyperparameters.

Hyperparameters
---------------
By default (σ, s, L_R) are drawn without any compilation, in NumPy: the log posterior of
θ = (log σ, log s, CorrCholesky-unconstrained correlations), batched over θ (a batched q × q
Cholesky over the groups, :func:`_np_pieces`), is maximized by damped Newton steps with
finite-difference derivatives; a multivariate t₅ proposal centred at the mode with the inverse
Hessian as scale is refitted by two rounds of importance sampling, and independence
Metropolis–Hastings against the exact density corrects its draws (:func:`_imh`, which judges its
own chains by R-hat and ESS and retries a stuck run with a wider proposal, longer and thinned).
When the acceptance rate falls below :data:`IMH_MIN_ACCEPT`, the chains still do not mix, or no
proposal can be built, NUTS takes over.

With NUTS (``hyper="nuts"``, or the fallback) they are sampled on the same low-dimensional
collapsed posterior: σ and the SDs on the log scale, L_R with the LKJ prior on correlation matrices (Lewandowski, Kurowicka &
Joe, 2009) in NumPyro's unconstrained Cholesky-of-correlation (CorrCholesky) parameterization.
Because b is integrated out there is no funnel between the SDs and the group effects.  The
model's potential is jitted as one function (initialization would otherwise compile each
primitive eagerly) and the chains start at dispersed, data-scaled points (:func:`_init_params`).
A fixed Σ (all zeros: the pooled model) leaves σ alone to sample, or nothing: then the draws of
(β, b) are made directly.  Either way β and b are then drawn in NumPy (:func:`_np_draw`).

References
----------
Harville, D. A. (1977). Maximum likelihood approaches to variance component estimation and to
related problems. JASA 72, 320–338.
Bates, D., Mächler, M., Bolker, B. & Walker, S. (2015). Fitting linear mixed-effects models
using lme4. Journal of Statistical Software 67(1), 1–48.
Lewandowski, D., Kurowicka, D. & Joe, H. (2009). Generating random correlation matrices based
on vines and extended onion method. Journal of Multivariate Analysis 100, 1989–2001.
Hoffman, M. D. & Gelman, A. (2014). The No-U-Turn Sampler. JMLR 15, 1593–1623.
Tierney, L. (1994). Markov chains for exploring posterior distributions. Annals of Statistics 22,
1701–1762 (independence Metropolis–Hastings).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import constrain_fn, potential_energy

from ..priors import Prior
from ..reduce import BlockStats, Shift, block_stats
from .nuts import INTERRUPT_EVERY, _interruptible, _InterruptibleNUTS, _to_numpyro  # (nuts switches JAX to float64)
from .blockmath import (_LOG2PI, _UNROLL_MAX_Q, _chunk, _corr_cholesky, _lkj_cholesky_logpdf, _np_draw,
                        _np_pieces, _psd_sqrt, _unrolled_cholesky)
from .imh import IMH_MIN_ACCEPT, _imh

__all__ = ["BlockStats", "block_stats", "log_marginal", "conditional_moments", "sample"]

_EXTRA_FIELDS = ("diverging", "accept_prob", "num_steps", "energy", "potential_energy")


# ----------------------------------------------------------------------------------------------
# the collapsed marginal and the conditionals (JAX)


class _JStats(NamedTuple):
    """:class:`BlockStats` as JAX arrays (a pytree)."""

    ZtWZ: jax.Array
    ZtWX: jax.Array
    ZtWy: jax.Array
    XtWX: jax.Array
    XtWy: jax.Array
    yWy: jax.Array
    sum_log_w: jax.Array
    n_obs: int


def _to_jax(stats: BlockStats) -> _JStats:
    f = jnp.float64
    return _JStats(jnp.asarray(stats.ZtWZ, f), jnp.asarray(stats.ZtWX, f), jnp.asarray(stats.ZtWy, f),
                   jnp.asarray(stats.XtWX, f), jnp.asarray(stats.XtWy, f), jnp.asarray(stats.yWy, f),
                   jnp.asarray(stats.sum_log_w, f), int(stats.n_obs))




class _BatchChol:
    """Cholesky factors C_j of a batch of small SPD matrices M (J, q, q), with triangular solves.

    For q ≤ :data:`_UNROLL_MAX_Q` the factorization and the solves are written out elementwise
    over the batch (XLA fuses them; per-matrix LAPACK calls dominate for tiny q); otherwise
    :func:`jax.numpy.linalg.cholesky` and :func:`jax.scipy.linalg.solve_triangular` are used.
    """

    def __init__(self, M: jax.Array) -> None:
        self.q = int(M.shape[-1])
        self.unrolled = self.q <= _UNROLL_MAX_Q
        if self.unrolled:
            self.entries = _unrolled_cholesky(M, jnp.sqrt, jnp.zeros)
        else:
            self.full = jnp.linalg.cholesky(M)

    def logdet(self) -> jax.Array:
        """Σ_j log|M_j|."""
        if self.unrolled:
            return 2.0 * sum((jnp.sum(jnp.log(self.entries[i][i])) for i in range(self.q)), jnp.zeros(()))
        return 2.0 * jnp.sum(jnp.log(jnp.diagonal(self.full, axis1=-2, axis2=-1)))

    def solve(self, B: jax.Array, *, transpose: bool = False) -> jax.Array:
        """C_j⁻¹B_j (or C_j⁻ᵀB_j with ``transpose``) for B of shape (J, q, m)."""
        if not self.unrolled:
            return jsl.solve_triangular(self.full, B, lower=True, trans="T" if transpose else 0)
        L, q = self.entries, self.q
        x: list[jax.Array | None] = [None] * q
        order = range(q - 1, -1, -1) if transpose else range(q)
        for i in order:
            t = B[:, i, :]
            others = range(i + 1, q) if transpose else range(i)
            for k in others:
                coef = L[k][i] if transpose else L[i][k]
                xk = x[k]
                assert xk is not None
                t = t - coef[:, None] * xk
            x[i] = t / L[i][i][:, None]
        return jnp.stack([v for v in x if v is not None], axis=1)


class _Pieces(NamedTuple):
    ll: jax.Array  # log p(y | σ, Σ)
    LP: jax.Array  # Cholesky factor of P = S0⁻¹ + X'V⁻¹X, (p, p)
    r: jax.Array  # X'V⁻¹y − X'V⁻¹X m0, (p,)
    C: _BatchChol  # Cholesky factors of M_j
    s2: jax.Array  # σ²


def _pieces(js: _JStats, m0: jax.Array, s0: jax.Array, sigma: jax.Array, Lam: jax.Array) -> _Pieces:
    """log p(y | σ, Σ = ΛΛ') and what β's conditional needs (see the module docstring)."""
    s2 = sigma**2
    q = Lam.shape[0]
    p = js.XtWX.shape[0]
    LtZWZL = jnp.einsum("ba,jbc,cd->jad", Lam, js.ZtWZ, Lam)
    C = _BatchChol(jnp.eye(q) + LtZWZL / s2)
    h = C.solve(jnp.einsum("ba,jb->ja", Lam, js.ZtWy)[..., None])[..., 0] / s2
    qq = js.yWy / s2 - jnp.sum(h * h)
    logdetV = js.n_obs * jnp.log(s2) - js.sum_log_w + C.logdet()
    if p == 0:
        ll = -0.5 * (js.n_obs * _LOG2PI + logdetV + qq)
        return _Pieces(ll, jnp.zeros((0, 0)), jnp.zeros(0), C, s2)
    G = C.solve(jnp.einsum("ba,jbk->jak", Lam, js.ZtWX)) / s2
    A = js.XtWX / s2 - jnp.einsum("jak,jal->kl", G, G)
    A = 0.5 * (A + A.T)
    bb = js.XtWy / s2 - jnp.einsum("jak,ja->k", G, h)
    Am0 = A @ m0
    r = bb - Am0
    quad = qq - 2.0 * bb @ m0 + m0 @ Am0
    if s0.ndim == 2:  # a covariance (β's prior in shifted coordinates, :meth:`poolwise.reduce.Shift.prior`)
        L0 = jnp.linalg.cholesky(s0)
        L0inv = jsl.solve_triangular(L0, jnp.eye(s0.shape[0]), lower=True)
        P = A + L0inv.T @ L0inv
        logdet_prior = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L0)))
    else:
        P = A + jnp.diag(1.0 / s0**2)
        logdet_prior = 2.0 * jnp.sum(jnp.log(s0))
    LP = jnp.linalg.cholesky(P)
    z = jsl.solve_triangular(LP, r, lower=True)
    quad = quad - z @ z
    logdetP = 2.0 * jnp.sum(jnp.log(jnp.diagonal(LP)))
    ll = -0.5 * (js.n_obs * _LOG2PI + logdetV + logdet_prior + logdetP + quad)
    return _Pieces(ll, LP, r, C, s2)


def _as_scalar(x: float | jax.Array) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.float64)


def log_marginal(
    stats: BlockStats, m0: np.ndarray | jax.Array, s0: np.ndarray | jax.Array, sigma: float | jax.Array,
    Lambda: np.ndarray | jax.Array,
) -> jax.Array:
    """log p(y | σ, Σ = ΛΛ') with β and every b_j integrated out.

    JAX-traceable and differentiable in ``sigma`` and ``Lambda``; O(J q²(q + p) + p³).

    Parameters
    ----------
    stats
        Sufficient statistics (:func:`block_stats`).
    m0, s0
        Prior β ~ N(m0, diag(s0²)), (p,) each.
    sigma
        Residual SD (1 when the standard errors are known).
    Lambda
        A (q, q) square root of Σ (``diag(s) @ L_R``); singular Λ allowed.

    Returns
    -------
    jax.Array
        A scalar.
    """
    if stats.shift.active:  # β's prior in the statistics' coordinates (the marginal is the same)
        m0, s0 = stats.shift.prior(np.asarray(m0, dtype=float), np.asarray(s0, dtype=float))
    pc = _pieces(_to_jax(stats), jnp.asarray(m0, jnp.float64), jnp.asarray(s0, jnp.float64), _as_scalar(sigma),
                 jnp.asarray(Lambda, jnp.float64))
    return pc.ll


def conditional_moments(
    stats: BlockStats, m0: np.ndarray, s0: np.ndarray, sigma: float, Lambda: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact conditional moments of β and b given (σ, Σ = ΛΛ').

    Returns
    -------
    beta_mean (p,), beta_cov (p, p) and K (J, q, q) with K_j = ΛM_j⁻¹Λ', such that
    β | σ, Σ, y ~ N(beta_mean, beta_cov) and
    b_j | β, σ, Σ, y ~ N(K_j[(Z'Wy)_j − (Z'WX)_jβ]/σ², K_j).  For statistics taken about a shift
    (:class:`poolwise.reduce.Shift`) β's moments are those of the model's own β and the group
    formula takes β* = ``stats.shift.shift(β)``.
    """
    if stats.shift.active:
        mean, cov, K = conditional_moments(replace(stats, shift=Shift()), *stats.shift.prior(
            np.asarray(m0, dtype=float), np.asarray(s0, dtype=float)), sigma, Lambda)
        Minv = stats.shift.back_matrix(stats.p)  # β = M⁻¹β* + c_y e₀
        return stats.shift.unshift(mean), Minv @ cov @ Minv.T, K
    Lam = jnp.asarray(Lambda, jnp.float64)
    pc = _pieces(_to_jax(stats), jnp.asarray(m0, jnp.float64), jnp.asarray(s0, jnp.float64), _as_scalar(sigma), Lam)
    p = stats.p
    if p:
        Pinv = jsl.cho_solve((pc.LP, True), jnp.eye(p))
        mean = jnp.asarray(m0) + Pinv @ pc.r
    else:
        Pinv, mean = jnp.zeros((0, 0)), jnp.zeros(0)
    Cinv_Lt = pc.C.solve(jnp.broadcast_to(Lam.T, (stats.n_groups,) + Lam.shape))  # C⁻¹Λ'
    K = jnp.einsum("jab,jac->jbc", Cinv_Lt, Cinv_Lt)
    return np.asarray(mean), np.asarray(Pinv), np.asarray(K)


class _HyperTarget:
    """Log posterior density of θ = (log σ, log s_1..q, CorrCholesky-unconstrained correlations).

    The density is that of NumPyro's unconstrained space for :func:`_hyper_model` (priors,
    log-Jacobians and the collapsed marginal), so it equals minus NumPyro's potential energy.
    Vectorized over rows of θ.
    """

    def __init__(self, stats: BlockStats, m0: np.ndarray, s0: np.ndarray, *, sigma_prior: Prior | None,
                 sd_priors: Sequence[Prior] | None, lkj_eta: float, Lam_fixed: np.ndarray | None,
                 correlated: bool) -> None:
        self.stats, self.m0, self.s0 = stats, m0, s0
        self.sigma_prior, self.sd_priors, self.lkj_eta, self.Lam_fixed = sigma_prior, sd_priors, lkj_eta, Lam_fixed
        q = stats.q
        self.n_sigma = int(sigma_prior is not None)
        self.n_sd = q if Lam_fixed is None else 0
        self.n_corr = q * (q - 1) // 2 if (Lam_fixed is None and q > 1 and correlated) else 0
        self.dim = self.n_sigma + self.n_sd + self.n_corr

    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray,
                                                 np.ndarray]:
        """σ (B,), s (B, q) or None, L_R (B, q, q) or None, Λ (B, q, q), log prior + log-Jacobian (B,)."""
        B, q = theta.shape[0], self.stats.q
        lp = np.zeros(B)
        i = 0
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            if self.n_sigma:
                assert self.sigma_prior is not None
                sigma = np.exp(theta[:, 0])
                lp = lp + self.sigma_prior.logpdf(sigma) + theta[:, 0]
                i = 1
            else:
                sigma = np.ones(B)
            sd: np.ndarray | None = None
            L: np.ndarray | None = None
            if self.n_sd:
                assert self.sd_priors is not None
                sd = np.exp(theta[:, i:i + q])
                for k, pr in enumerate(self.sd_priors):
                    lp = lp + pr.logpdf(sd[:, k]) + theta[:, i + k]
                i += q
                if self.n_corr:
                    L, logjac = _corr_cholesky(theta[:, i:i + self.n_corr], q)
                    lp = lp + _lkj_cholesky_logpdf(L, self.lkj_eta) + logjac
                    Lam = sd[:, :, None] * L
                else:
                    Lam = sd[:, :, None] * np.eye(q)
            else:
                assert self.Lam_fixed is not None
                Lam = np.broadcast_to(self.Lam_fixed, (B, q, q))
        return sigma, sd, L, Lam, lp

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        theta = np.atleast_2d(theta)
        sigma, _, _, Lam, lp = self.unpack(theta)
        ok = np.isfinite(lp) & np.isfinite(sigma) & (sigma > 0) & np.all(np.isfinite(Lam), axis=(1, 2))
        out = np.full(theta.shape[0], -np.inf)
        if ok.any():
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                ll = self._log_marginal(sigma[ok], np.ascontiguousarray(Lam[ok]))
            out[ok] = ll + lp[ok]
        return np.where(np.isnan(out), -np.inf, out)

    def _log_marginal(self, sigma: np.ndarray, Lam: np.ndarray) -> np.ndarray:
        """log p(y | σ, Λ) in chunks, −∞ where the evaluation lost its precision: far in the tails
        (σ → 0 with a huge group SD) the quadratic form (y − Xm0)'(V + XS0X')⁻¹(y − Xm0), a
        difference of terms of order y'Wy/σ², can come out negative — impossible for a positive
        definite form — and the log density then reads as a spurious, enormous maximum that an
        independence sampler would never leave."""
        out = np.empty(sigma.shape[0])
        step = _chunk(self.stats)
        for s in range(0, sigma.shape[0], step):
            pc = _np_pieces(self.stats, self.m0, self.s0, sigma[s:s + step], Lam[s:s + step])
            ll = pc.ll
            if pc.quad is not None:
                ll = np.where(pc.quad < 0, -np.inf, ll)
            out[s:s + step] = ll
        return np.where(np.isnan(out), -np.inf, out)

    def center(self) -> np.ndarray:
        """The data-scaled starting point of :func:`_init_params` (no jitter), as θ."""
        st = self.stats
        p, n = st.p, max(st.n_obs, 1)
        rss = st.yWy
        if p:
            beta_hat = np.linalg.lstsq(st.XtWX, st.XtWy, rcond=None)[0]
            rss = st.yWy - float(beta_hat @ st.XtWy)
        scale = math.sqrt(max(rss, 1e-12 * max(st.yWy, 1e-300)) / max(n - p, 1))
        zz = np.sqrt(np.maximum(np.einsum("jkk->k", st.ZtWZ) / n, 1e-300))
        parts: list[np.ndarray] = []
        if self.n_sigma:
            parts.append(np.array([math.log(0.8 * scale)]))
        if self.n_sd:
            parts.append(np.log(0.5 * scale / zz))
        parts.append(np.zeros(self.n_corr))
        return np.concatenate(parts)


# ----------------------------------------------------------------------------------------------
# the hyperparameter sampler


class _StackedPositive(dist.Distribution):  # type: ignore[misc]
    """Independent positive components with their own priors, as one vector site."""

    arg_constraints: dict[str, Any] = {}
    support = constraints.independent(constraints.positive, 1)

    def __init__(self, parts: Sequence[dist.Distribution]) -> None:
        self.parts = list(parts)
        super().__init__(batch_shape=(), event_shape=(len(self.parts),))

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        keys = jax.random.split(key, len(self.parts))
        return jnp.stack([jnp.abs(d.sample(k, sample_shape)) for d, k in zip(self.parts, keys)], axis=-1)

    def log_prob(self, value: jax.Array) -> jax.Array:
        return sum((d.log_prob(value[..., k]) for k, d in enumerate(self.parts)), jnp.zeros(value.shape[:-1]))


def _hyper_model(marginal: Callable[[jax.Array, jax.Array], jax.Array], q: int, *, sigma_prior: Prior | None,
                 sd_priors: Sequence[Prior] | None, lkj_eta: float, Lam_fixed: jax.Array | None,
                 correlated: bool = True) -> Callable[[], None]:
    """The NumPyro model of the hyperparameters; ``marginal(σ, Λ)`` is log p(y | σ, Σ = ΛΛ')."""
    sigma_dist = _to_numpyro(sigma_prior) if sigma_prior is not None else None
    sd_dist = _StackedPositive([_to_numpyro(pr) for pr in sd_priors]) if sd_priors is not None else None

    def model() -> None:
        sigma = numpyro.sample("sigma", sigma_dist) if sigma_dist is not None else jnp.asarray(1.0)
        if Lam_fixed is not None:
            Lam = Lam_fixed
        else:
            sd = numpyro.sample("sd", sd_dist)
            if q > 1 and correlated:
                L = numpyro.sample("L", dist.LKJCholesky(q, lkj_eta))
                Lam = sd[:, None] * L
            else:  # one term, or independent terms (lme4's ||): Σ diagonal
                Lam = jnp.diag(sd)
        numpyro.factor("marginal", marginal(sigma, Lam))

    return model


def _init_params(stats: BlockStats, key: jax.Array, chains: int, *, has_sigma: bool, with_sd: bool,
                 correlated: bool = True) -> dict[str, jax.Array]:
    """Dispersed, data-scaled starting points in the unconstrained space, one per chain.

    Centre: σ at 0.8 × the root mean weighted squared residual of least squares, s_k at half of
    that over the root mean weighted square of z_k, R = I; each coordinate then jittered by
    U(−1, 1) on the unconstrained (log / CorrCholesky) scale.  Starting at the data's scale
    spares the warmup a long walk from the prior's (or from NumPyro's default box around 1).
    """
    q, p, n = stats.q, stats.p, max(stats.n_obs, 1)
    rss = stats.yWy
    if p:
        beta_hat = np.linalg.lstsq(stats.XtWX, stats.XtWy, rcond=None)[0]
        rss = stats.yWy - float(beta_hat @ stats.XtWy)
    scale = math.sqrt(max(rss, 1e-12 * max(stats.yWy, 1e-300)) / max(n - p, 1))
    zz = np.sqrt(np.maximum(np.einsum("jkk->k", stats.ZtWZ) / n, 1e-300))
    k_sigma, k_sd, k_L = jax.random.split(key, 3)
    out: dict[str, jax.Array] = {}
    if has_sigma:
        out["sigma"] = math.log(0.8 * scale) + jax.random.uniform(k_sigma, (chains,), minval=-1.0, maxval=1.0)
    if with_sd:
        centre = jnp.log(0.5 * scale / jnp.asarray(zz))
        out["sd"] = centre[None, :] + jax.random.uniform(k_sd, (chains, q), minval=-1.0, maxval=1.0)
        if q > 1 and correlated:
            out["L"] = jax.random.uniform(k_L, (chains, q * (q - 1) // 2), minval=-1.0, maxval=1.0)
    return out


def _nuts_hyper(stats: BlockStats, m0: np.ndarray, s0: np.ndarray, *, sigma_prior: Prior | None,
                sd_priors: Sequence[Prior] | None, lkj_eta: float, Lam_fixed: np.ndarray | None, correlated: bool,
                seed: int, chains: int, draws: int, warmup: int, target_accept: float, max_tree_depth: int,
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(σ, s, L_R) by NUTS (NumPyro) on the collapsed marginal: constrained draws and sample stats."""
    q = stats.q
    js = _to_jax(stats)
    jm0, js0 = jnp.asarray(m0), jnp.asarray(s0)
    jLam = None if Lam_fixed is None else jnp.asarray(Lam_fixed)
    model = _hyper_model(lambda sig, lam: _pieces(js, jm0, js0, sig, lam).ll, q, sigma_prior=sigma_prior,
                         sd_priors=sd_priors if Lam_fixed is None else None, lkj_eta=lkj_eta,
                         Lam_fixed=jLam, correlated=correlated)
    # NUTS on the model's potential, jitted as one function: NumPyro's initialization would
    # otherwise run the model eagerly and compile each of its primitives separately
    potential = jax.jit(lambda u: potential_energy(model, (), {}, u))
    # (Ctrl-C stops the run within INTERRUPT_EVERY iterations and raises KeyboardInterrupt)
    kernel = _InterruptibleNUTS(potential_fn=potential, target_accept_prob=target_accept,
                                max_tree_depth=max_tree_depth, every=INTERRUPT_EVERY)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains,
                chain_method="vectorized", progress_bar=False)
    key_init, key_run = jax.random.split(jax.random.PRNGKey(seed))
    init = _init_params(stats, key_init, chains, has_sigma=sigma_prior is not None, with_sd=Lam_fixed is None,
                        correlated=correlated)
    if chains == 1:  # NumPyro takes one chain's starting point without a chain axis
        init = {k: v[0] for k, v in init.items()}
    _interruptible(lambda: mcmc.run(key_run, init_params=init, extra_fields=_EXTRA_FIELDS))
    unconstrained = mcmc.get_samples(group_by_chain=False)
    constrain = jax.jit(jax.vmap(lambda u: constrain_fn(model, (), {}, u)))
    samples = {k: np.asarray(v).reshape((chains, draws) + v.shape[1:])
               for k, v in constrain(unconstrained).items()}
    extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    stats_out = {
        "diverging": extra["diverging"].astype(bool),
        "acceptance_rate": extra["accept_prob"].astype(float),
        "n_steps": extra["num_steps"].astype(np.int64),
        "energy": extra["energy"].astype(float),
        "lp": -extra["potential_energy"].astype(float),
    }
    return samples, stats_out


def sample(
    stats: BlockStats,
    *,
    m0: np.ndarray,
    s0: np.ndarray,
    sigma_prior: Prior | None,
    sd_priors: Sequence[Prior] | None,
    lkj_eta: float,
    has_sigma: bool,
    Sigma_fixed: np.ndarray | None = None,
    correlated: bool = True,
    seed: int,
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    target_accept: float = 0.9,
    max_tree_depth: int = 10,
    hyper: str = "imh",
) -> dict[str, Any]:
    """Posterior draws: (σ, s, R) on the collapsed marginal, then β and b exactly.

    The hyperparameters are drawn by independence Metropolis–Hastings with an adapted t proposal
    (:func:`_imh`; NumPy only, no compilation), falling back to NUTS (NumPyro) when its
    acceptance rate is below :data:`IMH_MIN_ACCEPT` or the proposal cannot be built; β and b are
    then drawn from their exact conditionals in NumPy.

    Parameters
    ----------
    stats
        Sufficient statistics (:func:`block_stats`).
    m0, s0
        Prior β ~ N(m0, diag(s0²)).
    sigma_prior
        Prior of σ (used when ``has_sigma``).
    sd_priors
        One prior per group term (q of them); unused when ``Sigma_fixed`` is given.
    lkj_eta
        Concentration of the LKJ prior on the correlation matrix (1 = uniform).
    correlated
        ``False`` for independent group terms (lme4's ``||``): Σ diagonal, no correlation
        sampled, ``"corr"`` returned as ``None``.
    has_sigma
        ``False`` when the standard errors are known (σ ≡ 1).
    Sigma_fixed
        A fixed (q, q) covariance of the group terms (all zeros: the pooled model); then no SD
        or correlation is sampled, and with ``has_sigma=False`` the draws are made directly.
    seed
        Seed (same seed, same draws).
    chains, draws
        Chains and kept draws per chain.
    warmup, target_accept, max_tree_depth
        NUTS settings (used by ``hyper="nuts"`` and by the fallback).
    hyper
        ``"imh"`` (default) or ``"nuts"``: the sampler of the hyperparameters.

    Returns
    -------
    dict
        ``"sigma"`` (C, D) or ``None``; ``"sd"`` (C, D, q) or ``None`` when Σ is fixed;
        ``"corr"`` (C, D, q, q), or ``None`` when Σ is fixed, q = 1 or the terms are
        independent; ``"beta"`` (C, D, p); ``"b"`` (C, D, J, q); ``"sample_stats"``:
        ``accepted`` and ``lp`` (IMH) or ``diverging``, ``acceptance_rate``, ``n_steps``,
        ``energy`` and ``lp`` (NUTS), each (C, D); ``"info"`` with ``seconds``,
        ``seconds_hyper``, ``seconds_conditional``, ``divergences``, ``hyper_sampler``,
        ``hyper_dims`` and the sampler's settings and diagnostics (``acceptance_rate``;
        ``hyper_fallback`` saying why NUTS replaced IMH).

    Raises
    ------
    ValueError
        For priors or a fixed Σ of the wrong size, or an unknown ``hyper``.
    """
    t0 = time.perf_counter()
    q, p, J = stats.q, stats.p, stats.n_groups
    # β's prior in the coordinates the statistics were taken in (:class:`poolwise.reduce.Shift`)
    m0, s0 = stats.shift.prior(np.asarray(m0, dtype=float).reshape(p), np.asarray(s0, dtype=float).reshape(p))
    Lam_fixed: np.ndarray | None = None
    if hyper not in ("imh", "nuts"):
        raise ValueError(f"hyper must be 'imh' or 'nuts', got {hyper!r}.")
    if Sigma_fixed is not None:
        S = np.asarray(Sigma_fixed, dtype=float)
        if S.shape != (q, q):
            raise ValueError(f"Sigma_fixed must be {q}×{q}, got shape {S.shape}.")
        Lam_fixed = _psd_sqrt(S)
    elif sd_priors is None or len(sd_priors) != q:
        raise ValueError(f"Give one SD prior per group term ({q}).")
    if has_sigma and sigma_prior is None:
        raise ValueError("A model with σ needs sigma_prior.")
    if lkj_eta <= 0:
        raise ValueError("lkj_eta must be positive.")
    ss_hyper, ss_cond = np.random.SeedSequence(seed).spawn(2)
    C, D = chains, draws
    correlated = correlated and q > 1
    target = _HyperTarget(stats, m0, s0, sigma_prior=sigma_prior if has_sigma else None,
                          sd_priors=sd_priors if Lam_fixed is None else None, lkj_eta=lkj_eta, Lam_fixed=Lam_fixed,
                          correlated=correlated)
    hyper_dims = target.dim
    info: dict[str, Any] = {"hyper_dims": hyper_dims}
    sigma = np.ones((C, D))
    sd: np.ndarray | None = None
    L: np.ndarray | None = None
    stats_out: dict[str, np.ndarray]
    if hyper_dims:
        use_nuts = hyper == "nuts"
        if not use_nuts:
            res = _imh(target, C, D, np.random.default_rng(ss_hyper))
            if isinstance(res, str):
                reason = res
            elif res.info["acceptance_rate"] < IMH_MIN_ACCEPT:
                reason = (f"the independence MH acceptance rate was {res.info['acceptance_rate']:.2f} "
                          f"(< {IMH_MIN_ACCEPT})")
            else:
                reason = ""
            if reason:
                use_nuts = True
                info["hyper_fallback"] = (f"The hyperparameters were sampled by NUTS on the collapsed marginal: the "
                                          f"independence MH sampler failed ({reason}).")
                if not isinstance(res, str):
                    info["imh_acceptance_rate"] = res.info["acceptance_rate"]
            else:
                assert not isinstance(res, str)
                sig_f, sd_f, L_f, _, _ = target.unpack(res.theta.reshape(C * D, hyper_dims))
                if has_sigma:
                    sigma = sig_f.reshape(C, D)
                if sd_f is not None:
                    sd = sd_f.reshape(C, D, q)
                if L_f is not None:
                    L = L_f.reshape(C, D, q, q)
                stats_out = {"accepted": res.accepted, "lp": res.lp}
                info.update(res.info)
                info.update({"hyper_sampler": "independence MH (t proposal)", "divergences": 0, "warmup": 0})
        if use_nuts:
            samples, stats_out = _nuts_hyper(
                stats, m0, s0, sigma_prior=sigma_prior if has_sigma else None, sd_priors=sd_priors,
                lkj_eta=lkj_eta, Lam_fixed=Lam_fixed, correlated=correlated, seed=seed, chains=C, draws=D,
                warmup=warmup, target_accept=target_accept, max_tree_depth=max_tree_depth)
            if has_sigma:
                sigma = samples["sigma"].astype(float)
            if Lam_fixed is None:
                sd = samples["sd"].astype(float)
                if correlated:
                    L = samples["L"].astype(float)
            info.update({"hyper_sampler": "NUTS on the collapsed marginal", "warmup": warmup,
                         "target_accept": target_accept, "divergences": int(stats_out["diverging"].sum()),
                         "acceptance_rate": float(stats_out["acceptance_rate"].mean())})
    else:
        ll = float(_np_pieces(stats, m0, s0, np.ones(1), Lam_fixed[None]).ll[0]) if Lam_fixed is not None else 0.0
        stats_out = {"lp": np.full((C, D), ll)}
        info.update({"hyper_sampler": "none (nothing to sample)", "divergences": 0, "warmup": 0})
    corr: np.ndarray | None = None
    if Lam_fixed is not None:
        Lam = np.broadcast_to(Lam_fixed, (C, D, q, q))
    else:
        assert sd is not None
        if L is not None:
            corr = L @ np.swapaxes(L, -1, -2)
            Lam = sd[..., :, None] * L
        else:
            Lam = sd[..., :, None] * np.eye(q)
    t1 = time.perf_counter()
    beta, b = _np_draw(stats, m0, s0, sigma.reshape(-1), np.ascontiguousarray(Lam.reshape(-1, q, q)),
                       np.random.default_rng(ss_cond))
    beta = stats.shift.unshift(beta)
    t2 = time.perf_counter()
    info.update({"seconds": t2 - t0, "seconds_hyper": t1 - t0, "seconds_conditional": t2 - t1})
    return {
        "sigma": sigma if has_sigma else None,
        "sd": sd,
        "corr": corr,
        "beta": beta.reshape(C, D, p),
        "b": b.reshape(C, D, J, q),
        "sample_stats": stats_out,
        "info": info,
    }
