"""Full-model inference with NUTS in NumPyro: the model from the spec, chains in parallel.

This module owns the NumPyro model of a bound spec, written once from a
:class:`~poolwise.spec.BoundSpec` as a plain function, and the sampler run around it:

    β ~ N(m0, diag(s0²)),   per grouping factor f with q terms and J_f groups:
        s_k ~ prior (k = 1..q),  L ~ LKJCholesky(q, η),  z_j ~ N(0, I_q),  u_j = diag(s) L z_j,
    η_i = x_i'β + offset_i + Σ_f Z_f[i]·u_{f, g_f[i]},   y_i ~ Family(link⁻¹(η_i), aux)

so that u_j ~ N(0, Σ) with Σ = diag(s) R diag(s), R = L L'.  The group effects are
non-centered (u = diag(s) L z), which removes the funnel between the SDs and the group values
when groups hold little data (Betancourt & Girolami, 2015); a model of one grouping factor
whose groups hold much data (gaussian, bernoulli, binomial, poisson, negative binomial) samples
them centered instead, u_j ~ N(0, Σ) (:func:`prefers_centered`); a gaussian model's likelihood
comes from sufficient statistics (:func:`uses_statistics`).  Uncorrelated terms (``||``) and
single terms have L = I.  Pooling is a setting of Σ and never a branch in the model body: a
learned Σ has sample sites for its SDs (named as the priors, ``sd(x|g)``) and its Cholesky
factor; a fixed Σ conditions the SD sites with :func:`numpyro.handlers.condition` and enters
its correlation as a constant; a pooled factor (Σ = 0) is built with its terms absent.

Families: ``gaussian`` N(η, σ²/w) (with known standard errors, ``y | se(s)``, the SD of row i
is 1/√w_i), ``student_t`` t_ν(η, σ), ``bernoulli`` and ``binomial`` (logit link, ``trials``),
``poisson`` and ``negative_binomial`` (log link, NB2 with concentration φ).

Compiled once, reused: the model is one function per model *structure* (family, terms, pooling
settings, priors of the SDs and auxiliary parameters, sizes) taking the data arrays as
arguments, and the run is two programs compiled under :func:`jax.jit` once per structure, data
shapes and sampler settings: the chains' start, and a number of iterations (warmup or sampling)
that Python calls in turn, so that Ctrl-C stops the run between two calls.  On a CPU the chains
run in parallel, one virtual XLA device each (importing poolwise asks for max(4, cores)), each at
its own pace rather than in lockstep (:func:`_chain_devices`); else they are vectorized.  A fit of new data
of the same shapes reuses the compiled programs (the last :data:`CACHE_SIZE` are kept); a later
process finds them in JAX's persistent compilation cache, in the user's cache folder
(:mod:`~poolwise.infer.compile_cache`); the same seed gives the same draws.

Divergent transitions are acted on, then reported: the run is repeated at a higher target
acceptance (0.95, then 0.99); if it still diverges a :class:`~poolwise.errors.ConvergenceWarning`
names the count, what may be biased and the remedy.

References
----------
Hoffman, M. D. & Gelman, A. (2014). The No-U-Turn Sampler: adaptively setting path lengths in
Hamiltonian Monte Carlo. JMLR 15, 1593–1623.
Betancourt, M. & Girolami, M. (2015). Hamiltonian Monte Carlo for hierarchical models. In
Current Trends in Bayesian Methodology with Applications, 79–101. CRC Press.
Lewandowski, D., Kurowicka, D. & Joe, H. (2009). Generating random correlation matrices based
on vines and extended onion method. J. Multivariate Analysis 100, 1989–2001.
Phan, D., Pradhan, N. & Jankowiak, M. (2019). Composable effects for flexible and accelerated
probabilistic programming in NumPyro. arXiv:1912.11554.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import threading
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import jax

jax.config.update("jax_enable_x64", True)  # posteriors must agree tightly with the exact path
from . import compile_cache  # noqa: E402

compile_cache.configure()  # compiled programs kept on disk between processes, before the first compile

import jax.numpy as jnp  # noqa: E402
from jax.experimental import io_callback  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.distributions import constraints  # noqa: E402
from numpyro.infer import NUTS  # noqa: E402

from ..errors import ConvergenceWarning  # noqa: E402
from ..priors import DISTRIBUTIONS, Prior  # noqa: E402
from ..spec import BoundSpec, GroupBlock  # noqa: E402
from . import BlockDraws, Draws, Progress  # noqa: E402

__all__ = ["sample", "build_model", "site_names", "fixed_sites", "clear_cache", "uses_statistics", "CACHE_SIZE",
           "RETRY_TARGET_ACCEPT"]

#: target acceptance probabilities tried, in turn, while transitions diverge
RETRY_TARGET_ACCEPT = (0.95, 0.99)

Model = Callable[..., None]
_EXTRA_FIELDS = ("diverging", "accept_prob", "num_steps", "energy", "potential_energy")
_AUX = ("nu", "phi")


def _to_numpyro(prior: Prior) -> dist.Distribution:
    """The NumPyro distribution of a poolwise :class:`~poolwise.priors.Prior`."""
    return _prior_dist(prior.dist, prior.args)


def _prior_dist(name: str, args: Any) -> dist.Distribution:
    """The NumPyro distribution of the prior family ``name`` with arguments ``args`` (floats or a
    traced array, in the order of :data:`~poolwise.priors.DISTRIBUTIONS`)."""
    names = DISTRIBUTIONS[name][0]
    k = {n: args[i] for i, n in enumerate(names)}
    if name == "normal":
        return dist.Normal(k["mu"], k["sigma"])
    if name == "student_t":
        return dist.StudentT(k["df"], k["mu"], k["sigma"])
    if name == "half_normal":
        return dist.HalfNormal(k["sigma"])
    if name == "half_student_t":
        return dist.FoldedDistribution(dist.StudentT(k["df"], 0.0, k["sigma"]))
    if name == "half_cauchy":
        return dist.HalfCauchy(k["sigma"])
    if name == "exponential":
        return dist.Exponential(k["rate"])
    if name == "gamma":
        return dist.Gamma(k["alpha"], k["beta"])  # shape and rate, as priors.py's density
    raise AssertionError(f"no NumPyro distribution for prior {name}")  # priors.py validates names


@dataclass(frozen=True)
class BlockSites:
    """Names of the sample sites of one grouping factor (one :class:`~poolwise.spec.GroupBlock`).

    Attributes
    ----------
    sd
        One scalar site per term, named as its prior (``"sd(Intercept|g)"``, ``"sd(x|g)"``).
    chol
        The Cholesky factor of the correlation matrix, ``"L(g)"`` (q × q; sampled only when the
        terms are correlated, learned and q > 1).
    z
        Standardized group effects, ``"z(g)"`` (J × q).
    values
        The group values u = z (diag(s) L)', deterministic, ``"u(g)"`` (J × q).
    """

    sd: tuple[str, ...]
    chol: str
    z: str
    values: str


def site_names(block: GroupBlock) -> BlockSites:
    """The sample-site names of ``block`` in :func:`build_model`'s model."""
    f = block.term.site
    return BlockSites(sd=tuple(block.sd_names), chol=f"L({f})", z=f"z({f})", values=f"u({f})")


def _learns_cor(block: GroupBlock) -> bool:
    return block.Sigma is None and block.term.correlated and block.q > 1


# -- the model: one function per model *structure*, the data as its arguments -------------------
#
# JAX compiles a sampler for a model function and the shapes of its arguments.  The model is
# therefore written from the structure of a bound spec alone (family, terms, pooling settings,
# prior families, sizes), which is hashable, while every data array (y, X, offset, weights,
# trials, per block Z and the group index, fixed Σ) and the priors' arguments (which the default
# priors take from the data's scale) are arguments.  Fits of the same structure on new data of
# the same shapes reuse one compiled sampler (see _run_once).


@dataclass(frozen=True)
class _BlockStructure:
    """What the model of one non-pooled grouping factor depends on, besides its data."""

    factor: str
    sd: tuple[str, ...]
    n_groups: int
    learn_cor: bool
    sd_priors: tuple[str, ...] | None  # prior families; None: Σ fixed (flat SD sites, conditioned by sample)

    @property
    def q(self) -> int:
        return len(self.sd)


@dataclass(frozen=True)
class _Structure:
    """The hashable structure of a bound model: everything the model function closes over."""

    family: str
    has_sigma: bool
    n_coef: int
    blocks: tuple[_BlockStructure, ...]
    aux_priors: tuple[tuple[str, str], ...]  # (name, prior family) of sigma / nu / phi as the family has them
    suff: bool = False  # gaussian likelihood from sufficient statistics (see _suff_data), not from the rows
    centered: bool = False  # group values sampled as they are, u_j ~ N(0, Σ) (see prefers_centered)
    weighted: bool = False  # prior weights multiply each row's log-likelihood (families without a residual SD)


def _present(bound: BoundSpec, with_groups: bool | None) -> list[GroupBlock]:
    return [b for b in bound.blocks if not b.pooled] if with_groups is not False else []


def uses_statistics(bound: BoundSpec) -> bool:
    """Whether NUTS evaluates this model's likelihood from sufficient statistics (:func:`_suff_data`):
    gaussian, with rows, at most one grouping factor that is not pooled (the statistics of one
    factor do not hold the cross products of two)."""
    return bound.spec.fam.name == "gaussian" and bound.has_rows and len(_present(bound, None)) <= 1


def prefers_centered(bound: BoundSpec, stats: dict[str, Any] | None = None) -> bool:
    """Whether the group values sample better centered, u_j ~ N(0, Σ), than non-centered,
    u_j = diag(s) L z_j: when the data say more about a typical group than the population does
    (Papaspiliopoulos, Roberts & Sköld, 2007).  Non-centered values of groups that the data pin
    down leave NUTS a funnel between z_j = u_j / s and s, which diverges; centered values of
    groups the data say little about leave it the funnel between u_j and s.

    Judged on the varying intercept by the method of moments: each group's mean residual about
    the pooled fit of the common terms, m_j, with its sampling variance v_j; τ̂² from the spread of
    the m_j less their sampling variance; centered when the median pooling factor
    τ̂²/(τ̂² + v_j) is at least ½.  Gaussian (the sufficient-statistics model): least squares,
    v_j = σ̂²/n_j.  Bernoulli, binomial, poisson and negative binomial: the maximum-likelihood
    GLM of the common terms (:func:`_pooled_glm_information`), m_j = Σ_i (y_i − μ_i) / a_j the
    one-step Newton estimate of the group's deviation on the link scale and v_j = 1/a_j, a_j the
    group's Fisher information, Σ_i w_i Var(y_i) (the poisson's for the negative binomial, whose
    φ is not known yet), for a varying intercept alone.  Only for one grouping factor whose
    first term is the intercept; otherwise non-centered.  ``stats``: :func:`_suff_data` of ``bound``, when at hand.
    """
    present = _present(bound, None)
    if len(present) != 1 or present[0].exprs[0] != "Intercept":
        return False
    if bound.spec.fam.name in _GLM_VARIANCE:
        if present[0].q != 1:  # varying slopes of these families: non-centered (not yet measured centered)
            return False
        info = _pooled_glm_information(bound)
        if info is None:
            return False
        a, score = info
        ok = a > 1e-12
        if ok.sum() < 2:
            return False
        m, v = score[ok] / a[ok], 1.0 / a[ok]
        tau2 = max(float(np.mean(m**2) - np.mean(v)), 1e-12)
        return bool(np.median(tau2 / (tau2 + v)) >= 0.5)
    if not uses_statistics(bound):
        return False
    s = _suff_data(bound) if stats is None else stats
    a = s["ZtWZ"][:, 0, 0]
    ok = a > 0
    if ok.sum() < 2:
        return False
    m = s["ZtWr"][ok, 0] / a[ok]
    between_ss = float(np.sum(s["ZtWr"][ok, 0] ** 2 / a[ok]))
    dof = s["n"] - ok.sum() - max(bound.X.shape[1] - 1, 0)
    sigma2 = max(s["rWr"] - between_ss, 0.0) / dof if bound.has_sigma and dof > 0 else 1.0
    tau2 = max(float(np.mean(m**2) - np.mean(sigma2 / a[ok])), 1e-12 * sigma2)
    return bool(np.median(tau2 / (tau2 + sigma2 / a[ok])) >= 0.5)


#: the variance of one row's outcome given its mean μ (and trials t), of the families whose
#: group values :func:`prefers_centered` judges by a pooled GLM
_GLM_VARIANCE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "bernoulli": lambda mu, t: mu * (1.0 - mu / t),
    "binomial": lambda mu, t: mu * (1.0 - mu / t),
    "poisson": lambda mu, t: mu,
    "negative_binomial": lambda mu, t: mu,  # φ unknown: the poisson's information, an upper bound
}


def _pooled_glm_information(bound: BoundSpec, iterations: int = 50) -> tuple[np.ndarray, np.ndarray] | None:
    """Per group of the first grouping factor: the Fisher information a_j of its intercept and
    its score Σ_i w_i (y_i − μ_i), at the maximum-likelihood fit of the common terms alone (the
    canonical link's Newton iterations, a ridge of 10⁻⁸ against separation); ``None`` when the
    fit does not settle or gives no finite values."""
    fam = bound.spec.fam.name
    X = np.asarray(bound.X, dtype=float)
    y = np.asarray(bound.y, dtype=float)
    off = np.asarray(bound.offset, dtype=float)
    w = np.asarray(bound.weights, dtype=float)
    t = np.asarray(bound.trials, dtype=float) if bound.trials is not None else np.ones_like(y)
    logistic = fam in ("bernoulli", "binomial")

    def mean(eta: np.ndarray) -> np.ndarray:
        eta = np.clip(eta, -30.0, 30.0)
        return t / (1.0 + np.exp(-eta)) if logistic else np.exp(eta)

    beta = np.zeros(X.shape[1])
    if X.shape[1] and bound.coef_names[:1] == ["Intercept"]:  # start at the outcome's mean
        r = float(np.sum(w * y) / max(np.sum(w * t), 1e-300))
        link = math.log(max(r, 1e-6) / max(1.0 - r, 1e-6)) if logistic else math.log(max(r, 1e-6))
        beta[0] = link - float(np.mean(off))
    for _ in range(iterations if X.shape[1] else 0):
        mu = mean(X @ beta + off)
        W = w * _GLM_VARIANCE[fam](mu, t)
        step = np.linalg.solve(X.T @ (X * W[:, None]) + 1e-8 * np.eye(X.shape[1]), X.T @ (w * (y - mu)))
        if not np.all(np.isfinite(step)):
            return None
        beta = beta + step
        if np.max(np.abs(step)) < 1e-8:
            break
    mu = mean(X @ beta + off)
    blk = _present(bound, None)[0]
    z = np.asarray(blk.Z, dtype=float)[:, 0]
    a = np.bincount(blk.group, weights=w * _GLM_VARIANCE[fam](mu, t) * z**2, minlength=blk.n_groups)
    score = np.bincount(blk.group, weights=w * (y - mu) * z, minlength=blk.n_groups)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(score))):
        return None
    return a, score


def _structure(bound: BoundSpec, with_groups: bool | None = None, *, suff: bool = False,
               centered: bool = False) -> _Structure:
    blocks = []
    for block in _present(bound, with_groups):
        learn_cor = _learns_cor(block)
        blocks.append(_BlockStructure(
            factor=block.term.site,
            sd=tuple(site_names(block).sd),
            n_groups=block.n_groups,
            learn_cor=learn_cor,
            sd_priors=tuple(bound.priors[n].dist for n in block.sd_names) if block.Sigma is None else None,
        ))
    aux = tuple((n, bound.priors[n].dist) for n in ("sigma", *_AUX) if n in bound.priors)
    return _Structure(family=bound.spec.fam.name, has_sigma=bound.has_sigma, n_coef=len(bound.coef_names),
                      blocks=tuple(blocks), aux_priors=aux, suff=suff, centered=centered and len(blocks) == 1,
                      weighted=bound.spec.fam.name not in ("gaussian", "student_t") and bound.has_rows
                      and bool(np.any(np.asarray(bound.weights) != 1.0)))


def _model_data(bound: BoundSpec, with_groups: bool | None = None, *, fixed_sd: bool = False,
                rows: bool = True) -> dict[str, Any]:
    """The data arguments of the structural model: a pytree of float64 / int32 arrays.

    ``fixed_sd`` adds √diag Σ of fixed blocks, which the model then observes on its SD sites
    (what :func:`numpyro.handlers.condition` with :func:`fixed_sites` does).  ``rows=False``
    leaves out the row arrays (X, offset, weights, trials, Z and g), for the model whose
    likelihood comes from sufficient statistics.
    """
    f64 = np.float64
    m0 = np.array([bound.priors[c].mean_sd()[0] for c in bound.coef_names], dtype=f64)
    s0 = np.array([bound.priors[c].mean_sd()[1] for c in bound.coef_names], dtype=f64)
    # Sample the coefficients of the centered design, β_c = A β (the intercept at the predictors'
    # means), whose posterior is far less correlated; A is a shear (det 1), so the prior
    # N(A m0, A S0 A') on β_c is the prior on β exactly, and so is the log density.
    A = np.eye(m0.size)
    if bound.coef_names[:1] == ["Intercept"]:
        A[0, 1:] = bound.X[:, 1:].mean(axis=0)
    blocks = []
    for block in _present(bound, with_groups):
        b: dict[str, Any] = {"Z": np.asarray(block.Z, dtype=f64), "g": np.asarray(block.group, dtype=np.int32)} if rows else {}
        if block.Sigma is None:
            b["sd_prior"] = tuple(np.asarray(bound.priors[n].args, dtype=f64) for n in block.sd_names)
            if _learns_cor(block):
                b["eta"] = np.asarray(bound.priors[f"cor({block.factor})"].args[0], dtype=f64)
        else:  # a fixed Σ's correlation is a constant (the identity today)
            s = np.sqrt(np.diag(block.Sigma))
            b["chol"] = np.linalg.cholesky(block.Sigma / np.outer(s, s))
            if fixed_sd:
                b["sd"] = s.astype(f64)
        blocks.append(b)
    data: dict[str, Any] = {
        "mc": A @ m0,
        "chol_c": np.linalg.cholesky(A @ np.diag(s0**2) @ A.T) if m0.size else np.zeros((0, 0)),
        "A_inv": np.linalg.inv(A) if m0.size else np.zeros((0, 0)),
        "blocks": tuple(blocks),
        "aux_prior": {n: np.asarray(bound.priors[n].args, dtype=f64) for n in ("sigma", *_AUX) if n in bound.priors},
    }
    if rows:
        data.update(X=np.asarray(bound.X, dtype=f64), offset=np.asarray(bound.offset, dtype=f64),
                    w_sqrt=np.sqrt(np.asarray(bound.weights, dtype=f64)))
        if bound.trials is not None:
            data["trials"] = np.asarray(bound.trials, dtype=f64)
    return jax.tree.map(jnp.asarray, data)


def _suff_data(bound: BoundSpec) -> dict[str, Any]:
    """Sufficient statistics of the gaussian likelihood, about a least-squares fit.

    With r = y − offset − Xβ − Zu and weights w, Σ w r² needs only per-group sums.  They are taken
    of r₀ = y − offset − Xβ₀ (β₀ the weighted least-squares fit of the common terms), with the
    model's β entering as δ = β − β₀:

        Σ w r² = r₀'Wr₀ − 2δ'X'Wr₀ + δ'X'WXδ + Σ_j [u_j'Z_j'W_jZ_j u_j − 2u_j'(Z_j'W_jr₀ − Z_j'W_jX_j δ)],

    so that the sum of squares about β₀ is small beside the terms it is computed from (no
    cancellation of ȳ² against y'y when the outcome is far from 0).  A gradient then costs
    O(J q (p + q)) instead of O(n (p + q)).
    """
    from ..reduce import block_stats

    y0 = np.asarray(bound.y, dtype=float) - np.asarray(bound.offset, dtype=float)
    X, w = np.asarray(bound.X, dtype=float), np.asarray(bound.weights, dtype=float)
    p = X.shape[1]
    sw = np.sqrt(w)
    beta0 = np.linalg.lstsq(X * sw[:, None], y0 * sw, rcond=None)[0] if p else np.zeros(0)
    r0 = y0 - X @ beta0
    present = _present(bound, None)
    out: dict[str, Any] = {"beta0": beta0, "n": float(r0.size), "sum_log_w": float(np.log(w).sum())}
    if present:
        blk = present[0]
        st = block_stats(r0, X, blk.Z, w, blk.group, blk.n_groups)
        out.update(XtWX=st.XtWX, XtWr=st.XtWy, rWr=float(st.yWy), ZtWZ=st.ZtWZ, ZtWX=st.ZtWX, ZtWr=st.ZtWy)
    else:
        Xw = X * w[:, None]
        out.update(XtWX=X.T @ Xw, XtWr=Xw.T @ r0, rWr=float(r0 @ (w * r0)))
    return out


def _suff_loglik(st: _Structure, data: dict[str, Any], beta: jax.Array, values: list[jax.Array]) -> jax.Array:
    """Σ log N(y_i | η_i, σ²/w_i) from :func:`_suff_data` (sampling σ on the way, as the rows' model)."""
    s = data["suff"]
    d = beta - s["beta0"]
    Q = s["rWr"] - 2.0 * d @ s["XtWr"] + d @ (s["XtWX"] @ d)
    for u in values:  # (J, q); at most one grouping factor
        h = s["ZtWr"] - jnp.einsum("jqp,p->jq", s["ZtWX"], d)
        Q = Q + jnp.sum(u * jnp.einsum("jab,jb->ja", s["ZtWZ"], u)) - 2.0 * jnp.sum(u * h)
    n = s["n"]
    if st.has_sigma:
        sigma = numpyro.sample("sigma", _prior_dist(dict(st.aux_priors)["sigma"], data["aux_prior"]["sigma"]))
        return -0.5 * n * jnp.log(2.0 * jnp.pi) + 0.5 * s["sum_log_w"] - n * jnp.log(sigma) - 0.5 * Q / sigma**2
    return -0.5 * n * jnp.log(2.0 * jnp.pi) + 0.5 * s["sum_log_w"] - 0.5 * Q  # known standard errors


def _group_values(bs: _BlockStructure, data: dict[str, Any], centered: bool = False) -> jax.Array:
    """The group values u (J, q) of one non-pooled grouping factor, non-centered: u_j = diag(s) L z_j.

    The SD sites have the term's prior when Σ is learned and a flat density when Σ is fixed
    (then observed at √diag Σ when ``data`` holds it, so that the log density has no prior
    constant).
    """
    q = bs.q
    if bs.sd_priors is not None:
        sd = jnp.stack([numpyro.sample(n, _prior_dist(p, a)) for n, p, a in zip(bs.sd, bs.sd_priors, data["sd_prior"])])
    else:
        flat = dist.ImproperUniform(constraints.positive, (), ())
        obs = data.get("sd")
        sd = jnp.stack([numpyro.sample(n, flat, obs=None if obs is None else obs[k]) for k, n in enumerate(bs.sd)])
    if bs.learn_cor:
        chol = numpyro.sample(f"L({bs.factor})", dist.LKJCholesky(q, data["eta"]))
    else:
        chol = data["chol"] if "chol" in data else jnp.eye(q)
    scale_tril = sd[:, None] * chol
    with numpyro.plate(f"groups({bs.factor})", bs.n_groups):
        if centered and not bs.learn_cor and "chol" not in data:  # independent terms: no triangular solves
            return numpyro.sample(f"u({bs.factor})", dist.Normal(jnp.zeros(q), sd).to_event(1))
        if centered:
            return numpyro.sample(f"u({bs.factor})", dist.MultivariateNormal(jnp.zeros(q), scale_tril=scale_tril))
        z = numpyro.sample(f"z({bs.factor})", dist.Normal(0.0, 1.0).expand([q]).to_event(1))
    u: jax.Array = numpyro.deterministic(f"u({bs.factor})", z @ scale_tril.T)
    return u


def _group_term(bs: _BlockStructure, data: dict[str, Any], centered: bool = False) -> jax.Array:
    """The contribution of one non-pooled grouping factor to the linear predictor (:func:`_group_values`)."""
    u = _group_values(bs, data, centered)
    Z, g = data["Z"], data["g"]
    # one column of u gathered at a time: on XLA's CPU backend the gradient is 1.3-1.5x faster
    # in float64 (4x in float32) than that of sum(Z * u[g], axis=1), whose (n, q) gather and
    # scatter-add dominate a logistic model's gradient
    term = Z[:, 0] * u[:, 0][g]
    for k in range(1, bs.q):
        term = term + Z[:, k] * u[:, k][g]
    return term


def _likelihood(st: _Structure, data: dict[str, Any], eta: jax.Array) -> dist.Distribution:
    """The distribution of y given η (sampling the family's auxiliary parameters on the way)."""
    families, args = dict(st.aux_priors), data["aux_prior"]

    def prior(name: str) -> dist.Distribution:
        return _prior_dist(families[name], args[name])

    w_sqrt = data["w_sqrt"]
    if st.family == "gaussian":
        if st.has_sigma:
            return dist.Normal(eta, numpyro.sample("sigma", prior("sigma")) / w_sqrt)
        return dist.Normal(eta, 1.0 / w_sqrt)  # known standard errors
    if st.family == "student_t":
        nu = numpyro.sample("nu", prior("nu"))
        return dist.StudentT(nu, eta, numpyro.sample("sigma", prior("sigma")) / w_sqrt)
    if st.family == "bernoulli":
        return dist.BernoulliLogits(eta)
    if st.family == "binomial":
        return dist.BinomialLogits(eta, total_count=data["trials"])  # spec.py requires trials()
    if st.family == "poisson":
        return dist.Poisson(jnp.exp(eta))
    if st.family == "negative_binomial":
        # NB2 with mean exp(η) and concentration φ, written with logits η − log φ: the same
        # law as dist.NegativeBinomial2, whose betaln is far slower to compile and run
        phi = numpyro.sample("phi", prior("phi"))
        return dist.NegativeBinomialLogits(phi, eta - jnp.log(phi))
    raise AssertionError(f"no likelihood for family {st.family}")  # families.py lists the names


@functools.lru_cache(maxsize=64)
def _structural_model(st: _Structure) -> Model:
    """``model(data, y=None)``: the NumPyro model of structure ``st``, data as arguments.

    One function object per structure, so that JAX's caches keyed on it are reused.
    """

    def model(data: dict[str, Any], y: jax.Array | None = None) -> None:
        if st.n_coef:
            beta_c = numpyro.sample("beta_c", dist.MultivariateNormal(data["mc"], scale_tril=data["chol_c"]))
            beta = numpyro.deterministic("beta", data["A_inv"] @ beta_c)
        else:  # y ~ 0 + …: no common coefficients
            beta = numpyro.deterministic("beta", jnp.zeros(0))
        if st.suff:  # the likelihood from sufficient statistics: no row arrays in the program
            values = [_group_values(bs, block_data, st.centered) for bs, block_data in zip(st.blocks, data["blocks"])]
            numpyro.factor("loglik", _suff_loglik(st, data, beta, values))
            return
        eta = data["X"] @ beta + data["offset"]
        for bs, block_data in zip(st.blocks, data["blocks"]):
            eta = eta + _group_term(bs, block_data, st.centered)
        d = _likelihood(st, data, eta)
        with numpyro.plate("obs", data["X"].shape[0]):
            if st.weighted:  # prior weights: each row's log-likelihood times w (families.log_likelihood)
                with numpyro.handlers.scale(scale=data["w_sqrt"] ** 2):
                    numpyro.sample("y", d, obs=y)
            else:
                numpyro.sample("y", d, obs=y)

    return model


def build_model(bound: BoundSpec, *, with_groups: bool | None = None) -> Model:
    """The NumPyro model of a bound spec, as a plain function.

    Parameters
    ----------
    bound
        The bound model: rows, design, group blocks and resolved priors.
    with_groups
        ``False`` drops every group term; by default a grouping factor is absent only when it
        is pooled (Σ = 0).  A fixed Σ is *not* applied here: condition the SD sites with
        :func:`numpyro.handlers.condition` (as :func:`sample` does, with :func:`fixed_sites`).

    Returns
    -------
    callable
        ``model(y=None)``: sites ``"beta_c"`` (p,), the coefficients of the centered design
        (the intercept at the predictors' means; same prior, same density), and the
        deterministic ``"beta"`` (p,); ``"sigma"``, ``"nu"``, ``"phi"`` as the family
        has them; per grouping factor the sites of :func:`site_names` (SDs, ``"L(g)"`` when
        correlations are learned, ``"z(g)"`` (J, q) and the deterministic ``"u(g)"`` (J, q));
        and the observed ``"y"`` in the plate ``"obs"`` (pointwise, for
        :func:`numpyro.infer.util.log_likelihood` and :class:`numpyro.infer.Predictive`).
        It binds the bound spec's data to a model function shared by every bound spec of the
        same structure (see :func:`sample`).

    Examples
    --------
    >>> import pandas as pd, poolwise.data
    >>> from poolwise.spec import ModelSpec
    >>> df = pd.DataFrame({"y": [0.1, 0.5, 1.2, 0.9], "g": ["a", "a", "b", "b"]})
    >>> bound = ModelSpec("y ~ 1 + (1 | g)").bind(poolwise.data.read_table(df))
    >>> from numpyro.infer import Predictive
    >>> import jax
    >>> Predictive(build_model(bound), num_samples=3)(jax.random.PRNGKey(0))["u(g)"].shape
    (3, 2, 1)
    """
    core = _structural_model(_structure(bound, with_groups))
    data = _model_data(bound, with_groups)

    def model(y: jax.Array | None = None) -> None:
        core(data, y)

    return model


def fixed_sites(bound: BoundSpec) -> dict[str, jax.Array]:
    """Values of the SD sites of fixed, non-pooled Σ (√diag Σ), for :func:`~numpyro.handlers.condition`."""
    out: dict[str, jax.Array] = {}
    for block in bound.blocks:
        if block.Sigma is not None and not block.pooled:
            for name, s in zip(site_names(block).sd, np.sqrt(np.diag(block.Sigma))):
                out[name] = jnp.asarray(float(s))
    return out


# -- the sampler: one compiled run per (structure, data shapes, settings), least recently used out
#
# The run — initialization, then warmup and sampling of every chain in calls of a few dozen
# iterations — is traced once under jax.jit with the data and the key as arguments.  (NumPyro's
# MCMC(jit_model_args=True) does not avoid the recompilation on its own: its outer sampling loop
# takes a fresh jitted body as a static argument on every run.)  Same key, same compiled
# programs: same draws, those of MCMC(chain_method="vectorized").

#: how many compiled samplers are kept (each holds its XLA executables)
CACHE_SIZE = 8
_RUN_CACHE: OrderedDict[Hashable, Callable[..., Any]] = OrderedDict()


def _shapes(tree: Any) -> Hashable:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(leaf.shape), str(leaf.dtype)) for leaf in leaves)


def init_to_jittered_median(site: dict[str, Any] | None = None, radius: float = 1.0, num_samples: int = 15) -> Any:
    """NUTS's starting point: each site at the median of ``num_samples`` prior draws, moved by
    U(−radius, radius) in the unconstrained space (PyMC's ``jitter+adapt_diag`` start, about the
    prior median rather than NumPyro's default U(−2, 2) about 0).

    A start about 0 leaves an intercept of a data-scaled prior (the outcome's mean, here perhaps
    1000) hundreds of prior SDs from where it belongs; non-centered group values then take up the
    difference, and a short warmup can stop with chains stuck apart (R-hat 2 and more).  Chains
    get different draws, so their starts differ.  Sites without a sampler (a flat prior) start as
    :func:`numpyro.infer.init_to_uniform` would.
    """
    if site is None:
        return functools.partial(init_to_jittered_median, radius=radius, num_samples=num_samples)
    if site["type"] != "sample" or site["is_observed"] or site["fn"].support.is_discrete:
        return None
    if site["value"] is not None:
        return site["value"]
    from numpyro.distributions.transforms import biject_to
    from numpyro.infer import init_to_uniform

    key = site["kwargs"].get("rng_key")
    shape = site["kwargs"].get("sample_shape") or ()
    k_draw, k_jitter = jax.random.split(key)
    try:
        draws = site["fn"](sample_shape=(num_samples, *shape), rng_key=k_draw)
    except NotImplementedError:
        return init_to_uniform(site, radius=radius)
    transform = biject_to(site["fn"].support)
    middle = _median0(transform.inv(draws))
    return transform(middle + jax.random.uniform(k_jitter, middle.shape, minval=-radius, maxval=radius))


def _median0(x: jax.Array) -> jax.Array:
    """``jnp.median(x, axis=0)`` by ranks, without a sort: XLA's CPU backend cannot serialize an
    executable holding this sort (``LessThan`` is not serializable), so JAX's persistent cache
    (:mod:`~poolwise.infer.compile_cache`) could not keep the sampler's start.  The same value:
    the middle order statistic, or the mean of the two middle ones."""
    n = x.shape[0]
    below = jnp.sum(x[None, :] < x[:, None], axis=1)  # (n, ...): how many are smaller
    ties = jnp.sum((x[None, :] == x[:, None]) & (jnp.arange(n)[None, :] < jnp.arange(n)[:, None]).reshape(
        (n, n) + (1,) * (x.ndim - 1)), axis=1)
    rank = below + ties  # 0..n-1, a permutation along axis 0

    def order(k: int) -> jax.Array:
        return jnp.sum(jnp.where(rank == k, x, 0.0), axis=0)

    mid = order(n // 2) if n % 2 else 0.5 * (order(n // 2 - 1) + order(n // 2))
    return jnp.where(jnp.any(jnp.isnan(x), axis=0), jnp.nan, mid)


# -- Ctrl-C: a call into XLA runs no Python signal handler until it returns.
#
# Each call runs in a worker thread while the main thread waits in short steps, so SIGINT raises
# KeyboardInterrupt there at once; KeyboardInterrupt goes on to the caller once the worker has
# ended: no computation is left running behind it.  The sampler's run is a sequence of short
# calls (_run_once), so it stops after the current one.  The exact path's NUTS on the collapsed
# marginal (collapsed.py) is one call: the main thread sets _CANCEL, which the running program
# reads through a host callback every few iterations and stops on (the callback raises, XLA
# abandons the run).  A program with a host callback cannot be kept in JAX's persistent cache,
# hence the calls for the sampler.

#: most iterations per call of the sampler (and between two looks at a pending interrupt by a
#: host callback, each about 0.25 ms: on a small model (20 groups, 4 chains, 2,000 iterations in
#: 0.57 s) a look every 16 iterations cost 5 % of the sampling time, every 64 none measurable).
INTERRUPT_EVERY = 64
#: likelihood terms (rows, or groups on the statistics path, times chains) evaluated per
#: gradient, summed over the iterations between two looks, about: larger data look more often
INTERRUPT_TERMS = 256_000
#: calls of the sampler dispatched ahead of the one being read: with chains in parallel each
#: device goes on to its next call when its chain is done with the last, not when every chain is
#: (each call the shorter for it: Ctrl-C waits for every call dispatched)
AHEAD = 2
_CANCEL = threading.Event()


def _interrupt_every(n_terms: int) -> int:
    """Iterations between two looks: :data:`INTERRUPT_EVERY` for small data, down to every
    iteration when one iteration evaluates :data:`INTERRUPT_TERMS` terms per gradient or more,
    so that a look costs about 1 % of the time between two and Ctrl-C waits a few iterations."""
    return int(min(INTERRUPT_EVERY, max(1, INTERRUPT_TERMS // max(n_terms, 1))))


class _Interrupted(Exception):
    """Raised inside the compiled run (by its host callback) to abandon it."""


def _check_cancel() -> None:
    if _CANCEL.is_set():
        raise _Interrupted("interrupted")


class _InterruptibleNUTS(NUTS):
    """NUTS that looks for a pending interrupt every ``every`` iterations."""

    def __init__(self, *args: Any, every: int = INTERRUPT_EVERY, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.every = every

    def sample(self, state: Any, model_args: Any, model_kwargs: Any) -> Any:
        i = jnp.ravel(state.i)[0]  # the iteration, shared by the vectorized chains
        jax.lax.cond(i % self.every == 0, lambda: io_callback(_check_cancel, None, ordered=False), lambda: None)
        return super().sample(state, model_args, model_kwargs)


class _QuietInterrupt(logging.Filter):
    """Drops JAX's log record of the callback error that an interrupt causes on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (_CANCEL.is_set() and (isinstance(exc, _Interrupted) or "_Interrupted" in record.getMessage()))


def _interruptible(call: Callable[[], Any]) -> Any:
    """``call()``, run so that Ctrl-C stops it and raises KeyboardInterrupt: a sampling run within
    a few iterations (:func:`_interrupt_every`); a compilation (which XLA cannot abandon) at its end.

    Off the main thread (where Python delivers no signal) it is simply called."""
    if threading.current_thread() is not threading.main_thread():
        return call()
    done = threading.Event()
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["value"] = call()
        except BaseException as err:  # handed to the caller below
            result["error"] = err
        finally:
            done.set()

    worker = threading.Thread(target=work, name="poolwise-nuts", daemon=True)
    quiet = _QuietInterrupt()
    logger = logging.getLogger("jax._src.callback")
    logger.addFilter(quiet)
    try:
        worker.start()
        try:
            while not done.wait(0.05):
                pass
        except BaseException:  # KeyboardInterrupt (or another signal's exception): stop the run, then go on
            _CANCEL.set()
            while True:  # a second Ctrl-C does not leave the run going behind the caller's back
                try:
                    done.wait()
                    break
                except KeyboardInterrupt:
                    continue
            raise
    finally:
        _CANCEL.clear()
        logger.removeFilter(quiet)
    if "error" in result:
        raise result["error"]
    return result["value"]


def _chain_devices(chains: int) -> tuple[Any, ...] | None:
    """The CPU devices on which ``chains`` chains run in parallel, one each, or ``None`` to
    vectorize them on one device (one chain; an accelerator; fewer devices than chains).

    XLA runs one program on one CPU device on one core, in lockstep across vectorized chains
    (every NUTS iteration waits for the chain with the longest trajectory); chains on devices of
    their own run on as many cores, each at its own pace.  poolwise asks for
    max(4, cores) virtual CPU devices when it is imported before JAX starts (see
    :mod:`poolwise`)."""
    if chains < 2 or jax.default_backend() != "cpu":
        return None
    devices = jax.local_devices()
    return tuple(devices[:chains]) if len(devices) >= chains else None


class _Sampler:
    """One sampler, two compiled programs kept together: ``init(key, data, y) -> state`` (the
    chains' starting points and NUTS's adaptation state) and ``advance(state, data, y, n) ->
    (state, (samples, extra))``, which runs ``n`` iterations (n ≤ its ``chunk``; the rest of the
    ``chunk`` leave the state as it is) and returns each iteration's constrained sites and
    sample fields, (iteration, chain, ...) each.  Compiled ahead of their first call (so that
    compiling and sampling are two steps, each interruptible) and kept compiled: the cache key
    fixes the argument shapes.

    The run is a loop in Python over calls of ``advance`` (:func:`_run_once`), so that Ctrl-C
    stops it between two calls and the programs hold no host callback: JAX's persistent
    compilation cache (:mod:`~poolwise.infer.compile_cache`) can then keep their executables for
    later processes, which it cannot do for a program with a host callback.

    ``devices``: one per chain, the chains in parallel (:func:`_chain_devices`): both programs
    are :func:`jax.shard_map` of one chain's program over a mesh of these devices, each device
    running its chain's NUTS without waiting for the others (no collective).  Otherwise the
    chains are vectorized on one device, the draws of :class:`numpyro.infer.MCMC` with
    ``chain_method="vectorized"``.  Chain c starts from the c-th key of
    ``jax.random.split(key, chains)`` either way, as MCMC starts its chains.
    """

    def __init__(self, model: Model, *, chains: int, warmup: int, target_accept: float, max_tree_depth: int,
                 chunk: int, devices: tuple[Any, ...] | None = None) -> None:
        kernel = NUTS(model, target_accept_prob=target_accept, max_tree_depth=max_tree_depth,
                      init_strategy=init_to_jittered_median)
        self.mesh = None if devices is None else jax.sharding.Mesh(np.asarray(devices), ("chain",))

        def init(key: jax.Array, data: dict[str, Any], y: jax.Array) -> Any:
            keys = jax.random.split(key, chains) if chains > 1 else key  # as MCMC starts its chains
            return kernel.init(keys, warmup, None, (data,), {"y": y})

        def advance(state: Any, data: dict[str, Any], y: jax.Array, n: jax.Array) -> Any:
            args, kwargs = (data,), {"y": y}
            constrain = kernel.postprocess_fn(args, kwargs)
            if chains > 1 and self.mesh is None:
                constrain = jax.vmap(constrain)

            def step(st: Any, i: jax.Array) -> tuple[Any, Any]:
                st = jax.lax.cond(i < n, lambda s: kernel.sample(s, args, kwargs), lambda s: s, st)
                return st, (constrain(st.z), {f: getattr(st, f) for f in _EXTRA_FIELDS})

            return jax.lax.scan(step, state, jnp.arange(chunk))

        if self.mesh is not None:
            one_chain = advance
            from jax.sharding import PartitionSpec as P

            def one(v: jax.Array) -> jax.Array:  # a chain's block (1, ...) as the chain's value
                return v[0]

            def block(v: jax.Array) -> jax.Array:  # a chain's value as its block (1, ...)
                return v[None]

            def init_shard(keys: jax.Array, data: dict[str, Any], y: jax.Array) -> Any:
                return jax.tree.map(block, kernel.init(keys[0], warmup, None, (data,), {"y": y}))

            def advance_shard(state: Any, data: dict[str, Any], y: jax.Array, n: jax.Array) -> Any:
                state, out = one_chain(jax.tree.map(one, state), data, y, n)
                return jax.tree.map(block, state), jax.tree.map(lambda v: v[:, None], out)  # (chunk, 1, ...)

            init_map = jax.shard_map(init_shard, mesh=self.mesh, in_specs=(P("chain"), P(), P()),
                                     out_specs=P("chain"), check_vma=False)
            advance_map = jax.shard_map(advance_shard, mesh=self.mesh, in_specs=(P("chain"), P(), P(), P()),
                                        out_specs=(P("chain"), P(None, "chain")), check_vma=False)

            def init(key: jax.Array, data: dict[str, Any], y: jax.Array) -> Any:  # noqa: F811
                return init_map(jax.random.split(key, chains), data, y)  # as MCMC starts its chains

            def advance(state: Any, data: dict[str, Any], y: jax.Array, n: jax.Array) -> Any:  # noqa: F811
                return advance_map(state, data, y, n)

        self.chunk = chunk
        self.jitted = (jax.jit(init), jax.jit(advance))
        self.executables: tuple[Any, Any] | None = None
        self.compiles = 0  #: how many times it was compiled (at most once while cached)

    @property
    def chain_method(self) -> str:
        """``"parallel"`` (a device per chain) or ``"vectorized"`` (the chains on one device)."""
        return "vectorized" if self.mesh is None else "parallel"

    def place(self, tree: Any) -> Any:
        """``tree``'s arrays where the programs read them: on every device of a parallel run
        (copied once per run, not at each call of ``advance``); as they are otherwise."""
        if self.mesh is None:
            return tree
        return jax.device_put(tree, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))

    def compile(self, key: jax.Array, data: dict[str, Any], y: jax.Array) -> tuple[Any, Any]:
        """The executables of ``init`` and ``advance`` for arguments shaped as these (``init``
        is traced first: tracing it sets up the kernel that ``advance`` runs)."""
        if self.executables is None:
            init = self.jitted[0].lower(key, data, y).compile()
            advance = self.jitted[1].lower(init.out_info, data, y, jnp.int32(0)).compile()
            self.executables = (init, advance)
            self.compiles += 1
        return self.executables


def _compiled_run(model: Model, shapes: Hashable, *, chains: int, draws: int, warmup: int,
                  target_accept: float, max_tree_depth: int, every: int = INTERRUPT_EVERY,
                  devices: tuple[Any, ...] | None = None) -> _Sampler:
    """The sampler of ``model`` for data of these ``shapes`` and these settings, compiled at most
    once while cached (``every``: iterations per call of its ``advance``, between two looks at a
    pending Ctrl-C; ``devices``: one per chain, run in parallel, or ``None``: vectorized).  The
    number of ``draws`` is not part of the programs."""
    cache_key = (model, shapes, chains, warmup, target_accept, max_tree_depth, every, devices)
    run = _RUN_CACHE.get(cache_key)
    if run is not None:
        _RUN_CACHE.move_to_end(cache_key)
        return run
    run = _Sampler(model, chains=chains, warmup=warmup, target_accept=target_accept,
                   max_tree_depth=max_tree_depth, chunk=every, devices=devices)
    _RUN_CACHE[cache_key] = run
    while len(_RUN_CACHE) > CACHE_SIZE:
        _RUN_CACHE.popitem(last=False)
    return run


def clear_cache() -> None:
    """Drop every compiled sampler of this process (the next fit of each model structure loads it
    from the on-disk cache, or compiles it again)."""
    _RUN_CACHE.clear()


def _run_once(
    model: Model, data: dict[str, Any], key: jax.Array, *, chains: int, draws: int, warmup: int,
    target_accept: float, max_tree_depth: int, progress: Progress | None = None,
    devices: tuple[Any, ...] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One MCMC run of the structural ``model(args, y=data["y"])``, ``args`` the rest of ``data``;
    compiled at most once per model, data shapes and settings (while in the cache).  Ctrl-C
    stops it (compiling, within the compile; sampling, within one call of ``advance``).
    ``devices``: one per chain, the chains in parallel (:func:`_chain_devices`)."""
    run = _compiled_run(model, _shapes(data), chains=chains, draws=draws, warmup=warmup,
                        target_accept=target_accept, max_tree_depth=max_tree_depth,
                        every=_interrupt_every(int(np.size(data["y"])) * chains * AHEAD),
                        devices=devices)
    placed = run.place(data)
    args = {k: v for k, v in placed.items() if k != "y"}
    y = placed["y"]
    init, advance = _interruptible(lambda: run.compile(key, args, y))
    stage = f"warmup+sampling (target_accept={target_accept:g})"
    if progress:
        progress(stage, 0.0)
    state = _interruptible(lambda: init(key, args, y))
    total, queued, finished = warmup + draws, 0, 0
    kept: list[Any] = []
    pending: deque[tuple[int, int, Any]] = deque()  # calls dispatched, not yet read: (first iteration, n, output)
    try:
        while finished < total:
            while queued < total and len(pending) < AHEAD:  # JAX dispatches a call without waiting for it
                n = min(run.chunk, total - queued)
                state, out = advance(state, args, y, jnp.int32(n))
                pending.append((queued, n, out))
                queued += n
            start, n, out = pending[0]
            out = _interruptible(lambda: jax.block_until_ready(out))
            pending.popleft()
            first = max(warmup - start, 0)  # the first kept iteration of this call
            if first < n:
                kept.append(jax.tree.map(lambda v: np.asarray(v)[first:n], out))
            finished += n
            if progress:
                progress(stage, finished / total)
    except BaseException:  # Ctrl-C: the calls still dispatched end before the caller goes on
        jax.block_until_ready([p[2] for p in pending])
        raise
    samples, extra = _collect(kept, chains)
    if not np.isfinite(extra["potential_energy"]).all():  # as under MCMC's jit, NumPyro's own check of the start is skipped
        raise RuntimeError("NUTS found no starting point with a finite log density; check the data and priors.")
    return samples, extra


def _collect(kept: list[Any], chains: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The kept iterations of every call, (iteration[, chain], ...) each, as (chain, draw, ...) arrays."""
    def join(*parts: np.ndarray) -> np.ndarray:
        v = np.concatenate(parts, axis=0)
        return v[:, None] if chains == 1 else v  # one chain runs without a chain axis

    if not kept:
        raise ValueError("draws must be at least 1")
    samples, extra = jax.tree.map(join, *kept) if len(kept) > 1 else jax.tree.map(join, kept[0])
    return ({k: np.swapaxes(v, 0, 1) for k, v in samples.items()},
            {k: np.swapaxes(v, 0, 1) for k, v in extra.items()})


def sample(
    bound: BoundSpec,
    *,
    seed: int,
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    progress: Progress | None = None,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    statistics: bool | None = None,
    chain_method: str | None = None,
) -> Draws:
    """Posterior draws of the full model with NUTS, chains in parallel on CPU devices of their own
    (else vectorized on one device).

    Parameters
    ----------
    bound
        The bound model (any family, pooling and group terms; known standard errors allowed).
    seed
        Seed of the JAX key (same seed, same draws).
    chains, draws, warmup
        Chains run side by side, kept draws and warmup (adaptation) iterations per chain.
    progress
        Optional callback ``(stage, fraction)``, called before and after sampling.
    target_accept
        Target acceptance probability of step-size adaptation.  When transitions diverge the
        run is repeated at each higher value of :data:`RETRY_TARGET_ACCEPT`.
    max_tree_depth
        Maximum depth of a NUTS trajectory (at most 2^depth − 1 leapfrog steps).
    statistics
        Evaluate a gaussian likelihood from per-group sufficient statistics (:func:`_suff_data`)
        rather than the rows: the same log density, at a cost per gradient set by the number
        of groups, not of rows.  Default: whenever :func:`uses_statistics` allows (gaussian,
        at most one grouping factor that is not pooled).
    chain_method
        ``"parallel"``: each chain on a CPU device of its own, at its own pace, on as many cores
        (:func:`_chain_devices`); ``"vectorized"``: the chains side by side on one device, each
        iteration as long as the longest chain's.  Default: parallel where JAX has a CPU device
        per chain (poolwise asks for max(4, cores) when imported before JAX starts), else
        vectorized.  The same seed gives the same draws with the same method.

    Returns
    -------
    Draws
        ``beta`` (chain, draw, p); ``sigma`` (chain, draw) or ``None`` without one; ``aux``
        with ``nu`` / ``phi`` (chain, draw) as the family has them; ``blocks``, one
        :class:`~poolwise.infer.BlockDraws` per grouping factor in the order of
        ``bound.blocks`` (``sd`` (chain, draw, q) and ``corr`` (chain, draw, q, q) when learned,
        ``values`` (chain, draw, J, q) unless pooled).  For the simple Gaussian model
        ``(1 | g)`` also ``tau`` (chain, draw) (``None`` when fixed) and ``b`` (chain, draw, J)
        (``None`` when pooled); else both are ``None``.  ``sample_stats`` with ``diverging``,
        ``acceptance_rate``, ``n_steps``, ``tree_depth``, ``energy`` and ``lp`` (the log
        density, the potential energy negated), each (chain, draw); ``info`` with ``seconds``,
        the ``target_accept`` finally used, ``divergences`` at each attempt, the number of
        ``retries`` and the ``chain_method``.

    Warns
    -----
    ConvergenceWarning
        If transitions still diverge at the highest target acceptance.

    See Also
    --------
    build_model : the NumPyro model sampled here.
    poolwise.infer.exact.sample : the collapsed exact path for the Gaussian (1 | g) model.

    Notes
    -----
    The group effects are non-centered (Betancourt & Girolami, 2015), or centered where the
    groups hold much data (:func:`prefers_centered`), with an LKJ prior on
    their correlations (Lewandowski et al., 2009); a fixed Σ conditions the SD sites; a pooled
    factor has no terms.  NUTS is Hoffman & Gelman (2014)'s, as implemented in NumPyro.

    Examples
    --------
    >>> import numpy as np, pandas as pd, poolwise.data
    >>> from poolwise.spec import ModelSpec
    >>> rng = np.random.default_rng(0)
    >>> df = pd.DataFrame({"y": rng.normal(size=30), "g": np.repeat(list("abc"), 10)})
    >>> bound = ModelSpec("y ~ 1 + (1 | g)").bind(poolwise.data.read_table(df))
    >>> d = sample(bound, seed=0, chains=2, draws=50, warmup=50)
    >>> d.beta.shape, d.b.shape, d.blocks[0].values.shape, d.method
    ((2, 50, 1), (2, 50, 3), (2, 50, 3, 1), 'nuts')
    """
    uy, ux = _units_of(bound)
    if uy != 1.0 or np.any(ux != 1.0):  # data in very small or large units: sampled in units of 10^k, mapped back
        out = sample(_in_units(bound, uy, ux), seed=seed, chains=chains, draws=draws, warmup=warmup,
                     progress=progress, target_accept=target_accept, max_tree_depth=max_tree_depth,
                     statistics=statistics, chain_method=chain_method)
        return _draws_times(out, uy, ux)
    t0 = time.perf_counter()
    devices = _resolve_chain_method(chain_method, chains)
    if progress:
        progress("warmup+sampling", 0.0)  # compiling first, unless compiled before
    allowed = uses_statistics(bound)
    suff = allowed if statistics is None else bool(statistics)
    if suff and not allowed:
        raise ValueError("The likelihood of this model cannot be computed from sufficient statistics.")
    stats = _suff_data(bound) if suff else None
    centered = (suff or bound.spec.fam.name in _GLM_VARIANCE) and prefers_centered(bound, stats)
    model = _structural_model(_structure(bound, suff=suff, centered=centered))
    data = _sample_data(bound, suff, stats)
    key = jax.random.PRNGKey(seed)
    schedule = [target_accept] + [t for t in RETRY_TARGET_ACCEPT if t > target_accept]
    divergences: list[int] = []
    used = target_accept
    samples: dict[str, np.ndarray] = {}
    extra: dict[str, np.ndarray] = {}
    for used in schedule:
        samples, extra = _run_once(model, data, key, chains=chains, draws=draws, warmup=warmup,
                                   target_accept=used, max_tree_depth=max_tree_depth, progress=progress,
                                   devices=devices)
        divergences.append(int(extra["diverging"].sum()))
        if divergences[-1] == 0:
            break
    if divergences[-1]:
        _warn_divergent(bound, divergences[-1], chains * draws, used)
    if progress:
        progress("done", 1.0)
    n_steps = extra["num_steps"].astype(np.int64)
    stats = {
        "diverging": extra["diverging"].astype(bool),
        "acceptance_rate": extra["accept_prob"].astype(float),
        "n_steps": n_steps,
        "tree_depth": np.ceil(np.log2(n_steps + 1)).astype(np.int64),
        "energy": extra["energy"].astype(float),
        "lp": -extra["potential_energy"].astype(float),
    }
    blocks = tuple(_block_draws(b, samples) for b in bound.blocks)
    tau = b = None
    if bound.simple and bound.spec.fam.name == "gaussian":  # the record the exact path also fills
        first = blocks[0]
        tau = None if first.sd is None else first.sd[..., 0]
        b = None if first.values is None else first.values[..., 0]
    return Draws(
        beta=samples["beta"].astype(float),
        sigma=samples["sigma"].astype(float) if bound.has_sigma else None,
        tau=tau,
        b=b,
        sample_stats=stats,
        method="nuts",
        info={
            "seconds": time.perf_counter() - t0,
            "target_accept": used,
            "divergences": divergences,
            "retries": len(divergences) - 1,
            "chain_method": "vectorized" if devices is None else "parallel",
            "max_tree_depth": max_tree_depth,
            "warmup": warmup,
            "likelihood": "sufficient statistics" if suff else "rows",
            "parameterization": "centered" if centered else "non-centered",
        },
        aux={k: samples[k].astype(float) for k in _AUX if k in samples},
        blocks=blocks,
    )


def _resolve_chain_method(chain_method: str | None, chains: int) -> tuple[Any, ...] | None:
    """The devices of :func:`sample`'s ``chain_method``: one per chain, or ``None`` (vectorized)."""
    if chain_method not in (None, "parallel", "vectorized"):
        raise ValueError(f'chain_method must be "parallel", "vectorized" or None, not {chain_method!r}.')
    if chain_method == "vectorized":
        return None
    devices = _chain_devices(chains)
    if chain_method == "parallel" and devices is None and chains > 1:
        raise ValueError(
            f"chain_method='parallel' needs a CPU device per chain ({chains}); JAX has "
            f"{jax.local_device_count()} {jax.default_backend()} device(s). Import poolwise before JAX (it then "
            "asks for max(4, cores) CPU devices), set XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{chains} before JAX starts, or use chain_method='vectorized'.")
    return devices


def _power_of_ten(v: float) -> float:
    """The power of 10 nearest ``v`` when ``v`` is outside [0.01, 100], else 1."""
    if not (v > 0 and math.isfinite(v)) or 1e-2 <= v <= 1e2:
        return 1.0
    return float(10.0 ** round(math.log10(v)))


def _units_of(bound: BoundSpec) -> tuple[float, np.ndarray]:
    """Units (powers of 10) for the outcome and each common coefficient's column, 1 where the
    scale is within [0.01, 100] or the link is not the identity.

    NUTS's start (±1 about the prior's median) and its mass matrix's regularization (10⁻³) are
    in absolute units, so an outcome or a predictor in units of 10⁻⁶ or 10⁶ mixes badly (R-hat
    3) where the same data in other units do not.  Columns that are also varying slopes keep
    their units (their group SDs would change units with them).
    """
    p = len(bound.coef_names)
    ux = np.ones(p)
    if not bound.spec.fam.identity or not bound.has_rows:
        return 1.0, ux
    uy = _power_of_ten(bound.scale)
    Z = [blk.Z for blk in bound.blocks]
    for k, name in enumerate(bound.coef_names):
        if name == "Intercept" or any(np.array_equal(bound.X[:, k], z[:, a]) for z in Z for a in range(z.shape[1])):
            continue
        ux[k] = _power_of_ten(float(np.std(bound.X[:, k])))
    return uy, ux


def _scaled_prior(prior: Prior, unit: float) -> Prior:
    """The prior of x / unit, for x with ``prior`` (coefficients and the SDs of the outcome's scale)."""
    d, a = prior.dist, prior.args
    if d == "normal":
        return Prior(d, (a[0] / unit, a[1] / unit))
    if d == "student_t":
        return Prior(d, (a[0], a[1] / unit, a[2] / unit))
    if d in ("half_normal", "half_cauchy"):
        return Prior(d, (a[0] / unit,))
    if d == "half_student_t":
        return Prior(d, (a[0], a[1] / unit))
    if d == "exponential":
        return Prior(d, (a[0] * unit,))
    if d == "gamma":
        return Prior(d, (a[0], a[1] * unit))
    return prior


def _in_units(bound: BoundSpec, uy: float, ux: np.ndarray) -> BoundSpec:
    """``bound`` with the outcome (its offset, standard errors, σ, group SDs, fixed Σ) in units of
    ``uy`` and common column k in units of ``ux[k]`` (its coefficient then in units of uy/ux[k])."""
    from dataclasses import replace

    coef = {name: uy / ux[k] for k, name in enumerate(bound.coef_names)}
    sds = {"sigma"} | {n for blk in bound.blocks for n in blk.sd_names}
    priors = {k: (_scaled_prior(p, coef[k]) if k in coef else _scaled_prior(p, uy) if k in sds else p)
              for k, p in bound.priors.items()}
    blocks = tuple(blk if blk.Sigma is None else replace(blk, Sigma=np.asarray(blk.Sigma) / uy**2)
                   for blk in bound.blocks)
    weights = bound.weights if bound.has_sigma else bound.weights * uy**2  # se → se / uy
    return replace(bound, y=bound.y / uy, offset=bound.offset / uy, X=bound.X / ux[None, :], weights=weights,
                   priors=priors, blocks=blocks, scale=bound.scale / uy)


def _draws_times(d: Draws, uy: float, ux: np.ndarray) -> Draws:
    """Draws of the model in units (:func:`_in_units`) back in the data's units."""
    from dataclasses import replace

    def times(v: np.ndarray | None) -> np.ndarray | None:
        return None if v is None else v * uy

    blocks = tuple(replace(b, sd=times(b.sd), values=times(b.values)) for b in d.blocks)
    info = dict(d.info, units={"outcome": uy, "columns": ux.tolist()})
    return replace(d, beta=d.beta * (uy / ux), sigma=times(d.sigma), tau=times(d.tau), b=times(d.b), blocks=blocks,
                   info=info)


def _sample_data(bound: BoundSpec, suff: bool, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """The structural model's data for :func:`sample`, with ``"y"``; with ``suff`` the row arrays are
    left out (the program then has the same shapes for any number of rows) and the statistics
    (``stats``, else :func:`_suff_data`) put in."""
    data = _model_data(bound, fixed_sd=True, rows=not suff)
    if not suff:
        data["y"] = jnp.asarray(bound.y, dtype=jnp.float64)
        return data
    data["suff"] = jax.tree.map(lambda v: jnp.asarray(v, dtype=jnp.float64), _suff_data(bound) if stats is None else stats)
    data["y"] = jnp.zeros(0)
    return data


def _block_draws(block: GroupBlock, samples: dict[str, np.ndarray]) -> BlockDraws:
    """One grouping factor's draws, (chain, draw, …), from the named sites."""
    if block.pooled:
        return BlockDraws(sd=None, corr=None, values=None)
    names = site_names(block)
    values = samples[names.values].astype(float)
    if block.Sigma is not None:
        return BlockDraws(sd=None, corr=None, values=values)
    sd = np.stack([samples[n].astype(float) for n in names.sd], axis=-1)
    corr = None
    if _learns_cor(block):
        L = samples[names.chol].astype(float)
        corr = L @ np.swapaxes(L, -1, -2)
    return BlockDraws(sd=sd, corr=corr, values=values)


def _warn_divergent(bound: BoundSpec, n_div: int, total: int, target_accept: float) -> None:
    learned = [n for b in bound.blocks if b.Sigma is None for n in b.sd_names]
    exact = bound.simple and bound.spec.fam.exact
    if learned:
        what = f"{', '.join(learned)} may be biased"
        if exact:
            remedy = 'Try method="exact" or a tighter prior on the group SD.'
        else:
            example = f'priors={{"{learned[0]}": "half_normal(1)"}}'
            remedy = (f"Try tighter priors on the group SDs ({example}), fewer varying terms, or "
                      "pooling='unpooled'.")
    else:
        what = "the posterior may be biased"
        remedy = 'Try method="exact" or tighter priors.' if exact else "Try tighter priors on the coefficients."
    warnings.warn(
        ConvergenceWarning(f"{n_div} of {total} draws diverged even at target_accept={target_accept:g}; "
                           f"{what}. {remedy}"),
        stacklevel=_user_stacklevel(),
    )


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points at the first frame outside poolwise (the user's line)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame: Any = sys._getframe(1)  # the caller of this function (warnings.warn there) is level 1
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here + os.sep):
        frame = frame.f_back
        level += 1
    return level
