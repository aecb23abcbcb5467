"""Pooling factors: how far each group's estimate moves to the population, per posterior draw.

λ_jk = [(Σ⁻¹ + I_j)⁻¹]_kk / Σ_kk, with Σ the block's population covariance at the draw and I_j
group j's Fisher information about its terms (see :meth:`poolwise.fit.Fit.pooling_factors`, which
documents the statistic and its references).  Plain functions of the bound spec and arrays of
draws; :class:`~poolwise.fit.Fit` calls them.  Memory is O(draws × chunk of groups) whatever the
number of groups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .infer import BlockDraws
from .spec import BoundSpec, GroupBlock

__all__ = ["lambda_draws", "batch_pooling", "sigma_factor", "group_cross"]


def group_cross(Z: np.ndarray, w: np.ndarray, group: np.ndarray, J: int) -> np.ndarray:
    """Σ_{i in j} w_i z_i z_i' per group: (J, q, q) for w of shape (rows,), (…, J, q, q) for (…, rows)."""
    from scipy import sparse

    n, q = Z.shape
    G = sparse.csr_matrix((np.ones(n), (np.arange(n), group)), shape=(n, J))
    w = np.asarray(w, dtype=float)
    lead = w.shape[:-1]
    w2 = np.broadcast_to(w, lead + (n,)).reshape(-1, n)
    out = np.empty((w2.shape[0], J, q, q))
    for k in range(q):
        for m in range(k, q):
            s = np.asarray(G.T @ (w2 * (Z[:, k] * Z[:, m])).T).T  # (lead, J)
            out[:, :, k, m] = s
            out[:, :, m, k] = s
    return out.reshape(lead + (J, q, q))


def sigma_factor(block: GroupBlock, bd: BlockDraws, chains: int, draws: int) -> np.ndarray:
    """A factor L of the block's population covariance per draw, Σ = L L', (chains, draws, q, q):
    from the SD and correlation draws when learned, else from the fixed Σ."""
    q = block.q
    if bd.sd is not None:
        if bd.corr is not None:
            R = bd.corr + 1e-12 * np.eye(q)
            Lr = np.linalg.cholesky(R)
        else:
            Lr = np.broadcast_to(np.eye(q), (chains, draws, q, q))
        return np.asarray(bd.sd[..., :, None] * Lr)
    S = np.zeros((q, q)) if block.Sigma is None else np.asarray(block.Sigma, dtype=float)
    vals, vecs = np.linalg.eigh(S)
    L = vecs * np.sqrt(np.clip(vals, 0.0, None))
    return np.broadcast_to(L, (chains, draws, q, q))


def batch_pooling(values: np.ndarray) -> float:
    """Gelman & Pardoe's (2006) batch pooling factor 1 − Var_j(E[b_j]) / E[Var_j(b_j)] of one
    term's group values, (samples, J)."""
    within = float(values.var(axis=1).mean())
    return float(1.0 - values.mean(axis=0).var() / within) if within > 0 else 1.0


def lambda_draws(
    bound: BoundSpec, i: int, k: int, Sigma: np.ndarray, *,
    family_kwargs: Callable[[slice], dict[str, Any]], eta: Callable[[slice, slice], np.ndarray],
    memory_budget: int, groups: slice | None = None,
) -> np.ndarray:
    """λ_jk per draw, (samples, J) — block ``i``, term ``k``; ``groups`` a slice of the groups.

    ``Sigma`` is the block's covariance per draw, (samples, q, q); ``family_kwargs(draws)`` the
    family's parameter draws of a flat slice of the draws; ``eta(rows, draws)`` the linear
    predictor (draws, rows) of a slice of rows at a flat slice of the draws (used only where the
    information depends on η, i.e. links other than the identity).
    """
    b, fam = bound, bound.spec.fam
    block = b.blocks[i]
    q, S = block.q, Sigma.shape[0]
    gs = slice(None) if groups is None else groups
    J = len(range(block.n_groups)[gs])
    out = np.empty((S, J))
    step = max(1, memory_budget // (8 * J * max(q * q, 3) * 4))
    if fam.identity:  # information does not depend on η: Z'WZ per group, once
        if block.ZtWZ is not None:
            ZWZ = block.ZtWZ[gs]
        else:
            ZWZ = group_cross(block.Z, b.weights, block.group, block.n_groups)[gs]
    for s0 in range(0, S, step):
        ds = slice(s0, min(S, s0 + step))
        kw = family_kwargs(ds)
        if fam.identity:
            c = fam.information(np.zeros((1, 1)), **kw)  # (draws, 1): 1/σ² (× (ν+1)/(ν+3))
            info = c[:, :, None, None] * ZWZ[None]
        else:
            info = np.zeros((ds.stop - ds.start, J, q, q))
            n = b.n_obs
            chunk = max(1, memory_budget // (8 * (ds.stop - ds.start) * 4))
            for r0 in range(0, n, chunk):
                sl = slice(r0, min(n, r0 + chunk))
                w = fam.information(eta(sl, ds), **{**kw, "weights": b.weights[sl],
                                    "trials": None if b.trials is None else b.trials[sl]})
                info += group_cross(block.Z[sl], w, block.group[sl], J)
        Sg = Sigma[ds]
        t2 = Sg[:, k, k][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            if q == 1:
                noise = 1.0 / info[..., 0, 0]
                lam = np.where(t2 > 0, noise / (noise + t2), 1.0)
            else:
                A = np.eye(q) + Sg[:, None] @ info  # (draws, J, q, q)
                post = np.linalg.solve(A, np.broadcast_to(Sg[:, None], A.shape))
                lam = np.where(t2 > 0, post[..., k, k] / t2, 1.0)
        out[ds] = np.where(np.isfinite(lam), np.clip(lam, 0.0, 1.0), 1.0)
    return out
