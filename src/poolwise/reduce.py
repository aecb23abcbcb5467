"""Per-group sufficient statistics of the Gaussian model, from row arrays or inside the engine.

For observation weights w (ones, or 1/se² when standard errors are known), the collapsed
marginal likelihood of ``y ~ X β + b_g + e`` needs only, per group j,

    a_j = Σ w,   sy_j = Σ w y,   u_j = Σ w x (a p-vector),   n_j,

and, over all rows, X'WX, X'Wy, y'Wy and Σ log w.  After this one pass over the rows the cost
of every likelihood evaluation depends on the number of groups only.

The sums are taken about a shift (:class:`Shift`): the outcome less c_y and each common
predictor less c_k (values near the data: their means in memory, a pilot from the first rows in
the engines), when the model has an intercept that absorbs them.  Then y'Wy − Σ k_j sy_j² and the
like are differences of numbers of the data's spread, not of its offset, so the results do not
depend on the units or the offset of the data (y + 10⁸ is fitted as well as y).  The statistics
are those of the model in the shifted coordinates β* = Mβ − c_y e₀ (M = I + e₀c_x'): only the
intercept changes, β₀* = β₀ + c_x'β − c_y; :meth:`Shift.prior` maps β's prior there and
:meth:`Shift.unshift` maps draws back.

The pass is NumPy's for rows in memory (:func:`reduce_arrays`, :func:`block_stats`); for rows
that stay in DuckDB or Spark it is one aggregation query (:mod:`poolwise.query`), whose result a
bound spec carries (:attr:`~poolwise.spec.BoundSpec.reduced`, taken by :func:`reduce` and
:func:`bound_block_stats`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DataError
from .spec import BoundSpec

__all__ = ["Reduced", "BlockStats", "SparseStats", "PairStats", "Shift", "reduce", "reduce_arrays", "block_stats",
           "bound_block_stats", "sparse_stats", "bound_sparse_stats"]


@dataclass(frozen=True)
class Shift:
    """The offsets the statistics were taken about: y − c_y and x_k − c_k (c = 0 at the intercept).

    With an intercept at index i0, the model y = Xβ + Zb + e reads y − c_y = (X − 1c_x')β* + Zb + e
    with β* = β except β*₀ = β₀ + c_x'β − c_y; without an intercept nothing is shifted.
    """

    y: float = 0.0
    x: np.ndarray | None = None
    intercept: int | None = None

    @property
    def active(self) -> bool:
        return self.intercept is not None and (self.y != 0.0 or (self.x is not None and bool(np.any(self.x != 0))))

    def _cx(self, p: int) -> np.ndarray:
        return np.zeros(p) if self.x is None else np.asarray(self.x, dtype=float)

    def unshift(self, beta: np.ndarray) -> np.ndarray:
        """β from β* (draws on the last axis): β₀ = β₀* + c_y − c_x'β*."""
        if not self.active:
            return beta
        beta = np.array(beta, dtype=float, copy=True)
        i0 = int(self.intercept)  # type: ignore[arg-type]
        beta[..., i0] += self.y - beta @ self._cx(beta.shape[-1])
        return beta

    def back_matrix(self, p: int) -> np.ndarray:
        """M⁻¹ = I − e₀c_x', the linear part of :meth:`unshift` (for covariances)."""
        out = np.eye(p)
        if self.active:
            out[int(self.intercept), :] -= self._cx(p)  # type: ignore[arg-type]
        return out

    def shift(self, beta: np.ndarray) -> np.ndarray:
        """β* from β: β*₀ = β₀ + c_x'β − c_y."""
        if not self.active:
            return beta
        beta = np.array(beta, dtype=float, copy=True)
        i0 = int(self.intercept)  # type: ignore[arg-type]
        beta[..., i0] += beta @ self._cx(beta.shape[-1]) - self.y
        return beta

    def prior(self, m0: np.ndarray, s0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """β ~ N(m0, diag(s0²)) in the shifted coordinates: (m0*, s0*).

        s0* is ``s0`` itself (the SDs) when the shifted prior is diagonal — no shift of x, or a
        flat prior on the intercept — else the (p, p) covariance M diag(s0²) M'.
        """
        m0, s0 = np.asarray(m0, dtype=float), np.asarray(s0, dtype=float)
        if not self.active:
            return m0, s0
        p, i0 = m0.size, int(self.intercept)  # type: ignore[arg-type]
        cx = self._cx(p)
        m = m0.copy()
        if not np.isfinite(s0[i0]):  # a flat prior on the intercept: flat on β*₀, its centre unused
            m[i0] = 0.0
            return m, s0
        m[i0] = (m0[i0] - self.y) + float(cx @ m0)
        if not np.any(cx != 0):
            return m, s0
        S = np.diag(s0**2)
        Scx = s0**2 * cx
        S[i0, :] += Scx
        S[:, i0] += Scx
        S[i0, i0] += float(cx @ Scx)
        return m, S


def _mean(v: np.ndarray, w: np.ndarray | None = None) -> float:
    """A mean accurate to the spread of ``v`` (a second pass about the first)."""
    if v.size == 0:
        return 0.0
    with np.errstate(all="ignore"):
        m = float(np.average(v, weights=w))
        if not np.isfinite(m):
            return 0.0
        m += float(np.average(v - m, weights=w))
    return m if np.isfinite(m) else 0.0


def _shift_of(y: np.ndarray, X: np.ndarray, w: np.ndarray | None, intercept: int | None) -> Shift:
    """The shift about the data's means (none without an intercept)."""
    if intercept is None:
        return Shift()
    cx = np.array([0.0 if k == intercept else _mean(X[:, k], w) for k in range(X.shape[1])])
    return Shift(y=_mean(y, w), x=cx, intercept=intercept)


def _check_finite_stats(values: list[np.ndarray | float]) -> None:
    if not all(np.all(np.isfinite(np.asarray(v))) for v in values):
        raise DataError("The sums of squares of the data are not finite: some columns are too large for float64.",
                        hint="Rescale the outcome and predictors (other units) before fitting.")


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
    shift
        What y and x were taken about (:class:`Shift`); the sums are those of the shifted values.
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
    shift: Shift = Shift()

    @property
    def n_groups(self) -> int:
        return int(self.n.shape[0])

    @property
    def p(self) -> int:
        return int(self.XtWX.shape[0])


def reduce_arrays(
    y: np.ndarray, X: np.ndarray, w: np.ndarray, group: np.ndarray, n_groups: int, *, intercept: int | None = None
) -> Reduced:
    """Sufficient statistics from row arrays (``group`` holds 0-based group indices).

    With ``intercept`` (the index of X's column of ones) the sums are taken about the data's
    means (:class:`Shift`).
    """
    shift = _shift_of(y, X, w, intercept)
    if shift.active:
        y = y - shift.y
        X = X - shift._cx(X.shape[1])[None, :]
    wy = w * y
    wX = X * w[:, None]
    u = np.zeros((n_groups, X.shape[1]))
    for k in range(X.shape[1]):
        u[:, k] = np.bincount(group, weights=wX[:, k], minlength=n_groups)
    with np.errstate(over="ignore", invalid="ignore"):
        out = Reduced(
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
            shift=shift,
        )
    _check_finite_stats([out.sy2, out.XtWX, out.XtWy, out.yWy])
    return out


def _intercept(bound: BoundSpec) -> int | None:
    return bound.coef_names.index("Intercept") if "Intercept" in bound.coef_names else None


def reduce(bound: BoundSpec) -> Reduced:
    """Per-group sufficient statistics of a bound Gaussian model (the outcome less the offset)."""
    if bound.reduced is not None:
        out: Reduced = bound.reduced.simple
        return out
    return reduce_arrays(bound.y - bound.offset, bound.X, bound.weights, bound.group, bound.n_groups,
                         intercept=_intercept(bound))


def bound_block_stats(bound: BoundSpec, index: int = 0) -> BlockStats:
    """:class:`BlockStats` of one grouping factor of a bound Gaussian model (outcome less offset)."""
    if bound.reduced is not None:
        if index != 0:
            raise ValueError("Rows reduced in the query hold the statistics of one grouping factor.")
        out: BlockStats = bound.reduced.block
        return out
    blk = bound.blocks[index]
    return block_stats(bound.y - bound.offset, bound.X, blk.Z, bound.weights, blk.group, blk.n_groups,
                       intercept=_intercept(bound))


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
    shift
        What y and the columns of X were taken about (:class:`Shift`; Z is never shifted).
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
    shift: Shift = Shift()

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
    y: np.ndarray, X: np.ndarray, Z: np.ndarray, w: np.ndarray | None, group: np.ndarray, n_groups: int, *,
    intercept: int | None = None,
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
    intercept
        Index of X's column of ones: then y and X are taken about their means (:class:`Shift`).

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
    shift = _slope_safe(_shift_of(y, X, w, intercept), X, [Z])
    if shift.active:
        y = y - shift.y
        X = X - shift._cx(p)[None, :]
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
    out = BlockStats(
        n=np.bincount(group, minlength=n_groups).astype(float),
        ZtWZ=ZtWZ,
        ZtWX=ZtWX,
        ZtWy=ZtWy,
        XtWX=wX.T @ X,
        XtWy=wX.T @ y,
        yWy=float(np.dot(w * y, y)),
        sum_log_w=float(np.log(w).sum()),
        n_obs=n,
        shift=shift,
    )
    _check_finite_stats([out.ZtWZ, out.ZtWy, out.XtWX, out.XtWy, out.yWy])
    return out


# ----------------------------------------------------------------------------------------------
# several grouping factors: the sparse cross-products of lme4's penalized least squares


@dataclass(frozen=True)
class PairStats:
    """The cross-products of two grouping factors k < l over the level pairs that share rows.

    Attributes
    ----------
    a, b
        Level of factor k and of factor l of each pair, (m,).
    n
        Rows per pair, (m,).
    ZtWZ
        Σ w z_k z_l' over the pair's rows, (m, q_k, q_l).
    """

    a: np.ndarray
    b: np.ndarray
    n: np.ndarray
    ZtWZ: np.ndarray


@dataclass(frozen=True)
class SparseStats:
    """Sufficient statistics of the Gaussian model with any number of grouping factors.

    Z'WZ of the stacked group design is block sparse: per factor, one q_k × q_k block per level
    (levels of one factor never share a row), and per pair of factors one q_k × q_l block per pair
    of levels that share rows (:class:`PairStats`).  With Z'WX, Z'Wy per level and the totals
    X'WX, X'Wy, y'Wy this is everything lme4's penalized least squares needs (Bates et al. 2015),
    and its size is O(levels + level pairs), not O(rows).

    Attributes
    ----------
    n
        Rows per level, one (J_k,) array per factor.
    ZtWZ, ZtWX, ZtWy
        Per factor: (J_k, q_k, q_k), (J_k, q_k, p) and (J_k, q_k).
    pairs
        ``{(k, l): PairStats}`` for k < l (pairs of factors sharing no rows are absent).
    XtWX, XtWy, yWy, sum_log_w, n_obs, shift
        As in :class:`BlockStats`.
    """

    n: tuple[np.ndarray, ...]
    ZtWZ: tuple[np.ndarray, ...]
    ZtWX: tuple[np.ndarray, ...]
    ZtWy: tuple[np.ndarray, ...]
    pairs: dict[tuple[int, int], PairStats]
    XtWX: np.ndarray
    XtWy: np.ndarray
    yWy: float
    sum_log_w: float
    n_obs: int
    shift: Shift = Shift()

    @property
    def q(self) -> tuple[int, ...]:
        """Group terms per factor."""
        return tuple(int(z.shape[1]) for z in self.ZtWZ)

    @property
    def J(self) -> tuple[int, ...]:
        """Levels per factor."""
        return tuple(int(z.shape[0]) for z in self.ZtWZ)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Where each factor's columns start in the stacked Z (level-major, then term)."""
        out, at = [], 0
        for J, q in zip(self.J, self.q):
            out.append(at)
            at += J * q
        return tuple(out)

    @property
    def size(self) -> int:
        """Q = Σ_k J_k q_k, the number of group values."""
        return int(sum(J * q for J, q in zip(self.J, self.q)))

    @property
    def p(self) -> int:
        return int(self.XtWX.shape[0])

    def parent(self, inner: int, outer: int) -> np.ndarray:
        """The level of factor ``outer`` that holds each level of factor ``inner`` (nested factors:
        ``region:county`` within ``region``), from the level pairs that share rows.

        Raises
        ------
        ValueError
            When a level of ``inner`` shares rows with no level, or with several, of ``outer``.
        """
        k, l = min(inner, outer), max(inner, outer)
        pr = self.pairs.get((k, l))
        if pr is None:
            raise ValueError(f"Factors {inner} and {outer} share no rows.")
        mine, theirs = (pr.b, pr.a) if inner == l else (pr.a, pr.b)
        out = np.full(self.J[inner], -1, dtype=np.int64)
        out[mine] = theirs
        if np.any(out < 0) or np.bincount(mine, minlength=self.J[inner]).max(initial=0) > 1:
            raise ValueError(f"Factor {inner} is not nested in factor {outer}.")
        return out

    def factor(self, k: int) -> BlockStats:
        """Factor k's own statistics, as if it were the only grouping factor."""
        return BlockStats(n=self.n[k], ZtWZ=self.ZtWZ[k], ZtWX=self.ZtWX[k], ZtWy=self.ZtWy[k], XtWX=self.XtWX,
                          XtWy=self.XtWy, yWy=self.yWy, sum_log_w=self.sum_log_w, n_obs=self.n_obs, shift=self.shift)

    @classmethod
    def from_block(cls, st: BlockStats) -> SparseStats:
        """One grouping factor's statistics as the one-factor case (no pairs)."""
        return cls(n=(st.n,), ZtWZ=(st.ZtWZ,), ZtWX=(st.ZtWX,), ZtWy=(st.ZtWy,), pairs={}, XtWX=st.XtWX,
                   XtWy=st.XtWy, yWy=st.yWy, sum_log_w=st.sum_log_w, n_obs=st.n_obs, shift=st.shift)


def _slope_safe(shift: Shift, X: np.ndarray, Zs: list[np.ndarray]) -> Shift:
    """The shift with a column of X that is also a varying slope left unshifted (as in the query,
    where the two are one column: the group design Z is never shifted)."""
    if not shift.active or shift.x is None:
        return shift
    cx = shift.x.copy()
    for k in range(X.shape[1]):
        if cx[k] != 0 and any(Z.shape[1] > 1 and any(np.array_equal(X[:, k], Z[:, a]) for a in range(Z.shape[1]))
                              for Z in Zs):
            cx[k] = 0.0
    return Shift(y=shift.y, x=cx, intercept=shift.intercept)


def sparse_stats(
    y: np.ndarray, X: np.ndarray, w: np.ndarray | None, factors: list[tuple[np.ndarray, np.ndarray, int]], *,
    intercept: int | None = None,
) -> SparseStats:
    """:class:`SparseStats` in one pass over the rows.

    Parameters
    ----------
    y, X, w
        Outcome (n,), common design (n, p), weights (n,) or ``None`` for ones.
    factors
        Per grouping factor: its group-term design Z_k (n, q_k), the 0-based level of each row
        (n,) and the number of levels J_k.
    intercept
        Index of X's column of ones: then y and X are taken about their means (:class:`Shift`).
    """
    y = np.asarray(y, dtype=float).ravel()
    n = y.size
    X = np.asarray(X, dtype=float).reshape(n, -1)
    w = np.ones(n) if w is None else np.asarray(w, dtype=float).ravel()
    Zs = [np.asarray(Z, dtype=float).reshape(n, -1) for Z, _, _ in factors]
    shift = _slope_safe(_shift_of(y, X, w, intercept), X, Zs)
    if shift.active:
        y = y - shift.y
        X = X - shift._cx(X.shape[1])[None, :]
    parts = [block_stats(y, X, Z, w, g, J) for Z, (_, g, J) in zip(Zs, factors)]
    pairs: dict[tuple[int, int], PairStats] = {}
    for k in range(len(factors)):
        gk, Jk = np.asarray(factors[k][1], dtype=np.int64), factors[k][2]
        for l in range(k + 1, len(factors)):
            gl, Jl = np.asarray(factors[l][1], dtype=np.int64), factors[l][2]
            key, inv = np.unique(gk * Jl + gl, return_inverse=True)
            m = key.size
            qk, ql = Zs[k].shape[1], Zs[l].shape[1]
            blocks = np.empty((m, qk, ql))
            wZk = Zs[k] * w[:, None]
            for a in range(qk):
                for c in range(ql):
                    blocks[:, a, c] = np.bincount(inv, weights=wZk[:, a] * Zs[l][:, c], minlength=m)
            pairs[(k, l)] = PairStats(a=key // Jl, b=key % Jl, n=np.bincount(inv, minlength=m).astype(float),
                                      ZtWZ=blocks)
    first = parts[0]
    out = SparseStats(n=tuple(p.n for p in parts), ZtWZ=tuple(p.ZtWZ for p in parts),
                      ZtWX=tuple(p.ZtWX for p in parts), ZtWy=tuple(p.ZtWy for p in parts), pairs=pairs,
                      XtWX=first.XtWX, XtWy=first.XtWy, yWy=first.yWy, sum_log_w=first.sum_log_w, n_obs=n,
                      shift=shift)
    _check_finite_stats([*(p.ZtWZ for p in pairs.values())])
    return out


def bound_sparse_stats(bound: BoundSpec) -> SparseStats:
    """:class:`SparseStats` of a bound Gaussian model (outcome less offset), every grouping factor."""
    if bound.reduced is not None:
        got = getattr(bound.reduced, "sparse", None)
        if got is not None:
            out: SparseStats = got
            return out
        if len(bound.blocks) == 1:
            return SparseStats.from_block(bound.reduced.block)
        raise ValueError("These rows were reduced for one grouping factor only.")
    return sparse_stats(bound.y - bound.offset, bound.X, bound.weights,
                        [(b.Z, b.group, b.n_groups) for b in bound.blocks], intercept=_intercept(bound))
