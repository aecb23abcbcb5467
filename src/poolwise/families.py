"""Likelihood families, described declaratively.

A :class:`Family` names its link, its auxiliary parameters and the support of its outcome, and
says whether the collapsed (exact) path applies.  Mapping a family to NumPyro distributions is
the NUTS path's job (``infer/nuts.py``); nothing here imports JAX.  The NumPy/SciPy methods (:meth:`Family.log_likelihood`,
:meth:`Family.sample`, :meth:`Family.inverse_link`) serve the results side (``fit.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from .errors import SpecError

__all__ = ["Family", "FAMILIES", "get_family", "separation", "separation_text"]


@dataclass(frozen=True)
class Family:
    """A likelihood family.

    Attributes
    ----------
    name
        ``"gaussian"``, ``"student_t"``, ``"bernoulli"``, ``"binomial"``, ``"poisson"`` or
        ``"negative_binomial"``.
    link
        Name of the link function: ``"identity"``, ``"logit"`` or ``"log"``.
    params
        Auxiliary parameters besides the mean (``("sigma",)`` for gaussian).
    support
        ``"real"`` (finite numbers), ``"binary"`` (0/1), ``"count"`` (non-negative integers) or
        ``"trials"`` (integers from 0 to the number of trials).
    exact
        Whether the collapsed (``method="exact"``) path applies.
    """

    name: str
    link: str
    params: tuple[str, ...]
    support: str
    exact: bool = False

    @property
    def needs_trials(self) -> bool:
        """Whether the formula must name the number of trials, ``y | trials(n) ~ …``."""
        return self.support == "trials"

    @property
    def identity(self) -> bool:
        return self.link == "identity"

    def __str__(self) -> str:
        return f"{self.name}(link={self.link})"

    # -- NumPy/SciPy evaluation (the results side: log-likelihood, predictions) ----------------
    def inverse_link(self, eta: np.ndarray) -> np.ndarray:
        """The mean of the outcome (the success probability for binomial) from the linear predictor."""
        eta = np.asarray(eta, dtype=float)
        if self.link == "identity":
            return eta
        if self.link == "logit":
            return np.asarray(special.expit(eta))
        if self.link == "log":
            with np.errstate(over="ignore"):
                return np.exp(eta)
        raise SpecError(f"Unknown link '{self.link}' of family {self.name}.")

    def log_likelihood(
        self, y: np.ndarray, eta: np.ndarray, *, sigma: np.ndarray | float | None = None,
        nu: np.ndarray | float | None = None, phi: np.ndarray | float | None = None,
        trials: np.ndarray | None = None, weights: np.ndarray | None = None,
    ) -> np.ndarray:
        """Pointwise log density (log mass) of ``y`` given the linear predictor ``eta``.

        ``y``, ``trials`` and ``weights`` are per row (shape (n,)); ``eta`` is (…, n) with any
        leading draw axes; ``sigma``, ``nu`` and ``phi`` broadcast against ``eta`` (pass draws as
        (…, 1)).

        ==================== ===========================================================
        gaussian             Normal(η, σ/√w); σ = 1 when standard errors are known (w = 1/se²)
        student_t            Student-t(ν, η, σ/√w)
        bernoulli            Bernoulli(logit⁻¹ η)
        binomial             Binomial(trials, logit⁻¹ η)
        poisson              Poisson(exp η)
        negative_binomial    NB2: mean μ = exp η, concentration φ, Var = μ + μ²/φ
        ==================== ===========================================================

        For the non-Gaussian families ``weights`` multiply the log-likelihood (brms's
        convention); a bound model's weights are all one there.

        Examples
        --------
        >>> import numpy as np
        >>> ll = get_family("poisson").log_likelihood(np.array([2.0]), np.log(np.array([2.0])))
        >>> round(float(ll[0]), 4)  # log(2² e⁻² / 2!)
        -1.3069
        """
        y = np.asarray(y, dtype=float)
        eta = np.asarray(eta, dtype=float)
        w = None if weights is None else np.asarray(weights, dtype=float)
        name = self.name
        if name in ("gaussian", "student_t"):
            sd = np.asarray(1.0 if sigma is None else sigma, dtype=float)
            if w is not None:
                sd = sd / np.sqrt(w)
            z = (y - eta) / sd
            if name == "gaussian":
                return np.asarray(-0.5 * z * z - np.log(sd) - 0.5 * math.log(2 * math.pi))
            if nu is None:
                raise SpecError("The student_t log-likelihood needs 'nu'.")
            v = np.asarray(nu, dtype=float)
            return np.asarray(special.gammaln((v + 1) / 2) - special.gammaln(v / 2) - 0.5 * np.log(v * math.pi)
                              - np.log(sd) - (v + 1) / 2 * np.log1p(z * z / v))
        if name == "bernoulli":
            out = y * eta - np.logaddexp(0.0, eta)
        elif name == "binomial":
            if trials is None:
                raise SpecError("The binomial log-likelihood needs the number of trials.")
            n = np.asarray(trials, dtype=float)
            log_choose = special.gammaln(n + 1) - special.gammaln(y + 1) - special.gammaln(n - y + 1)
            out = log_choose + y * eta - n * np.logaddexp(0.0, eta)
        elif name == "poisson":
            with np.errstate(over="ignore"):
                out = y * eta - np.exp(eta) - special.gammaln(y + 1)
        elif name == "negative_binomial":
            if phi is None:
                raise SpecError("The negative_binomial log-likelihood needs 'phi'.")
            p = np.asarray(phi, dtype=float)
            log_phi = np.log(p)
            log_total = np.logaddexp(log_phi, eta)  # log(φ + μ)
            out = (special.gammaln(y + p) - special.gammaln(p) - special.gammaln(y + 1)
                   + p * (log_phi - log_total) + y * (eta - log_total))
        else:
            raise SpecError(f"No log-likelihood for family '{name}'.")
        if w is not None:
            out = out * w
        return np.asarray(out)

    def sample(
        self, rng: np.random.Generator, eta: np.ndarray, *, sigma: np.ndarray | float | None = None,
        nu: np.ndarray | float | None = None, phi: np.ndarray | float | None = None,
        trials: np.ndarray | None = None, weights: np.ndarray | None = None,
    ) -> np.ndarray:
        """Draw outcomes given the linear predictor ``eta`` (same arguments as :meth:`log_likelihood`).

        Returns an array of ``eta``'s shape (floats; counts are whole numbers).
        """
        eta = np.asarray(eta, dtype=float)
        name = self.name
        if name in ("gaussian", "student_t"):
            sd = np.asarray(1.0 if sigma is None else sigma, dtype=float)
            if weights is not None:
                sd = sd / np.sqrt(np.asarray(weights, dtype=float))
            if name == "gaussian":
                return np.asarray(eta + sd * rng.standard_normal(eta.shape))
            if nu is None:
                raise SpecError("Sampling the student_t family needs 'nu'.")
            v = np.broadcast_to(np.asarray(nu, dtype=float), eta.shape)
            return np.asarray(eta + sd * rng.standard_t(v))
        mean = self.inverse_link(eta)
        if name == "bernoulli":
            return (rng.random(eta.shape) < mean).astype(float)
        if name == "binomial":
            if trials is None:
                raise SpecError("Sampling the binomial family needs the number of trials.")
            n = np.broadcast_to(np.asarray(trials, dtype=np.int64), eta.shape)
            return rng.binomial(n, mean).astype(float)
        lam = np.minimum(mean, _MAX_RATE)  # guards rng.poisson against absurd draws far in the tails
        if name == "poisson":
            return rng.poisson(lam).astype(float)
        if name == "negative_binomial":  # gamma–Poisson mixture: λ ~ Gamma(φ, μ/φ)
            if phi is None:
                raise SpecError("Sampling the negative_binomial family needs 'phi'.")
            p = np.broadcast_to(np.asarray(phi, dtype=float), eta.shape)
            return rng.poisson(np.minimum(rng.gamma(p, lam / p), _MAX_RATE)).astype(float)
        raise SpecError(f"Cannot sample family '{name}'.")

    def information(
        self, eta: np.ndarray, *, sigma: np.ndarray | float | None = None, nu: np.ndarray | float | None = None,
        phi: np.ndarray | float | None = None, trials: np.ndarray | None = None,
        weights: np.ndarray | None = None,
    ) -> np.ndarray:
        """Expected Fisher information about the linear predictor, per row (the GLM working weight).

        Gaussian w/σ², Student-t w(ν+1)/((ν+3)σ²), Bernoulli p(1−p), binomial n·p(1−p),
        Poisson μ, negative binomial μφ/(φ+μ).  Used for the per-group pooling factors.
        """
        eta = np.asarray(eta, dtype=float)
        name = self.name
        w = 1.0 if weights is None else np.asarray(weights, dtype=float)
        if name in ("gaussian", "student_t"):
            s2 = np.asarray(1.0 if sigma is None else sigma, dtype=float) ** 2
            out = np.broadcast_to(w / s2, np.broadcast_shapes(eta.shape, np.shape(w / s2)))
            if name == "student_t":
                if nu is None:
                    raise SpecError("The student_t information needs 'nu'.")
                v = np.asarray(nu, dtype=float)
                out = out * (v + 1) / (v + 3)
            return np.asarray(out, dtype=float)
        mean = self.inverse_link(eta)
        if name == "bernoulli":
            out = mean * (1 - mean)
        elif name == "binomial":
            out = (1.0 if trials is None else np.asarray(trials, dtype=float)) * mean * (1 - mean)
        elif name == "poisson":
            out = mean
        elif name == "negative_binomial":
            if phi is None:
                raise SpecError("The negative_binomial information needs 'phi'.")
            p = np.asarray(phi, dtype=float)
            out = p * special.expit(eta - np.log(p))  # μφ/(φ+μ), stable for large μ
        else:
            raise SpecError(f"No information for family '{name}'.")
        return np.asarray(out * w, dtype=float)


#: upper bound of a Poisson rate drawn for the posterior predictive
_MAX_RATE = 1e12

FAMILIES: dict[str, Family] = {
    "gaussian": Family("gaussian", "identity", ("sigma",), "real", exact=True),
    "student_t": Family("student_t", "identity", ("sigma", "nu"), "real"),
    "bernoulli": Family("bernoulli", "logit", (), "binary"),
    "binomial": Family("binomial", "logit", (), "trials"),
    "poisson": Family("poisson", "log", (), "count"),
    "negative_binomial": Family("negative_binomial", "log", ("phi",), "count"),
}
_ALIASES = {"normal": "gaussian", "t": "student_t", "studentt": "student_t", "logistic": "bernoulli",
            "negbinomial": "negative_binomial", "negbin": "negative_binomial"}


def get_family(family: str | Family) -> Family:
    """Return the :class:`Family` named ``family`` (or ``family`` itself).

    Raises
    ------
    SpecError
        If the name is unknown.
    """
    if isinstance(family, Family):
        return family
    key = str(family).lower()
    key = _ALIASES.get(key, key)
    if key not in FAMILIES:
        names = ", ".join(f"'{n}'" for n in FAMILIES)
        raise SpecError(f"Unknown family {family!r}.", hint=f"Supported families: {names}.", option="family")
    return FAMILIES[key]


#: up to this many columns, the separation check looks for one column that separates on its own
_SEPARATION_SINGLES = 20


def separation(X: np.ndarray, y: np.ndarray, trials: np.ndarray | None = None) -> tuple[np.ndarray, bool] | None:
    """A direction along which a binary or binomial likelihood has no maximum, or ``None``.

    Rows whose outcome is all successes (y = n) or all failures (y = 0) are separated by a
    direction β ≠ 0 when s_i x_i'β ≥ 0 for each of them (s = +1 for successes, −1 for failures)
    and x_i'β = 0 for every row with both: the log-likelihood then only grows along β and the
    maximum-likelihood estimate diverges, so what the posterior says about those coefficients
    comes from their prior.  Found by the linear program of Konis (2007): maximize Σ s_i x_i'β
    under those constraints and |β_k| ≤ 1 (columns scaled to a maximum of 1).

    Returns the direction (on the scale of X's columns, its largest entry ±1) and whether the
    separation is complete (s_i x_i'β > 0 for every row), or ``None`` when there is none.

    Konis, K. (2007). Linear programming algorithms for detecting separated data in binary
    logistic regression models. DPhil thesis, University of Oxford.
    """
    from scipy.optimize import linprog

    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n = np.ones_like(y) if trials is None else np.asarray(trials, dtype=float)
    if X.ndim != 2 or X.shape[1] == 0 or X.shape[0] == 0:
        return None
    scale = np.abs(X).max(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    Xs = X / scale
    ones, zeros = y >= n, y <= 0
    s = np.where(ones, 1.0, -1.0)
    extreme = ones | zeros
    A_ub = -(s[extreme, None] * Xs[extreme])  # s_i x_i'β ≥ 0
    mixed = Xs[~extreme]
    if not extreme.any():
        return None
    res = linprog(A_ub.sum(axis=0), A_ub=A_ub, b_ub=np.zeros(A_ub.shape[0]),
                  A_eq=mixed if mixed.size else None, b_eq=np.zeros(mixed.shape[0]) if mixed.size else None,
                  bounds=[(-1.0, 1.0)] * X.shape[1], method="highs")
    if res.status != 0 or -res.fun <= 1e-7 * max(1, int(extreme.sum())):
        return None
    beta = np.asarray(res.x, dtype=float)
    beta = np.where(np.abs(beta) > 1e-7, beta, 0.0)
    complete = False
    if extreme.all():  # complete when some β has every margin s_i x_i'β ≥ t > 0: maximize t
        p = X.shape[1]
        A2 = np.c_[A_ub, np.ones(A_ub.shape[0])]  # −s_i x_i'β + t ≤ 0
        res2 = linprog(np.r_[np.zeros(p), -1.0], A_ub=A2, b_ub=np.zeros(A2.shape[0]),
                       bounds=[(-1.0, 1.0)] * p + [(None, 1.0)], method="highs")
        if res2.status == 0 and -res2.fun > 1e-7:
            complete = True
            beta = np.where(np.abs(res2.x[:p]) > 1e-7, res2.x[:p], 0.0)
    # name the columns that matter: any separating direction will do for the linear programs, which
    # may weigh columns that are not needed; a single column that separates (with the constant
    # columns, the intercept) is the plainest answer, else the columns over 10⁻³ of the largest
    beta = beta / np.abs(beta).max()
    const = np.ptp(X, axis=0) == 0
    if X.shape[1] <= _SEPARATION_SINGLES and (~const).sum() > 1:
        for k in np.flatnonzero(~const):
            cols = const.copy()
            cols[k] = True
            alone = separation(X[:, cols], y, trials)
            if alone is not None and alone[1] == complete:
                beta = np.zeros(X.shape[1])
                beta[cols] = alone[0] * scale[cols]
                break
    keep = np.abs(beta) >= 1e-3
    if not keep.all():
        again = separation(X[:, keep], y, trials)
        if again is not None and again[1] == complete:
            beta = np.zeros(X.shape[1])
            beta[keep] = again[0] * scale[keep]
    direction = beta / scale
    return direction / np.abs(direction).max(), complete


def separation_text(coef_names: list[str], found: tuple[np.ndarray, bool]) -> str:
    """One sentence on a separation found by :func:`separation`, naming its columns."""
    direction, complete = found
    named = [c for c, v in zip(coef_names, direction) if v != 0]
    names = [c for c in named if c != "Intercept"] or named
    cols = ", ".join(names)
    also = " (with the intercept)" if "Intercept" in named and names != named else ""
    whose = "its coefficient is" if len(names) == 1 else "their coefficients are"
    if complete:
        how = f"{cols}{also} predicts the outcome perfectly"
    else:
        how = f"{cols}{also} predicts the outcome perfectly except on a boundary where both outcomes occur"
    return (f"{'Complete' if complete else 'Quasi-complete'} separation on {cols}: {how}, so the likelihood has no "
            f"maximum and {whose} determined by the prior.")
