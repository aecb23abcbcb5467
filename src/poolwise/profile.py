"""Profile-likelihood confidence intervals of an empirical fit, as lme4's ``confint(method = "profile")``.

For a parameter ψ (a coefficient, σ, a group SD, a correlation) the profile deviance is
dev(ψ) = min over every other parameter of the ML deviance with ψ held (lme4 refits a REML fit by
ML to profile it; so does this; a GLMM's deviance is −2 × Laplace's approximation), and the interval
is {ψ : dev(ψ) − dev(ψ̂) ≤ χ²₁(prob)}: the roots of the signed root ζ(ψ) = ±√(dev(ψ) − dev(ψ̂)) at ±z.
As lme4's ``profile.merMod``, each end comes from a few points along the profile, each one inner
minimization warm-started from the straight line through its neighbours; ζ is close to linear in ψ
on these scales, so the first point is the Wald end of the optimum's curvature and the next ones
secant steps on ζ (where lme4 interpolates a spline through its grid, this finds the root to
|ζ − z| < 10⁻⁶).  The inner minimizations are damped Newton steps whose finite differences are
evaluated in one batch (a dense factor: one batched LAPACK call per step).

The other parameters are minimized in unconstrained coordinates: log σ, log SDs, and per grouping
factor the atanh of the canonical partial correlations of its correlation matrix (Lewandowski,
Kurowicka & Joe 2009): every value gives a valid correlation matrix, so nothing walks into one that
is not positive definite (with three or more correlated terms, correlations moved one by one do).
A correlation ρ_ac is profiled with the factor's terms reordered so that a and c come first: then
ρ_ac is itself the first partial correlation, held while the others move freely.  A Gaussian
model's coefficients other than ψ are minimized in closed form (generalized least squares, under
one linear constraint when ψ is a coefficient).

References
----------
Bates, D., Mächler, M., Bolker, B. & Walker, S. (2015). Fitting linear mixed-effects models using
lme4. Journal of Statistical Software 67(1), 1–48 (§5.1, profiles).
Lewandowski, D., Kurowicka, D. & Joe, H. (2009). Generating random correlation matrices based on vines
and extended onion method. Journal of Multivariate Analysis 100, 1989–2001.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from .estimates import Point, _hessian, _sqrt, _sqrts
from .spec import BoundSpec

__all__ = ["profile_confint", "why_not_profile", "PROFILE_MAX_GROUP_VALUES", "PROFILE_MAX_GROUP_VALUES_GLMM",
           "PROFILE_MAX_ROWS_GLMM", "PROFILE_MAX_PARAMETERS"]

#: an empirical fit's summary profiles σ, the SDs and correlations by default up to this many group
#: values (Gaussian; measured ≲ 1 s for 1000 on a quiet machine), else gives Wald intervals
PROFILE_MAX_GROUP_VALUES = 1000
#: the same for a GLMM (each deviance its own Laplace modes), and at most this many rows
PROFILE_MAX_GROUP_VALUES_GLMM = 500
PROFILE_MAX_ROWS_GLMM = 50_000
#: and at most this many variance parameters (σ, SDs, correlations)
PROFILE_MAX_PARAMETERS = 10

_Z_MAX = 1.0 - 1e-12  # a partial correlation just inside ±1


def _cpc_of(R: np.ndarray) -> np.ndarray:
    """The canonical partial correlations of a correlation matrix (row-major below the diagonal)."""
    q = R.shape[0]
    Rj = 0.5 * (R + R.T)
    for jitter in (0.0, 1e-12, 1e-9, 1e-6):
        try:
            L = np.linalg.cholesky(Rj + jitter * np.eye(q))
            break
        except np.linalg.LinAlgError:
            continue
    else:
        L = np.eye(q)
    L = L / np.sqrt(np.sum(L * L, axis=1))[:, None]  # unit rows (a correlation matrix)
    out = []
    for r in range(1, q):
        rest = 1.0
        for c in range(r):
            z = L[r, c] / math.sqrt(max(rest, 1e-300))
            out.append(float(np.clip(z, -_Z_MAX, _Z_MAX)))
            rest -= L[r, c] ** 2
    return np.array(out)


def _corr_of(z: np.ndarray, q: int) -> np.ndarray:
    """The correlation matrix of canonical partial correlations ``z`` (row-major below the diagonal)."""
    L = np.zeros((q, q))
    L[0, 0] = 1.0
    at = 0
    for r in range(1, q):
        rest = 1.0
        for c in range(r):
            L[r, c] = z[at] * math.sqrt(max(rest, 0.0))
            rest -= L[r, c] ** 2
            at += 1
        L[r, r] = math.sqrt(max(rest, 0.0))
    out: np.ndarray = L @ L.T
    return out


class _Layout:
    """The unconstrained coordinates of σ and the learned Σ's: log σ; per learned factor its log SDs
    (terms in their order) and, when correlated, the atanh of the canonical partial correlations of
    P R P' (``perm`` gives P per factor; identity unless a correlation is profiled)."""

    def __init__(self, bound: BoundSpec, pt: Point, perm: Mapping[int, Sequence[int]] | None = None) -> None:
        self.pt = pt
        self.perm = {i: list(v) for i, v in (perm or {}).items()}
        self.names: list[str] = []
        self.kinds: list[str] = []
        self.slots: list[tuple[int, int, int]] = []  # (block, sd start, cpc start) per learned block
        at = 0
        if pt.sigma is not None:
            self.names.append("sigma")
            self.kinds.append("sigma")
            at = 1
        for i, blk in enumerate(bound.blocks):
            if pt.sd[i] is None:
                continue
            sd_at = at
            for e in blk.exprs:
                self.names.append(blk.term.sd_name(e))
                self.kinds.append("sd")
            at += blk.q
            cpc_at = at
            if pt.corr[i] is not None:
                order = self.perm.get(i, list(range(blk.q)))
                e = [blk.exprs[k] for k in order]
                for r in range(1, blk.q):
                    for c in range(r):
                        self.names.append(blk.term.cor_name(e[c], e[r]))
                        self.kinds.append("cor")
                at += blk.q * (blk.q - 1) // 2
            self.slots.append((i, sd_at, cpc_at))
        self.size = at

    def pack(self, sigma: float | None, Sigmas: Sequence[np.ndarray]) -> np.ndarray:
        x = np.zeros(self.size)
        if self.pt.sigma is not None:
            x[0] = math.log(max(float(sigma or 0.0), 1e-300))
        floor = 1e-6 * (self.pt.sigma if self.pt.sigma is not None else 1.0)
        for i, sd_at, cpc_at in self.slots:
            S = Sigmas[i]
            q = S.shape[0]
            sd = np.sqrt(np.clip(np.diagonal(S), 0.0, None))
            x[sd_at:sd_at + q] = np.log(np.maximum(sd, floor))
            if self.pt.corr[i] is not None:
                with np.errstate(invalid="ignore", divide="ignore"):
                    R = S / np.outer(sd, sd)
                R = np.where(np.isfinite(R), R, 0.0)
                np.fill_diagonal(R, 1.0)
                order = self.perm.get(i, list(range(q)))
                z = _cpc_of(R[np.ix_(order, order)])
                x[cpc_at:cpc_at + z.size] = np.arctanh(z)
        return x

    def lams_batch(self, X: np.ndarray, fixed: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """σ² (B,) and per factor a square root Λ_b (B, q, q) of Σ_b (Λ_bΛ_b' = Σ_b) for a batch of
        coordinates X (B, size): diag(sd)·L of each correlation matrix, its rows put back in the terms'
        order (the marginal depends on ΛΛ' only); ``fixed`` the square roots of the fixed Σ's."""
        B = X.shape[0]
        s2 = np.exp(2.0 * X[:, 0]) if self.pt.sigma is not None else np.ones(B)
        lams = [np.broadcast_to(f, (B,) + f.shape) for f in fixed]
        for i, sd_at, cpc_at in self.slots:
            q = fixed[i].shape[0]
            sd = np.exp(X[:, sd_at:sd_at + q])
            if self.pt.corr[i] is None:
                lams[i] = sd[:, :, None] * np.eye(q)[None]
                continue
            z = np.tanh(X[:, cpc_at:cpc_at + q * (q - 1) // 2])
            L = np.zeros((B, q, q))
            L[:, 0, 0] = 1.0
            at = 0
            for r in range(1, q):
                rest = np.ones(B)
                for c in range(r):
                    L[:, r, c] = z[:, at] * np.sqrt(np.clip(rest, 0.0, None))
                    rest = rest - L[:, r, c] ** 2
                    at += 1
                L[:, r, r] = np.sqrt(np.clip(rest, 0.0, None))
            order = self.perm.get(i, list(range(q)))
            lams[i] = sd[:, :, None] * L[:, np.argsort(order), :]  # R = (P'L)(P'L)', P the terms' reordering
        return s2, lams

    def unpack(self, x: np.ndarray) -> tuple[float | None, list[np.ndarray]]:
        sigma = math.exp(x[0]) if self.pt.sigma is not None else None
        Sigmas = list(self.pt.Sigma)
        for i, sd_at, cpc_at in self.slots:
            q = Sigmas[i].shape[0]
            sd = np.exp(x[sd_at:sd_at + q])
            R = np.eye(q)
            if self.pt.corr[i] is not None:
                order = self.perm.get(i, list(range(q)))
                Rp = _corr_of(np.tanh(x[cpc_at:cpc_at + q * (q - 1) // 2]), q)
                back = np.argsort(order)
                R = Rp[np.ix_(back, back)]
            Sigmas[i] = sd[:, None] * R * sd[None, :]
        return sigma, Sigmas


def _inv_pd(H: np.ndarray) -> np.ndarray | None:
    """H⁻¹ when H is symmetric positive definite (a start for BFGS's inverse Hessian), else ``None``."""
    if H.size == 0 or not np.all(np.isfinite(H)):
        return None
    H = 0.5 * (H + H.T)
    try:
        C = np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        return None
    Ci = np.linalg.inv(C)
    out: np.ndarray = Ci.T @ Ci
    return out


def _minimize(f: Callable[[np.ndarray], float], x0: np.ndarray, hess_inv0: np.ndarray | None = None
              ) -> tuple[np.ndarray, float]:
    """min f by BFGS with central-difference gradients (f smooth, few coordinates): a second,
    independent optimizer (the profiles use :func:`_newton`)."""
    from scipy import optimize

    if x0.size == 0:
        return x0, f(x0)

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        fx = f(x)
        g = np.empty(x.size)
        for a in range(x.size):
            e = np.zeros(x.size)
            e[a] = 1e-6 * max(1.0, abs(x[a]))
            g[a] = (f(x + e) - f(x - e)) / (2.0 * e[a])
        return fx, g

    opts: dict[str, Any] = {"gtol": 1e-6, "maxiter": 500}
    if hess_inv0 is not None:
        opts["hess_inv0"] = hess_inv0
    res = optimize.minimize(fg, x0, jac=True, method="BFGS", options=opts)
    x, fx = np.asarray(res.x, dtype=float), float(res.fun)
    f0 = f(x0)
    return (x, fx) if fx <= f0 else (x0, f0)


# ----------------------------------------------------------------------------------------------
# the inner minimizations: Newton steps with finite differences, evaluated in batches

Batch = Callable[[np.ndarray], np.ndarray]


def _differences(fb: Batch, y: np.ndarray, h: np.ndarray, hessian: bool
                 ) -> tuple[float, np.ndarray, np.ndarray | None]:
    """f, its central-difference gradient and (``hessian``) Hessian at y, all points in one batch:
    1 + 2d (+ 2d(d − 1)) evaluations."""
    d = y.size
    E = np.diag(h)
    pts = [y[None], y + E, y - E]
    pairs = [(a, c) for a in range(d) for c in range(a)] if hessian else []
    if pairs:
        ia, ic = np.array([a for a, _ in pairs]), np.array([c for _, c in pairs])
        for sa, sc in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            pts.append(y + sa * E[ia] + sc * E[ic])
    v = fb(np.vstack(pts))
    f0, up, dn = float(v[0]), v[1:d + 1], v[d + 1:2 * d + 1]
    g = (up - dn) / (2.0 * h)
    if not hessian:
        return f0, g, None
    H = np.diag((up - 2.0 * f0 + dn) / (h * h))
    if pairs:
        m = len(pairs)
        pp, pm, mp, mm = (v[2 * d + 1 + s * m:2 * d + 1 + (s + 1) * m] for s in range(4))
        off = (pp - pm - mp + mm) / (4.0 * h[ia] * h[ic])
        H[ia, ic] = H[ic, ia] = off
    return f0, g, H


def _newton_step(g: np.ndarray, H: np.ndarray, free: np.ndarray, h: np.ndarray) -> np.ndarray:
    """−H⁻¹g on the free coordinates, H's eigenvalues taken in absolute value and floored (a saddle or a
    flat direction gives a bounded step), capped at 3 units of each coordinate's scale (h / 10⁻³)."""
    s = np.zeros(g.size)
    if not free.any():
        return s
    Hf = H[np.ix_(free, free)]
    Hf = 0.5 * (Hf + Hf.T)
    lam, V = np.linalg.eigh(Hf)
    lam = np.maximum(np.abs(lam), 1e-8 * max(1.0, float(np.abs(lam).max())))
    s[free] = -V @ ((V.T @ g[free]) / lam)
    big = float(np.max(np.abs(s) / (3e3 * h)))
    return s / big if big > 1.0 else s


def _newton(fb: Batch, y0: np.ndarray, h: np.ndarray, *, full: bool, bounds: tuple[np.ndarray, np.ndarray],
            H0: np.ndarray | None = None, tol: float = 1e-10, max_iter: int = 40
            ) -> tuple[np.ndarray, float, np.ndarray | None]:
    """min fb by damped Newton steps inside ``bounds``, from ``y0``: (y, f(y), the last Hessian).

    ``full``: the Hessian by differences every step (the evaluations batched: cheap for the dense
    Gaussian path); else BFGS updates of ``H0`` (each evaluation its own factorization, a GLMM's
    Laplace modes, a large sparse factor).  A coordinate at its bound whose gradient points outward
    is held.  Stops when the predicted decrease falls below ``tol`` × (1 + |f|)."""
    lo, hi = bounds
    y = np.clip(np.asarray(y0, dtype=float), lo, hi)
    d = y.size
    if d == 0:
        return y, float(fb(y[None])[0]), None
    f, g, H = _differences(fb, y, h, full)
    if H is None:
        H = np.array(H0, dtype=float) if H0 is not None else np.diag(1.0 / (1e6 * h * h))
    for _ in range(max_iter):
        free = ~(((y <= lo) & (g > 0)) | ((y >= hi) & (g < 0)))
        s = _newton_step(g, H, free, h)
        dec = -0.5 * float(g @ s)
        if not dec > tol * (1.0 + abs(f)):
            break
        steps = np.array([1.0, 0.3, 0.05])
        trial = np.clip(y[None] + steps[:, None] * s[None], lo, hi)
        vals = fb(trial)
        best = int(np.argmin(vals))
        if not vals[best] < f:
            break
        y_new = trial[best]
        if full:
            f, g, H = _differences(fb, y_new, h, True)
            y = y_new
            continue
        f_new, g_new, _ = _differences(fb, y_new, h, False)
        sk, yk = y_new - y, g_new - g
        if float(sk @ yk) > 1e-12 * float(np.linalg.norm(sk) * np.linalg.norm(yk)):  # BFGS on H
            Hs = H @ sk
            H = H - np.outer(Hs, Hs) / float(sk @ Hs) + np.outer(yk, yk) / float(sk @ yk)
        y, f, g = y_new, f_new, g_new
    return y, f, H


# ----------------------------------------------------------------------------------------------
# one end of an interval: the root of ζ(t) = z, ζ interpolated linearly between profiled points


def _end(prof: Callable[[float, np.ndarray], tuple[float, np.ndarray]], t_hat: float, y_hat: np.ndarray,
         dy: np.ndarray, slope: float, z: float, side: float, lim: float, tol: float = 1e-6) -> float | None:
    """The t on one side of t̂ where the signed root of the profile ζ(t) = √(dev(t) − dev̂) reaches z,
    or ``None`` when it stays below z up to ``lim`` away.

    As lme4's ``profile``: a few points along the profile, each inner minimization warm-started
    from the straight line through its neighbours (the first from the optimum's own direction ``dy``,
    dy/dt of the other coordinates by the implicit-function theorem); ζ is close to linear in t
    on these scales, so the first point is the Wald end (``slope`` = dζ/dt at t̂) and the rest secant
    steps on ζ (Illinois-safeguarded once the root is bracketed) to |ζ − z| < ``tol``."""
    if lim <= 0.0:
        return None
    pts: list[tuple[float, float, np.ndarray]] = [(t_hat, 0.0, y_hat)]
    step = z / slope if slope > 0 and math.isfinite(slope) else 1.0
    t = t_hat + side * min(step, 3.0, lim)
    y0 = y_hat + (t - t_hat) * dy
    a: list[float] = [t_hat, 0.0]  # the bracket's ends (t, ζ − z): below z, and above once found
    b: list[float] | None = None
    last = 0  # which end the previous point replaced (−1: a, +1: b)
    for _ in range(60):
        zeta, y = prof(t, y0)
        if abs(zeta - z) < tol:
            return t
        pts.append((t, zeta, y))
        if zeta < z:
            if last == -1 and b is not None:  # a replaced twice running: halve b's weight (Illinois)
                b[1] *= 0.5
            a, last = [t, zeta - z], -1
        else:
            if last == 1:
                a[1] *= 0.5
            b, last = [t, zeta - z], 1
        if b is None:
            if abs(t - t_hat) >= lim * (1.0 - 1e-12):
                return None
            (t1, z1, _), (t2, z2, _) = pts[-2], pts[-1]
            t_new = t2 + (z - z2) * (t2 - t1) / (z2 - z1) if z2 > z1 + 1e-9 else t2 + 4.0 * (t2 - t1)
            far = 4.0 * abs(t2 - t_hat)  # at most 4 × farther out than the last point
            t_new = t_hat + side * min(max(side * (t_new - t_hat), abs(t2 - t_hat)), far, lim)
        else:
            t_new = a[0] - a[1] * (b[0] - a[0]) / (b[1] - a[1])
        if abs(t_new - t) < 1e-12 * max(1.0, abs(t)):
            return t
        near = sorted(pts, key=lambda p: abs(p[0] - t_new))[:2]
        (tp, _, yp), (tq, _, yq) = near
        y0 = yp + (t_new - tp) * (yq - yp) / (tq - tp) if tq != tp else yp
        t = t_new
    return t


class _Deviance:
    """The ML deviance of a fit in a layout's coordinates: Gaussian (β by GLS, or with β_k held) or
    Laplace (β in the coordinates, first)."""

    def __init__(self, bound: BoundSpec, pt: Point) -> None:
        from .infer import sparse

        self.pt = pt
        self.gaussian = bound.spec.fam.exact
        self.p = pt.beta.size
        #: square roots of the factors' Σ at the estimates (the fixed ones stay; the learned are replaced)
        self._fixed: list[np.ndarray] = [_sqrt(S) for S in pt.Sigma]
        if self.gaussian:
            from .reduce import bound_sparse_stats

            self.st = bound_sparse_stats(bound)
            self.fz = sparse.Factorizer(self.st)
            self.B = self.st.shift.back_matrix(self.p)
            self.i0 = self.st.shift.intercept if self.st.shift.active else None
            self.n_log2pi = self.st.n_obs * math.log(2.0 * math.pi)
            self.ctx: Any = sparse._blas(self.fz)
        else:
            from .infer.empirical import _CrossedLaplace

            self.lap = _CrossedLaplace(bound)
            self.ctx = sparse._blas(self.lap.fz)

    def _pieces(self, layout: _Layout, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, float] | None:
        from .infer import sparse

        sigma, Sigmas = layout.unpack(x)
        lams = _sqrts(Sigmas)
        if lams is None:
            return None
        try:
            return sparse._cross(self.st, self.fz, lams, (sigma or 1.0) ** 2)
        except (np.linalg.LinAlgError, ValueError, ArithmeticError):
            return None

    def __call__(self, layout: _Layout, x: np.ndarray) -> float:
        """The deviance; Gaussian: x the layout's coordinates (β at GLS); Laplace: [β, coordinates]."""
        if self.gaussian:
            from .infer import sparse

            got = self._pieces(layout, x)
            if got is None:
                return 1e300
            logdetV, A_X, bb, qq = got
            try:
                fitted, _ = sparse._gls(A_X, bb)
            except np.linalg.LinAlgError:
                return 1e300
            out = self.n_log2pi + logdetV + qq - fitted
        else:
            _, Sigmas = layout.unpack(x[self.p:])
            lams = _sqrts(Sigmas)
            ll = -math.inf if lams is None else float(self.lap(x[:self.p], lams))
            out = -2.0 * ll
        return out if math.isfinite(out) else 1e300

    def with_beta(self, layout: _Layout, x: np.ndarray, k: int, c: float) -> float:
        """Gaussian: the deviance with β_k = c, the other coefficients at their constrained GLS."""
        got = self._pieces(layout, x)
        if got is None:
            return 1e300
        logdetV, A_X, bb, qq = got
        a = self.B[k]  # β = Bβ* + c_y e₀: β_k = a'β* + (c_y if k is the intercept)
        try:
            sol = np.linalg.solve(A_X, np.c_[bb, a])
        except np.linalg.LinAlgError:
            return 1e300
        d = c - (self.st.shift.y if k == self.i0 else 0.0)
        gap = float(a @ sol[:, 0]) - d
        out = self.n_log2pi + logdetV + qq - float(bb @ sol[:, 0]) + gap * gap / float(a @ sol[:, 1])
        return out if math.isfinite(out) else 1e300

    @property
    def batched(self) -> bool:
        """Whether :meth:`batch` evaluates a batch at once (a Gaussian model with a dense factor)."""
        return bool(self.fz.dense if self.gaussian else self.lap.fz.dense)

    def batch(self, layout: _Layout, X: np.ndarray, k: int | None = None, c: float = 0.0) -> np.ndarray:
        """The deviance at every row of X (B, m) (with β_k = c when ``k`` is given: :meth:`with_beta`):
        one batched dense evaluation (:func:`poolwise.infer.sparse.cross_batch`) where
        :attr:`batched`, else one evaluation per row.  1e300 where not finite."""
        X = np.atleast_2d(X)
        if not self.batched:
            if k is None:
                return np.array([self(layout, x) for x in X])
            return np.array([self.with_beta(layout, x, k, c) for x in X])
        out = np.empty(X.shape[0])
        step = (self.fz if self.gaussian else self.lap.fz).pattern.schur.chunk()
        for s in range(0, X.shape[0], step):
            with np.errstate(all="ignore"):
                try:
                    out[s:s + step] = self._batch(layout, X[s:s + step], k, c)
                except np.linalg.LinAlgError:  # one point not positive definite: each alone
                    out[s:s + step] = [self(layout, x) if k is None else self.with_beta(layout, x, k, c)
                                       for x in X[s:s + step]]
        return np.where(np.isfinite(out), out, 1e300)

    def _batch(self, layout: _Layout, X: np.ndarray, k: int | None, c: float) -> np.ndarray:
        from .infer import sparse

        if not self.gaussian:  # Laplace: the modes of the batch at once, from the fit's modes
            p = self.p
            _, lams = layout.lams_batch(X[:, p:], self._fixed)
            lams = [np.ascontiguousarray(lam) for lam in lams]
            u0 = np.concatenate([np.einsum("bac,jc->bja", np.linalg.pinv(lam), b).reshape(X.shape[0], -1)
                                 for lam, b in zip(lams, self.lap.b_ref)], axis=1)
            _, ll, _, _ = self.lap.modes_batch(np.ascontiguousarray(X[:, :p]), lams, np.where(np.isfinite(u0), u0, 0.0))
            return np.asarray(-2.0 * ll)
        s2, lams = layout.lams_batch(X, self._fixed)
        bc = sparse.cross_batch(self.st, self.fz.pattern, s2, lams)
        base = self.n_log2pi + bc.logdetV + bc.qq
        if not self.p:
            return np.asarray(base)
        if k is None:
            LX = np.linalg.cholesky(bc.A_X)
            zz = np.linalg.solve(LX, bc.bb[..., None])[..., 0]
            return np.asarray(base - (zz * zz).sum(axis=1))
        a = self.B[k]
        rhs = np.stack([bc.bb, np.broadcast_to(a, bc.bb.shape)], axis=2)
        sol = np.linalg.solve(bc.A_X, rhs)
        d = c - (self.st.shift.y if k == self.i0 else 0.0)
        gap = sol[:, :, 0] @ a - d
        return np.asarray(base - np.einsum("bi,bi->b", bc.bb, sol[:, :, 0]) + gap * gap / (sol[:, :, 1] @ a))

    def beta_and_se(self, layout: _Layout, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """β̂ and its Wald SEs at x (Gaussian: GLS; Laplace: β in x, SEs from the fit's Cov(β̂))."""
        if not self.gaussian:
            cov = self.pt.beta_cov if self.pt.beta_cov is not None else np.eye(self.p)
            return x[:self.p], np.sqrt(np.clip(np.diagonal(cov), 1e-300, None))
        got = self._pieces(layout, x)
        assert got is not None
        _, A_X, bb, _ = got
        beta = self.B @ np.linalg.solve(A_X, bb)
        if self.i0 is not None:
            beta[self.i0] += self.st.shift.y
        return beta, np.sqrt(np.diagonal(self.B @ np.linalg.inv(A_X) @ self.B.T))


def profile_confint(bound: BoundSpec, pt: Point, *, prob: float = 0.95,
                    se_hint: Mapping[str, float] | None = None, coefficients: bool = True,
                    parm: Sequence[str] | None = None) -> pd.DataFrame:
    """Profile-likelihood intervals of an empirical fit's parameters (see the module text).

    Parameters
    ----------
    bound, pt
        The bound model and its estimates (:func:`poolwise.estimates.point_estimates`).
    prob
        Confidence level.
    se_hint
        Unused (kept for callers): each search starts at the Wald end of the ML deviance's own
        curvature.
    coefficients
        Profile the coefficients too (else σ, the SDs and the correlations only).
    parm
        Only these parameters (lme4's ``parm``), by name.

    Returns
    -------
    DataFrame indexed by parameter name with ``lo`` and ``hi``.  An SD whose profile stays below the
    bound down to 0 has lower end 0; a correlation whose profile does so towards ±1 has end ±1.
    ``.attrs["boundary"]`` names the parameters with such an end.

    Notes
    -----
    The ML optimum is found from the fit's estimates by Newton steps; each end from a handful of
    profiled points (:func:`_end`), each point one warm-started inner minimization
    (:func:`_newton`).  A Gaussian model with a dense factor evaluates the finite differences of a
    Newton step in one batch.
    """
    del se_hint
    z = NormalDist().inv_cdf(0.5 + prob / 2.0)
    dev = _Deviance(bound, pt)
    base = _Layout(bound, pt)
    p, nb = dev.p, (0 if dev.gaussian else dev.p)
    ref = max([1.0 if pt.sigma is None else pt.sigma]
              + [float(np.max(sd)) for sd in pt.sd if sd is not None and sd.size])
    log_ref = math.log(ref)
    rows: dict[str, dict[str, float]] = {}
    boundary: dict[str, str] = {}
    failed: list[str] = []
    se_b = np.sqrt(np.clip(np.diagonal(pt.beta_cov), 1e-300, None)) if pt.beta_cov is not None else np.ones(p)

    def coords(layout: _Layout) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Finite-difference steps and bounds of [β (a GLMM), layout coordinates]: log SDs and log σ
        within e⁻²⁰ and e¹² of the data's scale, atanh correlations within ±8 (|ρ| < 1 − 2·10⁻⁷)."""
        kinds = ["beta"] * nb + layout.kinds
        h = np.array([1e-3 * se_b[a] if kd == "beta" else 1e-3 for a, kd in enumerate(kinds)])
        lo = np.array([-np.inf if kd == "beta" else -8.0 if kd == "cor" else log_ref - 20.0 for kd in kinds])
        hi = np.array([np.inf if kd == "beta" else 8.0 if kd == "cor" else log_ref + 12.0 for kd in kinds])
        return h, (lo, hi)

    def fb_of(layout: _Layout) -> Batch:
        return lambda X: dev.batch(layout, X)

    def optimum(layout: _Layout, x0: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        h, bd = coords(layout)
        fb = fb_of(layout)
        if dev.batched:
            x, fx, H = _newton(fb, x0, h, full=True, bounds=bd, tol=1e-12)
        else:
            x, fx = _minimize(lambda v: float(fb(v[None])[0]), np.clip(x0, *bd))
            x, fx, _ = _newton(fb, x, h, full=False, bounds=bd, H0=_hessian(lambda v: float(fb(v[None])[0]), x, h),
                               tol=1e-12)
            H = None
        if H is None or not dev.batched:
            H = _hessian(lambda v: float(fb(v[None])[0]), x, h) if x.size else np.zeros((0, 0))
        assert H is not None
        return x, fx, H

    def profile_one(layout: _Layout, x_c: np.ndarray, d_hat: float, H: np.ndarray, col: int, kind: str,
                    limits: tuple[float, float]) -> tuple[float | None, float | None]:
        h, (lo, hi) = coords(layout)
        others = np.array([a for a in range(x_c.size) if a != col], dtype=int)
        Hoo, hoc = H[np.ix_(others, others)], H[others, col]
        Hi = _inv_pd(Hoo)
        dy = -(Hi @ hoc) if Hi is not None else np.zeros(others.size)
        curv = float(H[col, col] + hoc @ dy)  # the profile's curvature at the optimum (Schur complement)
        slope = math.sqrt(0.5 * curv) if curv > 0 else 0.0
        fb = fb_of(layout)

        def prof(t: float, warm: np.ndarray) -> tuple[float, np.ndarray]:
            def g(Y: np.ndarray) -> np.ndarray:
                X = np.empty((Y.shape[0], x_c.size))
                X[:, others], X[:, col] = Y, t
                return fb(X)

            y, fy, _ = _newton(g, warm, h[others], full=dev.batched, bounds=(lo[others], hi[others]),
                               H0=Hoo if Hi is not None else None)
            return math.sqrt(max(fy - d_hat, 0.0)), y

        t_hat = float(x_c[col])
        return (_end(prof, t_hat, x_c[others], dy, slope, z, -1.0, limits[0]),
                _end(prof, t_hat, x_c[others], dy, slope, z, 1.0, limits[1]))

    with dev.ctx:
        x0 = base.pack(pt.sigma, pt.Sigma)
        full0 = x0 if dev.gaussian else np.concatenate([pt.beta, x0])
        x_hat, d_hat, H = optimum(base, full0)  # the ML optimum (REML refitted by ML)
        sigma_ml, Sigma_ml = base.unpack(x_hat[nb:])
        h_all, bd_all = coords(base)

        if coefficients and (parm is None or any(n in parm for n in bound.coef_names)):
            beta_ml, se_ml = dev.beta_and_se(base, x_hat)
            for k, name in enumerate(bound.coef_names):
                if parm is not None and name not in parm:
                    continue
                if not (se_ml[k] > 0 and math.isfinite(se_ml[k])):
                    failed.append(name)
                    continue
                lim = 50.0 * float(se_ml[k])
                if dev.gaussian:
                    Hi = _inv_pd(H)

                    def prof_b(t: float, warm: np.ndarray, k: int = k, Hi: np.ndarray | None = Hi
                               ) -> tuple[float, np.ndarray]:
                        y, fy, _ = _newton(lambda X: dev.batch(base, X, k, t), warm, h_all, full=dev.batched,
                                           bounds=bd_all, H0=H if Hi is not None else None)
                        return math.sqrt(max(fy - d_hat, 0.0)), y

                    t_hat = float(beta_ml[k])
                    ends = [_end(prof_b, t_hat, x_hat, np.zeros(x_hat.size), 1.0 / float(se_ml[k]), z, s, lim)
                            for s in (-1.0, 1.0)]
                else:
                    ends = list(profile_one(base, x_hat, d_hat, H, k, "beta", (lim, lim)))
                rows[name] = {"lo": -math.inf if ends[0] is None else ends[0],
                              "hi": math.inf if ends[1] is None else ends[1]}

        def hyper_one(j: int, name: str) -> dict[str, float]:
            """The interval of σ, an SD or a correlation (base coordinate j)."""
            kind = base.kinds[j]
            if kind != "cor":
                c = float(x_hat[nb + j])
                _, (lo_b, hi_b) = coords(base)
                # log SD, log σ: a factor e¹² down (or to the floor), up to 10⁴ × the data's scale
                lim = (min(12.0, c - lo_b[nb + j]), min(max(12.0, math.log(1e4 * ref) - c), hi_b[nb + j] - c))
                lo_t, hi_t = profile_one(base, x_hat, d_hat, H, nb + j, kind, lim)
                ends = (["lower end 0"] if lo_t is None else []) + (["no upper end"] if hi_t is None else [])
                if ends:
                    boundary[name] = ", ".join(ends)
                return {"lo": 0.0 if lo_t is None else math.exp(lo_t), "hi": math.inf if hi_t is None else math.exp(hi_t)}
            # a correlation: its factor's terms reordered so that the pair comes first (its first CPC)
            i, (a, c_) = _which_cor(bound, name)
            q = bound.blocks[i].q
            if q == 2:
                layout, xl, Hl = base, x_hat, H
            else:
                layout = _Layout(bound, pt, {i: [a, c_] + [t for t in range(q) if t not in (a, c_)]})
                xl = layout.pack(sigma_ml, Sigma_ml)
                xl = xl if dev.gaussian else np.concatenate([x_hat[:p], xl])
                Hl = _hessian(lambda v: float(fb_of(layout)(v[None])[0]), xl, coords(layout)[0])
            col = nb + layout.names.index(name) if name in layout.names else None
            if col is None:  # named with the terms the other way round
                col = nb + layout.names.index(_swap(name))
            t_c = float(xl[col])
            lo_t, hi_t = profile_one(layout, xl, d_hat, Hl, col, "cor", (8.0 + t_c, 8.0 - t_c))
            if lo_t is None or hi_t is None:
                boundary[name] = "end at ±1"
            return {"lo": -1.0 if lo_t is None else math.tanh(lo_t), "hi": 1.0 if hi_t is None else math.tanh(hi_t)}

        for j, name in enumerate(base.names):
            if parm is not None and name not in parm:
                continue
            try:
                rows[name] = hyper_one(j, name)
            except (np.linalg.LinAlgError, ValueError, ArithmeticError, KeyError):
                failed.append(name)

    out = pd.DataFrame.from_dict(rows, orient="index", columns=["lo", "hi"])
    out.index.name = "parameter"
    out.attrs["boundary"] = boundary
    out.attrs["failed"] = failed
    return out


def why_not_profile(bound: BoundSpec, pt: Point) -> str | None:
    """Why an empirical fit's summary gives Wald intervals by default for σ, the SDs and the
    correlations (``None``: it profiles them).  The rule is the model's size: at most
    :data:`PROFILE_MAX_PARAMETERS` variance parameters and :data:`PROFILE_MAX_GROUP_VALUES` group
    values (a GLMM: :data:`PROFILE_MAX_GROUP_VALUES_GLMM`, and :data:`PROFILE_MAX_ROWS_GLMM` rows)."""
    n_par = _Layout(bound, pt).size
    n_values = sum(int(b.n_groups) * int(b.q) for b in bound.blocks)
    gaussian = bound.spec.fam.exact
    cap = PROFILE_MAX_GROUP_VALUES if gaussian else PROFILE_MAX_GROUP_VALUES_GLMM
    if n_par > PROFILE_MAX_PARAMETERS:
        return f"{n_par} variance parameters (over {PROFILE_MAX_PARAMETERS})"
    if n_values > cap:
        return f"{n_values} group values (over {cap})"
    if not gaussian and bound.n_obs > PROFILE_MAX_ROWS_GLMM:
        return f"{bound.n_obs} rows (a GLMM, over {PROFILE_MAX_ROWS_GLMM})"
    return None


def _which_cor(bound: BoundSpec, name: str) -> tuple[int, tuple[int, int]]:
    for i, blk in enumerate(bound.blocks):
        for c in range(blk.q):
            for a in range(c):
                if blk.term.cor_name(blk.exprs[a], blk.exprs[c]) == name:
                    return i, (a, c)
    raise KeyError(name)


def _swap(name: str) -> str:
    inner, _, factor = name[len("cor("):-1].rpartition("|")
    a, _, b = inner.partition(",")
    return f"cor({b},{a}|{factor})"
