"""The pooling path: every group's estimate as the population SD τ goes from 0 to very large.

The population SD is the knob of DESIGN.md: τ = 0 is the pooled model, a very large τ the
unpooled one, and every value in between a partially pooled model with τ fixed.
:func:`pooling_path` sweeps τ over a grid and returns a :class:`PoolingPath`: each group's
posterior mean and central interval at every τ, and the marginal posterior density of τ on the
same grid (the figure of Gelman et al., BDA3 §5.5, for the eight schools).

Two routes:

* **closed form** (Gaussian family, one varying intercept ``(1 | g)``, ``method`` unset or
  ``"exact"``).  Given τ and σ, β and the group values are jointly Gaussian
  (:func:`~poolwise.infer.exact.conditional_moments`); with known standard errors (σ ≡ 1) the
  group intercepts' posterior given τ is Gaussian in closed form.  With σ unknown, σ is
  integrated out numerically: a quadrature over log σ of p(σ | τ, y) ∝ p(y | σ, τ) p(σ) on an
  adaptive grid per τ (all τ at once, vectorized), and the group intercepts' moments are the
  mixture's moments (law of total variance); the interval limits are the mixture's exact
  quantiles.  The same quadrature gives p(y | τ) and so p(τ | y) ∝ p(y | τ) p(τ).  No draws:
  the path is deterministic and takes milliseconds.
* **fixed-SD fits** (other families, varying slopes, several grouping factors, or
  ``method="nuts"``).  One :func:`poolwise.fit` per grid point with the swept factor's group
  SDs fixed at τ (``"pooled"`` at τ = 0) and every other group term hierarchical (its SDs
  learned at each τ), on a coarser grid, and the hierarchical fit for the posterior of τ (a
  kernel density estimate of its draws of the followed term's SD on log τ).  With several
  grouping factors, ``factor`` names the one whose SD moves.

References
----------
Gelman, A., Carlin, J. B., Stern, H. S., Dunson, D. B., Vehtari, A. and Rubin, D. B. (2013).
Bayesian Data Analysis, 3rd ed., Section 5.4–5.5 (Figures 5.5–5.7).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from . import data as _data
from .errors import SpecError
from .fit import Fit, fit
from .infer import Progress
from .infer import exact as _exact
from .priors import Prior
from .reduce import Reduced, reduce
from .spec import BoundSpec, GroupTerm, ModelSpec, find_term, term_key

__all__ = ["pooling_path", "PoolingPath", "default_grid", "EXACT_POINTS", "FIT_POINTS"]

#: grid points of the closed-form path (log-spaced, plus τ = 0)
EXACT_POINTS = 100
#: grid points of the fixed-SD-fit path (log-spaced, plus τ = 0)
FIT_POINTS = 12
#: the log-spaced grid spans [LOW, HIGH] × the data scale
LOW, HIGH = 1e-3, 1e2


@dataclass(frozen=True, eq=False)
class PoolingPath:
    """Each group's estimate along a grid of fixed population SDs τ, and p(τ | y) on the grid.

    Attributes
    ----------
    formula
        The model's formula.
    grid
        The τ values, ascending, shape (G,); ``grid[0] == 0`` (the pooled model) by default.
    groups
        Group labels, shape (J,), in the order of the columns of ``mean``.
    n
        Rows per group, shape (J,).
    mean, sd, lo, hi
        Posterior mean, SD and central ``prob`` interval of each group's coefficient (the group
        intercept Intercept + b_j by default) at each τ, shape (G, J).
    density
        Marginal posterior density of τ at each grid point, per unit τ, normalized over the
        grid; shape (G,).  NaN where it is not available (τ = 0 on the fit route).
    prob
        Mass of the intervals.
    method
        ``"closed form"`` or the fits' method (``"exact"``, ``"nuts"``).
    group_column, outcome, term
        The grouping factor, the outcome and the group term (``"1|county"``).
    scale
        The data scale the default grid is a multiple of.
    tau_draws
        The hierarchical fit's draws of τ on the fit route (``None`` on the closed-form route).
    other_sds
        On the fit route, the posterior mean of each learned SD of the other group terms at each
        τ, ``{"sd(Intercept|d)": array (G,)}`` (empty for one grouping factor).
    notes
        How the numbers were computed (intervals, quadrature), in words.
    info
        Seconds taken and the quadrature settings.
    """

    formula: str
    grid: np.ndarray
    groups: list[str]
    n: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    density: np.ndarray
    prob: float
    method: str
    group_column: str
    outcome: str
    term: str
    scale: float
    tau_draws: np.ndarray | None = None
    other_sds: dict[str, np.ndarray] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def pooled(self) -> pd.Series | None:
        """The group estimates at τ = 0 (every group at the pooled value); ``None`` without τ = 0."""
        if self.grid[0] != 0:
            return None
        return pd.Series(self.mean[0], index=pd.Index(self.groups, name=self.group_column), name="pooled")

    @property
    def unpooled(self) -> pd.Series:
        """The group estimates at the largest τ of the grid (each group essentially on its own)."""
        return pd.Series(self.mean[-1], index=pd.Index(self.groups, name=self.group_column), name="unpooled")

    def table(self) -> pd.DataFrame:
        """Long table: one row per (τ, group) with ``tau``, ``group``, ``n``, ``mean``, ``sd``, ``lo``, ``hi``."""
        G, J = self.mean.shape
        return pd.DataFrame({
            "tau": np.repeat(self.grid, J),
            "group": np.tile(np.asarray(self.groups, dtype=object), G),
            "n": np.tile(self.n, G),
            "mean": self.mean.ravel(),
            "sd": self.sd.ravel(),
            "lo": self.lo.ravel(),
            "hi": self.hi.ravel(),
        })

    def tau_posterior(self) -> pd.DataFrame:
        """p(τ | y) on the grid: ``tau``, ``density`` (per unit τ) and ``density_log`` (per unit log τ).

        ``.attrs`` holds ``mean`` and ``sd`` of τ by quadrature over the grid (trapezoid rule in
        log τ, plus the segment [0, τ₁] when the grid starts at 0).
        """
        out = pd.DataFrame({"tau": self.grid, "density": self.density, "density_log": self.density * self.grid})
        mean, sd = _tau_moments(self.grid, self.density)
        out.attrs.update({"mean": mean, "sd": sd})
        return out

    def plot(self, **kwargs: Any) -> Any:
        """The path figure (see :func:`poolwise.plots.plot_pooling_path`)."""
        from .plots import plot_pooling_path  # a convenience; plots only read this object

        return plot_pooling_path(self, **kwargs)

    def __repr__(self) -> str:
        return (f"<poolwise.PoolingPath {self.formula!r} groups={self.n_groups} points={self.grid.size} "
                f"tau=[{self.grid[0]:.3g}, {self.grid[-1]:.3g}] method={self.method}>")

    def _repr_html_(self) -> str:
        """The path in a notebook (:func:`poolwise.notebook.path_html`)."""
        from .notebook import path_html  # a convenience; the notebook view only reads this object

        return path_html(self)


def default_grid(scale: float, points: int = EXACT_POINTS) -> np.ndarray:
    """τ = 0 and ``points`` log-spaced values from 10⁻³ to 10² × ``scale``."""
    return np.concatenate([[0.0], scale * np.logspace(math.log10(LOW), math.log10(HIGH), points)])


def pooling_path(
    formula: str | ModelSpec,
    data: _data.DataLike,
    *,
    family: str | None = None,
    priors: Mapping[str, str | Prior] | None = None,
    grid: Sequence[float] | np.ndarray | None = None,
    prob: float = 0.95,
    method: str | None = None,
    seed: int = 0,
    term: str | None = None,
    factor: str | None = None,
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    progress: Progress | None = None,
) -> PoolingPath:
    """Every group's estimate as the population SD τ goes from 0 (pooled) to very large (unpooled).

    Parameters
    ----------
    formula, data, family, priors
        As for :func:`poolwise.fit`; the pooling is what is swept.
    grid
        The τ values (non-negative).  Default: τ = 0 and 100 values log-spaced from 10⁻³ to
        10² × the data scale on the closed-form route, 12 on the fit route.
    prob
        Mass of the central intervals.
    method
        ``None`` (closed form where it applies, else the default method of :func:`poolwise.fit`
        at each τ), ``"exact"`` or ``"nuts"`` (fixed-SD fits with that method).
    seed
        Seed of the fits (unused by the closed form, which draws nothing).
    term
        The group term followed on the fit route (default the swept factor's first term).
    factor
        The grouping factor whose population SD is swept (``"s"``, or its group term as the
        formula writes it, ``"1|s"``); the other group terms stay hierarchical, their SDs
        learned at each τ (see :attr:`PoolingPath.other_sds`).  Needed when the model has
        several grouping factors, unless ``term`` names one of them.
    chains, draws, warmup
        Sampler settings of the fits on the fit route.
    progress
        Optional callback ``(stage, fraction)``.

    Returns
    -------
    PoolingPath

    Raises
    ------
    DataError, FormulaError, SpecError, PriorError
        For bad input, before any computation; a :class:`~poolwise.errors.SpecError` when the
        model has several grouping factors and neither ``factor`` nor ``term`` says which SD
        to sweep.

    Notes
    -----
    On the closed-form route the group intercept θ_j = Intercept + b_j has, given (σ, τ), a
    Gaussian posterior with mean and variance from
    :func:`~poolwise.infer.exact.conditional_moments` (β integrated out under its normal
    prior).  With σ unknown its posterior given τ is a mixture over p(σ | τ, y), computed by
    quadrature over log σ on an adaptive grid (located per τ in two refinements, then 41 points
    over ±8 SD); the mean is E_σ[E(θ_j | σ, τ)], the variance E_σ[Var] + Var_σ[E], and the
    interval limits are the mixture's quantiles (Newton's method on its CDF).  The posterior
    density of τ is p(τ) ∫ p(y | σ, τ) p(σ) dσ, normalized over the grid.

    Examples
    --------
    >>> import poolwise as pw
    >>> path = pw.pooling_path("y | se(sigma) ~ 1 + (1 | school)", pw.datasets.eight_schools())
    >>> path.grid.size, path.table().shape
    (101, (808, 7))
    >>> bool(abs(path.mean[0] - path.mean[0, 0]).max() < 1e-12)  # τ = 0: every school pooled
    True
    """
    t0 = time.perf_counter()
    if isinstance(formula, ModelSpec):
        base = formula.replace(pooling="hierarchical")
    else:
        base = ModelSpec(formula, family=family, pooling="hierarchical",
                         priors=dict(priors or {}))  # type: ignore[arg-type]
    if not (isinstance(prob, (int, float)) and 0 < prob < 1):
        raise SpecError(f"The 'prob' option must be a number between 0 and 1. Got {prob!r}.", option="prob")
    if method not in (None, "exact", "nuts"):
        raise SpecError(f"The 'method' option must be 'exact' or 'nuts'. Got {method!r}.", option="method")
    swept = _swept_term(base, factor, term)
    table = data if isinstance(data, _data.Table) else _data.read_table(data)
    bound = base.bind(table)
    intercept = term in (None, "1", "Intercept", f"1|{bound.group_column}", bound.sd_name)
    closed = bound.spec.fam.exact and bound.simple and method in (None, "exact") and intercept
    points = EXACT_POINTS if closed else FIT_POINTS
    tau = default_grid(bound.scale, points) if grid is None else _check_grid(grid)
    if closed:
        out = _closed_form(bound, tau, prob, progress)
    else:
        out = _by_fits(bound, table, tau, prob, method, seed, term, swept, chains, draws, warmup, progress)
    out.info["seconds"] = time.perf_counter() - t0
    return out


def _swept_term(spec: ModelSpec, factor: str | None, term: str | None) -> GroupTerm | None:
    """The group term whose SD the path sweeps: named by ``factor``, else the grouping factor of
    ``term``, else the only one (``None`` for a formula without group terms, refused at bind).

    Raises
    ------
    SpecError
        For a factor that is not in the formula, a term outside it, or several grouping factors
        and neither named.
    """
    terms = spec.group_terms
    if factor is not None:
        chosen = find_term(factor, terms, spec.formula, option="factor", what="The factor")
        if term is not None and _factor_of(term, terms) not in (None, chosen):
            raise SpecError(f"The term {term!r} is not a term of the factor {factor!r} whose SD the path sweeps.",
                            hint=f"Follow a term of ({term_key(chosen)}), or leave 'term' out.", option="term")
        return chosen
    if len(terms) <= 1:
        return terms[0] if terms else None
    chosen = _factor_of(term, terms) if term is not None else None
    if chosen is None:
        listed = ", ".join(repr(t.factor) for t in terms)
        raise SpecError(f"The formula {spec.formula} has {len(terms)} grouping factors ({listed}): the pooling path "
                        "moves one factor's population SD, with the others learned.",
                        hint=f"Say which with factor=, e.g. factor={terms[0].factor!r}.", option="factor")
    return chosen


def _factor_of(term: str | None, terms: tuple[GroupTerm, ...]) -> GroupTerm | None:
    """The group term whose factor ``term`` (``"1|g"``, ``"x|g"``, ``"sd(x|g)"``) names, if any."""
    if term is None:
        return None
    text = str(term).strip()
    if text.startswith("sd(") and text.endswith(")"):
        text = text[3:-1]
    expr, bar, factor = text.rpartition("|")
    if not bar:
        return None
    expr = "Intercept" if expr.strip() in ("1", "Intercept") else expr.strip()
    same = [t for t in terms if t.factor == factor.strip()]  # (several: blocks on one factor)
    return next((t for t in same if expr in t.exprs), same[0] if same else None)


def _check_grid(grid: Sequence[float] | np.ndarray) -> np.ndarray:
    try:
        g = np.asarray(grid, dtype=float).ravel()
    except (TypeError, ValueError):
        raise SpecError(f"The 'grid' option must be a sequence of numbers (population SDs). Got {grid!r}.",
                        option="grid") from None
    if g.size == 0 or not np.all(np.isfinite(g)) or np.any(g < 0):
        raise SpecError("The 'grid' option must hold at least one finite, non-negative population SD.",
                        hint="Pass e.g. grid=[0, 0.1, 1, 10], or leave it out for the default.", option="grid")
    return np.unique(g)


# ----------------------------------------------------------------------------------------------
# closed form


def _closed_form(bound: BoundSpec, tau: np.ndarray, prob: float, progress: Progress | None) -> PoolingPath:
    red = reduce(bound)
    hp = _exact.HyperPrior.from_bound(bound, red.shift)
    G, J = tau.size, red.n_groups
    if progress:
        progress("sigma quadrature", 0.0)
    if bound.has_sigma:
        log_sigma, weights, log_evidence = _sigma_quadrature(red, hp, tau, bound.scale)
    else:  # known standard errors: σ ≡ 1
        log_sigma = np.zeros((G, 1))
        weights = np.ones((G, 1))
        log_evidence = _exact.log_marginal(red, hp, np.ones(G), tau)
    K = log_sigma.shape[1]
    if progress:
        progress("group moments", 0.5)
    m, v = _theta_moments(bound, red, hp, np.exp(log_sigma).ravel(), np.repeat(tau, K))
    m, v = m.reshape(G, K, J), v.reshape(G, K, J)
    w = weights[:, :, None]
    mean = (w * m).sum(axis=1)
    var = (w * v).sum(axis=1) + (w * (m - mean[:, None, :]) ** 2).sum(axis=1)
    sd = np.sqrt(np.maximum(var, 0.0))
    a = (1.0 - prob) / 2.0
    if K == 1:
        z = float(special.ndtri(1.0 - a))
        lo, hi = mean - z * sd, mean + z * sd
        how = "Intervals are exact: given τ the group intercepts are Gaussian (σ known)."
    else:
        s = np.sqrt(np.maximum(v, 1e-300))
        lo = _mixture_quantile(weights, m, s, a, mean, sd)
        hi = _mixture_quantile(weights, m, s, 1.0 - a, mean, sd)
        how = (f"σ integrated out by quadrature over log σ ({K} points per τ); intervals are the exact quantiles "
               "of the resulting mixture of Gaussians.")
    # p(τ | y) ∝ p(y | τ) p(τ) on the grid
    log_post = log_evidence + (hp.tau.logpdf(tau) if hp.tau is not None else 0.0)
    density = _normalize_density(tau, np.asarray(log_post, dtype=float))
    if progress:
        progress("done", 1.0)
    block = bound.blocks[0]
    return PoolingPath(
        formula=bound.spec.formula, grid=tau, groups=list(block.levels), n=block.sizes(), mean=mean, sd=sd,
        lo=lo, hi=hi, density=density, prob=prob, method="closed form", group_column=block.factor,
        outcome=bound.spec.outcome, term=block.term.value_name(block.exprs[0]), scale=bound.scale,
        notes=(how, f"p(τ | y) under the prior {hp.tau}, normalized over the grid."),
        info={"sigma_points": K, "tau_prior": str(hp.tau)},
    )


def _log_post_sigma(red: Reduced, hp: _exact.HyperPrior, u: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """log p(y | σ, τ) + log p(log σ) at σ = exp(u), u of shape (G, K), τ of shape (G,)."""
    sigma = np.exp(u)
    taus = np.broadcast_to(tau[:, None], u.shape)
    ll = _exact.log_marginal(red, hp, sigma.ravel(), taus.ravel()).reshape(u.shape)
    if hp.sigma is not None:
        ll = ll + hp.sigma.logpdf(sigma) + u
    return np.where(np.isfinite(ll), ll, -np.inf)


def _sigma_quadrature(red: Reduced, hp: _exact.HyperPrior, tau: np.ndarray, scale: float,
                      points: int = 41) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quadrature nodes u = log σ (G, K), normalized weights (G, K) and log p(y | τ) (G,).

    p(σ | τ, y) is located per τ on a coarse grid (step 0.25 in log σ, widened while the mode
    sits on its edge), then refined twice: a window of ±8 SD around the mode (SD from the
    local curvature), then ±8 SD around the window's mean (SD from its moments).  The final
    nodes are uniform in log σ, where the rule is spectrally accurate for a smooth, decaying
    integrand.
    """
    G = tau.size
    c = math.log(scale)
    lo, hi = np.full(G, c - 12.0), np.full(G, c + 4.0)
    for _ in range(6):  # coarse pass, widened if the mode lies on an edge
        n = int(round((hi - lo).max() / 0.25)) + 1
        u = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, n)[None]
        f = _log_post_sigma(red, hp, u, tau)
        i = np.argmax(f, axis=1)
        low_edge, high_edge = i == 0, i == n - 1
        if not (low_edge.any() or high_edge.any()):
            break
        width = hi - lo
        lo = np.where(low_edge, lo - width, lo)
        hi = np.where(high_edge, hi + width, hi)
    h = (u[:, 1] - u[:, 0])
    rows = np.arange(G)
    i = np.clip(i, 1, n - 2)
    f0, f1, f2 = f[rows, i - 1], f[rows, i], f[rows, i + 1]
    curv = f0 - 2.0 * f1 + f2
    ok = np.isfinite(curv) & (curv < 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(ok, 0.5 * h * (f0 - f2) / curv, 0.0)
        sd = np.where(ok, h / np.sqrt(-np.where(ok, curv, -1.0)), h)
    center = u[rows, i] + np.clip(shift, -h, h)
    sd = np.clip(sd, 1e-6, 2.0 * h)
    for _ in range(2):  # two refinements: around the mode, then around the mean
        u = center[:, None] + 8.0 * sd[:, None] * np.linspace(-1.0, 1.0, points)[None]
        f = _log_post_sigma(red, hp, u, tau)
        fmax = f.max(axis=1, keepdims=True)
        w = np.exp(f - fmax)
        w /= w.sum(axis=1, keepdims=True)
        center = (w * u).sum(axis=1)
        sd = np.sqrt(np.maximum((w * (u - center[:, None]) ** 2).sum(axis=1), 1e-12))
    du = u[:, 1] - u[:, 0]
    log_evidence = fmax[:, 0] + np.log(np.exp(f - fmax).sum(axis=1)) + np.log(du)
    return u, w, log_evidence


def _theta_moments(bound: BoundSpec, red: Reduced, hp: _exact.HyperPrior, sigma: np.ndarray,
                   tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of θ_j = Intercept + b_j given (σ, τ), each (D, J).

    With b_j | β ~ N(k_j (sy_j − u_j'β), σ² k_j) and β ~ N(m, P⁻¹): θ_j = k_j sy_j + c_j'β + e
    with c_j = e₀ − k_j u_j, so E = k_j sy_j + c_j'm and Var = σ² k_j + c_j' P⁻¹ c_j.  With the
    statistics taken about a shift, β is β* and the intercept β₀ = β₀* + c_y − c_x'β*: then
    c_j = e₀ − c_x − k_j u_j and E gains c_y.
    """
    beta_mean, L, k, s2 = _exact.conditional_moments(red, hp, sigma, tau)
    assert k is not None
    names = bound.coef_names
    i0 = names.index("Intercept") if "Intercept" in names else None
    mean = k * (red.sy[None, :] - beta_mean @ red.u.T)
    var = s2[:, None] * k
    if red.p:
        Linv = np.linalg.inv(L)
        Pinv = np.swapaxes(Linv, 1, 2) @ Linv  # (L L')⁻¹ = L'⁻¹ L⁻¹
        uPu = np.einsum("jp,dpq,jq->dj", red.u, Pinv, red.u)
        var = var + k**2 * uPu
        if i0 is not None:
            d = -(red.shift.x if red.shift.active and red.shift.x is not None else np.zeros(red.p))
            d = np.array(d, dtype=float)
            d[i0] = 1.0
            y0 = red.shift.y if red.shift.active else 0.0
            Pd = Pinv @ d  # (D, p)
            mean = mean + (beta_mean @ d + y0)[:, None]
            var = var + (Pd @ d)[:, None] - 2.0 * k * (Pd @ red.u.T)
    return mean, np.maximum(var, 0.0)


def _mixture_quantile(w: np.ndarray, m: np.ndarray, s: np.ndarray, q: float, mean: np.ndarray,
                      sd: np.ndarray, tol: float = 1e-9, iters: int = 60) -> np.ndarray:
    """The q-quantile of Σ_k w_k N(m_k, s_k²) per (τ, group): safeguarded Newton, vectorized.

    ``w`` (G, K), ``m`` and ``s`` (G, K, J); starts at the normal approximation (moments
    ``mean``, ``sd``), keeps a bracket and bisects where a Newton step leaves it; stops when
    every step is below ``tol`` × the mixture's SD.
    """
    wk = w[:, :, None]
    x = mean + float(special.ndtri(q)) * sd
    lo = (m - 40.0 * s).min(axis=1)
    hi = (m + 40.0 * s).max(axis=1)
    for _ in range(iters):
        z = (x[:, None, :] - m) / s
        F = (wk * special.ndtr(z)).sum(axis=1) - q
        dens = (wk * np.exp(-0.5 * z * z) / (s * math.sqrt(2 * math.pi))).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = F / dens
        done = np.isfinite(step) & (np.abs(step) <= tol * sd)
        if done.all():
            break
        lo = np.where(F < 0, x, lo)
        hi = np.where(F > 0, x, hi)
        new = x - step
        bad = ~np.isfinite(new) | (new <= lo) | (new >= hi)
        new = np.where(bad, 0.5 * (lo + hi), new)
        x = np.where(done, x, new)
    return x


def _normalize_density(tau: np.ndarray, log_post: np.ndarray) -> np.ndarray:
    """exp(log_post) scaled to integrate to 1 over the grid (per unit τ; see :func:`_tau_moments`)."""
    finite = np.isfinite(log_post)
    if not finite.any():
        return np.full(tau.shape, np.nan)
    dens = np.where(finite, np.exp(log_post - log_post[finite].max()), 0.0)
    total = _integrate(tau, dens)
    return dens / total if total > 0 else np.full(tau.shape, np.nan)


def _integrate(tau: np.ndarray, g: np.ndarray) -> float:
    """∫ g(τ) dτ over the grid: trapezoid rule in log τ over the positive points (spectrally
    accurate on a log-uniform grid) plus the trapezoid [0, τ₁] in τ when the grid starts at 0."""
    g = np.where(np.isfinite(g), g, 0.0)
    pos = tau > 0
    t, gp = tau[pos], g[pos]
    y, x = gp * t, np.log(t)
    total = float(0.5 * ((y[1:] + y[:-1]) * np.diff(x)).sum()) if t.size > 1 else 0.0
    if t.size and not pos.all():
        total += 0.5 * (float(g[~pos][0]) + float(gp[0])) * float(t[0])
    return total


def _tau_moments(tau: np.ndarray, density: np.ndarray) -> tuple[float, float]:
    """Mean and SD of τ under the density on the grid (NaN where it is not available)."""
    if not np.isfinite(density[tau > 0]).any():
        return math.nan, math.nan
    mass = _integrate(tau, density)
    mean = _integrate(tau, tau * density) / mass
    second = _integrate(tau, tau**2 * density) / mass
    return mean, math.sqrt(max(second - mean**2, 0.0))


# ----------------------------------------------------------------------------------------------
# fixed-SD fits


def _by_fits(bound: BoundSpec, table: _data.Table, tau: np.ndarray, prob: float, method: str | None, seed: int,
             term: str | None, swept: GroupTerm | None, chains: int, draws: int, warmup: int,
             progress: Progress | None) -> PoolingPath:
    spec = bound.spec
    steps = tau.size + 1
    rows: list[pd.DataFrame] = []
    others: dict[str, list[float]] = {}

    def run(i: int, pooling: str | float) -> Fit:
        def step(stage: str, frac: float) -> None:
            if progress:
                what = "hierarchical" if pooling == "hierarchical" else f"tau = {pooling}"
                progress(f"{what}: {stage}", (i + frac) / steps)

        # the swept factor's SDs at τ; every other group term hierarchical (learned)
        setting: Any = pooling if swept is None else {term_key(swept): pooling}
        return fit(spec.replace(pooling=setting), table, method=method, seed=seed + i, chains=chains, draws=draws,
                   warmup=warmup, progress=step)

    hier = run(0, "hierarchical")
    if term is None and swept is not None:
        term = swept.value_name(swept.exprs[0])
    name = _term_label(hier, term)
    learned = [n for b in hier.bound.blocks if swept is None or b.term != swept
               if b.Sigma is None for n in b.sd_names]
    for i, t in enumerate(tau, start=1):
        f = run(i, "pooled" if t == 0 else float(t))
        rows.append(f.group_estimates(prob, term=name))
        for n in learned:
            others.setdefault(n, []).append(float(f.param(n).mean()))
    first = rows[0]
    mean = np.stack([r["mean"].to_numpy(dtype=float) for r in rows])
    sd = np.stack([r["sd"].to_numpy(dtype=float) for r in rows])
    lo = np.stack([r["lo"].to_numpy(dtype=float) for r in rows])
    hi = np.stack([r["hi"].to_numpy(dtype=float) for r in rows])
    i, k = hier._resolve_term(name)
    block = hier.bound.blocks[i]
    sd_draws = hier.param(block.term.sd_name(block.exprs[k])).ravel()
    density = _kde_density(tau, sd_draws)
    if progress:
        progress("done", 1.0)
    return PoolingPath(
        formula=spec.formula, grid=tau, groups=[str(g) for g in first.index], n=first["n"].to_numpy(), mean=mean,
        sd=sd, lo=lo, hi=hi, density=density, prob=prob, method=hier.method, group_column=block.factor,
        outcome=spec.outcome, term=block.term.value_name(block.exprs[k]), scale=bound.scale, tau_draws=sd_draws,
        other_sds={n: np.asarray(v) for n, v in others.items()},
        notes=(f"One fit per τ with every group SD of {block.factor} fixed at τ"
               + (f", the other group terms' SDs learned ({', '.join(learned)})" if learned else "")
               + f" ({hier.method}); intervals are posterior quantiles of its draws.",
               f"p(τ | y): kernel density of the hierarchical fit's draws of {block.term.sd_name(block.exprs[k])} "
               "on log τ, normalized over the grid."),
        info={"fits": int(tau.size) + 1},
    )


def _term_label(f: Fit, term: str | None) -> str:
    i, k = f._resolve_term(term)
    block = f.bound.blocks[i]
    return block.term.value_name(block.exprs[k])


def _kde_density(tau: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Density of τ on the grid (per unit τ) from a Gaussian KDE of log τ draws; NaN at τ = 0."""
    from scipy.stats import gaussian_kde

    out = np.full(tau.shape, np.nan)
    d = np.log(draws[np.isfinite(draws) & (draws > 0)])
    pos = tau > 0
    if d.size < 2 or np.ptp(d) == 0 or not pos.any():
        return out
    out[pos] = gaussian_kde(d)(np.log(tau[pos])) / tau[pos]
    total = _integrate(tau[pos], out[pos])
    if total > 0:
        out[pos] /= total
    return out
