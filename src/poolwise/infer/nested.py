"""Exact inference for nested varying intercepts, ``y ~ x + (1 | region/county)``.

Model: y_i = x_i'β + a_{r[i]} + c_{k[i]} + e_i, e_i ~ N(0, σ²/w_i), a_r ~ N(0, τ_a²) over the
outer groups, c_k ~ N(0, τ_c²) over the inner groups (each inner group inside one outer group).

Both group terms are integrated out by Woodbury's identity twice.  With s² = σ², ρ_c = τ_c²/s²,
ρ_a = τ_a²/s² (σ ≡ 1 with known standard errors), per inner group k (statistics a_k, sy_k, u_k
as in :mod:`poolwise.infer.exact`) the inner marginal V_k = s²(W⁻¹ + ρ_c 11') gives the sums of
the one-level model, and with f_k = 1/(1 + a_k ρ_c)

    1'V_k⁻¹1 = a_k f_k / s²,   1'V_k⁻¹X = u_k' f_k / s²,   1'V_k⁻¹y = sy_k f_k / s².

Summing them per outer group r (S_r, T_r, Y_r) and applying Woodbury to V_r = blockdiag(V_k) +
τ_a² 11' with κ_r = ρ_a / (1 + ρ_a S_r):

    Ā = Ā₁(ρ_c) − Σ_r κ_r T_r T_r',   b̄ = b̄₁ − Σ_r κ_r T_r Y_r,   q̄ = q̄₁ − Σ_r κ_r Y_r²,
    log|V| = N log s² − Σ log w + Σ_k log(1 + a_k ρ_c) + Σ_r log(1 + ρ_a S_r),

and β is integrated as in the one-level path (:func:`poolwise.infer.exact._combine`).  Given β,
a_r ~ N(κ_r (Y_r − T_r'β), s² κ_r) with the inner groups integrated out, then
c_k | a_r, β ~ N(k_k (sy_k − u_k'β − a_k a_r), s² k_k), k_k = ρ_c f_k.

The hyperparameters (log σ, log τ_a, log τ_c) are drawn by the independence Metropolis–Hastings
sampler of :mod:`poolwise.infer.collapsed` (adapted t proposal, exact correction).

References
----------
Harville, D. A. (1977). Maximum likelihood approaches to variance component estimation.
JASA 72, 320–338.
"""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.sparse as sp

from ..reduce import Reduced, reduce_arrays
from ..spec import BoundSpec, GroupBlock
from . import BlockDraws, Draws, Progress
from .exact import GroupSums, HyperPrior, _combine, group_sums

__all__ = ["nesting", "log_marginal", "sample"]


def nesting(bound: BoundSpec) -> tuple[GroupBlock, GroupBlock, np.ndarray] | None:
    """If the model is two nested varying intercepts, (outer, inner, outer index of each inner group)."""
    if len(bound.blocks) != 2 or any(b.exprs != ("Intercept",) for b in bound.blocks):
        return None
    for outer, inner in (bound.blocks, bound.blocks[::-1]):
        # nested: every inner group lies in exactly one outer group
        pairs = np.unique(np.stack([inner.group, outer.group]), axis=1)
        if pairs.shape[1] == inner.n_groups and inner.n_groups > outer.n_groups:
            parent = np.empty(inner.n_groups, dtype=np.int64)
            parent[pairs[0]] = pairs[1]
            return outer, inner, parent
    return None


class _Nested:
    """Sufficient statistics of the nested model and its log marginal, batched over (σ, τ_a, τ_c)."""

    def __init__(self, bound: BoundSpec, outer: GroupBlock, inner: GroupBlock, parent: np.ndarray) -> None:
        icpt = bound.coef_names.index("Intercept") if "Intercept" in bound.coef_names else None
        self.red: Reduced = reduce_arrays(bound.y - bound.offset, bound.X, bound.weights, inner.group, inner.n_groups,
                                          intercept=icpt)
        self.parent = parent
        self.J_outer = outer.n_groups
        # the (outer × inner) incidence matrix: sums over each outer group's inner groups
        self._up = sp.csr_matrix((np.ones(parent.size), (parent, np.arange(parent.size))),
                                 shape=(outer.n_groups, parent.size))
        self.hp = HyperPrior.from_bound(bound, self.red.shift)

    def _outer_sums(self, rho_c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """S, T, Y per outer group for a batch of ρ_c: sums over each outer group's inner groups, as one
        product with the (outer × inner) incidence matrix."""
        red = self.red
        f = 1.0 / (1.0 + red.a[None, :] * rho_c[:, None])  # (B, K)
        B, K = f.shape
        S = np.asarray(self._up @ (f * red.a).T).T  # (B, R)
        Y = np.asarray(self._up @ (f * red.sy).T).T
        U = (f.T[:, :, None] * red.u[:, None, :]).reshape(K, B * red.p)  # (K, B·p)
        T = np.asarray(self._up @ U).reshape(self.J_outer, B, red.p).transpose(1, 0, 2)
        return S, T, Y

    def sums(self, rho_a: np.ndarray, rho_c: np.ndarray) -> tuple[GroupSums, np.ndarray, np.ndarray, np.ndarray]:
        gs = group_sums(self.red, rho_c)
        S, T, Y = self._outer_sums(rho_c)
        kap = rho_a[:, None] / (1.0 + rho_a[:, None] * S)  # (B, R)
        A = gs.A - np.einsum("br,brp,brq->bpq", kap, T, T)
        b = gs.b - np.einsum("br,brp,br->bp", kap, T, Y)
        q = gs.q - np.einsum("br,br->b", kap, Y * Y)
        ld = gs.ld + np.log1p(rho_a[:, None] * S).sum(axis=1)
        return GroupSums(A, b, q, ld), kap, T, Y

    def log_marginal(self, s2: np.ndarray, tau_a: np.ndarray, tau_c: np.ndarray) -> np.ndarray:
        gs, *_ = self.sums(tau_a**2 / s2, tau_c**2 / s2)
        ll, _, _ = _combine(self.red, self.hp, s2, gs)
        return np.asarray(ll)


def log_marginal(bound: BoundSpec, sigma: np.ndarray, tau_outer: np.ndarray, tau_inner: np.ndarray) -> np.ndarray:
    """log p(y | σ, τ_outer, τ_inner) of a nested model, β and both group terms integrated out."""
    nest = nesting(bound)
    if nest is None:
        raise ValueError("The model is not two nested varying intercepts.")
    m = _Nested(bound, *nest)
    sigma = np.atleast_1d(np.asarray(sigma, dtype=float))
    return m.log_marginal(sigma**2, np.broadcast_to(tau_outer, sigma.shape).astype(float),
                          np.broadcast_to(tau_inner, sigma.shape).astype(float))


class _Target:
    """Log posterior over θ = (log σ, log τ_outer, log τ_inner), the learned ones only."""

    def __init__(self, bound: BoundSpec, model: _Nested, outer: GroupBlock, inner: GroupBlock) -> None:
        self.model = model
        self.has_sigma = bound.has_sigma
        self.sigma_prior = bound.priors.get("sigma") if bound.has_sigma else None
        self.fixed = [None if b.Sigma is None else float(math.sqrt(b.Sigma[0, 0])) for b in (outer, inner)]
        self.priors = [bound.priors.get(b.sd_names[0]) for b in (outer, inner)]
        self.dim = int(self.has_sigma) + sum(f is None for f in self.fixed)
        self.scale = bound.scale

    def unpack(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        B = theta.shape[0]
        i, lp = 0, np.zeros(B)
        if self.has_sigma:
            sigma = np.exp(theta[:, 0])
            assert self.sigma_prior is not None
            lp = lp + self.sigma_prior.logpdf(sigma) + theta[:, 0]
            i = 1
        else:
            sigma = np.ones(B)
        taus = []
        for fixed, prior in zip(self.fixed, self.priors):
            if fixed is None:
                assert prior is not None
                t = np.exp(theta[:, i])
                lp = lp + prior.logpdf(t) + theta[:, i]
                i += 1
            else:
                t = np.full(B, fixed)
            taus.append(t)
        return sigma, taus[0], taus[1], lp

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        theta = np.atleast_2d(theta)
        with np.errstate(all="ignore"):
            sigma, ta, tc, lp = self.unpack(theta)
            out = self.model.log_marginal(sigma**2, ta, tc) + lp
        return np.where(np.isfinite(out), out, -np.inf)

    def center(self) -> np.ndarray:
        parts = []
        if self.has_sigma:
            parts.append(math.log(0.7 * self.scale))
        parts += [math.log(0.4 * self.scale) for f in self.fixed if f is None]
        return np.array(parts)


def sample(bound: BoundSpec, *, seed: int, chains: int = 4, draws: int = 1000,
           progress: Progress | None = None) -> Draws | str:
    """Exact draws of the nested model, or a string saying why the sampler could not run."""
    from .imh import _imh

    t0 = time.perf_counter()
    nest = nesting(bound)
    if nest is None:
        return "not two nested varying intercepts"
    outer, inner, parent = nest
    model = _Nested(bound, outer, inner, parent)
    target = _Target(bound, model, outer, inner)
    rng = np.random.default_rng(seed)
    if progress:
        progress("hyperparameters", 0.0)
    info: dict[str, object] = {}
    if target.dim:
        res = _imh(target, chains, draws, rng)  # type: ignore[arg-type]
        if isinstance(res, str):
            return res
        if res.info["acceptance_rate"] < 0.3:
            return f"the proposal fits badly (acceptance {res.info['acceptance_rate']:.2f})"
        theta = res.theta.reshape(-1, target.dim)
        stats = {"accepted": res.accepted, "lp": res.lp}
        info.update(res.info)
    else:
        theta = np.zeros((chains * draws, 0))
        stats = {}
    sigma, ta, tc, _ = target.unpack(theta)
    s2 = sigma**2
    gs, kap, T, Y = model.sums(ta**2 / s2, tc**2 / s2)
    _, L, r = _combine(model.red, model.hp, s2, gs)
    red, hp = model.red, model.hp
    D = s2.size
    if red.p:
        z = np.linalg.solve(L, r[..., None])
        mean = hp.m0[None] + np.linalg.solve(np.swapaxes(L, 1, 2), z)[..., 0]
        beta = mean + np.linalg.solve(np.swapaxes(L, 1, 2), rng.standard_normal((D, red.p, 1)))[..., 0]
    else:
        beta = np.zeros((D, 0))
    a = kap * (Y - np.einsum("brp,bp->br", T, beta)) + np.sqrt(s2[:, None] * kap) * rng.standard_normal(kap.shape)
    rho_c = (tc**2 / s2)[:, None]
    k = rho_c / (1.0 + red.a[None, :] * rho_c)
    resid = red.sy[None, :] - beta @ red.u.T - red.a[None, :] * a[:, parent]
    c = k * resid + np.sqrt(s2[:, None] * k) * rng.standard_normal(k.shape)
    beta = red.shift.unshift(beta)
    if progress:
        progress("done", 1.0)

    def shape(x: np.ndarray) -> np.ndarray:
        return x.reshape((chains, draws) + x.shape[1:])

    blocks = []
    for blk, tau, vals in ((outer, ta, a), (inner, tc, c)):
        blocks.append(BlockDraws(sd=shape(tau)[..., None] if blk.Sigma is None else None, corr=None,
                                 values=None if blk.pooled else shape(vals)[..., None]))
    order = [outer, inner]
    blocks_in_order = tuple(blocks[order.index(b)] for b in bound.blocks)
    info.update({"seconds": time.perf_counter() - t0, "hyper_sampler": "independence MH (t proposal)"})
    return Draws(beta=shape(beta), sigma=shape(sigma) if bound.has_sigma else None, tau=None, b=None,
                 sample_stats=stats, method="exact", info=info, blocks=blocks_in_order)
