"""Per-group sufficient statistics of the Gaussian model, from row arrays or inside the engine.

For observation weights w (ones, or 1/se² when standard errors are known), the collapsed
marginal likelihood of ``y ~ X β + b_g + e`` needs only, per group j,

    a_j = Σ w,   sy_j = Σ w y,   u_j = Σ w x (a p-vector),   n_j,

and, over all rows, X'WX, X'Wy, y'Wy and Σ log w.  After this one pass over the rows the cost
of every likelihood evaluation depends on the number of groups only.

The pass is NumPy's for rows in memory (:func:`reduce_arrays`, :func:`block_stats`); for rows
that stay in DuckDB or Spark it is one aggregation query (:mod:`poolwise.query`), whose result a
bound spec carries (:attr:`~poolwise.spec.BoundSpec.reduced`, taken by :func:`reduce` and
:func:`bound_block_stats`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spec import BoundSpec

__all__ = ["Reduced", "BlockStats", "reduce", "reduce_arrays", "block_stats", "bound_block_stats"]


@dataclass(frozen=True)
class Reduced:
    """Sufficient statistics, one row per group.

    Attributes
    ----------
    n
        Rows per group, shape (J,).
    a
        Σ w per group, shape (J,) (equals ``n`` without known standard errors).
    sy
        Σ w·y per group, shape (J,).
    u
        Σ w·x per group, shape (J, p).
    sy2
        Σ w·y² per group, shape (J,).
    XtWX, XtWy, yWy
        Totals over all rows: (p, p), (p,), scalar.
    sum_log_w
        Σ log w over all rows.
    n_obs
        Number of rows.
    """

    n: np.ndarray
    a: np.ndarray
    sy: np.ndarray
    u: np.ndarray
    sy2: np.ndarray
    XtWX: np.ndarray
    XtWy: np.ndarray
    yWy: float
    sum_log_w: float
    n_obs: int

    @property
    def n_groups(self) -> int:
        return int(self.n.shape[0])

    @property
    def p(self) -> int:
        return int(self.XtWX.shape[0])


def reduce_arrays(
    y: np.ndarray, X: np.ndarray, w: np.ndarray, group: np.ndarray, n_groups: int
) -> Reduced:
    """Sufficient statistics from row arrays (``group`` holds 0-based group indices)."""
    wy = w * y
    wX = X * w[:, None]
    u = np.zeros((n_groups, X.shape[1]))
    for k in range(X.shape[1]):
        u[:, k] = np.bincount(group, weights=wX[:, k], minlength=n_groups)
    return Reduced(
        n=np.bincount(group, minlength=n_groups).astype(float),
        a=np.bincount(group, weights=w, minlength=n_groups),
        sy=np.bincount(group, weights=wy, minlength=n_groups),
        u=u,
        sy2=np.bincount(group, weights=wy * y, minlength=n_groups),
        XtWX=X.T @ wX,
        XtWy=X.T @ wy,
        yWy=float(wy @ y),
        sum_log_w=float(np.log(w).sum()),
        n_obs=int(y.shape[0]),
    )


def reduce(bound: BoundSpec) -> Reduced:
    """Per-group sufficient statistics of a bound Gaussian model (the outcome less the offset)."""
    if bound.reduced is not None:
        out: Reduced = bound.reduced.simple
        return out
    return reduce_arrays(bound.y - bound.offset, bound.X, bound.weights, bound.group, bound.n_groups)


def bound_block_stats(bound: BoundSpec, index: int = 0) -> BlockStats:
    """:class:`BlockStats` of one grouping factor of a bound Gaussian model (outcome less offset)."""
    if bound.reduced is not None:
        if index != 0:
            raise ValueError("Rows reduced in the query hold the statistics of one grouping factor.")
        out: BlockStats = bound.reduced.block
        return out
    blk = bound.blocks[index]
    return block_stats(bound.y - bound.offset, bound.X, blk.Z, bound.weights, blk.group, blk.n_groups)


@dataclass(frozen=True)
class BlockStats:
    """Sufficient statistics of the Gaussian model with q group terms (NumPy arrays).

    Attributes
    ----------
    n
        Rows per group, (J,).
    ZtWZ, ZtWX, ZtWy
        Per-group blocks Z_j'W_jZ_j (J, q, q), Z_j'W_jX_j (J, q, p) and Z_j'W_jy_j (J, q).
    XtWX, XtWy, yWy
        Totals over all rows: (p, p), (p,) and a scalar.
    sum_log_w
        Σ log w over all rows.
    n_obs
        Number of rows.
    """

    n: np.ndarray
    ZtWZ: np.ndarray
    ZtWX: np.ndarray
    ZtWy: np.ndarray
    XtWX: np.ndarray
    XtWy: np.ndarray
    yWy: float
    sum_log_w: float
    n_obs: int

    @property
    def n_groups(self) -> int:
        """J, the number of groups."""
        return int(self.n.shape[0])

    @property
    def p(self) -> int:
        """Number of common coefficients."""
        return int(self.XtWX.shape[0])

    @property
    def q(self) -> int:
        """Number of group terms."""
        return int(self.ZtWZ.shape[1])


def block_stats(
    y: np.ndarray, X: np.ndarray, Z: np.ndarray, w: np.ndarray | None, group: np.ndarray, n_groups: int
) -> BlockStats:
    """Sufficient statistics in one pass over the rows (O(n q (p + q)) time, O(n) extra memory).

    Parameters
    ----------
    y
        Response, (n,).
    X
        Common design, (n, p).
    Z
        Group-term design, (n, q) (a column of ones for a varying intercept).
    w
        Row weights (n,), ones or 1/se²; ``None`` for ones.
    group
        0-based group index of each row, (n,).
    n_groups
        J; groups without rows get zero blocks.

    Returns
    -------
    BlockStats

    Raises
    ------
    ValueError
        On mismatched shapes, non-positive weights or a group index out of range.
    """
    y = np.asarray(y, dtype=float).ravel()
    n = y.size
    X = np.asarray(X, dtype=float).reshape(n, -1)
    Z = np.asarray(Z, dtype=float).reshape(n, -1)
    w = np.ones(n) if w is None else np.asarray(w, dtype=float).ravel()
    group = np.asarray(group).ravel().astype(np.int64)
    if w.size != n or group.size != n:
        raise ValueError("y, X, Z, w and group must have the same number of rows.")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("Weights must be finite and positive.")
    if n and (group.min() < 0 or group.max() >= n_groups):
        raise ValueError("Group indices must lie in [0, n_groups).")
    p, q = X.shape[1], Z.shape[1]
    wZ = Z * w[:, None]

    def per_group(v: np.ndarray) -> np.ndarray:
        return np.bincount(group, weights=v, minlength=n_groups)

    ZtWZ = np.empty((n_groups, q, q))
    for a in range(q):
        for c in range(a, q):
            ZtWZ[:, a, c] = ZtWZ[:, c, a] = per_group(wZ[:, a] * Z[:, c])
    ZtWX = np.empty((n_groups, q, p))
    for a in range(q):
        for k in range(p):
            ZtWX[:, a, k] = per_group(wZ[:, a] * X[:, k])
    ZtWy = np.empty((n_groups, q))
    for a in range(q):
        ZtWy[:, a] = per_group(wZ[:, a] * y)
    wX = X * w[:, None]
    return BlockStats(
        n=np.bincount(group, minlength=n_groups).astype(float),
        ZtWZ=ZtWZ,
        ZtWX=ZtWX,
        ZtWy=ZtWy,
        XtWX=wX.T @ X,
        XtWy=wX.T @ y,
        yWy=float(np.dot(w * y, y)),
        sum_log_w=float(np.log(w).sum()),
        n_obs=n,
    )
