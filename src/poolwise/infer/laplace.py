"""Hyperparameters by MCMC on the Laplace-approximated marginal, group effects integrated out.

For bernoulli, binomial and poisson models (canonical links) with one grouping factor (several:
see below), write
b_j = Λu_j, u_j ~ N(0, I_q), Σ = ΛΛ' = diag(s) R diag(s).  For θ = (β, log s, CorrCholesky
coordinates of R) the group effects are integrated out by Laplace's approximation per group,

    log p(y | β, Σ) ≈ Σ_j [h_j(û_j) − ½ log|H_j|],   h_j(u) = Σ_{i∈j} log p(y_i | η_i) − ½|u|²,
    H_j = I + Λ'Z_j'W_jZ_jΛ  (W at û_j),

the criterion of :mod:`poolwise.infer.empirical` (lme4's ``glmer`` with ``nAGQ = 1``), here
*integrated* over θ rather than maximized: the log posterior of θ adds the priors of β, the
SDs and the LKJ prior of R (:func:`poolwise.infer.blockmath._lkj_cholesky_logpdf`) and the
log-Jacobians of the unconstrained coordinates (:func:`poolwise.infer.blockmath._corr_cholesky`),
the density NumPyro's full model has in the same coordinates once b is integrated out.  This is
the embedded Laplace approximation of Stan (Margossian et al., 2020) and of INLA's inner step
(Rue, Martino & Chopin, 2009).

θ is sampled by independence Metropolis–Hastings with an adapted multivariate t proposal
(:func:`poolwise.infer.imh._imh`): exact for the Laplace-approximated posterior.  Every
evaluation of the target runs the per-group Newton iterations vectorized over a batch of θ and
over the groups at once (rows sorted by group, per-group sums by :func:`numpy.add.reduceat`),
in chunks of θ that bound the memory to about :data:`_CHUNK_ELEMENTS` numbers per work array,
warm-started from the modes at the best θ seen so far (on the b scale, where the mode of a
well-informed group barely moves with Σ).  Each evaluated θ also gets one draw of the group
values from the Laplace Gaussian b_j ~ N(Λû_j, ΛH_j⁻¹Λ'); carried along with θ through the
MH chain this is independence MH on the joint (θ, b) with the Gaussian as b's proposal and
target, so the pairs are draws of the approximate joint posterior.

Several grouping factors (crossed or nested) couple the groups, so the Newton iterations run over
all group values at once through the sparse factor of I + Λ'Z'WZΛ
(:class:`CrossedLaplaceTarget`, the kernel of :mod:`poolwise.infer.empirical` for several factors),
one θ at a time, with θ = (β, per factor its log SDs and CorrCholesky coordinates) and one draw of
every group value per θ from u ~ N(û, (I + Λ'Z'WZΛ)⁻¹).  Small systems (a dense factor) are
evaluated in batches of θ: A for the whole batch is formed densely and factored in one LAPACK call
per Newton step.

The per-θ kernel of :mod:`poolwise.infer.empirical` (``_Laplace.modes``) works one θ at a time;
the kernel here is the same Newton iteration (step halving per group, the same criterion)
batched over θ, and the tests check the two agree.  ``_Laplace.glm_start`` gives the start.

References
----------
Tierney, L. & Kadane, J. B. (1986). Accurate approximations for posterior moments and marginal
densities. JASA 81, 82–86.
Rue, H., Martino, S. & Chopin, N. (2009). Approximate Bayesian inference for latent Gaussian
models by using integrated nested Laplace approximations. JRSS B 71, 319–392.
Margossian, C. C., Vehtari, A., Simpson, D. & Agrawal, R. (2020). Hamiltonian Monte Carlo using an
adjoint-differentiated Laplace approximation. NeurIPS 33.
Tierney, L. (1994). Markov chains for exploring posterior distributions. Annals of Statistics 22,
1701–1762.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import ConvergenceWarning, SpecError
from ..spec import BoundSpec
from . import BlockDraws, Draws, Progress
from . import blockmath, imh
from .empirical import _LAPLACE_FAMILIES, _CrossedLaplace, _glm_start, _Laplace  # the sibling module's helpers

__all__ = ["LaplaceTarget", "CrossedLaplaceTarget", "sample", "MIN_ACCEPT"]

#: below this independence-MH acceptance rate a ConvergenceWarning suggests method="nuts"
MIN_ACCEPT = 0.3
_CHUNK_ELEMENTS = 1 << 15  # numbers per (θ-chunk × rows) work array
_MAX_CHUNK = 512
_MAX_NEWTON = 60
_TOL_DEC = 1e-10  # Newton decrement per group at which the mode is taken as found


class LaplaceTarget:
    """Log posterior of θ = (β, log s, CorrCholesky x) with the group effects integrated out by Laplace.

    Callable on a batch of θ (B, dim) → (B,) log densities (−inf where not finite), with ``dim``
    and ``center()`` as :func:`poolwise.infer.imh._imh` needs.
    """

    def __init__(self, bound: BoundSpec, rng: np.random.Generator | None = None) -> None:
        blk = bound.blocks[0]
        fam = bound.spec.fam
        self.family = fam.name
        self.p, self.q, self.J = bound.X.shape[1], blk.q, blk.n_groups
        order = np.argsort(blk.group, kind="stable")
        g = np.asarray(blk.group)[order].astype(np.int64)
        self.present = np.unique(g)  # groups with rows
        self.Jp = int(self.present.size)
        self.g = np.searchsorted(self.present, g)  # row → index among present groups
        self.starts = np.flatnonzero(np.r_[True, np.diff(self.g) != 0]) if g.size else np.zeros(0, np.int64)
        y = np.asarray(bound.y, dtype=float)[order]
        w = np.asarray(bound.weights, dtype=float)[order]
        ntr = np.ones_like(y) if bound.trials is None else np.asarray(bound.trials, dtype=float)[order]
        self.X = np.ascontiguousarray(np.asarray(bound.X, dtype=float)[order])
        self.offset = np.asarray(bound.offset, dtype=float)[order]
        self.Z = np.ascontiguousarray(np.asarray(blk.Z, dtype=float)[order])
        self.ones = [bool(np.all(self.Z[:, k] == 1.0)) for k in range(self.q)]
        self.wy, self.wn = w * y, w * ntr
        # the terms of the log-likelihood that do not depend on η (log binomial coefficients, log y!)
        eta0 = np.zeros_like(y)
        full = fam.log_likelihood(np.asarray(bound.y, dtype=float)[order], eta0, trials=None if bound.trials is None
                                  else np.asarray(bound.trials, dtype=float)[order], weights=w)
        self.ll_const = float(np.sum(full) - np.sum(self._row_ll(eta0[None])[0]))
        # priors and coordinates
        self.beta_priors = [bound.priors[c] for c in bound.coef_names]
        self.Lam_fixed: np.ndarray | None = None
        if blk.Sigma is not None:
            self.Lam_fixed = blockmath._psd_sqrt(np.asarray(blk.Sigma, dtype=float))
            self.sd_priors = []
        else:
            self.sd_priors = [bound.priors[n] for n in blk.sd_names]
        self.n_sd = self.q if blk.Sigma is None else 0
        self.n_corr = self.q * (self.q - 1) // 2 if (blk.Sigma is None and self.q > 1 and blk.term.correlated) else 0
        self.lkj_eta = float(bound.priors[f"cor({blk.factor})"].args[0]) if self.n_corr else 1.0
        self.dim = self.p + self.n_sd + self.n_corr
        self.chunk = int(max(1, min(_MAX_CHUNK, _CHUNK_ELEMENTS // max(1, y.size))))
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.lap = _Laplace(bound)
        # warm start: the modes (on the b scale) at the best θ so far
        self.b_ref = np.zeros((self.Jp, self.q))
        self.lp_ref = -math.inf
        # the last batch evaluated: θ and one draw of the group values per θ
        self.last_theta = np.zeros((0, self.dim))
        self.last_values = np.zeros((0, self.J, self.q))
        self.n_eval = 0
        self.newton_iters: list[int] = []

    # -- rows ---------------------------------------------------------------------------------
    def _row_ll(self, eta: np.ndarray) -> np.ndarray:
        if self.family == "poisson":
            with np.errstate(over="ignore"):
                return np.asarray(self.wy * eta - self.wn * np.exp(eta))
        return np.asarray(self.wy * eta - self.wn * np.logaddexp(0.0, eta))

    def _pass(self, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per group: Σ log p (B, Jp), Σ s z_k (B, Jp, q), Σ W z_k z_l (B, Jp, q, q)."""
        q = self.q
        with np.errstate(over="ignore", invalid="ignore"):
            if self.family == "poisson":
                mu = np.exp(eta)
                wmu = self.wn * mu
                ll = self.wy * eta - wmu
                s = self.wy - wmu
                W = wmu
            else:
                e = np.exp(-np.abs(eta))
                inv = 1.0 / (1.0 + e)
                mu = np.where(eta >= 0, inv, e * inv)
                ll = self.wy * eta - self.wn * (np.maximum(eta, 0.0) + np.log1p(e))
                s = self.wy - self.wn * mu
                W = self.wn * mu * (1.0 - mu)

        def gsum(v: np.ndarray) -> np.ndarray:
            return np.add.reduceat(v, self.starts, axis=1)

        B = eta.shape[0]
        llg = gsum(ll)
        sz = [s if self.ones[k] else s * self.Z[:, k] for k in range(q)]
        gz = np.stack([gsum(v) for v in sz], axis=-1)
        ZWZ = np.empty((B, self.Jp, q, q))
        for a in range(q):
            Wa = W if self.ones[a] else W * self.Z[:, a]
            for c in range(a, q):
                ZWZ[:, :, a, c] = ZWZ[:, :, c, a] = gsum(Wa if self.ones[c] else Wa * self.Z[:, c])
        return llg, gz, ZWZ

    def _eta(self, eta_fix: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = eta_fix.copy()
        for k in range(self.q):
            bk = np.take(b[:, :, k], self.g, axis=1)
            out += bk if self.ones[k] else bk * self.Z[:, k]
        return out

    # -- θ ------------------------------------------------------------------------------------
    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray,
                                                 np.ndarray]:
        """β (B, p), s (B, q) or None, L_R (B, q, q) or None, Λ (B, q, q), log prior + log-Jacobian (B,)."""
        B, p, q = theta.shape[0], self.p, self.q
        beta = theta[:, :p]
        lp = np.zeros(B)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            for k, pr in enumerate(self.beta_priors):
                lp = lp + pr.logpdf(beta[:, k])
            sd: np.ndarray | None = None
            L: np.ndarray | None = None
            if self.Lam_fixed is not None:
                Lam = np.broadcast_to(self.Lam_fixed, (B, q, q)).copy()
            else:
                sd = np.exp(theta[:, p:p + q])
                for k, pr in enumerate(self.sd_priors):
                    lp = lp + pr.logpdf(sd[:, k]) + theta[:, p + k]
                if self.n_corr:
                    L, logjac = blockmath._corr_cholesky(theta[:, p + q:], q)
                    lp = lp + blockmath._lkj_cholesky_logpdf(L, self.lkj_eta) + logjac
                    Lam = sd[:, :, None] * L
                else:
                    Lam = sd[:, :, None] * np.eye(q)
        return beta, sd, L, Lam, lp

    def center(self) -> np.ndarray:
        """β of the pooled GLM, s_k = 0.5 / RMS(z_k), R = I."""
        beta0, _ = self.lap.glm_start()
        zz = np.sqrt(np.maximum((self.Z**2).mean(axis=0), 1e-300)) if self.Z.size else np.ones(self.q)
        parts = [beta0]
        if self.n_sd:
            parts.append(np.log(0.5 / zz))
        parts.append(np.zeros(self.n_corr))
        return np.concatenate(parts)

    def modes(self, beta: np.ndarray, Lam: np.ndarray, u0: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, blockmath._NpChol, np.ndarray, int]:
        """Per-group Newton for a chunk: û (B, Jp, q), Laplace log-lik (B,), C (chol of H), converged, iterations."""
        B, q = beta.shape[0], self.q
        eta_fix = beta @ self.X.T + self.offset
        u = u0.copy()
        LamT = np.swapaxes(Lam, 1, 2)

        def evaluate(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            b = u @ LamT  # b_j = Λu_j
            llg, gz, ZWZ = self._pass(self._eta(eta_fix, b))
            h = llg - 0.5 * (u * u).sum(axis=-1)
            g = gz @ Lam - u  # Λ'gz − u
            H = np.einsum("bca,bjcd,bde->bjae", Lam, ZWZ, Lam) + np.eye(q)
            return h, g, H

        h, g, H = evaluate(u)
        conv = np.zeros(B, dtype=bool)
        it = 0
        for it in range(1, _MAX_NEWTON + 1):
            C = blockmath._NpChol(H)
            delta = C.solve(C.solve(g[..., None]), transpose=True)[..., 0]
            dec = (g * delta).sum(axis=-1)
            dec = np.where(np.isfinite(dec), dec, np.inf)
            conv = dec.max(axis=1) < _TOL_DEC if self.Jp else np.ones(B, dtype=bool)
            if conv.all():
                break
            t = np.ones(h.shape)
            u_new = u + delta
            h_new, g_new, H_new = evaluate(u_new)
            for _ in range(30):
                bad = ~(h_new >= h - 1e-12 * (1.0 + np.abs(h)))
                if not bad.any():
                    break
                t = np.where(bad, 0.5 * t, t)
                u_new = np.where(bad[..., None], u + t[..., None] * delta, u_new)
                h2, g2, H2 = evaluate(u_new)
                h_new = np.where(bad, h2, h_new)
                g_new = np.where(bad[..., None], g2, g_new)
                H_new = np.where(bad[..., None, None], H2, H_new)
            keep = h_new >= h - 1e-12 * (1.0 + np.abs(h))
            if not keep.any():
                break
            u = np.where(keep[..., None], u_new, u)
            h = np.where(keep, h_new, h)
            g = np.where(keep[..., None], g_new, g)
            H = np.where(keep[..., None, None], H_new, H)
        C = blockmath._NpChol(H)
        val = h.sum(axis=1) - C.sum_log_diag().sum(axis=1) + self.ll_const
        return u, np.where(np.isfinite(val), val, -np.inf), C, conv, it

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        B = theta.shape[0]
        beta, _, _, Lam, lp = self.unpack(theta)
        ok = np.isfinite(lp) & np.all(np.isfinite(beta), axis=1) & np.all(np.isfinite(Lam), axis=(1, 2))
        out = np.full(B, -np.inf)
        values = np.zeros((B, self.J, self.q))
        empty = np.setdiff1d(np.arange(self.J), self.present)
        idx = np.flatnonzero(ok)
        best_lp, best_b = -math.inf, None
        for s in range(0, idx.size, self.chunk):
            sl = idx[s:s + self.chunk]
            lam = Lam[sl]
            with np.errstate(all="ignore"):
                # Λ⁻¹b, by the pseudo-inverse: Λ = 0 (pooled, group terms dropped) is singular
                b_ref = np.broadcast_to(self.b_ref.T, (sl.size, self.q, self.Jp))
                u0 = (np.linalg.pinv(lam) @ b_ref).transpose(0, 2, 1)
            u0 = np.where(np.isfinite(u0), u0, 0.0)
            u, ll, C, _, it = self.modes(beta[sl], lam, u0)
            self.newton_iters.append(it)
            val = ll + lp[sl]
            out[sl] = val
            # one draw of the group values from the Laplace Gaussian: u = û + C⁻ᵀε, b = Λu
            eps = self.rng.standard_normal(u.shape)
            with np.errstate(all="ignore"):
                ud = u + C.solve(eps[..., None], transpose=True)[..., 0]
            values[sl[:, None], self.present[None, :]] = ud @ np.swapaxes(lam, 1, 2)
            if empty.size:
                values[sl[:, None], empty[None, :]] = self.rng.standard_normal((sl.size, empty.size, self.q)) \
                    @ np.swapaxes(lam, 1, 2)
            k = int(np.argmax(np.where(np.isfinite(val), val, -np.inf)))
            if np.isfinite(val[k]) and val[k] > best_lp:
                best_lp, best_b = float(val[k]), u[k] @ lam[k].T
        if best_b is not None and best_lp > self.lp_ref:
            self.lp_ref, self.b_ref = best_lp, best_b
        self.n_eval += B
        self.last_theta, self.last_values = theta.copy(), values
        return np.where(np.isnan(out), -np.inf, out)

    def values_at(self, theta: np.ndarray) -> np.ndarray:
        """One draw of the group values per row of θ (N, dim) → (N, J, q): the draws made when the
        last batch was evaluated where θ is in it, fresh ones otherwise."""
        lookup = {row.tobytes(): i for i, row in enumerate(self.last_theta)}
        pos = np.array([lookup.get(row.tobytes(), -1) for row in theta], dtype=np.int64)
        out = np.empty((theta.shape[0], self.J, self.q))
        found = pos >= 0
        out[found] = self.last_values[pos[found]]
        if not found.all():
            miss = np.flatnonzero(~found)
            uniq, inv = np.unique(theta[miss], axis=0, return_inverse=True)
            self(uniq)
            out[miss] = self.last_values[inv.ravel()]
        return out


class CrossedLaplaceTarget:
    """Log posterior of θ = (β, per learned factor: log s_1..q and CorrCholesky x) for several
    grouping factors, every group value integrated out by Laplace's approximation through the
    sparse factor (:class:`poolwise.infer.empirical._CrossedLaplace`), one θ at a time.

    The same interface as :class:`LaplaceTarget` (``dim``, ``center()``, batched ``__call__``,
    ``unpack``, ``values_at``): each evaluated θ also gets one draw of every group value from the
    Laplace Gaussian u ~ N(û, A⁻¹), b_k = Λ_k u_k.
    """

    def __init__(self, bound: BoundSpec, rng: np.random.Generator | None = None) -> None:
        self.lap = _CrossedLaplace(bound)
        self.bound = bound
        self.p = self.lap.p
        self.beta_priors = [bound.priors[c] for c in bound.coef_names]
        self.blocks = list(bound.blocks)
        self.fixed = [None if b.Sigma is None else blockmath._psd_sqrt(np.asarray(b.Sigma, dtype=float))
                      for b in self.blocks]
        self.sd_priors = [None if b.Sigma is not None else [bound.priors[n] for n in b.sd_names] for b in self.blocks]
        self.n_corr = [b.q * (b.q - 1) // 2 if (b.Sigma is None and b.q > 1 and b.term.correlated) else 0
                       for b in self.blocks]
        self.lkj_eta = [float(bound.priors[f"cor({b.factor})"].args[0]) if nc else 1.0
                        for b, nc in zip(self.blocks, self.n_corr)]
        self.dim = self.p + sum(b.q + nc for b, nc in zip(self.blocks, self.n_corr) if b.Sigma is None)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.last_theta = np.zeros((0, self.dim))
        self.last_values: list[np.ndarray] = [np.zeros((0, b.n_groups, b.q)) for b in self.blocks]
        self.lp_ref = -math.inf  # the best log density so far (its modes warm-start batches)
        self.n_eval = 0

    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, list[np.ndarray | None], list[np.ndarray | None],
                                                 list[np.ndarray], np.ndarray]:
        """β (B, p); per factor s (B, q) or None, L_R (B, q, q) or None, Λ (B, q, q); log prior + log-Jacobian (B,)."""
        theta = np.atleast_2d(theta)
        B, p = theta.shape[0], self.p
        beta = theta[:, :p]
        lp = np.zeros(B)
        sds: list[np.ndarray | None] = []
        Ls: list[np.ndarray | None] = []
        lams: list[np.ndarray] = []
        i = p
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            for k, pr in enumerate(self.beta_priors):
                lp = lp + pr.logpdf(beta[:, k])
            for blk, f, pri, nc, eta in zip(self.blocks, self.fixed, self.sd_priors, self.n_corr, self.lkj_eta):
                q = blk.q
                if f is not None:
                    sds.append(None)
                    Ls.append(None)
                    lams.append(np.broadcast_to(f, (B, q, q)))
                    continue
                assert pri is not None
                sd = np.exp(theta[:, i:i + q])
                for a, pr in enumerate(pri):
                    lp = lp + pr.logpdf(sd[:, a]) + theta[:, i + a]
                i += q
                L = None
                if nc:
                    L, logjac = blockmath._corr_cholesky(theta[:, i:i + nc], q)
                    lp = lp + blockmath._lkj_cholesky_logpdf(L, eta) + logjac
                    i += nc
                    lams.append(sd[:, :, None] * L)
                else:
                    lams.append(sd[:, :, None] * np.eye(q))
                sds.append(sd)
                Ls.append(L)
        return beta, sds, Ls, lams, lp

    def center(self) -> np.ndarray:
        """β of the pooled GLM, s_k = 0.5 / RMS(z_k), R = I."""
        lap = self.lap
        beta0, _ = _glm_start(self.bound.spec.fam, self.bound.y, lap.X, lap.offset, self.bound.weights,
                              self.bound.trials)
        parts = [beta0]
        for blk, Z, nc in zip(self.blocks, lap.Zs, self.n_corr):
            if blk.Sigma is None:
                zz = np.sqrt(np.maximum((Z**2).mean(axis=0), 1e-300)) if Z.size else np.ones(blk.q)
                parts += [np.log(0.5 / zz), np.zeros(nc)]
        return np.concatenate(parts)

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        B = theta.shape[0]
        beta, _, _, lams, lp = self.unpack(theta)
        out = np.full(B, -np.inf)
        values = [np.zeros((B, b.n_groups, b.q)) for b in self.blocks]
        lap = self.lap
        valid = np.isfinite(lp) & np.all(np.isfinite(beta), axis=1)
        for lam in lams:
            valid &= np.all(np.isfinite(lam), axis=(1, 2))
        rows = np.flatnonzero(valid)
        if lap.fz.dense and rows.size > 1:
            chunk = int(max(1, min(256, (1 << 21) // max(1, lap.Q * lap.Q))))
            for c0 in range(0, rows.size, chunk):
                self._dense_chunk(rows[c0:c0 + chunk], beta, lams, lp, out, values)
            rows = np.flatnonzero(valid & ~np.isfinite(out))  # a batch that failed: one at a time
        for r in rows:
            lam_r = [np.ascontiguousarray(lam[r]) for lam in lams]
            if not (np.isfinite(lp[r]) and np.all(np.isfinite(beta[r])) and all(np.all(np.isfinite(x)) for x in lam_r)):
                continue
            self.n_eval += 1
            with np.errstate(all="ignore"):
                try:
                    u, ll, _ = lap.modes(beta[r], lam_r)
                    # one draw of the group values from the Laplace Gaussian (A factored at û)
                    a = u + lap.fz.solve_Lt(self.rng.standard_normal(lap.Q))
                except (np.linalg.LinAlgError, ValueError, ArithmeticError):
                    continue
            v = ll + lp[r]
            if not math.isfinite(v):
                continue
            out[r] = v
            for k, bk in enumerate(lap._split(a)):
                values[k][r] = bk @ lam_r[k].T
        self.last_theta, self.last_values = theta.copy(), values
        return out

    def _dense_chunk(self, idx: np.ndarray, beta: np.ndarray, lams: list[np.ndarray], lp: np.ndarray,
                     out: np.ndarray, values: list[np.ndarray]) -> None:
        """Evaluate the rows idx of a batch together (dense factors), warm-started from the modes at
        the best θ so far (on the b scale)."""
        import scipy.linalg as sla

        lap = self.lap
        self.n_eval += idx.size
        lam_c = [np.ascontiguousarray(lam[idx]) for lam in lams]
        with np.errstate(all="ignore"):
            u0 = np.concatenate([np.einsum("bac,jc->bja", np.linalg.pinv(lam), b).reshape(idx.size, -1)
                                 for lam, b in zip(lam_c, lap.b_ref)], axis=1)
            u0 = np.where(np.isfinite(u0), u0, 0.0)
            try:
                u, ll, L, _ = lap.modes_batch(beta[idx], lam_c, u0)
                eps = self.rng.standard_normal((idx.size, lap.Q, 1))
                a = u + sla.solve_triangular(L, eps, lower=True, trans="T", check_finite=False)[..., 0]
            except (np.linalg.LinAlgError, ValueError, ArithmeticError):
                return
        v = ll + lp[idx]
        v = np.where(np.isfinite(v), v, -np.inf)
        out[idx] = v
        for k, (o, J, q) in enumerate(zip(lap.offsets, lap.J, lap.q)):
            values[k][idx] = np.einsum("bjc,bac->bja", a[:, o:o + J * q].reshape(idx.size, J, q), lam_c[k])
        best = int(np.argmax(v))
        if np.isfinite(v[best]) and v[best] > self.lp_ref:
            self.lp_ref = float(v[best])
            lap.b_ref = [u[best, o:o + J * q].reshape(J, q) @ lam_c[k][best].T
                         for k, (o, J, q) in enumerate(zip(lap.offsets, lap.J, lap.q))]

    def values_at(self, theta: np.ndarray) -> list[np.ndarray]:
        """One draw of every group value per row of θ (N, dim) → per factor (N, J, q): the draws made
        when the last batch was evaluated where θ is in it, fresh ones otherwise."""
        lookup = {row.tobytes(): i for i, row in enumerate(self.last_theta)}
        pos = np.array([lookup.get(row.tobytes(), -1) for row in theta], dtype=np.int64)
        out = [np.empty((theta.shape[0], b.n_groups, b.q)) for b in self.blocks]
        found = pos >= 0
        for o, v in zip(out, self.last_values):
            o[found] = v[pos[found]]
        if not found.all():
            miss = np.flatnonzero(~found)
            uniq, inv = np.unique(theta[miss], axis=0, return_inverse=True)
            self(uniq)
            for o, v in zip(out, self.last_values):
                o[miss] = v[np.asarray(inv).ravel()]
        return out


def _check(bound: BoundSpec) -> None:
    fam = bound.spec.fam
    if not bound.blocks:
        raise SpecError("method='laplace' integrates out group values, and this model has no group terms.",
                        hint="Add a group term such as (1 | g), or use method='nuts'.", option="method")
    if fam.name not in _LAPLACE_FAMILIES:
        raise SpecError(f"method='laplace' fits the bernoulli, binomial and poisson families, not {fam.name}.",
                        hint="Use method='nuts' (or method='exact' for gaussian).", option="method")


def sample(
    bound: BoundSpec,
    *,
    seed: int,
    chains: int = 4,
    draws: int = 1000,
    progress: Progress | None = None,
) -> Draws:
    """Posterior draws with the group effects integrated out by Laplace's approximation per group.

    θ = (β, log s, correlations) by independence MH on the Laplace marginal (exact for the
    approximate posterior); the group values from the Laplace Gaussian at each θ.

    Parameters
    ----------
    bound
        A bernoulli, binomial or poisson model with one or several grouping factors.
    seed
        Seed (same seed, same draws).
    chains, draws
        Chains and draws per chain (no warmup: the proposal is adapted before the chains run).
    progress
        Optional callback ``(stage, fraction)``.

    Returns
    -------
    Draws
        ``method="laplace"``; ``beta``, ``blocks`` (one :class:`BlockDraws`), ``sample_stats``
        with ``accepted`` and ``lp``; ``info`` with ``hyper_sampler``, ``acceptance_rate``,
        ``seconds``, ``evaluations`` and the importance-sampling ESS of the proposal.

    Raises
    ------
    SpecError
        For a model without group terms or another family.

    Warns
    -----
    ConvergenceWarning
        When the MH acceptance rate is below :data:`MIN_ACCEPT` (the Gaussian-like proposal fits
        the marginal poorly; its draws are still correct but more correlated).
    """
    t0 = time.perf_counter()
    _check(bound)
    if progress:
        progress("hyperparameters", 0.0)
    ss_imh, ss_values = np.random.SeedSequence(seed).spawn(2)
    C, D = chains, draws
    if len(bound.blocks) > 1:
        return _sample_crossed(bound, CrossedLaplaceTarget(bound, np.random.default_rng(ss_values)), ss_imh,
                               seed=seed, chains=C, draws=D, t0=t0, progress=progress)
    target = LaplaceTarget(bound, np.random.default_rng(ss_values))
    blk = bound.blocks[0]
    res = imh._imh(target, C, D, np.random.default_rng(ss_imh))  # type: ignore[arg-type]
    if isinstance(res, str):
        warnings.warn(f"method='laplace': its independence MH sampler failed ({res}); fitted with NUTS instead.",
                      ConvergenceWarning, stacklevel=3)
        from . import nuts

        out = nuts.sample(bound, seed=seed, chains=chains, draws=draws)
        return replace(out, info={**out.info, "note": f"method='laplace' fell back to NUTS: {res}"})
    t1 = time.perf_counter()
    theta = res.theta.reshape(C * D, target.dim)
    values = target.values_at(theta)
    beta, sd, L, _, _ = target.unpack(theta)
    acc = float(res.info["acceptance_rate"])
    if acc < MIN_ACCEPT:
        warnings.warn(
            f"method='laplace': the independence MH acceptance rate was {acc:.2f} (< {MIN_ACCEPT}); the "
            f"draws are valid but strongly autocorrelated.  Check the effective sample sizes, or use "
            f"method='nuts'.", ConvergenceWarning, stacklevel=3)
    if progress:
        progress("done", 1.0)
    corr = None if L is None else (L @ np.swapaxes(L, -1, -2)).reshape(C, D, blk.q, blk.q)
    info: dict[str, Any] = {
        "hyper_sampler": "independence MH on the Laplace marginal",
        "acceptance_rate": acc,
        "low_acceptance": acc < MIN_ACCEPT,
        "importance_ess": res.info.get("importance_ess"),
        "evaluations": target.n_eval,
        "max_newton_iterations": max(target.newton_iters, default=0),
        "seconds": time.perf_counter() - t0,
        "seconds_hyper": t1 - t0,
        "divergences": 0,
        "warmup": 0,
    }
    if res.info.get("imh_retry"):
        info["imh_retry"] = res.info["imh_retry"]
    return Draws(
        beta=beta.reshape(C, D, target.p).copy(),
        sigma=None, tau=None, b=None,
        sample_stats={"accepted": res.accepted, "lp": res.lp},
        method="laplace",
        info=info,
        blocks=(BlockDraws(sd=None if sd is None else sd.reshape(C, D, blk.q).copy(), corr=corr,
                           values=None if blk.pooled else values.reshape(C, D, blk.n_groups, blk.q)),),
    )


def _sample_crossed(bound: BoundSpec, target: CrossedLaplaceTarget, ss_imh: np.random.SeedSequence, *, seed: int,
                    chains: int, draws: int, t0: float, progress: Progress | None) -> Draws:
    """:func:`sample` for several grouping factors (one θ at a time through the sparse factor)."""
    from . import sparse

    C, D = chains, draws
    with sparse._blas(target.lap.fz):  # one BLAS thread for small dense systems
        res = imh._imh(target, C, D, np.random.default_rng(ss_imh))  # type: ignore[arg-type]
        if not isinstance(res, str):
            theta = res.theta.reshape(C * D, target.dim)
            values = target.values_at(theta)
    if isinstance(res, str):
        warnings.warn(f"method='laplace': its independence MH sampler failed ({res}); fitted with NUTS instead.",
                      ConvergenceWarning, stacklevel=4)
        from . import nuts

        out = nuts.sample(bound, seed=seed, chains=chains, draws=draws)
        return replace(out, info={**out.info, "note": f"method='laplace' fell back to NUTS: {res}"})
    t1 = time.perf_counter()
    beta, sds, Ls, _, _ = target.unpack(theta)
    acc = float(res.info["acceptance_rate"])
    if acc < MIN_ACCEPT:
        warnings.warn(
            f"method='laplace': the independence MH acceptance rate was {acc:.2f} (< {MIN_ACCEPT}); the "
            f"draws are valid but strongly autocorrelated.  Check the effective sample sizes, or use "
            f"method='nuts'.", ConvergenceWarning, stacklevel=4)
    if progress:
        progress("done", 1.0)
    blocks = []
    for blk, sd, L, v in zip(bound.blocks, sds, Ls, values):
        corr = None if L is None else (L @ np.swapaxes(L, -1, -2)).reshape(C, D, blk.q, blk.q)
        blocks.append(BlockDraws(sd=None if sd is None else sd.reshape(C, D, blk.q).copy(), corr=corr,
                                 values=None if blk.pooled else v.reshape(C, D, blk.n_groups, blk.q)))
    info: dict[str, Any] = {
        "hyper_sampler": "independence MH on the Laplace marginal",
        "acceptance_rate": acc,
        "low_acceptance": acc < MIN_ACCEPT,
        "importance_ess": res.info.get("importance_ess"),
        "evaluations": target.n_eval,
        "factorization": target.lap.fz.backend,
        "seconds": time.perf_counter() - t0,
        "seconds_hyper": t1 - t0,
        "divergences": 0,
        "warmup": 0,
    }
    if res.info.get("imh_retry"):
        info["imh_retry"] = res.info["imh_retry"]
    return Draws(beta=beta.reshape(C, D, target.p).copy(), sigma=None, tau=None, b=None,
                 sample_stats={"accepted": res.accepted, "lp": res.lp}, method="laplace", info=info,
                 blocks=tuple(blocks))
