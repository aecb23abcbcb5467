"""The collapsed Gaussian marginal and conditionals in NumPy, batched over hyperparameters.

The NumPy twin of :mod:`poolwise.infer.collapsed`'s JAX functions (its docstring has the
algebra): for a block of q correlated group terms of one grouping factor, from the per-group
sufficient statistics (:class:`~poolwise.reduce.BlockStats`) alone — a batched q × q Cholesky
over the groups, never a pass over rows — the log marginal likelihood of (σ, Λ) and exact draws
of (β, b) given them; and the CorrCholesky coordinates of correlation matrices with the LKJ
density (Lewandowski, Kurowicka & Joe, 2009), as NumPyro has them.  The exact (collapsed), REML
and Laplace paths share these; nothing here imports JAX.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from scipy import special

from ..reduce import BlockStats

__all__: list[str] = []  # shared with the sibling modules under their private names

_LOG2PI = math.log(2.0 * math.pi)
_UNROLL_MAX_Q = 4  # batched q × q Cholesky written out elementwise up to this q (faster than LAPACK calls)


def _psd_sqrt(S: np.ndarray) -> np.ndarray:
    """A square root Λ (ΛΛ' = S) of a symmetric positive semi-definite matrix, singular allowed."""
    S = 0.5 * (S + S.T)
    vals, vecs = np.linalg.eigh(S)
    if vals.size and vals.min() < -1e-10 * max(1.0, float(np.abs(vals).max())):
        raise ValueError("Sigma_fixed must be positive semi-definite.")
    out: np.ndarray = vecs * np.sqrt(np.clip(vals, 0.0, None))[None, :]
    return out


# ----------------------------------------------------------------------------------------------
# the collapsed marginal and the conditional draws in NumPy, batched over hyperparameter values


def _unrolled_cholesky(M: Any, sqrt: Callable[[Any], Any], zeros: Callable[[Any], Any]) -> list[list[Any]]:
    """The lower Cholesky factor of a batch of q × q matrices (…, q, q), written out entry by entry
    (L[i][j] an array over the batch; zeros above the diagonal), with the array module's ``sqrt``
    and ``zeros``: NumPy here, JAX for :class:`poolwise.infer.collapsed._BatchChol`."""
    q = int(M.shape[-1])
    L: list[list[Any]] = [[zeros(M.shape[:-2])] * q for _ in range(q)]
    for j in range(q):
        s = M[..., j, j]
        for k in range(j):
            s = s - L[j][k] ** 2
        L[j][j] = sqrt(s)
        for i in range(j + 1, q):
            t = M[..., i, j]
            for k in range(j):
                t = t - L[i][k] * L[j][k]
            L[i][j] = t / L[j][j]
    return L


class _NpChol:
    """Cholesky factors of a batch of small SPD matrices M (..., q, q), with triangular solves (NumPy).

    The NumPy twin of :class:`_BatchChol`: for q ≤ :data:`_UNROLL_MAX_Q` the factorization is
    written out elementwise over the batch (one vectorized operation per entry instead of one
    LAPACK call per matrix); a matrix that is not positive definite gives NaN entries, never an
    exception.
    """

    def __init__(self, M: np.ndarray) -> None:
        self.q = int(M.shape[-1])
        self.unrolled = self.q <= _UNROLL_MAX_Q
        q = self.q
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.unrolled:
                self.entries = _unrolled_cholesky(M, np.sqrt, np.zeros)
            else:
                try:
                    self.full = np.linalg.cholesky(M)
                except np.linalg.LinAlgError:
                    flat = M.reshape((-1, q, q))
                    out = np.full(flat.shape, np.nan)
                    for i in range(flat.shape[0]):
                        try:
                            out[i] = np.linalg.cholesky(flat[i])
                        except np.linalg.LinAlgError:
                            pass
                    self.full = out.reshape(M.shape)

    def sum_log_diag(self) -> np.ndarray:
        """Σ_i log C_ii per matrix, shape M.shape[:-2] (½ log|M|)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.unrolled:
                out = np.log(self.entries[0][0])
                for i in range(1, self.q):
                    out = out + np.log(self.entries[i][i])
                return np.asarray(out)
            return np.asarray(np.log(np.diagonal(self.full, axis1=-2, axis2=-1)).sum(axis=-1))

    def solve(self, B: np.ndarray, *, transpose: bool = False) -> np.ndarray:
        """C⁻¹B (or C⁻ᵀB with ``transpose``) for B of shape (..., q, m)."""
        if not self.unrolled:
            Lm = np.swapaxes(self.full, -1, -2) if transpose else self.full
            return np.asarray(np.linalg.solve(Lm, B))
        L, q = self.entries, self.q
        out = np.empty(np.broadcast_shapes(B.shape, L[0][0].shape + (q, 1)))
        order = range(q - 1, -1, -1) if transpose else range(q)
        for i in order:
            t = B[..., i, :]
            others = range(i + 1, q) if transpose else range(i)
            for k in others:
                coef = L[k][i] if transpose else L[i][k]
                t = t - coef[..., None] * out[..., k, :]
            out[..., i, :] = t / L[i][i][..., None]
        return out


class _NpPieces(NamedTuple):
    ll: np.ndarray  # log p(y | σ, Σ), (B,)
    LP: _NpChol | None  # Cholesky factors of P, (B, p, p)
    r: np.ndarray  # (B, p)
    C: _NpChol  # Cholesky factors of M_j, (B, J, q, q)
    s2: np.ndarray  # (B,)
    quad: np.ndarray | None = None  # (y − Xm0)'V⁻¹(y − Xm0) − z'z: the GLS residual form when s0 = ∞, (B,)
    logdetV: np.ndarray | None = None  # log|V|, (B,)


def _lam_t_blocks(Lam: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Λ_b'V_j for every b and j as one matrix product: Lam (B, q, q), V (J, q, m) → (B, J, q, m)."""
    B, q, _ = Lam.shape
    J, _, m = V.shape
    Vt = np.ascontiguousarray(V.transpose(0, 2, 1)).reshape(J * m, q)
    out = Vt @ Lam.transpose(1, 0, 2).reshape(q, B * q)  # [(j, k), (b, a)] = Σ_c V[j, c, k] Λ[b, c, a]
    return np.ascontiguousarray(out.reshape(J, m, B, q).transpose(2, 0, 3, 1))


def _lam_t_vec(Lam: np.ndarray, X: np.ndarray, *, transpose: bool = True) -> np.ndarray:
    """Λ_b'x_bj (or Λ_b x_bj with ``transpose=False``) for X (B, J, q): Σ_c Λ[b, c, a] X[b, j, c]."""
    q = Lam.shape[-1]
    out = np.zeros(X.shape)
    for c in range(q):
        coef = Lam[:, c, :] if transpose else Lam[:, :, c]
        out += coef[:, None, :] * X[:, :, c, None]
    return out


def prior_precision(s0: np.ndarray) -> tuple[np.ndarray, float]:
    """The precision matrix of β's prior and log|S0|, from its SDs (p,) or its covariance (p, p).

    A covariance comes from a prior mapped to shifted coordinates
    (:meth:`poolwise.reduce.Shift.prior`); infinite SDs (a flat prior) give zero precision.
    """
    s0 = np.asarray(s0, dtype=float)
    if s0.ndim == 1:
        with np.errstate(divide="ignore"):
            return np.diag(1.0 / s0**2), float(2.0 * np.sum(np.log(s0)))
    L = np.linalg.cholesky(s0)
    Linv = np.linalg.solve(L, np.eye(s0.shape[0]))
    return Linv.T @ Linv, float(2.0 * np.log(np.diagonal(L)).sum())


def _np_pieces(stats: BlockStats, m0: np.ndarray, s0: np.ndarray, sigma: np.ndarray, Lam: np.ndarray
               ) -> _NpPieces:
    """:func:`_pieces` in NumPy, batched over (σ, Λ): sigma (B,), Lam (B, q, q)."""
    s2 = sigma**2
    B, q, p, J = sigma.shape[0], stats.q, stats.p, stats.n_groups
    # M_j = I + Λ'(Z'WZ)_jΛ/σ²: (Λ ⊗ Λ) against the flattened blocks in one matrix product
    K = (Lam[:, :, None, :, None] * Lam[:, None, :, None, :]).transpose(1, 2, 0, 3, 4).reshape(q * q, B * q * q)
    M = (stats.ZtWZ.reshape(J, q * q) @ K).reshape(J, B, q, q).transpose(1, 0, 2, 3)
    M = M / s2[:, None, None, None] + np.eye(q)
    C = _NpChol(M)
    h = C.solve(_lam_t_blocks(Lam, stats.ZtWy[:, :, None]))[..., 0] / s2[:, None, None]
    qq = stats.yWy / s2 - (h * h).reshape(B, -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        logdetV = stats.n_obs * np.log(s2) - stats.sum_log_w + 2.0 * C.sum_log_diag().sum(axis=-1)
    if p == 0:
        ll = -0.5 * (stats.n_obs * _LOG2PI + logdetV + qq)
        return _NpPieces(ll, None, np.zeros((B, 0)), C, s2, qq, logdetV)
    G = (C.solve(_lam_t_blocks(Lam, stats.ZtWX)) / s2[:, None, None, None]).reshape(B, J * q, p)
    A = stats.XtWX[None] / s2[:, None, None] - np.swapaxes(G, 1, 2) @ G
    A = 0.5 * (A + np.swapaxes(A, 1, 2))
    bb = stats.XtWy[None] / s2[:, None] - (G * h.reshape(B, J * q, 1)).sum(axis=1)
    Am0 = A @ m0
    r = bb - Am0
    quad = qq - 2.0 * bb @ m0 + Am0 @ m0
    Q0, logdet_prior = prior_precision(s0)
    LP = _NpChol(A + Q0)
    z = LP.solve(r[..., None])[..., 0]
    quad = quad - (z * z).sum(axis=1)
    ll = -0.5 * (stats.n_obs * _LOG2PI + logdetV + logdet_prior + 2.0 * LP.sum_log_diag() + quad)
    return _NpPieces(ll, LP, r, C, s2, quad, logdetV)


def _chunk(stats: BlockStats) -> int:
    """Batch size bounding the per-group work arrays to about 2¹⁷ numbers (they stay in cache:
    larger batches are slower, not faster, and memory stays O(batch × J × q²))."""
    per = max(1, stats.n_groups * stats.q * (stats.q + stats.p + 1))
    return max(1, (1 << 17) // per)


def _np_log_marginal(stats: BlockStats, m0: np.ndarray, s0: np.ndarray, sigma: np.ndarray, Lam: np.ndarray
                     ) -> np.ndarray:
    """log p(y | σ, Σ = ΛΛ') for a batch: sigma (B,), Lam (B, q, q); NaN → −inf."""
    B = sigma.shape[0]
    out = np.empty(B)
    step = _chunk(stats)
    for s in range(0, B, step):
        out[s:s + step] = _np_pieces(stats, m0, s0, sigma[s:s + step], Lam[s:s + step]).ll
    return np.where(np.isnan(out), -np.inf, out)


def _np_draw(stats: BlockStats, m0: np.ndarray, s0: np.ndarray, sigma: np.ndarray, Lam: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One exact draw of (β, b) per (σ, Λ) (NumPy twin of the JAX conditional; batched in chunks).

    β from its collapsed conditional, then each b_j = Λa_j with a_j = C_j⁻ᵀ(C_j⁻¹rhs_j + ε_j).
    """
    D, q, p, J = sigma.shape[0], stats.q, stats.p, stats.n_groups
    beta = np.zeros((D, p))
    b = np.zeros((D, J, q))
    step = _chunk(stats)
    for s in range(0, D, step):
        sl = slice(s, min(D, s + step))
        n = sl.stop - sl.start
        lam = Lam[sl]
        pc = _np_pieces(stats, m0, s0, sigma[sl], lam)
        if p:
            assert pc.LP is not None
            e = rng.standard_normal((n, p, 1))
            z = pc.LP.solve(pc.r[..., None])
            bt = m0 + pc.LP.solve(z + e, transpose=True)[..., 0]
            beta[sl] = bt
            res = stats.ZtWy[None] - (stats.ZtWX.reshape(J * q, p) @ bt.T).T.reshape(n, J, q)
        else:
            res = np.broadcast_to(stats.ZtWy, (n, J, q))
        rhs = _lam_t_vec(lam, res) / pc.s2[:, None, None]
        t = pc.C.solve(rhs[..., None])[..., 0]
        eps = rng.standard_normal(rhs.shape)
        a = pc.C.solve((t + eps)[..., None], transpose=True)[..., 0]
        b[sl] = _lam_t_vec(lam, a, transpose=False)
    return beta, b


# ----------------------------------------------------------------------------------------------
# the hyperparameter posterior in the unconstrained space (NumPy)


def _corr_cholesky(x: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """NumPyro's CorrCholeskyTransform in NumPy: x (B, q(q−1)/2) → (L (B, q, q), log|J| (B,)).

    x fills the strict lower triangle row by row; t = tanh(x); each row of the unit-diagonal
    matrix is mapped to a unit vector by signed stick breaking.  The log-Jacobian is NumPyro's
    (of x → the strict lower triangle of L).
    """
    B = x.shape[0]
    eps = np.finfo(float).eps
    t = np.clip(np.tanh(x), -1.0 + eps, 1.0 - eps)
    r = np.zeros((B, q, q))
    rows, cols = np.tril_indices(q, -1)
    r[:, rows, cols] = t
    z1m_cumprod_sqrt = np.cumprod(np.sqrt(1.0 - r**2), axis=-1)
    shifted = np.concatenate([np.ones((B, q, 1)), z1m_cumprod_sqrt[..., :-1]], axis=-1)
    L = (r + np.eye(q)) * shifted
    z1m_cumprod = 1.0 - np.cumsum(L * L, axis=-1)
    r2, c2 = np.tril_indices(q, -2)
    with np.errstate(divide="ignore", invalid="ignore"):
        stick = 0.5 * np.log(z1m_cumprod[:, r2, c2]).sum(axis=-1)
    tanh = -2.0 * np.sum(x + np.logaddexp(0.0, -2.0 * x) - math.log(2.0), axis=-1)
    return L, stick + tanh


def _lkj_cholesky_logpdf(L: np.ndarray, eta: float) -> np.ndarray:
    """Log density of the LKJ(η) distribution of the Cholesky factor L (…, q, q) of a correlation
    matrix (Lewandowski et al., 2009), as :class:`numpyro.distributions.LKJCholesky`:
    Σ_{i=2..q} (2η − 2 + q − i) log L_ii minus the log normalizing constant."""
    q = int(L.shape[-1])
    i = np.arange(1, q)
    order = 2.0 * eta - 3.0 + q - i
    with np.errstate(divide="ignore", invalid="ignore"):
        unnorm = np.sum(order * np.log(L[..., i, i]), axis=-1)
    dm1 = q - 1
    alpha = eta + 0.5 * dm1
    norm = 0.5 * dm1 * math.log(math.pi) + float(special.multigammaln(alpha - 0.5, dm1)) \
        - float(special.gammaln(alpha)) * dm1
    return np.asarray(unnorm - norm)
