"""Per-group sufficient statistics of the Gaussian model.

For observation weights w (ones, or 1/se² when standard errors are known), the collapsed
marginal likelihood of ``y ~ X β + b_g + e`` needs only, per group j,

    a_j = Σ w,   sy_j = Σ w y,   u_j = Σ w x (a p-vector),   n_j,

and, over all rows, X'WX, X'Wy, y'Wy and Σ log w.  After this one pass over the rows the cost
of every likelihood evaluation depends on the number of groups only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spec import BoundSpec

__all__ = ["Reduced", "reduce"]


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
    """Per-group sufficient statistics of a bound Gaussian model."""
    return reduce_arrays(bound.y, bound.X, bound.weights, bound.group, bound.n_groups)
