"""Inference: a bound spec and its reduced data in, a :class:`Draws` record out.

Every method returns the same record — arrays shaped (chain, draw, …) with plain names —
so that ``fit.py`` needs one converter to ArviZ.  No labels, no ArviZ here.  An empirical fit
returns :class:`DeferredDraws` instead: its estimates at once, its draws when first used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import SpecError
from ..spec import BoundSpec, ModelSpec

__all__ = ["Draws", "DeferredDraws", "BlockDraws", "run", "default_method", "METHODS", "Progress"]

METHODS = ("exact", "nuts", "empirical", "laplace")

#: progress callback: (stage, fraction done in [0, 1])
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class BlockDraws:
    """Draws of one grouping factor's group terms (one :class:`~poolwise.spec.GroupBlock`).

    Attributes
    ----------
    sd
        Population SDs of the q terms, (chain, draw, q); ``None`` when Σ is fixed.
    corr
        Correlation matrices, (chain, draw, q, q); ``None`` when Σ is fixed, the terms are
        uncorrelated (``||``) or q = 1.
    values
        Group values (deviations from the common coefficients), (chain, draw, J, q); ``None``
        when the block is pooled (Σ = 0).  When draws × groups would pass the memory budget, the
        values of a thinned subset of draws, (chain, len(value_draws), J, q).
    value_draws
        The per-chain draw indices of ``values`` when thinned, else ``None``.
    """

    sd: np.ndarray | None
    corr: np.ndarray | None
    values: np.ndarray | None
    #: per-chain draw indices the values belong to, when they were thinned (``None``: every draw)
    value_draws: np.ndarray | None = None


@dataclass(frozen=True)
class Draws:
    """Posterior draws in plain arrays.

    Attributes
    ----------
    beta
        Common coefficients, (chain, draw, p), in the order of ``BoundSpec.coef_names``.
    sigma
        Residual SD, (chain, draw); ``None`` when standard errors are known.
    tau
        Population SD of the group intercepts, (chain, draw); ``None`` when it is fixed.
    b
        Group intercept deviations from the population mean, (chain, draw, J), of the first
        grouping factor of a simple ``(1 | g)`` model; ``None`` when pooled or when ``blocks``
        holds the group draws.
    sample_stats
        Sampler diagnostics, each (chain, draw) (``diverging``, ``acceptance_rate``, …).
    method
        ``"exact"`` or ``"nuts"``.
    info
        Settings and notes of the run (seconds taken, target_accept, grid size, …).
    aux
        Auxiliary family parameters besides ``sigma`` (``nu``, ``phi``), each (chain, draw).
    blocks
        Per grouping factor, in the order of ``BoundSpec.blocks``, for models beyond one
        varying intercept (then ``tau`` and ``b`` are ``None``).
    value_draws
        Per-chain draw indices of ``b`` when its draws were thinned to fit the memory budget.
    """

    beta: np.ndarray
    sigma: np.ndarray | None
    tau: np.ndarray | None
    b: np.ndarray | None
    sample_stats: dict[str, np.ndarray] = field(default_factory=dict)
    method: str = "exact"
    info: dict[str, Any] = field(default_factory=dict)
    aux: dict[str, np.ndarray] = field(default_factory=dict)
    blocks: tuple[BlockDraws, ...] = ()
    value_draws: np.ndarray | None = None

    def block_draws(self) -> tuple[BlockDraws, ...]:
        """Draws per grouping factor; for the simple model built from ``tau`` and ``b``."""
        if self.blocks:
            return self.blocks
        sd = None if self.tau is None else self.tau[..., None]
        values = None if self.b is None else self.b[..., None]
        return (BlockDraws(sd=sd, corr=None, values=values, value_draws=self.value_draws),)

    @property
    def n_chains(self) -> int:
        return int(self.beta.shape[0])

    @property
    def n_draws(self) -> int:
        return int(self.beta.shape[1])


@dataclass(frozen=True)
class DeferredDraws:
    """The draws of a fit made only when first used (an empirical fit: its estimates are in ``info``).

    Has the facts of :class:`Draws` that need no draws (``method``, ``info``, ``n_chains``,
    ``n_draws``); :meth:`realize` makes them (deterministic: the same seed, the same draws,
    whenever it is called), with this record's ``info``.
    """

    method: str
    info: dict[str, Any]
    n_chains: int
    n_draws: int
    make: Callable[[], Draws]

    def realize(self) -> Draws:
        return replace(self.make(), info=self.info)


def run(
    bound: BoundSpec,
    *,
    method: str,
    seed: int,
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    progress: Progress | None = None,
    group_budget: int | None = None,
    **options: Any,
) -> Draws | DeferredDraws:
    """Dispatch to an inference method (``method="empirical"``: :class:`DeferredDraws`).

    ``group_budget`` (bytes) caps the stored group values of the exact and empirical paths of
    the varying-intercept model: past it they are kept for a thinned subset of the draws.

    Raises
    ------
    SpecError
        For an unknown method or one that does not apply to the family.
    """
    _check_supported(bound, method)
    if method == "exact":
        if not bound.spec.fam.exact:  # bernoulli / binomial: Pólya-Gamma Gibbs (pg refuses the rest)
            from . import pg, pg_multi

            if len(bound.blocks) > 1 and pg_multi.unsupported_bound(bound) is None:
                big = pg_multi.too_large(bound)
                if big is None:
                    return pg_multi.sample(bound, seed=seed, chains=chains, draws=draws, warmup=warmup,
                                           progress=progress, **options)
                from . import nuts

                result = nuts.sample(bound, seed=seed, chains=chains, draws=draws, warmup=warmup,
                                     progress=progress, **{k: v for k, v in options.items()
                                                           if k not in ("theta_steps", "merge")})
                note = f"method='exact' fitted this model with NUTS (also exact, and faster here): {big}."
                return replace(result, info={**result.info, "note": note})
            return pg.sample(bound, seed=seed, chains=chains, draws=draws, warmup=warmup, progress=progress,
                             **options)
        from . import exact
        from ..reduce import reduce

        if bound.simple:
            return exact.sample(bound, reduce(bound), seed=seed, chains=chains, draws=draws, progress=progress,
                                group_budget=group_budget, **options)
        if len(bound.blocks) == 1:
            return exact.sample_block(bound, seed=seed, chains=chains, draws=draws, warmup=warmup,
                                      progress=progress, **options)
        from . import nested, sparse

        if nested.nesting(bound) is not None:  # two nested intercepts: the batched path (faster there)
            got = nested.sample(bound, seed=seed, chains=chains, draws=draws, progress=progress)
            if isinstance(got, Draws):
                return got
        got = sparse.sample(bound, seed=seed, chains=chains, draws=draws, progress=progress)
        if isinstance(got, Draws):
            return got
        # the independence sampler of the hyperparameters could not be trusted: the same model by
        # NUTS, and the summary says so
        from . import nuts

        result = nuts.sample(bound, seed=seed, chains=chains, draws=draws, warmup=warmup, progress=progress,
                             **options)
        note = (f"method='exact' sampled this model's hyperparameters by independence Metropolis-Hastings, "
                f"which could not be trusted here ({got}), so it was fitted with NUTS.")
        return replace(result, info={**result.info, "note": note})
    if method == "nuts":
        from . import nuts

        return nuts.sample(bound, seed=seed, chains=chains, draws=draws, warmup=warmup, progress=progress,
                           **options)
    if method == "empirical":
        from . import empirical

        if len(bound.blocks) > 1 and bound.spec.fam.exact:
            from . import sparse

            empirical._check_replicated(bound)
            return sparse.empirical(bound, seed=seed, chains=chains, draws=draws, progress=progress,
                                    reml=bool(options.get("reml", True)))
        return empirical.sample(bound, seed=seed, chains=chains, draws=draws, progress=progress,
                                group_budget=group_budget, **options)
    if method == "laplace":
        from . import laplace

        return laplace.sample(bound, seed=seed, chains=chains, draws=draws, progress=progress, **options)
    raise SpecError(f"The 'method' option must be one of {', '.join(repr(m) for m in METHODS)}. Got {method!r}.",
                    option="method")


def default_method(spec: ModelSpec) -> str:
    """The method a fit uses when none is given: ``"exact"`` for gaussian models and for
    bernoulli and binomial models (Pólya-Gamma Gibbs: :mod:`poolwise.infer.pg` for one grouping
    factor, :mod:`poolwise.infer.pg_multi` for several, which hands designs too large for it to
    NUTS with a note), else ``"nuts"``."""
    if spec.fam.exact:
        return "exact"
    from . import pg, pg_multi

    return "exact" if pg.unsupported(spec) is None or pg_multi.unsupported(spec) is None else "nuts"


def _check_supported(bound: BoundSpec, method: str) -> None:
    """Refuse, clearly, what a method cannot fit (before any work is done)."""
    del bound, method  # every family, term and factor is fitted by nuts; exact is checked in run()
