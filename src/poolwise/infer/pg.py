"""Exact inference for bernoulli and binomial models by Pólya-Gamma Gibbs sampling.

Model, for rows i (successes y_i of n_i trials; bernoulli: n_i = 1) in groups j = g[i]:

    η_i = x_i'β + offset_i + z_i'b_j,   y_i ~ Binomial(n_i, logit⁻¹(η_i)),
    b_j ~ MVN(0, Σ),  Σ = diag(s) R diag(s),  β ~ N(m0, diag(s0²)),  s_k ~ prior,  R ~ LKJ(η),

with prior weights w_i multiplying each row's log-likelihood.

Augmentation
------------
With κ_i = w_i(y_i − n_i/2) and ω_i ~ PG(w_i n_i, 0) (Polson, Scott & Windle, 2013),

    exp(η)^{w y} / (1 + exp(η))^{w n} = 2^{−w n} exp(κη) E[exp(−ωη²/2)],

so that given the weights ω the model is Gaussian in η: the pseudo-outcomes u_i = κ_i/ω_i − offset_i
are N(x_i'β + z_i'b_j, 1/ω_i), the gaussian model of :mod:`poolwise.infer.collapsed` with known
per-row variances 1/ω_i.  And ω_i | η_i ~ PG(w_i n_i, η_i).

Counts reduction
----------------
Rows with the same group, predictor values and offset share η; the sum of independent PG(h_i, η)
draws is PG(Σh_i, η) and the κ add up, so those rows are merged into one pattern first
(:func:`merge_rows`): a bernoulli model with discrete predictors costs O(patterns), not O(rows).

One Gibbs sweep per chain (the chains are vectorized: arrays with a leading chain axis)
----------------------------------------------------------------------------------------
(a) θ = (log s, CorrCholesky-unconstrained correlations) by random-walk Metropolis on the
    *collapsed* target p(θ | ω, y) ∝ p(θ) ∫∫ p(u | β, b, ω) p(b | θ) p(β) dβ db, whose value needs
    only the weighted per-group sums Z_j'WZ_j, Z_j'WX_j, Z_j'Wu and the totals X'WX, X'Wu, u'Wu
    (:func:`collapsed_log_target`; the algebra is :mod:`poolwise.infer.collapsed`'s, with σ = 1
    and W = diag(ω)): a batched q × q Cholesky over the groups.  The proposal's covariance and
    scale are adapted during warmup only (target acceptance :data:`TARGET_ACCEPT`).  Updating
    the SDs given the group values instead mixes far worse when groups hold much data.
(b) β and every b_j jointly from their exact Gaussian conditional: β from its collapsed
    conditional, then each b_j given β.
(c) ω | η ~ PG(h, η), one vectorized :func:`polyagamma.random_polyagamma` call.

A fixed Σ (the unpooled model, a point of the pooling path) skips (a); a pooled model (Σ = 0, or
no group term) draws β alone.  Chains start from dispersed θ (random SDs around half the data
scale, random correlations) so that R-hat can see chains that disagree.  Everything here is
NumPy/SciPy and ``polyagamma``: nothing is compiled.

References
----------
Polson, N. G., Scott, J. G. & Windle, J. (2013). Bayesian inference for logistic models using
Pólya-Gamma latent variables. JASA 108, 1339–1349.
Windle, J., Polson, N. G. & Scott, J. G. (2014). Sampling Pólya-Gamma random variates: alternate
and approximate techniques. arXiv:1405.0506.
Roberts, G. O. & Rosenthal, J. S. (2009). Examples of adaptive MCMC. JCGS 18, 349–367.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..errors import SpecError
from ..priors import Prior
from ..spec import BoundSpec, ModelSpec
from . import BlockDraws, Draws, Progress
from .blockmath import _LOG2PI, _corr_cholesky, _lkj_cholesky_logpdf, _psd_sqrt, _unrolled_cholesky, prior_precision

__all__ = ["FAMILIES", "unsupported", "unsupported_bound", "merge_rows", "Patterns", "collapsed_log_target",
           "default_theta_steps",
           "sample", "TARGET_ACCEPT"]

#: the families this sampler fits (logit link)
FAMILIES = ("bernoulli", "binomial")
#: acceptance rate the random-walk proposal of θ is tuned to during warmup
TARGET_ACCEPT = 0.3
#: the fewest and the most random-walk Metropolis steps on θ per Gibbs sweep (:func:`default_theta_steps`)
THETA_STEPS = (2, 8)


def default_theta_steps(n_patterns: int, n_groups: int, q: int) -> int:
    """Random-walk steps on θ per sweep, balanced against the Pólya-Gamma draws.

    A step costs one collapsed evaluation, O(J q³); a sweep's weights cost O(patterns).  Measured
    on one core (4 chains): the draws of the weights of 5,000 bernoulli rows cost about as much
    as 8 steps for 200 groups × 2 terms, and ESS per CPU second peaked there (4 steps: −20 %,
    12: −8 %); on cbpp (56 binomial rows, 15 herds) 2 steps beat 4 and 8 (the slowest quantity is
    a coefficient, not the SD).  So about one step per 1.5 patterns per group term, within
    :data:`THETA_STEPS`; no more than 8: on Contraception (1,547 patterns, 60 districts, one term) ESS
    per CPU second was 132, 156, 190, 197 and 141 at 1, 2, 4, 8 and 16 steps (one process, loaded machine).
    """
    per = n_patterns / max(1, n_groups * q)
    return int(min(THETA_STEPS[1], max(THETA_STEPS[0], round(per / 1.5))))


def unsupported(spec: ModelSpec) -> str | None:
    """``None`` when :func:`sample` fits ``spec``'s structure, else what it does not cover."""
    if spec.fam.name not in FAMILIES:
        return f"the {spec.fam.name} family"
    if len(spec.group_terms) > 1:
        return "several grouping factors or group terms"
    return None


def unsupported_bound(bound: BoundSpec) -> str | None:
    """:func:`unsupported` with what the data add (the blocks a per-term pooling makes)."""
    why = unsupported(bound.spec)
    if why is None and len(bound.blocks) > 1:
        return "several blocks of group terms"
    return why


# ----------------------------------------------------------------------------------------------
# rows merged into patterns


@dataclass(frozen=True)
class Patterns:
    """Rows merged by (group, predictors, group-term values, offset).

    Attributes
    ----------
    X, Z
        Common and group-term designs of the patterns, (m, p) and (m, q).
    group
        Group index of each pattern, (m,).
    offset
        Offset of each pattern, (m,).
    h
        The Pólya-Gamma shape Σ w_i n_i of each pattern, (m,) (all positive).
    kappa
        Σ w_i (y_i − n_i/2) of each pattern, (m,).
    n_rows
        Rows merged (rows with no trials or zero weight are left out).
    """

    X: np.ndarray
    Z: np.ndarray
    group: np.ndarray
    offset: np.ndarray
    h: np.ndarray
    kappa: np.ndarray
    n_rows: int

    @property
    def m(self) -> int:
        return int(self.h.shape[0])


def merge_rows(y: np.ndarray, trials: np.ndarray | None, X: np.ndarray, Z: np.ndarray, group: np.ndarray,
               offset: np.ndarray, weights: np.ndarray, *, merge: bool = True) -> Patterns:
    """Merge rows that share η into patterns (one sort; exact: the sum of PG(h_i, η) is PG(Σh_i, η)).

    Parameters
    ----------
    y
        Successes per row, (n,).
    trials
        Trials per row, (n,); ``None`` for bernoulli (one trial).
    X, Z
        Common and group-term designs, (n, p) and (n, q) (q may be 0).
    group
        Group index per row, (n,) (zeros without a group term).
    offset, weights
        Offset and prior weight per row, (n,).
    merge
        ``False``: one pattern per row (sorted by group), for checks of the merge itself.

    Returns
    -------
    Patterns
    """
    y = np.asarray(y, dtype=float)
    n = y.size
    trials_ = np.ones(n) if trials is None else np.asarray(trials, dtype=float)
    w = np.asarray(weights, dtype=float)
    h = w * trials_
    kappa = w * (y - 0.5 * trials_)
    keep = h > 0
    X = np.asarray(X, dtype=float).reshape(n, -1)[keep]
    Z = np.asarray(Z, dtype=float).reshape(n, -1)[keep]
    group = np.asarray(group, dtype=np.int64)[keep]
    offset = np.asarray(offset, dtype=float)[keep]
    if merge:
        key = np.column_stack([group.astype(float), X, Z, offset])
        _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)  # sorted by group first
        inv = inv.ravel()
    else:
        first = np.argsort(group, kind="stable")
        inv = np.empty(first.size, dtype=np.int64)
        inv[first] = np.arange(first.size)
    m = first.size
    return Patterns(X=X[first], Z=Z[first], group=group[first], offset=offset[first],
                    h=np.bincount(inv, h[keep], minlength=m), kappa=np.bincount(inv, kappa[keep], minlength=m),
                    n_rows=int(keep.sum()))


# ----------------------------------------------------------------------------------------------
# the weighted sums given ω, and the collapsed target


class _Sums(NamedTuple):
    """The Gaussian model's statistics given ω, with a leading chain axis (C)."""

    ZtWZ: np.ndarray  # (C, J, q, q)
    ZtWX: np.ndarray  # (C, J, q, p)
    ZtWu: np.ndarray  # (C, J, q)
    XtWX: np.ndarray  # (C, p, p)
    XtWu: np.ndarray  # (C, p)
    uWu: np.ndarray  # (C,)
    sum_log_w: np.ndarray  # (C,)
    n: int


class _Design:
    """What the sums need of the patterns, computed once: products of their columns and the
    sparse group indicator."""

    def __init__(self, pat: Patterns, n_groups: int) -> None:
        self.pat = pat
        X, Z = pat.X, pat.Z
        self.p, self.q, self.J, self.m = X.shape[1], Z.shape[1], n_groups, pat.m
        p, q = self.p, self.q
        self.zz_idx = [(a, b) for a in range(q) for b in range(a, q)]
        self.xx_idx = [(a, b) for a in range(p) for b in range(a, p)]
        self.XX = np.column_stack([X[:, a] * X[:, b] for a, b in self.xx_idx]) if p else np.zeros((pat.m, 0))
        # per-group features weighted by ω: z_a z_b, z_a x_k
        feats = [Z[:, a] * Z[:, b] for a, b in self.zz_idx] + [Z[:, a] * X[:, k] for a in range(q) for k in range(p)]
        self.F = np.column_stack(feats) if feats else np.zeros((pat.m, 0))
        self.FT = np.ascontiguousarray(self.F.T)
        if np.any(np.diff(pat.group) < 0):
            raise ValueError("the patterns must be sorted by group")
        self.present, self.starts = np.unique(pat.group, return_index=True)

    def sums(self, omega: np.ndarray, *, constants: bool = True) -> _Sums:
        """The statistics of the pseudo-outcomes u = κ/ω − offset with weights ω (C, m: chains by
        patterns), per chain.  ``constants=False`` leaves out u'Wu and Σ log ω (zeros), which do not
        depend on θ: the Metropolis ratio given ω does not need them."""
        pat, p, q, J, m = self.pat, self.p, self.q, self.J, self.m
        C = omega.shape[0]
        wu = pat.kappa - omega * pat.offset  # ω u, (C, m)
        if constants:
            uWu, sum_log_w = np.einsum("cm,cm->c", wu, wu / omega), np.log(omega).sum(axis=1)
        else:
            uWu = sum_log_w = np.zeros(C)
        xx = omega @ self.XX  # (C, p(p+1)/2)
        XtWX = np.empty((C, p, p))
        for k, (a, b) in enumerate(self.xx_idx):
            XtWX[:, a, b] = XtWX[:, b, a] = xx[:, k]
        XtWu = wu @ pat.X
        if q == 0:
            return _Sums(np.zeros((C, 0, 0, 0)), np.zeros((C, 0, 0, p)), np.zeros((C, 0, 0)), XtWX, XtWu, uWu,
                         sum_log_w, m)
        k_f = self.F.shape[1]
        W = np.empty((k_f + q, C, m))  # ω f_k for each feature, then ωu z_a; the patterns sorted by group
        np.multiply(omega[None], self.FT[:, None, :], out=W[:k_f])
        np.multiply(wu[None], pat.Z.T[:, None, :], out=W[k_f:])
        per = np.zeros((k_f + q, C, J))
        per[:, :, self.present] = np.add.reduceat(W, self.starts, axis=2)
        ZtWZ = np.empty((C, J, q, q))
        for k, (a, b) in enumerate(self.zz_idx):
            ZtWZ[:, :, a, b] = ZtWZ[:, :, b, a] = per[k]
        nz = len(self.zz_idx)
        ZtWX = per[nz:k_f].reshape(q, p, C, J).transpose(2, 3, 0, 1)
        ZtWu = per[k_f:].transpose(1, 2, 0)
        return _Sums(ZtWZ, ZtWX, ZtWu, XtWX, XtWu, uWu, sum_log_w, m)


#: matrices up to this size are factorized entry by entry over the batch (else batched LAPACK)
_UNROLL_MAX = 6


class _Chol:
    """Lower Cholesky factors of a batch of small SPD matrices (..., k, k) with triangular solves.

    For k ≤ :data:`_UNROLL_MAX` the factorization is written out entry by entry over the batch
    (:func:`~poolwise.infer.blockmath._unrolled_cholesky`: one vectorized operation per entry,
    far fewer Python-level calls than LAPACK on stacks of tiny matrices), else batched LAPACK.  A
    matrix that is not positive definite gives NaN, never an exception.  Callers silence NumPy's
    floating-point warnings once, around the sampler (no ``errstate`` per call: it costs more
    than the arithmetic here).
    """

    def __init__(self, M: np.ndarray | None) -> None:
        if M is None:  # filled by take() / cat()
            return
        self.k = int(M.shape[-1])
        self.unrolled = self.k <= _UNROLL_MAX
        if self.unrolled:
            self.L = _unrolled_cholesky(M, np.sqrt, np.zeros)
        else:
            try:
                self.full = np.linalg.cholesky(M)
            except np.linalg.LinAlgError:
                self.full = _lapack_each(M)

    def sum_log_diag(self) -> np.ndarray:
        """Σ log C_ii per matrix (½ log|M|)."""
        if self.unrolled:
            out = np.log(self.L[0][0])
            for i in range(1, self.k):
                out = out + np.log(self.L[i][i])
            return np.asarray(out)
        return np.asarray(np.log(np.diagonal(self.full, axis1=-2, axis2=-1)).sum(axis=-1))

    def solve(self, B: np.ndarray, *, transpose: bool = False) -> np.ndarray:
        """C⁻¹B (or C⁻ᵀB) for B (..., k, m) with the batch shape in full."""
        if not self.unrolled:
            Lm = np.swapaxes(self.full, -1, -2) if transpose else self.full
            return np.asarray(np.linalg.solve(Lm, B))
        L, k = self.L, self.k
        out = np.empty(B.shape)
        for i in (range(k - 1, -1, -1) if transpose else range(k)):
            t = B[..., i, :]
            for j in (range(i + 1, k) if transpose else range(i)):
                t = t - (L[j][i] if transpose else L[i][j])[..., None] * out[..., j, :]
            out[..., i, :] = t / L[i][i][..., None]
        return out

    def _like(self) -> _Chol:
        out = _Chol(None)
        out.k, out.unrolled = self.k, self.unrolled
        return out

    def take(self, idx: np.ndarray) -> _Chol:
        """The factors at positions ``idx`` of the leading axis."""
        out = self._like()
        if self.unrolled:
            out.L = [[e[idx] for e in row] for row in self.L]
        else:
            out.full = self.full[idx]
        return out

    def cat(self, other: _Chol) -> _Chol:
        """This batch, then ``other``'s, along the leading axis."""
        out = self._like()
        if self.unrolled:
            out.L = [[np.concatenate([x, y]) for x, y in zip(ra, rb)] for ra, rb in zip(self.L, other.L)]
        else:
            out.full = np.concatenate([self.full, other.full])
        return out


def _lapack_each(M: np.ndarray) -> np.ndarray:
    flat = M.reshape((-1,) + M.shape[-2:])
    out = np.full(flat.shape, np.nan)
    for i in range(flat.shape[0]):
        try:
            out[i] = np.linalg.cholesky(flat[i])
        except np.linalg.LinAlgError:
            pass
    return out.reshape(M.shape)


class _Pieces(NamedTuple):
    ll: np.ndarray  # log p(u | θ, ω), (C,)
    LP: _Chol | None  # Cholesky factors of the precision of β | θ, ω, (C, p, p)
    r: np.ndarray  # (C, p)
    Cm: _Chol | None  # Cholesky factors of M_j, (C, J, q, q)


def _lam_t(Lam: np.ndarray, V: np.ndarray, *, transpose: bool = True) -> np.ndarray:
    """Λ_c'V_cj (or Λ_cV_cj) for Lam (C, q, q) and V (C, J, q, ...) → (C, J, q, ...), written out
    over the q × q entries (q is small: faster than einsum on these shapes)."""
    C, q = Lam.shape[0], Lam.shape[-1]
    shape = (C, 1) + (1,) * (V.ndim - 3)
    out = np.empty(V.shape)
    for a in range(q):
        acc = (Lam[:, 0, a] if transpose else Lam[:, a, 0]).reshape(shape) * V[:, :, 0]
        for k in range(1, q):
            acc += (Lam[:, k, a] if transpose else Lam[:, a, k]).reshape(shape) * V[:, :, k]
        out[:, :, a] = acc
    return out


def _pieces(s: _Sums, Lam: np.ndarray | None, m0: np.ndarray, Q0: np.ndarray, logdet_prior: float) -> _Pieces:
    """The collapsed log density of the pseudo-outcomes and the factors of the conditionals.

    With M_j = I + Λ'Z_j'WZ_jΛ (Cholesky C_j), G_j = C_j⁻¹Λ'Z_j'WX_j and h_j = C_j⁻¹Λ'Z_j'Wu_j:
    A = X'WX − ΣG'G, bb = X'Wu − ΣG'h, qq = u'Wu − Σh'h, log|V| = −Σlog ω + Σ log|M_j|; β is
    integrated against N(m0, S0) with P = S0⁻¹ + A and r = bb − A m0 (see
    :mod:`poolwise.infer.collapsed`).
    """
    C, p = s.XtWX.shape[0], s.XtWX.shape[1]
    if Lam is None or Lam.shape[-1] == 0:
        A, bb, qq = s.XtWX, s.XtWu, s.uWu
        logdetV = -s.sum_log_w
        Cm = None
    else:
        q = Lam.shape[-1]
        if q == 1:
            LZL = Lam[:, None, :, :] ** 2 * s.ZtWZ
        else:  # Λ'(Z'WZ)Λ = Λ'(Λ'Z'WZ)' as Z'WZ is symmetric
            LZL = _lam_t(Lam, np.swapaxes(_lam_t(Lam, s.ZtWZ), -1, -2))
        Cm = _Chol(LZL + np.eye(q))
        h = Cm.solve(_lam_t(Lam, s.ZtWu)[..., None])[..., 0]  # (C, J, q)
        qq = s.uWu - (h * h).sum(axis=(1, 2))
        logdetV = -s.sum_log_w + 2.0 * Cm.sum_log_diag().sum(axis=-1)
        if p:
            G = Cm.solve(_lam_t(Lam, s.ZtWX)).reshape(C, -1, p)  # (C, J·q, p)
            Gt = np.swapaxes(G, 1, 2)
            A = s.XtWX - Gt @ G
            bb = s.XtWu - (Gt @ h.reshape(C, -1, 1))[..., 0]
        else:
            A, bb = s.XtWX, s.XtWu
    if not p:
        ll = -0.5 * (s.n * _LOG2PI + logdetV + qq)
        return _Pieces(np.where(np.isnan(ll), -np.inf, ll), None, np.zeros((C, 0)), Cm)
    A = 0.5 * (A + np.swapaxes(A, 1, 2))
    Am0 = A @ m0
    r = bb - Am0
    quad = qq - 2.0 * bb @ m0 + Am0 @ m0
    LP = _Chol(A + Q0)
    z = LP.solve(r[..., None])[..., 0]
    quad = quad - (z * z).sum(axis=1)
    ll = -0.5 * (s.n * _LOG2PI + logdetV + logdet_prior + 2.0 * LP.sum_log_diag() + quad)
    return _Pieces(np.where(np.isnan(ll), -np.inf, ll), LP, r, Cm)


def collapsed_log_target(pat: Patterns, n_groups: int, omega: np.ndarray, Sigma: np.ndarray | None,
                         m0: np.ndarray, s0: np.ndarray) -> float:
    """log p(u | Σ, ω): the log density of the pseudo-outcomes u = κ/ω − offset of the patterns
    under u ~ N(X m0, diag(1/ω) + Z Σ Z' (block diagonal by group) + X diag(s0²) X'), with β and
    every group's values integrated out, from the per-group sums alone (no n × n matrix).

    The building block of the θ step of :func:`sample`; exposed for tests and experts.
    ``Sigma=None`` (or 0 × 0): no group term.
    """
    d = _Design(pat, n_groups)
    s = d.sums(np.asarray(omega, dtype=float)[None, :])
    Q0, logdet_prior = prior_precision(np.asarray(s0, dtype=float))
    Lam = None if Sigma is None or np.size(Sigma) == 0 else _psd_sqrt(np.asarray(Sigma, dtype=float))[None]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return float(_pieces(s, Lam, np.asarray(m0, dtype=float), Q0, logdet_prior).ll[0])


def _draw_beta_b(s: _Sums, pc: _Pieces, Lam: np.ndarray | None, m0: np.ndarray, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """One exact draw of (β, b) given θ and ω per chain: β from its collapsed conditional, then
    b_j = Λa_j with a_j = C_j⁻ᵀ(C_j⁻¹Λ'(Z_j'Wu − Z_j'WX_jβ) + ε_j)."""
    C, p = s.XtWX.shape[0], s.XtWX.shape[1]
    if p:
        assert pc.LP is not None
        z = pc.LP.solve(pc.r[..., None])
        beta = m0 + pc.LP.solve(z + rng.standard_normal((C, p, 1)), transpose=True)[..., 0]
    else:
        beta = np.zeros((C, 0))
    if Lam is None or pc.Cm is None:
        return beta, None
    res = s.ZtWu - (s.ZtWX @ beta[:, None, :, None])[..., 0]
    t = pc.Cm.solve(_lam_t(Lam, res)[..., None])[..., 0]
    a = pc.Cm.solve((t + rng.standard_normal(t.shape))[..., None], transpose=True)[..., 0]
    return beta, _lam_t(Lam, a, transpose=False)


# ----------------------------------------------------------------------------------------------
# θ: the group SDs and correlations, unconstrained


class _Theta:
    """θ = (log s_1..q, CorrCholesky-unconstrained correlations) with its log prior + log-Jacobian
    (NumPyro's unconstrained density of the same priors)."""

    def __init__(self, sd_priors: Sequence[Prior], lkj_eta: float, correlated: bool) -> None:
        self.sd_priors, self.lkj_eta = list(sd_priors), lkj_eta
        self.q = len(self.sd_priors)
        self.n_corr = self.q * (self.q - 1) // 2 if correlated and self.q > 1 else 0
        self.dim = self.q + self.n_corr

    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """s (C, q), L_R (C, q, q) or None, Λ = diag(s)L_R (C, q, q), log prior + log-Jacobian (C,)."""
        q = self.q
        # (NumPy's floating-point warnings are silenced around the sampler)
        sd = np.exp(theta[:, :q])
        lp = np.zeros(theta.shape[0])
        for k, pr in enumerate(self.sd_priors):
            lp = lp + pr.logpdf(sd[:, k]) + theta[:, k]
        L = None
        if self.n_corr:
            L, logjac = _corr_cholesky(theta[:, q:], q)
            lp = lp + _lkj_cholesky_logpdf(L, self.lkj_eta) + logjac
            Lam = sd[:, :, None] * L
        else:
            Lam = sd[:, :, None] * np.eye(q)
        lp = np.where(np.isfinite(lp) & np.all(np.isfinite(Lam), axis=(1, 2)), lp, -np.inf)
        return sd, L, Lam, lp


# ----------------------------------------------------------------------------------------------
# the sampler


def sample(
    bound: BoundSpec,
    *,
    seed: int,
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    progress: Progress | None = None,
    theta_steps: int | None = None,
    merge: bool = True,
    target_accept: float | None = None,
    max_tree_depth: int | None = None,
) -> Draws:
    """Exact posterior draws of a bernoulli or binomial model by Pólya-Gamma Gibbs sampling.

    Parameters
    ----------
    bound
        A bound spec of family bernoulli or binomial with at most one block of group terms
        (:func:`unsupported_bound`).
    seed
        Seed: the same seed gives the same draws.
    chains, draws, warmup
        Chains, kept sweeps per chain, and warmup sweeps (during which θ's proposal is adapted).
    progress
        Optional callback ``(stage, fraction)``.
    theta_steps
        Random-walk Metropolis steps on θ per sweep; by default :func:`default_theta_steps` of the data.
    merge
        Merge rows that share the linear predictor first (:func:`merge_rows`; the same
        posterior, fewer Pólya-Gamma draws).
    target_accept, max_tree_depth
        NUTS settings, accepted so that a call written for NUTS runs; not used here (the info
        says so).

    Returns
    -------
    Draws
        ``method="exact"``; ``sample_stats["acceptance_rate"]`` is the fraction of θ steps
        accepted in each sweep; ``info`` says how it was sampled.

    Raises
    ------
    SpecError
        For a model this sampler does not cover.
    """
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # NaN / inf are handled (−inf targets)
        return _sample(bound, seed=seed, chains=chains, draws=draws, warmup=warmup, progress=progress,
                       theta_steps=theta_steps, merge=merge, target_accept=target_accept,
                       max_tree_depth=max_tree_depth)


def _sample(bound: BoundSpec, *, seed: int, chains: int, draws: int, warmup: int, progress: Progress | None,
            theta_steps: int | None, merge: bool, target_accept: float | None, max_tree_depth: int | None) -> Draws:
    why = unsupported_bound(bound)
    if why is not None:
        raise _refusal(why)
    if theta_steps is not None and (not isinstance(theta_steps, int) or theta_steps < 1):
        raise SpecError(f"The 'theta_steps' option must be a positive integer. Got {theta_steps!r}.",
                        option="theta_steps")
    from polyagamma import random_polyagamma

    t0 = time.perf_counter()
    C, D, W = chains, draws, warmup
    blk = bound.blocks[0] if bound.blocks else None
    groups = blk is not None and not blk.pooled
    if blk is not None:
        Z, group, J = np.asarray(blk.Z, dtype=float), np.asarray(blk.group), blk.n_groups
    else:
        Z, group, J = np.zeros((bound.n_obs, 0)), np.zeros(bound.n_obs, dtype=np.int64), 1
    if not groups:
        Z = Z[:, :0]
    pat = merge_rows(bound.y, bound.trials, bound.X, Z, group, bound.offset, bound.weights, merge=merge)
    design = _Design(pat, J)
    q, p = design.q, design.p
    if theta_steps is None:
        theta_steps = default_theta_steps(pat.m, J, q)
    m0 = np.array([bound.priors[c].mean_sd()[0] for c in bound.coef_names], dtype=float)
    s0 = np.array([bound.priors[c].mean_sd()[1] for c in bound.coef_names], dtype=float)
    Q0, logdet_prior = prior_precision(s0)
    rng = np.random.default_rng(np.random.SeedSequence(seed))

    learn = groups and blk is not None and blk.Sigma is None
    th: _Theta | None = None
    Lam: np.ndarray | None = None
    if learn:
        assert blk is not None
        cor = bound.priors.get(f"cor({blk.factor})")
        th = _Theta([bound.priors[n] for n in blk.sd_names], float(cor.args[0]) if cor is not None else 1.0,
                    blk.term.correlated and q > 1)
    elif groups:
        assert blk is not None and blk.Sigma is not None
        Lam = np.broadcast_to(_psd_sqrt(np.asarray(blk.Sigma, dtype=float)), (C, q, q)).copy()

    # dispersed starts: SDs around half the data scale (the link scale, 1), random correlations
    dim = th.dim if th is not None else 0
    theta = np.zeros((C, dim))
    lp_theta = np.zeros(C)
    if th is not None:
        theta[:, :q] = math.log(0.5 * bound.scale) + 0.7 * rng.standard_normal((C, q))
        theta[:, q:] = 0.5 * rng.standard_normal((C, th.n_corr))
        _, _, Lam, lp_theta = th.unpack(theta)
    omega = np.broadcast_to(pat.h / 4.0, (C, pat.m)).copy()  # E[PG(h, 0)], chains × patterns

    chol = np.eye(dim)
    log_scale = math.log(2.38 / math.sqrt(max(dim, 1)))
    adapt_at = {int(W * f) for f in (0.25, 0.5, 0.75)} - {0} if W >= 40 else set()
    window: list[np.ndarray] = []
    t_adapt = 0  # steps since the proposal's covariance was last set (Robbins-Monro restarts there)
    beta_out = np.empty((C, D, p))
    sd_out = np.empty((C, D, q)) if th is not None else None
    corr_out = np.empty((C, D, q, q)) if th is not None and th.n_corr else None
    b_out = np.empty((C, D, J, q)) if groups else None
    acc_out = np.zeros((C, D))
    seconds_pg = 0.0
    total = W + D
    report = max(1, total // 20)
    for it in range(total):
        s = design.sums(omega, constants=False)
        if th is not None:
            assert Lam is not None
            accepted = np.zeros(C)
            step = math.exp(log_scale)
            pc = _pieces(s, Lam, m0, Q0, logdet_prior)  # the current θ given the new ω
            cur = pc.ll + lp_theta
            for _ in range(theta_steps):
                prop = theta + step * rng.standard_normal((C, dim)) @ chol.T
                _, _, Lam_p, lp_p = th.unpack(prop)
                ok = np.isfinite(lp_p)
                Lam_p = np.where(ok[:, None, None], Lam_p, Lam)
                pp = _pieces(s, Lam_p, m0, Q0, logdet_prior)
                new = np.where(ok, pp.ll + lp_p, -np.inf)
                acc = (np.log(rng.uniform(size=C)) < new - cur) & np.isfinite(new)
                theta = np.where(acc[:, None], prop, theta)
                lp_theta = np.where(acc, lp_p, lp_theta)
                cur = np.where(acc, new, cur)
                Lam = np.where(acc[:, None, None], Lam_p, Lam)
                pc = _select(_Pieces(*(_cat(a, b) for a, b in zip(pc, pp))), np.where(acc, C + np.arange(C), np.arange(C)))
                accepted += acc
            rate = accepted / theta_steps
            if it < W:  # adapt the proposal during warmup only
                t_adapt += 1
                log_scale += (float(rate.mean()) - TARGET_ACCEPT) / t_adapt ** 0.6
                window.append(theta.copy())
                if it + 1 in adapt_at and len(window) * C > 4 * dim:
                    chol, log_scale = _proposal(np.concatenate(window), dim, chol)
                    window, t_adapt = [], 0
        else:
            rate = np.ones(C)
            pc = _pieces(s, Lam, m0, Q0, logdet_prior)
        beta, b = _draw_beta_b(s, pc, Lam, m0, rng)
        eta = beta @ pat.X.T + pat.offset  # (C, m)
        if b is not None:
            for k in range(q):
                eta += b[:, :, k][:, pat.group] * pat.Z[:, k]
        tp = time.perf_counter()
        omega = random_polyagamma(pat.h, eta, random_state=rng)
        seconds_pg += time.perf_counter() - tp
        if it >= W:
            d = it - W
            beta_out[:, d] = beta
            acc_out[:, d] = rate
            if b_out is not None and b is not None:
                b_out[:, d] = b
            if th is not None:
                assert sd_out is not None
                sd, L, _, _ = th.unpack(theta)
                sd_out[:, d] = sd
                if corr_out is not None and L is not None:
                    corr_out[:, d] = L @ np.swapaxes(L, -1, -2)
        if progress and (it + 1) % report == 0:
            progress("warmup" if it < W else "sampling", (it + 1) / total)
    if progress:
        progress("done", 1.0)
    seconds = time.perf_counter() - t0
    how = ("Pólya-Gamma Gibbs: the group SDs" + (" and correlations" if corr_out is not None else "")
           + f" by random-walk Metropolis on the collapsed target ({theta_steps} steps per sweep), then β and the "
           "group values from their exact conditional, then the Pólya-Gamma weights") if th is not None else (
        "Pólya-Gamma Gibbs: β" + (" and the group values from their" if groups else " from its")
        + " exact conditional, then the Pólya-Gamma weights")
    info: dict[str, Any] = {
        "seconds": seconds,
        "seconds_pg_draws": seconds_pg,
        "sampler": "polya-gamma gibbs",
        "hyper_sampler": how,
        "warmup": W,
        "theta_steps": theta_steps if th is not None else 0,
        "rows": int(bound.n_obs),
        "patterns": pat.m,
    }
    unused = [n for n, v in (("target_accept", target_accept), ("max_tree_depth", max_tree_depth)) if v is not None]
    if unused:
        info["note"] = f"{' and '.join(unused)} (NUTS settings) do not apply to the Pólya-Gamma sampler and were not used."
    if th is not None:
        info["acceptance_rate"] = float(acc_out.mean())
        info["proposal_scale"] = math.exp(log_scale)
    blocks: tuple[BlockDraws, ...] = ()
    if blk is not None:
        blocks = (BlockDraws(sd=sd_out, corr=corr_out, values=b_out),)
    stats = {"acceptance_rate": acc_out} if th is not None else {}
    return Draws(beta=beta_out, sigma=None, tau=None, b=None, sample_stats=stats, method="exact", info=info,
                 blocks=blocks)


def _cat(a: Any, b: Any) -> Any:
    """Two batches of the same kind (arrays or :class:`_Chol`) one after the other."""
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b])
    return a.cat(b)


def _select(pc: _Pieces, idx: np.ndarray) -> _Pieces:
    """The pieces of the batch positions ``idx`` (per chain: the current or the proposed θ)."""
    return _Pieces(pc.ll[idx], None if pc.LP is None else pc.LP.take(idx), pc.r[idx],
                   None if pc.Cm is None else pc.Cm.take(idx))


def _proposal(thetas: np.ndarray, dim: int, old: np.ndarray) -> tuple[np.ndarray, float]:
    """The random walk's Cholesky factor from the covariance of warmup draws (regularized
    towards the identity, Roberts & Rosenthal's 2.38²/d scaling restarted)."""
    n = thetas.shape[0]
    cov = np.cov(thetas, rowvar=False).reshape(dim, dim)
    cov = (n * cov + 5.0 * 1e-3 * np.eye(dim)) / (n + 5.0)
    try:
        chol = np.linalg.cholesky(cov + 1e-10 * np.eye(dim))
    except np.linalg.LinAlgError:
        return old, math.log(2.38 / math.sqrt(dim))
    return chol, math.log(2.38 / math.sqrt(dim))


def _refusal(why: str) -> SpecError:
    return SpecError(
        f"method='exact' fits bernoulli and binomial models with at most one grouping factor "
        f"(varying intercepts, correlated slopes or ||); not {why}.",
        hint="Use method='nuts' (or method='laplace' for the Laplace approximation).", option="method")
