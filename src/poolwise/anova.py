"""Likelihood-ratio tests between nested empirical fits, as lme4's ``anova()``.

:func:`anova` takes two or more fits of the same rows by ``method="empirical"`` (REML/ML for
gaussian, Laplace for the other families), orders them by their number of parameters and gives,
per model, ``npar``, ``AIC``, ``BIC``, ``logLik`` and ``deviance`` (−2 logLik), and per pair of
neighbours the likelihood-ratio statistic ``Chisq`` = 2 Δℓ on ``Df`` = Δnpar degrees of freedom
with its naive p-value ``Pr(>Chisq)`` (lme4's columns).

REML likelihoods of models whose fixed effects differ are not comparable (their error contrasts
differ), so, as lme4 does by default (``refit=True``), every REML fit is refitted by ML first
and the notes say so.  With ``refit=False`` REML fits are compared as they are, which is valid
only when all are REML with the same fixed effects; anything else is refused.

A variance at zero
------------------
When the smaller model is the larger one with a population SD set to zero (a pooled fit against
a hierarchical one, a group term dropped), the null value lies on the boundary of the parameter
space and the statistic is not χ²(Df) under the null: it is a mixture (Self & Liang 1987;
Stram & Lee 1994).  One SD added, with its correlations with the q terms already varying by the
same factor: ½χ²(Df − 1) + ½χ²(Df) (Df − 1 = q plus any fixed effects added with it; ½χ²₀ + ½χ²₁
for one SD alone, where χ²₀ is a point mass at zero: the p-value halves).  k SDs of terms
that vary independently (no correlation added): the binomial mixture Σ_j C(k, j) 2⁻ᵏ χ²(Df − k + j),
which takes their estimates as asymptotically independent (Self & Liang's orthogonal case).
Where several SDs are added together with correlations among them the mixture's weights depend
on the information matrix; no corrected p-value is given, and the naive one is conservative.
The corrected p-value is the column ``Pr(>Chisq) boundary`` beside the naive one, its reference
distribution in ``reference``.  ``bootstrap=n`` adds a parametric bootstrap p-value (outcomes
simulated from the smaller model, both refitted), exact as n grows whatever the boundary.

References
----------
Self, S. G. & Liang, K.-Y. (1987). Asymptotic properties of maximum likelihood estimators and
likelihood ratio tests under nonstandard conditions. JASA 82, 605–610.
Stram, D. O. & Lee, J. W. (1994). Variance components testing in the longitudinal mixed effects
model. Biometrics 50, 1171–1177.
Davison, A. C. & Hinkley, D. V. (1997). Bootstrap Methods and their Application, §4.2. Cambridge
University Press.
Pinheiro, J. C. & Bates, D. M. (2000). Mixed-Effects Models in S and S-PLUS, §2.4.1. Springer.
Bates, D., Mächler, M., Bolker, B. & Walker, S. (2015). Fitting linear mixed-effects models using
lme4. Journal of Statistical Software 67(1), 1–48.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import PoolwiseError, SpecError
from .fit import Fit
from .infer import run
from .simulate import refit as _refit
from .simulate import simulator

__all__ = ["anova", "COLUMNS"]

#: the columns of :func:`anova`'s table, lme4's and the boundary-corrected test
COLUMNS = ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)", "Pr(>Chisq) boundary",
           "reference"]


#: relative precision of a maximized log-likelihood: a gain below it is no gain
_NOISE = 1e-9


@dataclass(frozen=True)
class _Model:
    """One fit as the table sees it."""

    label: str
    fit: Fit
    info: dict[str, Any]  # of the fit whose loglik is used (the ML refit of a REML fit): its estimates
    loglik: float
    criterion: str  # "REML", "ML" or "Laplace" (of ``loglik``)
    coefs: tuple[str, ...]
    sds: frozenset[str]
    cors: frozenset[str]
    converged: bool

    @property
    def npar(self) -> int:
        return len(self.coefs) + int(self.fit.bound.has_sigma) + len(self.sds) + len(self.cors)


def _label(fit: Fit) -> str:
    text = fit.spec.formula
    pooling = fit.spec.pooling_text
    return text if pooling == "hierarchical" else f"{text} [{pooling}]"


def _labels(fits: Sequence[Fit], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(fits) or len(set(names)) != len(names):
            raise SpecError(f"The 'names' option needs {len(fits)} distinct names, one per fit. Got {names!r}.",
                            option="names")
        return names
    out: list[str] = []
    for f in fits:
        base = _label(f)
        label, k = base, 2
        while label in out:
            label, k = f"{base} #{k}", k + 1
        out.append(label)
    return out


def _variance_parameters(fit: Fit, label: str) -> tuple[frozenset[str], frozenset[str]]:
    """The learned SDs and correlations of a fit; refuse a fixed population SD (not a maximum)."""
    sds: set[str] = set()
    cors: set[str] = set()
    for block in fit.bound.blocks:
        if block.pooled:
            continue
        if block.Sigma is not None:
            raise SpecError(
                f"Fit '{label}' fixes the population SD of '{block.term.var_name}' (pooling="
                f"{fit.spec.pooling_text!r}): its likelihood is not maximized over that SD, so a likelihood-ratio "
                "test does not apply.",
                hint="Compare pooling='pooled' (the SD at 0) with pooling='hierarchical' (the SD estimated).",
                option="pooling")
        sds.update(block.sd_names)
        cors.update(block.cor_names)
    return frozenset(sds), frozenset(cors)


def _check_same_rows(a: _Model, b: _Model) -> None:
    """Refuse fits of different rows, outcomes or families (their likelihoods are of different data)."""
    fa, fb = a.fit.bound, b.fit.bound
    what = None
    if a.fit.spec.fam.name != b.fit.spec.fam.name:
        what = f"different families ({a.fit.spec.fam.name} and {b.fit.spec.fam.name})"
    elif fa.spec.outcome != fb.spec.outcome:
        what = f"different outcomes ('{fa.spec.outcome}' and '{fb.spec.outcome}')"
    elif fa.n_obs != fb.n_obs:
        what = f"different numbers of rows ({fa.n_obs:,} and {fb.n_obs:,})"
    elif fa.has_rows and fb.has_rows:
        ta = np.zeros(0) if fa.trials is None else fa.trials
        tb = np.zeros(0) if fb.trials is None else fb.trials
        if not (np.array_equal(fa.y, fb.y) and np.array_equal(fa.weights, fb.weights) and np.array_equal(ta, tb)):
            what = "different values of the outcome (or its weights or trials) on the same number of rows"
    elif fa.has_rows != fb.has_rows:
        what = ("rows from different sources (one in memory, one reduced in the query), which cannot be checked to "
                "be the same")
    elif fa.reduced.source != fb.reduced.source:
        what = f"rows from different sources ({fa.reduced.source} and {fb.reduced.source})"
    if what is not None:
        raise SpecError(f"Fits '{a.label}' and '{b.label}' were fitted to {what}: their likelihoods are not of "
                        "the same data, so they cannot be compared.",
                        hint="Fit every model to the same rows and outcome (drop rows with missing values in any "
                             "model's columns first).", option="fits")


def _refit_ml(fit: Fit) -> dict[str, Any]:
    """The ``info`` (estimates, loglik) of the ML fit of a REML fit's model; no draws are made."""
    return dict(run(fit.bound, method="empirical", seed=0, chains=1, draws=1, reml=False).info)


def _models(fits: Sequence[Fit], labels: list[str], refit: bool) -> tuple[list[_Model], list[str]]:
    notes: list[str] = []
    for fit, label in zip(fits, labels):
        if not isinstance(fit, Fit):
            raise SpecError(f"anova() compares poolwise fits; '{label}' is a {type(fit).__name__}.",
                            hint="Pass the results of pw.fit(..., method='empirical').", option="fits")
        if fit.method != "empirical":
            raise SpecError(
                f"Fit '{label}' is Bayesian (method={fit.method!r}): a likelihood-ratio test needs maximum-"
                "likelihood fits.",
                hint="Compare Bayesian fits by PSIS-LOO (pw.compare, az.compare), or refit with method='empirical'.",
                option="method")
    criteria = [str(f.info.get("method")) for f in fits]
    coefs = [tuple(f.bound.coef_names) for f in fits]
    if "REML" in criteria and not refit:
        if any(c != "REML" for c in criteria):
            mixed = ", ".join(f"'{lb}' ({c})" for lb, c in zip(labels, criteria))
            raise SpecError(f"The fits mix REML and ML: {mixed}; with refit=False their likelihoods cannot be "
                            "compared.", hint="Use refit=True (REML fits refitted by ML, as lme4) or fit every "
                                              "model with the same reml= setting.", option="refit")
        if len({frozenset(c) for c in coefs}) > 1:
            raise SpecError("REML likelihoods of models with different fixed effects are not comparable (the "
                            f"fits {', '.join(repr(lb) for lb in labels)} differ in them).",
                            hint="Use refit=True (the fits are refitted by ML, as lme4 does).", option="refit")
        notes.append("REML log-likelihoods compared (refit=False; every fit has the same fixed effects)")
    out: list[_Model] = []
    refitted: list[str] = []
    for fit, label, criterion, cf in zip(fits, labels, criteria, coefs):
        sds, cors = _variance_parameters(fit, label)
        info = fit.info
        if criterion == "REML" and refit:
            info = _refit_ml(fit)
            criterion = "ML"
            refitted.append(label)
        out.append(_Model(label, fit, info, float(info["loglik"]), criterion, cf, sds, cors,
                          bool(info.get("converged", True))))
    if refitted:
        notes.insert(0, "refitting model(s) with ML (instead of REML): " + ", ".join(refitted))
    for m in out[1:]:
        _check_same_rows(out[0], m)
    for m in out:
        if not m.converged:
            notes.append(f"'{m.label}': the optimizer reported no convergence; its logLik may be short of the "
                         "maximum")
    return out, notes


def _nested(small: _Model, big: _Model) -> bool:
    """Whether ``small`` is ``big`` with some parameters removed: its fixed-effect columns lie in the
    span of ``big``'s (by name, or by the columns themselves when the rows are held), the same
    offset, and its SDs and correlations are among ``big``'s."""
    if not (small.sds <= big.sds and small.cors <= big.cors):
        return False
    fs, fb = small.fit.bound, big.fit.bound
    if set(small.coefs) <= set(big.coefs):
        return not (fs.has_rows and fb.has_rows) or bool(np.array_equal(fs.offset, fb.offset))
    if not (fs.has_rows and fb.has_rows) or not np.array_equal(fs.offset, fb.offset):
        return False
    Xs, Xb = np.asarray(fs.X, dtype=float), np.asarray(fb.X, dtype=float)
    if Xs.shape[1] == 0:
        return True
    if Xb.shape[1] == 0:
        return False
    coef, *_ = np.linalg.lstsq(Xb, Xs, rcond=None)
    resid = np.linalg.norm(Xs - Xb @ coef, axis=0)
    return bool(np.all(resid <= 1e-8 * np.maximum(np.linalg.norm(Xs, axis=0), 1e-300)))


def _chi2_sf(x: float, df: int) -> float:
    """P(χ²(df) > x), with χ²(0) the point mass at 0."""
    from scipy.stats import chi2

    if df <= 0:
        return 1.0 if x <= 0 else 0.0
    return float(chi2.sf(x, df))


def _boundary(small: _Model, big: _Model, x: float, df: int) -> tuple[float, str, str | None]:
    """(corrected p-value, its reference distribution, a note) for the step small → big."""
    new_sds = sorted(big.sds - small.sds)
    k = len(new_sds)
    if k == 0:
        return _chi2_sf(x, df), f"χ²({df})", None
    if k == 1:
        p = 0.5 * _chi2_sf(x, df - 1) + 0.5 * _chi2_sf(x, df)
        return p, f"0.5·χ²({df - 1}) + 0.5·χ²({df})", None
    if not (big.cors - small.cors):
        weights = [math.comb(k, j) / 2**k for j in range(k + 1)]
        p = sum(w * _chi2_sf(x, df - k + j) for j, w in enumerate(weights))
        ref = " + ".join(f"{w:g}·χ²({df - k + j})" for j, w in enumerate(weights))
        note = (f"'{big.label}' vs '{small.label}': {k} SDs at zero ({', '.join(new_sds)}); the boundary mixture "
                "takes their estimates as asymptotically independent (Self & Liang 1987)")
        return p, ref, note
    note = (f"'{big.label}' vs '{small.label}': {k} SDs and their correlations at the boundary "
            f"({', '.join(new_sds)}); the mixture's weights depend on the information matrix, so no "
            "boundary-corrected p-value is given (the naive one is conservative; a parametric bootstrap of "
            "the statistic gives an exact one)")
    return math.nan, "", note


def _bootstrap_p(small: _Model, big: _Model, x: float, n: int, rng: np.random.Generator) -> tuple[float, int]:
    """(p, refits that failed): the parametric bootstrap p-value of the statistic ``x``.

    Outcomes are simulated from the smaller model at its estimates (new group values), both models
    refitted by their criterion to each, and p = (1 + #{x* ≥ x}) / (1 + replicates) (Davison &
    Hinkley 1997, §4.2; pbkrtest's ``PBmodcomp``).  Exact in the limit whatever the boundary."""
    one = simulator(small.fit.bound, small.info)
    tol = 1e-6 * max(1.0, abs(x))  # the optimizers' precision: a tie counts as at least as large
    hits = done = failed = 0
    for i in range(n):
        y = one(rng)
        try:
            l0 = float(_refit(small.fit.bound, y, criterion=small.criterion, seed=i).info["loglik"])
            l1 = float(_refit(big.fit.bound, y, criterion=big.criterion, seed=i).info["loglik"])
        except PoolwiseError:
            failed += 1
            continue
        done += 1
        hits += 2.0 * (l1 - l0) >= x - tol
    return (hits + 1) / (done + 1), failed


def anova(*fits: Fit, names: Sequence[str] | None = None, refit: bool = True, bootstrap: int = 0,
          seed: int = 0) -> pd.DataFrame:
    """Likelihood-ratio tests of nested empirical fits, as lme4's ``anova()``.

    Parameters
    ----------
    *fits
        Two or more fits by ``method="empirical"`` of the same rows and outcome (gaussian REML/ML,
        or Laplace for bernoulli, binomial and poisson), e.g. a pooled and a hierarchical fit,
        or models with and without a term.
    names
        Labels of the fits in the table (default: their formulas, with the pooling when not
        hierarchical).
    refit
        Refit REML fits by ML first (default, as lme4): needed whenever the fixed effects differ.
        With ``False`` REML fits of the same fixed effects are compared as they are.
    bootstrap
        With a positive number, also a parametric bootstrap p-value per test, ``Pr(>Chisq)
        bootstrap``: that many outcome vectors simulated from the smaller model's estimates, both
        models refitted to each (the fits must hold their rows).  Exact as the number grows,
        boundary or not, where the mixture is unknown too; it costs 2 × ``bootstrap`` fits per test.
    seed
        Seed of the bootstrap's simulations.

    Returns
    -------
    DataFrame
        One row per fit in order of ``npar`` with lme4's columns ``npar``, ``AIC``, ``BIC``,
        ``logLik``, ``deviance`` (−2 logLik), and for each fit against the one above it ``Chisq``
        (2 Δ logLik), ``Df`` (Δ npar) and the naive ``Pr(>Chisq)``; beside them
        ``Pr(>Chisq) boundary`` — the p-value when the test sets a population SD at zero (see
        the module's notes: ½χ²₀ + ½χ²₁ for one SD alone), else the naive one — and its
        ``reference`` distribution.  ``.attrs["notes"]`` says what was refitted and which
        comparisons have no test (models not nested, or of equal size).

    Raises
    ------
    SpecError
        For fewer than two fits, a Bayesian fit (compare those by LOO: :func:`poolwise.compare`),
        a fixed population SD (unpooled or a number), fits of different rows, outcomes or
        families, or REML and ML fits mixed with ``refit=False``.

    Notes
    -----
    ``npar`` counts the coefficients, σ (gaussian), and each learned SD and correlation (lme4's
    count); AIC = −2ℓ + 2 npar, BIC = −2ℓ + npar log N with N the number of rows.

    Examples
    --------
    >>> import poolwise as pw
    >>> df = pw.datasets.drivers(seed=1)
    >>> f0 = pw.fit("reaction ~ night + (1 | driver)", df, method="empirical", pooling="pooled")
    >>> f1 = pw.fit("reaction ~ night + (1 | driver)", df, method="empirical")
    >>> table = pw.anova(f0, f1)
    >>> list(table["npar"])
    [3, 4]
    """
    if len(fits) == 1 and isinstance(fits[0], (list, tuple)):
        fits = tuple(fits[0])
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise SpecError(f"The 'bootstrap' option must be a number of simulations (0 for none). Got {bootstrap!r}.",
                        option="bootstrap", hint="Pass bootstrap=1000, say.")
    if len(fits) < 2:
        raise SpecError(f"anova() compares two or more fits; got {len(fits)}.",
                        hint="Pass the fits to compare: pw.anova(fit_pooled, fit_hierarchical).", option="fits")
    labels = _labels(fits, names)
    models, notes = _models(fits, labels, refit)
    models = sorted(models, key=lambda m: m.npar)  # stable: ties keep the given order
    n_obs = models[0].fit.bound.n_obs
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(seed)
    for i, m in enumerate(models):
        dev = -2.0 * m.loglik
        row: dict[str, Any] = {"npar": m.npar, "AIC": dev + 2 * m.npar, "BIC": dev + m.npar * math.log(n_obs),
                               "logLik": m.loglik, "deviance": dev, "Chisq": math.nan, "Df": math.nan,
                               "Pr(>Chisq)": math.nan, "Pr(>Chisq) boundary": math.nan, "reference": ""}
        if i:
            prev = models[i - 1]
            df = m.npar - prev.npar
            if df <= 0:
                notes.append(f"'{m.label}' and '{prev.label}' have the same number of parameters: no test "
                             "(compare their AIC and BIC)")
            elif not _nested(prev, m):
                notes.append(f"'{prev.label}' is not nested in '{m.label}': no likelihood-ratio test (compare "
                             "their AIC and BIC)")
            else:
                x = 2.0 * (m.loglik - prev.loglik)
                if x < _NOISE * max(1.0, abs(m.loglik)):  # within the optimizers' precision: no gain (an SD
                    x = 0.0  # at 0 again) — not a tiny positive x, whose boundary p would read 0.5, not 1
                p_bd, ref, note = _boundary(prev, m, x, df)
                row.update({"Chisq": x, "Df": df, "Pr(>Chisq)": _chi2_sf(x, df), "Pr(>Chisq) boundary": p_bd,
                            "reference": ref})
                if note:
                    notes.append(note)
                if bootstrap:
                    p_boot, failed = _bootstrap_p(prev, m, x, int(bootstrap), rng)
                    row["Pr(>Chisq) bootstrap"] = p_boot
                    if failed:
                        notes.append(f"'{m.label}' vs '{prev.label}': {failed} of {bootstrap} bootstrap refits "
                                     "failed and are left out")
        rows.append(row)
    columns = COLUMNS + (["Pr(>Chisq) bootstrap"] if bootstrap else [])
    table = pd.DataFrame(rows, index=pd.Index([m.label for m in models], name="model"), columns=columns)
    if bootstrap:
        notes.append(f"Pr(>Chisq) bootstrap: parametric bootstrap, {bootstrap} outcome vectors simulated from the "
                     f"smaller model of each test (seed {seed})")
    table["Df"] = table["Df"].astype("Int64")
    table.attrs["notes"] = notes
    table.attrs["criterion"] = sorted({m.criterion for m in models})
    return table
