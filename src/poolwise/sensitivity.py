"""Prior sensitivity: power-scaling diagnostics and the same model fitted under several priors.

:func:`sensitivity` follows Kallioinen et al. (2023) as implemented in the R package
``priorsense``: the prior p(θ) or the likelihood p(y | θ) of a fitted model is raised to a
power α close to 1 (``alpha = 0.99`` and ``1.01``), the change is applied to the existing
draws with Pareto-smoothed importance weights w ∝ p(θ)^(α−1) (or p(y | θ)^(α−1)), and the
cumulative Jensen–Shannon distance between the weighted and the unweighted marginal of each
quantity measures how much it moves.  Dividing by the change in log₂ α gives a derivative-like
sensitivity; a quantity sensitive to both the prior and the likelihood shows prior-data
conflict, one sensitive to the prior only a strong prior or a weak likelihood.

What is power-scaled as "the prior" is every prior listed in ``fit.priors`` (``fit.bound.priors``):
the common coefficients, ``sigma``, auxiliary parameters, the population SDs and the LKJ
prior on correlations.  The group-level distribution b_j ~ MVN(0, Σ) is *not* scaled: it is
part of the hierarchical model, not a prior the user chose, and scaling it would mix a change of
pooling into the diagnosis (priorsense does the same by default for brms models, whose
``lprior`` holds only the top-level priors).

:func:`compare_priors` fits one hierarchical model under several prior sets and returns the
estimates side by side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from . import data as _data
from .errors import SpecError
from .fit import Fit, fit
from .priors import Prior, parse_prior
from .spec import ModelSpec

__all__ = ["sensitivity", "compare_priors", "cjs_distance", "lkj_logpdf", "log_prior_draws",
           "log_likelihood_draws", "DIAGNOSES"]

#: the diagnosis of a quantity, by (prior sensitive, likelihood sensitive)
DIAGNOSES = {(True, True): "prior-data conflict", (True, False): "strong prior / weak likelihood"}
#: Pareto k above which the importance weights (and so the sensitivities) are unreliable
_K_WARN = 0.7


# -- the distance -----------------------------------------------------------------------------
def cjs_distance(
    x: np.ndarray, p_weights: np.ndarray | None = None, q_weights: np.ndarray | None = None, *,
    metric: bool = True, unsigned: bool = True,
) -> float:
    """Cumulative Jensen–Shannon distance between two weightings of the same draws.

    With P and Q the weighted empirical CDFs of ``x`` (weights ``p_weights`` and ``q_weights``,
    uniform when ``None``), evaluated at the sorted draws x₍₁₎ … x₍ₙ₋₁₎ with step widths
    Δᵢ = x₍ᵢ₊₁₎ − x₍ᵢ₎,

        CJS(P ‖ Q) = Σ Δᵢ Pᵢ log₂(Pᵢ / (½Pᵢ + ½Qᵢ)) + (Σ Δᵢ Qᵢ − Σ Δᵢ Pᵢ) / (2 ln 2),

    and the distance is √((CJS(P ‖ Q) + CJS(Q ‖ P)) / (Σ Δᵢ Pᵢ + Σ Δᵢ Qᵢ)), which lies in [0, 1].
    With ``unsigned`` the larger of the distances of x and of −x is returned (the CDF and
    the survival function), as ``priorsense::cjs_dist`` does.

    Parameters
    ----------
    x
        Draws, 1-D.
    p_weights, q_weights
        Non-negative weights of the draws (normalized here).
    metric
        Return the square root (a metric) instead of the normalized divergence.
    unsigned
        Take the maximum over x and −x.

    Returns
    -------
    float

    References
    ----------
    Nguyen H.-V., Vreeken J. (2015). Non-parametric Jensen-Shannon divergence. ECML PKDD 2015,
    LNCS 9285. Kallioinen N., Paananen T., Bürkner P.-C., Vehtari A. (2023). Detecting and
    diagnosing prior and likelihood sensitivity with power-scaling. Statistics and Computing 34, 57.

    Examples
    --------
    >>> cjs_distance(np.array([0.0, 1.0, 2.0]))
    0.0
    """
    x = np.asarray(x, dtype=float).reshape(-1)
    n = x.size
    p = np.full(n, 1.0 / n) if p_weights is None else np.asarray(p_weights, dtype=float).reshape(-1)
    q = np.full(n, 1.0 / n) if q_weights is None else np.asarray(q_weights, dtype=float).reshape(-1)
    if p.shape != x.shape or q.shape != x.shape:
        raise ValueError("cjs_distance: the weights must have one entry per draw.")
    if n < 2:
        return 0.0
    out = _cjs(x, p, q, metric)
    if unsigned:
        out = max(out, _cjs(-x, p, q, metric))
    return out


def _cjs(x: np.ndarray, p: np.ndarray, q: np.ndarray, metric: bool) -> float:
    order = np.argsort(x, kind="stable")
    xs = x[order]
    width = np.diff(xs)
    P = np.cumsum(p[order] / p.sum())[:-1]
    Q = np.cumsum(q[order] / q.sum())[:-1]
    p_int = float(np.sum(P * width))
    q_int = float(np.sum(Q * width))
    bound = p_int + q_int
    if bound <= 0:
        return 0.0
    M = 0.5 * P + 0.5 * Q
    with np.errstate(divide="ignore", invalid="ignore"):
        t_pq = np.where(P > 0, width * P * (np.log2(P) - np.log2(M)), 0.0)
        t_qp = np.where(Q > 0, width * Q * (np.log2(Q) - np.log2(M)), 0.0)
    cjs_pq = float(np.sum(t_pq)) + 0.5 / math.log(2) * (q_int - p_int)
    cjs_qp = float(np.sum(t_qp)) + 0.5 / math.log(2) * (p_int - q_int)
    out = max(0.0, (cjs_pq + cjs_qp) / bound)
    return math.sqrt(out) if metric else out


# -- the components ---------------------------------------------------------------------------
def lkj_logpdf(R: np.ndarray, eta: float) -> np.ndarray:
    """Log density of the LKJ(η) distribution at correlation matrices ``R`` (…, q, q).

    log p(R) = (η − 1) log det R − log c_q(η), with the normalizing constant of Lewandowski,
    Kurowicka & Joe (2009), eq. 16:
    log c_q(η) = Σ_{k=1}^{q−1} [(2η − 2 + q − k)(q − k) log 2 + (q − k) log B(η + (q−k−1)/2, η + (q−k−1)/2)].
    """
    R = np.asarray(R, dtype=float)
    q = R.shape[-1]
    _, logdet = np.linalg.slogdet(R)
    log_c = 0.0
    for k in range(1, q):
        b = eta + (q - k - 1) / 2
        log_c += (2 * eta - 2 + q - k) * (q - k) * math.log(2.0) + (q - k) * float(special.betaln(b, b))
    return np.asarray((eta - 1.0) * logdet - log_c)


def log_prior_draws(f: Fit) -> np.ndarray:
    """Σ log p(θ) over the priors of ``f.bound.priors``, per draw, (chain, draw).

    The group-level distribution of the group values is not included (see the module notes).
    """
    C, D = f.draws.beta.shape[:2]
    out = np.zeros((C, D))
    for name, prior in f.bound.priors.items():
        if prior.dist == "lkj":
            for block, bd in zip(f.bound.blocks, f.block_draws):
                if name == f"cor({block.factor})" and bd.corr is not None:
                    out = out + lkj_logpdf(bd.corr, prior.args[0])
            continue
        try:
            values = f.param(name)
        except KeyError:
            continue
        out = out + prior.logpdf(values)
    return out


def log_likelihood_draws(f: Fit) -> np.ndarray:
    """The log-likelihood of all rows per draw, (chain, draw), summed chunk by chunk."""
    C, D = f.draws.beta.shape[:2]
    out = np.zeros((C, D))
    for _, ll in f.log_likelihood_chunks():
        out = out + ll.sum(axis=-1)
    return out


def _quantities(f: Fit) -> tuple[list[str], list[str], np.ndarray]:
    """Names, kinds and draws (samples, quantities) of every parameter and group estimate."""
    names: list[str] = []
    kinds: list[str] = []
    cols: list[np.ndarray] = []
    skip = set(f.group_vars)
    coefs = set(f.bound.coef_names)
    for name in f._core_idata().posterior.data_vars:
        name = str(name)
        if name in skip:
            continue
        names.append(name)
        kinds.append("coefficient" if name in coefs else "hyperparameter")
        cols.append(np.asarray(f.param(name), dtype=float).reshape(-1))
    block = f.bound.blocks[0]
    e = block.exprs[0]
    est = f._group_coefficient(0, 0).reshape(-1, block.n_groups)  # first block, first term
    for j, level in enumerate(block.levels):
        names.append(_group_name(e, block.factor, level))
        kinds.append("group")
        cols.append(est[:, j])
    return names, kinds, np.column_stack(cols)


def _group_name(expr: str, factor: str, level: str) -> str:
    """Row name of a group's estimate: ``Intercept[g=a]`` (common coefficient + group value)."""
    return f"{expr}[{factor}={level}]"


def _scaled_weights(log_c: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """PSIS weights (normalized) of power-scaling the component ``log_c`` by ``alpha``, and k."""
    import arviz as az

    lw = (alpha - 1.0) * np.asarray(log_c, dtype=float).reshape(-1)
    if not np.all(np.isfinite(lw)):
        raise SpecError("The log prior or log-likelihood is not finite on some draws; power-scaling needs it finite.",
                        hint="Check that every prior's support covers its parameter's draws.")
    lw_s, k = az.psislw(lw - lw.max(), reff=1.0)
    w = np.exp(np.asarray(lw_s, dtype=float))
    return w / w.sum(), float(np.asarray(k))


# -- the diagnostic ---------------------------------------------------------------------------
def sensitivity(
    f: Fit, *, alphas: tuple[float, float] = (0.99, 1.01), threshold: float = 0.05,
) -> pd.DataFrame:
    """Power-scaling sensitivity of each parameter and group estimate to the prior and the likelihood.

    For each component c ∈ {prior, likelihood} and α in ``alphas`` the draws are reweighted
    by Pareto-smoothed importance weights w ∝ c(θ)^(α−1) (Vehtari et al. 2024), the cumulative
    Jensen–Shannon distance D_α between the reweighted and the original marginal of each
    quantity is computed (:func:`cjs_distance`), and the sensitivity is

        (D_lower + D_upper) / (2 log₂ α_upper),

    as ``priorsense::powerscale_sensitivity`` defines it (Kallioinen et al. 2023).

    Parameters
    ----------
    f
        A fitted model (any method, family, pooling).
    alphas
        The lower (< 1) and upper (> 1) power.
    threshold
        Sensitivity from which a component counts as influential (priorsense's default 0.05).

    Returns
    -------
    DataFrame
        One row per quantity, indexed by ``parameter`` (coefficients, ``sigma``, auxiliary
        parameters, ``sd(…)``, ``cor(…)``, then each group's estimate of the first group term,
        ``Intercept[g=a]`` = common coefficient + group value) with columns ``kind``
        (``"coefficient"``, ``"hyperparameter"``, ``"group"``), ``prior`` and ``likelihood``
        (the sensitivities), ``diagnosis`` (``"prior-data conflict"`` when both reach the
        threshold, ``"strong prior / weak likelihood"`` when only the prior does, ``"-"``
        otherwise) and ``pareto_k`` (the largest Pareto k of the four weightings; above 0.7
        the weights, and so the sensitivities, are unreliable).  ``.attrs`` holds
        ``pareto_k`` per component and α, ``threshold``, ``alphas`` and ``notes``.

    Raises
    ------
    SpecError
        For powers not on either side of 1, a non-positive threshold, or a non-finite log
        prior or log-likelihood.

    Notes
    -----
    Power-scaled are the priors in ``f.priors`` only, not the group-level distribution
    b_j ~ MVN(0, Σ) (see the module docstring); fixed settings (a pooled or unpooled Σ, known
    standard errors) have no prior and are not scaled.

    References
    ----------
    Kallioinen N., Paananen T., Bürkner P.-C., Vehtari A. (2023). Detecting and diagnosing prior
    and likelihood sensitivity with power-scaling. Statistics and Computing 34, 57.

    Examples
    --------
    >>> import poolwise as pw
    >>> f = pw.fit("reaction ~ 1 + (1 | driver)", pw.datasets.drivers(seed=1), draws=400, seed=0)
    >>> s = pw.sensitivity(f)
    >>> list(s.columns)
    ['kind', 'prior', 'likelihood', 'diagnosis', 'pareto_k']
    """
    lower, upper = (float(a) for a in alphas)
    if not (0 < lower < 1 < upper):
        raise SpecError(f"The 'alphas' option must be a power below 1 and one above 1. Got {alphas!r}.",
                        hint="Use e.g. alphas=(0.99, 1.01).", option="alphas")
    if not (threshold > 0 and math.isfinite(threshold)):
        raise SpecError(f"The 'threshold' option must be a positive number. Got {threshold!r}.", option="threshold")
    names, kinds, X = _quantities(f)
    components = {"prior": log_prior_draws(f), "likelihood": log_likelihood_draws(f)}
    denom = 2.0 * math.log2(upper)  # priorsense: the centred difference in log2(alpha)
    sens: dict[str, np.ndarray] = {}
    ks: dict[str, float] = {}
    for comp, log_c in components.items():
        dist = np.zeros(len(names))
        for alpha in (lower, upper):
            w, k = _scaled_weights(log_c, alpha)
            ks[f"{comp}@{alpha:g}"] = k
            dist += np.array([cjs_distance(X[:, m], None, w) for m in range(X.shape[1])])
        sens[comp] = dist / denom
    out = pd.DataFrame({"kind": kinds, "prior": sens["prior"], "likelihood": sens["likelihood"]},
                       index=pd.Index(names, name="parameter"))
    out["diagnosis"] = [DIAGNOSES.get((bool(p >= threshold), bool(lk >= threshold)), "-")
                        for p, lk in zip(out["prior"], out["likelihood"])]
    out["pareto_k"] = max(ks.values())
    notes = []
    bad = [k for k, v in ks.items() if v > _K_WARN]
    if bad:
        notes.append(f"Pareto k above {_K_WARN} for {', '.join(bad)}: the importance weights are unreliable, so are "
                     "the sensitivities of that component. Refit with the prior changed instead (compare_priors).")
    out.attrs.update({"pareto_k": ks, "threshold": threshold, "alphas": (lower, upper), "notes": notes})
    return out


# -- several priors ---------------------------------------------------------------------------
def compare_priors(
    formula: str | ModelSpec,
    data: _data.DataLike,
    priors: Sequence[Mapping[str, str | Prior]],
    *,
    labels: Sequence[str] | None = None,
    prob: float = 0.95,
    **fit_kwargs: Any,
) -> pd.DataFrame:
    """Fit one hierarchical model under several prior sets; the estimates side by side.

    Parameters
    ----------
    formula, data
        As for :func:`poolwise.fit`.  A :class:`ModelSpec`'s own priors are the base that each
        prior set updates.
    priors
        One mapping per fit, ``{"Intercept": "normal(0, 1)"}``; an empty mapping is the
        defaults.  Parameters not named keep their (data-scaled) defaults.
    labels
        Column labels, one per prior set (default: the priors as written, ``"default"`` for
        an empty set).
    prob
        Mass of the central intervals.
    **fit_kwargs
        Passed to :func:`poolwise.fit` (``family``, ``method``, ``seed``, ``draws``…); the pooling
        is ``"hierarchical"`` unless given.

    Returns
    -------
    DataFrame
        Wide: one row per quantity (coefficients, ``sigma``, auxiliary parameters, ``sd(…)``,
        ``cor(…)``, then ``Intercept[g=a]`` — each group's estimate of the first group term),
        indexed by ``parameter``; columns a MultiIndex (label, stat) with stat ``mean``, ``lo``,
        ``hi`` per prior set, in the order given.  ``.attrs["priors"]`` maps each label to the
        priors used (every default included, as ``fit.priors`` prints them).

    Raises
    ------
    SpecError
        For no prior sets, or labels that are not one distinct label per set.

    Examples
    --------
    >>> import poolwise as pw
    >>> df = pw.datasets.drivers(seed=1)
    >>> t = pw.compare_priors("reaction ~ 1 + (1 | driver)", df, [{}, {"Intercept": "normal(0, 1)"}], draws=200)
    >>> t.columns.get_level_values(0).unique().tolist()
    ['default', 'Intercept ~ normal(0, 1)']
    """
    sets = [dict(p) for p in priors]
    if not sets:
        raise SpecError("compare_priors needs at least one prior set.", hint='Pass e.g. priors=[{}, {"Intercept": '
                        '"normal(0, 1)"}].', option="priors")
    if labels is None:
        labels = [_label(p) for p in sets]
    labels = [str(lab) for lab in labels]
    if len(labels) != len(sets) or len(set(labels)) != len(labels):
        raise SpecError(f"The 'labels' option must give one distinct label per prior set ({len(sets)}). Got {labels!r}.",
                        option="labels")
    table = data if isinstance(data, _data.Table) else _data.read_table(data)
    if isinstance(formula, ModelSpec):
        base = formula
    else:
        base = ModelSpec(formula, family=fit_kwargs.pop("family", "gaussian"),
                         pooling=fit_kwargs.pop("pooling", "hierarchical"))
    parts: dict[str, pd.DataFrame] = {}
    used: dict[str, pd.DataFrame] = {}
    for label, prior_set in zip(labels, sets):
        spec = base.replace(priors={**base.priors, **prior_set})
        fitted = fit(spec, table, **fit_kwargs)
        names, _, X = _quantities(fitted)
        lo, hi = np.quantile(X, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        parts[label] = pd.DataFrame({"mean": X.mean(axis=0), "lo": lo, "hi": hi},
                                    index=pd.Index(names, name="parameter"))
        used[label] = fitted.priors
    out = pd.concat(parts, axis=1)
    out.columns = out.columns.set_names(["priors", "stat"])
    out.attrs["priors"] = used
    return out


def _label(priors: Mapping[str, str | Prior]) -> str:
    if not priors:
        return "default"
    return "; ".join(f"{k} ~ {parse_prior(v, name=k)}" for k, v in priors.items())
