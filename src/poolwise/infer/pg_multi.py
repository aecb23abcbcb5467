"""Exact inference for bernoulli and binomial models with several grouping factors (crossed, nested
or partially crossed): Pólya-Gamma Gibbs on the sparse machinery of the Gaussian path.

Model, for rows i with successes y_i of n_i trials and a level g_k[i] of each grouping factor k:

    η_i = x_i'β + offset_i + Σ_k z_ki'b_k,g_k[i],   y_i ~ Binomial(n_i, logit⁻¹(η_i)),
    b_kj ~ MVN(0, Σ_k),  Σ_k = diag(s_k) R_k diag(s_k),  β ~ N(m0, diag(s0²)),

with prior weights multiplying each row's log-likelihood.  As in :mod:`poolwise.infer.pg` (whose
module text derives it), given Pólya-Gamma weights ω_i the pseudo-outcomes u_i = κ_i/ω_i − offset_i
are N(x_i'β + Σ_k z_ki'b_k, 1/ω_i): the Gaussian model with known per-row variances that
:mod:`poolwise.infer.sparse` integrates exactly, whatever the grouping structure, with σ = 1 and
W = diag(ω).  Rows that share every level, predictor and offset are merged first (exact: the sum of
PG(h_i, η) draws is PG(Σh_i, η)).

One Gibbs sweep per chain
-------------------------
(a) the weighted cross-products Z'ΩZ (per level and per pair of levels that share rows), Z'ΩX,
    Z'Ωu, X'ΩX, X'Ωu of the current ω, on the pattern of A = I + Λ'Z'ΩZΛ analysed once;
(b) θ = (per learned factor: log s_k, CorrCholesky coordinates) by random-walk Metropolis on the
    collapsed target p(θ | ω, y) — β and every group value integrated out through a Cholesky factor
    of A (:class:`poolwise.infer.sparse.HyperTarget`, batched dense factors by elimination of the
    largest factor, or CHOLMOD); the proposal is adapted during warmup only;
(c) β and every group value jointly from their exact Gaussian conditional given (θ, ω), through the
    same factor;
(d) ω | η ~ PG(h, η), one vectorized :func:`polyagamma.random_polyagamma` call.

Chains run one after the other (each has its own ω, hence its own A).  NumPy/SciPy and
``polyagamma`` only: nothing is compiled.

References
----------
Polson, N. G., Scott, J. G. & Windle, J. (2013). Bayesian inference for logistic models using
Pólya-Gamma latent variables. JASA 108, 1339–1349.
Bates, D., Mächler, M., Bolker, B. & Walker, S. (2015). Fitting linear mixed-effects models using
lme4. Journal of Statistical Software 67(1) (the penalized least squares whose factor is used here).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from ..errors import SpecError
from ..reduce import PairStats, SparseStats
from ..spec import BoundSpec, ModelSpec
from . import Draws, Progress
from .pg import FAMILIES, TARGET_ACCEPT, merge_rows

__all__ = ["unsupported", "unsupported_bound", "too_large", "sample", "THETA_STEPS", "MAX_FLOPS"]

#: random-walk Metropolis steps on θ per Gibbs sweep (each one factorization of A)
THETA_STEPS = 3
#: the most flops one factorization of A may take (:func:`poolwise.infer.schur.schur_flops`) for this
#: sampler to be used: it factors A about (θ steps + 2) times per sweep and chain, 8,000 sweeps in all at
#: the default settings, where NUTS needs no factorization (about 1 ms a factorization at this size)
MAX_FLOPS = 5e6


def unsupported(spec: ModelSpec) -> str | None:
    """``None`` when :func:`sample` fits ``spec``: a bernoulli or binomial model (logit link) with
    two or more group terms (one term is :mod:`poolwise.infer.pg`'s)."""
    if spec.fam.name not in FAMILIES:
        return f"the {spec.fam.name} family"
    if len(spec.group_terms) < 2:
        return "one grouping factor (the one-factor Pólya-Gamma sampler fits it)"
    return None


def unsupported_bound(bound: BoundSpec) -> str | None:
    """:func:`unsupported` with what the data add: at least two blocks of group terms."""
    if bound.spec.fam.name not in FAMILIES:
        return f"the {bound.spec.fam.name} family"
    if len(bound.blocks) < 2:
        return "one block of group terms"
    return None


def too_large(bound: BoundSpec) -> str | None:
    """``None`` when A's factorizations are cheap enough for this sampler (:data:`MAX_FLOPS`), else why not."""
    from .schur import schur_flops

    J = [int(b.n_groups) for b in bound.blocks]
    q = [int(b.q) for b in bound.blocks]
    flops = schur_flops(J, q)
    if flops > MAX_FLOPS:
        return (f"its {sum(j * k for j, k in zip(J, q)):,} group values make each factorization of A take about "
                f"{flops:.1e} flops, and Pólya-Gamma Gibbs factors A several times a sweep")
    return None


class _Rows:
    """The merged rows and what every sweep's cross-products need: per factor its level of each
    pattern, per pair of factors the level pairs that share patterns."""

    def __init__(self, bound: BoundSpec, *, merge: bool = True) -> None:
        blocks = bound.blocks
        levels = np.column_stack([np.asarray(b.group, dtype=np.int64) for b in blocks])
        combo, code = np.unique(levels, axis=0, return_inverse=True)
        Zall = np.concatenate([np.asarray(b.Z, dtype=float).reshape(bound.n_obs, -1) for b in blocks], axis=1)
        pat = merge_rows(bound.y, bound.trials, bound.X, Zall, np.asarray(code).ravel(), bound.offset, bound.weights,
                         merge=merge)
        self.m, self.p = pat.m, pat.X.shape[1]
        self.X, self.offset, self.h, self.kappa = pat.X, pat.offset, pat.h, pat.kappa
        self.n_rows = pat.n_rows
        self.J = tuple(int(b.n_groups) for b in blocks)
        self.q = tuple(int(b.q) for b in blocks)
        at = np.cumsum((0,) + self.q)
        self.Z = [pat.Z[:, at[k]:at[k + 1]] for k in range(len(blocks))]
        self.g = [combo[pat.group, k] for k in range(len(blocks))]
        self.n = tuple(np.bincount(g, minlength=J).astype(float) for g, J in zip(self.g, self.J))
        self.pairs: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for k in range(len(blocks)):
            for l in range(k + 1, len(blocks)):
                key, inv = np.unique(self.g[k] * self.J[l] + self.g[l], return_inverse=True)
                inv = np.asarray(inv).ravel()
                self.pairs.append((k, l, key // self.J[l], key % self.J[l], inv,
                                   np.bincount(inv, minlength=key.size).astype(float)))

    def stats(self, omega: np.ndarray) -> SparseStats:
        """The Gaussian model's statistics of the pseudo-outcomes u = κ/ω − offset with weights ω."""
        w = omega
        u = self.kappa / w - self.offset
        wu = w * u
        ZtWZ, ZtWX, ZtWy = [], [], []
        for Z, g, J, q in zip(self.Z, self.g, self.J, self.q):
            M = np.empty((J, q, q))
            MX = np.empty((J, q, self.p))
            My = np.empty((J, q))
            for a in range(q):
                wa = w * Z[:, a]
                for c in range(a, q):
                    M[:, a, c] = M[:, c, a] = np.bincount(g, weights=wa * Z[:, c], minlength=J)
                for c in range(self.p):
                    MX[:, a, c] = np.bincount(g, weights=wa * self.X[:, c], minlength=J)
                My[:, a] = np.bincount(g, weights=wu * Z[:, a], minlength=J)
            ZtWZ.append(M)
            ZtWX.append(MX)
            ZtWy.append(My)
        pairs: dict[tuple[int, int], PairStats] = {}
        for k, l, a_, b_, inv, n in self.pairs:
            qk, ql = self.q[k], self.q[l]
            B = np.empty((n.size, qk, ql))
            for a in range(qk):
                wa = w * self.Z[k][:, a]
                for c in range(ql):
                    B[:, a, c] = np.bincount(inv, weights=wa * self.Z[l][:, c], minlength=n.size)
            pairs[(k, l)] = PairStats(a=a_, b=b_, n=n, ZtWZ=B)
        Xw = self.X * w[:, None]
        return SparseStats(n=self.n, ZtWZ=tuple(ZtWZ), ZtWX=tuple(ZtWX), ZtWy=tuple(ZtWy), pairs=pairs,
                           XtWX=Xw.T @ self.X, XtWy=Xw.T @ u, yWy=float(wu @ u), sum_log_w=float(np.sum(np.log(w))),
                           n_obs=self.n_rows)

    def eta(self, beta: np.ndarray, b: list[np.ndarray]) -> np.ndarray:
        """η of each pattern for one draw: β (p,), per factor b (J_k, q_k)."""
        out = self.X @ beta + self.offset
        for Z, g, bk in zip(self.Z, self.g, b):
            out = out + np.einsum("ik,ik->i", Z, bk[g])
        return np.asarray(out)


def sample(bound: BoundSpec, *, seed: int, chains: int = 4, draws: int = 1000, warmup: int = 1000,
           progress: Progress | None = None, theta_steps: int | None = None, merge: bool = True,
           target_accept: float | None = None, max_tree_depth: int | None = None) -> Draws:
    """Exact posterior draws of a bernoulli or binomial model with several grouping factors by
    Pólya-Gamma Gibbs sampling (see the module text).

    Parameters
    ----------
    bound
        A bound spec of family bernoulli or binomial with at least two blocks of group terms.
    seed
        Seed: the same seed gives the same draws.
    chains, draws, warmup
        Chains, kept sweeps per chain, and warmup sweeps (θ's proposal is adapted during warmup).
    progress
        Optional callback ``(stage, fraction)``.
    theta_steps
        Random-walk Metropolis steps on θ per sweep (default :data:`THETA_STEPS`).
    merge
        Merge rows that share the linear predictor first (``False``: one pattern per row).
    target_accept, max_tree_depth
        NUTS settings, accepted so that a call written for NUTS runs; not used (the info says so).

    Returns
    -------
    Draws
        ``method="exact"``; ``sample_stats["acceptance_rate"]`` is the fraction of θ steps accepted
        in each sweep.

    Raises
    ------
    SpecError
        For a model this sampler does not cover, or a bad ``theta_steps``.
    """
    why = unsupported_bound(bound)
    if why is not None:
        raise SpecError(f"The several-factor Pólya-Gamma sampler fits bernoulli and binomial models with two or "
                        f"more grouping factors; not {why}.", hint="Use method='nuts'.", option="method")
    if theta_steps is not None and (not isinstance(theta_steps, int) or theta_steps < 1):
        raise SpecError(f"The 'theta_steps' option must be a positive integer. Got {theta_steps!r}.",
                        option="theta_steps")
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # −inf targets are rejected
        return _sample(bound, seed=seed, chains=chains, draws=draws, warmup=warmup, progress=progress,
                       theta_steps=theta_steps or THETA_STEPS, merge=merge, target_accept=target_accept,
                       max_tree_depth=max_tree_depth)


def _sample(bound: BoundSpec, *, seed: int, chains: int, draws: int, warmup: int, progress: Progress | None,
            theta_steps: int, merge: bool, target_accept: float | None, max_tree_depth: int | None) -> Draws:
    from polyagamma import random_polyagamma

    from .pg import _proposal
    from .sparse import Factorizer, HyperTarget, _blas, _blocks, _settings

    t0 = time.perf_counter()
    C, D, W = chains, draws, warmup
    rows = _Rows(bound, merge=merge)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    omega0 = rows.h / 4.0  # E[PG(h, 0)]
    st = rows.stats(omega0)
    fz = Factorizer(st)
    m0 = np.array([bound.priors[c].mean_sd()[0] for c in bound.coef_names], dtype=float)
    s0 = np.array([bound.priors[c].mean_sd()[1] for c in bound.coef_names], dtype=float)
    settings = _settings(bound)
    target = HyperTarget(
        st, fz, m0, s0, settings, seed=seed, sigma_prior=None,
        sd_priors=[[bound.priors[n] for n in b.sd_names] if b.Sigma is None else None for b in bound.blocks],
        lkj_eta=[float(bound.priors[f"cor({b.factor})"].args[0]) if f"cor({b.factor})" in bound.priors else 1.0
                 for b in bound.blocks])
    target.rng = rng
    dim = target.dim
    pair_keys = fz.pattern.pair_keys

    def use(omega: np.ndarray) -> None:
        """Point the target at the cross-products of these weights (same pattern of A)."""
        s = rows.stats(omega)
        fz.pattern.reweight(s.ZtWZ, [s.pairs[key].ZtWZ for key in pair_keys])
        target.st = s

    # dispersed starts: SDs around half the data scale (the link scale, 1), random correlations
    theta = np.zeros((C, dim))
    i = 0
    for s, nc in zip(settings, target.n_corr):
        if not s.learned:
            continue
        theta[:, i:i + s.q] = math.log(0.5 * bound.scale) + 0.7 * rng.standard_normal((C, s.q))
        theta[:, i + s.q:i + s.q + nc] = 0.5 * rng.standard_normal((C, nc))
        i += s.q + nc
    omega = np.broadcast_to(omega0, (C, rows.m)).copy()
    chol = np.eye(dim)
    log_scale = math.log(2.38 / math.sqrt(max(dim, 1)))
    adapt_at = {int(W * f) for f in (0.25, 0.5, 0.75)} - {0} if W >= 40 else set()
    window: list[np.ndarray] = []
    t_adapt = 0
    p = rows.p
    beta_out = np.empty((C, D, p))
    theta_out = np.empty((C, D, dim))
    b_out = [np.empty((C, D, J, q)) for J, q in zip(rows.J, rows.q)]
    acc_out = np.zeros((C, D))
    seconds_pg = 0.0
    total = W + D
    report = max(1, total // 20)
    with _blas(fz):
        for it in range(total):
            rate = np.ones(C)
            for c in range(C):
                use(omega[c])
                th = theta[c:c + 1]
                if dim:
                    cur = float(target(th)[0])
                    acc = 0
                    step = math.exp(log_scale)
                    for _ in range(theta_steps):
                        prop = th + step * (chol @ rng.standard_normal(dim))[None]
                        new = float(target(prop)[0])
                        if np.isfinite(new) and math.log(rng.uniform()) < new - cur:
                            th, cur = prop, new
                            acc += 1
                    theta[c] = th[0]
                    rate[c] = acc / theta_steps
                target.evaluate_chains(th)
                got = target.draws_at(th)
                if got is None:  # no draw came with the evaluation (a singular factor): draw afresh
                    raise FloatingPointError("the conditional draw of the group values failed")
                beta = got[0][0]
                b = [got[1][0, o:o + J * q].reshape(J, q) for o, J, q in zip(target.st.offsets, rows.J, rows.q)]
                tp = time.perf_counter()
                omega[c] = random_polyagamma(rows.h, rows.eta(beta, b), random_state=rng)
                seconds_pg += time.perf_counter() - tp
                if it >= W:
                    d = it - W
                    beta_out[c, d] = beta
                    theta_out[c, d] = theta[c]
                    for k, bk in enumerate(b):
                        b_out[k][c, d] = bk
            if dim and it < W:  # adapt the proposal during warmup only
                t_adapt += 1
                log_scale += (float(rate.mean()) - TARGET_ACCEPT) / t_adapt ** 0.6
                window.append(theta.copy())
                if it + 1 in adapt_at and len(window) * C > 4 * dim:
                    chol, log_scale = _proposal(np.concatenate(window), dim, chol)
                    window, t_adapt = [], 0
            if it >= W:
                acc_out[:, it - W] = rate
            if progress and (it + 1) % report == 0:
                progress("warmup" if it < W else "sampling", (it + 1) / total)
    if progress:
        progress("done", 1.0)
    _, sds, Ls, _, _ = target.unpack(theta_out.reshape(C * D, dim))
    corrs = [None if L is None else L @ np.swapaxes(L, -1, -2) for L in Ls]
    info: dict[str, Any] = {
        "seconds": time.perf_counter() - t0,
        "seconds_pg_draws": seconds_pg,
        "sampler": "polya-gamma gibbs",
        "hyper_sampler": (f"Pólya-Gamma Gibbs: the group SDs and correlations by random-walk Metropolis on the "
                          f"collapsed target ({theta_steps} steps per sweep, A = I + Λ'Z'ΩZΛ factored by "
                          f"{fz.backend}), then β and every group value from their exact conditional, then the "
                          f"Pólya-Gamma weights"),
        "warmup": W,
        "theta_steps": theta_steps if dim else 0,
        "rows": int(bound.n_obs),
        "patterns": rows.m,
        "factorization": fz.backend,
        "group_values": st.size,
        "hyper_evaluations": target.n_eval,
    }
    unused = [n for n, v in (("target_accept", target_accept), ("max_tree_depth", max_tree_depth)) if v is not None]
    if unused:
        info["note"] = f"{' and '.join(unused)} (NUTS settings) do not apply to the Pólya-Gamma sampler and were not used."
    if dim:
        info["acceptance_rate"] = float(acc_out.mean())
        info["proposal_scale"] = math.exp(log_scale)
    stats = {"acceptance_rate": acc_out} if dim else {}
    values = [bk.reshape(C * D, J, q) for bk, J, q in zip(b_out, rows.J, rows.q)]
    return Draws(beta=beta_out, sigma=None, tau=None, b=None, sample_stats=stats, method="exact", info=info,
                 blocks=_blocks(bound, C, D, sds, corrs, values))
