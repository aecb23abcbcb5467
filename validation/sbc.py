"""Simulation-based calibration (SBC) of poolwise's exact path.

For each replication, parameters are drawn from the prior, data are simulated from the model on a
fixed design, the model is fitted with ``method="exact"`` under the *same* priors, and the rank of
each true value among L (thinned) posterior draws is recorded. If the sampler draws from the
correct posterior, every rank is uniform on {0, …, L} (Talts et al., 2018, Theorem 1); the
uniformity of each quantity's ranks is tested with a chi-square test over equal-width bins, and
the family of tests is Bonferroni-corrected.

Model (``y ~ x + (1 | g)``)::

    y_i = Intercept + slope·x_i + b_{g[i]} + e_i,   e_i ~ N(0, σ²),   b_j ~ N(0, τ²)
    Intercept ~ normal(0, 1),  slope ~ normal(0, 1),  σ ~ exponential(1),  τ ~ half_normal(1)

Quantities ranked: ``Intercept``, ``x`` (the slope), ``sigma``, ``sd(Intercept|g)`` (τ) and the
group intercepts Intercept + b_j of the smallest group (1 row), the next (2 rows) and the largest.

Run ``python -m validation.sbc --reps 400 --out validation/_out``: writes ``ranks.csv`` and
``summary.md`` and exits 1 if any quantity fails the uniformity test.

The NUTS path (:func:`run_sbc_nuts`) is checked the same way on ``y ~ x + (1 | g)`` with the
``bernoulli`` (logit link) and ``poisson`` (log link) families: 8 groups of 3 to 15 rows, priors
:data:`NUTS_SIM_PRIORS`, one chain per fit thinned to L near-independent draws by its effective
sample size. ``--family bernoulli poisson gaussian-exact`` picks the checks (outputs
``ranks-<family>.csv`` and ``summary-<family>.md`` for the NUTS families).

References
----------
Talts, S., Betancourt, M., Simpson, D., Vehtari, A. & Gelman, A. (2018). Validating Bayesian
inference algorithms with simulation-based calibration. arXiv:1804.06788.
Cook, S. R., Gelman, A. & Rubin, D. B. (2006). Validation of software for Bayesian models using
posterior quantiles. JCGS 15(3), 675–692.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["SIM_PRIORS", "FORMULA", "run_sbc", "uniformity_pvalues", "failing", "default_sizes", "main",
           "NUTS_FAMILIES", "NUTS_SIM_PRIORS", "NUTS_SIZES", "run_sbc_nuts", "CROSSED_VARIANTS", "crossed_design",
           "run_sbc_crossed"]

FORMULA = "y ~ x + (1 | g)"
#: the priors the parameters are simulated from (and, by default, fitted with)
SIM_PRIORS: dict[str, str] = {
    "Intercept": "normal(0, 1)",
    "x": "normal(0, 1)",
    "sigma": "exponential(1)",
    "sd(Intercept|g)": "half_normal(1)",
}
_SCALARS = ("Intercept", "x", "sigma", "sd(Intercept|g)")

#: ``perturb(name, draws) -> draws``: a deliberate error for negative controls
Perturb = Callable[[str, np.ndarray], np.ndarray]


def default_sizes(n_groups: int) -> np.ndarray:
    """Unequal group sizes max(k + 1, round(1.5^k)), k = 0..n_groups−1: 1, 2, 3, 4, 5, 8, 11, 17, …"""
    k = np.arange(n_groups)
    return np.maximum(k + 1, np.round(1.5**k)).astype(int)


_CALL = re.compile(r"^\s*([a-z_]+)\s*\(([^)]*)\)\s*$")


def _draw(prior: str, rng: np.random.Generator) -> float:
    """One draw from a prior written as poolwise writes it (parsed here, not by poolwise)."""
    m = _CALL.match(prior)
    if not m:
        raise ValueError(f"cannot read prior {prior!r}")
    name, args = m.group(1), [float(a) for a in m.group(2).split(",")]
    if name == "normal":
        return float(rng.normal(args[0], args[1]))
    if name == "half_normal":
        return float(abs(rng.normal(0.0, args[0])))
    if name == "half_cauchy":
        return float(abs(args[0] * rng.standard_cauchy()))
    if name == "exponential":
        return float(rng.exponential(1.0 / args[0]))
    raise ValueError(f"no simulator for prior {prior!r}")


def _design(sizes: np.ndarray, design_seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(design_seed)
    J = sizes.size
    width = len(str(J))
    g = np.repeat(np.arange(J), sizes)
    x = rng.normal(size=g.size)
    labels = np.array([f"G{j + 1:0{width}d}" for j in range(J)])  # sorted order = index order
    return pd.DataFrame({"x": x, "g": labels[g]}), g


def run_sbc(
    reps: int,
    seed: int = 0,
    *,
    n_groups: int = 8,
    sizes: Sequence[int] | None = None,
    draws_per_fit: int = 99,
    thin: int = 2,
    fit_priors: Mapping[str, str] | None = None,
    perturb: Perturb | None = None,
    design_seed: int = 20180417,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Ranks of the true values among posterior draws, one per replication.

    Parameters
    ----------
    reps
        Number of simulated data sets.
    seed
        Seed of the replications (parameters, noise and each fit's seed derive from it).
    n_groups, sizes
        The fixed design: ``sizes[j]`` rows in group j (default :func:`default_sizes`, which
        includes groups of 1 and 2 rows); one predictor ``x`` ~ N(0, 1) drawn once.
    draws_per_fit
        L, the posterior draws each rank is taken among (ranks lie in 0..L). Choose L + 1 a
        multiple of the number of bins used later.
    thin
        Each fit makes ``L·thin`` draws in one chain and keeps every ``thin``-th, so the kept
        draws are (close to) independent, as SBC requires.
    fit_priors
        Priors of the fit; default :data:`SIM_PRIORS` (the simulation's). Different priors make a
        deliberately miscalibrated fit (negative control).
    perturb
        Optional ``perturb(name, draws)`` applied to the draws before ranking (negative control).
    design_seed
        Seed of the fixed design.
    progress
        Optional callback ``(done, reps)``.

    Returns
    -------
    dict
        Quantity name → int array (reps,) of ranks in 0..L.
    """
    import poolwise as pw

    sizes_arr = default_sizes(n_groups) if sizes is None else np.asarray(sizes, dtype=int)
    if sizes_arr.size != n_groups or (sizes_arr < 1).any():
        raise ValueError(f"sizes must hold {n_groups} positive group sizes, got {list(sizes_arr)}")
    if draws_per_fit < 1 or thin < 1 or reps < 1:
        raise ValueError("reps, draws_per_fit and thin must be positive")
    design, g = _design(sizes_arr, design_seed)
    order = np.argsort(sizes_arr, kind="stable")
    tracked = [int(order[0]), int(order[1]), int(order[-1])]
    labels = sorted(set(design["g"]))
    group_names = [f"intercept[{labels[j]}, n={sizes_arr[j]}]" for j in tracked]
    priors = dict(fit_priors) if fit_priors is not None else dict(SIM_PRIORS)
    names = list(_SCALARS) + group_names
    ranks = {n: np.empty(reps, dtype=np.int64) for n in names}
    children = np.random.SeedSequence(seed).spawn(reps)
    for r, child in enumerate(children):
        rng = np.random.default_rng(child)
        truth = {k: _draw(SIM_PRIORS[k], rng) for k in _SCALARS}
        b = rng.normal(0.0, truth["sd(Intercept|g)"], size=n_groups)
        y = truth["Intercept"] + truth["x"] * design["x"].to_numpy() + b[g] + truth["sigma"] * rng.normal(size=g.size)
        df = design.assign(y=y)
        fit = pw.fit(FORMULA, df, priors=priors, method="exact", chains=1, draws=draws_per_fit * thin,
                     seed=int(rng.integers(2**31)))
        draws = {k: fit.param(k)[0, thin - 1 :: thin] for k in _SCALARS}
        gi = fit.group_intercepts()[0, thin - 1 :: thin]
        for name, j in zip(group_names, tracked):
            draws[name] = gi[:, j]
            truth[name] = truth["Intercept"] + b[j]
        for name in names:
            d = draws[name] if perturb is None else perturb(name, draws[name])
            ranks[name][r] = int(np.sum(d < truth[name]))
        if progress:
            progress(r + 1, reps)
    return ranks


# -- the NUTS path: bernoulli and poisson varying intercepts ------------------------------------

NUTS_FAMILIES = ("bernoulli", "poisson")
#: the families of the exact path's Pólya-Gamma sampler (``run_sbc_nuts(..., method="exact")``)
PG_FAMILIES = ("bernoulli", "binomial")
#: the priors the NUTS-path parameters are simulated from (and, by default, fitted with); the
#: poisson's keep the rates moderate (the linear predictor mostly within log 0.3 .. log 40)
NUTS_SIM_PRIORS: dict[str, dict[str, str]] = {
    "bernoulli": {"Intercept": "normal(0, 1)", "x": "normal(0, 1)", "sd(Intercept|g)": "half_normal(1)"},
    "poisson": {"Intercept": "normal(1, 0.5)", "x": "normal(0, 0.5)", "sd(Intercept|g)": "half_normal(0.5)"},
    "binomial": {"Intercept": "normal(0, 1)", "x": "normal(0, 1)", "sd(Intercept|g)": "half_normal(1)"},
}
#: trials per row of the binomial design: drawn once, uniformly from 1 to this
BINOMIAL_MAX_TRIALS = 10
#: rows per group of the NUTS design (8 groups, 3 to 15 rows, 67 rows)
NUTS_SIZES = (3, 4, 5, 6, 8, 11, 15, 15)
_NUTS_SCALARS = ("Intercept", "x", "sd(Intercept|g)")


def _ess_min(draws: Mapping[str, np.ndarray]) -> float:
    """The smallest bulk effective sample size over quantities, each (chain, draw) or (draw,)."""
    import arviz as az

    return min(float(az.ess(np.atleast_2d(np.asarray(d, dtype=float)), method="bulk")) for d in draws.values())


def run_sbc_nuts(
    family: str,
    reps: int,
    seed: int = 0,
    *,
    sizes: Sequence[int] = NUTS_SIZES,
    draws_per_fit: int = 99,
    warmup: int = 300,
    draws: int = 300,
    max_chains: int = 4,
    fit_priors: Mapping[str, str] | None = None,
    perturb: Perturb | None = None,
    design_seed: int = 20180417,
    progress: Callable[[int, int], None] | None = None,
    info: dict[str, list[float]] | None = None,
    method: str = "nuts",
) -> dict[str, np.ndarray]:
    """SBC ranks of poolwise's NUTS path (``infer.nuts.sample``) on ``y ~ x + (1 | g)``, or with
    ``method="exact"`` of the Pólya-Gamma Gibbs sampler (``infer.pg.sample``; bernoulli, binomial).

    Each replication draws Intercept, the slope of ``x``, τ = sd(Intercept|g) and the group
    deviations b_j ~ N(0, τ²) from :data:`NUTS_SIM_PRIORS` (``family``), simulates y (bernoulli:
    P(y = 1) = logit⁻¹(η); poisson: rate exp(η)) on a fixed design, fits one NUTS chain of
    ``warmup`` + ``draws`` iterations under the same priors and ranks the truths among L draws.

    Thinning: the L draws are spread evenly over the draws, which are near-independent when
    the smallest bulk ESS (over the ranked quantities) is at least L; while it is lower, another
    chain of the same length (next seed, same compiled sampler) is added, up to ``max_chains``
    (Talts et al. 2018, section 5.1: thin by N / ESS).

    Parameters
    ----------
    family
        ``"bernoulli"`` or ``"poisson"`` (NUTS); ``"bernoulli"`` or ``"binomial"`` (exact; the
        binomial rows have 1 to :data:`BINOMIAL_MAX_TRIALS` trials, fixed by the design).
    reps, seed
        Replications and their seed (parameters, outcomes and fit seeds derive from it).
    sizes
        Rows per group (default :data:`NUTS_SIZES`); one predictor ``x`` ~ N(0, 1) drawn once.
    draws_per_fit
        L, the posterior draws each rank is taken among (ranks in 0..L).
    warmup, draws, max_chains
        Warmup and kept iterations of each chain, and the most chains of one replication.
    fit_priors
        Priors of the fit; default the simulation's. Different priors make a deliberately
        miscalibrated fit (negative control).
    perturb
        Optional ``perturb(name, draws)`` applied to the draws before ranking (negative control).
    design_seed
        Seed of the fixed design.
    progress
        Optional callback ``(done, reps)``.
    info
        Optional dict, filled with per-replication lists ``"draws"`` (over its chains),
        ``"ess_min"``, ``"divergences"`` (of all its chains) and ``"seconds"``.
    method
        ``"nuts"`` or ``"exact"`` (the Pólya-Gamma sampler).

    Returns
    -------
    dict
        Quantity name → int array (reps,) of ranks in 0..L: ``Intercept``, ``x``,
        ``sd(Intercept|g)`` and ``b[G.., n=..]``, the group deviation of the smallest, a middle
        and the largest group.
    """
    import warnings

    import poolwise.data
    from poolwise.errors import ConvergenceWarning
    from poolwise.infer import nuts, pg
    from poolwise.spec import ModelSpec

    allowed = {"nuts": NUTS_FAMILIES, "exact": PG_FAMILIES}.get(method)
    if allowed is None:
        raise ValueError(f"method must be 'nuts' or 'exact', got {method!r}")
    if family not in allowed:
        raise ValueError(f"family must be one of {allowed} with method={method!r}, got {family!r}")
    sizes_arr = np.asarray(sizes, dtype=int)
    if (sizes_arr < 1).any() or sizes_arr.size < 2:
        raise ValueError(f"sizes must hold at least 2 positive group sizes, got {list(sizes_arr)}")
    L = draws_per_fit
    if L < 1 or reps < 1 or draws < L:
        raise ValueError("reps and draws_per_fit must be positive and draws >= draws_per_fit")
    sim = NUTS_SIM_PRIORS[family]
    priors = dict(fit_priors) if fit_priors is not None else dict(sim)
    design, g = _design(sizes_arr, design_seed)
    J = sizes_arr.size
    x = design["x"].to_numpy()
    order = np.argsort(sizes_arr, kind="stable")
    tracked = [int(order[0]), int(order[J // 2]), int(order[-1])]
    labels = sorted(set(design["g"]))
    group_names = [f"b[{labels[j]}, n={sizes_arr[j]}]" for j in tracked]
    names = list(_NUTS_SCALARS) + group_names
    ranks = {n: np.empty(reps, dtype=np.int64) for n in names}
    trials = np.random.default_rng(design_seed + 1).integers(1, BINOMIAL_MAX_TRIALS + 1, size=g.size)
    formula = FORMULA.replace("y ~", "cbind(y, n - y) ~") if family == "binomial" else FORMULA
    spec = ModelSpec(formula, family=family, priors=priors)
    sampler = nuts.sample if method == "nuts" else pg.sample
    children = np.random.SeedSequence(seed).spawn(reps)
    for r, child in enumerate(children):
        t0 = time.perf_counter()
        rng = np.random.default_rng(child)
        truth = {k: _draw(sim[k], rng) for k in _NUTS_SCALARS}
        b = rng.normal(0.0, truth["sd(Intercept|g)"], size=J)
        eta = truth["Intercept"] + truth["x"] * x + b[g]
        if family == "bernoulli":
            y = (rng.uniform(size=g.size) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
        elif family == "binomial":
            y = rng.binomial(trials, 1.0 / (1.0 + np.exp(-eta))).astype(float)
        else:
            y = rng.poisson(np.exp(eta)).astype(float)
        frame = design.assign(y=y, n=trials) if family == "binomial" else design.assign(y=y)
        bound = spec.bind(poolwise.data.read_table(frame))
        fit_seed = int(rng.integers(2**31))
        chains: list[dict[str, np.ndarray]] = []
        n_div = 0
        while True:  # chains of the same shape reuse one compiled sampler
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # counted in info instead
                d = sampler(bound, seed=fit_seed + len(chains), chains=1, warmup=warmup, draws=draws)
            n_div += d.info["divergences"][-1] if method == "nuts" else 0
            sd, values = d.blocks[0].sd, d.blocks[0].values
            assert sd is not None and values is not None  # a learned, non-pooled block
            chain = {"Intercept": d.beta[0, :, 0], "x": d.beta[0, :, 1], "sd(Intercept|g)": sd[0, :, 0]}
            chain.update({name: values[0, :, j, 0] for name, j in zip(group_names, tracked)})
            chains.append(chain)
            ess = _ess_min({k: np.stack([c[k] for c in chains]) for k in names})
            if ess >= L or len(chains) >= max_chains:
                break
        n_draws = draws * len(chains)
        pooled = {k: np.concatenate([c[k] for c in chains]) for k in names}
        keep = np.round(np.linspace(0, n_draws - 1, L)).astype(int)
        for name, j in zip(group_names, tracked):
            truth[name] = b[j]
        for name in names:
            kept = pooled[name][keep]
            kept = kept if perturb is None else perturb(name, kept)
            ranks[name][r] = int(np.sum(kept < truth[name]))
        if info is not None:
            for k, v in (("draws", n_draws), ("ess_min", ess), ("divergences", n_div),
                         ("seconds", time.perf_counter() - t0)):
                info.setdefault(k, []).append(float(v))
        if progress:
            progress(r + 1, reps)
    return ranks


# -- the exact path with crossed factors: the sparse collapsed sampler --------------------------

#: the crossed checks: formula, the priors the parameters are simulated from (and fitted with)
CROSSED_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "intercepts": ("y ~ x + (1 | a) + (1 | b)", {
        "Intercept": "normal(0, 1)", "x": "normal(0, 1)", "sigma": "exponential(1)",
        "sd(Intercept|a)": "half_normal(1)", "sd(Intercept|b)": "half_normal(1)"}),
    "slopes": ("y ~ x + (1 + x | a) + (1 | b)", {
        "Intercept": "normal(0, 1)", "x": "normal(0, 1)", "sigma": "exponential(1)",
        "sd(Intercept|a)": "half_normal(1)", "sd(x|a)": "half_normal(0.5)", "sd(Intercept|b)": "half_normal(1)",
        "cor(a)": "lkj(2)"}),
    # binomial outcomes (1 to 6 trials a row): the exact path is Pólya-Gamma Gibbs (poolwise.infer.pg_multi)
    "binomial": ("y | trials(n) ~ x + (1 | a) + (1 | b)", {
        "Intercept": "normal(0, 1)", "x": "normal(0, 1)",
        "sd(Intercept|a)": "half_normal(1)", "sd(Intercept|b)": "half_normal(1)"}),
}
#: the crossed design: levels of a and b, the share of empty (a, b) cells, rows per non-empty cell
CROSSED_LEVELS = (12, 8)
CROSSED_EMPTY = 0.3
CROSSED_ROWS = (1, 3)


def crossed_design(design_seed: int = 20180417, levels: tuple[int, int] = CROSSED_LEVELS,
                   empty: float = CROSSED_EMPTY, rows: tuple[int, int] = CROSSED_ROWS) -> pd.DataFrame:
    """A fixed unbalanced crossed design: each (a, b) cell empty with probability ``empty``, else
    holding ``rows[0]..rows[1]`` rows (uniform); one predictor x ~ N(0, 1).  Redrawn (next seed)
    until every level of a and of b has rows.  Labels sort in index order (A01.., B1..)."""
    n_a, n_b = levels
    seed = design_seed
    while True:
        rng = np.random.default_rng(seed)
        full = rng.random((n_a, n_b)) >= empty
        count = np.where(full, rng.integers(rows[0], rows[1] + 1, size=(n_a, n_b)), 0)
        if (count.sum(axis=1) > 0).all() and (count.sum(axis=0) > 0).all():
            break
        seed += 1
    ia, ib = np.nonzero(count)
    reps = count[ia, ib]
    a, b = np.repeat(ia, reps), np.repeat(ib, reps)
    wa, wb = len(str(n_a)), len(str(n_b))
    return pd.DataFrame({"a": [f"A{i + 1:0{wa}d}" for i in a], "b": [f"B{j + 1:0{wb}d}" for j in b],
                         "x": rng.normal(size=a.size), "ia": a, "ib": b})


def _lkj2(prior: str, rng: np.random.Generator) -> float:
    """The correlation of a 2 × 2 LKJ(η) matrix: (r + 1)/2 ~ Beta(η, η) (density ∝ (1 − r²)^(η−1))."""
    m = _CALL.match(prior)
    if not m or m.group(1) != "lkj":
        raise ValueError(f"cannot read prior {prior!r}")
    eta = float(m.group(2))
    return float(2.0 * rng.beta(eta, eta) - 1.0)


def run_sbc_crossed(
    reps: int,
    seed: int = 0,
    *,
    variant: str = "intercepts",
    chains: int = 2,
    draws_per_fit: int = 99,
    fit_priors: Mapping[str, str] | None = None,
    perturb: Perturb | None = None,
    controls: Mapping[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] | None = None,
    design_seed: int = 20180417,
    progress: Callable[[int, int], None] | None = None,
    info: dict[str, list[Any]] | None = None,
    thin: int = 1,
    warmup: int = 200,
) -> dict[str, np.ndarray]:
    """SBC ranks of the exact path with two crossed grouping factors (:mod:`poolwise.infer.sparse`;
    the ``"binomial"`` variant: :mod:`poolwise.infer.pg_multi`, whose Gibbs draws are thinned by
    ``thin`` after ``warmup`` sweeps).

    ``variant`` picks the model of :data:`CROSSED_VARIANTS`: ``"intercepts"``, y ~ x + (1 | a) +
    (1 | b); ``"slopes"``, y ~ x + (1 + x | a) + (1 | b) with the intercept and slope of a
    correlated.  Each replication draws every parameter from the variant's priors, the group values
    (b_a ~ N(0, Σ_a), b_b ~ N(0, s_b²)), simulates y on :func:`crossed_design` and fits
    ``method="exact"`` with ``chains`` chains of ⌈(L + 1)/chains⌉ draws under the same priors (the
    independence sampler thins its own chains, so the draws are near-independent); the truths are
    ranked among the first L pooled draws.

    Ranked: Intercept, x, sigma, every SD (and the correlation), and the group values of the
    a-level with the fewest and with the most rows and of the b-level with the fewest (the
    intercept deviation; with slopes also the slope deviation of the smallest a-level).

    ``controls`` (optional) adds negative controls ranked from the same fits: name → (quantity,
    f), the truth of ``quantity`` ranked among f(its draws) (a deliberately wrong posterior).
    ``info`` (optional) is filled per replication with ``"method"`` (the sampler that ran:
    ``exact``, or ``nuts`` after a fallback), ``"seconds"`` and ``"hyper_rhat"``.
    """
    import warnings

    import poolwise as pw
    from poolwise.errors import ConvergenceWarning

    if variant not in CROSSED_VARIANTS:
        raise ValueError(f"variant must be one of {tuple(CROSSED_VARIANTS)}, got {variant!r}")
    if reps < 1 or draws_per_fit < 1 or chains < 1:
        raise ValueError("reps, draws_per_fit and chains must be positive")
    formula, sim = CROSSED_VARIANTS[variant]
    priors = dict(fit_priors) if fit_priors is not None else dict(sim)
    slopes = variant == "slopes"
    binomial = variant == "binomial"
    design = crossed_design(design_seed)
    ia, ib = design["ia"].to_numpy(), design["ib"].to_numpy()
    x = design["x"].to_numpy()
    n_a, n_b = int(ia.max()) + 1, int(ib.max()) + 1
    size_a, size_b = np.bincount(ia, minlength=n_a), np.bincount(ib, minlength=n_b)
    small_a, big_a = int(np.argmin(size_a)), int(np.argmax(size_a))
    small_b = int(np.argmin(size_b))
    lab_a, lab_b = sorted(set(design["a"])), sorted(set(design["b"]))
    tracked = [("1|a", small_a, 0, f"1|a[{lab_a[small_a]}, n={size_a[small_a]}]"),
               ("1|a", big_a, 0, f"1|a[{lab_a[big_a]}, n={size_a[big_a]}]"),
               ("1|b", small_b, 0, f"1|b[{lab_b[small_b]}, n={size_b[small_b]}]")]
    if slopes:
        tracked.append(("x|a", small_a, 1, f"x|a[{lab_a[small_a]}, n={size_a[small_a]}]"))
    scalars = [k for k in sim if not k.startswith("cor(")] + (["cor(Intercept,x|a)"] if slopes else [])
    names = scalars + [t[3] for t in tracked]
    ctrl = dict(controls or {})
    ranks = {n: np.empty(reps, dtype=np.int64) for n in names + list(ctrl)}
    per_chain = -(-(draws_per_fit + 1) // chains)
    table = design[["a", "b", "x"]]
    if binomial:  # trials per row, fixed with the design
        table = table.assign(n=np.random.default_rng(design_seed).integers(1, 7, size=x.size))
    children = np.random.SeedSequence(seed).spawn(reps)
    for r, child in enumerate(children):
        t0 = time.perf_counter()
        rng = np.random.default_rng(child)
        truth = {k: _draw(v, rng) for k, v in sim.items() if not k.startswith("cor(")}
        sd_a = np.array([truth["sd(Intercept|a)"]] + ([truth["sd(x|a)"]] if slopes else []))
        if slopes:
            truth["cor(Intercept,x|a)"] = rho = _lkj2(sim["cor(a)"], rng)
            L = np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]]))
        else:
            L = np.eye(1)
        ua = (rng.standard_normal((n_a, sd_a.size)) @ L.T) * sd_a  # rows ~ N(0, diag(s) R diag(s))
        ub = rng.normal(0.0, truth["sd(Intercept|b)"], size=n_b)
        eta = truth["Intercept"] + truth["x"] * x + ua[ia, 0] + ub[ib] + (ua[ia, 1] * x if slopes else 0.0)
        if binomial:
            y = rng.binomial(table["n"].to_numpy(), 1.0 / (1.0 + np.exp(-eta)))
            opts: dict[str, Any] = {"family": "binomial", "warmup": warmup}
        else:
            y = eta + truth["sigma"] * rng.standard_normal(x.size)
            opts = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit = pw.fit(formula, table.assign(y=y), priors=priors, method="exact", chains=chains,
                         draws=per_chain * thin, seed=int(rng.integers(2**31)), **opts)

        def kept(a: np.ndarray) -> np.ndarray:
            return a[:, ::thin].reshape(-1)[:draws_per_fit]

        post = {k: kept(fit.param(k)) for k in scalars}
        for var, j, k, name in tracked:
            i = [blk.factor for blk in fit.bound.blocks].index(var[-1])
            blk, v = fit.bound.blocks[i], fit.block_draws[i].values
            assert v is not None
            label = (lab_a if var.endswith("a") else lab_b)[j]
            post[name] = kept(v[..., list(map(str, blk.levels)).index(label), k])
            truth[name] = float((ua if var.endswith("a") else ub[:, None])[j, k])
        for name in names:
            d = post[name] if perturb is None else perturb(name, post[name])
            ranks[name][r] = int(np.sum(d < truth[name]))
        for name, (base, f) in ctrl.items():
            ranks[name][r] = int(np.sum(f(post[base]) < truth[base]))
        if info is not None:
            info.setdefault("method", []).append(fit.draws.method)
            info.setdefault("seconds", []).append(time.perf_counter() - t0)
            info.setdefault("hyper_rhat", []).append(float(fit.draws.info.get("hyper_rhat", float("nan"))))
        if progress:
            progress(r + 1, reps)
    return ranks


def uniformity_pvalues(ranks: Mapping[str, np.ndarray], draws_per_fit: int, bins: int) -> dict[str, float]:
    """Chi-square test of uniform ranks over ``bins`` equal bins, per quantity.

    Ranks take the L + 1 values 0..L; ``bins`` must divide L + 1 so every bin holds the same
    number of rank values (and, under uniformity, the same expected count reps/bins).
    """
    n_values = draws_per_fit + 1
    if n_values % bins:
        raise ValueError(f"bins ({bins}) must divide draws_per_fit + 1 ({n_values})")
    out = {}
    for name, r in ranks.items():
        r = np.asarray(r)
        if r.min() < 0 or r.max() > draws_per_fit:
            raise ValueError(f"ranks of {name} outside 0..{draws_per_fit}")
        counts = np.bincount(r * bins // n_values, minlength=bins)
        out[name] = float(stats.chisquare(counts).pvalue)
    return out


def failing(pvalues: Mapping[str, float], alpha: float) -> list[str]:
    """Quantities whose p-value is below the Bonferroni threshold alpha / (number of quantities),
    so that a correctly calibrated sampler fails any of them with probability at most ``alpha``."""
    threshold = alpha / len(pvalues)
    return [name for name, p in pvalues.items() if p < threshold]


def _summary(ranks: dict[str, np.ndarray], pvalues: dict[str, float], *, reps: int, seed: int, L: int,
             bins: int, alpha: float, seconds: float, sizes: np.ndarray) -> str:
    bad = set(failing(pvalues, alpha))
    lines = [
        "# Simulation-based calibration of the exact path",
        "",
        f"Model `{FORMULA}`, priors " + ", ".join(f"`{k} ~ {v}`" for k, v in SIM_PRIORS.items()) + ".",
        f"Design: {sizes.size} groups of sizes {', '.join(map(str, sizes))} ({int(sizes.sum())} rows).",
        f"{reps} replications (seed {seed}), L = {L} posterior draws each (thinned by 2), "
        f"{bins} bins; family-wise alpha {alpha} (Bonferroni: {alpha / len(pvalues):.2g} per quantity). "
        f"Took {seconds:.1f} s.",
        "",
        "| quantity | chi-square p-value | bin counts | result |",
        "| --- | --- | --- | --- |",
    ]
    n_values = L + 1
    for name, p in pvalues.items():
        counts = np.bincount(ranks[name] * bins // n_values, minlength=bins)
        lines.append(f"| {name} | {p:.4g} | {' '.join(map(str, counts))} | {'FAIL' if name in bad else 'ok'} |")
    lines += ["", "FAILED: " + ", ".join(sorted(bad)) if bad else "All quantities pass.", ""]
    return "\n".join(lines)


def _summary_nuts(family: str, ranks: dict[str, np.ndarray], pvalues: dict[str, float], info: dict[str, list[float]],
                  *, reps: int, seed: int, L: int, bins: int, alpha: float, seconds: float, warmup: int,
                  draws: int) -> str:
    bad = set(failing(pvalues, alpha))
    sizes = np.asarray(NUTS_SIZES)
    n_draws = np.asarray(info["draws"])
    lines = [
        f"# Simulation-based calibration of the NUTS path: {family}",
        "",
        f"Model `{FORMULA}`, family {family}, priors "
        + ", ".join(f"`{k} ~ {v}`" for k, v in NUTS_SIM_PRIORS[family].items()) + ".",
        f"Design: {sizes.size} groups of sizes {', '.join(map(str, sizes))} ({int(sizes.sum())} rows).",
        f"{reps} replications (seed {seed}); NUTS chains of {warmup} warmup + {draws} draws, another chain while "
        f"the bulk ESS < L (draws per replication: median {np.median(n_draws):.0f}, max {n_draws.max():.0f}; "
        f"smallest ESS {min(info['ess_min']):.0f}); L = {L} draws spread evenly; "
        f"{int(np.sum(np.asarray(info['divergences']) > 0))} replications with divergences left after retries.",
        f"{bins} bins; family-wise alpha {alpha} (Bonferroni: {alpha / len(pvalues):.2g} per quantity). "
        f"Took {seconds:.1f} s (median {np.median(info['seconds'][1:] or info['seconds']):.2f} s per replication "
        "after the first, which compiles).",
        "",
        "| quantity | chi-square p-value | bin counts | result |",
        "| --- | --- | --- | --- |",
    ]
    n_values = L + 1
    for name, p in pvalues.items():
        counts = np.bincount(ranks[name] * bins // n_values, minlength=bins)
        lines.append(f"| {name} | {p:.4g} | {' '.join(map(str, counts))} | {'FAIL' if name in bad else 'ok'} |")
    lines += ["", "FAILED: " + ", ".join(sorted(bad)) if bad else "All quantities pass.", ""]
    return "\n".join(lines)


def _summary_crossed(variant: str, ranks: dict[str, np.ndarray], pvalues: dict[str, float],
                     info: dict[str, list[Any]], *, reps: int, seed: int, L: int, bins: int, alpha: float,
                     seconds: float) -> str:
    bad = set(failing(pvalues, alpha))
    formula, sim = CROSSED_VARIANTS[variant]
    d = crossed_design()
    cells = d.groupby(["a", "b"]).size()
    n_a, n_b = d["a"].nunique(), d["b"].nunique()
    methods = pd.Series(info["method"]).value_counts().to_dict()
    lines = [
        f"# Simulation-based calibration of the exact path, crossed factors: {variant}",
        "",
        f"Model `{formula}`, priors " + ", ".join(f"`{k} ~ {v}`" for k, v in sim.items()) + ".",
        f"Design: {n_a} × {n_b} levels, {n_a * n_b - cells.size} of {n_a * n_b} cells empty, 1–3 rows per cell "
        f"({len(d)} rows).",
        f"{reps} replications (seed {seed}), L = {L} posterior draws each; samplers {methods}; "
        f"{bins} bins; family-wise alpha {alpha} (Bonferroni: {alpha / len(pvalues):.2g} per quantity). "
        f"Took {seconds:.1f} s (median {np.median(info['seconds']):.1f} s per replication).",
        "",
        "| quantity | chi-square p-value | bin counts | result |",
        "| --- | --- | --- | --- |",
    ]
    for name, p in pvalues.items():
        counts = np.bincount(ranks[name] * bins // (L + 1), minlength=bins)
        lines.append(f"| {name} | {p:.4g} | {' '.join(map(str, counts))} | {'FAIL' if name in bad else 'ok'} |")
    lines += ["", "FAILED: " + ", ".join(sorted(bad)) if bad else "All quantities pass.", ""]
    return "\n".join(lines)


FAMILIES = ("gaussian-exact", *NUTS_FAMILIES, "crossed", "crossed-slopes")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run SBC per family, write ranks and summaries; 1 if any quantity fails.

    ``gaussian-exact`` (the default) writes ``ranks.csv`` and ``summary.md``; a NUTS family
    writes ``ranks-<family>.csv`` and ``summary-<family>.md``.
    """
    ap = argparse.ArgumentParser(prog="python -m validation.sbc", description=__doc__.splitlines()[0])
    ap.add_argument("--family", nargs="+", choices=FAMILIES, default=["gaussian-exact"],
                    help="which checks to run: the exact Gaussian path and/or the NUTS path's families")
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--draws", type=int, default=99, help="L, posterior draws per fit (L + 1 divisible by --bins)")
    ap.add_argument("--bins", type=int, default=20)
    ap.add_argument("--alpha", type=float, default=0.001, help="family-wise level of the uniformity tests")
    ap.add_argument("--n-groups", type=int, default=8, help="groups of the gaussian-exact design")
    ap.add_argument("--warmup", type=int, default=300, help="NUTS warmup iterations per chain")
    ap.add_argument("--chain-draws", type=int, default=300, help="NUTS draws per chain")
    ap.add_argument("--out", default="validation/_out")
    args = ap.parse_args(argv)
    if (args.draws + 1) % args.bins:
        ap.error(f"--bins ({args.bins}) must divide --draws + 1 ({args.draws + 1})")
    if args.reps < 5 * args.bins:
        ap.error(f"--reps ({args.reps}) should be at least 5 × --bins ({args.bins}) for the chi-square test")
    os.makedirs(args.out, exist_ok=True)

    def tick(done: int, total: int) -> None:
        if done % 10 == 0 or done == total:
            print(f"  {done}/{total} replications", file=sys.stderr)

    rc = 0
    for family in dict.fromkeys(args.family):
        t0 = time.perf_counter()
        if family == "gaussian-exact":
            ranks = run_sbc(args.reps, args.seed, n_groups=args.n_groups, draws_per_fit=args.draws, progress=tick)
            seconds = time.perf_counter() - t0
            pvalues = uniformity_pvalues(ranks, args.draws, args.bins)
            text = _summary(ranks, pvalues, reps=args.reps, seed=args.seed, L=args.draws, bins=args.bins,
                            alpha=args.alpha, seconds=seconds, sizes=default_sizes(args.n_groups))
            suffix = ""
        elif family.startswith("crossed"):
            variant = "slopes" if family == "crossed-slopes" else "intercepts"
            print(f"SBC of the exact path, crossed {variant}:", file=sys.stderr)
            cinfo: dict[str, list[Any]] = {}
            ranks = run_sbc_crossed(args.reps, args.seed, variant=variant, draws_per_fit=args.draws, progress=tick,
                                    info=cinfo)
            seconds = time.perf_counter() - t0
            pvalues = uniformity_pvalues(ranks, args.draws, args.bins)
            text = _summary_crossed(variant, ranks, pvalues, cinfo, reps=args.reps, seed=args.seed, L=args.draws,
                                    bins=args.bins, alpha=args.alpha, seconds=seconds)
            suffix = f"-{family}"
        else:
            print(f"SBC of the NUTS path, {family}:", file=sys.stderr)
            info: dict[str, list[float]] = {}
            ranks = run_sbc_nuts(family, args.reps, args.seed, draws_per_fit=args.draws, warmup=args.warmup,
                                 draws=args.chain_draws, progress=tick, info=info)
            seconds = time.perf_counter() - t0
            pvalues = uniformity_pvalues(ranks, args.draws, args.bins)
            text = _summary_nuts(family, ranks, pvalues, info, reps=args.reps, seed=args.seed, L=args.draws,
                                 bins=args.bins, alpha=args.alpha, seconds=seconds, warmup=args.warmup,
                                 draws=args.chain_draws)
            suffix = f"-{family}"
        pd.DataFrame(ranks).rename_axis("rep").to_csv(os.path.join(args.out, f"ranks{suffix}.csv"))
        with open(os.path.join(args.out, f"summary{suffix}.md"), "w") as fh:
            fh.write(text)
        print(text)
        rc |= 1 if failing(pvalues, args.alpha) else 0
    return rc


if __name__ == "__main__":
    sys.exit(main())
