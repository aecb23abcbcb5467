"""Batched dense Cholesky factors of A = I + Λ'Z'WZΛ/σ² by block elimination of one grouping factor.

Within one grouping factor every row belongs to one level, so that factor's own block of A is block
diagonal: J_e blocks of q_e × q_e.  Ordering that factor first (the one with the most group values,
J_e q_e) and eliminating it,

    A = [[A₁₁, A₁₂], [A₂₁, A₂₂]] = LL',   L = [[L₁₁, 0], [G', L_S]],
    L₁₁ = chol(A₁₁) (block diagonal),  G = L₁₁⁻¹A₁₂,  S = A₂₂ − G'G = L_S L_S',

so log|A| = log|A₁₁| + log|S| and L⁻¹, L⁻ᵀ act through L₁₁ (per level) and L_S, which is only as
large as the other factors' group values (R = Q − J_e q_e): Penicillin's A is 30 × 30, its S 6 × 6.
Everything is batched over values of (σ, Λ) with NumPy's stacked LAPACK calls.  The cost per value
is about J_e q_e R² + R³/3 flops (:func:`schur_flops`), against Q³/3 for the full dense factor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SchurLayout", "SchurBatch", "schur_flops"]


def schur_flops(J: tuple[int, ...] | list[int], q: tuple[int, ...] | list[int]) -> float:
    """Flops of one factor by elimination of the largest factor: J_e q_e R² + R³/3 + J_e q_e³/3."""
    sizes = [j * k for j, k in zip(J, q)]
    if not sizes:
        return 0.0
    e = int(np.argmax(sizes))
    n1, R = sizes[e], sum(sizes) - sizes[e]
    return float(n1 * R * R + R**3 / 3.0 + J[e] * q[e] ** 3 / 3.0)


class SchurLayout:
    """Where each listed nonzero of A (``rows``, ``cols``: the pattern's (row, col) list, whose first
    entries are each factor's (J_k, q_k, q_k) diagonal blocks in factor order) lands in A₁₁, A₁₂
    and A₂₂ once the largest factor is ordered first."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, J: tuple[int, ...], q: tuple[int, ...],
                 offsets: tuple[int, ...]) -> None:
        sizes = [j * k for j, k in zip(J, q)]
        Q = int(sum(sizes))
        self.e = e = int(np.argmax(sizes)) if sizes else 0
        self.J1, self.q1 = (J[e], q[e]) if sizes else (0, 1)
        self.n1 = n1 = sizes[e] if sizes else 0
        self.R = R = Q - n1
        self.Q = Q
        # the original index of each position in the new order (factor e first, the rest in order)
        first = np.arange(offsets[e], offsets[e] + n1) if sizes else np.zeros(0, np.int64)
        self.order = np.concatenate([first, np.setdiff1d(np.arange(Q), first)]).astype(np.int64)
        new = np.empty(Q, dtype=np.int64)
        new[self.order] = np.arange(Q)
        # factor e's diagonal blocks in the listed values
        start = int(sum(J[k] * q[k] * q[k] for k in range(e)))
        self.diag11 = slice(start, start + self.J1 * self.q1 * self.q1)
        r, c = new[rows], new[cols]
        in12 = (r < n1) & (c >= n1)
        in22 = (r >= n1) & (c >= n1)
        self.at12, self.flat12 = np.flatnonzero(in12), r[in12] * R + (c[in12] - n1)
        self.at22, self.flat22 = np.flatnonzero(in22), (r[in22] - n1) * R + (c[in22] - n1)

    def chunk(self) -> int:
        """Values of (σ, Λ) per batch: about 2²² numbers in the largest work array."""
        return max(1, (1 << 22) // max(1, self.n1 * self.R + self.R * self.R, self.Q))


class SchurBatch:
    """The factors for a batch of B values (``vals``: A's listed nonzeros, (B, nnz)).

    Raises :class:`numpy.linalg.LinAlgError` when some A in the batch is not positive definite.
    """

    def __init__(self, lay: SchurLayout, vals: np.ndarray) -> None:
        self.lay = lay
        B = vals.shape[0]
        self.B = B
        J1, q1, n1, R = lay.J1, lay.q1, lay.n1, lay.R
        A11 = vals[:, lay.diag11].reshape(B, J1, q1, q1)
        A12 = np.zeros((B, n1 * R))
        A12[:, lay.flat12] = vals[:, lay.at12]
        A12 = A12.reshape(B, n1, R)
        A22 = np.zeros((B, R * R))
        A22[:, lay.flat22] = vals[:, lay.at22]
        A22 = A22.reshape(B, R, R)
        if q1 == 1:
            d = A11[..., 0, 0]
            if not np.all(d > 0):
                raise np.linalg.LinAlgError("A's diagonal block is not positive definite")
            self.l11: np.ndarray = np.sqrt(d)  # (B, J1)
            logdet1 = 2.0 * np.log(self.l11).sum(axis=1)
            G = A12 / self.l11[..., None]
        else:
            self.l11 = np.linalg.cholesky(A11)  # (B, J1, q1, q1)
            logdet1 = 2.0 * np.log(np.diagonal(self.l11, axis1=2, axis2=3)).sum(axis=(1, 2))
            G = np.linalg.solve(self.l11, A12.reshape(B, J1, q1, R)).reshape(B, n1, R)
        self.G = G
        if R:
            S = A22 - np.matmul(np.swapaxes(G, 1, 2), G)
            self.LS = np.linalg.cholesky(S)
            logdet2 = 2.0 * np.log(np.diagonal(self.LS, axis1=1, axis2=2)).sum(axis=1)
        else:
            self.LS = np.zeros((B, 0, 0))
            logdet2 = np.zeros(B)
        self.logdet: np.ndarray = logdet1 + logdet2

    def _l11_solve(self, v: np.ndarray, *, transpose: bool = False) -> np.ndarray:
        """L₁₁⁻¹v (or L₁₁⁻ᵀv) for v (B, n1, m)."""
        if self.lay.q1 == 1:
            return v / self.l11[..., None]
        B, J1, q1 = self.B, self.lay.J1, self.lay.q1
        L = np.swapaxes(self.l11, 2, 3) if transpose else self.l11
        return np.linalg.solve(L, v.reshape(B, J1, q1, -1)).reshape(B, J1 * q1, -1)

    def solve_L(self, v: np.ndarray) -> np.ndarray:
        """L⁻¹Pv for v (B, Q, m) in A's original order (the result is in the factor's order)."""
        n1 = self.lay.n1
        vp = v[:, self.lay.order]
        c1 = self._l11_solve(vp[:, :n1])
        if not self.lay.R:
            return c1
        c2 = _tri(self.LS, vp[:, n1:] - np.matmul(np.swapaxes(self.G, 1, 2), c1))
        return np.concatenate([c1, c2], axis=1)

    def solve_Lt(self, t: np.ndarray) -> np.ndarray:
        """P'L⁻ᵀt for t (B, Q, m) in the factor's order (the result is in A's original order)."""
        n1 = self.lay.n1
        out = np.empty_like(t)
        if self.lay.R:
            x2 = _tri(self.LS, t[:, n1:], transpose=True)
            x1 = self._l11_solve(t[:, :n1] - np.matmul(self.G, x2), transpose=True)
            out[:, self.lay.order] = np.concatenate([x1, x2], axis=1)
        else:
            out[:, self.lay.order] = self._l11_solve(t[:, :n1], transpose=True)
        return out


def _tri(L: np.ndarray, B: np.ndarray, *, transpose: bool = False) -> Any:
    """L⁻¹B (or L⁻ᵀB) for a batch of lower-triangular L (B, R, R) and B (B, R, m)."""
    return np.linalg.solve(np.swapaxes(L, 1, 2) if transpose else L, B)
