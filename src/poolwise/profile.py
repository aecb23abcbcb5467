"""Profile-likelihood confidence intervals of an empirical fit, as lme4's ``confint(method = "profile")``.

For a parameter ψ (a coefficient, σ, a group SD, a correlation) the profile deviance is
dev(ψ) = min over every other parameter of the ML deviance with ψ held (lme4 refits a REML fit by
ML to profile it; so does this; a GLMM's deviance is −2 × Laplace's approximation), and the interval
is {ψ : dev(ψ) − dev(ψ̂) ≤ χ²₁(prob)}: the roots of the signed root ζ(ψ) = ±√(dev(ψ) − dev(ψ̂)) at ±z,
found by Brent's method (ζ is close to linear in ψ, so few steps).

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
from typing import Any

import numpy as np
import pandas as pd

from .estimates import Point, _hessian, _sqrts
from .spec import BoundSpec

__all__ = ["profile_confint"]

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
    """min f by BFGS with central-difference gradients (f smooth, few coordinates)."""
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
    # BFGS: L-BFGS-B stopped after its first step on flat starts (seen with three correlated terms)
    res = optimize.minimize(fg, x0, jac=True, method="BFGS", options=opts)
    x, fx = np.asarray(res.x, dtype=float), float(res.fun)
    f0 = f(x0)
    return (x, fx) if fx <= f0 else (x0, f0)


def _profile_ends(prof: Callable[[float, np.ndarray], tuple[float, np.ndarray]], center: float, warm: np.ndarray,
                  z: float, step0: float, limit: tuple[float, float], kind: str) -> tuple[float, float]:
    """The two ends of {t : ζ(t) ≤ z} around ``center``, ζ(t) = √(prof(t)) the signed root of the
    profile (prof(center) = 0).  The first try is ``step0`` (a Wald half-width) away, then steps
    outward, doubling, until ζ passes z; then Brent's method on ζ − z.  Past ``limit`` without
    passing: an SD's lower end is 0, a correlation's end ±1, otherwise ±∞."""
    from scipy import optimize

    ends = []
    for side, lim in zip((-1.0, 1.0), limit):
        step = step0
        t_prev, x_prev = center, warm
        near: dict[float, np.ndarray] = {center: warm}
        end = math.nan
        while True:
            t = t_prev + side * step
            if abs(t - center) > lim:
                end = (0.0 if kind == "sd" and side < 0 else side if kind == "cor" else side * math.inf)
                break
            dz, x_new = prof(t, x_prev)
            near[t] = x_new
            if dz >= z * z:
                lo_t, hi_t = sorted((t_prev, t))

                def zeta(u: float) -> float:
                    start = near[min(near, key=lambda v: abs(v - u))]
                    d, x = prof(u, start)
                    near[u] = x
                    return math.sqrt(max(d, 0.0)) - z

                tt = optimize.brentq(zeta, lo_t, hi_t, xtol=1e-7 * max(abs(step0), 1e-300), rtol=1e-10)
                end = math.exp(tt) if kind in ("sd", "sigma") else math.tanh(tt) if kind == "cor" else tt
                break
            t_prev, x_prev = t, x_new
            step = 0.5 * step0 if step == step0 else 2.0 * step  # just past the Wald end, then farther
        ends.append(end)
    return ends[0], ends[1]


class _Deviance:
    """The ML deviance of a fit in a layout's coordinates: Gaussian (β by GLS, or with β_k held) or
    Laplace (β in the coordinates, first)."""

    def __init__(self, bound: BoundSpec, pt: Point) -> None:
        from .infer import sparse

        self.pt = pt
        self.gaussian = bound.spec.fam.exact
        self.p = pt.beta.size
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
        The hyperparameters' SEs on the log / atanh scale (:func:`poolwise.estimates.hyper_se`),
        where the search for each end starts (else half a unit).
    coefficients
        Profile the coefficients too (else σ, the SDs and the correlations only).
    parm
        Only these parameters (lme4's ``parm``), by name.

    Returns
    -------
    DataFrame indexed by parameter name with ``lo`` and ``hi``.  An SD whose profile stays below the
    bound down to 0 has lower end 0; a correlation whose profile does so towards ±1 has end ±1.
    """
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + prob / 2.0))
    dev = _Deviance(bound, pt)
    base = _Layout(bound, pt)
    p, nb = dev.p, (0 if dev.gaussian else dev.p)
    ref = max([1.0 if pt.sigma is None else pt.sigma]
              + [float(np.max(sd)) for sd in pt.sd if sd is not None and sd.size])
    rows: dict[str, dict[str, float]] = {}

    def start_steps(m: int) -> np.ndarray:
        se_b = np.sqrt(np.clip(np.diagonal(pt.beta_cov), 1e-300, None)) if pt.beta_cov is not None else np.ones(p)
        return np.concatenate([1e-2 * se_b[:nb], np.full(m - nb, 1e-3)])

    with dev.ctx:
        x0 = base.pack(pt.sigma, pt.Sigma)
        full0 = x0 if dev.gaussian else np.concatenate([pt.beta, x0])
        x_hat, d_hat = _minimize(lambda x: dev(base, x), full0)  # the ML optimum (REML refitted by ML)
        sigma_ml, Sigma_ml = base.unpack(x_hat[nb:])
        m = x_hat.size
        H = _hessian(lambda x: dev(base, x), x_hat, start_steps(m))  # BFGS starts from its blocks

        def profile_one(layout: _Layout, x_c: np.ndarray, col: int, kind: str, Hl: np.ndarray, step0: float,
                        limit: tuple[float, float]) -> tuple[float, float]:
            others = [a for a in range(x_c.size) if a != col]
            Hi = _inv_pd(Hl[np.ix_(others, others)])

            def prof(t: float, warm: np.ndarray) -> tuple[float, np.ndarray]:
                def g(y: np.ndarray) -> float:
                    x = np.empty(x_c.size)
                    x[others], x[col] = y, t
                    return dev(layout, x)

                y, fy = _minimize(g, warm, Hi)
                return fy - d_hat, y

            return _profile_ends(prof, float(x_c[col]), x_c[others], z, step0, limit, kind)

        if coefficients and (parm is None or any(n in parm for n in bound.coef_names)):
            beta_ml, se_ml = dev.beta_and_se(base, x_hat)
            for k, name in enumerate(bound.coef_names):
                if parm is not None and name not in parm:
                    continue
                lim = (50.0 * float(se_ml[k]),) * 2
                if dev.gaussian:
                    Hi = _inv_pd(H)

                    def prof_b(t: float, warm: np.ndarray, k: int = k, Hi: np.ndarray | None = Hi
                               ) -> tuple[float, np.ndarray]:
                        y, fy = _minimize(lambda x: dev.with_beta(base, x, k, t), warm, Hi)
                        return fy - d_hat, y

                    lo, hi = _profile_ends(prof_b, float(beta_ml[k]), x_hat, z, z * float(se_ml[k]), lim, "beta")
                else:
                    lo, hi = profile_one(base, x_hat, k, "beta", H, z * float(se_ml[k]), lim)
                rows[name] = {"lo": lo, "hi": hi}
        for j, name in enumerate(base.names):
            if parm is not None and name not in parm:
                continue
            kind = base.kinds[j]
            h = float(se_hint.get(name, math.nan)) if se_hint is not None else math.nan
            step0 = z * h if 0 < h < 2 else 0.5
            if kind != "cor":
                c = float(x_hat[nb + j])
                # log SD, log σ: a factor e¹² down, and up to 10⁴ × the data's scale (an SD estimated at
                # 0 starts far below it)
                lim = (12.0, max(12.0, math.log(1e4 * ref) - c))
                rows[name] = dict(zip(("lo", "hi"), profile_one(base, x_hat, nb + j, kind, H, step0, lim)))
                continue
            # a correlation: its factor's terms reordered so that the pair comes first (its first CPC)
            i, (a, c_) = _which_cor(bound, name)
            q = bound.blocks[i].q
            layout = _Layout(bound, pt, {i: [a, c_] + [t for t in range(q) if t not in (a, c_)]})
            xl = layout.pack(sigma_ml, Sigma_ml)
            xl = xl if dev.gaussian else np.concatenate([x_hat[:p], xl])
            col = nb + layout.names.index(name) if name in layout.names else None
            if col is None:  # named with the terms the other way round
                col = nb + layout.names.index(_swap(name))
            Hl = H if q == 2 else _hessian(lambda x: dev(layout, x), xl, start_steps(xl.size))
            rows[name] = dict(zip(("lo", "hi"), profile_one(layout, xl, col, "cor", Hl, step0, (8.0, 8.0))))
    out = pd.DataFrame.from_dict(rows, orient="index", columns=["lo", "hi"])
    out.index.name = "parameter"
    return out


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
