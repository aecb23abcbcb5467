"""Full-model inference with NUTS in NumPyro: the model from the spec, vectorized chains.

This module owns the NumPyro model of the Gaussian varying-intercept model, written once from a
:class:`~poolwise.spec.BoundSpec` as a plain function, and the sampler run around it:

    β ~ N(m0, diag(s0²)),  σ ~ prior,  τ ~ prior,  z_j ~ N(0, 1),  b_j = τ z_j,
    y_i ~ N(x_i'β + b_{g[i]}, σ²/w_i)

The group intercepts are non-centered (b = τ z), which removes the funnel between τ and b when
groups hold little data (Betancourt & Girolami, 2015).  Pooling is a setting of τ and never a
branch in the model body: a learned τ is a sample site with its prior; a fixed τ is the same
site conditioned with :func:`numpyro.handlers.condition`; the pooled model (τ = 0) is built
with the group term absent.  With known standard errors (``y | se(s)``) there is no σ and the
residual SD of row i is 1/√w_i.

Divergent transitions are acted on, then reported: the run is repeated at a higher target
acceptance (0.95, then 0.99); if it still diverges a :class:`~poolwise.errors.ConvergenceWarning`
names the count, what may be biased and the remedy.

References
----------
Hoffman, M. D. & Gelman, A. (2014). The No-U-Turn Sampler: adaptively setting path lengths in
Hamiltonian Monte Carlo. JMLR 15, 1593–1623.
Betancourt, M. & Girolami, M. (2015). Hamiltonian Monte Carlo for hierarchical models. In
Current Trends in Bayesian Methodology with Applications, 79–101. CRC Press.
Phan, D., Pradhan, N. & Jankowiak, M. (2019). Composable effects for flexible and accelerated
probabilistic programming in NumPyro. arXiv:1912.11554.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax

jax.config.update("jax_enable_x64", True)  # posteriors must agree tightly with the exact path

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.distributions import constraints  # noqa: E402
from numpyro.handlers import condition  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

from ..errors import ConvergenceWarning  # noqa: E402
from ..priors import Prior  # noqa: E402
from ..spec import BoundSpec  # noqa: E402
from . import Draws, Progress  # noqa: E402

__all__ = ["sample", "build_model", "RETRY_TARGET_ACCEPT"]

#: target acceptance probabilities tried, in turn, while transitions diverge
RETRY_TARGET_ACCEPT = (0.95, 0.99)

Model = Callable[..., None]
_EXTRA_FIELDS = ("diverging", "accept_prob", "num_steps", "energy", "potential_energy")


def _to_numpyro(prior: Prior) -> dist.Distribution:
    """The NumPyro distribution of a poolwise :class:`~poolwise.priors.Prior`."""
    k = prior.kwargs
    if prior.dist == "normal":
        return dist.Normal(k["mu"], k["sigma"])
    if prior.dist == "student_t":
        return dist.StudentT(k["df"], k["mu"], k["sigma"])
    if prior.dist == "half_normal":
        return dist.HalfNormal(k["sigma"])
    if prior.dist == "half_student_t":
        return dist.FoldedDistribution(dist.StudentT(k["df"], 0.0, k["sigma"]))
    if prior.dist == "half_cauchy":
        return dist.HalfCauchy(k["sigma"])
    if prior.dist == "exponential":
        return dist.Exponential(k["rate"])
    raise AssertionError(f"no NumPyro distribution for prior {prior}")  # priors.py validates names


def build_model(bound: BoundSpec, *, with_groups: bool | None = None) -> Model:
    """The NumPyro model of a bound Gaussian varying-intercept spec, as a plain function.

    Parameters
    ----------
    bound
        The bound model: rows, design, group index and resolved priors.
    with_groups
        Whether the group term is present; by default it is absent only for the pooled
        model (``bound.tau == 0``).  A fixed τ is *not* applied here: condition the site
        ``"tau"`` with :func:`numpyro.handlers.condition` (as :func:`sample` does).

    Returns
    -------
    callable
        ``model(y=None)``: sites ``"beta"`` (p,), ``"sigma"`` (when the model has one),
        ``"tau"``, ``"z"`` (J,) and the deterministic ``"b"`` = τ·z (with groups), and the
        observed ``"y"`` in the plate ``"obs"`` (pointwise, for
        :func:`numpyro.infer.util.log_likelihood` and :class:`numpyro.infer.Predictive`).

    Examples
    --------
    >>> import pandas as pd, poolwise.data
    >>> from poolwise.spec import ModelSpec
    >>> df = pd.DataFrame({"y": [0.1, 0.5, 1.2, 0.9], "g": ["a", "a", "b", "b"]})
    >>> bound = ModelSpec("y ~ 1 + (1 | g)").bind(poolwise.data.read_table(df))
    >>> from numpyro.infer import Predictive
    >>> import jax
    >>> Predictive(build_model(bound), num_samples=3)(jax.random.PRNGKey(0))["b"].shape
    (3, 2)
    """
    if with_groups is None:
        with_groups = bound.tau != 0.0
    X = jnp.asarray(bound.X, dtype=jnp.float64)
    n_obs, n_groups = bound.n_obs, bound.n_groups
    g = jnp.asarray(bound.group, dtype=jnp.int32)
    w_sqrt = jnp.sqrt(jnp.asarray(bound.weights, dtype=jnp.float64))
    m0 = jnp.array([bound.priors[c].mean_sd()[0] for c in bound.coef_names], dtype=jnp.float64)
    s0 = jnp.array([bound.priors[c].mean_sd()[1] for c in bound.coef_names], dtype=jnp.float64)
    sigma_prior = _to_numpyro(bound.priors["sigma"]) if bound.has_sigma else None
    # A fixed τ has no prior (it is conditioned away); a flat density leaves lp without a constant.
    tau_prior = (_to_numpyro(bound.priors[bound.sd_name]) if bound.tau is None
                 else dist.ImproperUniform(constraints.positive, (), ()))

    def residual_scale() -> jax.Array:
        """σ (sampled) over √w."""
        sigma: jax.Array = numpyro.sample("sigma", sigma_prior)
        return sigma / w_sqrt

    def known_scale() -> jax.Array:
        """Known standard errors: 1/√w."""
        return 1.0 / w_sqrt

    def group_term() -> jax.Array:
        """Non-centered group intercepts b = τ z, gathered to rows."""
        tau = numpyro.sample("tau", tau_prior)
        with numpyro.plate("groups", n_groups):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        b: jax.Array = numpyro.deterministic("b", tau * z)
        return b[g]

    def no_group_term() -> jax.Array:
        """The pooled model: Σ = 0, no group term."""
        return jnp.zeros(n_obs)

    scale = residual_scale if sigma_prior is not None else known_scale
    groups = group_term if with_groups else no_group_term

    def model(y: jax.Array | None = None) -> None:
        beta = numpyro.sample("beta", dist.Normal(m0, s0).to_event(1))
        mu = X @ beta + groups()
        sd = scale()
        with numpyro.plate("obs", n_obs):
            numpyro.sample("y", dist.Normal(mu, sd), obs=y)

    return model


def _run_once(
    model: Model, y: jax.Array, key: jax.Array, *, chains: int, draws: int, warmup: int,
    target_accept: float, max_tree_depth: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    kernel = NUTS(model, target_accept_prob=target_accept, max_tree_depth=max_tree_depth)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(key, y=y, extra_fields=_EXTRA_FIELDS)
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    return samples, extra


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
) -> Draws:
    """Posterior draws of the full model with NUTS, chains vectorized on one device.

    Parameters
    ----------
    bound
        The bound model (any pooling; known standard errors allowed).
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

    Returns
    -------
    Draws
        ``beta`` (chain, draw, p); ``sigma`` (chain, draw) or ``None`` with known standard
        errors; ``tau`` (chain, draw) or ``None`` when fixed; ``b`` = τ·z (chain, draw, J) or
        ``None`` when pooled; ``sample_stats`` with ``diverging``, ``acceptance_rate``,
        ``n_steps``, ``tree_depth``, ``energy`` and ``lp`` (the log density, the potential
        energy negated), each (chain, draw); ``info`` with ``seconds``, the ``target_accept``
        finally used, ``divergences`` at each attempt and the number of ``retries``.

    Warns
    -----
    ConvergenceWarning
        If transitions still diverge at the highest target acceptance.

    See Also
    --------
    build_model : the NumPyro model sampled here.
    poolwise.infer.exact.sample : the collapsed exact path for the same model.

    Notes
    -----
    The group intercepts are non-centered (Betancourt & Girolami, 2015); a fixed τ conditions
    the site ``"tau"``; the pooled model has no group term.  NUTS is Hoffman & Gelman (2014)'s,
    as implemented in NumPyro.

    Examples
    --------
    >>> import numpy as np, pandas as pd, poolwise.data
    >>> from poolwise.spec import ModelSpec
    >>> rng = np.random.default_rng(0)
    >>> df = pd.DataFrame({"y": rng.normal(size=30), "g": np.repeat(list("abc"), 10)})
    >>> bound = ModelSpec("y ~ 1 + (1 | g)").bind(poolwise.data.read_table(df))
    >>> d = sample(bound, seed=0, chains=2, draws=50, warmup=50)
    >>> d.beta.shape, d.b.shape, d.method
    ((2, 50, 1), (2, 50, 3), 'nuts')
    """
    t0 = time.perf_counter()
    if progress:
        progress("warmup+sampling", 0.0)
    model = build_model(bound)
    if bound.tau is not None and bound.tau != 0.0:
        model = condition(model, {"tau": jnp.asarray(float(bound.tau))})
    y = jnp.asarray(bound.y, dtype=jnp.float64)
    key = jax.random.PRNGKey(seed)
    schedule = [target_accept] + [t for t in RETRY_TARGET_ACCEPT if t > target_accept]
    divergences: list[int] = []
    used = target_accept
    samples: dict[str, np.ndarray] = {}
    extra: dict[str, np.ndarray] = {}
    for used in schedule:
        samples, extra = _run_once(model, y, key, chains=chains, draws=draws, warmup=warmup,
                                   target_accept=used, max_tree_depth=max_tree_depth)
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
    pooled = bound.tau == 0.0
    return Draws(
        beta=samples["beta"].astype(float),
        sigma=samples["sigma"].astype(float) if bound.has_sigma else None,
        tau=samples["tau"].astype(float) if bound.tau is None else None,
        b=None if pooled else samples["b"].astype(float),
        sample_stats=stats,
        method="nuts",
        info={
            "seconds": time.perf_counter() - t0,
            "target_accept": used,
            "divergences": divergences,
            "retries": len(divergences) - 1,
            "max_tree_depth": max_tree_depth,
            "warmup": warmup,
        },
    )


def _warn_divergent(bound: BoundSpec, n_div: int, total: int, target_accept: float) -> None:
    if bound.tau is None:
        what = f"{bound.sd_name} may be biased"
        remedy = 'Try method="exact" or a tighter prior on the group SD.'
    else:
        what = "the posterior may be biased"
        remedy = 'Try method="exact" or tighter priors.'
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
