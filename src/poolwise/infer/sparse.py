"""Any grouping structure: lme4's penalized least squares with a sparse Cholesky factor.

The model y = Xβ + Zb + e, e ~ N(0, σ²W⁻¹), with the stacked group values b of every grouping
factor (crossed, nested or partially crossed), b ~ N(0, ΛΛ'), Λ block diagonal with one q_k × q_k
lower-triangular block Λ_k per level of factor k (Σ_k = Λ_kΛ_k').  With

    A(σ, Λ) = I + Λ'Z'WZΛ/σ² = LL'      (Q × Q, sparse; P a fill-reducing permutation, LL' = PAP')

the marginal of y given β is N(Xβ, V), V = σ²W⁻¹ + ZΛΛ'Z', and (Woodbury, determinant lemma)

    log|V|       = n log σ² − Σ log w + log|A|
    r'V⁻¹r       = r'Wr/σ² − |L⁻¹PΛ'Z'Wr|²/σ⁴      (r = y − Xβ)

so one evaluation needs the cross-products Z'WZ, Z'WX, Z'Wy, X'WX, X'Wy, y'Wy
(:class:`poolwise.reduce.SparseStats`) and one numeric factorization of A.  The pattern of A is
fixed (the block pattern of Z'WZ plus I), so the fill-reducing ordering and the symbolic
analysis are computed once (CHOLMOD, through scikit-sparse) and only the numeric factorization is
repeated per (σ, Λ).  Small systems use batched dense factors instead, by block elimination of the
factor with the most group values (:mod:`poolwise.infer.schur`: only the other factors' values are
factored densely, up to :data:`DENSE_MAX` of them, when that needs fewer flops); both sit behind
:class:`Factorizer`.

* **REML / ML** (``method="empirical"``): Λ = σΛ_rel, σ² profiled out, the relative factor θ
  (lme4's θ: the lower-triangular entries of each Λ_rel,k, diagonals ≥ 0) optimized by
  L-BFGS-B with bounds.  With A and the penalized residual sum of squares r²(θ)
  (Bates et al. 2015, eqs. 34–42),

      −2ℓ_ML   = log|A| − Σ log w + n [1 + log(2π r²/n)]
      −2ℓ_REML = log|A| + log|R_X|² − Σ log w + (n − p) [1 + log(2π r²/(n − p))]

  (lme4's deviance and REML criterion, weights included).
* **Exact Bayes** (``method="exact"``): the hyperparameters (log σ, log SDs, CorrCholesky
  coordinates of each factor's correlation matrix) are drawn by independence Metropolis–Hastings
  (:func:`poolwise.infer.imh._imh`) from their posterior with β and every b integrated out; then,
  per draw, β from its Gaussian conditional and all group values b = Λa, a ~ N(A⁻¹Λ'Z'W(y − Xβ)/σ²,
  A⁻¹), through the same factor.  One grouping factor is the block-diagonal special case; the
  batched one-factor paths (:mod:`poolwise.infer.collapsed`, :mod:`poolwise.infer.exact`) stay
  because they evaluate many hyperparameters at once and measure faster there.

References
----------
Bates, D., Mächler, M., Bolker, B. & Walker, S. (2015). Fitting linear mixed-effects models using
lme4. Journal of Statistical Software 67(1), 1–48.
Chen, Y., Davis, T. A., Hager, W. W. & Rajamanickam, S. (2008). Algorithm 887: CHOLMOD,
supernodal sparse Cholesky factorization and update/downdate. ACM TOMS 35(3).
Papaspiliopoulos, O., Roberts, G. O. & Zanella, G. (2020). Scalable inference for crossed random
effects models. Biometrika 107, 25–40.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy import optimize

from ..priors import Prior
from ..reduce import SparseStats, bound_sparse_stats
from ..spec import BoundSpec
from . import BlockDraws, DeferredDraws, Draws, Progress, imh
from .blockmath import _corr_cholesky, _lkj_cholesky_logpdf, _psd_sqrt, prior_precision
from .schur import SchurBatch, SchurLayout, schur_flops, tri_solve

__all__ = ["Factorizer", "FactorSetting", "loglik", "fit_reml", "draw", "HyperTarget", "sample", "empirical",
           "DENSE_MAX", "have_cholmod"]

_LOG2PI = math.log(2.0 * math.pi)
#: up to this many group values a dense Cholesky factor (batched over hyperparameter values) is used
DENSE_ALWAYS = 64
#: up to this many values besides the largest factor's, the dense or the CHOLMOD factor, whichever needs
#: fewer flops (a block-diagonal pattern favours CHOLMOD, a densely crossed one the batched dense factor)
DENSE_MAX = 1500
#: the unbatched CHOLMOD path's Python cost per (σ, Λ) besides the factorization, in flops of a factor
_PER_VALUE_FLOPS = 2e6
#: fill-reducing orderings tried once per pattern (InstEval's three factors: METIS 0.105 GFlop per
#: factorization, AMD 0.290; 10⁴ × 10³ crossed levels: both 0.378, "best" the same at 20× the analysis)
ORDERINGS = ("metis", "amd")


_CONTROLLER: Any = None


def _blas(fz: Factorizer) -> Any:
    """One BLAS thread for the small dense systems (thread start-up costs more than their work, and
    far more on a busy machine); CHOLMOD's large factorizations keep every thread."""
    global _CONTROLLER
    if not fz.dense:
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


def have_cholmod() -> bool:
    """Whether CHOLMOD (scikit-sparse) can be imported."""
    try:
        import sksparse.cholmod  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# the pattern of A = I + Λ'Z'WZΛ/σ² and its values for a given Λ


class _Pattern:
    """The fixed sparsity pattern of A (block pattern of Z'WZ plus the identity), in CSC form, and
    the map from the per-block products Λ_k'BΛ_l to its values."""

    def __init__(self, st: SparseStats) -> None:
        self.q, self.J, off = st.q, st.J, st.offsets
        self.Q = st.size
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        # per factor: the (J, q, q) diagonal blocks
        for k, (J, q) in enumerate(zip(self.J, self.q)):
            base = off[k] + np.arange(J)[:, None, None] * q
            rows.append((base + np.arange(q)[None, :, None] + 0 * np.arange(q)[None, None, :]).ravel())
            cols.append((base + np.arange(q)[None, None, :] + 0 * np.arange(q)[None, :, None]).ravel())
        # per pair: the (m, q_k, q_l) blocks below the diagonal and their transposes above
        self.pair_keys = sorted(st.pairs)
        for k, l in self.pair_keys:
            pr = st.pairs[(k, l)]
            qk, ql = self.q[k], self.q[l]
            r = off[k] + pr.a[:, None, None] * qk + np.arange(qk)[None, :, None] + 0 * np.arange(ql)[None, None, :]
            c = off[l] + pr.b[:, None, None] * ql + np.arange(ql)[None, None, :] + 0 * np.arange(qk)[None, :, None]
            # the transposed blocks above the diagonal are listed (m, q_l, q_k), as their values are
            rows += [r.ravel(), c.transpose(0, 2, 1).ravel()]
            cols += [c.ravel(), r.transpose(0, 2, 1).ravel()]
        row = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        col = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        self.nnz = row.size
        # the CSC order of the values listed above (data = position + 1: no explicit zero is dropped)
        A = sp.csc_matrix((np.arange(1, self.nnz + 1, dtype=float), (row, col)), shape=(self.Q, self.Q))
        A.sort_indices()
        self.order = A.data.astype(np.int64) - 1
        self.indices, self.indptr = A.indices.copy(), A.indptr.copy()
        # positions (in the listed order) of the diagonal entries of A, and the batched dense factors' layout
        self.diag_at = np.flatnonzero(row == col)
        self.flat = row * self.Q + col  # every entry's place in a dense A (the Laplace path's batches)
        self.ZtWZ = st.ZtWZ
        self.pair_blocks = [st.pairs[key].ZtWZ for key in self.pair_keys]
        self.schur = SchurLayout(st.J, st.q, st.offsets, self.pair_keys,
                                 [(st.pairs[key].a, st.pairs[key].b) for key in self.pair_keys])

    def values(self, lams: Sequence[np.ndarray], s2: float) -> np.ndarray:
        """The nonzeros of A in CSC order for the per-factor Λ_k."""
        return self.listed([lam[None] for lam in lams], np.array([s2]))[0][self.order]

    def listed(self, lams: Sequence[np.ndarray], s2: np.ndarray) -> np.ndarray:
        """The nonzeros of A for a batch, (B, nnz) in the listed (row, col) order: lams (B, q_k, q_k)."""
        B = s2.shape[0]
        parts = [_sandwich(lam, M, lam).reshape(B, -1) for lam, M in zip(lams, self.ZtWZ)]
        for (k, l), P in zip(self.pair_keys, self.pair_blocks):
            V = _sandwich(lams[k], P, lams[l])
            parts += [V.reshape(B, -1), V.transpose(0, 1, 3, 2).reshape(B, -1)]
        vals = np.concatenate(parts, axis=1) / s2[:, None] if parts else np.zeros((B, 0))
        vals[:, self.diag_at] += 1.0
        return vals

    def dense(self, lams: Sequence[np.ndarray], s2: np.ndarray) -> np.ndarray:
        """A for a batch as dense (B, Q, Q) matrices (a reference for tests)."""
        vals = self.listed(lams, s2)
        out = np.zeros((s2.shape[0], self.Q * self.Q))
        out[:, self.flat] = vals
        return out.reshape(-1, self.Q, self.Q)

    def factor_batch(self, lams: Sequence[np.ndarray], s2: np.ndarray) -> SchurBatch:
        """Dense Cholesky factors of A for a batch (block elimination of the largest factor,
        :mod:`poolwise.infer.schur`): lams (B, q_k, q_k), s2 (B,)."""
        return SchurBatch(self.schur, lams, s2, self.ZtWZ, self.pair_blocks)

    def reweight(self, ZtWZ: Sequence[np.ndarray], pair_blocks: Sequence[np.ndarray]) -> None:
        """New per-level and per-pair blocks of Z'WZ on the same pattern (other weights W: the
        Laplace iterations of a GLMM); the shapes must be those the pattern was built from."""
        if [b.shape for b in ZtWZ] != [b.shape for b in self.ZtWZ] or \
                [b.shape for b in pair_blocks] != [b.shape for b in self.pair_blocks]:
            raise ValueError("reweight: the blocks do not fit this pattern")
        self.ZtWZ, self.pair_blocks = tuple(ZtWZ), list(pair_blocks)

    def matrix(self, vals: np.ndarray) -> sp.csc_matrix:
        return sp.csc_matrix((vals, self.indices, self.indptr), shape=(self.Q, self.Q))


def _sandwich(La: np.ndarray, M: np.ndarray, Lb: np.ndarray) -> np.ndarray:
    """La_b' M_j Lb_b for every b and j: La (B, qa, qa), M (J, qa, qb), Lb (B, qb, qb) → (B, J, qa, qb)."""
    if La.shape[1] == 1 and Lb.shape[1] == 1:  # intercepts: scalars
        return (La[:, 0, 0, None] * Lb[:, 0, 0, None])[:, :, None, None] * M[None]
    left = np.einsum("bri,jrc->bjic", La, M)
    return np.asarray(left @ Lb[:, None])


class Factorizer:
    """Cholesky factors of A for a fixed pattern: dense up to :data:`DENSE_ALWAYS` values (or without
    CHOLMOD), else CHOLMOD with its fill-reducing ordering and symbolic analysis done once (whichever of
    the two needs fewer flops while the dense factor's Schur complement has at most :data:`DENSE_MAX`
    values).  The dense factors eliminate the largest factor first (:class:`~poolwise.infer.schur.SchurBatch`)."""

    def __init__(self, st: SparseStats, *, dense: bool | None = None) -> None:
        self.pattern = _Pattern(st)
        Q = self.pattern.Q
        self._sym: Any = None
        self._F: SchurBatch | None = None
        self._logdet = 0.0
        dense_flops = schur_flops(st.J, st.q)
        self.flops = dense_flops
        choose = dense is None
        if dense is None:
            dense = Q <= DENSE_ALWAYS or not have_cholmod()
        if not dense:
            self._sym, self.flops = self._analyze(st)
            if choose and self.pattern.schur.R <= DENSE_MAX:  # whichever costs less per value of the hyperparameters
                dense = dense_flops <= self.flops + _PER_VALUE_FLOPS
                if dense:
                    self.flops = dense_flops
        self.dense = dense

    def _analyze(self, st: SparseStats) -> tuple[Any, float]:
        """CHOLMOD's symbolic analysis under the orderings of :data:`ORDERINGS`, keeping the one whose
        factor needs the fewest flops, Σ_j c_j² over its column counts c_j (counted from the factor at
        Λ = I: a count, not a timing, so the choice is the same on every machine).  METIS and AMD cost a
        fraction of CHOLMOD's exhaustive "best" and one of them matched it on every design measured."""
        from sksparse.cholmod import analyze

        A = self.pattern.matrix(self.pattern.values([np.eye(q) for q in st.q], 1.0))
        best: tuple[Any, float] = (None, math.inf)
        for ordering in ORDERINGS:
            try:
                f = analyze(A, mode="auto", ordering_method=ordering)
                f.cholesky_inplace(A)
            except Exception:  # an ordering this CHOLMOD build lacks (METIS is optional)
                continue
            counts = np.diff(sp.csc_matrix(f.L()).indptr).astype(float)
            flops = float(np.sum(counts * counts))
            if flops < best[1]:
                best = (f, flops)
        if best[0] is None:
            best = (analyze(A, mode="auto"), math.inf)
        return best

    @property
    def backend(self) -> str:
        return "dense" if self.dense else "cholmod"

    def factor(self, lams: Sequence[np.ndarray], s2: float) -> Factorizer:
        """Factor A(σ², Λ) (returns itself)."""
        if self.dense:
            self._F = self.pattern.factor_batch([lam[None] for lam in lams], np.array([s2]))
            self._logdet = float(self._F.logdet[0])
        else:
            self._sym.cholesky_inplace(self.pattern.matrix(self.pattern.values(lams, s2)))
            self._logdet = float(self._sym.logdet())
        return self

    def logdet(self) -> float:
        """log|A|."""
        return self._logdet

    def solve_L(self, B: np.ndarray) -> np.ndarray:
        """L⁻¹PB (so that |L⁻¹PB|² = B'A⁻¹B)."""
        if self.dense:
            assert self._F is not None
            return self._F.solve_L(B.reshape(1, B.shape[0], -1)).reshape(B.shape)
        return np.asarray(self._sym.solve_L(self._sym.apply_P(B), use_LDLt_decomposition=False))

    def solve_Lt(self, B: np.ndarray) -> np.ndarray:
        """P'L⁻ᵀB (so that A⁻¹ = (P'L⁻ᵀ)(P'L⁻ᵀ)')."""
        if self.dense:
            assert self._F is not None
            return self._F.solve_Lt(B.reshape(1, B.shape[0], -1)).reshape(B.shape)
        return np.asarray(self._sym.apply_Pt(self._sym.solve_Lt(B, use_LDLt_decomposition=False)))


# ----------------------------------------------------------------------------------------------
# the collapsed pieces at one (σ, Λ)


def _lam_t(lams: Sequence[np.ndarray], per_factor: Sequence[np.ndarray]) -> np.ndarray:
    """Λ'v stacked: per factor (J_k, q_k[, m]) arrays → (Q[, m])."""
    out = []
    for lam, v in zip(lams, per_factor):
        if v.ndim == 2:
            out.append((v @ lam).reshape(-1))
        else:
            out.append(np.einsum("ra,jrm->jam", lam, v).reshape(-1, v.shape[-1]))
    return np.concatenate(out, axis=0)


def _lam(lams: Sequence[np.ndarray], st: SparseStats, a: np.ndarray) -> list[np.ndarray]:
    """Λa per factor, for a (Q, m) → [(m, J_k, q_k)]."""
    out = []
    for lam, o, J, q in zip(lams, st.offsets, st.J, st.q):
        ak = a[o:o + J * q].reshape(J, q, -1)
        out.append(np.einsum("ra,jam->mjr", lam, ak))
    return out


@dataclass
class Pieces:
    """log p(y | σ, Λ) (β integrated under its prior) and what the draws need."""

    ll: float
    logdetV: float
    A_X: np.ndarray  # X'V⁻¹X
    bb: np.ndarray  # X'V⁻¹y
    qq: float  # y'V⁻¹y
    LP: np.ndarray | None  # Cholesky factor of X'V⁻¹X + S0⁻¹ (None without a prior)


def _cross(st: SparseStats, fz: Factorizer, lams: Sequence[np.ndarray], s2: float
           ) -> tuple[float, np.ndarray, np.ndarray, float]:
    """Factor A and return (log|V|, X'V⁻¹X, X'V⁻¹y, y'V⁻¹y)."""
    fz.factor(lams, s2)
    u = _lam_t(lams, st.ZtWy) / s2
    c = fz.solve_L(u)
    qq = st.yWy / s2 - float(c @ c)
    logdetV = st.n_obs * math.log(s2) - st.sum_log_w + fz.logdet()
    if st.p:
        U = _lam_t(lams, st.ZtWX) / s2
        Cx = fz.solve_L(U)
        A_X = st.XtWX / s2 - Cx.T @ Cx
        A_X = 0.5 * (A_X + A_X.T)
        bb = st.XtWy / s2 - Cx.T @ c
    else:
        A_X, bb = np.zeros((0, 0)), np.zeros(0)
    return logdetV, A_X, bb, qq


def pieces(st: SparseStats, fz: Factorizer, m0: np.ndarray, Q0: np.ndarray, logdet_prior: float, sigma: float,
           lams: Sequence[np.ndarray]) -> Pieces:
    """log p(y | σ, Λ) with β ~ N(m0, Q0⁻¹) integrated out (Q0 = 0 where the prior is flat)."""
    s2 = sigma * sigma
    logdetV, A_X, bb, qq = _cross(st, fz, lams, s2)
    if not st.p:
        ll = -0.5 * (st.n_obs * _LOG2PI + logdetV + qq)
        return Pieces(ll, logdetV, A_X, bb, qq, None)
    r = bb - A_X @ m0
    quad = qq - 2.0 * float(bb @ m0) + float(m0 @ A_X @ m0)
    LP = np.linalg.cholesky(A_X + Q0)
    z = sla.solve_triangular(LP, r, lower=True)
    quad -= float(z @ z)
    ll = -0.5 * (st.n_obs * _LOG2PI + logdetV + logdet_prior + 2.0 * float(np.log(np.diagonal(LP)).sum()) + quad)
    # precision lost far in the tails: a positive definite form cannot be negative
    if quad < 0 or _lost(A_X[None], st.XtWX, np.array([s2]))[0]:
        ll = -math.inf
    return Pieces(ll, logdetV, A_X, bb, qq, LP)


@dataclass
class BatchCross:
    """A's Cholesky factors and the marginal's quadratic forms for a batch of small systems."""

    F: SchurBatch  # A's factors
    logdetV: np.ndarray  # (B,)
    A_X: np.ndarray  # (B, p, p)
    bb: np.ndarray  # (B, p)
    qq: np.ndarray  # (B,)


def cross_batch(st: SparseStats, pat: _Pattern, s2: np.ndarray, lams: Sequence[np.ndarray]) -> BatchCross:
    """:func:`_cross` for a batch, dense (batched LAPACK): s2 (B,), lams per factor (B, q_k, q_k)."""
    p, n = st.p, st.n_obs
    F = pat.factor_batch(lams, s2)
    logdetA = F.logdet
    u = _lam_t_batch(lams, st.ZtWy) / s2[:, None]  # (B, Q)
    rhs = u[..., None]
    if p:
        U = _lam_t_batch(lams, st.ZtWX) / s2[:, None, None]  # (B, Q, p)
        rhs = np.concatenate([rhs, U], axis=2)
    c = F.solve_L(rhs)  # L⁻¹P[u, U]
    qq = st.yWy / s2 - np.einsum("bq,bq->b", c[..., 0], c[..., 0])
    logdetV = n * np.log(s2) - st.sum_log_w + logdetA
    if p:
        A_X = st.XtWX[None] / s2[:, None, None] - np.einsum("bqi,bqj->bij", c[..., 1:], c[..., 1:])
        A_X = 0.5 * (A_X + np.swapaxes(A_X, 1, 2))
        bb = st.XtWy[None] / s2[:, None] - np.einsum("bqi,bq->bi", c[..., 1:], c[..., 0])
    else:
        A_X, bb = np.zeros((s2.shape[0], 0, 0)), np.zeros((s2.shape[0], 0))
    return BatchCross(F, logdetV, A_X, bb, qq)


def pieces_batch(st: SparseStats, pat: _Pattern, m0: np.ndarray, Q0: np.ndarray, logdet_prior: float,
                 sigma: np.ndarray, lams: Sequence[np.ndarray]) -> np.ndarray:
    """:func:`pieces`' log p(y | σ, Λ) for a batch of small systems at once (dense, batched LAPACK):
    sigma (B,), lams per factor (B, q_k, q_k).  −∞ where not finite."""
    return _pieces_batch(st, pat, m0, Q0, logdet_prior, sigma, lams)[0]


def _pieces_batch(st: SparseStats, pat: _Pattern, m0: np.ndarray, Q0: np.ndarray, logdet_prior: float,
                  sigma: np.ndarray, lams: Sequence[np.ndarray], rng: np.random.Generator | None = None
                  ) -> tuple[np.ndarray, tuple[np.ndarray, list[np.ndarray]] | None]:
    """:func:`pieces_batch`, and with ``rng`` one draw of (β, b) per row through the same factors
    (:func:`_draw_batch`; meaningful where the log density is finite)."""
    n = st.n_obs
    bc = cross_batch(st, pat, sigma * sigma, lams)
    qq, logdetV, A_X, bb = bc.qq, bc.logdetV, bc.A_X, bc.bb
    if not st.p:
        ll = -0.5 * (n * _LOG2PI + logdetV + qq)
        return np.where(np.isfinite(ll), ll, -np.inf), (None if rng is None else
                                                         _draws_from(st, bc, None, m0, sigma, lams, rng))
    r = bb - A_X @ m0
    quad = qq - 2.0 * bb @ m0 + np.einsum("bij,i,j->b", A_X, m0, m0)
    LP = np.linalg.cholesky(A_X + Q0)
    z = tri_solve(LP, r[..., None])
    quad = quad - (z[..., 0] ** 2).sum(axis=1)
    ll = -0.5 * (n * _LOG2PI + logdetV + logdet_prior + 2.0 * np.log(np.diagonal(LP, axis1=1, axis2=2)).sum(axis=1)
                 + quad)
    ll = np.where(np.isfinite(ll) & (quad >= 0) & ~_lost(A_X, st.XtWX, sigma * sigma), ll, -np.inf)
    return ll, None if rng is None else _draws_from(st, bc, (LP, z), m0, sigma, lams, rng)


#: X'V⁻¹X = X'WX/σ² − (L⁻¹PΛ'Z'WX)'(…)/σ⁴ is trusted while its diagonal keeps this share of X'WX/σ²'s
_CANCEL = 1e-12


def _lost(A_X: np.ndarray, XtWX: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Where X'V⁻¹X (B, p, p) has lost its digits to cancellation (fewer than about four left: a group
    SD some 10⁶ times σ or more, far in the tails), so that the density there is taken as 0."""
    return np.any(np.diagonal(A_X, axis1=1, axis2=2) < _CANCEL * np.diagonal(XtWX)[None] / s2[:, None], axis=1)


def _lam_t_batch(lams: Sequence[np.ndarray], per_factor: Sequence[np.ndarray]) -> np.ndarray:
    """Λ_b'v stacked for a batch: lams (B, q_k, q_k), per factor (J_k, q_k[, m]) → (B, Q[, m])."""
    out = []
    for lam, v in zip(lams, per_factor):
        if v.ndim == 2:
            out.append(np.einsum("bra,jr->bja", lam, v).reshape(lam.shape[0], -1))
        else:
            out.append(np.einsum("bra,jrm->bjam", lam, v).reshape(lam.shape[0], -1, v.shape[-1]))
    return np.concatenate(out, axis=1)


def _gls(A_X: np.ndarray, bb: np.ndarray) -> tuple[float, float]:
    """(bb'A_X⁻¹bb, log|A_X|): the GLS fit's share of y'V⁻¹y and its determinant (0, 0 without X)."""
    if not bb.size:
        return 0.0, 0.0
    LX = np.linalg.cholesky(A_X)
    z = sla.solve_triangular(LX, bb, lower=True)
    return float(z @ z), 2.0 * float(np.log(np.diagonal(LX)).sum())


def lbfgs_restarts(fg: Any, x: np.ndarray, fx: float, bounds: list[tuple[float | None, float | None]], *,
                   restarts: int = 4, ftol: float = 1e-14, gtol: float = 1e-9, maxiter: int = 2000
                   ) -> tuple[np.ndarray, float, bool]:
    """L-BFGS-B (``fg`` returns f and its gradient) restarted from its end until f stops improving:
    (x, f(x), converged)."""
    converged = True
    for _ in range(restarts):
        res = optimize.minimize(fg, x, jac=True, method="L-BFGS-B", bounds=bounds,
                                options={"ftol": ftol, "gtol": gtol, "maxiter": maxiter, "maxls": 50})
        better = res.fun < fx - 1e-10 * max(1.0, abs(fx))
        if res.fun <= fx:
            x, fx = np.asarray(res.x, dtype=float), float(res.fun)
        converged = bool(res.success) or not better
        if not better:
            break
    return x, fx, converged


def loglik(st: SparseStats, fz: Factorizer, sigma: float, lams: Sequence[np.ndarray], *, reml: bool = True
           ) -> float:
    """ℓ_REML (or ℓ_ML) at (σ, Λ) with Λ absolute (Σ_k = Λ_kΛ_k'): β at its GLS estimate (ML) or
    integrated under a flat prior (REML, Harville 1974)."""
    s2 = sigma * sigma
    logdetV, A_X, bb, qq = _cross(st, fz, lams, s2)
    fitted, logdetA = _gls(A_X, bb)
    quad = qq - fitted
    ll = -0.5 * (st.n_obs * _LOG2PI + logdetV + quad)
    if reml:
        ll += 0.5 * st.p * _LOG2PI - 0.5 * logdetA
    return ll if math.isfinite(ll) else -math.inf


# ----------------------------------------------------------------------------------------------
# REML and ML: lme4's profiled criterion over the relative covariance factor θ


@dataclass(frozen=True)
class FactorSetting:
    """What is learned of one factor: ``Sigma`` fixed (then nothing), else its q terms, correlated or not."""

    q: int
    correlated: bool
    Sigma: np.ndarray | None = None

    @property
    def learned(self) -> bool:
        return self.Sigma is None

    @property
    def n_theta(self) -> int:
        """Entries of the relative Cholesky factor that are estimated (lme4's θ)."""
        if not self.learned:
            return 0
        return self.q * (self.q + 1) // 2 if (self.correlated and self.q > 1) else self.q

    def tril(self, t: np.ndarray) -> np.ndarray:
        """θ entries → the lower-triangular q × q factor (diagonal first, lme4's column-wise order)."""
        q = self.q
        L = np.zeros((q, q))
        if self.correlated and q > 1:
            L[np.tril_indices(q)] = _column_major_tril(t, q)
        else:
            L[np.diag_indices(q)] = t
        return L

    def lower(self) -> np.ndarray:
        """Bounds on θ: diagonals ≥ 0, below-diagonal entries free (nothing when Σ is fixed)."""
        if not self.learned:
            return np.zeros(0)
        if self.correlated and self.q > 1:
            r, c = _tril_column_major(self.q)
            return np.where(r == c, 0.0, -np.inf)
        return np.zeros(self.q)


def _tril_column_major(q: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the lower triangle in lme4's column-major order."""
    rc = [(r, c) for c in range(q) for r in range(c, q)]
    return np.array([r for r, _ in rc]), np.array([c for _, c in rc])


def _column_major_tril(t: np.ndarray, q: int) -> np.ndarray:
    """Column-major θ → values in NumPy's row-major tril order."""
    r, c = _tril_column_major(q)
    L = np.zeros((q, q))
    L[r, c] = t
    return L[np.tril_indices(q)]


def _fixed_lams(settings: Sequence[FactorSetting]) -> list[np.ndarray | None]:
    return [None if s.learned else _psd_sqrt(np.asarray(s.Sigma, dtype=float)) for s in settings]


def _split_theta(theta: np.ndarray, settings: Sequence[FactorSetting]) -> list[np.ndarray]:
    out, i = [], 0
    for s in settings:
        out.append(theta[i:i + s.n_theta])
        i += s.n_theta
    return out


@dataclass(frozen=True)
class RemlResult:
    """The optimum: σ (1 without σ), the absolute Λ_k per factor, θ, ℓ, β̂ and its covariance."""

    sigma: float
    lams: list[np.ndarray]
    theta: np.ndarray
    loglik: float
    beta: np.ndarray
    beta_cov: np.ndarray
    converged: bool
    evaluations: int
    backend: str


def _profiled(st: SparseStats, fz: Factorizer, rel: Sequence[np.ndarray], *, reml: bool) -> tuple[float, float]:
    """(ℓ, σ̂²) of the model with Λ = σΛ_rel and σ² profiled out."""
    logdetV, A_X, bb, qq = _cross(st, fz, rel, 1.0)  # log|V| here is log|A| − Σ log w
    fitted, logdetA = _gls(A_X, bb)
    r2 = qq - fitted
    dof = st.n_obs - st.p if reml else st.n_obs
    if not (r2 > 0 and dof > 0):
        return -math.inf, math.nan
    s2 = r2 / dof
    dev = logdetV + dof * (1.0 + math.log(2.0 * math.pi * s2))
    if reml:
        dev += logdetA
    return -0.5 * dev, s2


def fit_reml(st: SparseStats, settings: Sequence[FactorSetting], *, has_sigma: bool = True, reml: bool = True,
             fz: Factorizer | None = None) -> RemlResult:
    """REML (or ML) estimates for any grouping structure (see :func:`_fit_reml`)."""
    fz = fz or Factorizer(st)
    with _blas(fz):
        return _fit_reml(st, settings, has_sigma=has_sigma, reml=reml, fz=fz)


def _fit_reml(st: SparseStats, settings: Sequence[FactorSetting], *, has_sigma: bool, reml: bool,
              fz: Factorizer) -> RemlResult:
    """REML (or ML) estimates for any grouping structure.

    With σ (``has_sigma``), Λ_k = σΛ_rel,k and σ² is profiled out (lme4's profiled deviance);
    without (known standard errors), Λ_k itself is optimized.  θ holds the lower-triangular
    entries of each learned factor's Λ_rel,k (diagonals ≥ 0), found by L-BFGS-B from lme4's start
    (θ = identity), restarted from its end until the criterion stops improving, then polished by
    damped Newton steps (:func:`_polish`).
    """
    fixed = _fixed_lams(settings)
    n_eval = 0

    def rel_lams(theta: np.ndarray, sigma: float = 1.0) -> list[np.ndarray]:
        parts = _split_theta(theta, settings)
        return [s.tril(t) if f is None else f / sigma for s, t, f in zip(settings, parts, fixed)]

    def negll(theta: np.ndarray) -> float:
        nonlocal n_eval
        n_eval += 1
        with np.errstate(all="ignore"):
            try:
                if has_sigma and all(f is None for f in fixed):
                    ll = _profiled(st, fz, rel_lams(theta), reml=reml)[0]
                else:
                    sigma = 1.0 if not has_sigma else float(math.exp(theta[-1]))
                    lams = [s.tril(t) * sigma if f is None else f for s, t, f in zip(settings,
                            _split_theta(theta, settings), fixed)]
                    ll = loglik(st, fz, sigma, lams, reml=reml)
            except (np.linalg.LinAlgError, ValueError, ArithmeticError):
                return math.inf
        return -ll if math.isfinite(ll) else math.inf

    profile = has_sigma and all(f is None for f in fixed)
    lower = np.concatenate([s.lower() for s in settings]) if settings else np.zeros(0)
    start = np.concatenate([_start_theta(s) for s in settings]) if settings else np.zeros(0)
    bounds = [(None if not np.isfinite(lo) else lo, None) for lo in lower]
    if has_sigma and not profile:  # a fixed Σ beside learned factors: σ is a parameter (log scale)
        start = np.append(start, math.log(_scale(st)))
        bounds.append((None, None))
    if not has_sigma:  # Λ absolute: start at the data's scale
        start = start * _scale(st)
    def negll_batch(thetas: np.ndarray) -> np.ndarray:
        nonlocal n_eval
        if not (profile and fz.dense):
            return np.array([negll(t) for t in thetas])
        n_eval += thetas.shape[0]
        out = np.full(thetas.shape[0], math.inf)
        step = fz.pattern.schur.chunk()
        for s in range(0, thetas.shape[0], step):
            th = thetas[s:s + step]
            rel = [np.stack([st_.tril(t) for t in part]) for st_, part in
                   zip(settings, _split_theta_batch(th, settings))]
            with np.errstate(all="ignore"):
                try:
                    out[s:s + step] = -_profiled_batch(st, fz.pattern, rel, reml=reml)
                except np.linalg.LinAlgError:
                    out[s:s + step] = [negll(t) for t in th]
        return np.where(np.isfinite(out), out, math.inf)

    def fun_jac(x: np.ndarray) -> tuple[float, np.ndarray]:
        """f and its gradient by central differences in one batch (small systems), or forward
        differences (each evaluation a sparse factorization: d + 1 of them, not 2d + 1)."""
        lo = np.array([b[0] if b[0] is not None else -np.inf for b in bounds])
        d = x.size
        if not fz.dense:
            h = 1e-7 * np.maximum(1.0, np.abs(x))
            v = negll_batch(np.vstack([x[None], x + np.diag(h)]))
            g = (v[1:] - v[0]) / h
            return float(v[0]), np.where(np.isfinite(g), g, 0.0)
        h = 1e-6 * np.maximum(1.0, np.abs(x))
        E = np.diag(h)
        up, dn = x + E, np.maximum(x - E, lo)  # one-sided at a bound
        v = negll_batch(np.vstack([x[None], up, dn]))
        g = (v[1:d + 1] - v[d + 1:]) / (up - dn).diagonal()
        return float(v[0]), np.where(np.isfinite(g), g, 0.0)

    x, fx, converged = start, (negll(start) if not start.size else math.inf), True
    if start.size:
        # L-BFGS-B to a relative 1e-10, then the Newton polish (second differences) takes the last digits:
        # with sparse factors the forward-difference gradient is ~1e-2 off near the optimum, and on a flat
        # criterion (a factor with few levels) L-BFGS-B's last iterations gain nothing the polish does not.
        # With dense factors the polish is a full Newton step (the Hessian in one batch), so L-BFGS-B is not
        # restarted to confirm its end (Pastes: 2-3 of its ~17 batched evaluations)
        x, fx, converged = lbfgs_restarts(fun_jac, x, fx, bounds, ftol=1e-10, restarts=1 if fz.dense else 4)
        x, fx = _polish(negll_batch, x, fx, lower, full=fz.dense)
    # σ and the absolute Λ at the optimum
    if profile:
        # one factorization gives σ̂ and β̂: at Λ = σΛ_rel, X'V⁻¹X = A_X/σ² and X'V⁻¹y = bb/σ² of Λ_rel
        logdetV, A_X, bb, qq = _cross(st, fz, rel_lams(x), 1.0)
        fitted, logdetA = _gls(A_X, bb)
        r2, dof = qq - fitted, (st.n_obs - st.p if reml else st.n_obs)
        s2 = r2 / dof if r2 > 0 and dof > 0 else math.nan
        ll = -0.5 * (logdetV + dof * (1.0 + math.log(2.0 * math.pi * s2)) + (logdetA if reml else 0.0))
        sigma = math.sqrt(s2)
        lams = [lam * sigma for lam in rel_lams(x)]
        A_X = A_X / s2 if st.p else A_X
        bb = bb / s2 if st.p else bb
    else:
        sigma = 1.0 if not has_sigma else float(math.exp(x[-1]))
        lams = [s.tril(t) * sigma if f is None else f for s, t, f in zip(settings, _split_theta(x, settings), fixed)]
        ll = -fx
        # β̂ and its covariance (X'V⁻¹X)⁻¹
        _, A_X, bb, _ = _cross(st, fz, lams, sigma * sigma)
    if st.p:
        cov = np.linalg.inv(A_X)
        beta = cov @ bb
    else:
        cov, beta = np.zeros((0, 0)), np.zeros(0)
    return RemlResult(sigma=sigma, lams=lams, theta=x, loglik=float(ll), beta=beta, beta_cov=0.5 * (cov + cov.T),
                      converged=bool(converged and math.isfinite(ll)), evaluations=n_eval, backend=fz.backend)


def _polish(f: Any, x: np.ndarray, fx: float, lower: np.ndarray, *, full: bool = True) -> tuple[np.ndarray, float]:
    """Damped Newton steps (finite differences, :func:`poolwise.infer.imh._newton_mode`) on the
    coordinates away from their bound, diagonals on the log scale: the last digits L-BFGS-B leaves
    on a flat criterion (a factor with few levels).  With ``full=False`` (each evaluation a sparse
    factorization) Newton steps one coordinate at a time (2 evaluations each, a few sweeps)."""
    lo = np.concatenate([lower, np.full(x.size - lower.size, -np.inf)])
    free = ~(np.isfinite(lo) & (x <= lo + 1e-7))
    logged = free & np.isfinite(lo)
    if not free.any():
        return x, fx

    def embed(z: np.ndarray) -> np.ndarray:
        out = np.broadcast_to(x, (z.shape[0], x.size)).copy()
        zz = z.copy()
        zz[:, logged[free]] = np.exp(zz[:, logged[free]])
        out[:, free] = zz
        return out

    z0 = x[free].copy()
    z0[logged[free]] = np.log(z0[logged[free]])
    if not full:
        z, fz_ = _coordinate_newton(lambda zb: f(embed(np.atleast_2d(zb))), z0, fx)
    else:
        z, fz_, _, _ = imh._newton_mode(lambda zb: f(embed(np.atleast_2d(zb))), z0, max_iter=30)
    if np.isfinite(fz_) and fz_ <= fx:
        return embed(z[None])[0], float(fz_)
    return x, fx


def _coordinate_newton(f: Any, z: np.ndarray, fz: float, sweeps: int = 3, h: float = 1e-3) -> tuple[np.ndarray, float]:
    """Newton steps along each coordinate in turn (central second differences), kept when they lower f."""
    z = z.copy()
    for _ in range(sweeps):
        start = fz
        for i in range(z.size):
            pts = np.repeat(z[None], 2, axis=0)
            pts[0, i] += h
            pts[1, i] -= h
            up, dn = f(pts)
            curv = (up - 2.0 * fz + dn) / (h * h)
            if not (np.isfinite(curv) and curv > 0):
                continue
            step = -np.clip((up - dn) / (2.0 * h) / curv, -0.5, 0.5)
            trial = z.copy()
            trial[i] += step
            ft = float(f(trial[None])[0])
            if ft < fz:
                z, fz = trial, ft
        if start - fz < 1e-10 * max(1.0, abs(fz)):
            break
    return z, fz


def _split_theta_batch(theta: np.ndarray, settings: Sequence[FactorSetting]) -> list[np.ndarray]:
    out, i = [], 0
    for s in settings:
        out.append(theta[:, i:i + s.n_theta])
        i += s.n_theta
    return out


def _profiled_batch(st: SparseStats, pat: _Pattern, rel: Sequence[np.ndarray], *, reml: bool) -> np.ndarray:
    """:func:`_profiled`'s ℓ for a batch of relative factors (dense, small systems)."""
    B = rel[0].shape[0] if rel else 1
    bc = cross_batch(st, pat, np.ones(B), rel)
    r2, logdetA = bc.qq.copy(), np.zeros(B)
    if st.p == 1:  # one coefficient (an intercept): X'V⁻¹X is a number, no factor to take
        ax = bc.A_X[:, 0, 0]
        with np.errstate(all="ignore"):
            r2 -= bc.bb[:, 0] ** 2 / ax
            logdetA = np.where(ax > 0, np.log(np.abs(ax)), np.nan)
    elif st.p:
        LX = np.linalg.cholesky(bc.A_X)
        z = tri_solve(LX, bc.bb[..., None])[..., 0]
        r2 -= (z * z).sum(axis=1)
        logdetA = 2.0 * np.log(np.diagonal(LX, axis1=1, axis2=2)).sum(axis=1)
    dof = st.n_obs - st.p if reml else st.n_obs
    with np.errstate(all="ignore"):
        s2 = r2 / dof
        dev = bc.logdetV + dof * (1.0 + np.log(2.0 * math.pi * s2)) + (logdetA if reml else 0.0)
    return np.where((r2 > 0) & np.isfinite(dev), -0.5 * dev, -np.inf)


def _start_theta(s: FactorSetting) -> np.ndarray:
    if not s.learned:
        return np.zeros(0)
    if s.correlated and s.q > 1:
        r, c = _tril_column_major(s.q)
        return (r == c).astype(float)
    return np.ones(s.q)


def _scale(st: SparseStats) -> float:
    """The residual SD of the regression on X alone (a scale for starting points)."""
    rss, n = st.yWy, max(st.n_obs, 1)
    if st.p:
        beta = np.linalg.lstsq(st.XtWX, st.XtWy, rcond=None)[0]
        rss = st.yWy - float(beta @ st.XtWy)
    return math.sqrt(max(rss, 1e-300) / max(n - st.p, 1))


# ----------------------------------------------------------------------------------------------
# exact conditional draws of β and every group value


def draw(st: SparseStats, fz: Factorizer, m0: np.ndarray, Q0: np.ndarray, sigma: np.ndarray,
         lams: Sequence[np.ndarray], rng: np.random.Generator, *, with_groups: Sequence[bool] | None = None
         ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draws of (β, b) given (σ, Λ) per draw, with one factorization per distinct (σ, Λ).

    Parameters
    ----------
    sigma
        (D,) residual SDs.
    lams
        Per factor, (D, q_k, q_k) absolute factors.
    m0, Q0
        β's prior mean and precision (Q0 = 0 for a flat prior: then β ~ N(β̂, (X'V⁻¹X)⁻¹)).

    Returns
    -------
    beta (D, p) and, per factor, b (D, J_k, q_k).
    """
    D, p = sigma.shape[0], st.p
    beta = np.zeros((D, p))
    b = [np.zeros((D, J, q)) for J, q in zip(st.J, st.q)]
    key = np.concatenate([sigma[:, None]] + [lam.reshape(D, -1) for lam in lams], axis=1)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    if fz.dense and first.size > D // 8:  # mostly distinct (σ, Λ): batched dense factors
        step = fz.pattern.schur.chunk()
        for s in range(0, D, step):
            sl = slice(s, min(D, s + step))
            beta[sl], parts = _draw_batch(st, fz.pattern, m0, Q0, sigma[sl], [lam[sl] for lam in lams], rng)
            for k, bk in enumerate(parts):
                if with_groups is None or with_groups[k]:
                    b[k][sl] = bk
        return beta, b
    inverse = np.asarray(inverse).ravel()
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0, True])
    ZtWX = np.concatenate([v.reshape(-1, p) for v in st.ZtWX], axis=0) if p else None
    ZtWy = np.concatenate([v.reshape(-1) for v in st.ZtWy])
    for s, e in zip(bounds[:-1], bounds[1:]):
        rows = order[s:e]
        i0 = int(rows[0])
        s2 = float(sigma[i0]) ** 2
        lam_i = [lam[i0] for lam in lams]
        n = rows.size
        if p:
            _, A_X, bb, _ = _cross(st, fz, lam_i, s2)
            LP = np.linalg.cholesky(A_X + Q0)
            rr = bb - A_X @ m0
            z = sla.solve_triangular(LP, rr, lower=True)
            eps = rng.standard_normal((p, n))
            bt = m0[:, None] + sla.solve_triangular(LP, z[:, None] + eps, lower=True, trans="T")  # (p, n)
            beta[rows] = bt.T
            res = ZtWy[:, None] - ZtWX @ bt  # type: ignore[operator]
        else:
            fz.factor(lam_i, s2)
            res = np.broadcast_to(ZtWy[:, None], (ZtWy.size, n))
        rhs = _lam_t(lam_i, [r.reshape(J, q, n) for r, J, q in zip(_split_q(res, st), st.J, st.q)]) / s2
        t = fz.solve_L(rhs)
        a = fz.solve_Lt(t + rng.standard_normal(t.shape))
        for k, bk in enumerate(_lam(lam_i, st, a)):
            if with_groups is None or with_groups[k]:
                b[k][rows] = bk
    return beta, b


def _draw_batch(st: SparseStats, pat: _Pattern, m0: np.ndarray, Q0: np.ndarray, sigma: np.ndarray,
                lams: Sequence[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """:func:`draw` for a batch of small systems (dense, batched LAPACK)."""
    bc = cross_batch(st, pat, sigma * sigma, lams)
    if not st.p:
        return _draws_from(st, bc, None, m0, sigma, lams, rng)
    LP = np.linalg.cholesky(bc.A_X + Q0)
    z = tri_solve(LP, (bc.bb - bc.A_X @ m0)[..., None])
    return _draws_from(st, bc, (LP, z), m0, sigma, lams, rng)


def _draws_from(st: SparseStats, bc: BatchCross, LPz: tuple[np.ndarray, np.ndarray] | None, m0: np.ndarray,
                sigma: np.ndarray, lams: Sequence[np.ndarray], rng: np.random.Generator
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """β ~ N(m0 + P⁻¹r, P⁻¹) (P = X'V⁻¹X + S0⁻¹ = LP LP', z = LP⁻¹r) and b = Λa, a ~ N(A⁻¹Λ'Z'W(y − Xβ)/σ²,
    A⁻¹), through A's factors in ``bc``."""
    B, p = sigma.shape[0], st.p
    s2 = sigma * sigma
    if p:
        assert LPz is not None
        LP, z = LPz
        beta = m0 + tri_solve(LP, z + rng.standard_normal((B, p, 1)), transpose=True)[..., 0]
        ZtWX = np.concatenate([v.reshape(-1, p) for v in st.ZtWX], axis=0)
        res = np.concatenate([v.reshape(-1) for v in st.ZtWy])[None] - beta @ ZtWX.T  # (B, Q)
    else:
        beta = np.zeros((B, 0))
        res = np.broadcast_to(np.concatenate([v.reshape(-1) for v in st.ZtWy]), (B, st.size))
    rhs = np.concatenate([np.einsum("bra,bjr->bja", lam, res[:, o:o + J * q].reshape(B, J, q)).reshape(B, -1)
                          for lam, o, J, q in zip(lams, st.offsets, st.J, st.q)], axis=1) / s2[:, None]
    t = bc.F.solve_L(rhs[..., None])
    a = bc.F.solve_Lt(t + rng.standard_normal(t.shape))[..., 0]  # (B, Q)
    out = []
    for lam, o, J, q in zip(lams, st.offsets, st.J, st.q):
        out.append(np.einsum("bra,bja->bjr", lam, a[:, o:o + J * q].reshape(B, J, q)))
    return beta, out


def _draw_factored(st: SparseStats, fz: Factorizer, m0: np.ndarray, pc: Pieces, sigma: float,
                   lams: Sequence[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One draw of (β, stacked Λa) given (σ, Λ) with A already factored (by :func:`pieces`)."""
    s2, p = sigma * sigma, st.p
    ZtWy = np.concatenate([v.reshape(-1) for v in st.ZtWy])
    if p:
        assert pc.LP is not None
        rr = pc.bb - pc.A_X @ m0
        z = sla.solve_triangular(pc.LP, rr, lower=True)
        beta = m0 + sla.solve_triangular(pc.LP, z + rng.standard_normal(p), lower=True, trans="T")
        res = ZtWy - np.concatenate([v.reshape(-1, p) for v in st.ZtWX], axis=0) @ beta
    else:
        beta, res = np.zeros(0), ZtWy
    rhs = _lam_t(lams, [r.reshape(J, q) for r, J, q in zip(_split_q(res, st), st.J, st.q)]) / s2
    t = fz.solve_L(rhs)
    a = fz.solve_Lt(t + rng.standard_normal(t.shape))
    return beta, np.concatenate([x[0].reshape(-1) for x in _lam(lams, st, a[:, None])])


def _split_q(v: np.ndarray, st: SparseStats) -> list[np.ndarray]:
    return [v[o:o + J * q] for o, J, q in zip(st.offsets, st.J, st.q)]


# ----------------------------------------------------------------------------------------------
# the posterior of the hyperparameters, every group value and β integrated out


class HyperTarget:
    """Log posterior of θ = (log σ, per learned factor: log s_1..q and CorrCholesky coordinates),
    β and b integrated out; batched over rows of θ (one factorization per row), with ``dim`` and
    ``center()`` as :func:`poolwise.infer.imh._imh` needs."""

    def __init__(self, st: SparseStats, fz: Factorizer, m0: np.ndarray, s0: np.ndarray,
                 settings: Sequence[FactorSetting], *, sigma_prior: Prior | None, sd_priors: Sequence[Sequence[Prior] | None],
                 lkj_eta: Sequence[float], seed: int = 0) -> None:
        self.st, self.fz, self.settings = st, fz, list(settings)
        self.m0 = m0
        self.Q0, self.logdet_prior = prior_precision(s0)
        if not np.isfinite(self.logdet_prior):  # a flat prior on some coefficient: its constant dropped
            s0v = np.asarray(s0, dtype=float)
            self.logdet_prior = float(2.0 * np.sum(np.log(s0v[np.isfinite(s0v)]))) if s0v.ndim == 1 else 0.0
        self.sigma_prior, self.sd_priors, self.lkj_eta = sigma_prior, list(sd_priors), list(lkj_eta)
        self.fixed = _fixed_lams(settings)
        self.n_sigma = int(sigma_prior is not None)
        self.n_corr = [s.q * (s.q - 1) // 2 if (s.learned and s.q > 1 and s.correlated) else 0 for s in settings]
        self.dim = self.n_sigma + sum(s.q + c for s, c in zip(settings, self.n_corr) if s.learned)
        self.n_eval = 0
        # the chains' evaluations make one draw of (β, b) each through their factors (no second
        # factorization for the draws: :meth:`evaluate_chains`); sparse factors cost far more than
        # their solves, so the importance-sampling rounds of the proposal are shorter there.  (Rounds of
        # 1000 dense draws measured nearly as well on Penicillin, but the long crossed SBC then fell back
        # to NUTS in 2 of 400 replications, against none with 2000: the proposal's fit is worth its cost.)
        self.carry = True
        self._drawing = False
        self.is_draws = 2000 if fz.dense else 400
        self.rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])
        self.last_theta: np.ndarray | None = None
        self.last_draws: tuple[np.ndarray, np.ndarray] = (np.zeros((0, st.p)), np.zeros((0, st.size)))

    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, list[np.ndarray | None], list[np.ndarray | None],
                                                 list[np.ndarray], np.ndarray]:
        """σ (B,), per factor s (B, q) or None, L_R (B, q, q) or None, Λ (B, q, q), log prior + Jacobian (B,)."""
        theta = np.atleast_2d(theta)
        B = theta.shape[0]
        lp = np.zeros(B)
        i = 0
        sds: list[np.ndarray | None] = []
        Ls: list[np.ndarray | None] = []
        lams: list[np.ndarray] = []
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            if self.n_sigma:
                assert self.sigma_prior is not None
                sigma = np.exp(theta[:, 0])
                lp = lp + self.sigma_prior.logpdf(sigma) + theta[:, 0]
                i = 1
            else:
                sigma = np.ones(B)
            for s, f, pri, nc, eta in zip(self.settings, self.fixed, self.sd_priors, self.n_corr, self.lkj_eta):
                if f is not None:
                    sds.append(None)
                    Ls.append(None)
                    lams.append(np.broadcast_to(f, (B, s.q, s.q)))
                    continue
                assert pri is not None
                sd = np.exp(theta[:, i:i + s.q])
                for k, pr in enumerate(pri):
                    lp = lp + pr.logpdf(sd[:, k]) + theta[:, i + k]
                i += s.q
                L = None
                if nc:
                    L, logjac = _corr_cholesky(theta[:, i:i + nc], s.q)
                    lp = lp + _lkj_cholesky_logpdf(L, eta) + logjac
                    i += nc
                    lams.append(sd[:, :, None] * L)
                else:
                    lams.append(sd[:, :, None] * np.eye(s.q))
                sds.append(sd)
                Ls.append(L)
        return sigma, sds, Ls, lams, lp

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        theta = np.atleast_2d(theta)
        sigma, _, _, lams, lp = self.unpack(theta)
        out = np.full(theta.shape[0], -np.inf)
        if self.fz.dense:
            ok = np.flatnonzero(np.isfinite(lp) & np.isfinite(sigma) & (sigma > 0)
                                & np.all([np.all(np.isfinite(lam), axis=(1, 2)) for lam in lams], axis=0))
            step = self.fz.pattern.schur.chunk()
            dense_carry = (np.full((theta.shape[0], self.st.p), np.nan), np.full((theta.shape[0], self.st.size), np.nan)) \
                if self._drawing else None
            for s in range(0, ok.size, step):
                idx = ok[s:s + step]
                self.n_eval += idx.size
                with np.errstate(all="ignore"):
                    try:
                        ll, dr = _pieces_batch(self.st, self.fz.pattern, self.m0, self.Q0, self.logdet_prior, sigma[idx],
                                               [np.ascontiguousarray(lam[idx]) for lam in lams],
                                               self.rng if dense_carry is not None else None)
                        if dense_carry is not None and dr is not None:
                            dense_carry[0][idx] = dr[0]
                            dense_carry[1][idx] = np.concatenate([v.reshape(idx.size, -1) for v in dr[1]], axis=1)
                    except np.linalg.LinAlgError:  # one singular matrix in the batch: one at a time (no draws)
                        ll = np.array([_row_ll(self, sigma, lams, i) for i in idx])
                out[idx] = np.where(np.isfinite(ll + lp[idx]), ll + lp[idx], -np.inf)
            if dense_carry is not None:
                self.last_theta, self.last_draws = theta.copy(), dense_carry
            return out
        # one draw of (β, b) per evaluated θ through its factor (no second factorization for the draws)
        carry = (np.zeros((theta.shape[0], self.st.p)), np.zeros((theta.shape[0], self.st.size))) if self._drawing \
            else None
        for b in range(theta.shape[0]):
            if not (np.isfinite(lp[b]) and np.isfinite(sigma[b]) and sigma[b] > 0
                    and all(np.all(np.isfinite(lam[b])) for lam in lams)):
                continue
            self.n_eval += 1
            with np.errstate(all="ignore"):
                try:
                    lam_b = [lam[b] for lam in lams]
                    pc = pieces(self.st, self.fz, self.m0, self.Q0, self.logdet_prior, float(sigma[b]), lam_b)
                    ll = pc.ll
                    if carry is not None and np.isfinite(ll):
                        carry[0][b], carry[1][b] = _draw_factored(self.st, self.fz, self.m0, pc, float(sigma[b]),
                                                                  lam_b, self.rng)
                except (np.linalg.LinAlgError, ValueError, ArithmeticError):
                    continue
            v = ll + lp[b]
            out[b] = v if np.isfinite(v) else -np.inf
        if carry is not None:
            self.last_theta, self.last_draws = theta.copy(), carry
        return out

    def evaluate_chains(self, theta: np.ndarray) -> np.ndarray:
        """The log density of the chains' proposals (:func:`poolwise.infer.imh._chains`), with one draw
        of (β, b) per row through its factor, kept for :meth:`draws_at`."""
        self._drawing = True
        try:
            return self(theta)
        finally:
            self._drawing = False

    def draws_at(self, theta: np.ndarray, source: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray] | None:
        """The (β, stacked b) drawn when the chains' proposals were evaluated, for each row of θ (at the
        rows ``source`` of that batch when given); ``None`` when some row was not among them or has no draw."""
        if self.last_theta is None:
            return None
        pos = None if source is None else np.asarray(source, dtype=np.int64).ravel()
        if pos is None or pos.size != theta.shape[0] or np.any(pos >= self.last_theta.shape[0]) or \
                not np.array_equal(self.last_theta[pos], theta):
            lookup = {row.tobytes(): i for i, row in enumerate(self.last_theta)}
            pos = np.array([lookup.get(row.tobytes(), -1) for row in theta], dtype=np.int64)
        if np.any(pos < 0):
            return None
        beta, b = self.last_draws[0][pos], self.last_draws[1][pos]
        if not (np.all(np.isfinite(beta)) and np.all(np.isfinite(b))):
            return None
        return beta, b

    def center(self) -> np.ndarray:
        """A data-scaled start: σ at 0.8 and each SD at 0.5 of the regression's residual SD (per unit
        of its term's root mean square), correlations 0."""
        st = self.st
        scale = _scale(st)
        parts: list[np.ndarray] = []
        if self.n_sigma:
            parts.append(np.array([math.log(0.8 * scale)]))
        for s, M, nc in zip(self.settings, st.ZtWZ, self.n_corr):
            if not s.learned:
                continue
            zz = np.sqrt(np.maximum(np.einsum("jkk->k", M) / max(st.n_obs, 1), 1e-300))
            parts.append(np.log(0.5 * scale / zz))
            parts.append(np.zeros(nc))
        return np.concatenate(parts) if parts else np.zeros(0)


# ----------------------------------------------------------------------------------------------
# a bound model in, Draws out


def _settings(bound: BoundSpec) -> list[FactorSetting]:
    return [FactorSetting(q=b.q, correlated=b.term.correlated and b.q > 1, Sigma=b.Sigma) for b in bound.blocks]


def _blocks(bound: BoundSpec, C: int, D: int, sds: Sequence[np.ndarray | None], corrs: Sequence[np.ndarray | None],
            values: Sequence[np.ndarray]) -> tuple[BlockDraws, ...]:
    """Per block: the SDs and correlations (per draw, or one estimate repeated over the draws) and the
    group values shaped (chain, draw, …)."""
    def shaped(a: np.ndarray | None, tail: tuple[int, ...]) -> np.ndarray | None:
        if a is None:
            return None
        return (a if a.ndim > len(tail) else np.broadcast_to(a, (C * D,) + tail).copy()).reshape((C, D) + tail)

    out = []
    for blk, sd, corr, v in zip(bound.blocks, sds, corrs, values):
        out.append(BlockDraws(sd=shaped(sd, (blk.q,)), corr=shaped(corr, (blk.q, blk.q)),
                              values=None if blk.pooled else v.reshape(C, D, blk.n_groups, blk.q)))
    return tuple(out)


def sd_corr_estimates(bound: BoundSpec, lams: Sequence[np.ndarray]
                      ) -> tuple[list[np.ndarray | None], list[np.ndarray | None], dict[str, Any]]:
    """Per block at the estimates Λ (Σ = ΛΛ'): its SDs (q,) and correlation matrix (q, q) (``None``
    for a fixed Σ, and the correlations of uncorrelated terms), and the ``estimates`` entries ``sd``
    and ``corr`` by name."""
    sds: list[np.ndarray | None] = []
    corrs: list[np.ndarray | None] = []
    sd_est: dict[str, float] = {}
    corr_est: dict[str, float] = {}
    for blk, lam in zip(bound.blocks, lams):
        if blk.Sigma is not None:
            sds.append(None)
            corrs.append(None)
            continue
        S = lam @ lam.T
        sd = np.sqrt(np.diagonal(S))
        sds.append(sd)
        sd_est.update({n: float(v) for n, v in zip(blk.sd_names, sd)})
        if blk.term.correlated and blk.q > 1:
            with np.errstate(invalid="ignore", divide="ignore"):
                R = S / np.outer(sd, sd)
            corrs.append(R)
            corr_est.update({n: float(R[i, j]) for n, (i, j) in zip(
                blk.cor_names, [(i, j) for j in range(blk.q) for i in range(j)])})
        else:
            corrs.append(None)
    named: dict[str, Any] = {}
    if sd_est:
        named["sd"] = sd_est
    if corr_est:
        named["corr"] = corr_est
    return sds, corrs, named


def sample(bound: BoundSpec, *, seed: int, chains: int = 4, draws: int = 1000,
           progress: Progress | None = None) -> Draws | str:
    """Exact posterior draws of a Gaussian model with any grouping factors (see the module text).

    Returns the draws, or a string saying why the independence sampler of the hyperparameters
    could not be trusted (the caller then fits the full model by NUTS).
    """
    from .exact import HyperPrior

    t0 = time.perf_counter()
    if progress:
        progress("cross-products", 0.0)
    st = bound_sparse_stats(bound)
    fz = Factorizer(st)
    settings = _settings(bound)
    hp = HyperPrior.from_bound(bound)
    m0, s0 = st.shift.prior(np.asarray(hp.m0, dtype=float).reshape(st.p), np.asarray(hp.s0, dtype=float).reshape(st.p))
    target = HyperTarget(
        st, fz, m0, s0, settings, seed=seed, sigma_prior=hp.sigma if bound.has_sigma else None,
        sd_priors=[[bound.priors[n] for n in b.sd_names] if b.Sigma is None else None for b in bound.blocks],
        lkj_eta=[float(bound.priors[f"cor({b.factor})"].args[0]) if f"cor({b.factor})" in bound.priors else 1.0
                 for b in bound.blocks])
    ss_hyper, ss_cond = np.random.SeedSequence(seed).spawn(2)
    C, D = chains, draws
    info: dict[str, Any] = {"hyper_dims": target.dim, "factorization": fz.backend, "group_values": st.size}
    if progress:
        progress("hyperparameters", 0.05)
    with _blas(fz):
        return _sample(bound, st, fz, target, m0, C, D, ss_hyper, ss_cond, info, t0, progress)


def _sample(bound: BoundSpec, st: SparseStats, fz: Factorizer, target: HyperTarget, m0: np.ndarray, C: int, D: int,
            ss_hyper: Any, ss_cond: Any, info: dict[str, Any], t0: float, progress: Progress | None) -> Draws | str:
    if target.dim:
        res = imh._imh(target, C, D, np.random.default_rng(ss_hyper))
        if isinstance(res, str):
            return res
        if res.info["acceptance_rate"] < imh.IMH_MIN_ACCEPT:
            return f"the independence MH acceptance rate was {res.info['acceptance_rate']:.2f} (< {imh.IMH_MIN_ACCEPT})"
        theta = res.theta.reshape(C * D, target.dim)
        source = res.source
        stats_out = {"accepted": res.accepted, "lp": res.lp}
        info.update(res.info)
        info.update({"hyper_sampler": "independence MH (t proposal)", "warmup": 0})
    else:
        theta = np.zeros((C * D, 0))
        source = None
        lp0 = target(np.zeros((1, 0)))[0]
        stats_out = {"lp": np.full((C, D), lp0)}
        info.update({"hyper_sampler": "none (nothing to sample)", "warmup": 0})
    info["hyper_evaluations"] = target.n_eval
    t1 = time.perf_counter()
    sigma, sds, Ls, lams, _ = target.unpack(theta)
    if progress:
        progress("group values", 0.6)
    carried = target.draws_at(theta, source) if target.carry else None
    if carried is not None:
        beta = carried[0]
        b = [carried[1][:, o:o + J * q].reshape(-1, J, q) for o, J, q in zip(st.offsets, st.J, st.q)]
        info["group_values_drawn"] = "with the hyperparameters' evaluations"
    else:
        beta, b = draw(st, fz, m0, target.Q0, sigma, [np.ascontiguousarray(lam) for lam in lams],
                       np.random.default_rng(ss_cond))
    beta = st.shift.unshift(beta)
    t2 = time.perf_counter()
    info.update({"seconds": t2 - t0, "seconds_hyper": t1 - t0, "seconds_conditional": t2 - t1})
    corrs = [None if L is None else L @ np.swapaxes(L, -1, -2) for L in Ls]
    if progress:
        progress("done", 1.0)
    return Draws(beta=beta.reshape(C, D, st.p), sigma=sigma.reshape(C, D) if bound.has_sigma else None, tau=None,
                 b=None, sample_stats=stats_out, method="exact", info=info,
                 blocks=_blocks(bound, C, D, sds, corrs, b))


def empirical(bound: BoundSpec, *, seed: int, chains: int = 4, draws: int = 1000, reml: bool = True,
              progress: Progress | None = None) -> DeferredDraws:
    """REML (or ML) for any grouping factors; the draws, β ~ N(β̂, (X'V⁻¹X)⁻¹) and every b | β
    exactly, are made when first used."""
    t0 = time.perf_counter()
    if progress:
        progress("cross-products", 0.0)
    st = bound_sparse_stats(bound)
    fz = Factorizer(st)
    if progress:
        progress("hyperparameters", 0.1)
    est = fit_reml(st, _settings(bound), has_sigma=bound.has_sigma, reml=reml, fz=fz)
    C, D = chains, draws
    p = st.p
    beta_hat = st.shift.unshift(est.beta)
    estimates: dict[str, Any] = {"beta": beta_hat.tolist()}
    if bound.has_sigma:
        estimates["sigma"] = est.sigma
    sds, corrs, named = sd_corr_estimates(bound, est.lams)
    estimates.update(named)
    info = {"method": "REML" if reml else "ML", "estimates": estimates, "loglik": est.loglik,
            "criterion": -2.0 * est.loglik, "converged": est.converged, "evaluations": est.evaluations,
            "factorization": est.backend, "seconds": time.perf_counter() - t0}
    if progress:
        progress("done", 1.0)

    def make() -> Draws:
        lams = [np.broadcast_to(lam, (C * D,) + lam.shape) for lam in est.lams]
        with _blas(fz):
            beta, b = draw(st, fz, np.zeros(p), np.zeros((p, p)), np.full(C * D, est.sigma), lams,
                           np.random.default_rng(seed))
        return Draws(beta=st.shift.unshift(beta).reshape(C, D, p),
                     sigma=np.full((C, D), est.sigma) if bound.has_sigma else None, tau=None, b=None,
                     method="empirical", info=info, blocks=_blocks(bound, C, D, sds, corrs, b))

    return DeferredDraws(method="empirical", info=info, n_chains=C, n_draws=D, make=make)


def _row_ll(target: HyperTarget, sigma: np.ndarray, lams: Sequence[np.ndarray], i: int) -> float:
    """log p(y | σ, Λ) at row i of a batch alone; −∞ where a factor does not exist (A, or X'V⁻¹X + S0⁻¹
    after the cancellation far in the tails, e.g. an SD of 1e49 against σ of 0.02), as :func:`pieces`."""
    try:
        return float(pieces_batch(target.st, target.fz.pattern, target.m0, target.Q0, target.logdet_prior,
                                  sigma[i:i + 1], [lam[i:i + 1] for lam in lams])[0])
    except np.linalg.LinAlgError:
        return -math.inf
