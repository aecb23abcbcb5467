"""Prior distributions that parse and print, and the data-scaled defaults.

A :class:`Prior` is a small frozen record (``half_normal(2.5)``) that knows its arguments,
checks them, prints itself the way a user writes it and evaluates its log density with
NumPy/SciPy.  Mapping priors to NumPyro distributions is the NUTS path's job.

Defaults follow rstanarm's weakly informative, data-scaled choices (Gabry & Goodrich, "Prior
distributions for rstanarm models"): coefficients ``normal(0, 2.5·sd(y)/sd(x))``, the
intercept ``normal(mean(y), 2.5·sd(y)·√(1 + Σ_k (mean(x_k)/sd(x_k))²))`` (the scale that a
``normal(mean(y), 2.5·sd(y))`` prior on the intercept at the predictors' means implies at
x = 0), ``sigma ~ exponential(1/sd(y))`` and ``sd(…|g) ~ half_student_t(3, 2.5·sd(y))``
(brms's population-SD family).  Every default is listed in a fit's summary.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import special

from .errors import PriorError

__all__ = ["Prior", "parse_prior", "DISTRIBUTIONS", "default_priors", "POSITIVE", "REAL"]

# name -> (argument names, support of the parameter it is a prior for)
DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "normal": (("mu", "sigma"), "real"),
    "student_t": (("df", "mu", "sigma"), "real"),
    "half_normal": (("sigma",), "positive"),
    "half_student_t": (("df", "sigma"), "positive"),
    "half_cauchy": (("sigma",), "positive"),
    "exponential": (("rate",), "positive"),
    "gamma": (("alpha", "beta"), "positive"),
    "lkj": (("eta",), "correlation"),
}
POSITIVE = "positive"
REAL = "real"
_SCALE_ARGS = {"sigma", "df", "rate", "alpha", "beta", "eta"}


@dataclass(frozen=True)
class Prior:
    """A prior distribution: ``Prior("half_normal", (2.0,))`` prints as ``half_normal(2)``.

    Attributes
    ----------
    dist
        One of :data:`DISTRIBUTIONS`.
    args
        Positional arguments in the order of ``DISTRIBUTIONS[dist][0]``.
    """

    dist: str
    args: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.dist not in DISTRIBUTIONS:
            known = ", ".join(DISTRIBUTIONS)
            raise PriorError(f"Unknown prior distribution '{self.dist}'.", hint=f"Use one of: {known}.")
        names, _ = DISTRIBUTIONS[self.dist]
        if len(self.args) != len(names):
            raise PriorError(
                f"Prior {self.dist} takes {len(names)} argument(s) ({', '.join(names)}), got {len(self.args)}.",
                hint=f"Write it as {self.dist}({', '.join(names)}).",
            )
        for name, value in zip(names, self.args):
            if not math.isfinite(value):
                raise PriorError(f"Prior {self} has a non-finite {name}.", hint="Give a finite number.")
            if name in _SCALE_ARGS and value <= 0:
                raise PriorError(
                    f"Prior {self} has {name} = {_fmt(value)}, but the {name} must be positive.",
                    hint=f"Give {self.dist} a {name} > 0.",
                )

    @property
    def support(self) -> str:
        """``"real"``, ``"positive"`` or ``"correlation"``: the support of the parameter it is for."""
        return DISTRIBUTIONS[self.dist][1]

    @property
    def kwargs(self) -> dict[str, float]:
        """Arguments by name."""
        return dict(zip(DISTRIBUTIONS[self.dist][0], self.args))

    def __str__(self) -> str:
        return f"{self.dist}({', '.join(_fmt(a) for a in self.args)})"

    def logpdf(self, x: np.ndarray | float) -> np.ndarray:
        """Log density at ``x`` (NumPy; ``-inf`` outside the support)."""
        x = np.asarray(x, dtype=float)
        k = self.kwargs
        if self.dist == "normal":
            z = (x - k["mu"]) / k["sigma"]
            return np.asarray(-0.5 * z * z - math.log(k["sigma"]) - 0.5 * math.log(2 * math.pi))
        if self.dist == "student_t":
            return np.asarray(_t_logpdf((x - k["mu"]) / k["sigma"], k["df"]) - math.log(k["sigma"]))
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.dist == "half_normal":
                z = x / k["sigma"]
                out = -0.5 * z * z - math.log(k["sigma"]) + 0.5 * math.log(2 / math.pi)
            elif self.dist == "half_student_t":
                out = math.log(2.0) + _t_logpdf(x / k["sigma"], k["df"]) - math.log(k["sigma"])
            elif self.dist == "half_cauchy":
                out = math.log(2.0) + _t_logpdf(x / k["sigma"], 1.0) - math.log(k["sigma"])
            elif self.dist == "gamma":
                a, b = k["alpha"], k["beta"]
                out = a * math.log(b) - special.gammaln(a) + (a - 1) * np.log(x) - b * x
            elif self.dist == "exponential":
                out = math.log(k["rate"]) - k["rate"] * x
            else:
                raise PriorError(f"{self} is a prior on a correlation matrix; it has no density on numbers.")
            return np.where(x >= 0, out, -np.inf)

    def mean_sd(self) -> tuple[float, float]:
        """Mean and SD of a ``normal`` prior (the only kind the collapsed path integrates)."""
        if self.dist != "normal":
            raise PriorError(f"Expected a normal prior, got {self}.")
        return self.args[0], self.args[1]


def _t_logpdf(z: np.ndarray, df: float) -> np.ndarray:
    return np.asarray(
        special.gammaln((df + 1) / 2)
        - special.gammaln(df / 2)
        - 0.5 * math.log(df * math.pi)
        - (df + 1) / 2 * np.log1p(z * z / df)
    )


def _fmt(v: float) -> str:
    """Four significant digits, or every digit needed when four would change the value (a
    location such as 100000001.4 is printed as used)."""
    short = f"{v:.4g}"
    return short if float(short) == v else repr(float(v))


_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$")


def parse_prior(text: str | Prior, *, name: str = "") -> Prior:
    """Parse ``"half_normal(2)"`` or ``"normal(0, 5)"`` into a :class:`Prior`.

    Parameters
    ----------
    text
        The prior as written, or a :class:`Prior` (returned unchanged).
    name
        The parameter it is for, used in error messages.

    Raises
    ------
    PriorError
        If the text is not a call of a known distribution with numeric arguments.

    Examples
    --------
    >>> str(parse_prior("half_normal( 2 )"))
    'half_normal(2)'
    """
    if isinstance(text, Prior):
        return text
    where = f" for '{name}'" if name else ""
    m = _CALL.match(str(text))
    if not m:
        raise PriorError(
            f"Cannot read the prior {text!r}{where}.",
            hint="Write it as a call, e.g. half_normal(2) or normal(0, 5).",
            option=name or None,
        )
    dist = m.group(1).lower()
    aliases = {"halfnormal": "half_normal", "halfcauchy": "half_cauchy", "half_t": "half_student_t",
               "halfstudentt": "half_student_t", "studentt": "student_t", "t": "student_t", "gaussian": "normal"}
    dist = aliases.get(dist, dist)
    if dist not in DISTRIBUTIONS:
        import difflib

        near = difflib.get_close_matches(dist, list(DISTRIBUTIONS), n=1)
        hint = f"Did you mean '{near[0]}'?" if near else f"Use one of: {', '.join(DISTRIBUTIONS)}."
        raise PriorError(f"Unknown prior distribution '{m.group(1)}'{where}.", hint=hint, option=name or None)
    raw = [a.strip() for a in m.group(2).split(",") if a.strip()]
    try:
        args = tuple(float(a) for a in raw)
    except ValueError:
        raise PriorError(
            f"Prior {text!r}{where} has a non-numeric argument.", hint="Arguments must be numbers.",
            option=name or None,
        ) from None
    try:
        return Prior(dist, args)
    except PriorError as err:
        raise PriorError(err.message.rstrip(".") + f"{where}.", hint=err.hint, option=name or None) from None


def default_priors(
    *,
    y_mean: float,
    y_sd: float,
    coef_names: list[str],
    x_means: Mapping[str, float],
    x_sds: Mapping[str, float],
    has_sigma: bool,
    sd_names: list[str],
) -> dict[str, Prior]:
    """The data-scaled default priors (rstanarm/brms style) for every parameter.

    Parameters
    ----------
    y_mean, y_sd
        Mean and SD of the outcome (the data scale).
    coef_names
        Names of the common coefficients (``"Intercept"`` first if present).
    x_means, x_sds
        Mean and SD of each non-intercept design column.
    has_sigma
        Whether the model has a residual SD (not when standard errors are known).
    sd_names
        Names of the population SDs, e.g. ``["sd(Intercept|g)"]``.
    """
    out: dict[str, Prior] = {}
    s = 2.5 * y_sd
    for name in coef_names:
        if name == "Intercept":
            shift = sum((x_means[c] / x_sds[c]) ** 2 for c in coef_names if c != "Intercept")
            width = _round(s * math.sqrt(1.0 + shift))
            out[name] = Prior("normal", (_round_at(y_mean, width), width))
        else:
            out[name] = Prior("normal", (0.0, _round(s / x_sds[name])))
    if has_sigma:
        out["sigma"] = Prior("exponential", (_round(1.0 / y_sd),))
    for name in sd_names:
        out[name] = Prior("half_student_t", (3.0, _round(s)))
    return out


def _round_at(v: float, width: float) -> float:
    """Round a location to 4 significant digits of its prior's ``width``, not of itself: the mean
    of y + 10⁸ keeps its digits down to the data's spread (so the prior maps with the data)."""
    if v == 0 or not math.isfinite(v) or not (math.isfinite(width) and width > 0):
        return _round(v)
    digits = 3 - math.floor(math.log10(width))
    return float(round(v, digits)) if digits >= -300 else _round(v)


def _round(v: float) -> float:
    """Round to 4 significant digits so that the printed prior is the prior used."""
    if v == 0 or not math.isfinite(v):
        return float(v)
    return float(f"{v:.4g}")
