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

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["SchurLayout", "SchurBatch", "schur_flops", "tri_solve"]


def schur_flops(J: tuple[int, ...] | list[int], q: tuple[int, ...] | list[int]) -> float:
    """Flops of one factor by elimination of the largest factor: J_e q_e R² + R³/3 + J_e q_e³/3."""
    sizes = [j * k for j, k in zip(J, q)]
    if not sizes:
        return 0.0
    e = int(np.argmax(sizes))
    n1, R = sizes[e], sum(sizes) - sizes[e]
    return float(n1 * R * R + R**3 / 3.0 + J[e] * q[e] ** 3 / 3.0)


def _sandwich(La: np.ndarray, T: np.ndarray, Lb: np.ndarray) -> np.ndarray:
    """La_b'T Lb_b per batch row, block by block: La (B, qa, qa), T (Ja, qa, Jb, qb), Lb (B, qb, qb) →
    (B, Ja qa, Jb qb)."""
    B, (Ja, qa, Jb, qb) = La.shape[0], T.shape
    if qa == 1 and qb == 1:  # intercepts: one scalar per batch row
        return np.asarray((La[:, 0, 0] * Lb[:, 0, 0])[:, None, None] * T.reshape(1, Ja, Jb))
    out = np.einsum("bri,jrks,bsc->bjikc", La, T, Lb)
    return np.asarray(out.reshape(B, Ja * qa, Jb * qb))


class SchurLayout:
    """The blocks of A once the largest factor (e) is ordered first: dense templates of Z_e'WZ_l (A₁₂)
    and of the other factors' cross-products (A₂₂), rebuilt when the pattern's blocks change."""

    def __init__(self, J: tuple[int, ...], q: tuple[int, ...], offsets: tuple[int, ...],
                 pair_keys: list[tuple[int, int]], pair_ab: list[tuple[np.ndarray, np.ndarray]]) -> None:
        sizes = [j * k for j, k in zip(J, q)]
        self.J, self.q = tuple(J), tuple(q)
        self.Q = Q = int(sum(sizes))
        self.e = e = int(np.argmax(sizes)) if sizes else 0
        self.J1, self.q1 = (J[e], q[e]) if sizes else (0, 1)
        self.n1 = n1 = sizes[e] if sizes else 0
        self.R = Q - n1
        # the original index of each position in the new order (factor e first, the rest in order)
        first = np.arange(offsets[e], offsets[e] + n1) if sizes else np.zeros(0, np.int64)
        self.order = np.concatenate([first, np.setdiff1d(np.arange(Q), first)]).astype(np.int64)
        self.others = [k for k in range(len(sizes)) if k != e]
        self.roff: dict[int, int] = {}
        at = 0
        for k in self.others:
            self.roff[k] = at
            at += sizes[k]
        # flat positions in R × R of each other factor's (J_l, q_l, q_l) diagonal blocks
        self.diag22: dict[int, np.ndarray] = {}
        for k in self.others:
            base = self.roff[k] + np.arange(J[k])[:, None, None] * q[k]
            r = base + np.arange(q[k])[None, :, None]
            c = base + np.arange(q[k])[None, None, :]
            self.diag22[k] = (r * self.R + c).ravel()
        self.pair_keys, self.pair_ab = list(pair_keys), list(pair_ab)
        self._src: list[np.ndarray] | None = None
        self._T12: dict[int, np.ndarray] = {}
        self._T22: dict[tuple[int, int], np.ndarray] = {}

    def _templates(self, pair_blocks: list[np.ndarray]) -> None:
        if self._src is not None and len(self._src) == len(pair_blocks) and \
                all(a is b for a, b in zip(self._src, pair_blocks)):
            return
        J, q, e = self.J, self.q, self.e
        self._T12 = {}
        self._T22 = {}
        for (k, l), (a, b), P in zip(self.pair_keys, self.pair_ab, pair_blocks):
            if k == e:
                T = self._T12.setdefault(l, np.zeros((J[e], q[e], J[l], q[l])))
                T[a, :, b, :] = P
            elif l == e:
                T = self._T12.setdefault(k, np.zeros((J[e], q[e], J[k], q[k])))
                T[b, :, a, :] = np.swapaxes(P, 1, 2)
            else:
                T = np.zeros((J[k], q[k], J[l], q[l]))
                T[a, :, b, :] = P
                self._T22[(k, l)] = T
        self._src = list(pair_blocks)

    def blocks(self, lams: Sequence[np.ndarray], s2: np.ndarray, ZtWZ: Sequence[np.ndarray],
               pair_blocks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A₁₁ (B, J_e, q_e, q_e), A₁₂ (B, n1, R) and A₂₂ (B, R, R; its lower triangle) for a batch."""
        self._templates(pair_blocks)
        B, e, R, q = s2.shape[0], self.e, self.R, self.q
        inv = (1.0 / s2)[:, None, None]
        lam_e = lams[e]
        M = ZtWZ[e]
        if self.q1 == 1:
            A11 = (lam_e[:, 0, 0] ** 2 / s2)[:, None, None, None] * M[None] + 1.0
        else:
            A11 = np.einsum("bri,jrs,bsc->bjic", lam_e, M, lam_e) / s2[:, None, None, None] + np.eye(self.q1)
        A12 = np.zeros((B, self.n1, R))
        A22 = np.zeros((B, R * R))
        for k in self.others:
            o, w = self.roff[k], self.J[k] * q[k]
            if k in self._T12:
                A12[:, :, o:o + w] = _sandwich(lam_e, self._T12[k], lams[k]) * inv
            Mk = ZtWZ[k]
            if q[k] == 1:
                d = (lams[k][:, 0, 0] ** 2 / s2)[:, None] * Mk.reshape(1, -1) + 1.0
            else:
                d = (np.einsum("bri,jrs,bsc->bjic", lams[k], Mk, lams[k]) / s2[:, None, None, None]
                     + np.eye(q[k])).reshape(B, -1)
            A22[:, self.diag22[k]] = d
        A22 = A22.reshape(B, R, R)
        for (k, l), T in self._T22.items():  # k < l: the block below the diagonal is (l, k)
            ok, wk, ol, wl = self.roff[k], self.J[k] * q[k], self.roff[l], self.J[l] * q[l]
            A22[:, ol:ol + wl, ok:ok + wk] = np.swapaxes(_sandwich(lams[k], T, lams[l]), 1, 2) * inv
        return A11, A12, A22

    def chunk(self) -> int:
        """Values of (σ, Λ) per batch: about 2²² numbers in the largest work array."""
        return max(1, (1 << 22) // max(1, self.n1 * self.R + self.R * self.R, self.Q))


class SchurBatch:
    """The factors for a batch of B values of (σ², Λ): lams per factor (B, q_k, q_k), s2 (B,), with the
    pattern's current blocks of Z'WZ.

    Raises :class:`numpy.linalg.LinAlgError` when some A in the batch is not positive definite.
    """

    def __init__(self, lay: SchurLayout, lams: Sequence[np.ndarray], s2: np.ndarray, ZtWZ: Sequence[np.ndarray],
                 pair_blocks: list[np.ndarray]) -> None:
        self.lay = lay
        B = s2.shape[0]
        self.B = B
        J1, q1, n1, R = lay.J1, lay.q1, lay.n1, lay.R
        A11, A12, A22 = lay.blocks(lams, s2, ZtWZ, pair_blocks)
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
            G = tri_solve(self.l11.reshape(B * J1, q1, q1), A12.reshape(B * J1, q1, R)).reshape(B, n1, R)
        self.G = G
        if R:
            S = A22 - np.matmul(np.swapaxes(G, 1, 2), G)  # its lower triangle is S's (Cholesky reads only that)
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
        x = tri_solve(self.l11.reshape(B * J1, q1, q1), v.reshape(B * J1, q1, -1), transpose=transpose)
        return x.reshape(B, J1 * q1, -1)

    def solve_L(self, v: np.ndarray) -> np.ndarray:
        """L⁻¹Pv for v (B, Q, m) in A's original order (the result is in the factor's order)."""
        n1 = self.lay.n1
        vp = v[:, self.lay.order]
        c1 = self._l11_solve(vp[:, :n1])
        if not self.lay.R:
            return c1
        c2 = tri_solve(self.LS, vp[:, n1:] - np.matmul(np.swapaxes(self.G, 1, 2), c1))
        return np.concatenate([c1, c2], axis=1)

    def solve_Lt(self, t: np.ndarray) -> np.ndarray:
        """P'L⁻ᵀt for t (B, Q, m) in the factor's order (the result is in A's original order)."""
        n1 = self.lay.n1
        out = np.empty_like(t)
        if self.lay.R:
            x2 = tri_solve(self.LS, t[:, n1:], transpose=True)
            x1 = self._l11_solve(t[:, :n1] - np.matmul(self.G, x2), transpose=True)
            out[:, self.lay.order] = np.concatenate([x1, x2], axis=1)
        else:
            out[:, self.lay.order] = self._l11_solve(t[:, :n1], transpose=True)
        return out


#: up to this size a batch of triangular systems is solved by substitution, row by row over the batch
#: (NumPy's stacked solve factors each small matrix anew by LU, at a fixed cost per matrix)
SUBSTITUTE_MAX = 16


def tri_solve(L: np.ndarray, B: np.ndarray, *, transpose: bool = False) -> Any:
    """L⁻¹B (or L⁻ᵀB) for a batch of lower-triangular L (B, R, R) and B (B, R, m)."""
    R = L.shape[-1]
    if R > SUBSTITUTE_MAX:
        return np.linalg.solve(np.swapaxes(L, 1, 2) if transpose else L, B)
    x = np.empty(np.broadcast_shapes(B.shape, L.shape[:-1] + B.shape[-1:]))
    rows = range(R - 1, -1, -1) if transpose else range(R)
    for i in rows:
        if transpose:  # x_i = (b_i − Σ_{k>i} L_ki x_k) / L_ii
            acc = B[:, i] - np.einsum("bk,bkm->bm", L[:, i + 1:, i], x[:, i + 1:]) if i + 1 < R else B[:, i]
        else:  # x_i = (b_i − Σ_{k<i} L_ik x_k) / L_ii
            acc = B[:, i] - np.einsum("bk,bkm->bm", L[:, i, :i], x[:, :i]) if i else B[:, i]
        x[:, i] = acc / L[:, i, i, None]
    return x
